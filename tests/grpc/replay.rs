//! `stepgate replay` on a log the service really wrote: the same policies
//! change nothing (exit 0), a stricter candidate changes exactly the
//! expected cells (exit 1), and truncated, foreign or newer lines are
//! reported with their line numbers (exit 2).

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use stepgate::config::DecisionLogConfig;

use crate::decision_log::{Captured, lines, logged_server};
use crate::harness::*;

const IP: &str = "203.0.113.7";

/// Every sign-in needs AAL3 in this candidate.
const STRICTER: (&str, &str) = (
    "stricter.cedar",
    r#"@id("login-aal3")
@reason("every sign-in needs AAL3")
forbid (principal, action == Action::"login", resource)
unless { context.authn.aal >= 3 };
"#,
);

/// A log of four decisions (two logins, a payment, a sign-up), a report
/// and a refusal, as the service wrote it.
async fn recorded_log(dir: &Path) -> (std::path::PathBuf, Vec<Value>) {
    let sink = Captured::default();
    let (server, _key) =
        logged_server(DecisionLogConfig::default(), Box::new(sink.clone()), 1024).await;
    let mut client = server.client().await;
    for (journey, aal) in [("login", 1), ("login", 2), ("payment", 1), ("signup", 1)] {
        ask(&mut client, decide(journey, "alice", "laptop", IP, aal)).await;
    }
    send(
        &mut client,
        report(
            "login",
            "alice",
            "laptop",
            IP,
            stepgate::server::proto::Event::AuthFailed,
        ),
    )
    .await;
    client
        .decide(decide("nowhere", "alice", "laptop", IP, 1))
        .await
        .expect_err("unknown journey");
    let written = lines(&server, &sink);
    let path = dir.join("decisions.jsonl");
    std::fs::write(&path, sink.text()).expect("log file");
    (path, written)
}

fn replay(log: &Path, policies: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["replay", "--log"])
        .arg(log)
        .arg("--policies")
        .arg(policies)
        .args(extra)
        .output()
        .expect("stepgate replay runs")
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn the_same_policies_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, written) = recorded_log(dir.path()).await;
    assert_eq!(written.len(), 6);
    let out = replay(&log, &bundled_policies(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("replayed 4 decisions"), "{text}");
    assert!(text.contains("0 of 4 decisions would change"), "{text}");
    assert!(!text.contains("CHANGED"), "{text}");
}

#[tokio::test]
async fn a_stricter_candidate_changes_exactly_the_expected_cells() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, written) = recorded_log(dir.path()).await;
    let candidate = bundled_policies_with(&[STRICTER]);
    let out = replay(&log, candidate.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let comparison: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(comparison["replayed"], 4);
    assert_eq!(comparison["other_kinds"], 2);
    let cells: Vec<(String, String, String, u64, bool)> = comparison["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| {
            (
                c["journey"].as_str().expect("journey").to_owned(),
                c["live"].as_str().expect("live").to_owned(),
                c["candidate"].as_str().expect("candidate").to_owned(),
                c["count"].as_u64().expect("count"),
                c["changed"].as_bool().expect("changed"),
            )
        })
        .collect();
    let cell = |j: &str, l: &str, c: &str, n: u64, changed: bool| {
        (j.to_owned(), l.to_owned(), c.to_owned(), n, changed)
    };
    assert_eq!(
        cells,
        vec![
            cell("login", "allow", "step_up_aal3", 1, true),
            cell("login", "step_up_aal2", "step_up_aal3", 1, true),
            cell("payment", "step_up_aal3", "step_up_aal3", 1, false),
            cell("signup", "allow", "allow", 1, false),
        ]
    );
    // A changed cell names its decisions and the candidate's reasons.
    let changed = &comparison["cells"][0];
    assert_eq!(changed["examples"][0], written[1]["decision_id"]);
    assert_eq!(
        changed["candidate_reasons"],
        serde_json::json!(["login-aal3: every sign-in needs AAL3"])
    );
    // The same as a table, and only the login journey when asked.
    let out = replay(&log, candidate.path(), &["--journey", "payment"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("replayed 1 decision from"), "{text}");
    let out = replay(&log, candidate.path(), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("login    allow         step_up_aal3          1  CHANGED"),
        "{text}"
    );
    assert!(text.contains("candidate: login-aal3: every sign-in needs AAL3"));
    assert!(text.contains("2 of 4 decisions would change"), "{text}");
    // A window around the log, in any RFC 3339 offset, keeps it all.
    let out = replay(
        &log,
        candidate.path(),
        &[
            "--since",
            "2001-01-01T01:00:00+01:00",
            "--until",
            "2999-12-31t23:00:00-01:00",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    // A window that holds nothing compared nothing: trouble, not a pass.
    let out = replay(&log, candidate.path(), &["--until", "2001-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("replayed 0 decisions"));
    assert!(said(&out).contains("nothing was replayed"));
    let out = replay(&log, candidate.path(), &["--journey", "no_such"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    // A window that ends before it starts is a mistake in the arguments.
    let out = replay(&log, candidate.path(), &["--since", "1h", "--until", "2h"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    assert!(said(&out).contains("`--since` is not before `--until`"));
}

#[tokio::test]
async fn truncated_foreign_and_newer_lines_are_reported_by_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = recorded_log(dir.path()).await;
    let mut text = std::fs::read_to_string(&log).expect("log");
    let first = text.lines().next().expect("a line").to_owned();
    // Line 7: a line cut short; 8: another program's log; 9: a newer
    // format version; 10: a kind this version does not have.
    text.push_str(&first[..first.len() / 2]);
    text.push('\n');
    text.push_str("2026-11-29T10:00:00Z INFO something else\n");
    text.push_str(&first.replacen(r#""version":1"#, r#""version":2"#, 1));
    text.push('\n');
    text.push_str(r#"{"version":1,"kind":"verdict"}"#);
    text.push('\n');
    // Line 11: a decision stepgate never wrote: its time is no time, and
    // its outcome no answer.
    text.push_str(&first.replacen(r#""time":""#, r#""time":"x"#, 1).replacen(
        r#""outcome":"step_up""#,
        r#""outcome":"maybe""#,
        1,
    ));
    text.push('\n');
    let damaged = dir.path().join("damaged.jsonl");
    std::fs::write(&damaged, text).expect("write");
    let out = replay(&damaged, &bundled_policies(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = damaged.display().to_string();
    assert!(
        stderr.contains(&format!("{name}:7: not a decision-log line")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}:8: not a decision-log line")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{name}:9: format version 2 is newer than this build reads"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}:10: unknown kind `verdict`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}:11: `time` `x")),
        "{stderr}"
    );
    // The readable lines were still compared.
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 4 decisions"));
    // A candidate that does not load is trouble too, not "unchanged".
    let out = replay(&log, &dir.path().join("no-such-dir"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
}

#[tokio::test]
async fn a_log_of_many_chunks_is_compared_as_one_pass_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, written) = recorded_log(dir.path()).await;
    let text = std::fs::read_to_string(&log).expect("log");
    // 2,100 copies of the 6 lines: 12,600 lines, read in several chunks
    // by several workers; line 9,000 cut short.
    let mut lines: Vec<String> = text
        .lines()
        .cycle()
        .take(6 * 2100)
        .map(str::to_owned)
        .collect();
    let cut = &mut lines[8999];
    cut.truncate(cut.len() / 3);
    let long = dir.path().join("long.jsonl");
    std::fs::write(&long, lines.join("\n") + "\n").expect("write");
    let candidate = bundled_policies_with(&[STRICTER]);
    let out = replay(&long, candidate.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    let comparison: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let cut_kind = written[8999 % 6]["kind"].as_str().expect("kind");
    let decisions_cut = u64::from(cut_kind == "decision");
    assert_eq!(comparison["replayed"], 4 * 2100 - decisions_cut);
    assert_eq!(comparison["other_kinds"], 2 * 2100 - (1 - decisions_cut));
    assert_eq!(
        comparison["problems"].as_array().expect("problems").len(),
        1
    );
    assert_eq!(comparison["problems"][0]["line"], 9000);
    // The examples are the first decisions of their cell, in log order.
    let first = &comparison["cells"][0];
    assert_eq!(first["journey"], "login");
    assert_eq!(first["live"], "allow");
    assert_eq!(first["count"], 2100);
    assert_eq!(
        first["examples"],
        serde_json::json!([
            written[1]["decision_id"],
            written[1]["decision_id"],
            written[1]["decision_id"]
        ])
    );
}

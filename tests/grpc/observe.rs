//! What operators see: `/metrics` after a known sequence of requests, the
//! scrape checked by `promtool` and read by a real Prometheus server the
//! test starts on its own port and data directory, the alerting rules in
//! `deploy/prometheus/` checked by `promtool`, and `/healthz`, `/readyz`.
//! `.ci/run` installs Debian's `prometheus` package when it is missing.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use stepgate::server::proto::Event;

use crate::harness::*;

/// One decision through each of two doors, a step-up, a completed
/// sign-in and two refusals: the sequence the counters are checked
/// against.
async fn known_sequence(server: &TestServer) {
    let mut client = server.client().await;
    // A new device: step up to AAL2.
    let first = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(first.outcome(), stepgate::server::proto::Outcome::StepUp);
    // At AAL2 the same sign-in is allowed; it completes.
    let second = ask(&mut client, decide("login", "alice", "laptop", IP, 2)).await;
    assert_eq!(second.outcome(), stepgate::server::proto::Outcome::Allow);
    let mut done = report("login", "alice", "laptop", IP, Event::AuthSucceeded);
    done.decision_id = second.decision_id.clone();
    send(&mut client, done).await;
    // The known device over the JSON door: allowed at AAL1.
    let reply = post_json(server, "/v1/decide", &decide_json("alice", "laptop", 1)).await;
    assert_eq!(
        reply.json().get("outcome"),
        Some(&json!("OUTCOME_ALLOW")),
        "{:?}",
        reply.body
    );
    // Two refusals: a level that does not exist, a journey that does not.
    client
        .decide(decide("login", "bob", "phone", IP, 9))
        .await
        .expect_err("aal 9");
    client
        .decide(decide("teleport", "bob", "phone", IP, 1))
        .await
        .expect_err("no such journey");
}

const IP: &str = "203.0.113.7";

async fn scrape(server: &TestServer) -> Scrape {
    let reply = http_call(&server.admin_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape(String::from_utf8(reply.body.to_vec()).expect("UTF-8"))
}

#[tokio::test]
async fn metrics_count_a_known_sequence_exactly() {
    let server = TestServer::start().await;
    known_sequence(&server).await;
    let m = scrape(&server).await;
    let decisions = |door, outcome| {
        m.value(
            "stepgate_decisions_total",
            &[
                ("door", door),
                ("caller", "anonymous"),
                ("journey", "login"),
                ("tier", "medium"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(decisions("grpc", "step_up"), Some(1.0));
    assert_eq!(decisions("grpc", "allow"), Some(1.0));
    assert_eq!(decisions("http", "allow"), Some(1.0));
    assert_eq!(decisions("http", "step_up"), None, "never happened");
    assert_eq!(
        m.value(
            "stepgate_step_ups_total",
            &[("journey", "login"), ("level", "aal2")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "stepgate_decision_duration_seconds_count",
            &[("door", "grpc")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "stepgate_decision_duration_seconds_count",
            &[("door", "http")]
        ),
        Some(1.0)
    );
    // The two decisions before the completed sign-in saw a new device;
    // the one after did not.
    assert_eq!(
        m.value("stepgate_signals_fired_total", &[("signal", "device.new")]),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "stepgate_signals_fired_total",
            &[("signal", "geo.impossible_travel")]
        ),
        Some(0.0),
        "every signal's series exists from the start"
    );
    assert_eq!(
        m.value(
            "stepgate_reports_total",
            &[("effect", "completed"), ("decision", "found")]
        ),
        Some(1.0)
    );
    for fault in ["invalid_argument", "unknown_journey"] {
        assert_eq!(
            m.value(
                "stepgate_request_faults_total",
                &[("rpc", "Decide"), ("caller", "anonymous"), ("fault", fault)]
            ),
            Some(1.0),
            "{fault}"
        );
    }
    let version = server.engine.policies().version().to_owned();
    assert_eq!(
        m.value(
            "stepgate_policy_info",
            &[("set", "live"), ("version", &version)]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value("stepgate_store_entries", &[("kind", "decisions")]),
        Some(3.0),
        "three decisions remembered for their reports"
    );
    assert_eq!(
        m.value("stepgate_store_entries", &[("kind", "users")]),
        Some(1.0),
        "alice, taught by her completed sign-in"
    );
    assert_eq!(
        m.value(
            "stepgate_decision_log_lines_total",
            &[("result", "dropped")]
        ),
        Some(0.0)
    );
    assert_eq!(m.value("stepgate_ready", &[]), Some(1.0));
    // Three decisions, each in a context not seen before (a new device at
    // AAL1, then at AAL2, then known): three misses, and every decision
    // counted once.
    let cache = |result| m.value("stepgate_policy_cache_total", &[("result", result)]);
    assert_eq!(
        (cache("hit"), cache("miss"), cache("bypass")),
        (Some(0.0), Some(3.0), Some(0.0))
    );
    assert_eq!(
        m.value(
            "stepgate_policy_reloads_total",
            &[("set", "live"), ("result", "refused")]
        ),
        Some(0.0),
        "the first refused reload must be an increase from zero"
    );
}

#[tokio::test]
async fn no_label_carries_a_user_device_address_or_free_text() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let user = "carol.secret@example.com";
    let device = "device-SECRET-42";
    let ip = "198.51.100.77";
    ask(&mut client, decide("login", user, device, ip, 1)).await;
    send(
        &mut client,
        report("login", user, device, ip, Event::AuthFailed),
    )
    .await;
    let mut bad = decide("login", user, device, ip, 1);
    bad.request_id = "free text\nSECRET".into();
    client.decide(bad).await.expect_err("control character");
    let mut attrs = decide_json(user, device, 1);
    attrs["attributes"] = json!({"SECRET key": 1});
    post_json(&server, "/v1/decide", &attrs).await;
    let text = scrape(&server).await.0;
    for secret in [
        user,
        "carol",
        device,
        "SECRET",
        ip,
        "198.51.100",
        "free text",
    ] {
        assert!(!text.contains(secret), "`{secret}` reached /metrics");
    }
}

#[tokio::test]
async fn the_scrape_passes_promtool() {
    let server = TestServer::start().await;
    known_sequence(&server).await;
    let text = scrape(&server).await.0;
    let mut promtool = Command::new(program("PROMTOOL", "promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write as _;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write scrape");
    }
    let out = promtool.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alerting_rules_and_the_scrape_config_pass_promtool_and_their_unit_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    // `check rules`, the rules' own unit tests (each alert fires on the
    // series it is for, and stays quiet otherwise) and `check config`.
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
        ["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(program("PROMTOOL", "promtool", "prometheus"))
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{said}");
        assert!(said.contains("SUCCESS"), "{said}");
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_stepgate_and_answers_a_query() {
    let server = TestServer::start().await;
    known_sequence(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = server.admin_addr.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: stepgate\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let _prometheus = Peer(
        Command::new(program("PROMETHEUS", "prometheus", "prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let query = "sum(stepgate_decisions_total{journey=\"login\"})";
    let path = format!(
        "/api/v1/query?query={}",
        query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let base = format!("http://127.0.0.1:{port}");
    let mut last = String::new();
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(reply) =
            tokio::time::timeout(Duration::from_secs(2), try_http_call(&base, "GET", &path)).await
        else {
            continue;
        };
        let Some(reply) = reply else {
            continue;
        };
        last = String::from_utf8_lossy(&reply.body).into_owned();
        // Prometheus answers 503 (not JSON) until its storage is ready.
        if reply.status != 200 {
            continue;
        }
        let value = reply.json()["data"]["result"][0]["value"][1].clone();
        if value == json!("3") {
            return;
        }
    }
    unreachable!("Prometheus never answered 3 decisions within 30 s; last answer: {last}");
}

#[tokio::test]
async fn healthz_is_alive_and_readyz_follows_readiness() {
    let server = TestServer::start().await;
    let alive = http_call(&server.admin_addr, "GET", "/healthz", &[], "").await;
    assert_eq!(alive.status, 200);
    let ready = http_call(&server.admin_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 200);
    let readiness = stepgate::server::admin::Readiness::new(server.engine.clone());
    // A fresh handle starts not ready, as the service does until its
    // listeners are up; what `/readyz` reads is the server's own.
    assert!(!readiness.get());
    let draining = stepgate::server::admin::router(readiness.clone(), None);
    use tower::ServiceExt as _;
    let answer = |router: axum::Router| async move {
        router
            .oneshot(
                http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer")
            .status()
            .as_u16()
    };
    assert_eq!(answer(draining.clone()).await, 503);
    readiness.set(true);
    assert_eq!(answer(draining.clone()).await, 200);
    readiness.set(false);
    assert_eq!(answer(draining).await, 503, "draining");
}

/// The metric families an expression names (`stepgate_…`, with a
/// histogram's `_bucket`, `_count` and `_sum` read as the histogram).
fn families(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("stepgate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.push(family.to_owned());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn the_dashboard_the_alerts_and_the_readme_name_the_metrics_that_exist() {
    let server = TestServer::start().await;
    known_sequence(&server).await;
    let exported: std::collections::BTreeSet<String> =
        server.engine.metrics().families().into_iter().collect();
    // Every family the scrape shows is one of them.
    let scraped = scrape(&server).await.0;
    for line in scraped.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = line.split(' ').next().expect("a name");
        assert!(exported.contains(name), "{name}");
    }
    // The README's metrics table lists each, and nothing else.
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("README");
    let documented: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `stepgate_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("stepgate_{name}"))
        .collect();
    assert_eq!(documented, exported, "README metrics table vs the registry");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/stepgate.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let alerts = std::fs::read_to_string(root.join("prometheus/alerts.yml")).expect("alerts");
    exprs.push(alerts);
    for expr in &exprs {
        let named = families(expr);
        assert!(!named.is_empty(), "`{expr}` reads no stepgate metric");
        for family in named {
            assert!(
                exported.contains(&family),
                "`{family}` (in `{expr}`) is not exported; exported: {exported:?}"
            );
        }
    }
}

//! `stepgate policy explain`: the context, the risk score, every rung with
//! its permits and forbids, and the same answer `Decide` gives.

use crate::{bundled, stepgate};

/// Runs `stepgate policy explain <bundled policies> ARGS`.
fn explain(args: &[&str]) -> (i32, String) {
    let bundled = bundled().display().to_string();
    let args: Vec<&str> = ["policy", "explain", bundled.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    stepgate(&args, None)
}

fn geo_suite() -> String {
    bundled().join("tests/geo.yaml").display().to_string()
}

fn ids(reasons: &serde_json::Value) -> Vec<&str> {
    reasons
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["policy_id"].as_str().expect("policy_id"))
        .collect()
}

#[test]
fn explain_shows_each_rung_with_the_policies_that_decided_it() {
    let case = "impossible travel on a new device needs AAL3";
    let (code, output) = explain(&["--file", &geo_suite(), "--case", case, "--json"]);
    assert_eq!(code, 0, "{output}");
    let json: serde_json::Value = serde_json::from_str(&output).expect("JSON");
    assert_eq!(json["journey"], "login");
    assert_eq!(json["current_aal"], 1);
    assert_eq!(json["context"]["device"]["known"], false);
    assert_eq!(json["context"]["geo"]["impossible_travel"], true);
    assert_eq!(json["risk_score"], 65);
    let signals: Vec<&str> = json["risk_contributions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["signal"].as_str().expect("signal"))
        .collect();
    assert_eq!(signals, ["device.new", "geo.impossible_travel"]);

    // AAL1 as the user is, AAL1 authenticated again now, AAL2, AAL3.
    let rungs = json["rungs"].as_array().expect("rungs");
    assert_eq!(rungs.len(), 4);
    let levels: Vec<(u64, bool)> = rungs
        .iter()
        .map(|r| (r["aal"].as_u64().expect("aal"), r["fresh"] == true))
        .collect();
    assert_eq!(levels, [(1, false), (1, true), (2, true), (3, true)]);
    // Nothing here reads the authentication's age: AAL1 again is refused
    // as AAL1 was.
    assert_eq!(rungs[1]["forbidden_by"], rungs[0]["forbidden_by"]);
    let rung = |aal: usize| &rungs[if aal == 1 { 0 } else { aal }];
    assert_eq!(rung(1)["permitted"], false);
    assert_eq!(
        ids(&rung(1)["forbidden_by"]),
        [
            "high-risk-needs-aal2",
            "login-impossible-travel",
            "login-impossible-travel-new-device",
            "login-new-device"
        ]
    );
    assert_eq!(ids(&rung(1)["permitted_by"]), ["journey-permit"]);
    assert_eq!(rung(2)["permitted"], false);
    assert_eq!(
        ids(&rung(2)["forbidden_by"]),
        ["login-impossible-travel-new-device"]
    );
    assert_eq!(rung(3)["permitted"], true);
    assert!(ids(&rung(3)["forbidden_by"]).is_empty());

    assert_eq!(json["outcome"], "step_up");
    assert_eq!(json["required_aal"], 3);
    assert_eq!(ids(&json["reasons"]).len(), 4);
}

#[test]
fn explain_from_flags_prints_a_readable_ladder() {
    let (code, output) = explain(&[
        "--journey",
        "payment",
        "--user",
        "bob",
        "--device",
        "laptop",
        "--ip",
        "81.2.69.142",
        "--aal",
        "2",
        "--attr",
        "amount=1500",
    ]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("journey payment (tier high), user at AAL2"),
        "{output}"
    );
    assert!(
        output.contains(r#"attributes  {"amount":1500}"#),
        "{output}"
    );
    assert!(
        output.contains(
            "  AAL2  refused\n        permit  journey-permit\n        forbid  high-tier-new-device-needs-aal3:"
        ),
        "{output}"
    );
    assert!(
        output.contains("  AAL3  permitted\n        permit  journey-permit\n"),
        "{output}"
    );
    assert!(output.contains("answer STEP_UP to AAL3"), "{output}");
}

#[test]
fn explain_names_the_cases_when_the_one_asked_for_is_missing() {
    let (code, output) = explain(&["--file", &geo_suite(), "--case", "no such case"]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("has no case named `no such case`"),
        "{output}"
    );
    assert!(
        output.contains("a payment through Tor is denied at any level"),
        "{output}"
    );
}

/// Over every case of the bundled suites, the rungs an explanation shows
/// agree with the answer: the first permitted rung is the one the ladder
/// chose (its one-pass shortcut included).
#[tokio::test]
async fn explanations_agree_with_the_answer_on_every_bundled_case() {
    use std::sync::Arc;
    use stepgate::config::Config;
    use stepgate::policy::PolicySnapshot;
    use stepgate::suites::{self, Runner};

    let runner = Runner::new(
        Arc::new(PolicySnapshot::load(&bundled()).expect("bundled policies load")),
        Arc::new(Config::default()),
        Default::default(),
        Default::default(),
    );
    let loaded = suites::load_dir(&bundled().join("tests")).expect("bundled suites load");
    let mut checked = 0;
    for suite in &loaded {
        for name in suite.case_names() {
            let case = suite.case(Some(name)).expect("case");
            let e = runner.explain(case, suite.now).await.expect("explains");
            let first_permitted = e.rungs.iter().find(|r| r.permitted).map(|r| r.aal);
            let chosen = match e.outcome {
                "allow" => Some(e.current_aal),
                "step_up" => e.required_aal,
                _ => None,
            };
            assert_eq!(first_permitted, chosen, "{} › {name}: {e}", suite.name);
            checked += 1;
        }
    }
    assert!(checked >= 48, "{checked} cases");
}

//! `stepgate policy test`: the bundled suites pass, a wrong expectation is
//! caught and reported (also as JUnit), and an unusable suite is refused
//! with its file and line.

use std::ffi::OsStr;

use crate::{bundled, fixture, stepgate};

/// Runs `stepgate policy test ARGS`.
fn policy_test(args: &[&OsStr]) -> (i32, String) {
    let args: Vec<&OsStr> = ["policy".as_ref(), "test".as_ref()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    stepgate(&args, None)
}

/// The counts in the summary line.
fn counts(output: &str) -> (usize, usize) {
    let line = output
        .lines()
        .find(|l| l.starts_with("policy tests: "))
        .expect("summary line");
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers[..] {
        [passed, failed, ..] => (passed, failed),
        _ => (usize::MAX, usize::MAX),
    }
}

#[test]
fn the_bundled_suites_pass() {
    let bundled = bundled();
    let (code, output) = policy_test(&[bundled.as_os_str()]);
    assert_eq!(code, 0, "{output}");
    let (passed, failed) = counts(&output);
    assert_eq!(failed, 0, "{output}");
    // Every behaviour of the pack has a case; a suite that silently lost its
    // cases would show here.
    assert!(passed >= 80, "{output}");
    assert!(output.contains("in 6 suites"), "{output}");
}

#[test]
fn a_wrong_expectation_fails_with_expected_and_actual() {
    let junit = tempfile::NamedTempFile::new().expect("temp file");
    let suites = fixture("failing-suite");
    let bundled = bundled();
    let (code, output) = policy_test(&[
        bundled.as_os_str(),
        "--suites".as_ref(),
        suites.as_os_str(),
        "--junit".as_ref(),
        junit.path().as_os_str(),
    ]);
    assert_eq!(code, 1, "{output}");
    assert_eq!(counts(&output), (1, 3), "{output}");
    assert!(
        output.contains(
            "FAIL  wrong expectations › a new device is (wrongly) expected to be allowed"
        ),
        "{output}"
    );
    assert!(
        output.contains(
            "expected: ALLOW [journey-permit]\n        actual:   STEP_UP to AAL2 [login-new-device]"
        ),
        "{output}"
    );
    // The same outcome with other reasons is a failure too.
    assert!(
        output.contains("expected: STEP_UP to AAL2 [high-risk-needs-aal2]"),
        "{output}"
    );
    // So is the same reason with another level.
    assert!(
        output.contains("expected: STEP_UP to AAL3 [login-new-device]\n        actual:   STEP_UP to AAL2 [login-new-device]"),
        "{output}"
    );
    assert!(!output.contains("FAIL  wrong expectations › a known device is allowed"));

    let xml = std::fs::read_to_string(junit.path()).expect("junit written");
    assert!(
        xml.contains(r#"<testsuites name="stepgate policy test" tests="4" skipped="0" failures="3" errors="0">"#),
        "{xml}"
    );
    assert!(
        xml.contains(
            r#"message="expected ALLOW [journey-permit], got STEP_UP to AAL2 [login-new-device]""#
        ),
        "{xml}"
    );
}

#[test]
fn an_unusable_suite_is_refused_with_file_and_line() {
    let suites = fixture("broken-suite");
    let bundled = bundled();
    let (code, output) =
        policy_test(&[bundled.as_os_str(), "--suites".as_ref(), suites.as_os_str()]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("broken.yaml:8:32: cases[1].request: unknown field `devise`"),
        "{output}"
    );
    assert!(!output.contains("policy tests:"), "no case ran: {output}");
}

#[test]
fn a_step_up_expectation_needs_its_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("levels.yaml");
    std::fs::write(
        &file,
        "cases:\n  - name: no level\n    request: { journey: login }\n    expect: { outcome: step_up }\n",
    )
    .expect("write");
    let errors = stepgate::suites::load_file(&file).expect_err("refused");
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [format!(
            "{}:2:11: case `no level`: `expect.level` is required for `step_up` (1 to 3)",
            file.display()
        )]
    );
}

/// Geo rules driven by a history of sign-ins, with the addresses looked up
/// in real (generated) MaxMind databases named by a config file.
#[test]
fn geo_suites_run_against_the_configured_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = stepgate::geo::fixtures::write_all(dir.path()).expect("fixture databases");
    let config = dir.path().join("stepgate.toml");
    std::fs::write(
        &config,
        format!(
            "[geo]\ncity_db = {:?}\nasn_db = {:?}\nanonymous_ip_db = {:?}\n",
            paths.city, paths.asn, paths.anonymous_ip
        ),
    )
    .expect("write config");
    let suites = fixture("geo-history-suite");
    let bundled = bundled();
    let (code, output) = policy_test(&[
        bundled.as_os_str(),
        "--suites".as_ref(),
        suites.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert_eq!(code, 0, "{output}");
    assert_eq!(counts(&output), (7, 0), "{output}");

    // Without the databases the same history cannot place anyone.
    let (code, output) =
        policy_test(&[bundled.as_os_str(), "--suites".as_ref(), suites.as_os_str()]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("FAIL  geography from history › Paris the day after London"),
        "{output}"
    );
}

#[test]
fn suites_set_the_authentication_age_and_check_max_age_at_the_boundary() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::seed(
        dir.path(),
        &[(
            "p.cedar",
            r#"@id("permit-all") permit (principal, action, resource);
@id("payout-recent-aal2") @reason("payouts need AAL2 from the last 15 minutes")
@max_age("15m")
forbid (principal, action == Action::"change_payout", resource)
unless { context.authn.aal >= 2 };"#,
        )],
    );
    let suites = dir.path().join("suites");
    std::fs::create_dir(&suites).expect("dir");
    std::fs::write(
        suites.join("fresh.yaml"),
        r#"name: freshness
now: 2026-11-01T12:00:00Z
defaults: { journey: change_payout, user: alice, device: laptop, ip: 81.2.69.142, aal: 2 }
cases:
  - name: exactly fifteen minutes old is fresh
    request: { auth_age: 15m }
    expect: { outcome: allow }
  - name: a second more is stale
    request: { auth_age: 15m 1s }
    expect: { outcome: step_up, level: 2, max_age: 15m, reasons: [payout-recent-aal2] }
  - name: an authentication of unknown age is stale
    expect: { outcome: step_up, level: 2, max_age: 900s }
  - name: a fresh AAL1 steps up to AAL2 and is told the age
    request: { aal: 1, auth_age: 1m }
    expect: { outcome: step_up, level: 2, max_age: 15m }
  - name: a wrong max_age is caught
    request: { auth_age: 1h }
    expect: { outcome: step_up, level: 2, max_age: 10m }
"#,
    )
    .expect("suite");
    let (code, output) = policy_test(&[
        dir.path().as_os_str(),
        "--suites".as_ref(),
        suites.as_os_str(),
    ]);
    assert_eq!(code, 1, "{output}");
    assert_eq!(counts(&output), (4, 1), "{output}");
    assert!(
        output.contains("(max_age 600 s)") && output.contains("(max_age 900 s)"),
        "expected and actual both name the age: {output}"
    );
}

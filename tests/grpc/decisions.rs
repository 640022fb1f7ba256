//! The bundled policy pack, decision by decision, and what ReportOutcome
//! teaches the store.

use stepgate::config::{Config, IpListConfig};
use stepgate::server::proto::{Event, Outcome};

use crate::harness::*;

const IP: &str = "198.51.100.20";
const HIGH_TIER: [&str; 4] = [
    "account_recovery",
    "payment",
    "change_payout",
    "change_credentials",
];
const ALL_JOURNEYS: [&str; 6] = [
    "signup",
    "login",
    "account_recovery",
    "payment",
    "change_payout",
    "change_credentials",
];

#[tokio::test]
async fn known_device_without_risk_is_allowed_on_login_at_aal1() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );
    assert_eq!(answer.required_acr, "");
    let risk = answer.risk.expect("risk is always sent");
    assert_eq!((risk.score, risk.level.as_str()), (0, "low"));
    assert!(risk.signals.is_empty());
    assert!(!answer.degraded);
}

#[tokio::test]
async fn first_sign_in_steps_up_to_aal2_naming_the_new_device() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let answer = ask(&mut client, decide("login", "newcomer", "phone", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
    assert_eq!(
        answer.required_acr,
        "http://idmanagement.gov/ns/assurance/aal/2"
    );
    assert_eq!(
        answer.reasons[0].message,
        "sign-in from a device this user has not completed a sign-in on"
    );
    let risk = answer.risk.expect("risk");
    let names: Vec<&str> = risk.signals.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["device.new", "behaviour.first_sign_in"]);
    assert_eq!(risk.score, 35);
}

#[tokio::test]
async fn new_device_for_a_known_user_steps_up_and_aal2_is_enough() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let answer = ask(&mut client, decide("login", "alice", "borrowed-pc", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
    let answer = ask(&mut client, decide("login", "alice", "borrowed-pc", IP, 2)).await;
    assert_eq!(seen(&answer).outcome, Outcome::Allow);
}

#[tokio::test]
async fn missing_device_id_is_treated_as_a_new_device() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let answer = ask(&mut client, decide("login", "alice", "", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
}

#[tokio::test]
async fn high_tier_journeys_need_aal2_on_a_known_device_and_aal3_on_a_new_one() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    for journey in HIGH_TIER {
        let known_aal1 = ask(&mut client, decide(journey, "alice", "laptop", IP, 1)).await;
        assert_eq!(
            seen(&known_aal1),
            expect(Outcome::StepUp, 2, &["high-tier-needs-aal2"]),
            "{journey}"
        );
        let known_aal2 = ask(&mut client, decide(journey, "alice", "laptop", IP, 2)).await;
        assert_eq!(seen(&known_aal2).outcome, Outcome::Allow, "{journey}");

        let new_aal1 = ask(&mut client, decide(journey, "alice", "kiosk", IP, 1)).await;
        assert_eq!(
            seen(&new_aal1),
            expect(
                Outcome::StepUp,
                3,
                &["high-tier-needs-aal2", "high-tier-new-device-needs-aal3"]
            ),
            "{journey}"
        );
        assert_eq!(
            new_aal1.required_acr,
            "http://idmanagement.gov/ns/assurance/aal/3"
        );
        let new_aal2 = ask(&mut client, decide(journey, "alice", "kiosk", IP, 2)).await;
        assert_eq!(
            seen(&new_aal2),
            expect(Outcome::StepUp, 3, &["high-tier-new-device-needs-aal3"]),
            "{journey}"
        );
        let new_aal3 = ask(&mut client, decide(journey, "alice", "kiosk", IP, 3)).await;
        assert_eq!(seen(&new_aal3).outcome, Outcome::Allow, "{journey}");
    }
}

#[tokio::test]
async fn signup_is_low_tier_and_allowed_at_aal1_from_a_new_device() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let answer = ask(&mut client, decide("signup", "fresh", "phone", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );
}

#[tokio::test]
async fn five_failures_on_the_device_step_up_login_and_twenty_deny_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;

    fail_on(&mut client, "alice", "laptop", IP, 4).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(
        seen(&answer).outcome,
        Outcome::Allow,
        "four failures are tolerated"
    );

    fail_on(&mut client, "alice", "laptop", IP, 1).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["user-failures-step-up"])
    );

    fail_on(&mut client, "alice", "laptop", IP, 14).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(
        seen(&answer).outcome,
        Outcome::StepUp,
        "nineteen failures still step up"
    );

    fail_on(&mut client, "alice", "laptop", IP, 1).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 3)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::Deny, 0, &["user-failures-deny"])
    );
}

#[tokio::test]
async fn successful_sign_in_resets_the_users_failures() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    fail(&mut client, "alice", IP, 6).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(seen(&answer).outcome, Outcome::StepUp);
    tell(&mut client, "alice", "laptop", IP, Event::StepUpSucceeded).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(seen(&answer).outcome, Outcome::Allow);
}

#[tokio::test]
async fn ten_distinct_users_failing_from_an_ip_deny_new_devices_on_every_journey() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let stuffing_ip = "203.0.113.66";
    sign_in(&mut client, "victim", "laptop", "192.0.2.10").await;
    for i in 0..9 {
        fail(&mut client, &format!("user{i}"), stuffing_ip, 1).await;
    }
    let answer = ask(
        &mut client,
        decide("login", "victim", "laptop", stuffing_ip, 1),
    )
    .await;
    assert_eq!(
        seen(&answer).outcome,
        Outcome::Allow,
        "nine distinct users are tolerated"
    );

    fail(&mut client, "user9", stuffing_ip, 1).await;
    for journey in ALL_JOURNEYS {
        let answer = ask(
            &mut client,
            decide(journey, "victim", "kiosk", stuffing_ip, 3),
        )
        .await;
        // Sign-up is for accounts that never signed in; the victim has.
        let reasons: &[&str] = if journey == "signup" {
            &["signup-existing-account", "stuffing-ip"]
        } else {
            &["stuffing-ip"]
        };
        assert_eq!(
            seen(&answer),
            expect(Outcome::Deny, 0, reasons),
            "{journey}"
        );
        // The victim's own device behind the same address meets a step-up.
        let own = ask(
            &mut client,
            decide(journey, "victim", "laptop", stuffing_ip, 2),
        )
        .await;
        let expected = if journey == "signup" {
            Outcome::Deny
        } else {
            Outcome::Allow
        };
        assert_eq!(seen(&own).outcome, expected, "{journey}");
    }
    // Another address is unaffected.
    let answer = ask(
        &mut client,
        decide("login", "victim", "laptop", "192.0.2.10", 1),
    )
    .await;
    assert_eq!(seen(&answer).outcome, Outcome::Allow);
}

#[tokio::test]
async fn the_same_user_failing_many_times_is_not_credential_stuffing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let ip = "203.0.113.67";
    sign_in(&mut client, "victim", "laptop", ip).await;
    fail(&mut client, "clumsy", ip, 12).await;
    let answer = ask(&mut client, decide("login", "victim", "laptop", ip, 1)).await;
    assert_eq!(seen(&answer).outcome, Outcome::Allow);
}

#[tokio::test]
async fn deny_listed_ip_is_denied_on_every_journey() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("deny.txt");
    std::fs::write(&list, "# test list\n203.0.113.0/24\n2001:db8:bad::/48\n").expect("write list");
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        ip_lists: IpListConfig { deny: vec![list] },
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", "192.0.2.1").await;
    for ip in ["203.0.113.9", "2001:db8:bad:1::7"] {
        for journey in ALL_JOURNEYS {
            let answer = ask(&mut client, decide(journey, "alice", "laptop", ip, 3)).await;
            let reasons: &[&str] = if journey == "signup" {
                &["ip-deny-list", "signup-existing-account"]
            } else {
                &["ip-deny-list"]
            };
            assert_eq!(
                seen(&answer),
                expect(Outcome::Deny, 0, reasons),
                "{journey} {ip}"
            );
            let risk = answer.risk.expect("risk");
            assert!(risk.signals.iter().any(|s| s.name == "ip.deny_listed"));
        }
    }
    let answer = ask(
        &mut client,
        decide("login", "alice", "laptop", "192.0.2.1", 1),
    )
    .await;
    assert_eq!(seen(&answer).outcome, Outcome::Allow);
}

#[tokio::test]
async fn report_outcome_success_teaches_the_device_per_user() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let before = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(seen(&before).outcome, Outcome::StepUp);
    tell(&mut client, "alice", "laptop", IP, Event::StepUpSucceeded).await;
    let after = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(seen(&after).outcome, Outcome::Allow);
    // Another user on the same device is still new to it.
    let other = ask(&mut client, decide("login", "bob", "laptop", IP, 1)).await;
    assert_eq!(
        seen(&other),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
}

#[tokio::test]
async fn devices_are_scoped_by_tenant() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut success = report("login", "alice", "laptop", IP, Event::AuthSucceeded);
    success.subject.as_mut().expect("subject").tenant = "acme".into();
    success.reached_aal = 2;
    client.report_outcome(success).await.expect("report");
    let mut same_tenant = decide("login", "alice", "laptop", IP, 1);
    same_tenant.subject.as_mut().expect("subject").tenant = "acme".into();
    assert_eq!(
        seen(&ask(&mut client, same_tenant).await).outcome,
        Outcome::Allow
    );
    let other_tenant = decide("login", "alice", "laptop", IP, 1);
    assert_eq!(
        seen(&ask(&mut client, other_tenant).await).outcome,
        Outcome::StepUp
    );
}

#[tokio::test]
async fn failed_attempt_does_not_make_device_known() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for event in [Event::AuthFailed, Event::StepUpFailed] {
        tell(&mut client, "alice", "attacker-box", IP, event).await;
    }
    let answer = ask(&mut client, decide("login", "alice", "attacker-box", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
    let risk = answer.risk.expect("risk");
    assert!(
        risk.signals
            .iter()
            .any(|s| s.name == "behaviour.first_sign_in")
    );
    assert!(
        risk.signals
            .iter()
            .any(|s| s.name == "behaviour.user_failures")
    );
}

#[tokio::test]
async fn decide_never_teaches_the_store() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for _ in 0..3 {
        let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 3)).await;
        assert_eq!(
            seen(&answer).outcome,
            Outcome::Allow,
            "AAL3 satisfies every login rule"
        );
    }
    assert_eq!(server.store_sizes(), (0, 0));
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(
        seen(&answer).outcome,
        Outcome::StepUp,
        "allowed decisions do not make a device known"
    );
}

#[tokio::test]
async fn answers_carry_identity_version_and_echo() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let a = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    let b = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_ne!(a.decision_id, b.decision_id);
    assert!(!a.decision_id.is_empty());
    assert_eq!(a.policy_version, server.engine.policies().version());
    assert_eq!(a.policy_version.len(), 16);
    assert_eq!(a.request_id, "req-1");
}

#[tokio::test]
async fn payment_attributes_reach_the_policies_when_they_fit_the_schema() {
    let dir = bundled_policies_with(&[LARGE_PAYMENT_POLICY]);
    let server = TestServer::start_with(Config {
        policies_dir: dir.path().to_owned(),
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let payment = |amount: f64| {
        let mut request = decide("payment", "alice", "laptop", IP, 2);
        request.attributes = Some(prost_types::Struct {
            fields: [
                ("amount".to_owned(), number(amount)),
                ("currency".to_owned(), string("EUR")),
            ]
            .into_iter()
            .collect(),
        });
        request
    };
    let small = ask(&mut client, payment(150_000.0)).await;
    assert_eq!(seen(&small).outcome, Outcome::Allow);
    let large = ask(&mut client, payment(5_000_000.0)).await;
    assert_eq!(seen(&large), expect(Outcome::StepUp, 3, &["large-payment"]));
    let no_amount = ask(&mut client, decide("payment", "alice", "laptop", IP, 2)).await;
    assert_eq!(seen(&no_amount).outcome, Outcome::Allow);
}

pub fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(n)),
    }
}

pub fn string(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.into())),
    }
}

#[tokio::test]
async fn stuffing_from_rotating_ipv6_addresses_counts_per_slash_64() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "victim", "laptop", "2001:db8:77::1").await;
    for i in 0..10 {
        fail(
            &mut client,
            &format!("user{i}"),
            &format!("2001:db8:66:1::{:x}", i + 1),
            1,
        )
        .await;
    }
    let same_64 = ask(
        &mut client,
        decide("login", "victim", "kiosk", "2001:db8:66:1::ffff", 1),
    )
    .await;
    assert_eq!(seen(&same_64), expect(Outcome::Deny, 0, &["stuffing-ip"]));
    let next_64 = ask(
        &mut client,
        decide("login", "victim", "laptop", "2001:db8:66:2::1", 1),
    )
    .await;
    assert_eq!(seen(&next_64).outcome, Outcome::Allow);
}

#[tokio::test]
async fn a_policy_that_fails_to_evaluate_denies_and_is_reported_without_signal_values() {
    let dir = bundled_policies_with(&[(
        "fragile.cedar",
        r#"@id("fragile")
@reason("overflows once the user has failed")
forbid (principal, action == Action::"login", resource)
when { context.behaviour.user_failures * 9223372036854775807 > 0 };
"#,
    )]);
    let server = TestServer::start_with(Config {
        policies_dir: dir.path().to_owned(),
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let quiet = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(seen(&quiet).outcome, Outcome::Allow);
    assert!(quiet.policy_errors.is_empty());

    fail(&mut client, "alice", IP, 2).await;
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 3)).await;
    assert_eq!(
        seen(&answer).outcome,
        Outcome::Deny,
        "Cedar alone would have allowed this"
    );
    assert_eq!(
        seen(&answer).reasons,
        ["stepgate.policy_error"],
        "a denial always says why"
    );
    assert_eq!(answer.policy_errors.len(), 1);
    assert_eq!(answer.policy_errors[0].policy_id, "fragile");
    assert_eq!(
        answer.policy_errors[0].message,
        stepgate::decision::POLICY_ERROR_MESSAGE
    );
}

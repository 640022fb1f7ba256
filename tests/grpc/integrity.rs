//! Signal integrity: whole kinds of input that used to be read wrongly,
//! each pinned by its reported example and other members of its kind.
//! Reporting protocol (partial sign-ins), attacker-made lockouts, caller
//! times, address spellings, account spellings.

use std::sync::Arc;

use stepgate::config::{
    Config, IdentifiersConfig, NetworkConfig, StoreConfig, UserIdNormalization,
};
use stepgate::engine::ManualClock;
use stepgate::server::proto::{self, Event, Outcome, ReportEffect};
use tonic::Code;

use crate::harness::*;

const T0: i64 = 1_800_000_000;

fn effect(response: &proto::ReportOutcomeResponse) -> ReportEffect {
    ReportEffect::try_from(response.effect).expect("known effect")
}

/// (effect, required level, reached level, decision found).
fn judged(response: &proto::ReportOutcomeResponse) -> (ReportEffect, u32, u32, bool) {
    (
        effect(response),
        response.required_aal,
        response.reached_aal,
        response.decision_found,
    )
}

// ---- 1. Learning only from sign-ins completed at the level asked for ----

#[tokio::test]
async fn a_password_then_a_failed_second_factor_teaches_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let asked = decide("login", "dave", "atk-dev", "203.0.113.66", 1);
    let d = ask(&mut client, asked.clone()).await;
    assert_eq!(seen(&d), expect(Outcome::StepUp, 2, &["login-new-device"]));

    let password = send(&mut client, answering(&d, &asked, Event::AuthSucceeded)).await;
    assert_eq!(judged(&password), (ReportEffect::Partial, 2, 1, true));
    let otp = send(&mut client, answering(&d, &asked, Event::StepUpFailed)).await;
    assert_eq!(judged(&otp), (ReportEffect::FailureCounted, 2, 1, true));

    let again = ask(&mut client, asked).await;
    assert_eq!(
        seen(&again),
        expect(Outcome::StepUp, 2, &["login-new-device"]),
        "the attacker's device is still new"
    );
    let risk = again.risk.expect("risk");
    assert!(
        risk.signals
            .iter()
            .any(|s| s.name == "behaviour.first_sign_in"),
        "no sign-in completed, so none is remembered"
    );
}

#[tokio::test]
async fn failed_second_factors_after_accepted_passwords_add_up_to_a_denial() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let asked = decide("login", "dave", "atk-dev", "203.0.113.66", 1);
    for round in 1..=50 {
        let d = ask(&mut client, asked.clone()).await;
        let outcome = seen(&d);
        // Round r sees the r - 1 second factors failed before it.
        if round <= 20 {
            assert_eq!(
                (outcome.outcome, outcome.required_aal),
                (Outcome::StepUp, 2),
                "round {round}"
            );
        } else {
            assert_eq!(
                outcome,
                expect(Outcome::Deny, 0, &["user-failures-deny"]),
                "round {round}"
            );
        }
        let password = send(&mut client, answering(&d, &asked, Event::AuthSucceeded)).await;
        let expected = if round <= 20 {
            ReportEffect::Partial
        } else {
            ReportEffect::IgnoredDenied
        };
        assert_eq!(effect(&password), expected, "round {round}");
        send(&mut client, answering(&d, &asked, Event::StepUpFailed)).await;
    }
}

#[tokio::test]
async fn reports_without_a_decision_teach_only_a_multi_factor_sign_in() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // The same attack, reported without decision ids.
    for _ in 0..3 {
        let password = tell(
            &mut client,
            "dave",
            "atk-dev",
            "203.0.113.66",
            Event::AuthSucceeded,
        )
        .await;
        assert_eq!(judged(&password), (ReportEffect::Partial, 2, 1, false));
        let otp = tell(
            &mut client,
            "dave",
            "atk-dev",
            "203.0.113.66",
            Event::StepUpFailed,
        )
        .await;
        assert_eq!(effect(&otp), ReportEffect::FailureCounted);
    }
    let answer = ask(
        &mut client,
        decide("login", "dave", "atk-dev", "203.0.113.66", 1),
    )
    .await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );

    // A step-up passed, or any sign-in reaching AAL2, completes.
    let passed = tell(
        &mut client,
        "erin",
        "phone",
        "203.0.113.7",
        Event::StepUpSucceeded,
    )
    .await;
    assert_eq!(judged(&passed), (ReportEffect::Completed, 2, 2, false));
    let answer = ask(
        &mut client,
        decide("login", "erin", "phone", "203.0.113.7", 1),
    )
    .await;
    assert_eq!(seen(&answer).outcome, Outcome::Allow);
}

#[tokio::test]
async fn a_step_up_below_the_level_asked_for_is_partial_and_the_right_level_completes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", "203.0.113.7").await;
    // A payment from a new device asks for AAL3.
    let asked = decide("payment", "alice", "kiosk", "203.0.113.7", 2);
    let d = ask(&mut client, asked.clone()).await;
    assert_eq!((seen(&d).outcome, d.required_aal), (Outcome::StepUp, 3));

    let mut at_two = answering(&d, &asked, Event::StepUpSucceeded);
    at_two.reached_aal = 2;
    assert_eq!(
        judged(&send(&mut client, at_two).await),
        (ReportEffect::Partial, 3, 2, true)
    );
    let still = ask(&mut client, asked.clone()).await;
    assert_eq!(seen(&still).required_aal, 3, "kiosk is still new");

    let passed = send(&mut client, answering(&d, &asked, Event::StepUpSucceeded)).await;
    assert_eq!(judged(&passed), (ReportEffect::Completed, 3, 3, true));
    let now_known = ask(
        &mut client,
        decide("payment", "alice", "kiosk", "203.0.113.7", 2),
    )
    .await;
    assert_eq!(seen(&now_known).outcome, Outcome::Allow);
}

#[tokio::test]
async fn an_allowed_sign_in_completes_with_the_password_alone() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", "203.0.113.7").await;
    fail_on(&mut client, "alice", "laptop", "203.0.113.7", 3).await;
    let asked = decide("login", "alice", "laptop", "203.0.113.7", 1);
    let d = ask(&mut client, asked.clone()).await;
    assert_eq!(seen(&d).outcome, Outcome::Allow);
    let done = send(&mut client, answering(&d, &asked, Event::AuthSucceeded)).await;
    assert_eq!(judged(&done), (ReportEffect::Completed, 1, 1, true));
    let risk = ask(&mut client, asked).await.risk.expect("risk");
    assert!(
        !risk
            .signals
            .iter()
            .any(|s| s.name == "behaviour.user_failures"),
        "the completed sign-in reset the failures: {risk:?}"
    );
}

#[tokio::test]
async fn a_success_reported_against_a_denial_teaches_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 0..10 {
        fail(&mut client, &format!("victim{i}"), "203.0.113.66", 1).await;
    }
    let asked = decide("login", "mallory", "atk-dev", "203.0.113.66", 1);
    let d = ask(&mut client, asked.clone()).await;
    assert_eq!(seen(&d), expect(Outcome::Deny, 0, &["stuffing-ip"]));
    let mut claimed = answering(&d, &asked, Event::StepUpSucceeded);
    claimed.reached_aal = 3;
    assert_eq!(
        judged(&send(&mut client, claimed).await),
        (ReportEffect::IgnoredDenied, 0, 3, true)
    );
    let elsewhere = ask(
        &mut client,
        decide("login", "mallory", "atk-dev", "203.0.113.9", 1),
    )
    .await;
    assert_eq!(
        seen(&elsewhere),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
}

#[tokio::test]
async fn a_report_naming_another_users_decision_is_refused_and_changes_nothing() {
    let (server, spy) = TestServer::start_spied().await;
    let mut client = server.client().await;
    let asked = decide("login", "dave", "atk-dev", "203.0.113.66", 1);
    let d = ask(&mut client, asked.clone()).await;
    let (_, writes) = spy.calls();
    type Edit = Box<dyn Fn(&mut proto::ReportOutcomeRequest)>;
    let mismatches: [(&str, Edit, &str); 4] = [
        (
            "another user",
            Box::new(|r| r.subject.as_mut().expect("subject").user_id = "carol".into()),
            "`subject`: is not the subject of decision",
        ),
        (
            "another journey",
            Box::new(|r| r.journey = "payment".into()),
            "`journey`: `payment` is not the journey decision",
        ),
        (
            "another device",
            Box::new(|r| r.device.as_mut().expect("device").id = "carol-phone".into()),
            "`device.id`: is not the device decision",
        ),
        (
            "another tenant",
            Box::new(|r| r.subject.as_mut().expect("subject").tenant = "acme".into()),
            "`subject`: is not the subject of decision",
        ),
    ];
    for (name, edit, message) in mismatches {
        let mut report = answering(&d, &asked, Event::StepUpSucceeded);
        edit(&mut report);
        let status = client.report_outcome(report).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: {}",
            status.message()
        );
        assert!(status.message().contains(&d.decision_id), "{name}");
        assert_eq!(spy.calls().1, writes, "{name}: nothing written");
    }
    // A failure is counted whatever it names: against the user it names.
    let mut carol_failed = answering(&d, &asked, Event::StepUpFailed);
    carol_failed.subject.as_mut().expect("subject").user_id = "carol".into();
    assert_eq!(
        effect(&send(&mut client, carol_failed).await),
        ReportEffect::FailureCounted
    );
    // Leaving the device out of the report uses the decision's own device.
    let mut without_device = answering(&d, &asked, Event::StepUpSucceeded);
    without_device.device = None;
    assert_eq!(
        effect(&send(&mut client, without_device).await),
        ReportEffect::Completed
    );
    let known = ask(&mut client, asked).await;
    assert_eq!(seen(&known).outcome, Outcome::Allow);
}

#[tokio::test]
async fn a_decision_made_without_a_device_learns_the_device_its_completion_names() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let asked = decide("login", "ivan", "", "203.0.113.7", 1);
    let d = ask(&mut client, asked.clone()).await;
    assert_eq!(seen(&d), expect(Outcome::StepUp, 2, &["login-new-device"]));
    // The IdP set a device cookie during the sign-in.
    let mut done = answering(&d, &asked, Event::StepUpSucceeded);
    done.device = Some(proto::Device {
        id: "new-cookie".into(),
        user_agent: String::new(),
    });
    assert_eq!(
        effect(&send(&mut client, done).await),
        ReportEffect::Completed
    );
    let next = ask(
        &mut client,
        decide("login", "ivan", "new-cookie", "203.0.113.7", 1),
    )
    .await;
    assert_eq!(seen(&next).outcome, Outcome::Allow);
}

#[tokio::test]
async fn a_report_after_the_decision_expired_is_judged_without_it() {
    let clock = Arc::new(ManualClock::new(T0));
    let config = Config {
        policies_dir: bundled_policies(),
        store: StoreConfig {
            decision_ttl_secs: 600,
            ..StoreConfig::default()
        },
        ..Config::default()
    };
    let server = TestServer::start_with_clock(config, clock.clone()).await;
    let mut client = server.client().await;
    let asked = decide("login", "dave", "phone", "203.0.113.7", 1);
    let d = ask(&mut client, asked.clone()).await;
    clock.advance(599);
    let fresh = send(&mut client, answering(&d, &asked, Event::AuthSucceeded)).await;
    assert_eq!(judged(&fresh), (ReportEffect::Partial, 2, 1, true));
    clock.advance(1);
    // What the forgotten decision asked for is unknown: a step-up proves
    // nothing until the caller says what was reached.
    let late = send(&mut client, answering(&d, &asked, Event::StepUpSucceeded)).await;
    assert_eq!(judged(&late), (ReportEffect::Partial, 2, 1, false));
    assert_eq!(
        seen(&ask(&mut client, asked.clone()).await).outcome,
        Outcome::StepUp
    );
    let mut said = answering(&d, &asked, Event::StepUpSucceeded);
    said.reached_aal = 2;
    assert_eq!(
        judged(&send(&mut client, said).await),
        (ReportEffect::Completed, 2, 2, false)
    );
    let metrics = server.engine.metrics();
    assert_eq!(
        metrics.reports(stepgate::decision::ReportEffect::Completed, "forgotten"),
        1
    );
    assert_eq!(
        metrics.reports(stepgate::decision::ReportEffect::Partial, "found"),
        1
    );
}

// ---- 2. An attacker's failures never lock the real user out ----

#[tokio::test]
async fn failures_from_elsewhere_never_deny_the_users_own_device() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "carol", "carol-phone", "81.2.69.142").await;
    fail(&mut client, "carol", "203.0.113.66", 20).await;
    let own = |aal| decide("login", "carol", "carol-phone", "81.2.69.142", aal);
    assert_eq!(
        seen(&ask(&mut client, own(3)).await),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );
    assert_eq!(
        seen(&ask(&mut client, own(1)).await),
        expect(Outcome::StepUp, 2, &["user-failures-step-up"]),
        "a step-up at most"
    );
    // Failures from another device, at the user's own address, the same.
    fail_on(&mut client, "carol", "atk-dev", "81.2.69.142", 20).await;
    let answer = ask(&mut client, own(2)).await;
    assert_eq!(seen(&answer).outcome, Outcome::Allow);
    // The attacker's device, and a device named by nobody, are denied.
    for device in ["atk-dev", ""] {
        let theirs = ask(
            &mut client,
            decide("login", "carol", device, "203.0.113.66", 3),
        )
        .await;
        assert_eq!(
            seen(&theirs),
            expect(Outcome::Deny, 0, &["user-failures-deny"]),
            "device {device:?}"
        );
    }
}

#[tokio::test]
async fn failures_on_the_users_own_device_still_deny_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "carol", "carol-phone", "81.2.69.142").await;
    fail_on(&mut client, "carol", "carol-phone", "198.51.100.9", 20).await;
    let answer = ask(
        &mut client,
        decide("login", "carol", "carol-phone", "81.2.69.142", 3),
    )
    .await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::Deny, 0, &["user-failures-deny"])
    );
}

#[tokio::test]
async fn behind_a_shared_address_full_of_failures_a_known_device_meets_a_step_up() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let nat = "198.51.100.200";
    sign_in(&mut client, "frank", "laptop", nat).await;
    for i in 0..12 {
        fail(&mut client, &format!("student{i}"), nat, 1).await;
    }
    let known = |aal| decide("login", "frank", "laptop", nat, aal);
    let step = ask(&mut client, known(1)).await;
    assert_eq!(
        seen(&step),
        expect(
            Outcome::StepUp,
            2,
            &["high-risk-needs-aal2", "stuffing-ip-known-device"]
        )
    );
    assert_eq!(
        seen(&ask(&mut client, known(2)).await).outcome,
        Outcome::Allow
    );
    let stranger = ask(&mut client, decide("login", "frank", "kiosk", nat, 3)).await;
    assert_eq!(seen(&stranger), expect(Outcome::Deny, 0, &["stuffing-ip"]));
}

// ---- 3. Times from callers are bounded ----

const FRESHNESS: &str = r#"@id("payment-fresh-auth")
@reason("a payment needs an authentication in the last five minutes")
forbid (principal, action == Action::"payment", resource)
when {
  !(context.authn has seconds_since_auth && context.authn.seconds_since_auth <= 300)
};
"#;

#[tokio::test]
async fn an_auth_time_beyond_the_clock_skew_is_refused_and_within_it_reads_as_now() {
    let dir = bundled_policies_with(&[("fresh.cedar", FRESHNESS)]);
    let clock = Arc::new(ManualClock::new(T0));
    let config = Config {
        policies_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let server = TestServer::start_with_clock(config, clock).await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", "203.0.113.7").await;
    let payment = |auth_time: i64| {
        let mut r = decide("payment", "alice", "laptop", "203.0.113.7", 2);
        r.authn.as_mut().expect("authn").auth_time = auth_time;
        r
    };
    for (name, at, outcome) in [
        ("a minute ago", T0 - 60, Outcome::Allow),
        ("two minutes ahead", T0 + 120, Outcome::Allow),
        ("at the edge of the skew", T0 + 300, Outcome::Allow),
        // Too old: authenticate again at AAL2 (a hand-written age test
        // names no age, so the answer asks for one made now).
        ("ten minutes ago", T0 - 600, Outcome::StepUp),
    ] {
        assert_eq!(
            seen(&ask(&mut client, payment(at)).await).outcome,
            outcome,
            "{name}"
        );
    }
    let asked = payment(T0 - 600);
    let stale = ask(&mut client, asked.clone()).await;
    assert_eq!((stale.required_aal, stale.max_age), (2, Some(0)));
    // Asked to authenticate again at AAL2: a password alone is a first
    // factor; the step-up itself completes it.
    for (event, effect) in [
        (Event::AuthSucceeded, ReportEffect::Partial),
        (Event::StepUpSucceeded, ReportEffect::Completed),
    ] {
        let judged = send(&mut client, answering(&stale, &asked, event)).await;
        assert_eq!(
            ReportEffect::try_from(judged.effect),
            Ok(effect),
            "{event:?}"
        );
    }
    for (name, at) in [
        ("milliseconds by mistake", T0 * 1000),
        ("a year ahead", T0 + 365 * 86_400),
        ("the largest time", i64::MAX),
        ("one second past the skew", T0 + 301),
    ] {
        let status = client.decide(payment(at)).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert!(
            status.message().starts_with("`authn.auth_time`: ")
                && status.message().contains("ahead of the server clock"),
            "{name}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn a_refused_auth_time_changes_nothing_stored() {
    let (server, spy) = TestServer::start_spied().await;
    let mut client = server.client().await;
    let mut request = decide("login", "alice", "laptop", "203.0.113.7", 1);
    request.authn.as_mut().expect("authn").auth_time = i64::MAX;
    let status = client.decide(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(spy.calls(), (0, 0));
}

// ---- 4. One client, many spellings of its address ----

#[tokio::test]
async fn nat64_clients_are_counted_by_the_ipv4_address_they_embed() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "grace", "laptop", "64:ff9b::808:808").await;
    // Ten different IPv4 clients (198.51.100.1 .. .10), one failure each.
    for i in 1..=10 {
        fail(
            &mut client,
            &format!("user{i}"),
            &format!("64:ff9b::c633:64{i:02x}"),
            1,
        )
        .await;
    }
    for journey in ["login", "payment"] {
        let answer = ask(
            &mut client,
            decide(journey, "grace", "laptop", "64:ff9b::808:808", 3),
        )
        .await;
        assert_eq!(seen(&answer).outcome, Outcome::Allow, "{journey}");
    }
    // One IPv4 client is still one client, however it is spelled.
    for i in 1..=10 {
        fail(&mut client, &format!("other{i}"), "64:ff9b::c633:6401", 1).await;
    }
    for spelling in [
        "198.51.100.1",
        "::ffff:198.51.100.1",
        "64:ff9b::198.51.100.1",
    ] {
        let answer = ask(&mut client, decide("login", "grace", "kiosk", spelling, 3)).await;
        assert_eq!(
            seen(&answer),
            expect(Outcome::Deny, 0, &["stuffing-ip"]),
            "{spelling}"
        );
    }
}

#[tokio::test]
async fn six_to_four_teredo_and_a_network_specific_prefix_read_as_their_ipv4_client() {
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        network: NetworkConfig {
            nat64_prefixes: vec!["64:ff9b::/96".into(), "2001:db8:122::/48".into()],
        },
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    // Ten users fail from 192.0.2.33, each arriving in another form.
    let forms = [
        "2002:c000:221::1",
        "2002:c000:221:9::2",
        "2001:0:4136:e378:8000:63bf:3fff:fdde",
        "2001:db8:122:c000:2:2100::",
        "2001:db8:122:c000:2:2100:0:7",
        "::ffff:0:192.0.2.33",
        "64:ff9b::c000:221",
        "::ffff:192.0.2.33",
        "192.0.2.33",
        "2002:c000:221:ffff::",
    ];
    for (i, form) in forms.iter().enumerate() {
        fail(&mut client, &format!("user{i}"), form, 1).await;
    }
    let answer = ask(
        &mut client,
        decide("login", "heidi", "kiosk", "192.0.2.33", 3),
    )
    .await;
    assert_eq!(seen(&answer), expect(Outcome::Deny, 0, &["stuffing-ip"]));
}

// ---- 8. The same account spelled differently ----

fn normalising(mode: UserIdNormalization) -> Config {
    Config {
        policies_dir: bundled_policies(),
        identifiers: IdentifiersConfig {
            user_id_normalization: mode,
        },
        ..Config::default()
    }
}

#[tokio::test]
async fn with_case_folding_every_spelling_of_an_account_shares_its_failures() {
    let folded = TestServer::start_with(normalising(UserIdNormalization::NfcTrimCasefold)).await;
    let exact = TestServer::start().await;
    for (server, expected) in [(&folded, Outcome::StepUp), (&exact, Outcome::Allow)] {
        let mut client = server.client().await;
        sign_in(&mut client, "alice", "laptop", "203.0.113.7").await;
        for spelling in ["Alice", "ALICE", "alice ", " aLiCe", "alice"] {
            fail_on(&mut client, spelling, "laptop", "203.0.113.7", 1).await;
        }
        let answer = ask(
            &mut client,
            decide("login", "alice", "laptop", "203.0.113.7", 1),
        )
        .await;
        assert_eq!(seen(&answer).outcome, expected);
    }
}

#[tokio::test]
async fn with_nfc_the_composed_and_decomposed_forms_are_one_account() {
    let nfc = TestServer::start_with(normalising(UserIdNormalization::NfcTrim)).await;
    let exact = TestServer::start().await;
    for (server, known) in [(&nfc, true), (&exact, false)] {
        let mut client = server.client().await;
        sign_in(&mut client, "zoe\u{308}", "laptop", "203.0.113.7").await;
        let composed = decide("login", "zo\u{eb} ", "laptop", "203.0.113.7", 1);
        let answer = ask(&mut client, composed).await;
        let expected = if known {
            Outcome::Allow
        } else {
            Outcome::StepUp
        };
        assert_eq!(seen(&answer).outcome, expected, "known: {known}");
    }
    // Case is kept without folding.
    let mut client = nfc.client().await;
    let upper = ask(
        &mut client,
        decide("login", "ZO\u{cb}", "laptop", "203.0.113.7", 1),
    )
    .await;
    assert_eq!(seen(&upper).outcome, Outcome::StepUp);
}

#[tokio::test]
async fn a_decision_without_a_device_is_completed_on_one_device_only() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let asked = decide("login", "judy", "", "203.0.113.7", 1);
    let d = ask(&mut client, asked.clone()).await;
    let on = |device: &str| {
        let mut report = answering(&d, &asked, Event::StepUpSucceeded);
        report.device = Some(proto::Device {
            id: device.into(),
            user_agent: String::new(),
        });
        report
    };
    assert_eq!(
        effect(&send(&mut client, on("n1")).await),
        ReportEffect::Completed
    );
    assert_eq!(
        effect(&send(&mut client, on("n1")).await),
        ReportEffect::Completed,
        "again, same device"
    );
    let status = client
        .report_outcome(on("n2"))
        .await
        .expect_err("a second device");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("`device.id`: is not the device decision"),
        "{status:?}"
    );
    let n2 = ask(&mut client, decide("login", "judy", "n2", "203.0.113.7", 1)).await;
    assert_eq!(seen(&n2), expect(Outcome::StepUp, 2, &["login-new-device"]));
}

#[tokio::test]
async fn a_failure_with_a_meaningless_level_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut failed = report("login", "kate", "laptop", "203.0.113.7", Event::AuthFailed);
    failed.reached_aal = 7;
    let status = client
        .report_outcome(failed.clone())
        .await
        .expect_err("aal 7");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("`reached_aal`: 7"), "{status:?}");
    let failures = |risk: &stepgate::server::proto::Risk| {
        risk.signals
            .iter()
            .any(|s| s.name == "behaviour.user_failures")
    };
    let asked = decide("login", "kate", "laptop", "203.0.113.7", 1);
    let risk = ask(&mut client, asked.clone()).await.risk.expect("risk");
    assert!(!failures(&risk), "the refused report counted nothing");
    // The same failure with a valid level (ignored on a failure) counts.
    failed.reached_aal = 2;
    let done = send(&mut client, failed).await;
    assert_eq!(judged(&done), (ReportEffect::FailureCounted, 2, 1, false));
    let risk = ask(&mut client, asked).await.risk.expect("risk");
    assert!(failures(&risk));
}

#[tokio::test]
async fn sign_up_cannot_teach_a_device_to_an_existing_account() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "jack", "j1", "198.51.100.13").await;
    let asked = decide("signup", "jack", "attacker", "192.0.2.66", 1);
    let d = ask(&mut client, asked.clone()).await;
    assert_eq!(
        seen(&d),
        expect(Outcome::Deny, 0, &["signup-existing-account"])
    );
    let claimed = send(&mut client, answering(&d, &asked, Event::AuthSucceeded)).await;
    assert_eq!(effect(&claimed), ReportEffect::IgnoredDenied);
    for (journey, aal) in [("login", 1), ("payment", 2)] {
        let answer = ask(
            &mut client,
            decide(journey, "jack", "attacker", "192.0.2.66", aal),
        )
        .await;
        assert_eq!(seen(&answer).outcome, Outcome::StepUp, "{journey}");
    }
    // A new account signs up on its first device, which then is known.
    let fresh = decide("signup", "newbie", "phone", "192.0.2.66", 1);
    let d = ask(&mut client, fresh.clone()).await;
    assert_eq!(seen(&d).outcome, Outcome::Allow);
    let done = send(&mut client, answering(&d, &fresh, Event::AuthSucceeded)).await;
    assert_eq!(effect(&done), ReportEffect::Completed);
}

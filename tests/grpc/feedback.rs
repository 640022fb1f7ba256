//! Feedback that un-trusts (`EVENT_COMPROMISED`, `EVENT_CONFIRMED_SAFE`)
//! end to end over gRPC, with the bundled pack: a compromise un-trusts the
//! reported session's device and marks the account, which steps up until
//! it passes one; confirmed safe lifts the mark. The same scenario runs on
//! the Redis store (tests/grpc/redis.rs).

use stepgate::server::proto::decision_service_client::DecisionServiceClient;
use stepgate::server::proto::{self, Event, Outcome, ReportEffect};
use tonic::transport::Channel;

use crate::harness::*;

const HOME: &str = "203.0.113.7";

/// What a report did, and the level it says was reached.
async fn effect(
    client: &mut DecisionServiceClient<Channel>,
    request: proto::ReportOutcomeRequest,
) -> (Result<ReportEffect, prost::UnknownEnumValue>, u32, bool) {
    let done = send(client, request).await;
    (
        ReportEffect::try_from(done.effect),
        done.reached_aal,
        done.decision_found,
    )
}

/// The scenario, reporting through `a` and asking through `b` (two
/// replicas on one store, or the same server twice). `settle`: how long
/// `b` may still trust a device `a` un-trusted (its L1's lifetime).
pub async fn compromise_steps_up_until_passed_and_confirmed_safe_clears(
    a: &mut DecisionServiceClient<Channel>,
    b: &mut DecisionServiceClient<Channel>,
    settle: std::time::Duration,
) {
    sign_in(a, "alice", "laptop", HOME).await;
    sign_in(a, "alice", "phone", HOME).await;
    let asked = decide("login", "alice", "laptop", HOME, 1);
    let session = ask(a, asked.clone()).await;
    assert_eq!(
        seen(&session),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );

    // "That wasn't me", naming the session.
    let reported = effect(a, answering(&session, &asked, Event::Compromised)).await;
    assert_eq!(reported, (Ok(ReportEffect::Untrusted), 0, true));

    // The session's device is no longer known, and the account steps up
    // to a new authentication.
    let laptop = ask(a, decide("login", "alice", "laptop", HOME, 1)).await;
    assert_eq!(
        seen(&laptop),
        expect(
            Outcome::StepUp,
            2,
            &["account-reported-compromised", "login-new-device"]
        )
    );
    assert_eq!(laptop.max_age, Some(900));
    // A multi-factor sign-in reported without a decision under the mark
    // teaches nothing, and says so.
    let mut undecided = report("login", "alice", "tablet", HOME, Event::AuthSucceeded);
    undecided.reached_aal = 2;
    assert_eq!(
        effect(a, undecided).await.0,
        Ok(ReportEffect::IgnoredCompromised)
    );
    // An AAL2 session from before the report proves nothing fresh, on
    // the other replica too.
    let payment = ask(b, decide("payment", "alice", "phone", HOME, 2)).await;
    assert_eq!(
        seen(&payment),
        expect(
            Outcome::StepUp,
            2,
            &[
                "account-reported-compromised",
                "payment-recent-authentication"
            ]
        )
    );
    assert_eq!(payment.max_age, Some(900), "the smaller of 15 min and 1 h");

    // A first factor does not lift the mark; the step-up does.
    let asked = decide("login", "alice", "phone", HOME, 1);
    let step_up = ask(b, asked.clone()).await;
    assert_eq!(
        seen(&step_up),
        expect(Outcome::StepUp, 2, &["account-reported-compromised"])
    );
    let first = effect(a, answering(&step_up, &asked, Event::AuthSucceeded)).await;
    assert_eq!(first.0, Ok(ReportEffect::Partial));
    let still = ask(b, decide("login", "alice", "phone", HOME, 1)).await;
    assert_eq!(seen(&still).outcome, Outcome::StepUp);
    let passed = effect(a, answering(&step_up, &asked, Event::StepUpSucceeded)).await;
    assert_eq!(passed, (Ok(ReportEffect::Completed), 2, true));
    let lifted = ask(b, decide("login", "alice", "phone", HOME, 1)).await;
    assert_eq!(
        seen(&lifted),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );

    // A compromise naming only a device; confirmed safe lifts the mark but
    // does not make the device known again.
    let device_only = report("login", "alice", "phone", HOME, Event::Compromised);
    assert_eq!(
        effect(a, device_only).await,
        (Ok(ReportEffect::Untrusted), 0, false)
    );
    tokio::time::sleep(settle).await;
    let marked = ask(b, decide("login", "alice", "phone", HOME, 1)).await;
    assert_eq!(
        seen(&marked),
        expect(
            Outcome::StepUp,
            2,
            &["account-reported-compromised", "login-new-device"]
        )
    );
    let safe = report("login", "alice", "", HOME, Event::ConfirmedSafe);
    assert_eq!(effect(a, safe).await, (Ok(ReportEffect::Cleared), 0, false));
    let cleared = ask(b, decide("login", "alice", "phone", HOME, 1)).await;
    assert_eq!(
        seen(&cleared),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
}

#[tokio::test]
async fn compromise_on_the_memory_store_steps_up_until_passed_and_confirmed_safe_clears() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut same = server.client().await;
    compromise_steps_up_until_passed_and_confirmed_safe_clears(
        &mut client,
        &mut same,
        std::time::Duration::ZERO,
    )
    .await;
}

#[tokio::test]
async fn a_compromise_naming_another_users_decision_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let asked = decide("login", "bob", "bob-phone", HOME, 1);
    let bobs = ask(&mut client, asked.clone()).await;
    let mut forged = answering(&bobs, &asked, Event::Compromised);
    forged.subject = Some(proto::Subject {
        user_id: "alice".into(),
        tenant: String::new(),
    });
    forged.device = None;
    let status = client.report_outcome(forged).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("`subject`"), "{status:?}");
    let alice = ask(&mut client, decide("login", "alice", "laptop", HOME, 1)).await;
    assert_eq!(seen(&alice), expect(Outcome::Allow, 0, &["journey-permit"]));
}

#[tokio::test]
async fn feedback_is_recorded_in_the_decision_log_and_metrics() {
    let sink = crate::decision_log::Captured::default();
    let (server, _dir) = crate::decision_log::logged_server(
        stepgate::config::DecisionLogConfig::default(),
        Box::new(sink.clone()),
        1024,
    )
    .await;
    let mut client = server.client().await;
    send(
        &mut client,
        report("login", "alice", "laptop", HOME, Event::Compromised),
    )
    .await;
    send(
        &mut client,
        report("login", "alice", "", HOME, Event::ConfirmedSafe),
    )
    .await;
    let lines = crate::decision_log::lines(&server, &sink);
    let kinds: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap_or_default(),
                l["effect"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("compromised", "untrusted"), ("confirmed_safe", "cleared")],
        "{lines:#?}"
    );
    let scrape = Scrape(server.engine.metrics().render());
    for effect in ["untrusted", "cleared"] {
        assert_eq!(
            scrape.value(
                "stepgate_reports_total",
                &[("effect", effect), ("decision", "none")]
            ),
            Some(1.0),
            "{effect}"
        );
    }
}

#[tokio::test]
async fn feedback_arrives_through_the_json_door_too() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let feedback = |event: &str| {
        serde_json::json!({
            "journey": "login", "subject": {"userId": "alice"}, "device": {"id": "laptop"},
            "network": {"ip": HOME}, "event": event,
        })
    };
    let reply = post_json(
        &server,
        "/v1/report-outcome",
        &feedback("EVENT_COMPROMISED"),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["effect"], "REPORT_EFFECT_UNTRUSTED");
    let marked = ask(&mut client, decide("login", "alice", "laptop", HOME, 1)).await;
    assert_eq!(
        seen(&marked),
        expect(
            Outcome::StepUp,
            2,
            &["account-reported-compromised", "login-new-device"]
        )
    );
    let reply = post_json(
        &server,
        "/v1/report-outcome",
        &feedback("EVENT_CONFIRMED_SAFE"),
    )
    .await;
    assert_eq!(reply.json()["effect"], "REPORT_EFFECT_CLEARED");
}

//! Bad input gets INVALID_ARGUMENT naming the field and the rule, and
//! changes no stored context.

use stepgate::server::proto::{self, DecideRequest, Event, Outcome, ReportOutcomeRequest};
use tonic::Code;

use crate::decisions::{number, string};
use crate::harness::*;

const IP: &str = "198.51.100.30";

fn with_attributes(
    mut request: DecideRequest,
    fields: &[(&str, prost_types::Value)],
) -> DecideRequest {
    request.attributes = Some(prost_types::Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    });
    request
}

/// Every way a Decide request can be wrong, with the text its error must hold.
fn bad_decides() -> Vec<(&'static str, DecideRequest, &'static str)> {
    let good = || decide("login", "alice", "laptop", IP, 1);
    let mut cases = Vec::new();

    let mut r = good();
    r.journey = String::new();
    cases.push(("missing journey", r, "`journey`: is required"));

    let mut r = good();
    r.journey = "teleport".into();
    cases.push((
        "unknown journey",
        r,
        "`journey`: `teleport` is not a journey in the catalog",
    ));

    let mut r = good();
    r.journey = "Login!".into();
    cases.push((
        "malformed journey",
        r,
        "`journey`: `Login!` is not a journey name",
    ));

    let mut r = good();
    r.subject = None;
    cases.push(("missing subject", r, "`subject.user_id`: is required"));

    let mut r = good();
    r.subject.as_mut().expect("subject").user_id = String::new();
    cases.push(("empty user id", r, "`subject.user_id`: is required"));

    let mut r = good();
    r.subject.as_mut().expect("subject").user_id = "u".repeat(257);
    cases.push((
        "over-long user id",
        r,
        "`subject.user_id`: is 257 bytes; at most 256",
    ));

    let mut r = good();
    r.subject.as_mut().expect("subject").tenant = "t".repeat(129);
    cases.push((
        "over-long tenant",
        r,
        "`subject.tenant`: is 129 bytes; at most 128",
    ));

    let mut r = good();
    r.device.as_mut().expect("device").id = "d".repeat(257);
    cases.push((
        "over-long device id",
        r,
        "`device.id`: is 257 bytes; at most 256",
    ));

    let mut r = good();
    r.device.as_mut().expect("device").id = String::new();
    cases.push(("empty device id", r, "`device.id`: is empty"));

    let mut r = good();
    r.device.as_mut().expect("device").user_agent = "a".repeat(513);
    cases.push((
        "over-long user agent",
        r,
        "`device.user_agent`: is 513 bytes",
    ));

    let mut r = good();
    r.network.as_mut().expect("network").ip = "300.1.1.1".into();
    cases.push((
        "unparseable ip",
        r,
        "`network.ip`: `300.1.1.1` is not an IPv4 or IPv6 address",
    ));

    let mut r = good();
    r.network = None;
    cases.push(("missing ip", r, "`network.ip`: is required"));

    let mut r = good();
    r.authn.as_mut().expect("authn").aal = 4;
    cases.push(("aal above 3", r, "`authn.aal`: 4 is not an assurance level"));

    let mut r = good();
    r.authn.as_mut().expect("authn").amr = vec!["otp".into(); 17];
    cases.push((
        "too many amr values",
        r,
        "`authn.amr`: has 17 values; at most 16",
    ));

    let mut r = good();
    r.authn.as_mut().expect("authn").auth_time = -5;
    cases.push(("negative auth time", r, "`authn.auth_time`"));

    let mut r = good();
    r.request_id = "r".repeat(129);
    cases.push(("over-long request id", r, "`request_id`: is 129 bytes"));

    let r = with_attributes(
        decide("payment", "alice", "laptop", IP, 2),
        &[("amount", string("lots"))],
    );
    cases.push((
        "attribute of the wrong type",
        r,
        "`attributes`: do not match the schema for journey `payment`",
    ));

    let r = with_attributes(
        decide("payment", "alice", "laptop", IP, 2),
        &[("colour", string("blue"))],
    );
    cases.push(("attribute the schema does not declare", r, "colour"));

    let r = with_attributes(good(), &[("amount", number(12.5))]);
    cases.push((
        "fractional number",
        r,
        "`attributes.amount`: 12.5 is not a whole number",
    ));

    let many: Vec<(String, prost_types::Value)> = (0..65)
        .map(|i| (format!("k{i}"), number(f64::from(i))))
        .collect();
    let mut r = good();
    r.attributes = Some(prost_types::Struct {
        fields: many.into_iter().collect(),
    });
    cases.push((
        "too many attribute values",
        r,
        "`attributes`: holds more than 64 values",
    ));

    let mut r = good();
    r.authn.as_mut().expect("authn").amr = vec!["x".repeat(30); 15];
    r.device.as_mut().expect("device").user_agent = "a".repeat(500);
    r.attributes = Some(prost_types::Struct {
        fields: (0..60)
            .map(|i| (format!("k{i}"), string(&"v".repeat(300))))
            .collect(),
    });
    cases.push(("oversized message", r, "`request`: is "));

    cases
}

/// INVALID_ARGUMENT whose message names the field and the rule.
fn assert_refused(case: &str, status: &tonic::Status, expected: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert!(
        status.message().contains(expected),
        "{case}: `{}` should contain `{expected}`",
        status.message()
    );
}

#[tokio::test]
async fn every_bad_decide_is_invalid_argument_naming_the_field() {
    let (server, spy) = TestServer::start_spied().await;
    let mut client = server.client().await;
    for (name, request, expected) in bad_decides() {
        let status = client.decide(request).await.expect_err(name);
        assert_refused(name, &status, expected);
        assert_eq!(spy.calls(), (0, 0), "{name}: the store was consulted");
    }
    assert_eq!(
        server.store_sizes(),
        (0, 0),
        "refused requests touch nothing"
    );
}

#[tokio::test]
async fn attribute_errors_do_not_reveal_signals() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let request = with_attributes(
        decide("payment", "alice", "laptop", IP, 2),
        &[("amount", string("lots"))],
    );
    let status = client.decide(request).await.expect_err("refused");
    let message = status.message();
    assert!(message.contains("amount"), "{message}");
    assert!(!message.contains("known: true"), "{message}");
    assert!(
        !message.contains("seconds_since_last_success: "),
        "{message}"
    );
}

/// Bad reports, each of which would otherwise have written to the store.
fn bad_reports() -> Vec<(&'static str, ReportOutcomeRequest, &'static str)> {
    let good = || report("login", "alice", "laptop", IP, Event::AuthSucceeded);
    let mut cases = Vec::new();

    let mut r = good();
    r.journey = "teleport".into();
    cases.push((
        "unknown journey",
        r,
        "`journey`: `teleport` is not a journey in the catalog",
    ));

    let mut r = good();
    r.journey = String::new();
    cases.push(("missing journey", r, "`journey`: is required"));

    let mut r = good();
    r.event = Event::Unspecified.into();
    cases.push(("missing event", r, "`event`: is required"));

    let mut r = good();
    r.event = 42;
    cases.push(("unknown event", r, "`event`: 42 is not a known event"));

    let mut r = good();
    r.subject.as_mut().expect("subject").user_id = "u".repeat(300);
    cases.push(("over-long user id", r, "`subject.user_id`: is 300 bytes"));

    let mut r = good();
    r.device.as_mut().expect("device").id = "d".repeat(300);
    cases.push(("over-long device id", r, "`device.id`: is 300 bytes"));

    let mut r = good();
    r.network.as_mut().expect("network").ip = "not-an-ip".into();
    cases.push((
        "unparseable ip",
        r,
        "`network.ip`: `not-an-ip` is not an IPv4 or IPv6 address",
    ));

    let mut r = good();
    r.decision_id = "alice@example.com".into();
    cases.push((
        "decision id stepgate did not issue",
        r,
        "`decision_id`: `alice@example.com` is not a decision id",
    ));

    let mut r = good();
    r.device.as_mut().expect("device").id = String::new();
    cases.push(("empty device id", r, "`device.id`: is empty"));

    let mut r = good();
    r.decision_id = "x".repeat(65);
    cases.push(("over-long decision id", r, "`decision_id`: is 65 bytes"));

    let mut r = report("login", "alice", "laptop", IP, Event::AuthFailed);
    r.network = Some(proto::Network { ip: "1.2.3".into() });
    cases.push(("failure with a bad ip", r, "`network.ip`"));

    cases
}

#[tokio::test]
async fn every_bad_report_is_invalid_argument_and_changes_nothing() {
    let (server, spy) = TestServer::start_spied().await;
    let mut client = server.client().await;
    for (name, request, expected) in bad_reports() {
        let status = client.report_outcome(request).await.expect_err(name);
        assert_refused(name, &status, expected);
        assert_eq!(spy.calls(), (0, 0), "{name}: the store was consulted");
    }
    assert_eq!(
        server.store_sizes(),
        (0, 0),
        "no refused report reached the store"
    );
    // The device those refused successes named is still new.
    let answer = ask(&mut client, decide("login", "alice", "laptop", IP, 1)).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
}

#[tokio::test]
async fn a_message_beyond_the_transport_ceiling_is_refused_before_decoding() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut request = decide("login", "alice", "laptop", IP, 1);
    // Beyond the 1 MiB ceiling: tonic refuses it while decoding.
    request.request_id = "r".repeat(1024 * 1024 + 1);
    let status = client.decide(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    assert_eq!(server.store_sizes(), (0, 0));
}

//! Bad input gets INVALID_ARGUMENT naming the field and the rule, and
//! changes no stored context.

use stepgate::server::proto::{self, DecideRequest, Event, Outcome, ReportOutcomeRequest};
use tonic::Code;

use crate::decisions::{number, string};
use crate::harness::*;

const IP: &str = "198.51.100.30";

/// A refusal case: its name, the request, and text its error must contain.
type Case<R> = (&'static str, R, &'static str);

fn case<R>(
    name: &'static str,
    mut request: R,
    edit: impl FnOnce(&mut R),
    expected: &'static str,
) -> Case<R> {
    edit(&mut request);
    (name, request, expected)
}

fn subject(r: &mut DecideRequest) -> &mut proto::Subject {
    r.subject.as_mut().expect("subject")
}

fn device(r: &mut DecideRequest) -> &mut proto::Device {
    r.device.as_mut().expect("device")
}

fn authn(r: &mut DecideRequest) -> &mut proto::Authn {
    r.authn.as_mut().expect("authn")
}

/// Every way a Decide request can be wrong.
fn bad_decides() -> Vec<Case<DecideRequest>> {
    let good = || decide("login", "alice", "laptop", IP, 1);
    let payment = || decide("payment", "alice", "laptop", IP, 2);
    vec![
        case(
            "missing journey",
            good(),
            |r| r.journey.clear(),
            "`journey`: is required",
        ),
        case(
            "unknown journey",
            good(),
            |r| r.journey = "teleport".into(),
            "`journey`: `teleport` is not a journey in the catalog",
        ),
        case(
            "malformed journey",
            good(),
            |r| r.journey = "Login!".into(),
            "`journey`: `Login!` is not a journey name",
        ),
        case(
            "missing subject",
            good(),
            |r| r.subject = None,
            "`subject.user_id`: is required",
        ),
        case(
            "empty user id",
            good(),
            |r| subject(r).user_id.clear(),
            "`subject.user_id`: is required",
        ),
        case(
            "over-long user id",
            good(),
            |r| subject(r).user_id = "u".repeat(257),
            "`subject.user_id`: is 257 bytes; at most 256",
        ),
        case(
            "over-long tenant",
            good(),
            |r| subject(r).tenant = "t".repeat(129),
            "`subject.tenant`: is 129 bytes; at most 128",
        ),
        case(
            "over-long device id",
            good(),
            |r| device(r).id = "d".repeat(257),
            "`device.id`: is 257 bytes; at most 256",
        ),
        case(
            "empty device id",
            good(),
            |r| device(r).id.clear(),
            "`device.id`: is empty",
        ),
        case(
            "over-long user agent",
            good(),
            |r| device(r).user_agent = "a".repeat(513),
            "`device.user_agent`: is 513 bytes",
        ),
        case(
            "unparseable ip",
            good(),
            |r| {
                r.network = Some(proto::Network {
                    ip: "300.1.1.1".into(),
                })
            },
            "`network.ip`: `300.1.1.1` is not an IPv4 or IPv6 address",
        ),
        case(
            "missing ip",
            good(),
            |r| r.network = None,
            "`network.ip`: is required",
        ),
        case(
            "aal above 3",
            good(),
            |r| authn(r).aal = 4,
            "`authn.aal`: 4 is not an assurance level",
        ),
        case(
            "too many amr values",
            good(),
            |r| authn(r).amr = vec!["otp".into(); 17],
            "`authn.amr`: has 17 values; at most 16",
        ),
        case(
            "negative auth time",
            good(),
            |r| authn(r).auth_time = -5,
            "`authn.auth_time`",
        ),
        case(
            "over-long request id",
            good(),
            |r| r.request_id = "r".repeat(129),
            "`request_id`: is 129 bytes",
        ),
        case(
            "attribute of the wrong type",
            payment(),
            |r| set_attributes(r, &[("amount", string("lots"))]),
            "`attributes`: do not match the schema for journey `payment`",
        ),
        case(
            "attribute the schema does not declare",
            payment(),
            |r| set_attributes(r, &[("colour", string("blue"))]),
            "colour",
        ),
        case(
            "fractional number",
            good(),
            |r| set_attributes(r, &[("amount", number(12.5))]),
            "`attributes.amount`: 12.5 is not a whole number",
        ),
        case(
            "too many attribute values",
            good(),
            |r| {
                let many: Vec<(String, prost_types::Value)> = (0..65)
                    .map(|i| (format!("k{i}"), number(f64::from(i))))
                    .collect();
                r.attributes = Some(prost_types::Struct {
                    fields: many.into_iter().collect(),
                });
            },
            "`attributes`: holds more than 64 values",
        ),
        case(
            "oversized message",
            good(),
            |r| {
                authn(r).amr = vec!["x".repeat(30); 15];
                device(r).user_agent = "a".repeat(500);
                r.attributes = Some(prost_types::Struct {
                    fields: (0..60)
                        .map(|i| (format!("k{i}"), string(&"v".repeat(300))))
                        .collect(),
                });
            },
            "`request`: is ",
        ),
    ]
}

fn set_attributes(request: &mut DecideRequest, fields: &[(&str, prost_types::Value)]) {
    request.attributes = Some(prost_types::Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    });
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
    let mut request = decide("payment", "alice", "laptop", IP, 2);
    set_attributes(&mut request, &[("amount", string("lots"))]);
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
fn bad_reports() -> Vec<Case<ReportOutcomeRequest>> {
    let good = || report("login", "alice", "laptop", IP, Event::AuthSucceeded);
    let failure = || report("login", "alice", "laptop", IP, Event::AuthFailed);
    let device = |r: &mut ReportOutcomeRequest| r.device.as_mut().expect("device").id.clear();
    vec![
        case(
            "unknown journey",
            good(),
            |r| r.journey = "teleport".into(),
            "`journey`: `teleport` is not a journey in the catalog",
        ),
        case(
            "missing journey",
            good(),
            |r| r.journey.clear(),
            "`journey`: is required",
        ),
        case(
            "missing event",
            good(),
            |r| r.event = Event::Unspecified.into(),
            "`event`: is required",
        ),
        case(
            "unknown event",
            good(),
            |r| r.event = 42,
            "`event`: 42 is not a known event",
        ),
        case(
            "over-long user id",
            good(),
            |r| r.subject.as_mut().expect("subject").user_id = "u".repeat(300),
            "`subject.user_id`: is 300 bytes",
        ),
        case(
            "over-long device id",
            good(),
            |r| r.device.as_mut().expect("device").id = "d".repeat(300),
            "`device.id`: is 300 bytes",
        ),
        case("empty device id", good(), device, "`device.id`: is empty"),
        case(
            "unparseable ip",
            good(),
            |r| {
                r.network = Some(proto::Network {
                    ip: "not-an-ip".into(),
                })
            },
            "`network.ip`: `not-an-ip` is not an IPv4 or IPv6 address",
        ),
        case(
            "decision id stepgate did not issue",
            good(),
            |r| r.decision_id = "alice@example.com".into(),
            "`decision_id`: `alice@example.com` is not a decision id",
        ),
        case(
            "over-long decision id",
            good(),
            |r| r.decision_id = "x".repeat(65),
            "`decision_id`: is 65 bytes",
        ),
        case(
            "failure with a bad ip",
            failure(),
            |r| r.network = Some(proto::Network { ip: "1.2.3".into() }),
            "`network.ip`",
        ),
    ]
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

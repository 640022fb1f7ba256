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
            "blank user id",
            good(),
            |r| subject(r).user_id = "  \t".into(),
            "`subject.user_id`: is empty once white space is trimmed",
        ),
        case(
            "user id with a control character",
            good(),
            |r| subject(r).user_id = "al\u{0}ice".into(),
            "`subject.user_id`: holds U+0000 at character 2",
        ),
        case(
            "user id with a line break",
            good(),
            |r| subject(r).user_id = "alice\nadmin".into(),
            "`subject.user_id`: holds U+000A at character 5",
        ),
        case(
            "tenant with an escape sequence",
            good(),
            |r| subject(r).tenant = "acme\u{1b}[0m".into(),
            "`subject.tenant`: holds U+001B at character 4",
        ),
        case(
            "device id with a control character",
            good(),
            |r| device(r).id = "laptop\u{7f}".into(),
            "`device.id`: holds U+007F at character 6",
        ),
        case(
            "user id with a zero-width space",
            good(),
            |r| subject(r).user_id = "ali\u{200b}ce".into(),
            "`subject.user_id`: holds U+200B at character 3, a control or invisible character",
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

/// A UUIDv7 in the form stepgate issues, so its other spellings are
/// well-formed UUIDs that are still refused.
const ISSUED_LOOKALIKE: &str = "019ad1c2-3e4f-7a5b-8c6d-7e8f9a0b1c2d";

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
            "is not a decision id stepgate issued",
        ),
        case(
            "nil uuid as decision id",
            good(),
            |r| r.decision_id = "00000000-0000-0000-0000-000000000000".into(),
            "is not a decision id stepgate issued",
        ),
        case(
            "version 4 uuid as decision id",
            good(),
            |r| r.decision_id = "9f0c5e36-6c4b-4e0b-8f7a-2f3c1d0e9b11".into(),
            "is not a decision id stepgate issued",
        ),
        case(
            "upper-case decision id",
            good(),
            |r| r.decision_id = ISSUED_LOOKALIKE.to_uppercase(),
            "is not a decision id stepgate issued",
        ),
        case(
            "braced decision id",
            good(),
            |r| r.decision_id = format!("{{{ISSUED_LOOKALIKE}}}"),
            "is not a decision id stepgate issued",
        ),
        case(
            "urn decision id",
            good(),
            |r| r.decision_id = format!("urn:uuid:{ISSUED_LOOKALIKE}"),
            "is not a decision id stepgate issued",
        ),
        case(
            "reached level above 3",
            good(),
            |r| r.reached_aal = 4,
            "`reached_aal`: 4 is not an assurance level",
        ),
        case(
            "user id with a control character",
            good(),
            |r| r.subject.as_mut().expect("subject").user_id = "bob\r".into(),
            "`subject.user_id`: holds U+000D at character 3",
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

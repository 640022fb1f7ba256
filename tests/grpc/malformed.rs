//! Messages that cannot be decoded and requests over the size limit, sent
//! as raw bytes over HTTP/2: every way a request can fail to become a
//! message is the caller's INVALID_ARGUMENT, on every RPC, and changes
//! nothing stored.

use prost::Message as _;
use stepgate::config::{Config, LimitsConfig};
use stepgate::server::proto::{Event, Outcome};
use tonic::Code;

use crate::harness::*;

const RPCS: [&str; 2] = ["Decide", "ReportOutcome"];
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

fn api(rpc: &str) -> String {
    format!("/stepgate.v1.DecisionService/{rpc}")
}

/// A valid message of `rpc`, encoded, about user `user`.
fn valid(rpc: &str, user: &str) -> Vec<u8> {
    match rpc {
        "Decide" => decide("login", user, "laptop", "203.0.113.7", 1).encode_to_vec(),
        _ => report("login", user, "laptop", "203.0.113.7", Event::AuthFailed).encode_to_vec(),
    }
}

/// `bytes` with the first `from` replaced by `to` (same length).
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("marker present");
    let mut out = bytes.to_vec();
    out.splice(at..at + from.len(), to.iter().copied());
    out
}

/// A Decide whose attributes nest `depth` structs deep.
fn deeply_nested(depth: usize) -> Vec<u8> {
    use prost_types::value::Kind;
    let mut value = prost_types::Value {
        kind: Some(Kind::BoolValue(true)),
    };
    for _ in 0..depth {
        value = prost_types::Value {
            kind: Some(Kind::StructValue(prost_types::Struct {
                fields: [("x".to_owned(), value)].into_iter().collect(),
            })),
        };
    }
    let mut request = decide("payment", "alice", "laptop", "203.0.113.7", 2);
    request.attributes = Some(prost_types::Struct {
        fields: [("deep".to_owned(), value)].into_iter().collect(),
    });
    request.encode_to_vec()
}

/// An unknown length-delimited field (number 99) of `len` bytes.
fn unknown_field(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::bytes::encode(99, &vec![b'z'; len], &mut out);
    out
}

fn assert_invalid(case: &str, status: &tonic::Status, expected: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert!(
        status.message().starts_with("`request`: ") && status.message().contains(expected),
        "{case}: `{}` should contain `{expected}`",
        status.message()
    );
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_invalid_argument_on_every_rpc() {
    let (server, spy) = TestServer::start_spied().await;
    for rpc in RPCS {
        let good = valid(rpc, "alXice");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "invalid UTF-8 in subject.user_id",
                patched(&good, b"alXice", b"al\xffice"),
                "invalid string value: data is not UTF-8 encoded",
            ),
            (
                "a message cut short",
                good.get(..good.len() - 6).expect("shorter").to_vec(),
                "cannot be decoded",
            ),
            (
                "bytes that are not protobuf",
                vec![0xff; 12],
                "cannot be decoded",
            ),
            (
                "a string field sent as a number",
                // Field 2 (`subject` / `journey`) with wire type 0.
                [&good[..], &[0x10, 0x01][..]].concat(),
                "invalid wire type",
            ),
        ];
        for (case, message, expected) in cases {
            let status = raw_call(server.channel().await, &api(rpc), frame(&message)).await;
            let case = format!("{rpc}: {case}");
            assert_invalid(&case, &status, expected);
            assert!(
                !status.message().contains("alXice"),
                "{case}: echoes content"
            );
        }
    }
    let deep = raw_call(
        server.channel().await,
        &api("Decide"),
        frame(&deeply_nested(150)),
    )
    .await;
    assert_invalid("150 levels of attributes", &deep, "recursion limit reached");
    // Shallow enough to decode: the field rules answer instead.
    let nested = raw_call(
        server.channel().await,
        &api("Decide"),
        frame(&deeply_nested(10)),
    )
    .await;
    assert_eq!(nested.code(), Code::InvalidArgument);
    assert!(
        nested.message().contains("nests deeper than 4 levels"),
        "{nested:?}"
    );
    assert_eq!(spy.calls(), (0, 0), "nothing read or written");
}

#[tokio::test]
async fn a_broken_grpc_frame_is_invalid_argument_on_every_rpc() {
    let (server, spy) = TestServer::start_spied().await;
    for rpc in RPCS {
        let good = valid(rpc, "alice");
        let framed = frame(&good);
        let mut compressed_flag = framed.clone();
        compressed_flag[0] = 1;
        let mut unknown_flag = framed.clone();
        unknown_flag[0] = 7;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "a frame cut short",
                framed.get(..framed.len() - 3).expect("shorter").to_vec(),
            ),
            ("a header cut short", vec![0, 0, 0]),
            ("no message at all", Vec::new()),
            ("the compressed flag without an encoding", compressed_flag),
            ("an unknown flag", unknown_flag),
            (
                "two messages in a unary call",
                [framed.clone(), framed.clone()].concat(),
            ),
        ];
        for (case, body) in cases {
            let status = raw_call(server.channel().await, &api(rpc), body).await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{rpc}: {case}: {status:?}"
            );
            assert!(
                status.message().starts_with("`request`: "),
                "{rpc}: {case}: {status:?}"
            );
        }
        // The same bytes, whole, are answered.
        let ok = raw_call(server.channel().await, &api(rpc), framed).await;
        assert_eq!(ok.code(), Code::Ok, "{rpc}: {ok:?}");
    }
    let (_, writes) = spy.calls();
    assert_eq!(
        writes, 2,
        "only the two whole requests wrote (a decision, a failure)"
    );
}

#[tokio::test]
async fn the_size_limit_applies_to_the_bytes_received_on_every_rpc() {
    let (server, spy) = TestServer::start_spied().await;
    for rpc in RPCS {
        // A valid message plus 500 KB the parser would throw away.
        let padded = [valid(rpc, "alice"), unknown_field(500_000)].concat();
        let status = raw_call(server.channel().await, &api(rpc), frame(&padded)).await;
        assert_invalid(rpc, &status, "is larger than 16384 bytes as received");
        assert!(
            status.message().contains("limits.max_request_bytes"),
            "{status:?}"
        );
        // Just over the limit is refused too; under it, unknown fields are
        // ignored as protobuf requires.
        let over = [valid(rpc, "alice"), unknown_field(16_384)].concat();
        let status = raw_call(server.channel().await, &api(rpc), frame(&over)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{rpc}");
    }
    assert_eq!(spy.calls(), (0, 0), "refused before anything ran");
    let under = [valid("Decide", "alice"), unknown_field(10_000)].concat();
    let status = raw_call(server.channel().await, &api("Decide"), frame(&under)).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
}

#[tokio::test]
async fn a_lower_configured_limit_is_what_is_enforced() {
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        limits: LimitsConfig {
            max_request_bytes: 512,
            ..LimitsConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    let mut big = decide("login", "alice", "laptop", "203.0.113.7", 1);
    big.request_id = "r".repeat(120);
    big.device.as_mut().expect("device").user_agent = "a".repeat(450);
    let status = client.decide(big).await.expect_err("over 512 bytes");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("is larger than 512 bytes"),
        "{status:?}"
    );
    let small = ask(
        &mut client,
        decide("login", "alice", "laptop", "203.0.113.7", 1),
    )
    .await;
    assert_eq!(seen(&small).outcome, Outcome::StepUp);
}

#[tokio::test]
async fn health_checks_get_the_same_answers_to_bad_bytes() {
    let server = TestServer::start().await;
    let check = |service: &str| {
        tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        }
        .encode_to_vec()
    };
    let ok = raw_call(server.channel().await, HEALTH_CHECK, frame(&check(""))).await;
    assert_eq!(ok.code(), Code::Ok, "{ok:?}");
    let unknown = raw_call(server.channel().await, HEALTH_CHECK, frame(&check("nope"))).await;
    assert_eq!(
        unknown.code(),
        Code::NotFound,
        "the service's own answers pass"
    );
    let framed = frame(&check("stepgate.v1.DecisionService"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a frame cut short",
            framed.get(..framed.len() - 2).expect("shorter").to_vec(),
        ),
        ("bytes that are not protobuf", frame(&[0xff; 8])),
        (
            "invalid UTF-8 in the service name",
            frame(&[0x0a, 0x03, b'a', 0xff, b'b']),
        ),
        (
            "a message over the limit",
            frame(&[check(""), unknown_field(20_000)].concat()),
        ),
    ];
    for (case, body) in cases {
        let status = raw_call(server.channel().await, HEALTH_CHECK, body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().starts_with("`request`: "),
            "{case}: {status:?}"
        );
    }
    let metrics = server.engine.metrics();
    assert_eq!(
        metrics.refusals("Check", "unauthenticated", "malformed_request"),
        3
    );
    assert_eq!(
        metrics.refusals("Check", "unauthenticated", "request_too_large"),
        1
    );
}

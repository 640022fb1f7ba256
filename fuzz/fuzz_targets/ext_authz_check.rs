//! Envoy `CheckRequest` bytes into the ext_authz door: whatever Envoy
//! sends, the answer is a `CheckResponse` carrying an HTTP answer for the
//! client (OK or denied), never a gRPC error and never a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::Authorization as _;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let engine = common::engine().clone();
    let gateway = Arc::new(stepgate::server::gateway::Gateway::new(
        &engine.config().gateway,
    ));
    let door = stepgate::server::ext_authz::ExtAuthz::new(engine, gateway);
    let answered = common::runtime().block_on(door.check(tonic::Request::new(request)));
    let response = answered.unwrap_or_else(|status| panic!("a gRPC error: {status:?}"));
    assert!(response.get_ref().http_response.is_some(), "an HTTP answer");
});

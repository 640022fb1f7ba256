//! Protobuf bytes into the gRPC door (`Decide`, `ReportOutcome` or
//! `ForgetUser`): decode, validate, decide. Whatever the bytes, the answer is a decision or the
//! caller's refusal, never an internal error or a panic.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use stepgate::server::proto::decision_service_server::DecisionService as _;
use stepgate::server::proto::{DecideRequest, ForgetUserRequest, ReportOutcomeRequest};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let api = stepgate::server::DecisionApi::new(common::engine().clone());
    let status = common::runtime().block_on(async {
        match which % 3 {
            0 => {
                let Ok(request) = DecideRequest::decode(bytes) else {
                    return None;
                };
                api.decide(tonic::Request::new(request)).await.err()
            }
            1 => {
                let Ok(request) = ReportOutcomeRequest::decode(bytes) else {
                    return None;
                };
                api.report_outcome(tonic::Request::new(request)).await.err()
            }
            _ => {
                let Ok(request) = ForgetUserRequest::decode(bytes) else {
                    return None;
                };
                api.forget_user(tonic::Request::new(request)).await.err()
            }
        }
    });
    if let Some(status) = status {
        assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
        assert!(!status.message().is_empty(), "a refusal says why");
    }
});

//! JSON bodies into the HTTP doors (`/v1/decide`, `/v1/report-outcome`,
//! the hook, AuthZEN evaluation and evaluations, `/v1/forget-user`)
//! through the real router: whatever the body, no answer is a 500 and none
//! panics.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

const PATHS: [&str; 6] = [
    "/v1/decide",
    "/v1/report-outcome",
    "/v1/hooks/decide",
    "/access/v1/evaluation",
    "/access/v1/evaluations",
    "/v1/forget-user",
];

fn router() -> &'static axum::Router {
    static ROUTER: std::sync::OnceLock<axum::Router> = std::sync::OnceLock::new();
    ROUTER.get_or_init(|| {
        let engine = common::engine().clone();
        let guard = stepgate::server::guard::Guard::for_engine(&engine)
            .unwrap_or_else(|e| panic!("guard: {e}"));
        let state = stepgate::server::http::HttpState::new(engine)
            .unwrap_or_else(|e| panic!("state: {e}"));
        stepgate::server::http::router(Arc::new(state), guard)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(which) % PATHS.len()];
    let request = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let response = common::runtime()
        .block_on(router().clone().oneshot(request))
        .unwrap_or_else(|e| match e {});
    assert_ne!(response.status().as_u16(), 500, "{path}");
});

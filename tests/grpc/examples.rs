//! The identity-provider examples in `examples/`, each run against a
//! served stepgate: the Auth0 post-login Action under Node with a recording
//! stand-in for Auth0's `api`, and the Ory Kratos web hook's Jsonnet body
//! rendered by `jsonnet` from the context Kratos passes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::*;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Runs a program, failing the test with its output if it fails.
fn run(program: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| unreachable!("cannot run `{program}` ({e}); `.ci/run` installs it"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`{program} {}` failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_auth0_action_steps_up_allows_reports_and_denies_against_stepgate() {
    let server = TestServer::start().await;
    let base = server.http_addr.clone();
    let dir = examples().join("auth0");
    let out = tokio::task::spawn_blocking(move || {
        run("node", &["test.mjs"], &[("STEPGATE_URL", &base)], &dir)
    })
    .await
    .expect("node ran");
    assert!(out.contains("auth0 action: ok"), "{out}");
}

/// The context Kratos hands a login `after` web hook (identity, flow,
/// request headers and cookies, the session being issued).
fn kratos_context(identity: &str, device: &str, aal: &str) -> Value {
    json!({
        "identity": {"id": identity, "traits": {"email": "someone@example.com"}},
        "flow": {"id": "7f3b3c5e-1111-4c3b-9c55-2f0d6a3b9a10", "type": "browser"},
        "request_headers": {
            "User-Agent": ["Mozilla/5.0 (test)"],
            // The client's own line first, then the line the proxy added.
            "X-Forwarded-For": ["6.6.6.6, 10.9.9.9", "203.0.113.7"],
        },
        "request_cookies": {"device_id": device},
        "request_method": "POST",
        "request_url": "https://auth.example.com/self-service/login?flow=7f3b",
        "session": {"authenticator_assurance_level": aal},
    })
}

fn render(context: &Value) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path().join("ctx.json");
    std::fs::write(&ctx, context.to_string()).expect("ctx");
    let template = examples().join("kratos").join("stepgate-login.jsonnet");
    let ctx_arg = format!("ctx={}", ctx.display());
    let out = run(
        "jsonnet",
        &[
            "--tla-code-file",
            &ctx_arg,
            template.to_str().expect("utf-8"),
        ],
        &[],
        dir.path(),
    );
    serde_json::from_str(&out).expect("the template renders JSON")
}

#[tokio::test]
async fn the_kratos_hook_interrupts_a_step_up_and_lets_the_aal2_sign_in_through() {
    let server = TestServer::start().await;
    let first = render(&kratos_context("2b7d0b9e-identity", "cookie-1", "aal1"));
    assert_eq!(
        first["network"]["ip"], "203.0.113.7",
        "the proxy's entry, not the spoofed one"
    );
    let blocked = post_json(&server, "/v1/hooks/decide", &first).await;
    assert_eq!(blocked.status, 403, "{:?}", blocked.body);
    let message = &blocked.json()["messages"][0]["messages"][0];
    assert_eq!(message["id"], stepgate::server::http::HOOK_STEP_UP_ID);
    assert_eq!(message["type"], "error");
    assert_eq!(message["context"]["outcome"], "step_up");
    assert_eq!(
        message["context"]["reasons"][0]["policy_id"],
        "login-new-device"
    );
    assert_eq!(
        message["context"]["acr_values"],
        "http://idmanagement.gov/ns/assurance/aal/2"
    );
    assert!(
        message["text"]
            .as_str()
            .is_some_and(|t| t.contains("device"))
    );

    // The app restarts the flow at aal2; that sign-in is let through, and
    // its completion reported, the device is known from then on.
    let second = render(&kratos_context("2b7d0b9e-identity", "cookie-1", "aal2"));
    assert_eq!(second["authn"]["aal"], 2);
    let passed = post_json(&server, "/v1/hooks/decide", &second).await;
    assert_eq!(passed.status, 200, "{:?}", passed.body);
    let answer = passed.json();
    assert_eq!(answer["outcome"], "OUTCOME_ALLOW");
    let report = json!({
        "decisionId": answer["decisionId"],
        "journey": "login",
        "subject": {"userId": "2b7d0b9e-identity"},
        "device": {"id": "cookie-1"},
        "network": {"ip": "203.0.113.7"},
        "event": "EVENT_AUTH_SUCCEEDED",
    });
    let judged = post_json(&server, "/v1/report-outcome", &report).await;
    assert_eq!(judged.json()["effect"], "REPORT_EFFECT_COMPLETED");
    let third = render(&kratos_context("2b7d0b9e-identity", "cookie-1", "aal1"));
    assert_eq!(
        post_json(&server, "/v1/hooks/decide", &third).await.status,
        200
    );
}

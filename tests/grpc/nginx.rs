//! A real nginx in front: `auth_request` asks stepgate's forward-auth, and
//! requests through nginx are let through, challenged (401 with the RFC 9470
//! header, handed back with `auth_request_set`) or refused (403) as stepgate
//! decided. `.ci/run` installs nginx from the distribution when it is
//! missing; the test starts its own instance on its own ports and prefix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use stepgate::config::{ClientConfig, Config, GatewayConfig, RouteConfig};

use crate::harness::*;

const ACR1: &str = "http://idmanagement.gov/ns/assurance/aal/1";
const ACR2: &str = "http://idmanagement.gov/ns/assurance/aal/2";

/// nginx from `NGINX`, the distribution's path or `PATH`.
fn nginx_binary() -> PathBuf {
    program("NGINX", "nginx", "nginx")
}

/// Bearer tokens nginx accepts in these tests, and the verified claims
/// each stands for: a `map` standing in for a real verifier (NGINX Plus
/// `auth_jwt`, an njs or Lua module, oauth2-proxy).
const TOKENS: [(&str, &str); 2] = [("alice-aal1", ACR1), ("alice-aal2", ACR2)];

fn config(prefix: &Path, front: u16, upstream: u16, stepgate_http: &str) -> String {
    let p = prefix.display();
    let tokens: String = TOKENS
        .iter()
        .map(|(token, acr)| {
            let claims =
                serde_json::json!({"sub": "alice", "acr": acr, "auth_time": just_authenticated()});
            format!("    \"Bearer {token}\" '{claims}';\n")
        })
        .collect();
    format!(
        r#"worker_processes 1;
daemon off;
master_process off;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {p}/body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;

  # The verifier's stand-in: a known token's claims, else nothing.
  map $http_authorization $verified_claims {{
    default "";
{tokens}  }}

  # The application behind the gateway.
  server {{
    listen 127.0.0.1:{upstream};
    location / {{ return 200 "upstream saw $http_x_stepgate_decision_id\n"; }}
  }}

  server {{
    listen 127.0.0.1:{front};

    location = /_stepgate {{
      internal;
      proxy_pass {stepgate_http}/v1/forward-auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Jwt-Payload $verified_claims;
    }}

    location / {{
      auth_request /_stepgate;
      auth_request_set $stepgate_challenge $upstream_http_www_authenticate;
      auth_request_set $stepgate_decision $upstream_http_x_stepgate_decision_id;
      auth_request_set $stepgate_outcome $upstream_http_x_stepgate_outcome;
      auth_request_set $stepgate_fault $upstream_http_x_stepgate_fault;
      add_header WWW-Authenticate $stepgate_challenge always;
      add_header X-Stepgate-Outcome $stepgate_outcome always;
      add_header X-Stepgate-Fault $stepgate_fault always;
      proxy_set_header X-Stepgate-Decision-Id $stepgate_decision;
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
}}
"#
    )
}

async fn start_nginx(prefix: &Path, front: u16, upstream: u16, stepgate_http: &str) -> Peer {
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config(prefix, front, upstream, stepgate_http)).expect("nginx.conf");
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Peer(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", front))
            .await
            .is_ok()
        {
            return nginx;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
    unreachable!("nginx did not listen on {front} within 5 s:\n{log}")
}

fn route(path: &str, journey: &str) -> RouteConfig {
    RouteConfig {
        methods: Vec::new(),
        path: Some(path.into()),
        prefix: None,
        template: None,
        journey: journey.into(),
        attributes: BTreeMap::new(),
    }
}

#[tokio::test]
async fn requests_through_nginx_are_allowed_challenged_and_refused_as_stepgate_decides() {
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        gateway: GatewayConfig {
            routes: vec![route("/payments", "payment"), route("/signup", "signup")],
            client: ClientConfig {
                // nginx is the one proxy: it sets X-Forwarded-For.
                trusted_hops: 1,
                device_cookie: "did".into(),
                ..ClientConfig::default()
            },
            ..GatewayConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", "127.0.0.1").await;
    let prefix = tempfile::tempdir().expect("prefix");
    let (front, upstream) = (free_port(), free_port());
    let _nginx = start_nginx(prefix.path(), front, upstream, &server.http_addr).await;
    let base = format!("http://127.0.0.1:{front}");
    let through = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let base = base.clone();
        async move {
            let mut all: Vec<(&str, &str)> = vec![("cookie", "did=laptop")];
            all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            http_call(&base, "POST", path, &all, "").await
        }
    };
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];

    let challenged = through("/payments", bearer("alice-aal1")).await;
    assert_eq!(challenged.status, 401);
    assert_eq!(
        challenged.header("www-authenticate"),
        Some(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"this journey is high-risk and needs multi-factor assurance\", acr_values=\"http://idmanagement.gov/ns/assurance/aal/2\""
        )
    );
    assert_eq!(challenged.header("x-stepgate-outcome"), Some("step_up"));

    let allowed = through("/payments", bearer("alice-aal2")).await;
    assert_eq!(allowed.status, 200);
    let body = String::from_utf8_lossy(&allowed.body).into_owned();
    let id = body
        .trim()
        .strip_prefix("upstream saw ")
        .expect("upstream answered");
    assert_eq!(id.len(), 36, "the decision id reached the upstream: {body}");
    assert!(allowed.header("www-authenticate").is_none());

    let refused = through("/signup", bearer("alice-aal2")).await;
    assert_eq!(refused.status, 403, "an existing account cannot sign up");
    assert_eq!(refused.header("x-stepgate-outcome"), Some("deny"));
    let unmapped = through("/elsewhere", bearer("alice-aal2")).await;
    assert_eq!(unmapped.status, 403);
    assert_eq!(unmapped.header("x-stepgate-fault"), Some("unmapped_route"));

    // Claims a client writes itself never reach stepgate: nginx replaces
    // the header with what the verifier found.
    let forged = serde_json::json!({"sub": "alice", "acr": ACR2}).to_string();
    let no_token = through("/payments", vec![("x-jwt-payload", forged.clone())]).await;
    assert_eq!(no_token.status, 403);
    assert_eq!(
        no_token.header("x-stepgate-fault"),
        Some("unreadable_request")
    );
    let mut weak_token = bearer("alice-aal1");
    weak_token.push(("x-jwt-payload", forged));
    let still_challenged = through("/payments", weak_token).await;
    assert_eq!(still_challenged.status, 401, "the token's own level counts");

    // A client's own decision id never reaches the upstream on a
    // decision's behalf.
    let mut spoofed = bearer("alice-aal2");
    spoofed.push(("x-stepgate-decision-id", "not-stepgates".to_owned()));
    let through_with_own_id = through("/payments", spoofed).await;
    let body = String::from_utf8_lossy(&through_with_own_id.body).into_owned();
    assert!(!body.contains("not-stepgates"), "{body}");
}

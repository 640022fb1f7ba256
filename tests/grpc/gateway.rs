//! The gateway doors: Envoy ext_authz over a real gRPC client built from
//! Envoy's protos, and HTTP forward-auth over real HTTP, with one route map.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use serde_json::{Value, json};
use stepgate::config::{
    AttributeSource, AttributeType, ClientConfig, Config, GatewayConfig, IpListConfig,
    RouteAttribute, RouteConfig, UnmappedAnswer,
};
use stepgate::loadtest::doors::envoy_check;

use crate::harness::*;

const HOME: &str = "81.2.69.142";
const ACR2: &str = "http://idmanagement.gov/ns/assurance/aal/2";
const ACR1: &str = "http://idmanagement.gov/ns/assurance/aal/1";

fn routes() -> Vec<RouteConfig> {
    vec![
        RouteConfig {
            methods: vec!["POST".into()],
            path: Some("/payments".into()),
            prefix: None,
            template: None,
            journey: "payment".into(),
            attributes: BTreeMap::from([(
                "amount".into(),
                RouteAttribute {
                    from: AttributeSource::Header,
                    name: "x-amount".into(),
                    kind: AttributeType::Long,
                },
            )]),
        },
        RouteConfig {
            methods: vec!["POST".into(), "PUT".into()],
            path: None,
            prefix: None,
            template: Some("/accounts/{account}/payout".into()),
            journey: "change_payout".into(),
            attributes: BTreeMap::new(),
        },
        RouteConfig {
            methods: Vec::new(),
            path: None,
            prefix: Some("/app/".into()),
            template: None,
            journey: "login".into(),
            attributes: BTreeMap::new(),
        },
    ]
}

/// The bundled pack, a deny list holding 6.6.6.0/24, the routes above and
/// one trusted proxy hop.
async fn start(gateway: GatewayConfig) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("deny.txt");
    std::fs::write(&list, "6.6.6.0/24\n").expect("deny list");
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        ip_lists: IpListConfig { deny: vec![list] },
        gateway,
        ..Config::default()
    })
    .await;
    (server, dir)
}

fn gateway_config() -> GatewayConfig {
    GatewayConfig {
        routes: routes(),
        client: ClientConfig {
            trusted_hops: 1,
            device_cookie: "did".into(),
            ..ClientConfig::default()
        },
        ..GatewayConfig::default()
    }
}

/// A check as Envoy sends it from its peer 10.0.0.5, with the `jwt_authn`
/// payload in the metadata when `claims` is given.
fn check(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    claims: Option<Value>,
) -> CheckRequest {
    envoy_check(method, path, headers, "10.0.0.5", claims.as_ref())
}

fn claims(acr: &str) -> Value {
    json!({"sub": "alice", "acr": acr, "amr": ["pwd"], "iss": "https://idp.example"})
}

/// (HTTP status as the client would see it, headers, body).
fn seen_by_client(response: &CheckResponse) -> (u16, BTreeMap<String, String>, String) {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => (
            200,
            ok.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            String::new(),
        ),
        Some(HttpResponse::DeniedResponse(denied)) => (
            u16::try_from(denied.status.as_ref().map_or(0, |s| s.code)).unwrap_or(0),
            denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            denied.body.clone(),
        ),
        other => unreachable!("no http response: {other:?}"),
    }
}

async fn ask_envoy(
    server: &TestServer,
    request: CheckRequest,
) -> (u16, BTreeMap<String, String>, String) {
    let mut client = AuthorizationClient::new(server.channel().await);
    let response = client
        .check(request)
        .await
        .expect("never a gRPC error")
        .into_inner();
    seen_by_client(&response)
}

#[tokio::test]
async fn ext_authz_challenges_allows_and_denies_as_the_ladder_decides() {
    let (server, _dir) = start(gateway_config()).await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let headers = [
        ("x-forwarded-for", HOME),
        ("cookie", "did=laptop"),
        ("x-amount", "1500"),
    ];

    let (status, headers_out, body) = ask_envoy(
        &server,
        check("POST", "/payments", &headers, Some(claims(ACR1))),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        headers_out.get("www-authenticate").map(String::as_str),
        Some(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"this journey is high-risk and needs multi-factor assurance\", acr_values=\"http://idmanagement.gov/ns/assurance/aal/2\""
        )
    );
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["reasons"][0]["policy_id"], "high-tier-needs-aal2");

    let (status, headers_out, _) = ask_envoy(
        &server,
        check("POST", "/payments", &headers, Some(claims(ACR2))),
    )
    .await;
    assert_eq!(status, 200);
    let id = headers_out
        .get("x-stepgate-decision-id")
        .expect("decision id to the upstream");
    assert_eq!(id.len(), 36);

    // A deny-listed client behind the trusted proxy.
    let listed = [("x-forwarded-for", "6.6.6.7"), ("cookie", "did=laptop")];
    let (status, _, body) = ask_envoy(
        &server,
        check("PUT", "/accounts/a1/payout", &listed, Some(claims(ACR2))),
    )
    .await;
    assert_eq!(status, 403);
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["outcome"], "deny");
    assert_eq!(body["reasons"][0]["policy_id"], "ip-deny-list");
    assert_eq!(body["decision_id"].as_str().map(str::len), Some(36));
}

#[tokio::test]
async fn ext_authz_never_lets_an_unreadable_or_unmapped_request_through() {
    let (server, _dir) = start(gateway_config()).await;
    let good = [("x-forwarded-for", HOME)];
    let cases: Vec<(&str, CheckRequest, &str)> = vec![
        (
            "an unmapped route",
            check("GET", "/elsewhere", &good, Some(claims(ACR2))),
            "unmapped_route",
        ),
        (
            "a method the route does not take",
            check("GET", "/payments", &good, Some(claims(ACR2))),
            "unmapped_route",
        ),
        (
            "no claims",
            check("POST", "/payments", &good, None),
            "x-jwt-payload",
        ),
        (
            "no subject",
            check("POST", "/payments", &good, Some(json!({"acr": ACR2}))),
            "claims.sub",
        ),
        (
            "an acr nobody configured",
            check("POST", "/payments", &good, Some(claims("urn:x:loa:9"))),
            "claims.acr",
        ),
        (
            "a bad amount",
            check(
                "POST",
                "/payments",
                &[("x-forwarded-for", HOME), ("x-amount", "lots")],
                Some(claims(ACR2)),
            ),
            "attributes.amount",
        ),
        (
            "no forwarded client",
            check("POST", "/payments", &[], Some(claims(ACR2))),
            "x-forwarded-for",
        ),
        (
            "an unreadable forwarded client",
            check(
                "POST",
                "/payments",
                &[("x-forwarded-for", "nonsense")],
                Some(claims(ACR2)),
            ),
            "x-forwarded-for",
        ),
    ];
    for (name, request, named) in cases {
        let (status, _, body) = ask_envoy(&server, request).await;
        assert_eq!(status, 403, "{name}: {body}");
        assert!(body.contains(named), "{name}: {body}");
    }
}

#[tokio::test]
async fn configured_answers_for_unmapped_and_unreadable_requests_are_used() {
    let (server, _dir) = start(GatewayConfig {
        unmapped: UnmappedAnswer::Allow,
        unreadable_status: 401,
        ..gateway_config()
    })
    .await;
    let (status, _, _) = ask_envoy(&server, check("GET", "/public", &[], None)).await;
    assert_eq!(
        status, 200,
        "unmapped routes are let through when configured so"
    );
    let (status, _, body) = ask_envoy(
        &server,
        check("POST", "/payments", &[("x-forwarded-for", HOME)], None),
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn the_client_is_read_past_trusted_hops_and_a_spoofed_leftmost_entry_is_ignored() {
    // The client spoofs a deny-listed address at the left; the one trusted
    // proxy appended the real one.
    let spoofed = [
        ("x-forwarded-for", "6.6.6.6, 81.2.69.142"),
        ("cookie", "did=laptop"),
    ];
    let (server, _dir) = start(gateway_config()).await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let (status, _, body) = ask_envoy(
        &server,
        check("POST", "/app/home", &spoofed, Some(claims(ACR1))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Trusting two hops reads the spoofed entry (and denies it).
    let (two, _dir2) = start(GatewayConfig {
        client: ClientConfig {
            trusted_hops: 2,
            device_cookie: "did".into(),
            ..ClientConfig::default()
        },
        ..gateway_config()
    })
    .await;
    let (status, _, _) = ask_envoy(
        &two,
        check("POST", "/app/home", &spoofed, Some(claims(ACR1))),
    )
    .await;
    assert_eq!(status, 403);
    // No trusted hops: the connecting address (10.0.0.5, private) is the
    // client, whatever the header says.
    let (none, _dir3) = start(GatewayConfig {
        client: ClientConfig::default(),
        ..gateway_config()
    })
    .await;
    let (status, _, body) = ask_envoy(
        &none,
        check(
            "POST",
            "/app/home",
            &[("x-forwarded-for", "6.6.6.6")],
            Some(claims(ACR2)),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn forward_auth_answers_nginx_and_traefik_the_same_way() {
    let (server, _dir) = start(gateway_config()).await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let payload = |acr: &str| claims(acr).to_string();
    let low = payload(ACR1);
    let high = payload(ACR2);
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(high.as_bytes());
    let call = |headers: Vec<(&'static str, String)>| {
        let base = server.http_addr.clone();
        async move {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http_call(&base, "GET", "/v1/forward-auth", &pairs, "").await
        }
    };
    let nginx = |claims: String| {
        vec![
            ("x-original-method", "POST".to_owned()),
            ("x-original-uri", "/payments?ref=1".to_owned()),
            ("x-forwarded-for", HOME.to_owned()),
            ("cookie", "did=laptop".to_owned()),
            ("x-jwt-payload", claims),
        ]
    };
    let challenged = call(nginx(low)).await;
    assert_eq!(challenged.status, 401);
    assert_eq!(
        challenged.header("www-authenticate"),
        Some(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"this journey is high-risk and needs multi-factor assurance\", acr_values=\"http://idmanagement.gov/ns/assurance/aal/2\""
        )
    );
    let allowed = call(nginx(encoded)).await;
    assert_eq!(allowed.status, 200, "base64url payloads are read too");
    assert!(allowed.header("x-stepgate-decision-id").is_some());
    let traefik = vec![
        ("x-forwarded-method", "PUT".to_owned()),
        ("x-forwarded-uri", "/accounts/a1/payout".to_owned()),
        ("x-forwarded-for", "6.6.6.9".to_owned()),
        ("x-jwt-payload", high.clone()),
    ];
    let denied = call(traefik).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["reasons"][0]["policy_id"], "ip-deny-list");
    let nothing = call(vec![("x-jwt-payload", high)]).await;
    assert_eq!(nothing.status, 403);
    assert_eq!(nothing.json()["code"], "unreadable_request");
}

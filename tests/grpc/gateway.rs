//! The gateway doors: Envoy ext_authz over a real gRPC client built from
//! Envoy's protos, and HTTP forward-auth over real HTTP, with one route map.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use serde_json::{Value, json};
use stepgate::config::{
    AttributeSource, AttributeType, ClaimsConfig, ClaimsSource, ClientConfig, Config,
    ForwardAuthConfig, GatewayConfig, IpListConfig, OriginalHeaders, RouteAttribute, RouteConfig,
    UnmappedAnswer,
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
            methods: vec!["POST".into()],
            path: Some("/transfers".into()),
            prefix: None,
            template: None,
            journey: "payment".into(),
            attributes: BTreeMap::from([(
                "amount".into(),
                RouteAttribute {
                    from: AttributeSource::Query,
                    name: "amount".into(),
                    kind: AttributeType::Long,
                },
            )]),
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
    json!({"sub": "alice", "acr": acr, "amr": ["pwd"], "iss": "https://idp.example",
           "auth_time": just_authenticated()})
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
            "metadata_context",
        ),
        (
            // jwt_authn let a request without a token through: a header
            // the client wrote is not read in the metadata's place.
            "claims in a header the client wrote",
            check(
                "POST",
                "/payments",
                &[
                    ("x-forwarded-for", HOME),
                    (
                        "x-jwt-payload",
                        r#"{"sub":"alice","acr":"http://idmanagement.gov/ns/assurance/aal/3"}"#,
                    ),
                ],
                None,
            ),
            "metadata_context",
        ),
        (
            "amr that is not an array of strings",
            check(
                "POST",
                "/payments",
                &good,
                Some(json!({"sub": "alice", "acr": ACR2, "amr": "pwd"})),
            ),
            "claims.amr",
        ),
        (
            // Envoy joins a header's lines: `x-amount: 1` and
            // `x-amount: 2` arrive as one value.
            "an amount header sent twice",
            check(
                "POST",
                "/payments",
                &[("x-forwarded-for", HOME), ("x-amount", "1,2")],
                Some(claims(ACR2)),
            ),
            "attributes.amount",
        ),
        (
            "an amount query parameter sent twice",
            check(
                "POST",
                "/transfers?amount=1&amount=2",
                &good,
                Some(claims(ACR2)),
            ),
            "sent 2 times",
        ),
        (
            "no path",
            check("POST", "payments", &good, Some(claims(ACR2))),
            "unreadable_request",
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
        let (status, headers, body) = ask_envoy(&server, request).await;
        assert_eq!(status, 403, "{name}: {body}");
        assert!(body.contains(named), "{name}: {body}");
        let code: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(
            headers.get("x-stepgate-fault").map(String::as_str),
            code["code"].as_str(),
            "{name}"
        );
    }
    // A check that does not describe an HTTP request.
    let mut bare = check("POST", "/payments", &good, Some(claims(ACR2)));
    if let Some(attributes) = bare.attributes.as_mut() {
        attributes.request = None;
    }
    let (status, _, body) = ask_envoy(&server, bare).await;
    assert_eq!(status, 403);
    assert!(body.contains("attributes.request.http"), "{body}");
}

#[tokio::test]
async fn spellings_of_a_mapped_path_are_the_route() {
    let (server, _dir) = start(GatewayConfig {
        unmapped: UnmappedAnswer::Allow,
        ..gateway_config()
    })
    .await;
    let headers = [("x-forwarded-for", HOME), ("cookie", "did=laptop")];
    for path in [
        "/payments",
        "//payments",
        "/payments/",
        "/%70ayments",
        "/payments;x=1",
        "/app/../payments",
    ] {
        let (status, headers_out, body) =
            ask_envoy(&server, check("POST", path, &headers, Some(claims(ACR1)))).await;
        assert_eq!(status, 401, "{path} is the payments route: {body}");
        assert!(headers_out.contains_key("www-authenticate"), "{path}");
    }
}

#[tokio::test]
async fn ext_authz_answers_requests_the_transport_refuses_with_a_check_response() {
    use prost::Message as _;
    let (server, _dir) = start(gateway_config()).await;
    let path = "/envoy.service.auth.v3.Authorization/Check";
    // Headers past `limits.max_check_request_bytes` (64 KiB).
    let big = "x".repeat(70 * 1024);
    let request = check(
        "POST",
        "/payments",
        &[("x-forwarded-for", HOME), ("x-padding", &big)],
        Some(claims(ACR2)),
    );
    let frame = |message: Vec<u8>| {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(message.len()).expect("len").to_be_bytes());
        frame.extend_from_slice(&message);
        frame
    };
    // Two well-formed requests in one unary call: neither is answered.
    let one = frame(
        check(
            "POST",
            "/payments",
            &[("x-forwarded-for", HOME)],
            Some(claims(ACR2)),
        )
        .encode_to_vec(),
    );
    let two = [one.clone(), one].concat();
    // A compression stepgate does not take: still a CheckResponse.
    let (status, answer) = raw_exchange_with(
        server.channel().await,
        path,
        two.get(..two.len() / 2).expect("one").to_vec(),
        &[("grpc-encoding", "gzip")],
    )
    .await;
    assert_eq!(status.code(), tonic::Code::Ok, "gzip: {status:?}");
    let answer = CheckResponse::decode(answer).expect("a CheckResponse");
    let (status, headers, _) = seen_by_client(&answer);
    assert_eq!(status, 403);
    assert_eq!(
        headers.get("x-stepgate-fault").map(String::as_str),
        Some("malformed_request")
    );
    for (name, body, code) in [
        (
            "too large",
            frame(request.encode_to_vec()),
            "request_too_large",
        ),
        ("two messages", two, "malformed_request"),
        (
            "not protobuf",
            vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff],
            "malformed_request",
        ),
    ] {
        let (status, answer) = raw_exchange(server.channel().await, path, body).await;
        assert_eq!(status.code(), tonic::Code::Ok, "{name}: {status:?}");
        let answer = CheckResponse::decode(answer).expect("a CheckResponse");
        let (status, headers, body) = seen_by_client(&answer);
        assert_eq!(status, 403, "{name}: {body}");
        assert_eq!(
            headers.get("x-stepgate-fault").map(String::as_str),
            Some(code),
            "{name}"
        );
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["code"], code, "{name}");
    }
}

#[tokio::test]
async fn ext_authz_reads_claims_from_a_header_only_when_told_to() {
    let (server, _dir) = start(GatewayConfig {
        claims: ClaimsConfig {
            ext_authz_from: ClaimsSource::Header,
            ..ClaimsConfig::default()
        },
        ..gateway_config()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let payload = claims(ACR2).to_string();
    let headers = [
        ("x-forwarded-for", HOME),
        ("cookie", "did=laptop"),
        ("x-jwt-payload", payload.as_str()),
    ];
    let (status, _, body) = ask_envoy(&server, check("POST", "/payments", &headers, None)).await;
    assert_eq!(status, 200, "{body}");
    // Metadata is not read in the header's place either.
    let (status, _, body) = ask_envoy(
        &server,
        check("POST", "/payments", &headers[..2], Some(claims(ACR2))),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("x-jwt-payload"), "{body}");
}

#[tokio::test]
async fn routes_that_do_not_fit_the_policies_stop_the_start_and_a_reload() {
    let attribute = |kind| RouteAttribute {
        from: AttributeSource::Query,
        name: "amount".into(),
        kind,
    };
    let route = |journey: &str, kind| RouteConfig {
        methods: Vec::new(),
        path: Some("/pay".into()),
        prefix: None,
        template: None,
        journey: journey.into(),
        attributes: BTreeMap::from([("amount".into(), attribute(kind))]),
    };
    for (routes, named) in [
        (
            vec![route("transfer", AttributeType::Long)],
            "`transfer` is not a journey",
        ),
        (
            vec![route("payment", AttributeType::String)],
            "gateway.routes[0].attributes.amount",
        ),
    ] {
        let config = Config {
            policies_dir: bundled_policies(),
            gateway: GatewayConfig {
                routes,
                ..GatewayConfig::default()
            },
            ..Config::default()
        };
        let err = stepgate::app::build_engine(std::sync::Arc::new(config))
            .expect_err("refused")
            .to_string();
        assert!(err.contains(named), "{err}");
    }

    // Serving with `amount` read as a long; a change to the schema that
    // makes it a string is refused while the route reads it so.
    let dir = bundled_policies_with(&[]);
    let server = TestServer::start_with(Config {
        policies_dir: dir.path().to_owned(),
        gateway: GatewayConfig {
            routes: vec![route("payment", AttributeType::Long)],
            ..GatewayConfig::default()
        },
        ..Config::default()
    })
    .await;
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).expect("schema");
    assert!(text.contains("amount?: Long"));
    std::fs::write(&schema, text.replace("amount?: Long", "amount?: String")).expect("write");
    let before = server.engine.policies().version().to_owned();
    assert_eq!(
        server
            .engine
            .reload_policies(stepgate::metrics::PolicyRole::Live),
        stepgate::metrics::ReloadResult::Refused
    );
    assert_eq!(server.engine.policies().version(), before);
    // The same change without the route is accepted: the route was why.
    let plain = bundled_policies_with(&[]);
    let free = TestServer::start_with(Config {
        policies_dir: plain.path().to_owned(),
        ..Config::default()
    })
    .await;
    let schema = plain.path().join("schema.cedarschema");
    std::fs::write(&schema, text.replace("amount?: Long", "amount?: String")).expect("write");
    assert_eq!(
        free.engine
            .reload_policies(stepgate::metrics::PolicyRole::Live),
        stepgate::metrics::ReloadResult::Applied
    );
}

#[tokio::test]
async fn configured_answers_for_unmapped_and_unreadable_requests_are_used() {
    let (server, _dir) = start(GatewayConfig {
        unmapped: UnmappedAnswer::Allow,
        unreadable_status: 401,
        ..gateway_config()
    })
    .await;
    let mut client = AuthorizationClient::new(server.channel().await);
    let response = client
        .check(check(
            "GET",
            "/public",
            &[("x-stepgate-decision-id", "the-client-wrote-this")],
            None,
        ))
        .await
        .expect("check")
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        unreachable!("unmapped routes are let through when configured so: {response:?}");
    };
    assert_eq!(
        ok.headers_to_remove,
        vec!["x-stepgate-decision-id".to_owned()],
        "no decision was made, so no decision id reaches the upstream"
    );
    let (status, headers, body) = ask_envoy(
        &server,
        check("POST", "/payments", &[("x-forwarded-for", HOME)], None),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        headers.get("www-authenticate").map(String::as_str),
        Some("Bearer"),
        "a 401 carries a challenge"
    );
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
    let (status, _, body) = ask_envoy(
        &two,
        check("POST", "/app/home", &spoofed, Some(claims(ACR1))),
    )
    .await;
    assert_eq!(status, 403);
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["reasons"][0]["policy_id"], "ip-deny-list");
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
async fn trusted_proxies_are_skipped_by_address_right_to_left() {
    let (server, _dir) = start(GatewayConfig {
        client: ClientConfig {
            trusted_proxies: vec!["10.0.0.0/8".into(), "2001:db8:ffff::/48".into()],
            device_cookie: "did".into(),
            ..ClientConfig::default()
        },
        ..gateway_config()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let ask = |xff: &'static str| {
        check(
            "POST",
            "/app/home",
            &[("x-forwarded-for", xff), ("cookie", "did=laptop")],
            Some(claims(ACR1)),
        )
    };
    // Envoy's peer is 10.0.0.5, a trusted proxy; so is 10.1.2.3.
    for (xff, status, why) in [
        (
            "6.6.6.6, 81.2.69.142, 10.1.2.3",
            200,
            "the spoofed entry is left of the client",
        ),
        (
            "81.2.69.142, 6.6.6.7, 10.1.2.3",
            403,
            "the client is the deny-listed one",
        ),
        (
            "6.6.6.6, 81.2.69.142, [2001:db8:ffff::9]:443",
            200,
            "an IPv6 proxy with a port",
        ),
        (
            "junk, 81.2.69.142",
            200,
            "entries left of the client are never read",
        ),
        ("10.9.9.9", 403, "only proxies: the client cannot be told"),
    ] {
        let (got, _, body) = ask_envoy(&server, ask(xff)).await;
        assert_eq!(got, status, "{xff}: {why}: {body}");
    }
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
    // nginx's pair is the one configured: Traefik's is not read.
    let unread = call(traefik.clone()).await;
    assert_eq!(unread.status, 403);
    assert_eq!(unread.json()["code"], "unreadable_request");
    assert!(
        unread.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("x-original-method")),
        "{:?}",
        unread.body
    );
    let nothing = call(vec![("x-jwt-payload", high.clone())]).await;
    assert_eq!(nothing.status, 403);
    assert_eq!(nothing.json()["code"], "unreadable_request");

    let (traefik_server, _dir2) = start(GatewayConfig {
        forward_auth: ForwardAuthConfig {
            original_headers: OriginalHeaders::XForwarded,
        },
        ..gateway_config()
    })
    .await;
    let traefik_call = |headers: Vec<(&'static str, String)>| {
        let base = traefik_server.http_addr.clone();
        async move {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http_call(&base, "GET", "/v1/forward-auth", &pairs, "").await
        }
    };
    let denied = traefik_call(traefik.clone()).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["reasons"][0]["policy_id"], "ip-deny-list");
    // A client's own X-Original-* naming a harmless route changes nothing.
    let mut smuggled = traefik;
    smuggled.push(("x-original-method", "GET".to_owned()));
    smuggled.push(("x-original-uri", "/app/home".to_owned()));
    let still = traefik_call(smuggled).await;
    assert_eq!(still.json()["outcome"], "deny", "{:?}", still.body);
}

#[tokio::test]
async fn forward_auth_refuses_what_was_sent_twice_and_joins_forwarded_lines() {
    let (server, _dir) = start(gateway_config()).await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let high = claims(ACR2).to_string();
    let low = claims(ACR1).to_string();
    let base = [
        ("x-original-method", "POST"),
        ("x-original-uri", "/payments"),
        ("cookie", "did=laptop"),
    ];
    let call = |extra: Vec<(&'static str, &'static str)>, claims: Vec<String>| {
        let addr = server.http_addr.clone();
        async move {
            let mut pairs: Vec<(&str, &str)> = base.to_vec();
            pairs.extend(extra);
            let claims: Vec<(&str, &str)> = claims
                .iter()
                .map(|c| ("x-jwt-payload", c.as_str()))
                .collect();
            pairs.extend(claims);
            http_call(&addr, "GET", "/v1/forward-auth", &pairs, "").await
        }
    };
    // Two X-Forwarded-For lines: the client's, then the proxy's.
    let joined = call(
        vec![("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", HOME)],
        vec![high.clone()],
    )
    .await;
    assert_eq!(joined.status, 200, "{:?}", joined.body);
    // Claims sent twice (the client's and the proxy's): neither is read.
    let twice = call(vec![("x-forwarded-for", HOME)], vec![high.clone(), low]).await;
    assert_eq!(twice.status, 403);
    assert_eq!(twice.json()["code"], "unreadable_request");
    // The original URI sent twice.
    let uri_twice = call(
        vec![("x-forwarded-for", HOME), ("x-original-uri", "/app/home")],
        vec![high.clone()],
    )
    .await;
    assert_eq!(uri_twice.status, 403);
    assert!(
        uri_twice.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than once"))
    );
    // An amount header sent twice is not one number.
    let amount_twice = call(
        vec![
            ("x-forwarded-for", HOME),
            ("x-amount", "100"),
            ("x-amount", "5000000"),
        ],
        vec![high],
    )
    .await;
    assert_eq!(amount_twice.status, 403);
    assert!(
        amount_twice.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("attributes.amount"))
    );
    // A claim named twice in the payload, and a rule the core checks (an
    // `auth_time` in milliseconds lies far in the future): both unreadable.
    let dup =
        r#"{"sub":"mallory","sub":"alice","acr":"http://idmanagement.gov/ns/assurance/aal/2"}"#;
    let millis =
        json!({"sub": "alice", "acr": ACR2, "auth_time": 1_790_000_000_000_i64}).to_string();
    for (claims, says) in [(dup.to_owned(), "given twice"), (millis, "authn.auth_time")] {
        let reply = call(vec![("x-forwarded-for", HOME)], vec![claims]).await;
        assert_eq!(reply.status, 403);
        let body = reply.json();
        assert_eq!(body["code"], "unreadable_request", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains(says)),
            "{body}"
        );
    }
}

#[tokio::test]
async fn forward_auth_asks_a_stale_aal2_to_authenticate_again_with_max_age() {
    // The bundled pack asks for an authentication from the last 15
    // minutes on a payout change.
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        gateway: gateway_config(),
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ask = |age: u64| {
        let base = server.http_addr.clone();
        let claims = json!({"sub": "alice", "acr": ACR2, "auth_time": now - age}).to_string();
        async move {
            let headers = [
                ("x-original-method", "PUT"),
                ("x-original-uri", "/accounts/a1/payout"),
                ("x-forwarded-for", HOME),
                ("cookie", "did=laptop"),
                ("x-jwt-payload", claims.as_str()),
            ];
            http_call(&base, "GET", "/v1/forward-auth", &headers, "").await
        }
    };
    let stale = ask(3 * 86_400).await;
    assert_eq!(stale.status, 401, "{:?}", stale.body);
    assert_eq!(
        stale.header("www-authenticate"),
        Some(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"changing where payouts go needs an authentication from the last 15 minutes\", acr_values=\"http://idmanagement.gov/ns/assurance/aal/2\", max_age=\"900\""
        )
    );
    assert_eq!(stale.json()["max_age"], 900);
    assert_eq!(stale.json()["required_aal"], 2);
    let fresh = ask(600).await;
    assert_eq!(fresh.status, 200, "{:?}", fresh.body);
}

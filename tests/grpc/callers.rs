//! Who may ask: callers proven by a client certificate (mTLS, a real
//! rustls handshake) or a bearer token on every door, each bound to its
//! operations, journeys and tenants and held to its rate; deadlines that
//! abandon work; load beyond `limits.max_in_flight` shed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use stepgate::config::{
    CallerConfig, ClaimsConfig, Config, GatewayConfig, LimitsConfig, RouteConfig, TlsConfig,
};
use stepgate::loadtest::doors::envoy_check;
use stepgate::server::proto::Event;
use stepgate::server::proto::decision_service_client::DecisionServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::harness::*;

const IP: &str = "203.0.113.7";
const GATEWAY_ID: &str = "spiffe://stepgate.test/gateway";
const IDP_DNS: &str = "idp.stepgate.test";

/// A certificate authority for tests, and the files it wrote.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca_pem = params.self_signed(&key).expect("CA").pem();
        Self {
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// (certificate PEM, key PEM) for `sans`; expired when `expired`.
    fn leaf(&self, sans: Vec<SanType>, expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans;
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> (String, String) {
        self.leaf(
            vec![SanType::DnsName("localhost".try_into().expect("DNS name"))],
            false,
        )
    }

    fn client_with_uri(&self, uri: &str, expired: bool) -> (String, String) {
        self.leaf(vec![SanType::URI(uri.try_into().expect("URI"))], expired)
    }

    fn client_with_dns(&self, dns: &str) -> (String, String) {
        self.leaf(
            vec![SanType::DnsName(dns.try_into().expect("DNS name"))],
            false,
        )
    }
}

/// A client's TLS settings: trusting `ca_pem`, presenting `identity`.
fn client_tls(ca_pem: &str, identity: Option<&(String, String)>, alpn: &[u8]) -> TlsClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client PEM"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

type TlsClient = Arc<rustls::ClientConfig>;

/// How a test client reaches the service and what it presents.
#[derive(Clone)]
struct Who {
    /// TLS settings for the gRPC and the HTTP listener; plain TCP if none.
    tls: Option<(TlsClient, TlsClient)>,
    token: Option<String>,
}

impl Who {
    fn plain(token: Option<&str>) -> Self {
        Self {
            tls: None,
            token: token.map(str::to_owned),
        }
    }

    fn tls(ca_pem: &str, identity: Option<&(String, String)>, token: Option<&str>) -> Self {
        Self {
            tls: Some((
                client_tls(ca_pem, identity, b"h2"),
                client_tls(ca_pem, identity, b"http/1.1"),
            )),
            token: token.map(str::to_owned),
        }
    }
}

async fn tls_stream(
    addr: &str,
    tls: TlsClient,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr.trim_start_matches("http://")).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

async fn grpc_channel(addr: &str, who: &Who) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(addr.to_owned()).expect("endpoint");
    match &who.tls {
        None => endpoint.connect().await.map_err(|e| e.to_string()),
        Some((tls, _)) => {
            let tls = tls.clone();
            let addr = addr.to_owned();
            endpoint
                .connect_with_connector(tower::service_fn(move |_uri: http::Uri| {
                    let tls = tls.clone();
                    let addr = addr.clone();
                    async move {
                        let stream = tls_stream(&addr, tls).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| format!("{e:?}"))
        }
    }
}

/// Sends `request` over `io` with HTTP/1.1.
async fn send_http1<Io>(
    io: Io,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    send.send_request(request).await.map_err(|e| e.to_string())
}

/// An HTTP/1.1 exchange over a fresh connection, TLS or not.
async fn http_exchange(
    base: &str,
    who: &Who,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: String,
) -> Result<HttpReply, String> {
    use http_body_util::BodyExt as _;
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let response = match &who.tls {
        None => {
            let tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
                .await
                .map_err(|e| e.to_string())?;
            send_http1(tcp, request).await?
        }
        Some((_, tls)) => {
            let stream = tls_stream(base, tls.clone())
                .await
                .map_err(|e| e.to_string())?;
            send_http1(stream, request).await?
        }
    };
    let (parts, body) = response.into_parts();
    Ok(HttpReply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.map_err(|e| e.to_string())?.to_bytes(),
    })
}

/// Every door a caller can ask through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Decide,
    ReportOutcome,
    Check,
    HttpDecide,
    HttpReport,
    Hook,
    Evaluation,
    Evaluations,
    ForwardAuth,
}

const DOORS: [Door; 9] = [
    Door::Decide,
    Door::ReportOutcome,
    Door::Check,
    Door::HttpDecide,
    Door::HttpReport,
    Door::Hook,
    Door::Evaluation,
    Door::Evaluations,
    Door::ForwardAuth,
];

/// What a door's caller heard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    /// A gRPC status (Ok: answered).
    Grpc(tonic::Code, String),
    /// An HTTP status and body (for ext_authz: the status the CheckResponse
    /// gives the client).
    Http(u16, String),
    /// The connection or handshake failed: no answer at all.
    Failed(String),
}

impl Heard {
    fn unauthenticated(&self) -> bool {
        match self {
            Heard::Grpc(code, _) => *code == tonic::Code::Unauthenticated,
            // The gateway doors answer as they answer other refusals (403,
            // `x-stepgate-fault`), never with a challenge for the user.
            Heard::Http(status, body) => {
                matches!(status, 401 | 403) && body.contains("\"unauthenticated\"")
            }
            Heard::Failed(_) => false,
        }
    }

    fn permission_denied(&self) -> bool {
        match self {
            Heard::Grpc(code, _) => *code == tonic::Code::PermissionDenied,
            Heard::Http(status, body) => *status == 403 && body.contains("permission_denied"),
            Heard::Failed(_) => false,
        }
    }

    fn answered(&self) -> bool {
        match self {
            Heard::Grpc(code, _) => *code == tonic::Code::Ok,
            // 401 and 403 are answers too, for the gateway doors and the
            // hook (a step-up or a deny), when not a refusal of the caller.
            Heard::Http(status, body) => {
                matches!(status, 200 | 401 | 403)
                    && !body.contains("\"unauthenticated\"")
                    && !body.contains("permission_denied")
            }
            Heard::Failed(_) => false,
        }
    }

    fn message(&self) -> &str {
        match self {
            Heard::Grpc(_, m) | Heard::Http(_, m) | Heard::Failed(m) => m,
        }
    }
}

/// The route a gateway door takes for `journey`.
fn route_for(journey: &str) -> (&'static str, &'static str) {
    match journey {
        "payment" => ("POST", "/payments"),
        "change_payout" => ("PUT", "/accounts/a1/payout"),
        _ => ("GET", "/app/home"),
    }
}

fn claims(tenant: &str) -> Value {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!("alice"));
    claims.insert(
        "acr".into(),
        json!("http://idmanagement.gov/ns/assurance/aal/2"),
    );
    claims.insert("amr".into(), json!(["pwd", "otp"]));
    if !tenant.is_empty() {
        claims.insert("tenant".into(), json!(tenant));
    }
    Value::Object(claims)
}

fn bearer<T>(request: &mut tonic::Request<T>, who: &Who) {
    if let Some(token) = &who.token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
}

/// A gRPC error as heard: a connection that failed under the call (a
/// handshake the server refused after the client's side finished, as in
/// TLS 1.3) is no answer at all.
fn grpc_error(status: &tonic::Status) -> Heard {
    let transport = matches!(
        status.code(),
        tonic::Code::Unknown | tonic::Code::Unavailable
    ) && status.message().contains("transport error");
    if transport {
        Heard::Failed(status.to_string())
    } else {
        Heard::Grpc(status.code(), status.message().to_owned())
    }
}

/// An HTTP exchange as heard.
fn heard_http(exchanged: Result<HttpReply, String>) -> Heard {
    match exchanged {
        Ok(reply) => Heard::Http(
            reply.status,
            String::from_utf8_lossy(&reply.body).into_owned(),
        ),
        Err(e) => Heard::Failed(e),
    }
}

/// Asks `door` about `journey` for `tenant` as `who`.
async fn ask(server: &TestServer, door: Door, who: &Who, journey: &str, tenant: &str) -> Heard {
    ask_with(server, door, who, journey, tenant, None).await
}

async fn ask_with(
    server: &TestServer,
    door: Door,
    who: &Who,
    journey: &str,
    tenant: &str,
    timeout: Option<Duration>,
) -> Heard {
    let grpc = |result: Result<(), tonic::Status>| match result {
        Ok(()) => Heard::Grpc(tonic::Code::Ok, String::new()),
        Err(status) => grpc_error(&status),
    };
    let subject = json!({"userId": "alice", "tenant": tenant});
    let decide_body = json!({
        "journey": journey, "subject": subject, "authn": {"aal": 1, "amr": ["pwd"]},
        "device": {"id": "laptop"}, "network": {"ip": IP},
    });
    let report_body = json!({
        "journey": journey, "subject": subject, "device": {"id": "laptop"},
        "network": {"ip": IP}, "event": "EVENT_AUTH_FAILED",
    });
    let evaluation = json!({
        "subject": {"type": "user", "id": "alice", "properties": {"device_id": "laptop", "ip": IP, "aal": 1, "tenant": tenant}},
        "resource": {"type": "journey", "id": journey},
        "action": {"name": journey},
    });
    let token_header = |name: &'static str| {
        who.token
            .as_ref()
            .map(|t| (name, format!("Bearer {t}")))
            .into_iter()
            .collect::<Vec<_>>()
    };
    let post = |path: &'static str, body: Value| {
        let mut headers = token_header("authorization");
        headers.push(("content-type", "application/json".to_owned()));
        async move {
            heard_http(
                http_exchange(
                    &server.http_addr,
                    who,
                    "POST",
                    path,
                    &headers,
                    body.to_string(),
                )
                .await,
            )
        }
    };
    match door {
        Door::Decide | Door::ReportOutcome => {
            let channel = match grpc_channel(&server.addr, who).await {
                Ok(channel) => channel,
                Err(e) => return Heard::Failed(e),
            };
            let mut client = DecisionServiceClient::new(channel);
            let result = if door == Door::Decide {
                let mut request = decide(journey, "alice", "laptop", IP, 1);
                if let Some(s) = request.subject.as_mut() {
                    s.tenant = tenant.to_owned();
                }
                let mut request = tonic::Request::new(request);
                bearer(&mut request, who);
                if let Some(t) = timeout {
                    request.set_timeout(t);
                }
                client.decide(request).await.map(|_| ())
            } else {
                let mut request = report(journey, "alice", "laptop", IP, Event::AuthFailed);
                if let Some(s) = request.subject.as_mut() {
                    s.tenant = tenant.to_owned();
                }
                let mut request = tonic::Request::new(request);
                bearer(&mut request, who);
                client.report_outcome(request).await.map(|_| ())
            };
            grpc(result)
        }
        Door::Check => {
            let channel = match grpc_channel(&server.addr, who).await {
                Ok(channel) => channel,
                Err(e) => return Heard::Failed(e),
            };
            let (method, path) = route_for(journey);
            let mut request = tonic::Request::new(envoy_check(
                method,
                path,
                &[("x-forwarded-for", IP)],
                "10.0.0.5",
                Some(&claims(tenant)),
            ));
            bearer(&mut request, who);
            match AuthorizationClient::new(channel).check(request).await {
                Ok(response) => match response.into_inner().http_response {
                    Some(HttpResponse::OkResponse(_)) => Heard::Http(200, String::new()),
                    Some(HttpResponse::DeniedResponse(denied)) => Heard::Http(
                        u16::try_from(denied.status.map_or(0, |s| s.code)).unwrap_or(0),
                        denied.body,
                    ),
                    other => Heard::Failed(format!("{other:?}")),
                },
                Err(status) => grpc_error(&status),
            }
        }
        Door::HttpDecide => post("/v1/decide", decide_body).await,
        Door::HttpReport => post("/v1/report-outcome", report_body).await,
        Door::Hook => post("/v1/hooks/decide", decide_body).await,
        Door::Evaluation => post("/access/v1/evaluation", evaluation).await,
        Door::Evaluations => {
            post(
                "/access/v1/evaluations",
                json!({"evaluations": [evaluation]}),
            )
            .await
        }
        Door::ForwardAuth => {
            let (method, path) = route_for(journey);
            let mut headers = token_header("x-stepgate-caller-token");
            headers.extend([
                ("x-original-method", method.to_owned()),
                ("x-original-uri", path.to_owned()),
                ("x-forwarded-for", IP.to_owned()),
                ("x-jwt-payload", claims(tenant).to_string()),
            ]);
            heard_http(
                http_exchange(
                    &server.http_addr,
                    who,
                    "GET",
                    "/v1/forward-auth",
                    &headers,
                    String::new(),
                )
                .await,
            )
        }
    }
}

/// The files of a secured service: server certificate, client CA, two
/// callers' tokens.
struct Files {
    dir: tempfile::TempDir,
    pki: Pki,
    gateway_token: String,
    idp_token: String,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new("stepgate");
        let (cert, key) = pki.server();
        std::fs::write(dir.path().join("server.pem"), cert).expect("cert");
        std::fs::write(dir.path().join("server.key"), key).expect("key");
        std::fs::write(dir.path().join("clients-ca.pem"), &pki.ca_pem).expect("CA");
        let gateway_token = "g".repeat(20) + &"0123456789abcdef".repeat(2);
        let idp_token = "i".repeat(20) + &"0123456789abcdef".repeat(2);
        std::fs::write(
            dir.path().join("gateway.token"),
            format!("{gateway_token}\n"),
        )
        .expect("token");
        std::fs::write(dir.path().join("idp.token"), &idp_token).expect("token");
        Self {
            dir,
            pki,
            gateway_token,
            idp_token,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn callers(&self) -> Vec<CallerConfig> {
        vec![
            CallerConfig {
                name: "gateway".into(),
                token_file: Some(self.path("gateway.token")),
                spiffe_id: Some(GATEWAY_ID.into()),
                dns_name: None,
                operations: vec!["decide".into(), "check".into()],
                journeys: vec!["payment".into(), "change_payout".into()],
                tenants: vec!["*".into()],
                rate_per_second: None,
                burst: None,
            },
            CallerConfig {
                name: "idp".into(),
                token_file: Some(self.path("idp.token")),
                spiffe_id: None,
                dns_name: Some(IDP_DNS.into()),
                operations: vec!["decide".into(), "report_outcome".into()],
                journeys: vec!["login".into(), "signup".into(), "account_recovery".into()],
                tenants: vec!["".into(), "acme".into()],
                rate_per_second: None,
                burst: None,
            },
        ]
    }

    fn config(&self, tls: bool) -> Config {
        Config {
            policies_dir: bundled_policies(),
            tls: tls.then(|| TlsConfig {
                cert_file: self.path("server.pem"),
                key_file: self.path("server.key"),
                client_ca_file: Some(self.path("clients-ca.pem")),
            }),
            callers: self.callers(),
            gateway: GatewayConfig {
                routes: ["payment", "change_payout", "login"]
                    .into_iter()
                    .map(|journey| {
                        let (method, path) = route_for(journey);
                        RouteConfig {
                            methods: vec![method.into()],
                            path: (journey != "change_payout").then(|| path.into()),
                            prefix: None,
                            template: (journey == "change_payout")
                                .then(|| "/accounts/{account}/payout".into()),
                            journey: journey.into(),
                            attributes: Default::default(),
                        }
                    })
                    .collect(),
                claims: ClaimsConfig {
                    tenant: "tenant".into(),
                    ..ClaimsConfig::default()
                },
                ..GatewayConfig::default()
            },
            ..Config::default()
        }
    }

    /// A token of the same length as the gateway's, differing in its last
    /// byte.
    fn near_miss(&self) -> String {
        let mut wrong = self.gateway_token.clone();
        wrong.pop();
        wrong.push('X');
        wrong
    }
}

fn series_sum(rendered: &str, name: &str, label: &str) -> f64 {
    rendered
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn every_door_refuses_a_caller_without_a_credential_or_with_a_wrong_token() {
    let files = Files::new();
    let (server, spy) = TestServer::start_spied_with(files.config(true), Duration::ZERO).await;
    let ca = &files.pki.ca_pem;
    let nobody = Who::tls(ca, None, None);
    let near_miss = Who::tls(ca, None, Some(&files.near_miss()));
    let garbage = Who::tls(ca, None, Some("not-a-token"));
    for door in DOORS {
        for (who, what) in [
            (&nobody, "no credential"),
            (&near_miss, "a wrong token"),
            (&garbage, "garbage"),
        ] {
            let heard = ask(&server, door, who, "payment", "").await;
            assert!(heard.unauthenticated(), "{door:?} with {what}: {heard:?}");
        }
    }
    assert_eq!(spy.calls(), (0, 0), "a refused caller reaches nothing");
    let rendered = server.engine.metrics().render();
    assert_eq!(
        series_sum(
            &rendered,
            "stepgate_request_faults_total",
            "caller=\"unauthenticated\",fault=\"unauthenticated\""
        ),
        27.0,
        "each refusal counted once"
    );
    // The right token opens every door it may use.
    let gateway = Who::tls(ca, None, Some(&files.gateway_token));
    for door in [
        Door::Decide,
        Door::Check,
        Door::HttpDecide,
        Door::Hook,
        Door::Evaluation,
        Door::Evaluations,
        Door::ForwardAuth,
    ] {
        let heard = ask(&server, door, &gateway, "payment", "").await;
        assert!(heard.answered(), "{door:?}: {heard:?}");
    }
    // Plain TCP to a TLS listener gets no answer either.
    let plain = Who::plain(Some(&files.gateway_token));
    assert!(matches!(
        ask(&server, Door::HttpDecide, &plain, "payment", "").await,
        Heard::Failed(_) | Heard::Http(400, _)
    ));
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_fail_the_handshake_on_every_door() {
    let files = Files::new();
    let (server, spy) = TestServer::start_spied_with(files.config(true), Duration::ZERO).await;
    let ca = &files.pki.ca_pem;
    let stranger = Pki::new("stranger");
    let foreign = stranger.client_with_uri(GATEWAY_ID, false);
    let expired = files.pki.client_with_uri(GATEWAY_ID, true);
    // The right token besides does not save a certificate that fails.
    let token = Some(files.gateway_token.as_str());
    for door in DOORS {
        for (identity, what) in [(&foreign, "another CA"), (&expired, "expired")] {
            let heard = ask(
                &server,
                door,
                &Who::tls(ca, Some(identity), token),
                "payment",
                "",
            )
            .await;
            assert!(
                matches!(heard, Heard::Failed(_)) || heard.unauthenticated(),
                "{door:?}, {what}: {heard:?}"
            );
            assert!(!heard.answered(), "{door:?}, {what}: {heard:?}");
        }
    }
    assert_eq!(spy.calls(), (0, 0));
    let refused =
        server
            .engine
            .metrics()
            .refusals("tls_handshake", "unauthenticated", "unauthenticated");
    assert!(refused >= 18, "every refused handshake counted: {refused}");
}

#[tokio::test]
async fn a_verified_certificate_names_its_caller() {
    let files = Files::new();
    let server = TestServer::start_with(files.config(true)).await;
    let ca = &files.pki.ca_pem;
    let gateway = Who::tls(
        ca,
        Some(&files.pki.client_with_uri(GATEWAY_ID, false)),
        None,
    );
    for door in [
        Door::Decide,
        Door::Check,
        Door::HttpDecide,
        Door::Evaluation,
        Door::ForwardAuth,
    ] {
        let heard = ask(&server, door, &gateway, "payment", "").await;
        assert!(heard.answered(), "{door:?}: {heard:?}");
    }
    let idp = Who::tls(ca, Some(&files.pki.client_with_dns(IDP_DNS)), None);
    for door in [
        Door::Decide,
        Door::ReportOutcome,
        Door::HttpDecide,
        Door::HttpReport,
        Door::Hook,
    ] {
        let heard = ask(&server, door, &idp, "login", "").await;
        assert!(heard.answered(), "{door:?}: {heard:?}");
    }
    let rendered = server.engine.metrics().render();
    assert_eq!(
        series_sum(&rendered, "stepgate_decisions_total", "caller=\"gateway\""),
        5.0
    );
    assert_eq!(
        series_sum(&rendered, "stepgate_decisions_total", "caller=\"idp\""),
        3.0
    );
    // A certificate and a token naming different callers: neither counts.
    let mixed = Who::tls(
        ca,
        Some(&files.pki.client_with_uri(GATEWAY_ID, false)),
        Some(&files.idp_token),
    );
    let heard = ask(&server, Door::HttpDecide, &mixed, "payment", "").await;
    assert!(heard.unauthenticated(), "{heard:?}");
    assert!(
        heard.message().contains("`gateway`") && heard.message().contains("`idp`"),
        "{heard:?}"
    );
    // A verified certificate no caller is named by.
    let unnamed = Who::tls(
        ca,
        Some(
            &files
                .pki
                .client_with_uri("spiffe://stepgate.test/batch", false),
        ),
        None,
    );
    let heard = ask(&server, Door::Decide, &unnamed, "payment", "").await;
    assert!(heard.unauthenticated(), "{heard:?}");
    assert!(
        heard.message().contains("spiffe://stepgate.test/batch"),
        "{heard:?}"
    );
}

#[tokio::test]
async fn a_caller_outside_its_operations_journeys_or_tenants_is_refused_and_nothing_is_stored() {
    let files = Files::new();
    let (server, spy) = TestServer::start_spied_with(files.config(false), Duration::ZERO).await;
    let gateway = Who::plain(Some(&files.gateway_token));
    let idp = Who::plain(Some(&files.idp_token));
    // Operations: a gateway reports nothing; an IdP does not check routes.
    let reports = [Door::ReportOutcome, Door::HttpReport];
    denied(
        &server,
        &reports,
        &gateway,
        "payment",
        "",
        &["`gateway`", "report_outcome"],
    )
    .await;
    denied(
        &server,
        &[Door::Check, Door::ForwardAuth],
        &idp,
        "login",
        "",
        &["`idp`"],
    )
    .await;
    // Journeys: the gateway asks about sign-ins, the IdP about payments.
    let gateway_doors = [
        Door::Decide,
        Door::Check,
        Door::HttpDecide,
        Door::Hook,
        Door::Evaluation,
        Door::ForwardAuth,
    ];
    denied(
        &server,
        &gateway_doors,
        &gateway,
        "login",
        "",
        &["journey `login`"],
    )
    .await;
    let idp_doors = [
        Door::Decide,
        Door::ReportOutcome,
        Door::HttpDecide,
        Door::HttpReport,
        Door::Evaluation,
    ];
    denied(
        &server,
        &idp_doors,
        &idp,
        "payment",
        "",
        &["journey `payment`"],
    )
    .await;
    // Tenants: the IdP serves the default tenant and `acme` only.
    denied(
        &server,
        &idp_doors,
        &idp,
        "login",
        "globex",
        &["tenant `globex`"],
    )
    .await;
    assert_eq!(spy.calls(), (0, 0), "nothing read, nothing stored");
    assert_eq!(server.store_sizes(), (0, 0));
    let metrics = server.engine.metrics();
    assert_eq!(
        metrics.refusals("ReportOutcome", "gateway", "permission_denied"),
        1
    );
    assert_eq!(
        metrics.refusals("Decide", "gateway", "permission_denied"),
        1
    );
    assert_eq!(metrics.refusals("Decide", "idp", "permission_denied"), 2);
    assert_eq!(
        metrics.refusals("forward_auth", "idp", "permission_denied"),
        1
    );
    // Within scope, the same callers are answered.
    for door in [Door::Decide, Door::ReportOutcome, Door::HttpDecide] {
        assert!(
            ask(&server, door, &idp, "login", "acme").await.answered(),
            "{door:?}"
        );
    }
    assert!(
        ask(&server, Door::Check, &gateway, "change_payout", "globex")
            .await
            .answered()
    );
    assert!(spy.calls().1 > 0, "answers within scope are remembered");
    // A batch with one member out of scope answers that member with its
    // error; the others stand.
    let batch = json!({
        "subject": {"type": "user", "id": "alice", "properties": {"device_id": "laptop", "ip": IP, "aal": 1}},
        "resource": {"type": "tenant", "id": "default"},
        "action": {"name": "login"},
        "evaluations": [{}, {"action": {"name": "payment"}}],
    });
    let reply = post_as(&server, &idp, "/access/v1/evaluations", &batch).await;
    assert_eq!(reply.status, 200);
    let items = reply.json()["evaluations"].clone();
    assert!(items[0]["context"]["error"].is_null(), "{items}");
    assert_eq!(items[1]["decision"], false);
    assert_eq!(items[1]["context"]["error"]["status"], 403, "{items}");
    assert_eq!(items[1]["context"]["error"]["code"], "permission_denied");
}

/// POSTs `body` as JSON to `path` on the HTTP listener, as `who` (its
/// token in `Authorization`).
async fn post_as(server: &TestServer, who: &Who, path: &str, body: &Value) -> HttpReply {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(token) = &who.token {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    http_exchange(
        &server.http_addr,
        who,
        "POST",
        path,
        &headers,
        body.to_string(),
    )
    .await
    .expect("HTTP")
}

/// The bundled pack with `limits`, over a store that takes `delay` to
/// answer each lookup.
async fn slow_server(limits: LimitsConfig, delay: Duration) -> (TestServer, Arc<SpyStore>) {
    let config = Config {
        policies_dir: bundled_policies(),
        limits,
        ..Config::default()
    };
    TestServer::start_spied_with(config, delay).await
}

/// Asks every one of `doors` as `who` and expects a refusal for scope
/// whose message holds each of `naming`.
async fn denied(
    server: &TestServer,
    doors: &[Door],
    who: &Who,
    journey: &str,
    tenant: &str,
    naming: &[&str],
) {
    for door in doors {
        let heard = ask(server, *door, who, journey, tenant).await;
        assert!(heard.permission_denied(), "{door:?}: {heard:?}");
        for name in naming {
            assert!(
                heard.message().contains(name),
                "{door:?} names {name}: {heard:?}"
            );
        }
    }
}

fn rate_limited(files: &Files, rate: u32, burst: u32) -> Config {
    let mut config = files.config(false);
    let gateway = config.callers.first_mut().expect("the gateway");
    gateway.rate_per_second = Some(rate);
    gateway.burst = Some(burst);
    config
}

#[tokio::test]
async fn the_rate_limit_engages_at_the_configured_rate_and_says_when_to_retry() {
    let files = Files::new();
    let server = TestServer::start_with(rate_limited(&files, 20, 5)).await;
    let gateway = Who::plain(Some(&files.gateway_token));
    let channel = grpc_channel(&server.addr, &gateway).await.expect("channel");
    let mut client = DecisionServiceClient::new(channel);
    let one = |client: &mut DecisionServiceClient<Channel>| {
        let mut request = tonic::Request::new(decide("payment", "alice", "laptop", IP, 1));
        bearer(&mut request, &gateway);
        let mut client = client.clone();
        async move { client.decide(request).await }
    };
    // The burst passes at once; the next is refused with a retry hint.
    for _ in 0..5 {
        one(&mut client).await.expect("within the burst");
    }
    let refused = one(&mut client).await.expect_err("over the rate");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("`gateway`"), "{refused:?}");
    use tonic_types::StatusExt as _;
    let retry = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo detail");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(50),
        "{retry:?}"
    );
    // Over HTTP: 429 with Retry-After, in whole seconds.
    let body = json!({"journey": "payment", "subject": {"userId": "alice"}, "authn": {"aal": 1}, "network": {"ip": IP}});
    let heard = post_as(&server, &gateway, "/v1/decide", &body).await;
    assert_eq!(heard.status, 429);
    assert_eq!(heard.header("retry-after"), Some("1"));
    assert_eq!(heard.json()["code"], "rate_limited");
    // Another caller is not held to the gateway's rate.
    let idp = Who::plain(Some(&files.idp_token));
    assert!(
        ask(&server, Door::Decide, &idp, "login", "")
            .await
            .answered()
    );
    // Sustained, it lets `rate` a second through: over 1.5 s of asking
    // as fast as answers come, 20/s allows about 30 (plus what refilled
    // since the burst).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let mut passed = 0u32;
    while started.elapsed() < Duration::from_millis(1500) {
        if one(&mut client).await.is_ok() {
            passed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // What refilled in the 300 ms pause (capped at the burst of 5), plus
    // 20 a second.
    let expected = 5.0 + 20.0 * elapsed;
    assert!(
        (f64::from(passed) - expected).abs() <= 3.0,
        "{passed} passed in {elapsed:.2} s; expected about {expected:.0}"
    );
    assert!(
        server
            .engine
            .metrics()
            .refusals("Decide", "gateway", "rate_limited")
            > 10
    );
}

#[tokio::test]
async fn a_deadline_that_passes_mid_request_leaves_no_work_behind() {
    // The store takes 400 ms to answer: every deadline below passes while
    // the request waits for it.
    let limits = LimitsConfig {
        decision_budget_ms: 150,
        ..LimitsConfig::default()
    };
    let (server, spy) = slow_server(limits, Duration::from_millis(400)).await;
    let anyone = Who::plain(None);
    // The caller's own deadline, shorter than the budget.
    let heard = ask_with(
        &server,
        Door::Decide,
        &anyone,
        "login",
        "",
        Some(Duration::from_millis(50)),
    )
    .await;
    assert!(
        matches!(
            heard,
            Heard::Grpc(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled, _)
        ),
        "{heard:?}"
    );
    // The server's budget, for a caller that set none.
    let heard = ask(&server, Door::Decide, &anyone, "login", "").await;
    assert!(
        matches!(heard, Heard::Grpc(tonic::Code::DeadlineExceeded, _)),
        "{heard:?}"
    );
    for door in [Door::HttpDecide, Door::Hook, Door::Evaluation] {
        let heard = ask(&server, door, &anyone, "login", "").await;
        assert!(
            matches!(&heard, Heard::Http(504, body) if body.contains("deadline_exceeded")),
            "{door:?}: {heard:?}"
        );
    }
    // Long after the store would have answered, nothing was written.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (reads, writes) = spy.calls();
    assert!(reads >= 4, "the requests did reach the store: {reads}");
    assert_eq!(writes, 0, "abandoned work stores nothing");
    let metrics = server.engine.metrics();
    assert_eq!(
        metrics.refusals("Decide", "anonymous", "deadline_exceeded"),
        2
    );
    assert_eq!(
        metrics.refusals("http.decide", "anonymous", "deadline_exceeded"),
        1
    );
    assert_eq!(
        series_sum(
            &metrics.render(),
            "stepgate_decisions_total",
            "caller=\"anonymous\""
        ),
        0.0,
        "no decision was counted as made"
    );
}

#[tokio::test]
async fn load_beyond_max_in_flight_is_shed_at_once() {
    let limits = LimitsConfig {
        max_in_flight: 2,
        ..LimitsConfig::default()
    };
    let (server, _spy) = slow_server(limits, Duration::from_millis(300)).await;
    let anyone = Who::plain(None);
    let started = std::time::Instant::now();
    let (a, b, c, d, e, f) = tokio::join!(
        ask(&server, Door::Decide, &anyone, "login", ""),
        ask(&server, Door::HttpDecide, &anyone, "login", ""),
        ask(&server, Door::Decide, &anyone, "login", ""),
        ask(&server, Door::HttpDecide, &anyone, "login", ""),
        ask(&server, Door::Decide, &anyone, "login", ""),
        ask(&server, Door::HttpDecide, &anyone, "login", ""),
    );
    let heard = [a, b, c, d, e, f];
    let answered = heard.iter().filter(|h| h.answered()).count();
    let shed: Vec<&Heard> = heard
        .iter()
        .filter(|h| match h {
            Heard::Grpc(code, m) => {
                *code == tonic::Code::Unavailable && m.contains("max_in_flight")
            }
            Heard::Http(503, body) => body.contains("overloaded"),
            _ => false,
        })
        .collect();
    assert_eq!(answered, 2, "{heard:?}");
    assert_eq!(shed.len(), 4, "{heard:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shed at once, not queued"
    );
    // Room again once the two are done.
    assert!(
        ask(&server, Door::HttpDecide, &anyone, "login", "")
            .await
            .answered()
    );
}

/// Waits up to 10 s for `check` to hold.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("{what}: not within 10 s");
}

#[tokio::test]
async fn token_and_certificate_files_are_read_again_when_they_change() {
    let files = Files::new();
    let server = TestServer::start_with(files.config(true)).await;
    // The reload watcher the binary runs, on this server's files.
    let control = server.guard.control().clone();
    let _watcher =
        stepgate::access::reload::watch(&control, Duration::from_millis(50)).expect("watch");
    let ca = &files.pki.ca_pem;
    let old = Who::tls(ca, None, Some(&files.gateway_token));
    assert!(
        ask(&server, Door::HttpDecide, &old, "payment", "")
            .await
            .answered()
    );
    // A new token replaces the old one.
    let new_token = "n".repeat(40);
    let written = files.path("gateway.token.new");
    std::fs::write(&written, &new_token).expect("write");
    std::fs::rename(&written, files.path("gateway.token")).expect("swap");
    let new = Who::tls(ca, None, Some(&new_token));
    eventually("the new token is accepted", || async {
        ask(&server, Door::HttpDecide, &new, "payment", "")
            .await
            .answered()
    })
    .await;
    assert!(
        ask(&server, Door::HttpDecide, &old, "payment", "")
            .await
            .unauthenticated()
    );
    // A token too short to be safe is refused: the last good one serves.
    let metrics = server.engine.metrics().clone();
    let refused_before = metrics.access_reloads(false);
    std::fs::write(files.path("gateway.token"), "short").expect("write");
    eventually("the short token is refused", || async {
        metrics.access_reloads(false) > refused_before
    })
    .await;
    assert!(
        ask(&server, Door::HttpDecide, &new, "payment", "")
            .await
            .answered()
    );
    // A server certificate from another CA takes over on the next
    // connection; clients that trust only the old CA stop connecting.
    let next = Pki::new("next");
    let (cert, key) = next.server();
    std::fs::write(files.path("server.key.new"), key).expect("key");
    std::fs::write(files.path("server.pem.new"), cert).expect("cert");
    std::fs::rename(files.path("server.key.new"), files.path("server.key")).expect("swap");
    std::fs::rename(files.path("server.pem.new"), files.path("server.pem")).expect("swap");
    // (The short token is still on disk: restore a good one so the whole
    // set loads.)
    std::fs::write(files.path("gateway.token"), &new_token).expect("write");
    let trusting_next = Who::tls(&next.ca_pem, None, Some(&new_token));
    eventually("the new server certificate is served", || async {
        ask(&server, Door::HttpDecide, &trusting_next, "payment", "")
            .await
            .answered()
    })
    .await;
    assert!(matches!(
        ask(&server, Door::HttpDecide, &new, "payment", "").await,
        Heard::Failed(_)
    ));
    assert!(
        ask(&server, Door::Decide, &trusting_next, "payment", "")
            .await
            .answered()
    );
}

#[test]
fn callers_config_mistakes_are_named() {
    let files = Files::new();
    let mut config = files.config(false);
    config.callers[0].operations.push("explain".into());
    config.callers[1].name = "gateway".into();
    config.callers[1].journeys.clear();
    let mut certless = config.callers[0].clone();
    certless.name = "batch".into();
    certless.token_file = None;
    certless.spiffe_id = Some("spiffe://stepgate.test/batch".into());
    config.callers.push(certless);
    let err = config
        .validate(Path::new("stepgate.toml"))
        .expect_err("refused");
    let text = format!("{err:?}");
    for expected in [
        "`callers[0].operations` has `explain`",
        "`callers[1].name` `gateway` names two callers",
        "`callers[1].journeys` is empty",
        "`callers[2]` (`batch`) is named by a client certificate, but `tls.client_ca_file` is not set",
    ] {
        assert!(text.contains(expected), "{expected}\n{text}");
    }
    // With callers, a non-loopback listener needs no insecure setting.
    let mut exposed = files.config(true);
    exposed.listen = "0.0.0.0:50051".parse().expect("addr");
    exposed
        .validate(Path::new("stepgate.toml"))
        .expect("callers authenticate");
    assert!(!exposed.insecure());
}

#[tokio::test]
async fn the_engine_abandons_a_decision_or_report_whose_deadline_passed_before_storing() {
    use stepgate::record::{Call, Door as CallDoor};
    use stepgate::server::grpc::{admit_decide, admit_report};
    let (server, spy) = TestServer::start_spied().await;
    let passed = || {
        Call::new(CallDoor::Grpc, "Decide")
            .by(stepgate::access::Caller::anonymous())
            .until(std::time::Instant::now())
    };
    let input = admit_decide(&decide("login", "alice", "laptop", IP, 1)).expect("admitted");
    let err = server
        .engine
        .decide(&input, &passed())
        .await
        .expect_err("abandoned");
    assert_eq!(err.kind(), stepgate::fault::FaultKind::DeadlineExceeded);
    let report =
        admit_report(&report("login", "alice", "laptop", IP, Event::AuthFailed)).expect("admitted");
    let err = server
        .engine
        .report(&report, &passed())
        .await
        .expect_err("abandoned");
    assert_eq!(err.kind(), stepgate::fault::FaultKind::DeadlineExceeded);
    assert_eq!(spy.calls().1, 0, "nothing stored");
    // With time left, the same requests go through and are stored.
    let later = || {
        Call::new(CallDoor::Grpc, "Decide")
            .by(stepgate::access::Caller::anonymous())
            .until(std::time::Instant::now() + Duration::from_secs(5))
    };
    server
        .engine
        .decide(&input, &later())
        .await
        .expect("decided");
    server
        .engine
        .report(&report, &later())
        .await
        .expect("reported");
    assert_eq!(
        spy.calls().1,
        2,
        "the decision remembered, the failure counted"
    );
}

#[tokio::test]
async fn the_command_line_client_presents_a_token_or_a_client_certificate() {
    let files = Files::new();
    let server = TestServer::start_with(files.config(true)).await;
    let port = server.addr.rsplit(':').next().expect("a port").to_owned();
    let (cert, key) = files.pki.client_with_dns(IDP_DNS);
    std::fs::write(files.path("idp.pem"), cert).expect("cert");
    std::fs::write(files.path("idp.key"), key).expect("key");
    let path = |name: &str| files.path(name).display().to_string();
    let run = move |extra: Vec<String>| {
        let port = port.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "decide".to_owned(),
                "--addr".to_owned(),
                format!("https://localhost:{port}"),
                "--journey".to_owned(),
                "login".to_owned(),
                "--user".to_owned(),
                "alice".to_owned(),
                "--ip".to_owned(),
                IP.to_owned(),
            ];
            args.extend(extra);
            std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
                .args(&args)
                .env_remove("STEPGATE_TOKEN_FILE")
                .output()
                .expect("runs")
        })
    };
    let ca = || vec!["--ca-file".to_owned(), path("clients-ca.pem")];
    let by_token = run([ca(), vec!["--token-file".into(), path("idp.token")]].concat())
        .await
        .expect("joined");
    assert!(
        by_token.status.success(),
        "{}",
        String::from_utf8_lossy(&by_token.stderr)
    );
    assert!(String::from_utf8_lossy(&by_token.stdout).contains("\"outcome\""));
    let by_certificate = run([
        ca(),
        vec![
            "--cert-file".into(),
            path("idp.pem"),
            "--key-file".into(),
            path("idp.key"),
        ],
    ]
    .concat())
    .await
    .expect("joined");
    assert!(
        by_certificate.status.success(),
        "{}",
        String::from_utf8_lossy(&by_certificate.stderr)
    );
    let anonymous = run(ca()).await.expect("joined");
    assert!(!anonymous.status.success());
    let said = String::from_utf8_lossy(&anonymous.stderr);
    assert!(said.contains("no credentials"), "{said}");
    let rendered = server.engine.metrics().render();
    assert_eq!(
        series_sum(&rendered, "stepgate_decisions_total", "caller=\"idp\""),
        2.0
    );
}

#[tokio::test]
async fn the_admin_token_guards_metrics_and_leaves_the_probes_open() {
    let files = Files::new();
    let token = "m".repeat(48);
    std::fs::write(files.path("metrics.token"), format!("{token}\n")).expect("token");
    let mut config = files.config(false);
    config.admin.token_file = Some(files.path("metrics.token"));
    let server = TestServer::start_with(config).await;
    let admin = Who::plain(None);
    let get = |headers: Vec<(&'static str, String)>, path: &'static str| {
        let base = server.admin_addr.clone();
        let admin = admin.clone();
        async move {
            http_exchange(&base, &admin, "GET", path, &headers, String::new())
                .await
                .expect("admin answers")
        }
    };
    let bare = get(vec![], "/metrics").await;
    assert_eq!(bare.status, 401);
    assert!(bare.header("www-authenticate").is_some());
    let wrong = get(
        vec![("authorization", format!("Bearer {}", "x".repeat(48)))],
        "/metrics",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let right = get(
        vec![("authorization", format!("Bearer {token}"))],
        "/metrics",
    )
    .await;
    assert_eq!(right.status, 200);
    assert!(String::from_utf8_lossy(&right.body).contains("stepgate_ready 1"));
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get(vec![], probe).await.status, 200, "{probe}");
    }
    // The decision doors' callers are not the admin's, nor the reverse.
    let as_caller = get(
        vec![("authorization", format!("Bearer {}", files.idp_token))],
        "/metrics",
    )
    .await;
    assert_eq!(as_caller.status, 401);
}

#[tokio::test]
async fn gateway_doors_refuse_a_caller_without_check_before_reading_and_without_a_challenge() {
    let files = Files::new();
    let mut config = files.config(false);
    config.gateway.unmapped = stepgate::config::UnmappedAnswer::Allow;
    let (server, spy) = TestServer::start_spied_with(config, Duration::ZERO).await;
    let idp = Who::plain(Some(&files.idp_token));
    // Unmapped (which this config lets through) and unreadable requests
    // alike: the caller may not check at all.
    for (uri, forwarded) in [("/elsewhere", true), ("/app/home", false)] {
        let mut headers = vec![
            (
                "x-stepgate-caller-token",
                format!("Bearer {}", files.idp_token),
            ),
            ("x-original-method", "GET".to_owned()),
            ("x-original-uri", uri.to_owned()),
        ];
        if forwarded {
            headers.push(("x-forwarded-for", IP.to_owned()));
        }
        let reply = http_exchange(
            &server.http_addr,
            &idp,
            "GET",
            "/v1/forward-auth",
            &headers,
            String::new(),
        )
        .await
        .expect("HTTP");
        assert_eq!(reply.status, 403, "{uri}");
        assert_eq!(
            reply.header("x-stepgate-fault"),
            Some("permission_denied"),
            "{uri}"
        );
    }
    let heard = ask(&server, Door::Check, &idp, "payment", "").await;
    assert!(heard.permission_denied(), "{heard:?}");
    // A proxy without its credential: 403 with the fault named, and no
    // `WWW-Authenticate` a proxy would pass on to the user.
    let reply = http_exchange(
        &server.http_addr,
        &Who::plain(None),
        "GET",
        "/v1/forward-auth",
        &[
            ("x-original-method", "GET".to_owned()),
            ("x-original-uri", "/app/home".to_owned()),
        ],
        String::new(),
    )
    .await
    .expect("HTTP");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-stepgate-fault"), Some("unauthenticated"));
    assert!(reply.header("www-authenticate").is_none());
    // Envoy gets a CheckResponse, never a gRPC error its failure mode
    // could turn into an allow.
    let heard = ask(&server, Door::Check, &Who::plain(None), "payment", "").await;
    assert!(
        matches!(&heard, Heard::Http(403, body) if body.contains("unauthenticated")),
        "{heard:?}"
    );
    assert_eq!(spy.calls(), (0, 0));
}

#[tokio::test]
async fn an_authzen_batch_counts_each_evaluation_against_the_rate() {
    let files = Files::new();
    let mut config = files.config(false);
    let idp = config.callers.get_mut(1).expect("the IdP");
    idp.rate_per_second = Some(5);
    idp.burst = Some(8);
    let server = TestServer::start_with(config).await;
    let who = Who::plain(Some(&files.idp_token));
    let batch = |n: usize| {
        json!({
            "subject": {"type": "user", "id": "alice", "properties": {"device_id": "laptop", "ip": IP, "aal": 1}},
            "resource": {"type": "tenant", "id": "default"},
            "action": {"name": "login"},
            "evaluations": vec![json!({}); n],
        })
    };
    let post = |body: Value| {
        let (server, who) = (&server, &who);
        async move { post_as(server, who, "/access/v1/evaluations", &body).await }
    };
    assert_eq!(
        post(batch(6)).await.status,
        200,
        "six of the burst of eight"
    );
    let over = post(batch(6)).await;
    assert_eq!(over.status, 429, "two left, six asked");
    assert_eq!(over.json()["code"], "rate_limited");
    // Larger than the burst: never passes whole.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(post(batch(9)).await.status, 429);
    assert_eq!(post(batch(2)).await.status, 200);
}

#[tokio::test]
async fn a_token_file_may_hold_two_tokens_while_one_is_rotated_and_the_admin_token_reloads() {
    let files = Files::new();
    let mut config = files.config(false);
    config.admin.token_file = Some(files.path("metrics.token"));
    let old_metrics = "o".repeat(40);
    std::fs::write(files.path("metrics.token"), &old_metrics).expect("token");
    let next = "r".repeat(40);
    std::fs::write(
        files.path("idp.token"),
        format!("{}\r\n\n{next}\n", files.idp_token),
    )
    .expect("two tokens");
    let server = TestServer::start_with(config).await;
    let _watcher =
        stepgate::access::reload::watch(server.guard.control(), Duration::from_millis(50))
            .expect("watch");
    for token in [&files.idp_token, &next] {
        let heard = ask(
            &server,
            Door::HttpDecide,
            &Who::plain(Some(token)),
            "login",
            "",
        )
        .await;
        assert!(heard.answered(), "{heard:?}");
    }
    let metrics = |token: String| {
        let base = server.admin_addr.clone();
        async move {
            http_exchange(
                &base,
                &Who::plain(None),
                "GET",
                "/metrics",
                &[("authorization", format!("Bearer {token}"))],
                String::new(),
            )
            .await
            .expect("admin")
            .status
        }
    };
    assert_eq!(metrics(old_metrics.clone()).await, 200);
    let new_metrics = "w".repeat(40);
    std::fs::write(files.path("metrics.token.new"), &new_metrics).expect("token");
    std::fs::rename(files.path("metrics.token.new"), files.path("metrics.token")).expect("swap");
    eventually("the new metrics token is accepted", || {
        let status = metrics(new_metrics.clone());
        async move { status.await == 200 }
    })
    .await;
    assert_eq!(metrics(old_metrics).await, 401);
}

#[test]
fn callers_naming_unknown_journeys_or_malformed_identities_are_refused() {
    let files = Files::new();
    let mut config = files.config(true);
    config
        .callers
        .get_mut(1)
        .expect("idp")
        .journeys
        .push("logon".into());
    let Err(err) = stepgate::app::build_engine(Arc::new(config)) else {
        unreachable!("a caller naming an unknown journey is refused at start");
    };
    let err = err.to_string();
    assert!(err.contains("`callers[1].journeys` names `logon`"), "{err}");
    for (spiffe, ok) in [
        ("spiffe://example.org/ns/edge/sa/envoy", true),
        ("spiffe://Example.org/x", false),
        ("spiffe://example.org/x/", false),
        ("spiffe://example.org", false),
        ("spiffe://example.org/a//b", false),
    ] {
        let mut config = files.config(true);
        config.callers.get_mut(0).expect("gateway").spiffe_id = Some(spiffe.into());
        assert_eq!(config.validate(Path::new("s.toml")).is_ok(), ok, "{spiffe}");
    }
    let mut config = files.config(true);
    config.callers.get_mut(1).expect("idp").dns_name = Some("*.internal".into());
    let err = format!(
        "{:?}",
        config
            .validate(Path::new("s.toml"))
            .expect_err("a wildcard")
    );
    assert!(err.contains("no wildcards"), "{err}");
}

#[tokio::test]
async fn feedback_needs_report_outcome_on_every_journey() {
    let files = Files::new();
    let mut config = files.config(false);
    let (server, spy) = TestServer::start_spied_with(config.clone(), Duration::ZERO).await;
    let idp = Who::plain(Some(&files.idp_token));
    // The IdP may report sign-ins, but not lift or set the account-wide
    // mark that also guards payments.
    for event in ["EVENT_COMPROMISED", "EVENT_CONFIRMED_SAFE"] {
        let body = json!({
            "journey": "login", "subject": {"userId": "alice"}, "device": {"id": "laptop"},
            "network": {"ip": IP}, "event": event,
        });
        let reply = post_as(&server, &idp, "/v1/report-outcome", &body).await;
        assert_eq!(reply.status, 403, "{event}: {:?}", reply.body);
        let error = reply.json();
        assert_eq!(error["code"], "permission_denied", "{error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("journey `*`")),
            "{error}"
        );
    }
    assert_eq!(spy.calls(), (0, 0), "nothing read, nothing stored");
    drop(server);
    // With every journey in its scope, the same report is taken.
    config.callers[1].journeys = vec!["*".into()];
    let server = TestServer::start_with(config).await;
    let body = json!({
        "journey": "login", "subject": {"userId": "alice"}, "device": {"id": "laptop"},
        "network": {"ip": IP}, "event": "EVENT_COMPROMISED",
    });
    let reply = post_as(&server, &idp, "/v1/report-outcome", &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["effect"], "REPORT_EFFECT_UNTRUSTED");
}

//! Starts the service in-process on 127.0.0.1:0 and builds requests.

use std::path::PathBuf;
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};
use stepgate::config::Config;
use stepgate::engine::Engine;
use stepgate::server::proto::decision_service_client::DecisionServiceClient;
use stepgate::server::proto::{self, DecideRequest, Event, Outcome, ReportOutcomeRequest};

use async_trait::async_trait;
use stepgate::decision::DecisionId;
use stepgate::decision::UnixSeconds;
use stepgate::engine::ManualClock;
use stepgate::geo::GeoDatabases;
use stepgate::policy::PolicySnapshot;
use stepgate::pseudonym::Pseudonymizer;
use stepgate::signals::IpList;
use stepgate::store::{
    ContextStore, IssuedDecision, Lookup, MemoryStore, Record, StoreError, StoredContext,
};
use tonic::transport::Channel;

/// A policy file adding a rule on the payment amount: above 10,000.00 (in
/// minor units) a payment needs AAL3.
pub const LARGE_PAYMENT_POLICY: (&str, &str) = (
    "payments.cedar",
    r#"@id("large-payment")
@reason("payments above 10,000.00 need AAL3")
forbid (principal, action == Action::"payment", resource)
when { context.attributes has amount && context.attributes.amount > 1000000 }
unless { context.authn.aal >= 3 };
"#,
);

pub fn bundled_policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A copy of the bundled policy directory with extra policy files added.
pub fn bundled_policies_with(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(bundled_policies()).expect("bundled") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).expect("write policy");
    }
    dir
}

pub struct TestServer {
    /// The gRPC listener, as `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The HTTP listener, as `http://127.0.0.1:PORT`.
    pub http_addr: String,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), as
    /// `http://127.0.0.1:PORT`.
    pub admin_addr: String,
    pub engine: Arc<Engine>,
    /// The gate in front of both decision listeners.
    pub guard: Arc<stepgate::server::guard::Guard>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// The bundled policies with default config.
    pub async fn start() -> Self {
        Self::start_with(Config {
            policies_dir: bundled_policies(),
            ..Config::default()
        })
        .await
    }

    pub async fn start_with(config: Config) -> Self {
        let config = Arc::new(config);
        let engine = Arc::new(stepgate::app::build_engine(config.clone()).expect("engine builds"));
        Self::serve(engine).await
    }

    /// Like [`Self::start_with`], reading time from `clock`.
    pub async fn start_with_clock(config: Config, clock: Arc<ManualClock>) -> Self {
        let config = Arc::new(config);
        let engine = stepgate::app::build_engine(config.clone())
            .expect("engine builds")
            .with_clock(clock);
        Self::serve(Arc::new(engine)).await
    }

    /// The bundled policies over a store that counts every call, so a test
    /// can prove a refused request never reached it.
    pub async fn start_spied() -> (Self, Arc<SpyStore>) {
        Self::start_spied_with(
            Config {
                policies_dir: bundled_policies(),
                ..Config::default()
            },
            std::time::Duration::ZERO,
        )
        .await
    }

    /// [`Self::start_spied`] with `config`, the store taking `lookup_delay`
    /// to answer each lookup (a slow store, to make deadlines pass
    /// mid-request).
    pub async fn start_spied_with(
        config: Config,
        lookup_delay: std::time::Duration,
    ) -> (Self, Arc<SpyStore>) {
        let config = Arc::new(config);
        let spy = Arc::new(SpyStore {
            inner: MemoryStore::new(&config.store, config.windows),
            lookups: AtomicUsize::new(0),
            records: AtomicUsize::new(0),
            lookup_delay,
        });
        let engine = Engine::new(
            PolicySnapshot::load(&config.policies_dir).expect("bundled policies load"),
            spy.clone(),
            Pseudonymizer::random().expect("random key"),
            IpList::default(),
            Arc::new(GeoDatabases::default()),
            config.clone(),
            Arc::new(stepgate::metrics::Metrics::new().expect("metrics")),
        );
        (Self::serve(Arc::new(engine)).await, spy)
    }

    pub async fn serve(engine: Arc<Engine>) -> Self {
        let bind = || async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind")
        };
        let (listener, http_listener, admin_listener) = (bind().await, bind().await, bind().await);
        let addr = format!("http://{}", listener.local_addr().expect("local addr"));
        let http_addr = format!("http://{}", http_listener.local_addr().expect("local addr"));
        let admin_addr = format!(
            "http://{}",
            admin_listener.local_addr().expect("local addr")
        );
        let readiness = stepgate::server::admin::Readiness::new(engine.clone());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let serving = engine.clone();
        let guard = stepgate::server::guard::Guard::for_engine(&engine)
            .expect("callers and TLS files load");
        let gate = guard.clone();
        readiness.set(true);
        let task = tokio::spawn(async move {
            let grpc = stepgate::server::serve(
                serving.clone(),
                guard.clone(),
                listener,
                until(rx.clone()),
            );
            let http = stepgate::server::http::serve(
                serving,
                guard.clone(),
                http_listener,
                until(rx.clone()),
            );
            let admin = stepgate::server::admin::serve(
                readiness,
                Some(guard.control().clone()),
                admin_listener,
                until(rx),
            );
            let (grpc, http, admin) = tokio::join!(grpc, http, admin);
            grpc.expect("gRPC server runs");
            http.expect("HTTP server runs");
            admin.expect("admin server runs");
        });
        Self {
            addr,
            http_addr,
            admin_addr,
            engine,
            guard: gate,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> DecisionServiceClient<Channel> {
        DecisionServiceClient::new(self.channel().await)
    }

    /// (users, ips) held by the context store.
    pub fn store_sizes(&self) -> (u64, u64) {
        self.engine.store().sizes()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task ends cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }
}

/// What an HTTP call got back.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl HttpReply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            unreachable!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request to `base` (`http://host:port`) with `headers` and
/// `body`, over a fresh connection.
pub async fn http_call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> HttpReply {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(body.into()))
        .expect("request");
    let response = client.request(request).await.expect("HTTP call");
    let (parts, body) = response.into_parts();
    HttpReply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// A `/v1/decide` body for a login from 203.0.113.7, authenticated
/// [`just_authenticated`].
pub fn decide_json(user: &str, device: &str, aal: u32) -> serde_json::Value {
    serde_json::json!({
        "journey": "login",
        "subject": {"userId": user},
        "authn": {"aal": aal, "amr": ["pwd"], "authTime": just_authenticated()},
        "device": {"id": device},
        "network": {"ip": "203.0.113.7"},
        "requestId": "req-7",
    })
}

/// A GET or bodiless call to a peer that may not be listening yet: `None`
/// until it answers.
pub async fn try_http_call(base: &str, method: &str, path: &str) -> Option<HttpReply> {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let (parts, body) = response.into_parts();
    Some(HttpReply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.ok()?.to_bytes(),
    })
}

/// POSTs `json` to `path` with `Content-Type: application/json`.
pub async fn post_json(server: &TestServer, path: &str, json: &serde_json::Value) -> HttpReply {
    http_call(
        &server.http_addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        json.to_string(),
    )
    .await
}

/// When the user of a test request authenticated: a minute before the
/// wall clock, fresh for every freshness rule of the bundled pack (tests on
/// a [`ManualClock`] set their own).
pub fn just_authenticated() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(now.as_secs()).expect("seconds fit") - 60
}

/// A Decide request for `user` on `journey` from `device` and `ip` at
/// `aal`, authenticated [`just_authenticated`].
pub fn decide(journey: &str, user: &str, device: &str, ip: &str, aal: u32) -> DecideRequest {
    DecideRequest {
        journey: journey.into(),
        subject: Some(proto::Subject {
            user_id: user.into(),
            tenant: String::new(),
        }),
        authn: Some(proto::Authn {
            aal,
            amr: vec!["pwd".into()],
            auth_time: just_authenticated(),
        }),
        device: (!device.is_empty()).then(|| proto::Device {
            id: device.into(),
            user_agent: "test-agent/1.0".into(),
        }),
        network: Some(proto::Network { ip: ip.into() }),
        attributes: None,
        request_id: "req-1".into(),
    }
}

pub fn report(
    journey: &str,
    user: &str,
    device: &str,
    ip: &str,
    event: Event,
) -> ReportOutcomeRequest {
    ReportOutcomeRequest {
        decision_id: String::new(),
        journey: journey.into(),
        subject: Some(proto::Subject {
            user_id: user.into(),
            tenant: String::new(),
        }),
        device: (!device.is_empty()).then(|| proto::Device {
            id: device.into(),
            user_agent: String::new(),
        }),
        network: Some(proto::Network { ip: ip.into() }),
        event: event.into(),
        reached_aal: 0,
    }
}

/// A ForgetUser request for `user` in `tenant`, or in every tenant.
pub fn forget(user: &str, tenant: &str, all_tenants: bool) -> proto::ForgetUserRequest {
    proto::ForgetUserRequest {
        subject: Some(proto::Subject {
            user_id: user.into(),
            tenant: tenant.into(),
        }),
        all_tenants,
    }
}

/// The names of the risk signals an answer lists.
pub fn signal_names(answer: &proto::DecideResponse) -> Vec<String> {
    answer
        .risk
        .as_ref()
        .map(|r| r.signals.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default()
}

/// What a test asserts about an answer: outcome, level and reason ids.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub outcome: Outcome,
    pub required_aal: u32,
    pub reasons: Vec<String>,
}

pub fn seen(response: &proto::DecideResponse) -> Seen {
    Seen {
        outcome: Outcome::try_from(response.outcome).expect("known outcome"),
        required_aal: response.required_aal,
        reasons: response
            .reasons
            .iter()
            .map(|r| r.policy_id.clone())
            .collect(),
    }
}

pub fn expect(outcome: Outcome, required_aal: u32, reasons: &[&str]) -> Seen {
    Seen {
        outcome,
        required_aal,
        reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
    }
}

pub async fn ask(
    client: &mut DecisionServiceClient<Channel>,
    request: DecideRequest,
) -> proto::DecideResponse {
    client
        .decide(request)
        .await
        .expect("decide answers")
        .into_inner()
}

/// Reports an outcome on `login` with no decision behind it and expects it
/// accepted; returns what it did.
pub async fn tell(
    client: &mut DecisionServiceClient<Channel>,
    user: &str,
    device: &str,
    ip: &str,
    event: Event,
) -> proto::ReportOutcomeResponse {
    send(client, report("login", user, device, ip, event)).await
}

/// Sends a report and expects it accepted.
pub async fn send(
    client: &mut DecisionServiceClient<Channel>,
    request: ReportOutcomeRequest,
) -> proto::ReportOutcomeResponse {
    client
        .report_outcome(request)
        .await
        .expect("report accepted")
        .into_inner()
}

/// A report answering `decision`, for the user, device and address it was
/// asked about.
pub fn answering(
    decision: &proto::DecideResponse,
    asked: &DecideRequest,
    event: Event,
) -> ReportOutcomeRequest {
    ReportOutcomeRequest {
        decision_id: decision.decision_id.clone(),
        journey: asked.journey.clone(),
        subject: asked.subject.clone(),
        device: asked.device.clone(),
        network: asked.network.clone(),
        event: event.into(),
        reached_aal: 0,
    }
}

/// Reports a completed multi-factor sign-in (AAL2, no decision behind it),
/// so the device becomes known.
pub async fn sign_in(
    client: &mut DecisionServiceClient<Channel>,
    user: &str,
    device: &str,
    ip: &str,
) {
    let mut request = report("login", user, device, ip, Event::AuthSucceeded);
    request.reached_aal = 2;
    let done = send(client, request).await;
    assert_eq!(
        proto::ReportEffect::try_from(done.effect),
        Ok(proto::ReportEffect::Completed),
        "a multi-factor sign-in completes"
    );
}

/// Reports `times` failed sign-ins of `user` from `ip` with no device id.
pub async fn fail(client: &mut DecisionServiceClient<Channel>, user: &str, ip: &str, times: usize) {
    fail_on(client, user, "", ip, times).await;
}

/// Reports `times` failed sign-ins of `user` on `device` from `ip`.
pub async fn fail_on(
    client: &mut DecisionServiceClient<Channel>,
    user: &str,
    device: &str,
    ip: &str,
    times: usize,
) {
    for _ in 0..times {
        let done = tell(client, user, device, ip, Event::AuthFailed).await;
        assert_eq!(
            proto::ReportEffect::try_from(done.effect),
            Ok(proto::ReportEffect::FailureCounted)
        );
    }
}

/// A memory store that counts calls.
pub struct SpyStore {
    inner: MemoryStore,
    lookups: AtomicUsize,
    records: AtomicUsize,
    lookup_delay: std::time::Duration,
}

impl SpyStore {
    /// (reads, writes) so far: lookups and remembered-decision reads, then
    /// records and remembered decisions.
    pub fn calls(&self) -> (usize, usize) {
        (
            self.lookups.load(Ordering::SeqCst),
            self.records.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl ContextStore for SpyStore {
    async fn lookup(&self, key: &Lookup, now: UnixSeconds) -> Result<StoredContext, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if !self.lookup_delay.is_zero() {
            tokio::time::sleep(self.lookup_delay).await;
        }
        self.inner.lookup(key, now).await
    }

    async fn record(&self, record: &Record, now: UnixSeconds) -> Result<bool, StoreError> {
        self.records.fetch_add(1, Ordering::SeqCst);
        self.inner.record(record, now).await
    }

    async fn remember_decision(
        &self,
        id: DecisionId,
        decision: &IssuedDecision,
        now: UnixSeconds,
    ) -> Result<(), StoreError> {
        self.records.fetch_add(1, Ordering::SeqCst);
        self.inner.remember_decision(id, decision, now).await
    }

    async fn issued_decision(
        &self,
        id: DecisionId,
        now: UnixSeconds,
    ) -> Result<Option<IssuedDecision>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.issued_decision(id, now).await
    }

    async fn bind_decision_device(
        &self,
        id: DecisionId,
        device: stepgate::pseudonym::HashedId,
        now: UnixSeconds,
    ) -> Result<Option<stepgate::pseudonym::HashedId>, StoreError> {
        self.records.fetch_add(1, Ordering::SeqCst);
        self.inner.bind_decision_device(id, device, now).await
    }

    async fn forget(
        &self,
        erasure: &stepgate::store::Erasure,
        now: UnixSeconds,
    ) -> Result<stepgate::store::Erased, StoreError> {
        self.records.fetch_add(1, Ordering::SeqCst);
        self.inner.forget(erasure, now).await
    }

    fn sizes(&self) -> (u64, u64) {
        self.inner.sizes()
    }
}

/// A gRPC message frame: the uncompressed flag, the length, the bytes.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).expect("message fits a frame");
    let mut out = vec![0u8];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Posts `body` as it is to `path` (`/package.Service/Method`) over a real
/// HTTP/2 connection, bypassing every client-side check, and returns the
/// status the server answered with (`Code::Ok` on success).
pub async fn raw_call(channel: Channel, path: &str, body: Vec<u8>) -> tonic::Status {
    raw_exchange(channel, path, body).await.0
}

/// [`raw_call`], with the response's message bytes (the first frame, its
/// 5-byte prefix removed; empty when there is none).
pub async fn raw_exchange(
    channel: Channel,
    path: &str,
    body: Vec<u8>,
) -> (tonic::Status, bytes::Bytes) {
    raw_exchange_with(channel, path, body, &[]).await
}

/// [`raw_exchange`] with extra request headers.
pub async fn raw_exchange_with(
    channel: Channel,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (tonic::Status, bytes::Bytes) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .expect("request");
    let response = channel.oneshot(request).await.expect("transport");
    let (parts, body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return (status, bytes::Bytes::new());
    }
    // A body of announced length ends its HTTP/2 stream with its last
    // byte, so trailers after it never reach a real client (curl, Envoy):
    // the call would have no status.
    assert!(
        !parts.headers.contains_key("content-length"),
        "a gRPC answer whose status travels in trailers announced a content-length"
    );
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let bytes = collected.to_bytes();
    let message = bytes.slice(bytes.len().min(5)..);
    (
        tonic::Status::from_header_map(&trailers).expect("a grpc-status"),
        message,
    )
}

/// A free loopback port (for a program the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A peer program: from the environment variable `var`, the distribution's
/// `/usr/sbin` or `/usr/bin`, or `PATH`; `.ci/run` installs Debian's
/// `package` when it is missing.
pub fn program(var: &str, name: &str, package: &str) -> PathBuf {
    let candidates = [
        std::env::var_os(var).map(PathBuf::from),
        Some(PathBuf::from("/usr/sbin").join(name)),
        Some(PathBuf::from("/usr/bin").join(name)),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
        .unwrap_or_else(|| {
            unreachable!(
                "{name} is not installed; `.ci/run` installs it (apt-get install {package})"
            )
        })
}

/// A peer process for the life of the test; stopped even when an
/// assertion fails.
pub struct Peer(pub std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Prometheus text-format scrape, read into samples.
pub struct Scrape(pub String);

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: std::collections::BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, found) = match series.split_once('{') {
                    Some((metric, rest)) => {
                        let inner = rest.strip_suffix('}')?;
                        let pairs: std::collections::BTreeMap<&str, &str> = inner
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .filter_map(|p| {
                                let (k, v) = p.split_once('=')?;
                                Some((k, v.trim_matches('"')))
                            })
                            .collect();
                        (metric, pairs)
                    }
                    None => (series, std::collections::BTreeMap::new()),
                };
                (metric == name && found == wanted).then(|| value.parse().ok())?
            })
    }
}

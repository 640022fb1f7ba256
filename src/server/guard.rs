//! The gate in front of every door on both decision listeners, in this
//! order: who is asking (a verified client certificate or a bearer
//! token, see [`crate::access`]), whether that caller is within its rate,
//! whether the service has room (`limits.max_in_flight`), and how long the
//! request may take (the caller's `grpc-timeout`, at most
//! `limits.decision_budget_ms`). A request turned away here is answered
//! at once, counted by caller and fault, and logged; nothing behind the
//! gate runs. One let in carries an [`Admission`] in its extensions,
//! which the door turns into its [`Call`].
//!
//! Health checks (`grpc.health.v1`, `/healthz`) and the AuthZEN metadata
//! document pass without a credential: probes and discovery carry none.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::codegen::http;

use crate::access::reload::AccessControl;
use crate::access::{Caller, RateLimited, Unauthenticated};
use crate::config::LimitsConfig;
use crate::fault::FaultKind;
use crate::record::{Call, Door, Recorder};

use super::conn::PeerInfo;
use super::status::statuses;

/// The header a forward-auth caller's token travels in: the request's own
/// `Authorization` is the user's, forwarded by the proxy, and never read
/// as the caller's.
pub const FORWARD_AUTH_TOKEN_HEADER: &str = "x-stepgate-caller-token";

/// What a request let in carries: its caller and when it must be done.
#[derive(Debug, Clone)]
pub struct Admission {
    pub caller: Arc<Caller>,
    pub deadline: Instant,
}

impl Admission {
    /// The [`Call`] of a request through `door`, as `rpc`, with the
    /// admission in its extensions; a request without one (none passes
    /// the gate without one) is nobody's and may do nothing.
    pub fn call(admission: Option<&Admission>, door: Door, rpc: &'static str) -> Call {
        match admission {
            Some(admission) => Call::new(door, rpc)
                .by(admission.caller.clone())
                .until(admission.deadline.into_std()),
            None => Call::new(door, rpc),
        }
    }
}

/// Which listener a request came in on: how its refusals are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Grpc,
    Http,
}

/// Why a request was turned away at the gate.
#[derive(Debug)]
enum Turned {
    Unauthenticated(Unauthenticated),
    RateLimited(RateLimited),
    Overloaded { max: usize },
}

/// The wait suggested to a shed request.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

impl Turned {
    fn kind(&self) -> FaultKind {
        match self {
            Turned::Unauthenticated(_) => FaultKind::Unauthenticated,
            Turned::RateLimited(_) => FaultKind::RateLimited,
            Turned::Overloaded { .. } => FaultKind::Overloaded,
        }
    }

    fn message(&self) -> String {
        match self {
            Turned::Unauthenticated(e) => e.to_string(),
            Turned::RateLimited(e) => e.to_string(),
            Turned::Overloaded { max } => format!(
                "overloaded: {max} requests already in progress (`limits.max_in_flight`); retry after {} s",
                SHED_RETRY_AFTER.as_secs()
            ),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Turned::Unauthenticated(_) => None,
            Turned::RateLimited(e) => Some(e.retry_after),
            Turned::Overloaded { .. } => Some(SHED_RETRY_AFTER),
        }
    }
}

/// The gate: callers, rate limits, the in-flight bound and the budget.
pub struct Guard {
    control: Arc<AccessControl>,
    /// How the gateway doors answer a refusal: never a gRPC error (Envoy
    /// would apply its failure mode, which may let the request through)
    /// and never a challenge a proxy would show the user.
    gateway: super::gateway::Gateway,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    budget: Duration,
    recorder: Recorder,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("control", &self.control)
            .field("max_in_flight", &self.max_in_flight)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// A request let in: its admission, and its place among those in flight
/// (given back when dropped, finished or abandoned).
struct Entered {
    admission: Admission,
    _permit: OwnedSemaphorePermit,
}

impl Guard {
    pub fn new(
        control: Arc<AccessControl>,
        config: &crate::config::Config,
        recorder: Recorder,
    ) -> Arc<Self> {
        let limits: &LimitsConfig = &config.limits;
        Arc::new(Self {
            control,
            gateway: super::gateway::Gateway::new(&config.gateway),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            max_in_flight: limits.max_in_flight,
            budget: Duration::from_millis(limits.decision_budget_ms),
            recorder,
        })
    }

    /// The gate `engine`'s config asks for, its files read.
    ///
    /// # Errors
    /// A token or TLS file that does not load.
    pub fn for_engine(
        engine: &crate::engine::Engine,
    ) -> Result<Arc<Self>, crate::access::AccessError> {
        let config = engine.config().clone();
        let control = Arc::new(AccessControl::new(
            config.clone(),
            engine.metrics().clone(),
        )?);
        Ok(Self::new(control, &config, engine.recorder().clone()))
    }

    pub fn control(&self) -> &Arc<AccessControl> {
        &self.control
    }

    /// Requests in progress now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    fn enter(
        &self,
        style: Style,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Entered, (Turned, Option<Arc<Caller>>)> {
        let token_header = match path {
            "/v1/forward-auth" => FORWARD_AUTH_TOKEN_HEADER,
            _ => "authorization",
        };
        let token =
            bearer(headers, token_header).map_err(|e| (Turned::Unauthenticated(e), None))?;
        let certificate = peer.and_then(|p| p.certificate.as_deref());
        let caller = self
            .control
            .access()
            .identify(certificate, token)
            .map_err(|e| (Turned::Unauthenticated(e), None))?;
        caller
            .take()
            .map_err(|e| (Turned::RateLimited(e), Some(caller.clone())))?;
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            (
                Turned::Overloaded {
                    max: self.max_in_flight,
                },
                Some(caller.clone()),
            )
        })?;
        let budget = match style {
            Style::Grpc => grpc_timeout(headers).map_or(self.budget, |t| t.min(self.budget)),
            Style::Http => self.budget,
        };
        Ok(Entered {
            admission: Admission {
                caller,
                deadline: Instant::now() + budget,
            },
            _permit: permit,
        })
    }

    /// Runs `inner` for `request` if it may come in, within its deadline;
    /// answers the refusal otherwise. Work still running at the deadline
    /// is dropped (abandoned, not finished) and answered
    /// DEADLINE_EXCEEDED / 504.
    pub async fn run<B, R, F, Fut>(
        self: Arc<Self>,
        style: Style,
        mut request: http::Request<B>,
        inner: F,
    ) -> http::Response<R>
    where
        F: FnOnce(http::Request<B>) -> Fut,
        Fut: std::future::Future<Output = http::Response<R>>,
        R: ResponseBody,
    {
        let path = request.uri().path().to_owned();
        if exempt(style, &path) {
            return inner(request).await;
        }
        let peer = request.extensions().get::<PeerInfo>().cloned().or_else(|| {
            request
                .extensions()
                .get::<axum::extract::ConnectInfo<PeerInfo>>()
                .map(|c| c.0.clone())
        });
        let (door, rpc) = door_of(style, &path);
        let entered = match self.enter(style, &path, request.headers(), peer.as_ref()) {
            Ok(entered) => entered,
            Err((turned, caller)) => {
                let call = match caller {
                    Some(caller) => Call::new(door, rpc).by(caller),
                    None => Call::new(door, rpc),
                };
                self.recorder.refused(&call, turned.kind(), None);
                tracing::info!(
                    rpc,
                    caller = call.caller_name(),
                    fault = turned.kind().code(),
                    reason = %turned.message(),
                    "request turned away"
                );
                return match door {
                    Door::ExtAuthz | Door::ForwardAuth => self.gateway_refusal(style, &turned),
                    _ => refusal(style, &turned),
                };
            }
        };
        let admission = entered.admission.clone();
        request.extensions_mut().insert(admission.clone());
        self.recorder.metrics().set_in_flight(self.in_flight());
        let mut watch = Abandoned {
            guard: &self,
            call: Some(Call::new(door, rpc).by(admission.caller.clone())),
            deadline: admission.deadline,
        };
        let answered = tokio::time::timeout_at(admission.deadline, inner(request)).await;
        let call = watch.call.take();
        drop(entered);
        self.recorder.metrics().set_in_flight(self.in_flight());
        match (answered, call) {
            (Ok(response), _) => response,
            (Err(_elapsed), call) => {
                if let Some(call) = call {
                    self.recorder
                        .refused(&call, FaultKind::DeadlineExceeded, None);
                }
                deadline_exceeded(style)
            }
        }
    }
}

/// Counts a request whose work was dropped at its deadline by a layer
/// outside the gate (tonic's own `grpc-timeout` handling) before the gate
/// could answer it. A request its caller cancelled earlier is not counted.
struct Abandoned<'a> {
    guard: &'a Guard,
    call: Option<Call>,
    deadline: Instant,
}

/// How early a deadline enforced outside the gate may fire (its clock was
/// read before the gate's).
const DEADLINE_SLACK: Duration = Duration::from_millis(5);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        self.guard
            .recorder
            .metrics()
            .set_in_flight(self.guard.in_flight().saturating_sub(1));
        if Instant::now() + DEADLINE_SLACK >= self.deadline {
            self.guard
                .recorder
                .refused(&call, FaultKind::DeadlineExceeded, None);
        }
    }
}

impl Guard {
    /// A gateway door's answer to a request turned away: as it answers its
    /// other refusals (`gateway.unreadable_status`, 403 by default, with
    /// `x-stepgate-fault`); for Envoy, a `CheckResponse`.
    fn gateway_refusal<R: ResponseBody>(&self, style: Style, turned: &Turned) -> http::Response<R> {
        let err = crate::decision::FieldError::new("caller", turned.message());
        let super::gateway::Verdict::Stop {
            status,
            headers,
            body,
        } = self.gateway.refusal(turned.kind(), &err)
        else {
            return refusal(style, turned);
        };
        // A 401 would have the proxy challenge the user for the proxy's
        // own credential.
        let status = if status == 401 { 403 } else { status };
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("www-authenticate"))
            .collect();
        match style {
            Style::Grpc => {
                use prost::Message as _;
                let stop = super::gateway::Verdict::Stop {
                    status,
                    headers,
                    body,
                };
                R::grpc_ok(&super::ext_authz::check_response(stop).encode_to_vec())
            }
            Style::Http => {
                let mut response = http::Response::new(R::bytes(body.into_bytes()));
                *response.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FORBIDDEN);
                for (name, value) in headers {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.as_bytes()),
                        http::HeaderValue::from_str(&value),
                    ) {
                        response.headers_mut().insert(name, value);
                    }
                }
                response
            }
        }
    }
}

/// The requests that pass without a credential.
fn exempt(style: Style, path: &str) -> bool {
    match style {
        Style::Grpc => path.starts_with("/grpc.health.v1.Health/"),
        Style::Http => path == "/healthz" || path.starts_with("/.well-known/"),
    }
}

/// The door and operation label of a request, for refusals made before a
/// door saw it.
fn door_of(style: Style, path: &str) -> (Door, &'static str) {
    match style {
        Style::Grpc => {
            let rpc = super::framing::rpc_name(path);
            let door = if rpc == super::ext_authz::RPC {
                Door::ExtAuthz
            } else {
                Door::Grpc
            };
            (door, rpc)
        }
        Style::Http => match path {
            "/v1/decide" => (Door::Http, "http.decide"),
            "/v1/report-outcome" => (Door::Http, "http.report_outcome"),
            "/v1/hooks/decide" => (Door::Hook, "http.hook_decide"),
            "/access/v1/evaluation" => (Door::AuthZen, "authzen.evaluation"),
            "/access/v1/evaluations" => (Door::AuthZen, "authzen.evaluations"),
            "/v1/forward-auth" => (Door::ForwardAuth, "forward_auth"),
            _ => (Door::Http, "http.unknown"),
        },
    }
}

/// The bearer token in `header`, if any.
pub(crate) fn bearer<'a>(
    headers: &'a http::HeaderMap,
    header: &'static str,
) -> Result<Option<&'a [u8]>, Unauthenticated> {
    let mut values = headers.get_all(header).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Unauthenticated::RepeatedToken { header });
    }
    let malformed = Unauthenticated::MalformedToken { header };
    let bytes = value.as_bytes();
    // `Bearer` is case-insensitive (RFC 9110 §11.1); one space follows.
    let token = match bytes.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
        _ => return Err(malformed),
    };
    if token.is_empty() {
        return Err(malformed);
    }
    Ok(Some(token))
}

/// The caller's gRPC deadline, from `grpc-timeout` (up to 8 digits and a
/// unit: `H`, `M`, `S`, `m`, `u`, `n`; gRPC over HTTP/2 spec). One that
/// does not parse is not a deadline.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The answer to a request turned away.
fn refusal<R: ResponseBody>(style: Style, turned: &Turned) -> http::Response<R> {
    let kind = turned.kind();
    let (code, status) = statuses(kind);
    match style {
        Style::Grpc => {
            let status = match turned.retry_after() {
                Some(wait) => {
                    use tonic_types::StatusExt as _;
                    tonic::Status::with_error_details(
                        code,
                        turned.message(),
                        tonic_types::ErrorDetails::with_retry_info(Some(wait)),
                    )
                }
                None => tonic::Status::new(code, turned.message()),
            };
            status.into_http()
        }
        Style::Http => {
            let body = serde_json::json!({"code": kind.code(), "message": turned.message()});
            let mut response = http::Response::new(R::bytes(body.to_string().into_bytes()));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if kind == FaultKind::Unauthenticated {
                // RFC 6750 §3.
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"stepgate\""),
                );
            }
            if let Some(wait) = turned.retry_after() {
                // Whole seconds, rounded up (RFC 9110 §10.2.3).
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                headers.insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(seconds.max(1)),
                );
            }
            response
        }
    }
}

fn deadline_exceeded<R: ResponseBody>(style: Style) -> http::Response<R> {
    let message = "deadline exceeded: the request's time (its `grpc-timeout`, at most `limits.decision_budget_ms`) ran out; its work was abandoned and nothing was stored";
    let (code, status) = statuses(FaultKind::DeadlineExceeded);
    match style {
        Style::Grpc => tonic::Status::new(code, message).into_http(),
        Style::Http => {
            let body =
                serde_json::json!({"code": FaultKind::DeadlineExceeded.code(), "message": message});
            let mut response = http::Response::new(R::bytes(body.to_string().into_bytes()));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
    }
}

/// The body types of the two listeners' answers.
pub trait ResponseBody: Default + Sized {
    fn bytes(bytes: Vec<u8>) -> Self;

    /// A body of data frames then trailers.
    fn frames(frames: super::framing::Frames) -> Self;

    /// A gRPC answer carrying `message`, its status in the trailers.
    fn grpc_ok(message: &[u8]) -> http::Response<Self> {
        let (frames, content_type) = super::framing::grpc_ok_frames(message);
        let mut response = http::Response::new(Self::frames(frames));
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, content_type);
        response
    }
}

impl ResponseBody for tonic::body::Body {
    fn bytes(bytes: Vec<u8>) -> Self {
        tonic::body::Body::new(http_body_util::Full::new(axum::body::Bytes::from(bytes)))
    }

    fn frames(frames: super::framing::Frames) -> Self {
        tonic::body::Body::new(frames)
    }
}

impl ResponseBody for axum::body::Body {
    fn bytes(bytes: Vec<u8>) -> Self {
        axum::body::Body::from(bytes)
    }

    fn frames(frames: super::framing::Frames) -> Self {
        axum::body::Body::new(frames)
    }
}

/// The gate as a tower layer, for the gRPC listener.
#[derive(Debug, Clone)]
pub struct GrpcGuardLayer(pub Arc<Guard>);

impl<S> tower::Layer<S> for GrpcGuardLayer {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> GrpcGuard<S> {
        GrpcGuard {
            guard: self.0.clone(),
            inner,
        }
    }
}

/// See [`GrpcGuardLayer`].
#[derive(Debug, Clone)]
pub struct GrpcGuard<S> {
    guard: Arc<Guard>,
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for GrpcGuard<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The service made ready answers; a fresh clone stays for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let guard = self.guard.clone();
        Box::pin(async move {
            let mut failed = None;
            let response = guard
                .run(Style::Grpc, request, |request| async {
                    match inner.call(request).await {
                        Ok(response) => response,
                        Err(error) => {
                            failed = Some(error);
                            http::Response::new(tonic::body::Body::empty())
                        }
                    }
                })
                .await;
            match failed {
                Some(error) => Err(error),
                None => Ok(response),
            }
        })
    }
}

/// The gate as axum middleware, for the HTTP listener.
pub async fn http_guard(
    axum::extract::State(guard): axum::extract::State<Arc<Guard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    guard
        .run(Style::Http, request, |request| next.run(request))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens_are_read_from_the_one_header() {
        let h = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(bearer(&h, "authorization"), Ok(Some(&b"abc"[..])));
        let h = headers(&[("authorization", "bearer abc")]);
        assert_eq!(bearer(&h, "authorization"), Ok(Some(&b"abc"[..])));
        assert_eq!(bearer(&headers(&[]), "authorization"), Ok(None));
        for bad in ["Basic abc", "Bearer ", "Bearer", "abc"] {
            let h = headers(&[("authorization", bad)]);
            assert!(bearer(&h, "authorization").is_err(), "{bad}");
        }
        let twice = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(bearer(&twice, "authorization").is_err());
    }

    #[test]
    fn grpc_timeouts_read_as_the_spec_writes_them() {
        let at = |v: &str| grpc_timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(at("100m"), Some(Duration::from_millis(100)));
        assert_eq!(at("2S"), Some(Duration::from_secs(2)));
        assert_eq!(at("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(at("5u"), Some(Duration::from_micros(5)));
        assert_eq!(at("123456789m"), None);
        assert_eq!(at("m"), None);
        assert_eq!(at("10x"), None);
        assert_eq!(at("-1S"), None);
    }

    #[test]
    fn every_door_path_has_its_own_label() {
        assert_eq!(
            door_of(Style::Http, "/v1/forward-auth").0,
            Door::ForwardAuth
        );
        assert_eq!(
            door_of(Style::Http, "/access/v1/evaluations").0,
            Door::AuthZen
        );
        assert_eq!(door_of(Style::Http, "/v1/users/alice").1, "http.unknown");
        assert_eq!(
            door_of(Style::Grpc, "/envoy.service.auth.v3.Authorization/Check").0,
            Door::ExtAuthz
        );
        assert!(exempt(Style::Grpc, "/grpc.health.v1.Health/Check"));
        assert!(!exempt(Style::Grpc, "/stepgate.v1.DecisionService/Decide"));
        assert!(!exempt(Style::Http, "/v1/decide"));
    }
}

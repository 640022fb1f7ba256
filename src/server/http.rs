//! The HTTP doors on one listener: the JSON API (`/v1/decide`,
//! `/v1/report-outcome`, `/v1/forget-user`, the proto3 JSON mapping of the gRPC messages),
//! AuthZEN (see [`super::authzen`]) and forward-auth (`/v1/forward-auth`,
//! for nginx `auth_request`, Traefik ForwardAuth and Caddy `forward_auth`,
//! over [`super::gateway`]).
//!
//! Bodies are read up to `limits.max_request_bytes` and no further; a body
//! that is too large, is not JSON or does not fit the message is answered
//! 400 with `{"code": ..., "message": ...}` naming the problem, and nothing
//! runs. `X-Request-ID` is echoed on every answer.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

use crate::decision::FieldError;
use crate::engine::Engine;
use crate::fault::FaultKind;
use crate::record::{Call, Door};

use super::conn::PeerInfo;
use super::grpc;
use super::guard::{Admission, Guard};
use super::proto;
use super::status::{ServiceError, statuses};

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum HttpError {
    #[error("the API's descriptor set does not describe `{0}`")]
    Descriptor(String),
    #[error("HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

/// The proto3 JSON mapping of the API's messages, from its own descriptor.
pub struct ProtoJson {
    pool: DescriptorPool,
}

impl ProtoJson {
    pub fn new() -> Result<Self, HttpError> {
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| HttpError::Descriptor(e.to_string()))?;
        for name in MESSAGES {
            if pool.get_message_by_name(name).is_none() {
                return Err(HttpError::Descriptor((*name).to_owned()));
            }
        }
        Ok(Self { pool })
    }

    fn descriptor(&self, name: &str) -> Result<prost_reflect::MessageDescriptor, Refused> {
        self.pool
            .get_message_by_name(name)
            .ok_or_else(|| Refused::internal(format!("no descriptor for `{name}`")))
    }

    /// Reads `bytes` as the JSON form of message `name`. Unknown fields are
    /// ignored, as the binary form ignores them; a field sent twice, under
    /// one name or under both of its names (`user_id` and `userId`), is
    /// refused, since parsers disagree on which one counts.
    fn read<T: prost::Message + Default>(&self, name: &str, bytes: &[u8]) -> Result<T, Refused> {
        let descriptor = self.descriptor(name)?;
        let malformed =
            |e: &dyn std::fmt::Display| Refused::malformed(format!("is not a JSON `{name}`: {e}"));
        crate::admission::json_members_unique(bytes).map_err(|e| malformed(&e))?;
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| malformed(&e))?;
        one_spelling(&value, &descriptor, "").map_err(|e| malformed(&e))?;
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        let message = DynamicMessage::deserialize_with_options(descriptor, &value, &options)
            .map_err(|e| malformed(&e))?;
        message
            .transcode_to::<T>()
            .map_err(|e| Refused::malformed(format!("is not a `{name}`: {e}")))
    }

    /// Writes `message` as the JSON form of message `name`, every field
    /// present, so a caller reads `requiredAal: 0` rather than guessing.
    fn write<T: prost::Message>(&self, name: &str, message: &T) -> Result<Vec<u8>, Refused> {
        let descriptor = self.descriptor(name)?;
        let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .map_err(|e| Refused::internal(e.to_string()))?;
        let mut out = serde_json::Serializer::new(Vec::new());
        let options = SerializeOptions::new().skip_default_fields(false);
        dynamic
            .serialize_with_options(&mut out, &options)
            .map_err(|e| Refused::internal(e.to_string()))?;
        Ok(out.into_inner())
    }
}

/// Refuses an object of a message that names one field twice, by its
/// proto name and its JSON name; checks nested messages too. Members the
/// message does not have, and the keys of maps and `google.protobuf`
/// values, are the caller's data and not looked at.
fn one_spelling(
    value: &serde_json::Value,
    message: &prost_reflect::MessageDescriptor,
    path: &str,
) -> Result<(), String> {
    use prost_reflect::Kind;
    let Some(object) = value.as_object() else {
        return Ok(());
    };
    if message.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    let mut seen: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
    for (key, member) in object {
        let Some(field) = message
            .get_field_by_json_name(key)
            .or_else(|| message.get_field_by_name(key))
        else {
            continue;
        };
        let at = if path.is_empty() {
            field.name().to_owned()
        } else {
            format!("{path}.{}", field.name())
        };
        if let Some(first) = seen.insert(field.number(), key) {
            return Err(format!(
                "`{at}` is sent twice, as `{first}` and as `{key}`; send one"
            ));
        }
        if let Kind::Message(inner) = field.kind()
            && !field.is_map()
        {
            match member {
                serde_json::Value::Array(items) if field.is_list() => {
                    for (i, item) in items.iter().enumerate() {
                        one_spelling(item, &inner, &format!("{at}[{i}]"))?;
                    }
                }
                _ => one_spelling(member, &inner, &at)?,
            }
        }
    }
    Ok(())
}

const DECIDE_REQUEST: &str = "stepgate.v1.DecideRequest";
const DECIDE_RESPONSE: &str = "stepgate.v1.DecideResponse";
const REPORT_REQUEST: &str = "stepgate.v1.ReportOutcomeRequest";
const REPORT_RESPONSE: &str = "stepgate.v1.ReportOutcomeResponse";
const FORGET_REQUEST: &str = "stepgate.v1.ForgetUserRequest";
const FORGET_RESPONSE: &str = "stepgate.v1.ForgetUserResponse";
const MESSAGES: &[&str] = &[
    DECIDE_REQUEST,
    DECIDE_RESPONSE,
    REPORT_REQUEST,
    REPORT_RESPONSE,
    FORGET_REQUEST,
    FORGET_RESPONSE,
];

/// What every HTTP handler shares.
pub struct HttpState {
    pub engine: Arc<Engine>,
    pub gateway: super::gateway::Gateway,
    pub json: ProtoJson,
    pub max_request_bytes: usize,
    /// `http.authzen_identifier`.
    pub authzen_identifier: Option<String>,
}

impl HttpState {
    /// The state of `engine`'s HTTP doors, from its config.
    ///
    /// # Errors
    /// The API's descriptor set lacks a message (a build fault).
    pub fn new(engine: Arc<Engine>) -> Result<Self, HttpError> {
        let config = engine.config().clone();
        Ok(Self {
            gateway: super::gateway::Gateway::new(&config.gateway),
            engine,
            json: ProtoJson::new()?,
            max_request_bytes: config.limits.max_request_bytes,
            authzen_identifier: config.http.authzen_identifier.clone(),
        })
    }
}

/// A request that gets no decision: a fault with its message.
#[derive(Debug)]
pub struct Refused {
    pub kind: FaultKind,
    pub message: String,
}

impl Refused {
    pub fn malformed(rule: impl Into<String>) -> Self {
        Self {
            kind: FaultKind::MalformedRequest,
            message: FieldError::new("request", rule).to_string(),
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self {
            kind: FaultKind::Internal,
            message: "internal error".to_owned(),
        }
    }

    /// Records a service error as `call`'s, keeping what the caller may
    /// see.
    pub fn from_service(err: ServiceError, call: &Call, engine: &Engine) -> Self {
        let kind = err.record(call, engine.recorder());
        Self {
            kind,
            message: err.public_message(),
        }
    }

    /// The error answer: the fault's HTTP status and a small JSON body.
    pub fn response(&self) -> Response {
        let body = serde_json::json!({ "code": self.kind.code(), "message": self.message });
        json_response(statuses(self.kind).1, &body)
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Refuses a request whose `Content-Type` is not `application/json`
/// (parameters such as `charset` aside). AuthZEN 1.0 requires it; for the
/// `/v1` API it keeps a web page from changing stored context: a browser
/// sends JSON cross-site only after a CORS preflight, which stepgate never
/// grants.
pub fn json_content(headers: &HeaderMap) -> Result<(), Refused> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(Refused::malformed(
            "must be sent with `Content-Type: application/json`",
        ))
    }
}

/// Reads a body up to the limit, measured on the bytes received.
pub async fn read_body(
    body: Body,
    limit: usize,
    call: &Call,
    engine: &Engine,
) -> Result<Bytes, Refused> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            let (kind, rule) = if err.is::<http_body_util::LengthLimitError>() {
                (
                    FaultKind::RequestTooLarge,
                    format!(
                        "is larger than {limit} bytes as received (`limits.max_request_bytes`)"
                    ),
                )
            } else {
                (
                    FaultKind::MalformedRequest,
                    format!("body could not be read: {err}"),
                )
            };
            engine.recorder().refused(call, kind, Some("request"));
            Err(Refused {
                kind,
                message: FieldError::new("request", rule).to_string(),
            })
        }
    }
}

/// Counts and logs a refusal of the request's shape (the body is not the
/// message it should be).
pub fn refuse_shape(refused: Refused, call: &Call, engine: &Engine) -> Refused {
    let field = refused.kind.is_callers().then_some("request");
    engine.recorder().refused(call, refused.kind, field);
    refused
}

/// Copies `X-Request-ID` from the request to the answer, whichever
/// handler (or the router's own 404 and 405) made it.
async fn echo_request_id(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = request.headers().get("x-request-id").cloned();
    let mut response = next.run(request).await;
    if let Some(id) = id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// A JSON Decide read and answered: the request (for its echo) and the
/// engine's answer.
async fn answer_json_decide(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    call: &Call,
) -> Result<(proto::DecideRequest, crate::engine::Answer), Refused> {
    let engine = &state.engine;
    json_content(headers).map_err(|r| refuse_shape(r, call, engine))?;
    let bytes = read_body(body, state.max_request_bytes, call, engine).await?;
    let request: proto::DecideRequest = state
        .json
        .read(DECIDE_REQUEST, &bytes)
        .map_err(|r| refuse_shape(r, call, engine))?;
    let answer = async {
        let input = grpc::admit_decide(&request)?;
        Ok::<_, ServiceError>(engine.decide(&input, call).await?)
    }
    .await
    .map_err(|e| Refused::from_service(e, call, engine))?;
    Ok((request, answer))
}

async fn decide(
    State(state): State<Arc<HttpState>>,
    admission: Option<Extension<Admission>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answered: Result<Response, Refused> = async {
        let call = Admission::call(admission.as_deref(), Door::Http, "http.decide");
        let (request, answer) = answer_json_decide(&state, &headers, body, &call).await?;
        let out = grpc::to_proto(answer, request.request_id);
        let bytes = state.json.write(DECIDE_RESPONSE, &out)?;
        Ok(json_bytes(bytes))
    }
    .await;
    answered.unwrap_or_else(|r| r.response())
}

/// A Decide for identity-provider hooks that can only block, such as Ory
/// Kratos web hooks with `can_interrupt`: the same request as
/// `/v1/decide`; 200 with the answer on ALLOW, 403 on STEP_UP and DENY
/// with a body in the message format Kratos shows (`messages[].messages[]`
/// with `id`, `text`, `type` and a `context` carrying the outcome, the
/// acr to restart the flow at and the decision id).
async fn hook_decide(
    State(state): State<Arc<HttpState>>,
    admission: Option<Extension<Admission>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use crate::decision::Outcome;
    let answered: Result<Response, Refused> = async {
        let call = Admission::call(admission.as_deref(), Door::Hook, "http.hook_decide");
        let (request, answer) = answer_json_decide(&state, &headers, body, &call).await?;
        let id = match answer.decision.outcome {
            Outcome::Allow => {
                let out = grpc::to_proto(answer, request.request_id);
                return Ok(json_bytes(state.json.write(DECIDE_RESPONSE, &out)?));
            }
            Outcome::StepUp(_) => HOOK_STEP_UP_ID,
            Outcome::Deny => HOOK_DENY_ID,
        };
        let text = super::summary::user_text(&answer);
        let context = super::summary::summary(&answer, state.engine.acr());
        let body = serde_json::json!({"messages": [{
            "instance_ptr": "#/",
            "messages": [{"id": id, "text": text, "type": "error", "context": context}],
        }]});
        Ok(json_response(StatusCode::FORBIDDEN, &body))
    }
    .await;
    answered.unwrap_or_else(|r| r.response())
}

/// Message ids of the hook answers (Kratos reserves ids below 4000000 for
/// its own messages; these sit in the range it leaves to hooks).
pub const HOOK_STEP_UP_ID: u32 = 4_070_001;
pub const HOOK_DENY_ID: u32 = 4_070_002;

async fn report_outcome(
    State(state): State<Arc<HttpState>>,
    admission: Option<Extension<Admission>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = Admission::call(admission.as_deref(), Door::Http, "http.report_outcome");
    json_rpc(
        &state,
        &call,
        &headers,
        body,
        [REPORT_REQUEST, REPORT_RESPONSE],
        async |request: proto::ReportOutcomeRequest| {
            let input = grpc::admit_report(&request)?;
            Ok(grpc::report_to_proto(
                state.engine.report(&input, &call).await?,
            ))
        },
    )
    .await
}

async fn forget_user(
    State(state): State<Arc<HttpState>>,
    admission: Option<Extension<Admission>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = Admission::call(admission.as_deref(), Door::Http, "http.forget_user");
    json_rpc(
        &state,
        &call,
        &headers,
        body,
        [FORGET_REQUEST, FORGET_RESPONSE],
        async |request: proto::ForgetUserRequest| {
            let input = grpc::admit_forget(&request)?;
            Ok(grpc::forget_to_proto(
                state.engine.forget(&input, &call).await?,
            ))
        },
    )
    .await
}

/// One JSON call of a gRPC method: the body read and decoded as the
/// request message `names[0]`, `handle`d, and its answer encoded as
/// `names[1]`; every refusal answered as the JSON API answers them.
async fn json_rpc<Req, Resp>(
    state: &HttpState,
    call: &Call,
    headers: &HeaderMap,
    body: Body,
    [request_name, response_name]: [&str; 2],
    handle: impl AsyncFnOnce(Req) -> Result<Resp, ServiceError>,
) -> Response
where
    Req: prost::Message + Default,
    Resp: prost::Message,
{
    let answered: Result<Response, Refused> = async {
        let engine = &state.engine;
        json_content(headers).map_err(|r| refuse_shape(r, call, engine))?;
        let bytes = read_body(body, state.max_request_bytes, call, engine).await?;
        let request: Req = state
            .json
            .read(request_name, &bytes)
            .map_err(|r| refuse_shape(r, call, engine))?;
        let answer = handle(request)
            .await
            .map_err(|e| Refused::from_service(e, call, engine))?;
        Ok(json_bytes(state.json.write(response_name, &answer)?))
    }
    .await;
    answered.unwrap_or_else(|r| r.response())
}

/// Forward-auth: the proxy sends the original request's method and URI in
/// the one pair of headers `gateway.forward_auth.original_headers` names
/// (`X-Original-Method`/`X-Original-URI` from nginx as the README
/// configures it; `X-Forwarded-Method`/`X-Forwarded-Uri` from Traefik and
/// Caddy) and lets the request through on a 2xx. The other pair is never
/// read: a proxy passes a client's own headers on.
async fn forward_auth(
    State(state): State<Arc<HttpState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<PeerInfo>,
    admission: Option<Extension<Admission>>,
    headers: HeaderMap,
) -> Response {
    let call = Admission::call(admission.as_deref(), Door::ForwardAuth, "forward_auth");
    if let Some(verdict) = state.gateway.not_permitted(&call, &state.engine) {
        return verdict_response(verdict);
    }
    let joined = JoinedHeaders::new(&headers);
    let lookup = |name: &str| joined.get(name);
    let (method_header, uri_header) = state.gateway.config().forward_auth.original_headers.names();
    // Each names one request: sent twice, stepgate cannot tell which one
    // the proxy forwards.
    let single = |name: &'static str| match headers.get_all(name).iter().count() {
        0 => Err(FieldError::new(
            name,
            format!(
                "is missing: `{method_header}` and `{uri_header}` must name the original request (`gateway.forward_auth.original_headers`)"
            ),
        )),
        1 => lookup(name).ok_or_else(|| FieldError::new(name, "is not visible ASCII")),
        _ => Err(FieldError::new(name, "is sent more than once")),
    };
    let verdict = match single(method_header).and_then(|m| Ok((m, single(uri_header)?))) {
        Ok((method, target)) => {
            let ask = super::gateway::GatewayAsk {
                method,
                target,
                header: &lookup,
                source: Some(peer.remote.ip()),
                claims: super::gateway::ClaimsAt::Header,
            };
            state.gateway.check(&ask, &state.engine, &call).await
        }
        Err(err) => state.gateway.unreadable_request(&err, &call, &state.engine),
    };
    verdict_response(verdict)
}

/// A gateway verdict as forward-auth's answer.
fn verdict_response(verdict: super::gateway::Verdict) -> Response {
    match verdict {
        super::gateway::Verdict::Allow { headers, .. } => {
            let mut response = StatusCode::OK.into_response();
            add_headers(&mut response, &headers);
            response
        }
        super::gateway::Verdict::Stop {
            status,
            headers,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            let mut response = (status, body).into_response();
            add_headers(&mut response, &headers);
            response
        }
    }
}

/// A request's headers by lower-case name, each header sent on several
/// lines read as one value with the lines joined by `, ` (RFC 9110 §5.3),
/// as Envoy hands them to ext_authz; a value that is not visible ASCII is
/// not read.
struct JoinedHeaders<'a> {
    headers: &'a HeaderMap,
    repeated: std::collections::HashMap<&'a str, String>,
}

impl<'a> JoinedHeaders<'a> {
    fn new(headers: &'a HeaderMap) -> Self {
        let mut repeated = std::collections::HashMap::new();
        for name in headers.keys() {
            let lines = headers.get_all(name);
            if lines.iter().nth(1).is_some() {
                let values: Option<Vec<&str>> = lines.iter().map(|v| v.to_str().ok()).collect();
                if let Some(values) = values {
                    repeated.insert(name.as_str(), values.join(", "));
                }
            }
        }
        Self { headers, repeated }
    }

    fn get(&self, name: &str) -> Option<&str> {
        if let Some(joined) = self.repeated.get(name) {
            return Some(joined);
        }
        let mut lines = self.headers.get_all(name).iter();
        let first = lines.next()?;
        // Several lines that were not all readable: none is read.
        if lines.next().is_some() {
            return None;
        }
        first.to_str().ok()
    }
}

fn add_headers(response: &mut Response, headers: &[(String, String)]) {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"code": "not_found", "message": "no such endpoint"}),
    )
}

async fn method_not_allowed() -> Response {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({"code": "method_not_allowed", "message": "this endpoint does not take that method"}),
    )
}

/// Every HTTP door's routes, behind `guard`.
pub fn router(state: Arc<HttpState>, guard: Arc<Guard>) -> Router {
    Router::new()
        .route("/v1/decide", post(decide))
        .route("/v1/report-outcome", post(report_outcome))
        .route("/v1/forget-user", post(forget_user))
        .route("/v1/hooks/decide", post(hook_decide))
        .merge(super::authzen::routes())
        .route("/v1/forward-auth", axum::routing::any(forward_auth))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            super::guard::http_guard,
        ))
        .layer(axum::middleware::from_fn(echo_request_id))
        .with_state(state)
}

/// Serves HTTP on `listener`, behind `guard` (over TLS when its settings
/// say so), until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    guard: Arc<Guard>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let state = Arc::new(HttpState::new(engine)?);
    let incoming = super::conn::accept(
        listener,
        guard.control().clone(),
        crate::access::reload::Listener::Http,
    )?;
    axum::serve(
        incoming,
        router(state, guard).into_make_service_with_connect_info::<PeerInfo>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

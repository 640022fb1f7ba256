//! The load generator's clients, one per front door, behind one interface:
//! ask for a decision, report an outcome, and call the door's empty floor
//! (`grpc.health.v1.Health/Check` on gRPC, `GET /healthz` on HTTP).
//!
//! Each speaks its door the way a real caller would: generated gRPC
//! clients, JSON over HTTP/1.1 with keep-alive, an Envoy `CheckRequest`
//! with the `jwt_authn` payload in its metadata.

use axum::body::Bytes;
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::server::proto;
use crate::server::proto::decision_service_client::DecisionServiceClient;

/// Which front door the load goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `stepgate.v1.DecisionService` over gRPC.
    Grpc,
    /// `POST /v1/decide` and `/v1/report-outcome`, JSON over HTTP.
    Http,
    /// AuthZEN `POST /access/v1/evaluation` (reports over `/v1`).
    Authzen,
    /// Envoy `Authorization/Check` over gRPC (routes `/JOURNEY`, see
    /// `benches/gateway.toml`); gateways do not report.
    ExtAuthz,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "grpc" => Ok(Self::Grpc),
            "http" => Ok(Self::Http),
            "authzen" => Ok(Self::Authzen),
            "ext-authz" => Ok(Self::ExtAuthz),
            other => Err(format!(
                "`{other}` is not one of grpc, http, authzen, ext-authz"
            )),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
            Self::Authzen => "authzen",
            Self::ExtAuthz => "ext-authz",
        })
    }
}

/// What a door said, as far as the load generator needs it.
pub struct Said {
    /// `ALLOW`, `STEP_UP` or `DENY`.
    pub outcome: &'static str,
    /// For the report that may follow; empty when the door does not say.
    pub decision_id: String,
}

/// A failed call, named by its gRPC code or HTTP status.
pub type Failure = String;

/// One connection's client for a door.
#[derive(Clone)]
pub enum Door {
    Grpc(DecisionServiceClient<Channel>, HealthClient<Channel>),
    Http {
        client: HyperClient<HttpConnector, Full<Bytes>>,
        base: String,
        authzen: bool,
    },
    ExtAuthz(
        AuthorizationClient<Channel>,
        DecisionServiceClient<Channel>,
        HealthClient<Channel>,
    ),
}

fn code(status: &tonic::Status) -> Failure {
    format!("{:?}", status.code())
}

fn outcome_name(outcome: proto::Outcome) -> &'static str {
    match outcome {
        proto::Outcome::Allow => "ALLOW",
        proto::Outcome::StepUp => "STEP_UP",
        _ => "DENY",
    }
}

impl Door {
    /// A gRPC door over `channel`.
    pub fn grpc(protocol: Protocol, channel: Channel) -> Self {
        match protocol {
            Protocol::ExtAuthz => Self::ExtAuthz(
                AuthorizationClient::new(channel.clone()),
                DecisionServiceClient::new(channel.clone()),
                HealthClient::new(channel),
            ),
            _ => Self::Grpc(
                DecisionServiceClient::new(channel.clone()),
                HealthClient::new(channel),
            ),
        }
    }

    /// An HTTP door at `base` (`http://host:port`).
    pub fn http(protocol: Protocol, base: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Self::Http {
            client,
            base: base.trim_end_matches('/').to_owned(),
            authzen: protocol == Protocol::Authzen,
        }
    }

    /// Sends `request` and reads the whole answer; a status other than
    /// 2xx is a failure named by it.
    async fn send(
        client: &HyperClient<HttpConnector, Full<Bytes>>,
        request: Result<http::Request<Full<Bytes>>, http::Error>,
    ) -> Result<Bytes, Failure> {
        let request = request.map_err(|e| format!("request: {e}"))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }

    async fn post(
        client: &HyperClient<HttpConnector, Full<Bytes>>,
        url: String,
        body: &Value,
    ) -> Result<Value, Failure> {
        let request = http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())));
        let bytes = Self::send(client, request).await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("JSON: {e}"))
    }

    /// Asks for a decision on `request`.
    pub async fn decide(&mut self, request: proto::DecideRequest) -> Result<Said, Failure> {
        match self {
            Self::Grpc(client, _) => {
                let answer = client
                    .decide(request)
                    .await
                    .map_err(|s| code(&s))?
                    .into_inner();
                Ok(Said {
                    outcome: outcome_name(
                        proto::Outcome::try_from(answer.outcome).unwrap_or_default(),
                    ),
                    decision_id: answer.decision_id,
                })
            }
            Self::Http {
                client,
                base,
                authzen: false,
            } => {
                let answer =
                    Self::post(client, format!("{base}/v1/decide"), &decide_json(&request)).await?;
                let outcome = match answer.get("outcome").and_then(Value::as_str) {
                    Some("OUTCOME_ALLOW") => "ALLOW",
                    Some("OUTCOME_STEP_UP") => "STEP_UP",
                    _ => "DENY",
                };
                Ok(Said {
                    outcome,
                    decision_id: text(&answer, &["decisionId"]),
                })
            }
            Self::Http {
                client,
                base,
                authzen: true,
            } => {
                let answer = Self::post(
                    client,
                    format!("{base}/access/v1/evaluation"),
                    &evaluation_json(&request),
                )
                .await?;
                let allowed = answer.get("decision").and_then(Value::as_bool) == Some(true);
                let outcome = match (allowed, text(&answer, &["context", "outcome"]).as_str()) {
                    (true, _) => "ALLOW",
                    (false, "step_up") => "STEP_UP",
                    _ => "DENY",
                };
                Ok(Said {
                    outcome,
                    decision_id: text(&answer, &["context", "decision_id"]),
                })
            }
            Self::ExtAuthz(client, _, _) => {
                let response = client
                    .check(check_request(&request))
                    .await
                    .map_err(|s| code(&s))?
                    .into_inner();
                let outcome = match response.http_response {
                    Some(HttpResponse::OkResponse(_)) => "ALLOW",
                    // A 401 or 403 is a decision only when it says so; an
                    // unmapped or unreadable request (a server configured
                    // differently from `benches/gateway.toml`) is an error.
                    Some(HttpResponse::DeniedResponse(d)) => {
                        let said = d.headers.iter().find_map(|h| {
                            h.header
                                .as_ref()
                                .filter(|h| h.key == crate::server::gateway::OUTCOME_HEADER)
                                .map(|h| h.value.clone())
                        });
                        match said.as_deref() {
                            Some("step_up") => "STEP_UP",
                            Some("deny") => "DENY",
                            _ => {
                                let status = d.status.map_or(0, |s| s.code);
                                let code = serde_json::from_str::<Value>(&d.body)
                                    .ok()
                                    .map(|b| text(&b, &["code"]))
                                    .unwrap_or_default();
                                return Err(format!("HTTP {status} {code}"));
                            }
                        }
                    }
                    Some(HttpResponse::ErrorResponse(_)) | None => {
                        return Err("no decision in the response".to_owned());
                    }
                };
                Ok(Said {
                    outcome,
                    decision_id: String::new(),
                })
            }
        }
    }

    /// Reports an outcome (over gRPC for gRPC doors, `/v1` for HTTP ones).
    pub async fn report(&mut self, request: proto::ReportOutcomeRequest) -> Result<(), Failure> {
        match self {
            Self::Grpc(client, _) | Self::ExtAuthz(_, client, _) => client
                .report_outcome(request)
                .await
                .map(|_| ())
                .map_err(|s| code(&s)),
            Self::Http { client, base, .. } => Self::post(
                client,
                format!("{base}/v1/report-outcome"),
                &report_json(&request),
            )
            .await
            .map(|_| ()),
        }
    }

    /// The door's empty call.
    pub async fn floor(&mut self) -> Result<(), Failure> {
        match self {
            Self::Grpc(_, health) | Self::ExtAuthz(_, _, health) => health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|s| code(&s)),
            Self::Http { client, base, .. } => {
                let request =
                    http::Request::get(format!("{base}/healthz")).body(Full::new(Bytes::new()));
                Self::send(client, request).await.map(|_| ())
            }
        }
    }
}

/// A string at `path` in `value`, or empty.
fn text(value: &Value, path: &[&str]) -> String {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn amount(request: &proto::DecideRequest) -> Option<f64> {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.fields.get("amount"))
        .and_then(|v| match v.kind {
            Some(prost_types::value::Kind::NumberValue(n)) => Some(n),
            _ => None,
        })
}

/// `request` in the proto3 JSON mapping, as an IdP would write it.
fn decide_json(request: &proto::DecideRequest) -> Value {
    let mut body = json!({
        "journey": request.journey,
        "subject": {"userId": request.subject.as_ref().map(|s| s.user_id.as_str())},
        "authn": {"aal": request.authn.as_ref().map_or(1, |a| a.aal), "amr": ["pwd"]},
        "network": {"ip": request.network.as_ref().map(|n| n.ip.as_str())},
    });
    if let (Some(device), Some(object)) = (&request.device, body.as_object_mut()) {
        object.insert("device".into(), json!({"id": device.id}));
    }
    if let (Some(amount), Some(object)) = (amount(request), body.as_object_mut()) {
        object.insert("attributes".into(), json!({"amount": amount}));
    }
    body
}

fn report_json(request: &proto::ReportOutcomeRequest) -> Value {
    let event = proto::Event::try_from(request.event)
        .unwrap_or_default()
        .as_str_name();
    let mut body = json!({
        "journey": request.journey,
        "subject": {"userId": request.subject.as_ref().map(|s| s.user_id.as_str())},
        "network": {"ip": request.network.as_ref().map(|n| n.ip.as_str())},
        "event": event,
        "reachedAal": request.reached_aal,
    });
    if let Some(object) = body.as_object_mut() {
        if let Some(device) = &request.device {
            object.insert("device".into(), json!({"id": device.id}));
        }
        if !request.decision_id.is_empty() {
            object.insert("decisionId".into(), json!(request.decision_id));
        }
    }
    body
}

/// An AuthZEN evaluation for `request`.
fn evaluation_json(request: &proto::DecideRequest) -> Value {
    let mut properties = json!({
        "ip": request.network.as_ref().map(|n| n.ip.as_str()),
        "aal": request.authn.as_ref().map_or(1, |a| a.aal),
    });
    if let (Some(device), Some(object)) = (&request.device, properties.as_object_mut()) {
        object.insert("device_id".into(), json!(device.id));
    }
    let resource = match amount(request) {
        Some(amount) => {
            json!({"type": "tenant", "id": "default", "properties": {"amount": amount}})
        }
        None => json!({"type": "tenant", "id": "default"}),
    };
    json!({
        "subject": {"type": "user", "id": request.subject.as_ref().map(|s| s.user_id.as_str()), "properties": properties},
        "resource": resource,
        "action": {"name": request.journey},
    })
}

/// A JSON value as a protobuf `Value` (Envoy's own copy of the type).
pub fn pb_value(value: &Value) -> PbValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: items.iter().map(pb_value).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), pb_value(v)))
                .collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

/// An Envoy `CheckRequest` as Envoy sends it: the connecting peer at
/// `source`, the request's method, path (and query) and lower-case headers,
/// and, when `claims` is given, the `jwt_authn` filter's verified payload
/// in the metadata as `jwt_payload`.
pub fn envoy_check(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    source: &str,
    claims: Option<&Value>,
) -> CheckRequest {
    let mut metadata = Metadata::default();
    let payload = claims.map(|c| pb_value(&json!({ "jwt_payload": c })).kind);
    if let Some(Some(Kind::StructValue(payload))) = payload {
        metadata
            .filter_metadata
            .insert("envoy.filters.http.jwt_authn".into(), payload);
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.into(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            metadata_context: Some(metadata),
            ..AttributeContext::default()
        }),
    }
}

/// An Envoy check for `request`: the route `/JOURNEY`, the client in
/// `x-forwarded-for` behind one proxy, the device in `x-device-id`, the
/// payment amount in `x-amount`, the token's claims in the `jwt_authn`
/// metadata.
fn check_request(request: &proto::DecideRequest) -> CheckRequest {
    let aal = request.authn.as_ref().map_or(1, |a| a.aal).max(1);
    let claims = json!({
        "sub": request.subject.as_ref().map_or("", |s| s.user_id.as_str()),
        "acr": format!("http://idmanagement.gov/ns/assurance/aal/{aal}"),
    });
    let amount = amount(request).map(|a| format!("{a:.0}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(network) = &request.network {
        headers.push(("x-forwarded-for", &network.ip));
    }
    if let Some(device) = &request.device {
        headers.push(("x-device-id", &device.id));
    }
    if let Some(amount) = &amount {
        headers.push(("x-amount", amount));
    }
    envoy_check(
        "POST",
        &format!("/{}", request.journey),
        &headers,
        "10.0.0.1",
        Some(&claims),
    )
}

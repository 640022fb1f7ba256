//! The Envoy door: `envoy.service.auth.v3.Authorization/Check` on the gRPC
//! listener. Envoy (Istio, Envoy Gateway, Contour, Gloo) asks before it
//! forwards a request; the answer is always a `CheckResponse`, never a gRPC
//! error, so a request stepgate cannot read gets stepgate's configured
//! answer and not the gateway's own failure mode.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Address, Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::protobuf::{Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::config::ClaimsSource;
use crate::decision::FieldError;
use crate::engine::Engine;
use crate::record::{Call, Door};

use super::framing::{Reached, RefusalAnswer};
use super::gateway::{ClaimsAt, Gateway, GatewayAsk, Verdict};

/// The RPC's label in logs and metrics.
pub const RPC: &str = "ext_authz.check";

/// A Check arriving now, as its caller's.
fn call(admission: Option<&super::guard::Admission>) -> Call {
    super::guard::Admission::call(admission, Door::ExtAuthz, RPC)
}

pub struct ExtAuthz {
    engine: Arc<Engine>,
    gateway: Arc<Gateway>,
}

impl ExtAuthz {
    pub fn new(engine: Arc<Engine>, gateway: Arc<Gateway>) -> Self {
        Self { engine, gateway }
    }
}

/// A protobuf `Value` as JSON (the `jwt_authn` payload Envoy forwards is a
/// `Struct`).
fn json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers (`auth_time`, `iat`) stay whole.
            #[expect(
                clippy::cast_possible_truncation,
                reason = "checked whole and in range"
            )]
            let whole = (n.fract() == 0.0 && n.abs() < 9.0e15).then_some(*n as i64);
            whole.map_or_else(
                || serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
                Value::from,
            )
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json).collect()),
        Some(Kind::StructValue(s)) => {
            Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), json(v))).collect())
        }
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// A verdict as Envoy's answer.
/// A verdict as Envoy's `CheckResponse`.
pub(crate) fn check_response(verdict: Verdict) -> CheckResponse {
    match verdict {
        Verdict::Allow { headers, remove } => CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..rpc::Status::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
                headers_to_remove: remove,
                ..OkHttpResponse::default()
            })),
            ..CheckResponse::default()
        },
        Verdict::Stop {
            status,
            headers,
            body,
        } => {
            // UNAUTHENTICATED for a challenge, PERMISSION_DENIED otherwise:
            // what Envoy logs; the HTTP status is what the client sees.
            let code = if status == 401 { 16 } else { 7 };
            CheckResponse {
                status: Some(rpc::Status {
                    code,
                    ..rpc::Status::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(status),
                    }),
                    headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
                    body,
                })),
                ..CheckResponse::default()
            }
        }
    }
}

/// What a check the transport refused (too large, not protobuf) is
/// answered with: the gateway's configured refusal as a `CheckResponse`,
/// never a gRPC error, which Envoy would meet with its own failure mode.
pub fn refusal_answer(gateway: Arc<Gateway>) -> RefusalAnswer {
    RefusalAnswer::new(move |kind, err| {
        use prost::Message as _;
        check_response(gateway.refusal(kind, err)).encode_to_vec()
    })
}

/// The headers of a check sent with `encode_raw_headers: true` (then
/// `headers` is empty and `header_map` holds each line on its own): the
/// lines of one name joined with `, `, as Envoy merges them otherwise.
fn raw_headers(http: &HttpRequest) -> Option<HashMap<String, String>> {
    if !http.headers.is_empty() {
        return None;
    }
    let lines = &http.header_map.as_ref()?.headers;
    let mut merged: HashMap<String, String> = HashMap::with_capacity(lines.len());
    for line in lines {
        let value = if line.raw_value.is_empty() {
            line.value.clone()
        } else {
            String::from_utf8_lossy(&line.raw_value).into_owned()
        };
        merged
            .entry(line.key.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    Some(merged)
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let call = call(request.extensions().get());
        Reached::mark(&request);
        if let Some(verdict) = self.gateway.not_permitted(&call, &self.engine) {
            return Ok(Response::new(check_response(verdict)));
        }
        let req = request.into_inner();
        let attributes = req.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let source: Option<IpAddr> = attributes
            .and_then(|a| a.source.as_ref())
            .and_then(|p| p.address.as_ref())
            .and_then(|a| a.address.as_ref())
            .and_then(|a| match a {
                Address::SocketAddress(s) => s.address.parse().ok(),
                _ => None,
            });
        let Some(http) = http else {
            let verdict = self.gateway.unreadable_request(
                &FieldError::new(
                    "attributes.request.http",
                    "is missing: the request to authorize is not described",
                ),
                &call,
                &self.engine,
            );
            return Ok(Response::new(check_response(verdict)));
        };
        let config = self.gateway.claims_config();
        let claims = match config.ext_authz_from {
            ClaimsSource::Header => ClaimsAt::Header,
            ClaimsSource::Metadata => ClaimsAt::Metadata(
                attributes
                    .and_then(|a| a.metadata_context.as_ref())
                    .and_then(|m| m.filter_metadata.get(&config.metadata_namespace))
                    .and_then(|s| s.fields.get(&config.metadata_field))
                    .map(json),
            ),
        };
        let raw = raw_headers(http);
        let headers = raw.as_ref().unwrap_or(&http.headers);
        let lookup = |name: &str| headers.get(name).map(String::as_str);
        let ask = GatewayAsk {
            method: &http.method,
            target: &http.path,
            header: &lookup,
            source,
            claims,
        };
        let verdict = self.gateway.check(&ask, &self.engine, &call).await;
        Ok(Response::new(check_response(verdict)))
    }
}

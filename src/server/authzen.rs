//! The AuthZEN Authorization API 1.0 door (OpenID, January 2026):
//! `POST /access/v1/evaluation`, `POST /access/v1/evaluations` and
//! `GET /.well-known/authzen-configuration`.
//!
//! Mapping (README, "AuthZEN"): `subject.id` is the user; `subject.properties`
//! carry the tenant, device, client address and what the user proved;
//! `action.name` is the journey; `resource.properties` and the members of
//! `context` are the journey attributes. A STEP_UP is `decision: false`
//! with `acr_values` and a `step-up` obligation (AuthZEN obligations
//! profile, draft 1) in the context. A deny is HTTP 200; a request missing
//! what the spec requires is 400 naming it.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::admission::{self, AuthnAsk, DecideAsk, DeviceAsk, SubjectAsk};
use crate::decision::{FieldError, Outcome};
use crate::engine::{Answer, Engine};

use super::http::{HttpState, Refused, echo_request_id, json_response, read_body, refuse_shape};
use super::status::ServiceError;

/// Where the endpoints are, relative to the PDP's identifier.
pub const EVALUATION_PATH: &str = "/access/v1/evaluation";
pub const EVALUATIONS_PATH: &str = "/access/v1/evaluations";
pub const METADATA_PATH: &str = "/.well-known/authzen-configuration";
/// The obligation types a STEP_UP carries.
pub const OBLIGATIONS_SUPPORTED: [&str; 1] = ["step-up"];

/// Members of `context` that AuthZEN itself defines; never journey
/// attributes.
const RESERVED_CONTEXT: [&str; 3] = [
    "obligations_supported",
    "supported_obligations",
    "supported_mandatory_extensions",
];

#[derive(Debug, Default, Clone, Deserialize)]
struct Entity {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
    properties: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct Action {
    name: Option<String>,
    properties: Option<Map<String, Value>>,
}

/// One evaluation, or the defaults of a batch, or one item of it.
#[derive(Debug, Default, Clone, Deserialize)]
struct Tuple {
    subject: Option<Entity>,
    resource: Option<Entity>,
    action: Option<Action>,
    context: Option<Map<String, Value>>,
}

impl Tuple {
    /// `item` over the batch's defaults: each of the four members the item
    /// names replaces the default whole (AuthZEN 1.0, Access Evaluations).
    fn over(&self, defaults: &Tuple) -> Tuple {
        Tuple {
            subject: self.subject.clone().or_else(|| defaults.subject.clone()),
            resource: self.resource.clone().or_else(|| defaults.resource.clone()),
            action: self.action.clone().or_else(|| defaults.action.clone()),
            context: self.context.clone().or_else(|| defaults.context.clone()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Options {
    evaluations_semantic: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Batch {
    #[serde(flatten)]
    defaults: Tuple,
    evaluations: Option<Vec<Tuple>>,
    options: Option<Options>,
}

/// How a batch stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

impl Semantic {
    fn parse(text: Option<&str>) -> Result<Self, FieldError> {
        match text {
            None | Some("execute_all") => Ok(Self::ExecuteAll),
            Some("deny_on_first_deny") => Ok(Self::DenyOnFirstDeny),
            Some("permit_on_first_permit") => Ok(Self::PermitOnFirstPermit),
            Some(other) => Err(FieldError::new(
                "options.evaluations_semantic",
                format!(
                    "`{other}` is not one of `execute_all`, `deny_on_first_deny`, `permit_on_first_permit`"
                ),
            )),
        }
    }

    /// Whether a batch stops after a decision.
    fn stops_after(self, decision: bool) -> bool {
        match self {
            Self::ExecuteAll => false,
            Self::DenyOnFirstDeny => !decision,
            Self::PermitOnFirstPermit => decision,
        }
    }
}

/// A string property, if present; another type is the caller's mistake.
fn text<'a>(
    properties: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<&'a str>, FieldError> {
    match properties.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FieldError::new(format!("{path}.{key}"), "must be a string")),
    }
}

/// A whole-number property, if present.
fn number(
    properties: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<i64>, FieldError> {
    match properties.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| FieldError::new(format!("{path}.{key}"), "must be a whole number")),
        Some(_) => Err(FieldError::new(format!("{path}.{key}"), "must be a number")),
    }
}

/// The pieces of one evaluation, checked for what AuthZEN requires and
/// read into a Decide.
fn admit(tuple: &Tuple, engine: &Engine) -> Result<crate::decision::DecideInput, FieldError> {
    let missing = |field: &str| FieldError::new(field, "is required (AuthZEN 1.0)");
    let subject = tuple.subject.as_ref().ok_or_else(|| missing("subject"))?;
    subject
        .kind
        .as_deref()
        .ok_or_else(|| missing("subject.type"))?;
    let user_id = subject.id.as_deref().ok_or_else(|| missing("subject.id"))?;
    let resource = tuple.resource.as_ref().ok_or_else(|| missing("resource"))?;
    resource
        .kind
        .as_deref()
        .ok_or_else(|| missing("resource.type"))?;
    resource
        .id
        .as_deref()
        .ok_or_else(|| missing("resource.id"))?;
    let action = tuple.action.as_ref().ok_or_else(|| missing("action"))?;
    let journey = action
        .name
        .as_deref()
        .ok_or_else(|| missing("action.name"))?;

    let empty = Map::new();
    let props = subject.properties.as_ref().unwrap_or(&empty);
    const P: &str = "subject.properties";
    let aal = match (number(props, P, "aal")?, text(props, P, "acr")?) {
        (Some(aal), _) => u32::try_from(aal).map_err(|_| {
            FieldError::new(format!("{P}.aal"), format!("{aal} is not an assurance level (1..3)"))
        })?,
        (None, Some(acr)) => engine
            .acr()
            .level_of(acr)
            .map(|l| l.number())
            .ok_or_else(|| {
                let shown: String = acr.chars().take(60).collect();
                FieldError::new(
                    format!("{P}.acr"),
                    format!("`{shown}` is not an acr value this deployment knows (`acr.aal1..3`, `acr.aliases`)"),
                )
            })?,
        (None, None) => 0,
    };
    let amr: Vec<String> = match props.get("amr") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| FieldError::new(format!("{P}.amr[{i}]"), "must be a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(FieldError::new(
                format!("{P}.amr"),
                "must be an array of strings",
            ));
        }
    };
    let auth_time = number(props, P, "auth_time")?.unwrap_or(0);
    let device = text(props, P, "device_id")?.map(|id| DeviceAsk { id, user_agent: "" });
    let device = match (device, text(props, P, "user_agent")?) {
        (Some(d), Some(ua)) => Some(DeviceAsk {
            user_agent: ua,
            ..d
        }),
        (d, _) => d,
    };

    // Journey attributes: the resource's and the action's properties and
    // the context's members, each named once.
    let mut attributes: Vec<(&str, &Value)> = Vec::new();
    let sources = [
        ("resource.properties", resource.properties.as_ref()),
        ("action.properties", action.properties.as_ref()),
        ("context", tuple.context.as_ref()),
    ];
    for (path, fields) in sources {
        for (key, value) in fields.into_iter().flatten() {
            if path == "context" && RESERVED_CONTEXT.contains(&key.as_str()) {
                continue;
            }
            if attributes.iter().any(|(k, _)| *k == key.as_str()) {
                return Err(FieldError::new(
                    format!("{path}.{key}"),
                    "names a journey attribute already given; send each once",
                ));
            }
            attributes.push((key.as_str(), value));
        }
    }
    admission::decide(&DecideAsk {
        journey,
        subject: Some(SubjectAsk {
            user_id,
            tenant: text(props, P, "tenant")?.unwrap_or_default(),
        }),
        authn: Some(AuthnAsk {
            aal,
            amr: &amr,
            auth_time,
        }),
        device,
        ip: text(props, P, "ip")?,
        attributes: Some(&attributes),
        request_id: "",
    })
    .map_err(|e| rename_field(e, P))
}

/// Admission names fields as the gRPC message does; say where they sit in
/// an AuthZEN request instead.
fn rename_field(err: FieldError, props: &str) -> FieldError {
    let field = match err.field.as_str() {
        "journey" => "action.name".to_owned(),
        "subject.user_id" => "subject.id".to_owned(),
        "subject.tenant" => format!("{props}.tenant"),
        "device.id" => format!("{props}.device_id"),
        "device.user_agent" => format!("{props}.user_agent"),
        "network.ip" => format!("{props}.ip"),
        "authn.aal" => format!("{props}.aal"),
        "authn.auth_time" => format!("{props}.auth_time"),
        other if other.starts_with("authn.amr") => {
            other.replacen("authn.amr", &format!("{props}.amr"), 1)
        }
        other => other.replacen(
            "attributes",
            "attributes (resource.properties, action.properties, context)",
            1,
        ),
    };
    FieldError { field, ..err }
}

/// An answer as an AuthZEN decision.
fn decision(answer: &Answer, engine: &Engine) -> Value {
    let d = &answer.decision;
    let reasons: Vec<Value> = d
        .reasons
        .iter()
        .map(|r| json!({"id": r.policy_id, "message": r.message}))
        .collect();
    let messages = d
        .reasons
        .iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut context = Map::new();
    context.insert("decision_id".into(), json!(answer.decision_id.to_string()));
    context.insert("policy_version".into(), json!(d.policy_version));
    let allowed = match d.outcome {
        Outcome::Allow => true,
        Outcome::StepUp(level) => {
            let acr = engine.acr().for_level(level);
            context.extend([
                ("outcome".into(), json!("step_up")),
                ("acr_values".into(), json!(acr)),
                ("required_aal".into(), json!(level.number())),
                ("reasons".into(), json!(reasons)),
                ("reason_user".into(), json!({"401": messages})),
                (
                    "obligations".into(),
                    json!([{
                        "id": format!("step-up-{}", answer.decision_id),
                        "type": "step-up",
                        "properties": {"acr_value": acr},
                    }]),
                ),
            ]);
            false
        }
        Outcome::Deny => {
            context.extend([
                ("outcome".into(), json!("deny")),
                ("reasons".into(), json!(reasons)),
                ("reason_user".into(), json!({"403": messages})),
            ]);
            false
        }
    };
    json!({"decision": allowed, "context": context})
}

/// Refuses a request whose `Content-Type` is not JSON (AuthZEN 1.0 requires
/// `application/json`).
fn json_content(headers: &HeaderMap) -> Result<(), Refused> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(Refused::malformed(
            "must be sent with `Content-Type: application/json` (AuthZEN 1.0)",
        ))
    }
}

/// Reads the body as a JSON object of type `T`.
async fn read<T: for<'de> Deserialize<'de>>(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    rpc: &str,
) -> Result<T, Refused> {
    let engine = &state.engine;
    json_content(headers).map_err(|r| refuse_shape(r, rpc, engine))?;
    let bytes = read_body(body, state.max_request_bytes, rpc, engine).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| refuse_shape(Refused::malformed(format!("is not JSON: {e}")), rpc, engine))?;
    if !value.is_object() {
        return Err(refuse_shape(
            Refused::malformed("must be a JSON object"),
            rpc,
            engine,
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        refuse_shape(
            Refused::malformed(format!("does not have the shape AuthZEN 1.0 gives it: {e}")),
            rpc,
            engine,
        )
    })
}

/// Decides one evaluation; a refusal is the caller's 400 (or the
/// service's 5xx).
async fn evaluate(tuple: &Tuple, engine: &Engine, rpc: &str) -> Result<Value, Refused> {
    let answer = async {
        let input = admit(tuple, engine)?;
        Ok::<_, ServiceError>(engine.decide(&input).await?)
    }
    .await
    .map_err(|e| Refused::from_service(e, rpc, engine))?;
    Ok(decision(&answer, engine))
}

async fn evaluation(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const RPC: &str = "authzen.evaluation";
    let answered = async {
        let tuple: Tuple = read(&state, &headers, body, RPC).await?;
        evaluate(&tuple, &state.engine, RPC).await
    }
    .await;
    let response = match answered {
        Ok(decision) => json_response(StatusCode::OK, &decision),
        Err(refused) => refused.response(),
    };
    echo_request_id(&headers, response)
}

async fn evaluations(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const RPC: &str = "authzen.evaluations";
    let answered = async {
        let batch: Batch = read(&state, &headers, body, RPC).await?;
        let semantic = Semantic::parse(
            batch
                .options
                .as_ref()
                .and_then(|o| o.evaluations_semantic.as_deref()),
        )
        .map_err(|e| Refused::from_service(e.into(), RPC, &state.engine))?;
        let items = batch.evaluations.unwrap_or_default();
        if items.is_empty() {
            // Backwards compatible with a single evaluation.
            return evaluate(&batch.defaults, &state.engine, RPC).await;
        }
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            let tuple = item.over(&batch.defaults);
            let one = match evaluate(&tuple, &state.engine, RPC).await {
                Ok(decision) => decision,
                // One item the caller got wrong is that item's closed
                // decision with the error in its context; the rest stand.
                Err(refused) if refused.kind.is_callers() => json!({
                    "decision": false,
                    "context": {"error": {
                        "status": 400,
                        "code": refused.kind.code(),
                        "message": refused.message,
                    }},
                }),
                Err(refused) => return Err(refused),
            };
            let allowed = one
                .get("decision")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            out.push(one);
            if semantic.stops_after(allowed) {
                break;
            }
        }
        Ok(json!({"evaluations": out}))
    }
    .await;
    let response = match answered {
        Ok(decision) => json_response(StatusCode::OK, &decision),
        Err(refused) => refused.response(),
    };
    echo_request_id(&headers, response)
}

/// The PDP's metadata. Its identifier is `http.authzen_identifier` when
/// set, otherwise the address the caller used.
async fn metadata(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let base = match &state.authzen_identifier {
        Some(id) => id.trim_end_matches('/').to_owned(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            format!("http://{host}")
        }
    };
    let body = json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION_PATH}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS_PATH}"),
        "obligations_supported": OBLIGATIONS_SUPPORTED,
    });
    echo_request_id(&headers, json_response(StatusCode::OK, &body))
}

/// AuthZEN's routes.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route(EVALUATION_PATH, post(evaluation))
        .route(EVALUATIONS_PATH, post(evaluations))
        .route(METADATA_PATH, get(metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_semantics_stop_where_the_spec_says() {
        assert!(!Semantic::ExecuteAll.stops_after(false));
        assert!(Semantic::DenyOnFirstDeny.stops_after(false));
        assert!(!Semantic::DenyOnFirstDeny.stops_after(true));
        assert!(Semantic::PermitOnFirstPermit.stops_after(true));
        assert_eq!(
            Semantic::parse(Some("first_wins")).unwrap_err().field,
            "options.evaluations_semantic"
        );
    }

    #[test]
    fn an_item_replaces_each_default_it_names_whole() {
        let defaults: Tuple = serde_json::from_value(json!({
            "subject": {"type": "user", "id": "alice", "properties": {"aal": 2}},
            "action": {"name": "login"},
            "resource": {"type": "tenant", "id": "t1"},
        }))
        .unwrap();
        let item: Tuple = serde_json::from_value(json!({
            "subject": {"type": "user", "id": "bob"},
        }))
        .unwrap();
        let merged = item.over(&defaults);
        let subject = merged.subject.unwrap();
        assert_eq!(subject.id.as_deref(), Some("bob"));
        assert!(subject.properties.is_none(), "no merging inside a member");
        assert_eq!(merged.action.unwrap().name.as_deref(), Some("login"));
    }
}

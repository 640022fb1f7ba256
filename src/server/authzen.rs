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

use crate::admission::member::{self, string as text, whole_number as number};
use crate::admission::{self, AuthnAsk, DecideAsk, DeviceAsk, SubjectAsk};
use crate::decision::{Aal, FieldError, Outcome};
use crate::engine::{Answer, Engine, EngineError, Refusal};
use crate::fault::FaultKind;
use crate::record::{Call, Door};

use super::guard::Admission;
use super::http::{HttpState, Refused, json_content, json_response, read_body, refuse_shape};
use super::status::ServiceError;
use super::summary::{summary, user_text};

/// Where the endpoints are, relative to the PDP's identifier.
pub const EVALUATION_PATH: &str = "/access/v1/evaluation";
pub const EVALUATIONS_PATH: &str = "/access/v1/evaluations";
pub const METADATA_PATH: &str = "/.well-known/authzen-configuration";
/// The obligation types a STEP_UP carries.
pub const OBLIGATIONS_SUPPORTED: [&str; 1] = ["step-up"];

/// Where the subject's properties are.
const SUBJECT_PROPERTIES: &str = "subject.properties";

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
    /// Read one by one, so an item of the wrong shape is that item's error
    /// and not the whole batch's.
    evaluations: Option<Vec<Value>>,
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

/// The pieces of one evaluation, checked for what AuthZEN requires and
/// read into a Decide.
fn admit(tuple: &Tuple, engine: &Engine) -> Result<crate::decision::DecideInput, FieldError> {
    let missing = |field: &str| FieldError::new(field, "is required and not empty (AuthZEN 1.0)");
    // What AuthZEN requires is a non-empty string.
    let given = |value: Option<&str>, field: &str| {
        value
            .filter(|v| !v.is_empty())
            .map(|_| ())
            .ok_or_else(|| missing(field))
    };
    let subject = tuple.subject.as_ref().ok_or_else(|| missing("subject"))?;
    given(subject.kind.as_deref(), "subject.type")?;
    given(subject.id.as_deref(), "subject.id")?;
    let user_id = subject.id.as_deref().unwrap_or_default();
    let resource = tuple.resource.as_ref().ok_or_else(|| missing("resource"))?;
    given(resource.kind.as_deref(), "resource.type")?;
    given(resource.id.as_deref(), "resource.id")?;
    let action = tuple.action.as_ref().ok_or_else(|| missing("action"))?;
    given(action.name.as_deref(), "action.name")?;
    let journey = action.name.as_deref().unwrap_or_default();

    let empty = Map::new();
    let props = subject.properties.as_ref().unwrap_or(&empty);
    const P: &str = SUBJECT_PROPERTIES;
    let by_number = number(props, P, "aal")?
        .map(|aal| {
            u32::try_from(aal)
                .ok()
                .and_then(Aal::from_number)
                .ok_or_else(|| {
                    FieldError::new(
                        format!("{P}.aal"),
                        format!(
                            "{aal} is not an assurance level (1..3; leave it out when unknown)"
                        ),
                    )
                })
        })
        .transpose()?;
    let by_acr = text(props, P, "acr")?
        .map(|acr| {
            engine.acr().level_of(acr).ok_or_else(|| {
                let shown: String = acr.chars().take(60).collect();
                FieldError::new(
                    format!("{P}.acr"),
                    format!("`{shown}` is not an acr value this deployment knows (`acr.aal1..3`, `acr.aliases`)"),
                )
            })
        })
        .transpose()?;
    let aal = match (by_number, by_acr) {
        (Some(a), Some(b)) if a != b => {
            return Err(FieldError::new(
                format!("{P}.acr"),
                format!(
                    "stands for AAL{} but `{P}.aal` says {}; send one, or two that agree",
                    b.number(),
                    a.number()
                ),
            ));
        }
        (Some(level), _) | (None, Some(level)) => level.number(),
        (None, None) => 0,
    };
    let amr = member::strings(props, P, "amr")?;
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

/// The core's refusals with their fields named where they sit in an
/// AuthZEN request, as admission's are.
fn where_in_authzen(err: EngineError) -> ServiceError {
    match err {
        EngineError::Refused(Refusal::Invalid(e)) => {
            ServiceError::Invalid(rename_field(e, SUBJECT_PROPERTIES))
        }
        EngineError::Refused(Refusal::UnknownJourney { journey, .. }) => {
            EngineError::Refused(Refusal::UnknownJourney {
                field: "action.name",
                journey,
            })
            .into()
        }
        other => other.into(),
    }
}

/// An answer as an AuthZEN decision: `decision` and a `context` holding
/// the decision's summary (see [`super::summary`]), plus `reason_user` and,
/// on a STEP_UP, a `step-up` obligation.
fn decision(answer: &Answer, engine: &Engine) -> Value {
    let mut context = summary(answer, engine.acr());
    let messages = user_text(answer);
    let allowed = match answer.decision.outcome {
        Outcome::Allow => true,
        Outcome::StepUp(level) => {
            let acr = engine.acr().for_level(level);
            let mut properties = json!({"acr_value": acr});
            if let (Some(age), Some(members)) =
                (answer.decision.max_age, properties.as_object_mut())
            {
                members.insert("max_age".into(), json!(age));
            }
            context.extend([
                ("reason_user".into(), json!({"401": messages})),
                (
                    "obligations".into(),
                    json!([{
                        "id": format!("step-up-{}", answer.decision_id),
                        "type": "step-up",
                        "properties": properties,
                    }]),
                ),
            ]);
            false
        }
        Outcome::Deny => {
            context.insert("reason_user".into(), json!({"403": messages}));
            false
        }
    };
    json!({"decision": allowed, "context": context})
}

/// Reads the body as a JSON object of type `T`.
async fn read<T: for<'de> Deserialize<'de>>(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    call: &Call,
) -> Result<T, Refused> {
    let engine = &state.engine;
    json_content(headers).map_err(|r| refuse_shape(r, call, engine))?;
    let bytes = read_body(body, state.max_request_bytes, call, engine).await?;
    crate::admission::json_members_unique(&bytes).map_err(|e| {
        refuse_shape(
            Refused::malformed(format!("is not JSON AuthZEN can read: {e}")),
            call,
            engine,
        )
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        refuse_shape(
            Refused::malformed(format!("is not JSON: {e}")),
            call,
            engine,
        )
    })?;
    if !value.is_object() {
        return Err(refuse_shape(
            Refused::malformed("must be a JSON object"),
            call,
            engine,
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        refuse_shape(
            Refused::malformed(format!("does not have the shape AuthZEN 1.0 gives it: {e}")),
            call,
            engine,
        )
    })
}

/// Decides one evaluation; a refusal is the caller's 400 (or the
/// service's 5xx).
async fn evaluate(tuple: &Tuple, engine: &Engine, call: &Call) -> Result<Value, Refused> {
    let answer = async {
        let input = admit(tuple, engine)?;
        engine.decide(&input, call).await.map_err(where_in_authzen)
    }
    .await
    .map_err(|e| Refused::from_service(e, call, engine))?;
    Ok(decision(&answer, engine))
}

async fn evaluation(
    State(state): State<Arc<HttpState>>,
    admission: Option<axum::extract::Extension<Admission>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = Admission::call(admission.as_deref(), Door::AuthZen, "authzen.evaluation");
    let answered = async {
        let tuple: Tuple = read(&state, &headers, body, &call).await?;
        evaluate(&tuple, &state.engine, &call).await
    }
    .await;
    match answered {
        Ok(decision) => json_response(StatusCode::OK, &decision),
        Err(refused) => refused.response(),
    }
}

async fn evaluations(
    State(state): State<Arc<HttpState>>,
    admission: Option<axum::extract::Extension<Admission>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = Admission::call(admission.as_deref(), Door::AuthZen, "authzen.evaluations");
    let answered = async {
        let batch: Batch = read(&state, &headers, body, &call).await?;
        let semantic = Semantic::parse(
            batch
                .options
                .as_ref()
                .and_then(|o| o.evaluations_semantic.as_deref()),
        )
        .map_err(|e| Refused::from_service(e.into(), &call, &state.engine))?;
        let items = batch.evaluations.unwrap_or_default();
        let max = state.engine.config().limits.max_batch_evaluations;
        if items.len() > max {
            return Err(refuse_shape(
                Refused {
                    kind: FaultKind::InvalidArgument,
                    message: FieldError::new(
                        "evaluations",
                        format!(
                            "holds {} evaluations; at most {max} (`limits.max_batch_evaluations`)",
                            items.len()
                        ),
                    )
                    .to_string(),
                },
                &call,
                &state.engine,
            ));
        }
        if items.is_empty() {
            // Backwards compatible with a single evaluation.
            return evaluate(&batch.defaults, &state.engine, &call).await;
        }
        // Each evaluation counts against the caller's rate: the gate took
        // one request's worth; the rest of the batch takes the others.
        if let Err(limited) = call.caller().take_more(items.len().saturating_sub(1)) {
            return Err(refuse_shape(
                Refused {
                    kind: FaultKind::RateLimited,
                    message: format!("a batch of {} evaluations: {limited}", items.len()),
                },
                &call,
                &state.engine,
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            // A member sent as `null` is a mistake, not "use the default":
            // leaving it out says that.
            let null = ["subject", "resource", "action", "context"]
                .into_iter()
                .find(|name| item.get(name).is_some_and(Value::is_null));
            let parsed = match null {
                Some(name) => Err(format!(
                    "`{name}` is null; leave the member out to use the batch's default"
                )),
                None => serde_json::from_value::<Tuple>(item)
                    .map_err(|e| format!("does not have the shape AuthZEN 1.0 gives it: {e}")),
            };
            let judged = match parsed {
                Ok(item) => evaluate(&item.over(&batch.defaults), &state.engine, &call).await,
                Err(e) => Err(refuse_shape(
                    Refused {
                        kind: FaultKind::MalformedRequest,
                        message: FieldError::new(format!("evaluations[{i}]"), e).to_string(),
                    },
                    &call,
                    &state.engine,
                )),
            };
            let one = match judged {
                Ok(decision) => decision,
                // One item the caller got wrong is that item's closed
                // decision with the error in its context; the rest stand.
                Err(refused) if refused.kind.is_callers() => json!({
                    "decision": false,
                    "context": {"error": {
                        "status": super::status::statuses(refused.kind).1.as_u16(),
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
    match answered {
        Ok(decision) => json_response(StatusCode::OK, &decision),
        Err(refused) => refused.response(),
    }
}

/// The PDP's metadata. Its identifier is `http.authzen_identifier` when
/// set, otherwise the address the caller used: exactly one `Host` that is
/// a plain authority (host and optional port), else 400 (RFC 9112 §3.2).
async fn metadata(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let base = match &state.authzen_identifier {
        Some(id) => id.trim_end_matches('/').to_owned(),
        None => {
            let mut hosts = headers.get_all(header::HOST).iter();
            let host = match (hosts.next(), hosts.next()) {
                (Some(host), None) => host
                    .to_str()
                    .ok()
                    .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
                    .filter(|a| !a.as_str().contains('@')),
                _ => None,
            };
            let Some(host) = host else {
                return Refused::malformed(
                    "needs exactly one `Host` header holding a host and optional port, or `http.authzen_identifier` set",
                )
                .response();
            };
            let scheme = if state.engine.config().tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
    };
    let body = json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION_PATH}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS_PATH}"),
        "obligations_supported": OBLIGATIONS_SUPPORTED,
    });
    json_response(StatusCode::OK, &body)
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

//! `stepgate decide`: ask a running service for a decision, print JSON.

use clap::Args;
use stepgate::server::proto;

use super::{Target, connect, target_parts};

#[derive(Args)]
pub struct DecideArgs {
    #[command(flatten)]
    pub target: Target,
    /// Current assurance level (1..3).
    #[arg(long, default_value_t = 1)]
    pub aal: u32,
    /// How long ago the user authenticated (`10m`, `3d`): sent as
    /// `authn.auth_time`, for freshness rules. Left out: not said.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub auth_age: Option<std::time::Duration>,
    /// Journey attribute as key=value; the value is parsed as JSON when it
    /// can be (`amount=1500`), otherwise taken as a string. Repeatable.
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
}

fn attribute_value(raw: &str) -> prost_types::Value {
    use prost_types::value::Kind;
    fn convert(v: serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(convert).collect(),
            }),
            serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.into_iter().map(|(k, v)| (k, convert(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(v) => convert(v),
        Err(_) => convert(serde_json::Value::String(raw.to_owned())),
    }
}

pub async fn run(args: DecideArgs) -> miette::Result<()> {
    let mut fields = std::collections::BTreeMap::new();
    for pair in &args.attributes {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| miette::miette!("`--attr {pair}`: expected KEY=VALUE"))?;
        fields.insert(key.to_owned(), attribute_value(value));
    }
    let (subject, device, network) = target_parts(&args.target);
    let request = proto::DecideRequest {
        journey: args.target.journey.clone(),
        subject,
        authn: Some(proto::Authn {
            aal: args.aal,
            amr: Vec::new(),
            auth_time: args.auth_age.map_or(0, |age| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                i64::try_from(now.saturating_sub(age).as_secs()).unwrap_or(0)
            }),
        }),
        device,
        network,
        attributes: (!fields.is_empty()).then_some(prost_types::Struct { fields }),
        request_id: String::new(),
    };
    let mut client = connect(&args.target).await?;
    let response = client
        .decide(super::request(&args.target, request)?)
        .await
        .map_err(|s| super::call_error(&args.target, s))?
        .into_inner();
    println!("{}", response_json(&response));
    Ok(())
}

fn response_json(r: &proto::DecideResponse) -> serde_json::Value {
    let outcome = proto::Outcome::try_from(r.outcome)
        .map(|o| o.as_str_name())
        .unwrap_or("UNKNOWN");
    serde_json::json!({
        "outcome": outcome,
        "required_aal": r.required_aal,
        "required_acr": r.required_acr,
        "max_age": r.max_age,
        "reasons": r.reasons.iter().map(|x| serde_json::json!({"policy_id": x.policy_id, "message": x.message})).collect::<Vec<_>>(),
        "risk": r.risk.as_ref().map(|risk| serde_json::json!({
            "score": risk.score,
            "level": risk.level,
            "signals": risk.signals.iter().map(|s| serde_json::json!({"name": s.name, "points": s.points})).collect::<Vec<_>>(),
        })),
        "policy_errors": r.policy_errors.iter().map(|x| serde_json::json!({"policy_id": x.policy_id, "message": x.message})).collect::<Vec<_>>(),
        "decision_id": r.decision_id,
        "policy_version": r.policy_version,
        "degraded": r.degraded,
    })
}

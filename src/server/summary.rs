//! The one JSON summary of a decision that the hand-written JSON doors
//! carry (AuthZEN's `context`, the gateway's 401 and 403 bodies, the
//! identity-provider hook's message context), so each names the same
//! things the same way. `/v1/decide` uses the proto3 JSON mapping instead.

use serde_json::{Map, Value, json};

use crate::config::AcrConfig;
use crate::decision::{Outcome, POLICY_ERROR_MESSAGE};
use crate::engine::Answer;

/// `{"outcome", "decision_id", "policy_version", "required_aal",
/// "acr_values" (STEP_UP only), "max_age" (seconds; a STEP_UP a freshness
/// rule asks for), "reasons": [{"policy_id", "message"}],
/// "degraded", "policy_errors": [{"policy_id", "message"}]}`.
///
/// `required_aal` is 0 unless the outcome is `step_up`; `degraded` is true
/// when a signal source failed and the answer came from a failure mode; a
/// policy error's
/// message is the fixed [`POLICY_ERROR_MESSAGE`], the detail being in the
/// service log.
pub fn summary(answer: &Answer, acr: &AcrConfig) -> Map<String, Value> {
    let d = &answer.decision;
    let mut out = Map::new();
    out.insert("outcome".into(), json!(d.outcome.as_str()));
    out.insert("decision_id".into(), json!(answer.decision_id.to_string()));
    out.insert("policy_version".into(), json!(d.policy_version));
    let level = match d.outcome {
        Outcome::StepUp(level) => Some(level),
        Outcome::Allow | Outcome::Deny => None,
    };
    out.insert(
        "required_aal".into(),
        json!(level.map_or(0, |l| l.number())),
    );
    if let Some(level) = level {
        out.insert("acr_values".into(), json!(acr.for_level(level)));
    }
    if let Some(age) = d.max_age {
        out.insert("max_age".into(), json!(age));
    }
    out.insert(
        "reasons".into(),
        d.reasons
            .iter()
            .map(|r| json!({"policy_id": r.policy_id, "message": r.message}))
            .collect(),
    );
    out.insert("degraded".into(), json!(answer.degraded));
    out.insert(
        "policy_errors".into(),
        d.faults
            .iter()
            .map(|f| json!({"policy_id": f.policy_id, "message": POLICY_ERROR_MESSAGE}))
            .collect(),
    );
    out
}

/// The reasons' messages in one line, `; ` between them: what a user is
/// shown.
pub fn user_text(answer: &Answer) -> String {
    answer
        .decision
        .reasons
        .iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

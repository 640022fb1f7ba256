//! Why a request got its answer: the context the policies saw, the risk
//! score's contributions, and each rung of the ladder (the user as they
//! are, authenticated again now, then each higher level) with the policies
//! that permitted and forbade it.
//!
//! Slower than the ladder (each rung is evaluated twice, permits and forbids
//! apart, so both can be named); for people and the decision log, not the
//! request path.

use std::fmt;

use cedar_policy::{Decision as CedarDecision, Effect, PolicySet};
use serde::Serialize;

use crate::decision::{Aal, Outcome, PolicyFault, Reason, RiskContribution};
use crate::signals::Signals;

use super::ladder::{self, LadderError, LadderRequest};
use super::{ContextParts, PolicySnapshot};

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub journey: String,
    pub tier: &'static str,
    pub policy_version: String,
    pub current_aal: u32,
    /// `context` as the policies see it at the current level.
    pub context: serde_json::Value,
    pub risk_score: u32,
    pub risk_level: &'static str,
    pub risk_contributions: Vec<RiskContribution>,
    /// From the current level up.
    pub rungs: Vec<Rung>,
    /// `allow`, `step_up` or `deny`.
    pub outcome: &'static str,
    pub required_aal: Option<u32>,
    /// On a step-up, the oldest the new authentication may be, in seconds
    /// (RFC 9470 §3 `max_age`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
    pub reasons: Vec<Reason>,
}

/// One rung of the ladder.
#[derive(Debug, Clone, Serialize)]
pub struct Rung {
    pub aal: u32,
    /// An authentication made just now (every rung but the first).
    pub fresh: bool,
    pub permitted: bool,
    /// The permits that held.
    pub permitted_by: Vec<Reason>,
    /// The forbids that fired.
    pub forbidden_by: Vec<Reason>,
    pub errors: Vec<PolicyFault>,
}

/// Explains `request` for a user at `current`. The answer is the ladder's
/// own, so it is the one `Decide` gives.
pub fn explain(
    snapshot: &PolicySnapshot,
    request: &LadderRequest<'_>,
    current: Aal,
    signals: &Signals,
    full_context: &ContextParts,
) -> Result<Explanation, LadderError> {
    let journey = request.journey;
    let forbids = PolicySet::from_policies(
        journey
            .all()
            .policies()
            .filter(|p| p.effect() == Effect::Forbid)
            .cloned(),
    )
    .map_err(|e| LadderError::Request(e.to_string()))?;
    let named = |response: &cedar_policy::Response| -> Vec<Reason> {
        let mut reasons: Vec<Reason> = response
            .diagnostics()
            .reason()
            .map(|id| snapshot.reason(id))
            .collect();
        reasons.sort();
        reasons
    };
    let mut rungs = Vec::new();
    for rung in ladder::rungs(current) {
        let cedar_request = request.on(rung)?;
        let permits = snapshot.is_authorized(&cedar_request, journey.permits());
        let fired = snapshot.is_authorized(&cedar_request, &forbids);
        let permitted_by = if permits.decision() == CedarDecision::Allow {
            named(&permits)
        } else {
            Vec::new()
        };
        let forbidden_by = named(&fired);
        let mut errors: Vec<PolicyFault> = ladder::faults(&permits)
            .chain(ladder::faults(&fired))
            .collect();
        errors.sort();
        rungs.push(Rung {
            aal: rung.aal.number(),
            fresh: rung.fresh,
            permitted: !permitted_by.is_empty() && forbidden_by.is_empty() && errors.is_empty(),
            permitted_by,
            forbidden_by,
            errors,
        });
    }
    let answer = ladder::evaluate(snapshot, request, current)?;
    let context = full_context
        .at(current)?
        .to_json_value()
        .map_err(|e| LadderError::Request(e.to_string()))?;
    let (outcome, required_aal) = match answer.outcome {
        Outcome::Allow => ("allow", None),
        Outcome::StepUp(level) => ("step_up", Some(level.number())),
        Outcome::Deny => ("deny", None),
    };
    Ok(Explanation {
        journey: signals.journey.clone(),
        tier: signals.tier.as_str(),
        policy_version: snapshot.version().to_owned(),
        current_aal: current.number(),
        context,
        risk_score: signals.risk.score,
        risk_level: signals.risk.level.as_str(),
        risk_contributions: signals.risk.contributions.clone(),
        rungs,
        outcome,
        required_aal,
        max_age: answer.max_age,
        reasons: answer.reasons,
    })
}

/// For a terminal: one section each for the context, the risk score, the
/// ladder and the answer.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "journey {} (tier {}), user at AAL{}, policy version {}",
            self.journey, self.tier, self.current_aal, self.policy_version
        )?;
        writeln!(
            f,
            "\ncontext (as policies see it at AAL{})",
            self.current_aal
        )?;
        if let serde_json::Value::Object(fields) = &self.context {
            for (name, value) in fields {
                writeln!(f, "  {name:<11} {value}")?;
            }
        }
        writeln!(f, "\nrisk {} ({})", self.risk_score, self.risk_level)?;
        for c in &self.risk_contributions {
            writeln!(f, "  +{:<3} {}", c.points, c.signal)?;
        }
        writeln!(f, "\nladder")?;
        for rung in &self.rungs {
            let verdict = if rung.permitted {
                "permitted"
            } else {
                "refused"
            };
            let again = if rung.fresh && rung.aal == self.current_aal {
                " again"
            } else {
                ""
            };
            writeln!(f, "  AAL{}{again}  {verdict}", rung.aal)?;
            for r in &rung.permitted_by {
                writeln!(f, "        permit  {}", r.policy_id)?;
            }
            if rung.permitted_by.is_empty() {
                writeln!(f, "        permit  (none holds)")?;
            }
            for r in &rung.forbidden_by {
                writeln!(f, "        forbid  {}: {}", r.policy_id, r.message)?;
            }
            for e in &rung.errors {
                writeln!(f, "        error   {}: {}", e.policy_id, e.message)?;
            }
        }
        let answer = match (self.outcome, self.required_aal, self.max_age) {
            ("step_up", Some(level), Some(age)) => {
                format!("STEP_UP to AAL{level}, authenticated within {age} s")
            }
            ("step_up", Some(level), None) => format!("STEP_UP to AAL{level}"),
            (outcome, _, _) => outcome.to_uppercase(),
        };
        writeln!(f, "\nanswer {answer}")?;
        for r in &self.reasons {
            writeln!(f, "  {}: {}", r.policy_id, r.message)?;
        }
        Ok(())
    }
}

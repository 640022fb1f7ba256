//! The assurance ladder: Cedar's permit/forbid turned into allow, step-up or
//! deny.
//!
//! Evaluate at the user's current level; if not permitted, at each higher
//! level in turn. The first permitted level is the step-up target; none means
//! deny. A level at which any policy failed to evaluate counts as not
//! permitted, so an error can only make the answer stricter.

use std::collections::BTreeSet;

use cedar_policy::{Decision as CedarDecision, EntityUid, Request, Response};

use crate::decision::{Aal, Outcome, PolicyFault, Reason};

use super::PolicySnapshot;
use super::context::{ContextError, ContextParts};

/// Policy id of the reason given when no permit applies at all.
pub const NO_PERMIT_ID: &str = "stepgate.no_permit";
const NO_PERMIT_MESSAGE: &str = "no permit policy applies to this request";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LadderError {
    /// The request does not fit the schema; with stepgate's own signals
    /// checked at load, that leaves the caller's attributes.
    #[error("{0}")]
    Attributes(String),
    #[error(transparent)]
    Context(#[from] ContextError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LadderResult {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub faults: Vec<PolicyFault>,
}

struct Level {
    permitted: bool,
    determining: Vec<Reason>,
    faults: Vec<PolicyFault>,
}

/// The Cedar request for one journey, principal and resource.
pub struct LadderRequest<'a> {
    pub principal: &'a EntityUid,
    pub action: &'a EntityUid,
    pub resource: &'a EntityUid,
    pub context: &'a ContextParts,
}

pub fn evaluate(
    snapshot: &PolicySnapshot,
    request: &LadderRequest<'_>,
    current: Aal,
) -> Result<LadderResult, LadderError> {
    let mut faults = BTreeSet::new();
    let mut first: Option<Level> = None;
    let mut last: Option<Level> = None;
    for aal in current.and_above() {
        // Only the first rung is checked against the schema: the higher ones
        // differ from it in `authn.aal` alone, a Long either way, and the
        // check costs more than the evaluation.
        let level = evaluate_level(snapshot, request, aal, aal == current)?;
        faults.extend(level.faults.iter().cloned());
        if level.permitted {
            let (outcome, reasons) = match first {
                // Permitted at the current level: the permits explain it.
                None => (Outcome::Allow, level.determining),
                // The forbids that fired at the current level explain why a
                // step-up is needed.
                Some(at_current) => (Outcome::StepUp(aal), at_current.determining),
            };
            return Ok(LadderResult {
                outcome,
                reasons: with_default(reasons, &faults),
                faults: faults.into_iter().collect(),
            });
        }
        if first.is_none() {
            first = Some(level);
        } else {
            last = Some(level);
        }
    }
    // Nothing permits it: the forbids still firing at the top level explain.
    let top = last.or(first).map(|l| l.determining).unwrap_or_default();
    Ok(LadderResult {
        outcome: Outcome::Deny,
        reasons: with_default(top, &faults),
        faults: faults.into_iter().collect(),
    })
}

/// A denial with no forbid and no fault behind it means no permit applied;
/// say so rather than answer with no reason.
fn with_default(reasons: Vec<Reason>, faults: &BTreeSet<PolicyFault>) -> Vec<Reason> {
    if reasons.is_empty() && faults.is_empty() {
        vec![Reason {
            policy_id: NO_PERMIT_ID.to_owned(),
            message: NO_PERMIT_MESSAGE.to_owned(),
        }]
    } else {
        reasons
    }
}

fn evaluate_level(
    snapshot: &PolicySnapshot,
    request: &LadderRequest<'_>,
    aal: Aal,
    validate: bool,
) -> Result<Level, LadderError> {
    let context = request.context.at(aal)?;
    let cedar_request = Request::new(
        request.principal.clone(),
        request.action.clone(),
        request.resource.clone(),
        context,
        validate.then(|| snapshot.schema()),
    )
    .map_err(|e| LadderError::Attributes(e.to_string()))?;
    let response = snapshot.is_authorized(&cedar_request);
    Ok(level_from(snapshot, &response))
}

fn level_from(snapshot: &PolicySnapshot, response: &Response) -> Level {
    let faults: Vec<PolicyFault> = response
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(err) => PolicyFault {
                policy_id: err.policy_id().to_string(),
                message: err.inner().to_string(),
            },
        })
        .collect();
    let mut determining: Vec<Reason> = response
        .diagnostics()
        .reason()
        .map(|id| snapshot.reason(id))
        .collect();
    determining.sort();
    let permitted = response.decision() == CedarDecision::Allow && faults.is_empty();
    if !permitted && response.decision() == CedarDecision::Allow {
        // Refused only because a policy failed: the faults explain it, the
        // permits do not.
        determining.clear();
    }
    Level {
        permitted,
        // Cedar lists permits as reasons for Allow, forbids for Deny.
        determining,
        faults,
    }
}

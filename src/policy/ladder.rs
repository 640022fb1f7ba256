//! The assurance ladder: Cedar's permit/forbid turned into allow, step-up or
//! deny.
//!
//! Evaluate at the user's current level as they are; if not permitted, as
//! if they had authenticated again at that level just now, then at each
//! higher level (a step-up is an authentication made now, so every rung
//! above the first has `seconds_since_auth` 0). The first permitted rung is
//! the step-up target (the user's own level, for a repeated
//! authentication); none means deny. A rung at which any policy failed to
//! evaluate counts as not permitted, so an error can only make the answer
//! stricter.

use std::collections::BTreeSet;

use cedar_policy::{Decision as CedarDecision, EntityUid, PolicyId, PolicySet, Request, Response};

use crate::decision::{Aal, Outcome, PolicyFault, Reason};

use super::context::{ContextError, ContextParts};
use super::{JourneyPolicies, PolicySnapshot};

/// Policy id of the reason given when no permit applies at all.
pub const NO_PERMIT_ID: &str = "stepgate.no_permit";
const NO_PERMIT_MESSAGE: &str = "no permit policy applies to this request";
/// Policy id of the reason given when the answer is stricter only because a
/// policy failed to evaluate (the failures are listed in `policy_errors`).
pub const POLICY_ERROR_ID: &str = "stepgate.policy_error";
const POLICY_ERROR_MESSAGE: &str = "a policy failed to evaluate, so the levels where it failed were not permitted; see policy_errors and the service log";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LadderError {
    /// Cedar refused the request itself (not expected: its parts are
    /// stepgate's own, checked at load).
    #[error("cannot build the Cedar request: {0}")]
    Request(String),
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The context could not be built from the caller's attributes: the
    /// caller's mistake, where [`Self::Context`] is stepgate's own.
    #[error(transparent)]
    Attributes(ContextError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LadderResult {
    pub outcome: Outcome,
    pub reasons: Vec<Reason>,
    pub faults: Vec<PolicyFault>,
    /// On a step-up, the oldest the new authentication may be, in seconds
    /// (RFC 9470 §3 `max_age`): the smallest `@max_age` of the freshness
    /// rules behind it, or 0 for a repeated authentication that no
    /// `@max_age` names. `None` otherwise.
    pub max_age: Option<u32>,
}

/// One rung of the ladder: a level, and whether the authentication is one
/// made just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    pub aal: Aal,
    pub fresh: bool,
}

/// The rungs from `current` up: the user as they are, then authenticated
/// again at `current`, then at each higher level.
pub fn rungs(current: Aal) -> impl Iterator<Item = Rung> {
    std::iter::once(Rung {
        aal: current,
        fresh: false,
    })
    .chain(current.and_above().map(|aal| Rung { aal, fresh: true }))
}

struct Level {
    permitted: bool,
    determining: Vec<Reason>,
    faults: Vec<PolicyFault>,
}

/// The Cedar request for one journey, principal and resource.
pub struct LadderRequest<'a> {
    pub principal: &'a EntityUid,
    pub journey: &'a JourneyPolicies,
    pub resource: &'a EntityUid,
    pub context: &'a ContextParts,
}

impl LadderRequest<'_> {
    /// The Cedar request as if the user were at `aal`, authenticated as
    /// the request says.
    pub fn at(&self, aal: Aal) -> Result<Request, LadderError> {
        self.on(Rung { aal, fresh: false })
    }

    /// The Cedar request at one rung.
    pub fn on(&self, rung: Rung) -> Result<Request, LadderError> {
        Request::new(
            self.principal.clone(),
            self.journey.action().clone(),
            self.resource.clone(),
            self.context.at_rung(rung.aal, rung.fresh)?,
            // Not validated here: stepgate's own signals were checked
            // against the schema at load, for every journey, and the
            // caller's attributes before the store was read.
            None,
        )
        .map_err(|e| LadderError::Request(e.to_string()))
    }
}

/// Climbs the ladder from `current`. One evaluation answers every rung when
/// the journey's policies allow it (see [`super::analysis`]); otherwise each
/// rung is evaluated in turn.
pub fn evaluate(
    snapshot: &PolicySnapshot,
    request: &LadderRequest<'_>,
    current: Aal,
) -> Result<LadderResult, LadderError> {
    if request.journey.one_pass() {
        one_pass(snapshot, request, current)
    } else {
        climb(snapshot, request, current, request.journey.all())
    }
}

/// The ladder by definition: every loaded policy, evaluated at each rung in
/// turn. Slower; what explanations show and what tests hold the fast path
/// to, given a context built in full.
pub fn reference(
    snapshot: &PolicySnapshot,
    request: &LadderRequest<'_>,
    current: Aal,
) -> Result<LadderResult, LadderError> {
    climb(snapshot, request, current, snapshot.policies())
}

/// The ladder from one evaluation at the current level.
///
/// Every forbid here either ignores the level or fires at a level exactly
/// when it fired at the current one and the level is below its release, and
/// permits ignore the level. So a level is permitted when it releases every
/// forbid that fired and some permit held; faults, which come from the
/// level-independent part of a policy, stay at every level.
fn one_pass(
    snapshot: &PolicySnapshot,
    request: &LadderRequest<'_>,
    current: Aal,
) -> Result<LadderResult, LadderError> {
    let cedar_request = request.at(current)?;
    let response = snapshot.is_authorized(&cedar_request, request.journey.all());
    let faults: BTreeSet<PolicyFault> = faults(&response).collect();
    let allowed = response.decision() == CedarDecision::Allow;
    if allowed && faults.is_empty() {
        return Ok(LadderResult {
            outcome: Outcome::Allow,
            reasons: reasons(snapshot, response.diagnostics().reason()),
            faults: Vec::new(),
            max_age: None,
        });
    }
    // Cedar names every forbid that fired when it denies.
    let fired: Vec<&PolicyId> = if allowed {
        Vec::new()
    } else {
        response.diagnostics().reason().collect()
    };
    let still_firing_at_top = fired.iter().copied().filter(|id| {
        snapshot
            .released_at(id)
            .is_none_or(|level| level > i64::from(Aal::Three.number()))
    });
    let top = reasons(snapshot, still_firing_at_top);
    let deny = |reasons: Vec<Reason>, faults: BTreeSet<PolicyFault>| LadderResult {
        outcome: Outcome::Deny,
        reasons: with_default(reasons, &faults),
        faults: faults.into_iter().collect(),
        max_age: None,
    };
    if !faults.is_empty() || fired.is_empty() {
        // A fault stays at every level; no forbid firing on a denial means
        // no permit held, at any level.
        return Ok(deny(top, faults));
    }
    let needed = fired
        .iter()
        .map(|id| snapshot.released_at(id))
        .try_fold(i64::from(current.number()), |level, release| {
            release.map(|r| level.max(r))
        })
        .and_then(|level| u32::try_from(level).ok())
        .and_then(Aal::from_number)
        // The user's own level again: only a freshness rule asks that.
        .filter(|level| *level > current || max_age(snapshot, &fired).is_some());
    let permitted = needed.is_some_and(|_| {
        snapshot
            .is_authorized(&cedar_request, request.journey.permits())
            .decision()
            == CedarDecision::Allow
    });
    match needed {
        Some(level) if permitted => Ok(LadderResult {
            outcome: Outcome::StepUp(level),
            max_age: step_up_age(snapshot, &fired, level == current),
            reasons: reasons(snapshot, fired.into_iter()),
            faults: Vec::new(),
        }),
        _ => Ok(deny(top, faults)),
    }
}

/// The ladder one rung at a time over `policies`.
fn climb(
    snapshot: &PolicySnapshot,
    request: &LadderRequest<'_>,
    current: Aal,
    policies: &PolicySet,
) -> Result<LadderResult, LadderError> {
    let mut faults = BTreeSet::new();
    let mut first: Option<Level> = None;
    let mut last: Option<Level> = None;
    for rung in rungs(current) {
        let response = snapshot.is_authorized(&request.on(rung)?, policies);
        let level = level_from(snapshot, &response);
        faults.extend(level.faults.iter().cloned());
        if level.permitted {
            let (outcome, reasons, max_age) = match first {
                // Permitted as the user is: the permits explain it.
                None => (Outcome::Allow, level.determining, None),
                // The forbids that fired as the user is explain why a
                // step-up is needed.
                Some(as_is) => {
                    let ids: Vec<PolicyId> = as_is
                        .determining
                        .iter()
                        .map(|r| PolicyId::new(&r.policy_id))
                        .collect();
                    let fired: Vec<&PolicyId> = ids.iter().collect();
                    let again = rung.aal == current;
                    (
                        Outcome::StepUp(rung.aal),
                        as_is.determining,
                        step_up_age(snapshot, &fired, again),
                    )
                }
            };
            return Ok(LadderResult {
                outcome,
                reasons: with_default(reasons, &faults),
                faults: faults.into_iter().collect(),
                max_age,
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
        max_age: None,
    })
}

/// The smallest `@max_age` among `fired`.
fn max_age(snapshot: &PolicySnapshot, fired: &[&PolicyId]) -> Option<u32> {
    fired.iter().filter_map(|id| snapshot.max_age(id)).min()
}

/// A step-up's `max_age`: the freshness rules' among the forbids that
/// asked for it, or 0 when it repeats the user's own level and no rule
/// names an age (the rung that released it was an authentication made
/// just now).
fn step_up_age(snapshot: &PolicySnapshot, fired: &[&PolicyId], again: bool) -> Option<u32> {
    max_age(snapshot, fired).or(again.then_some(0))
}

/// An answer always has a reason. With no forbid behind it, a failed
/// policy explains it when there is one; otherwise no permit applied.
fn with_default(reasons: Vec<Reason>, faults: &BTreeSet<PolicyFault>) -> Vec<Reason> {
    if !reasons.is_empty() {
        return reasons;
    }
    let (policy_id, message) = if faults.is_empty() {
        (NO_PERMIT_ID, NO_PERMIT_MESSAGE)
    } else {
        (POLICY_ERROR_ID, POLICY_ERROR_MESSAGE)
    };
    vec![Reason {
        policy_id: policy_id.to_owned(),
        message: message.to_owned(),
    }]
}

/// The reasons for policy ids, in a stable order.
fn reasons<'a>(snapshot: &PolicySnapshot, ids: impl Iterator<Item = &'a PolicyId>) -> Vec<Reason> {
    let mut reasons: Vec<Reason> = ids.map(|id| snapshot.reason(id)).collect();
    reasons.sort();
    reasons
}

pub(crate) fn faults(response: &Response) -> impl Iterator<Item = PolicyFault> + '_ {
    response.diagnostics().errors().map(|e| match e {
        cedar_policy::AuthorizationError::PolicyEvaluationError(err) => PolicyFault {
            policy_id: err.policy_id().to_string(),
            message: err.inner().to_string(),
        },
    })
}

fn level_from(snapshot: &PolicySnapshot, response: &Response) -> Level {
    let faults: Vec<PolicyFault> = faults(response).collect();
    let mut determining = reasons(snapshot, response.diagnostics().reason());
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

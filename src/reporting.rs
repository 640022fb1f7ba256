//! The reporting protocol's one rule: a sign-in teaches stepgate (a device,
//! a country, a position; the user's failures reset) only when it completed
//! at the assurance stepgate asked for.
//!
//! Pure: the engine looks up the decision a report names and applies the
//! judgement; this module only decides what the report means.

use crate::decision::{Aal, OutcomeEvent, ReportEffect, ReportJudgement};
use crate::store::IssuedDecision;

/// The level a report says the user reached, when the caller did not send
/// `reached_aal`:
///
/// | event | against a decision | without one |
/// | --- | --- | --- |
/// | `AUTH_SUCCEEDED` | the level the decision was asked at | AAL1 |
/// | `STEP_UP_SUCCEEDED` | the level the decision asked for | AAL2 |
/// | a failure | the level the decision was asked at | AAL1 |
///
/// So a password accepted after a STEP_UP answer is a first factor, not a
/// completed sign-in, and a step-up with no decision behind it is taken as
/// the lowest level a step-up can reach.
pub fn implied_level(event: OutcomeEvent, decision: Option<&IssuedDecision>) -> Aal {
    match (event, decision) {
        (OutcomeEvent::StepUpSucceeded, Some(d)) => d.demand.unwrap_or(d.from),
        (OutcomeEvent::StepUpSucceeded, None) => Aal::Two,
        (_, Some(d)) => d.from,
        (_, None) => Aal::One,
    }
}

/// Judges one report.
///
/// - A failure is always counted, whatever it names.
/// - A success against a decision completes the sign-in when the level
///   reached is at least the level the decision asked for (the user's level
///   for an ALLOW, the step-up level for a STEP_UP); below it, it is a
///   partial success that teaches nothing. A success against a DENY
///   teaches nothing.
/// - A success without a decision (none named, or one stepgate no longer
///   remembers) completes only at `undecided_min` or above.
pub fn judge(
    event: OutcomeEvent,
    reached: Option<Aal>,
    decision: Option<&IssuedDecision>,
    undecided_min: Aal,
) -> ReportJudgement {
    let reached = reached.unwrap_or_else(|| implied_level(event, decision));
    let required = match decision {
        Some(d) => d.demand,
        None => Some(undecided_min),
    };
    let effect = if !event.succeeded() {
        ReportEffect::FailureCounted
    } else {
        match required {
            None => ReportEffect::IgnoredDenied,
            Some(level) if reached >= level => ReportEffect::Completed,
            Some(_) => ReportEffect::Partial,
        }
    };
    ReportJudgement {
        effect,
        required,
        reached,
        decision_found: decision.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pseudonym::Pseudonymizer;

    fn issued(from: Aal, demand: Option<Aal>) -> IssuedDecision {
        let p = Pseudonymizer::new([3; 32]);
        IssuedDecision {
            user: p.user("default", "dave"),
            device: Some(p.device("atk-dev")),
            journey: crate::store::JourneyKey::of("login"),
            from,
            demand,
        }
    }

    use OutcomeEvent::{AuthFailed, AuthSucceeded, StepUpFailed, StepUpSucceeded};
    use ReportEffect::{Completed, FailureCounted, IgnoredDenied, Partial};

    #[test]
    fn a_password_after_a_step_up_answer_is_only_a_first_factor() {
        let d = issued(Aal::One, Some(Aal::Two));
        let j = judge(AuthSucceeded, None, Some(&d), Aal::Two);
        assert_eq!(
            (j.effect, j.required, j.reached),
            (Partial, Some(Aal::Two), Aal::One)
        );
        assert!(j.decision_found);
        assert_eq!(
            judge(StepUpFailed, None, Some(&d), Aal::Two).effect,
            FailureCounted
        );
        assert_eq!(
            judge(StepUpSucceeded, None, Some(&d), Aal::Two).effect,
            Completed
        );
    }

    #[test]
    fn an_explicit_level_is_judged_against_the_decision() {
        let d = issued(Aal::Two, Some(Aal::Three));
        assert_eq!(
            judge(StepUpSucceeded, Some(Aal::Two), Some(&d), Aal::Two).effect,
            Partial
        );
        assert_eq!(
            judge(AuthSucceeded, Some(Aal::Three), Some(&d), Aal::Two).effect,
            Completed
        );
    }

    #[test]
    fn an_allowed_sign_in_completes_at_the_level_it_was_asked_at() {
        let d = issued(Aal::One, Some(Aal::One));
        assert_eq!(
            judge(AuthSucceeded, None, Some(&d), Aal::Two).effect,
            Completed
        );
    }

    #[test]
    fn a_success_against_a_denial_teaches_nothing() {
        let d = issued(Aal::One, None);
        let j = judge(StepUpSucceeded, Some(Aal::Three), Some(&d), Aal::Two);
        assert_eq!((j.effect, j.required), (IgnoredDenied, None));
        assert_eq!(
            judge(AuthFailed, None, Some(&d), Aal::Two).effect,
            FailureCounted
        );
    }

    #[test]
    fn without_a_decision_only_the_configured_level_completes() {
        let j = judge(AuthSucceeded, None, None, Aal::Two);
        assert_eq!(
            (j.effect, j.reached, j.decision_found),
            (Partial, Aal::One, false)
        );
        assert_eq!(
            judge(StepUpSucceeded, None, None, Aal::Two).effect,
            Completed
        );
        assert_eq!(
            judge(StepUpSucceeded, None, None, Aal::Three).effect,
            Partial
        );
        assert_eq!(
            judge(AuthSucceeded, Some(Aal::Two), None, Aal::Two).effect,
            Completed
        );
        assert_eq!(judge(AuthSucceeded, None, None, Aal::One).effect, Completed);
        assert_eq!(
            judge(AuthFailed, Some(Aal::Three), None, Aal::Two).effect,
            FailureCounted
        );
    }
}

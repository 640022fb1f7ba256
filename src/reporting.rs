//! The reporting protocol's one rule: a sign-in teaches stepgate (a device,
//! a country, a position; the user's failures reset) only when it completed
//! at the assurance stepgate asked for.
//!
//! Pure: the engine looks up the decision a report names and applies the
//! judgement; this module only decides what the report means.

use crate::decision::{Aal, OutcomeEvent, ReportEffect, ReportJudgement};
use crate::store::IssuedDecision;

/// What a report is judged against.
#[derive(Debug, Clone, Copy)]
pub enum Against<'a> {
    /// The decision it names, still remembered.
    Decision(&'a IssuedDecision),
    /// It names a decision stepgate no longer remembers (expired, evicted,
    /// or made elsewhere): what was asked for is unknown.
    Forgotten,
    /// It names no decision.
    Nothing,
}

impl<'a> Against<'a> {
    /// For metric labels: `found`, `forgotten` or `none`.
    pub fn label(self) -> &'static str {
        match self {
            Against::Decision(_) => "found",
            Against::Forgotten => "forgotten",
            Against::Nothing => "none",
        }
    }

    fn decision(self) -> Option<&'a IssuedDecision> {
        match self {
            Against::Decision(d) => Some(d),
            Against::Forgotten | Against::Nothing => None,
        }
    }
}

/// The level a success says the user reached, when the caller did not send
/// `reached_aal`:
///
/// | event | against a decision | naming a forgotten one | naming none |
/// | --- | --- | --- | --- |
/// | `AUTH_SUCCEEDED` | the level the decision was asked at (AAL1 after a STEP_UP to authenticate again) | AAL1 | AAL1 |
/// | `STEP_UP_SUCCEEDED` | the level the decision asked for | AAL1 | AAL2 |
///
/// So a password accepted after a STEP_UP answer is a first factor, not a
/// completed sign-in; a step-up with no decision behind it is taken as the
/// lowest level a step-up reaches; and a step-up whose decision is
/// forgotten, which may have asked for more than that, proves nothing
/// unless the caller says what was reached.
pub fn implied_level(event: OutcomeEvent, against: Against<'_>) -> Aal {
    match (event, against) {
        (OutcomeEvent::StepUpSucceeded, Against::Decision(d)) => d.demand.unwrap_or(d.from),
        (OutcomeEvent::StepUpSucceeded, Against::Nothing) => Aal::Two,
        // Asked to authenticate again: a first factor is all it says.
        (_, Against::Decision(d)) if d.reauth => Aal::One,
        (_, Against::Decision(d)) => d.from,
        (_, Against::Forgotten | Against::Nothing) => Aal::One,
    }
}

/// Judges one report.
///
/// - Feedback (`COMPROMISED`, `CONFIRMED_SAFE`) is judged by what it is,
///   never against a level: it un-trusts, or lifts the mark.
/// - A failure is always counted, whatever it names; a `reached_aal` sent
///   with it is ignored.
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
    against: Against<'_>,
    undecided_min: Aal,
) -> ReportJudgement {
    if event.is_feedback() {
        return ReportJudgement {
            effect: if event == OutcomeEvent::Compromised {
                ReportEffect::Untrusted
            } else {
                ReportEffect::Cleared
            },
            required: None,
            reached: Aal::One,
            decision_found: against.decision().is_some(),
        };
    }
    let implied = implied_level(event, against);
    let reached = if event.succeeded() {
        reached.unwrap_or(implied)
    } else {
        implied
    };
    let required = match against {
        Against::Decision(d) => d.demand,
        Against::Forgotten | Against::Nothing => Some(undecided_min),
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
        decision_found: against.decision().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pseudonym::Pseudonymizer;

    fn issued(from: Aal, demand: Option<Aal>) -> IssuedDecision {
        let p = Pseudonymizer::new([3; 32]);
        IssuedDecision {
            user: p.user_key("default", "dave"),
            device: Some(p.device("atk-dev")),
            journey: crate::store::JourneyKey::of("login"),
            ip: "203.0.113.66".parse().expect("ip"),
            from,
            demand,
            reauth: false,
            compromise: None,
        }
    }

    use Against::{Forgotten, Nothing};
    use OutcomeEvent::{AuthFailed, AuthSucceeded, StepUpFailed, StepUpSucceeded};
    use ReportEffect::{Completed, FailureCounted, IgnoredDenied, Partial};

    #[test]
    fn a_password_after_a_step_up_answer_is_only_a_first_factor() {
        let d = issued(Aal::One, Some(Aal::Two));
        let j = judge(AuthSucceeded, None, Against::Decision(&d), Aal::Two);
        assert_eq!(
            (j.effect, j.required, j.reached),
            (Partial, Some(Aal::Two), Aal::One)
        );
        assert!(j.decision_found);
        assert_eq!(
            judge(StepUpFailed, None, Against::Decision(&d), Aal::Two).effect,
            FailureCounted
        );
        assert_eq!(
            judge(StepUpSucceeded, None, Against::Decision(&d), Aal::Two).effect,
            Completed
        );
    }

    #[test]
    fn an_explicit_level_is_judged_against_the_decision() {
        let d = issued(Aal::Two, Some(Aal::Three));
        assert_eq!(
            judge(
                StepUpSucceeded,
                Some(Aal::Two),
                Against::Decision(&d),
                Aal::Two
            )
            .effect,
            Partial
        );
        assert_eq!(
            judge(
                AuthSucceeded,
                Some(Aal::Three),
                Against::Decision(&d),
                Aal::Two
            )
            .effect,
            Completed
        );
    }

    #[test]
    fn asked_to_authenticate_again_a_first_factor_completes_only_aal1() {
        let again = |level: Aal| IssuedDecision {
            reauth: true,
            compromise: None,
            ..issued(level, Some(level))
        };
        let at_two = again(Aal::Two);
        let j = judge(AuthSucceeded, None, Against::Decision(&at_two), Aal::Two);
        assert_eq!((j.effect, j.reached), (Partial, Aal::One));
        for done in [
            judge(StepUpSucceeded, None, Against::Decision(&at_two), Aal::Two),
            judge(
                AuthSucceeded,
                Some(Aal::Two),
                Against::Decision(&at_two),
                Aal::Two,
            ),
        ] {
            assert_eq!(done.effect, Completed);
        }
        let at_one = again(Aal::One);
        assert_eq!(
            judge(AuthSucceeded, None, Against::Decision(&at_one), Aal::Two).effect,
            Completed
        );
    }

    #[test]
    fn an_allowed_sign_in_completes_at_the_level_it_was_asked_at() {
        let d = issued(Aal::One, Some(Aal::One));
        assert_eq!(
            judge(AuthSucceeded, None, Against::Decision(&d), Aal::Two).effect,
            Completed
        );
    }

    #[test]
    fn a_success_against_a_denial_teaches_nothing() {
        let d = issued(Aal::One, None);
        let j = judge(
            StepUpSucceeded,
            Some(Aal::Three),
            Against::Decision(&d),
            Aal::Two,
        );
        assert_eq!((j.effect, j.required), (IgnoredDenied, None));
        assert_eq!(
            judge(AuthFailed, None, Against::Decision(&d), Aal::Two).effect,
            FailureCounted
        );
    }

    #[test]
    fn without_a_decision_only_the_configured_level_completes() {
        let j = judge(AuthSucceeded, None, Nothing, Aal::Two);
        assert_eq!(
            (j.effect, j.reached, j.decision_found),
            (Partial, Aal::One, false)
        );
        assert_eq!(
            judge(StepUpSucceeded, None, Nothing, Aal::Two).effect,
            Completed
        );
        assert_eq!(
            judge(StepUpSucceeded, None, Nothing, Aal::Three).effect,
            Partial
        );
        assert_eq!(
            judge(AuthSucceeded, Some(Aal::Two), Nothing, Aal::Two).effect,
            Completed
        );
        assert_eq!(
            judge(AuthSucceeded, None, Nothing, Aal::One).effect,
            Completed
        );
        assert_eq!(
            judge(AuthFailed, Some(Aal::Three), Nothing, Aal::Two).effect,
            FailureCounted
        );
    }

    #[test]
    fn a_forgotten_decision_needs_the_level_reached_said_out_loud() {
        let j = judge(StepUpSucceeded, None, Forgotten, Aal::Two);
        assert_eq!(
            (j.effect, j.reached, j.decision_found),
            (Partial, Aal::One, false)
        );
        assert_eq!(
            judge(StepUpSucceeded, Some(Aal::Two), Forgotten, Aal::Two).effect,
            Completed
        );
        assert_eq!(
            judge(StepUpFailed, None, Forgotten, Aal::Two).effect,
            FailureCounted
        );
    }

    #[test]
    fn a_level_sent_with_a_failure_is_ignored() {
        let d = issued(Aal::One, Some(Aal::Two));
        let j = judge(
            StepUpFailed,
            Some(Aal::Three),
            Against::Decision(&d),
            Aal::Two,
        );
        assert_eq!((j.effect, j.reached), (FailureCounted, Aal::One));
    }
}

//! The decision log: one structured event per decision and per reported
//! outcome, under the `stepgate::decision` tracing target.
//!
//! Personal data never appears: users are keyed-hash pseudonyms, IPs are
//! truncated to their network (/24 for IPv4, /48 for IPv6), device ids are
//! not logged at all.

use std::net::IpAddr;

use crate::decision::{Decision, DecisionId, Outcome, OutcomeEvent, ReportJudgement};
use crate::pseudonym::HashedId;

pub const TARGET: &str = "stepgate::decision";

/// Truncates an address to the network it came from.
pub fn truncate_ip(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let (a, b, c) = (
                s.first().copied().unwrap_or(0),
                s.get(1).copied().unwrap_or(0),
                s.get(2).copied().unwrap_or(0),
            );
            format!("{a:x}:{b:x}:{c:x}::/48")
        }
    }
}

/// What the log says about one decision.
pub struct DecisionEntry<'a> {
    pub decision_id: DecisionId,
    pub journey: &'a str,
    pub user: HashedId,
    pub ip: IpAddr,
    pub decision: &'a Decision,
    pub acr: Option<&'a str>,
    pub degraded: bool,
}

pub fn decision(entry: &DecisionEntry<'_>) {
    let d = entry.decision;
    let reasons: Vec<&str> = d.reasons.iter().map(|r| r.policy_id.as_str()).collect();
    let signals: Vec<&str> = d.risk.contributions.iter().map(|c| c.signal).collect();
    let faults: Vec<&str> = d.faults.iter().map(|f| f.policy_id.as_str()).collect();
    let required_aal = match d.outcome {
        Outcome::StepUp(aal) => aal.number(),
        Outcome::Allow | Outcome::Deny => 0,
    };
    tracing::info!(
        target: TARGET,
        decision_id = %entry.decision_id,
        journey = entry.journey,
        outcome = d.outcome.as_str(),
        required.aal = required_aal,
        required.acr = entry.acr.unwrap_or_default(),
        policies = reasons.join(",").as_str(),
        policy.faults = faults.join(",").as_str(),
        policy.version = d.policy_version.as_str(),
        risk.score = d.risk.score,
        risk.signals = signals.join(",").as_str(),
        user = entry.user.short().as_str(),
        client.net = truncate_ip(entry.ip).as_str(),
        degraded = entry.degraded,
        "decision"
    );
}

/// What the log says about one reported outcome.
pub struct OutcomeEntry<'a> {
    pub decision_id: Option<DecisionId>,
    pub journey: &'a str,
    pub user: HashedId,
    pub ip: IpAddr,
    pub event: OutcomeEvent,
    pub judgement: &'a ReportJudgement,
}

pub fn outcome(entry: &OutcomeEntry<'_>) {
    let j = entry.judgement;
    tracing::info!(
        target: TARGET,
        decision_id = entry.decision_id.map(|id| id.to_string()).unwrap_or_default().as_str(),
        decision.found = j.decision_found,
        journey = entry.journey,
        event = entry.event.as_str(),
        effect = j.effect.as_str(),
        required.aal = j.required.map_or(0, |l| l.number()),
        reached.aal = j.reached.number(),
        user = entry.user.short().as_str(),
        client.net = truncate_ip(entry.ip).as_str(),
        "outcome"
    );
}

/// A request refused before it was answered, logged without its content:
/// the RPC, the stable fault code and, for a broken rule, only the field's
/// path (a rule's text can quote what the caller sent).
pub fn refused(rpc: &str, fault: &str, field: Option<&str>) {
    tracing::info!(
        target: TARGET,
        rpc,
        fault,
        field = field.unwrap_or_default(),
        "request refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_truncated_to_their_network() {
        assert_eq!(
            truncate_ip("203.0.113.77".parse().unwrap()),
            "203.0.113.0/24"
        );
        assert_eq!(
            truncate_ip("2001:db8:abcd:12::1".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
        assert_eq!(
            truncate_ip("::ffff:198.51.100.9".parse().unwrap()),
            "198.51.100.0/24"
        );
    }
}

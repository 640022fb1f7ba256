//! The decision log: one structured event per decision and per reported
//! outcome, under the `stepgate::decision` tracing target.
//!
//! Personal data never appears: users are keyed-hash pseudonyms, IPs are
//! truncated to their network (/24 for IPv4, /48 for IPv6), device ids are
//! not logged at all.

use std::net::IpAddr;

use crate::decision::{Decision, Outcome, OutcomeEvent};
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
    pub decision_id: &'a str,
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
        decision_id = entry.decision_id,
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

pub fn outcome(journey: &str, user: HashedId, ip: IpAddr, event: OutcomeEvent, decision_id: &str) {
    tracing::info!(
        target: TARGET,
        decision_id,
        journey,
        event = event.as_str(),
        user = user.short().as_str(),
        client.net = truncate_ip(ip).as_str(),
        "outcome"
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

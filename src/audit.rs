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
        field = field.map(loggable_field).unwrap_or_default().as_str(),
        "request refused"
    );
}

/// A field path fit for the log: below a member whose keys the caller
/// chooses (`attributes`, an AuthZEN `context` or `properties`), a key is
/// kept only when it looks like a schema name (at most 32 of `a-z 0-9 _`),
/// else written `*`, and nothing below it is kept.
pub fn loggable_field(field: &str) -> String {
    const CALLER_KEYED: [&str; 3] = ["attributes", "context", "properties"];
    // A parenthesised note (`attributes (resource.properties, ...)`) is not
    // part of the path.
    let field = match field.find(" (").and_then(|open| {
        let close = open + field.get(open..)?.find(')')?;
        Some(format!("{}{}", field.get(..open)?, field.get(close + 1..)?))
    }) {
        Some(cut) => cut,
        None => field.to_owned(),
    };
    let mut out: Vec<&str> = Vec::new();
    let mut segments = field.split('.');
    while let Some(segment) = segments.next() {
        out.push(segment);
        let name = segment.split('[').next().unwrap_or_default();
        if CALLER_KEYED.contains(&name) {
            if let Some(key) = segments.next() {
                let key = key.split('[').next().unwrap_or_default();
                let schema_like = !key.is_empty()
                    && key.len() <= 32
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                out.push(if schema_like { key } else { "*" });
            }
            break;
        }
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_chosen_keys_stay_out_of_the_log() {
        assert_eq!(loggable_field("subject.user_id"), "subject.user_id");
        assert_eq!(loggable_field("attributes.amount"), "attributes.amount");
        assert_eq!(
            loggable_field("attributes.amount[3].x"),
            "attributes.amount"
        );
        assert_eq!(
            loggable_field("context.alice@example.com"),
            "context.*",
            "a dotted key is cut at its first dot and still hidden"
        );
        assert_eq!(
            loggable_field("resource.properties.Alice Smith"),
            "resource.properties.*"
        );
        assert_eq!(
            loggable_field("subject.properties.ip"),
            "subject.properties.ip"
        );
        assert_eq!(
            loggable_field("attributes (resource.properties, action.properties, context).Bob"),
            "attributes.*"
        );
    }

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

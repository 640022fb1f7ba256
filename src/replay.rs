//! Backtesting a policy change: every decision in a decision log is judged
//! again by a candidate policy set, from the signal snapshot the live set
//! saw, and the answers are compared cell by cell (journey, live outcome,
//! candidate outcome).
//!
//! The ladder runs exactly as it does live (same context, same levels);
//! only what the log holds is used, so a policy that names a principal
//! sees the logged pseudonym, not the user id.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::SystemTime;

use serde::Serialize;

use crate::decision::{Aal, Outcome};
use crate::metrics::outcome_label;
use crate::policy::{ContextParts, LadderRequest, PolicySnapshot, ladder};
use crate::record::line::{self, DecisionLine, Line};

/// Which recorded decisions to replay.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this journey.
    pub journey: Option<String>,
    /// Only decisions made at or after this time.
    pub since: Option<SystemTime>,
    /// Only decisions made before this time.
    pub until: Option<SystemTime>,
}

/// At most this many example decision ids per cell.
pub const EXAMPLES_PER_CELL: usize = 3;

/// One cell of the comparison: how many decisions of a journey the live
/// set answered one way and the candidate another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub count: u64,
    /// The first few decision ids in the cell.
    pub examples: Vec<String>,
    /// For a changed cell: the candidate's reasons (`policy_id: reason`),
    /// each once.
    pub candidate_reasons: Vec<String>,
}

/// Where a cell sits: journey, live outcome, candidate outcome
/// (`allow`, `step_up_aal2`, `deny`, or `refused: <fault>` when the
/// candidate could not take the request at all).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CellKey {
    pub journey: String,
    pub live: String,
    pub candidate: String,
}

/// A line that could not be replayed, by its number (from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub line: u64,
    pub message: String,
}

/// The whole comparison.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    /// Decisions replayed.
    pub replayed: u64,
    /// Decision lines left out by the filter.
    pub filtered_out: u64,
    /// Lines of other kinds (reports, refusals).
    pub other_kinds: u64,
    /// Cells, in journey order; see [`Cell`].
    #[serde(serialize_with = "cells_as_list")]
    pub cells: BTreeMap<CellKey, Cell>,
    /// Lines that could not be read or replayed.
    pub problems: Vec<Problem>,
}

fn cells_as_list<S: serde::Serializer>(
    cells: &BTreeMap<CellKey, Cell>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Row<'a> {
        #[serde(flatten)]
        key: &'a CellKey,
        changed: bool,
        #[serde(flatten)]
        cell: &'a Cell,
    }
    serializer.collect_seq(cells.iter().map(|(key, cell)| Row {
        key,
        changed: key.live != key.candidate,
        cell,
    }))
}

impl Comparison {
    /// Decisions the candidate answers differently.
    pub fn changed(&self) -> u64 {
        self.cells
            .iter()
            .filter(|(key, _)| key.live != key.candidate)
            .map(|(_, cell)| cell.count)
            .sum()
    }
}

/// Reads a decision log and judges every decision in it again with
/// `candidate`. Only I/O errors of `log` itself stop it; a line that
/// cannot be read or replayed is a [`Problem`] and the rest go on.
pub fn replay(
    log: impl BufRead,
    candidate: &PolicySnapshot,
    filter: &Filter,
) -> std::io::Result<Comparison> {
    let mut comparison = Comparison::default();
    for (index, text) in log.lines().enumerate() {
        let number = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let problem = |message: String| Problem {
            line: number,
            message,
        };
        let decision = match line::read(&text) {
            Ok(Line::Decision(decision)) => decision,
            Ok(Line::Report(_) | Line::Refused(_)) => {
                comparison.other_kinds += 1;
                continue;
            }
            Err(err) => {
                comparison.problems.push(problem(err.to_string()));
                continue;
            }
        };
        match selected(&decision, filter) {
            Ok(true) => {}
            Ok(false) => {
                comparison.filtered_out += 1;
                continue;
            }
            Err(message) => {
                comparison.problems.push(problem(message));
                continue;
            }
        }
        let live = match live_outcome(&decision) {
            Ok(live) => live,
            Err(message) => {
                comparison.problems.push(problem(message));
                continue;
            }
        };
        let judged = match judge(&decision, candidate) {
            Ok(judged) => judged,
            Err(message) => {
                comparison.problems.push(problem(message));
                continue;
            }
        };
        comparison.replayed += 1;
        let key = CellKey {
            journey: decision.journey.clone(),
            live: outcome_label(live).to_owned(),
            candidate: judged.label,
        };
        let changed = key.live != key.candidate;
        let cell = comparison.cells.entry(key).or_default();
        cell.count += 1;
        if cell.examples.len() < EXAMPLES_PER_CELL {
            cell.examples.push(decision.decision_id.clone());
        }
        if changed {
            for reason in judged.reasons {
                if !cell.candidate_reasons.contains(&reason) {
                    cell.candidate_reasons.push(reason);
                }
            }
        }
    }
    Ok(comparison)
}

/// Whether the filter keeps a decision; an unreadable time is a problem
/// only when a time filter needs it.
fn selected(decision: &DecisionLine, filter: &Filter) -> Result<bool, String> {
    if filter
        .journey
        .as_ref()
        .is_some_and(|j| *j != decision.journey)
    {
        return Ok(false);
    }
    if filter.since.is_none() && filter.until.is_none() {
        return Ok(true);
    }
    let time = humantime::parse_rfc3339_weak(&decision.time)
        .map_err(|e| format!("`time` `{}` is not an RFC 3339 time: {e}", decision.time))?;
    Ok(filter.since.is_none_or(|since| time >= since)
        && filter.until.is_none_or(|until| time < until))
}

/// The outcome the live set gave, as the line records it.
fn live_outcome(decision: &DecisionLine) -> Result<Outcome, String> {
    match (decision.outcome.as_str(), decision.required_aal) {
        ("allow", None) => Ok(Outcome::Allow),
        ("deny", None) => Ok(Outcome::Deny),
        ("step_up", Some(level)) => Aal::from_number(level)
            .map(Outcome::StepUp)
            .ok_or_else(|| format!("`required_aal` {level} is not an assurance level")),
        (outcome, level) => Err(format!(
            "`outcome` `{outcome}` with `required_aal` {level:?} is not an answer stepgate gives"
        )),
    }
}

/// The candidate's answer to one recorded decision.
struct Judged {
    label: String,
    reasons: Vec<String>,
}

fn judge(decision: &DecisionLine, candidate: &PolicySnapshot) -> Result<Judged, String> {
    let refused = |fault: &str| Judged {
        label: format!("refused: {fault}"),
        reasons: Vec::new(),
    };
    let aal = Aal::from_number(decision.aal)
        .ok_or_else(|| format!("`aal` {} is not an assurance level", decision.aal))?;
    let (Some(entry), Some(policies)) = (
        candidate.catalog().get(&decision.journey),
        candidate.journey_shared(&decision.journey),
    ) else {
        // The candidate dropped the journey: every such request would be
        // refused.
        return Ok(refused("unknown_journey"));
    };
    if candidate
        .check_attributes(&decision.journey, &decision.attributes)
        .is_err()
    {
        return Ok(refused("invalid_attributes"));
    }
    // The candidate's catalog may give the journey another tier.
    let mut signals = decision.signals.clone();
    signals.tier = entry.tier;
    let parts = ContextParts::new(&signals, &decision.attributes, policies.shape())
        .map_err(|e| format!("cannot build the candidate's context: {e}"))?;
    let principal = candidate.principal(decision.user.as_deref().unwrap_or_default());
    let resource = candidate.resource(&decision.tenant);
    let request = LadderRequest {
        principal: &principal,
        journey: &policies,
        resource: &resource,
        context: &parts,
    };
    let result = ladder::evaluate(candidate, &request, aal)
        .map_err(|e| format!("the candidate could not evaluate it: {e}"))?;
    Ok(Judged {
        label: outcome_label(result.outcome).to_owned(),
        reasons: result
            .reasons
            .iter()
            .map(|r| format!("{}: {}", r.policy_id, r.message))
            .collect(),
    })
}

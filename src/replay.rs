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
use crate::record::line::{self, DecisionLine};

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

/// Lines handed to a worker at a time.
const CHUNK_LINES: usize = 4096;

/// Reads a decision log and judges every decision in it again with
/// `candidate`, on every core: the reader hands chunks of lines to worker
/// threads, and their comparisons are merged in line order, so the result
/// (examples and problems included) is the same as a single pass. Only
/// I/O errors of `log` itself stop it; a line that cannot be read or
/// replayed is a [`Problem`] and the rest go on.
pub fn replay(
    mut log: impl BufRead,
    candidate: &PolicySnapshot,
    filter: &Filter,
) -> std::io::Result<Comparison> {
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let (chunks, work) = std::sync::mpsc::sync_channel::<(usize, u64, Vec<String>)>(workers * 2);
    let work = std::sync::Mutex::new(work);
    let (done, results) = std::sync::mpsc::channel::<(usize, Comparison)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done = done.clone();
            let work = &work;
            scope.spawn(move || {
                loop {
                    // A poisoned lock only means another worker panicked.
                    let next = work
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    let Ok((index, first, lines)) = next else {
                        return;
                    };
                    let mut part = Comparison::default();
                    for (offset, text) in lines.iter().enumerate() {
                        let number = first.saturating_add(u64::try_from(offset).unwrap_or(0));
                        part.add_line(number, text, candidate, filter);
                    }
                    if done.send((index, part)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done);
        // The reader: this thread.
        let read: std::io::Result<()> = (|| {
            let mut index = 0;
            let mut number: u64 = 1;
            loop {
                let mut lines = Vec::with_capacity(CHUNK_LINES);
                let first = number;
                while lines.len() < CHUNK_LINES {
                    let mut text = String::new();
                    if log.read_line(&mut text)? == 0 {
                        break;
                    }
                    while text.ends_with('\n') || text.ends_with('\r') {
                        text.pop();
                    }
                    lines.push(text);
                    number += 1;
                }
                if lines.is_empty() {
                    return Ok(());
                }
                if chunks.send((index, first, lines)).is_err() {
                    return Ok(());
                }
                index += 1;
            }
        })();
        drop(chunks);
        let mut parts: Vec<(usize, Comparison)> = results.iter().collect();
        read?;
        parts.sort_by_key(|(index, _)| *index);
        let mut whole = Comparison::default();
        for (_, part) in parts {
            whole.merge(part);
        }
        Ok(whole)
    })
}

impl Comparison {
    /// Judges one line, numbered from 1.
    fn add_line(&mut self, number: u64, text: &str, candidate: &PolicySnapshot, filter: &Filter) {
        if text.trim().is_empty() {
            return;
        }
        let problem = |message: String| Problem {
            line: number,
            message,
        };
        let decision = match line::read_decision(text) {
            Ok(Some(decision)) => decision,
            Ok(None) => {
                self.other_kinds += 1;
                return;
            }
            Err(err) => {
                self.problems.push(problem(err.to_string()));
                return;
            }
        };
        let judged = selected(&decision, filter).and_then(|keep| {
            keep.then(|| Ok((live_outcome(&decision)?, judge(&decision, candidate)?)))
                .transpose()
        });
        let (live, judged) = match judged {
            Ok(Some(both)) => both,
            Ok(None) => {
                self.filtered_out += 1;
                return;
            }
            Err(message) => {
                self.problems.push(problem(message));
                return;
            }
        };
        self.replayed += 1;
        let key = CellKey {
            journey: decision.journey,
            live: outcome_label(live).to_owned(),
            candidate: judged.label,
        };
        let changed = key.live != key.candidate;
        let cell = self.cells.entry(key).or_default();
        cell.count += 1;
        if cell.examples.len() < EXAMPLES_PER_CELL {
            cell.examples.push(decision.decision_id);
        }
        if changed {
            for reason in judged.reasons {
                if !cell.candidate_reasons.contains(&reason) {
                    cell.candidate_reasons.push(reason);
                }
            }
        }
    }

    /// Adds a comparison of later lines to this one.
    fn merge(&mut self, later: Comparison) {
        self.replayed += later.replayed;
        self.filtered_out += later.filtered_out;
        self.other_kinds += later.other_kinds;
        self.problems.extend(later.problems);
        for (key, cell) in later.cells {
            let mine = self.cells.entry(key).or_default();
            mine.count += cell.count;
            let room = EXAMPLES_PER_CELL.saturating_sub(mine.examples.len());
            mine.examples.extend(cell.examples.into_iter().take(room));
            for reason in cell.candidate_reasons {
                if !mine.candidate_reasons.contains(&reason) {
                    mine.candidate_reasons.push(reason);
                }
            }
        }
    }
}

/// Whether the filter keeps a decision. Its time is checked either way: a
/// line whose time is unreadable is not one stepgate wrote.
fn selected(decision: &DecisionLine, filter: &Filter) -> Result<bool, String> {
    let time = humantime::parse_rfc3339_weak(&decision.time)
        .map_err(|e| format!("`time` `{}` is not an RFC 3339 time: {e}", decision.time))?;
    if filter
        .journey
        .as_ref()
        .is_some_and(|j| *j != decision.journey)
    {
        return Ok(false);
    }
    Ok(filter.since.is_none_or(|since| time >= since)
        && filter.until.is_none_or(|until| time < until))
}

/// The outcome the live set gave, as the line records it.
fn live_outcome(decision: &DecisionLine) -> Result<Outcome, String> {
    match (decision.outcome.as_ref(), decision.required_aal) {
        ("allow", None) => Ok(Outcome::Allow),
        ("deny", None) => Ok(Outcome::Deny),
        ("step_up", Some(level)) => Aal::from_number(level)
            .map(Outcome::StepUp)
            .ok_or_else(|| format!("`required_aal` {level} is not an assurance level")),
        (outcome, level) => Err(format!(
            "`outcome` `{outcome}` with `required_aal` {} is not an answer stepgate gives",
            level.map_or_else(|| "null".to_owned(), |l| l.to_string())
        )),
    }
}

/// The candidate's answer to one recorded decision.
struct Judged {
    label: String,
    reasons: Vec<String>,
}

fn judge(decision: &DecisionLine, candidate: &PolicySnapshot) -> Result<Judged, String> {
    // The candidate's set for the decision's tenant.
    let candidate = candidate.tenant_set(&decision.tenant);
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

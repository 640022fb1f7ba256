//! The decision log's line format, version [`VERSION`]: one JSON object per
//! line, one of three kinds (`decision`, `report`, `refused`). The same
//! types write the log and read it back (`stepgate replay`), so the two
//! cannot drift; the README documents every field.
//!
//! A change that removes or retypes a field, or changes what one means,
//! takes a new version; readers refuse versions they do not know rather
//! than guess.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decision::{AttrValue, Reason, Tier};
use crate::signals::Signals;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// A field whose values come from a closed set when written (no
/// allocation per line) and are owned when read.
pub type Text = std::borrow::Cow<'static, str>;

/// What every line starts with; enough to tell which kind to read, and
/// whether this build can read it at all.
#[derive(Debug, Deserialize)]
pub struct Probe<'a> {
    pub version: u32,
    #[serde(borrow)]
    pub kind: std::borrow::Cow<'a, str>,
}

/// One Decide, from any door.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionLine {
    pub version: u32,
    /// `decision`.
    pub kind: Text,
    /// When the answer was made: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub decision_id: String,
    /// `grpc`, `http`, `hook`, `authzen`, `ext_authz` or `forward_auth`.
    pub door: Text,
    /// The operation within the door, e.g. `Decide`, `authzen.evaluation`.
    pub rpc: Text,
    /// Who asked: its `[[callers]]` name; `anonymous` when no callers are
    /// configured; `unauthenticated` for a request turned away before it
    /// was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    pub journey: String,
    pub tier: Tier,
    /// `allow`, `step_up` or `deny`.
    pub outcome: Text,
    /// The level the user was at when asking (1 to 3).
    pub aal: u32,
    /// The level a step-up asks for; `null` for allow and deny.
    pub required_aal: Option<u32>,
    /// The acr value a step-up asks for; `null` for allow and deny.
    pub acr: Option<String>,
    /// The oldest the step-up's authentication may be, in seconds (a
    /// freshness rule's `@max_age`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
    /// The determining policies and their `@reason`s.
    pub reasons: Vec<Reason>,
    /// Ids of policies that failed to evaluate (their levels counted as
    /// not permitted).
    pub policy_faults: Vec<String>,
    pub policy_version: String,
    /// Per `decision_log.user_ids`: a pseudonym by default.
    pub user: Option<String>,
    pub tenant: String,
    /// Per `decision_log.addresses`: the /24 or /48 by default.
    pub client: Option<String>,
    /// Per `decision_log.device_ids`: absent by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Everything the policies saw but the level, including the risk score
    /// and its contributions: with `aal` and `attributes`, all the ladder
    /// needs to run again.
    pub signals: Signals,
    /// The journey attributes as admitted (schema-typed).
    pub attributes: BTreeMap<String, AttrValue>,
    /// From the door receiving the request to the answer, µs.
    pub latency_us: u64,
    /// The answer came from a configured failure mode, not the full path.
    pub degraded: bool,
}

/// One ReportOutcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportLine {
    pub version: u32,
    /// `report`.
    pub kind: Text,
    pub time: String,
    pub door: Text,
    pub rpc: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The decision the report named, if any.
    pub decision_id: Option<String>,
    /// Whether stepgate still remembered that decision.
    pub decision_found: bool,
    pub journey: String,
    /// `auth_succeeded`, `auth_failed`, `step_up_succeeded`, `step_up_failed`,
    /// or feedback: `compromised`, `confirmed_safe`.
    pub event: Text,
    /// `completed`, `partial`, `failure_counted`, `ignored_denied`,
    /// `ignored_compromised`, or for feedback `untrusted` or `cleared`.
    pub effect: Text,
    pub required_aal: Option<u32>,
    pub reached_aal: u32,
    pub user: Option<String>,
    pub tenant: String,
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub latency_us: u64,
}

/// A request answered with a fault instead of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedLine {
    pub version: u32,
    /// `refused`.
    pub kind: Text,
    pub time: String,
    pub door: Text,
    pub rpc: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The stable fault code (`invalid_argument`, `unknown_journey`, ...).
    pub fault: Text,
    /// The field at fault, when a rule was broken; keys the caller chose
    /// are written `*`.
    pub field: Option<String>,
    pub latency_us: u64,
}

/// Any line.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Decision(Box<DecisionLine>),
    Report(Box<ReportLine>),
    Refused(Box<RefusedLine>),
}

impl Serialize for Line {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Line::Decision(line) => line.serialize(serializer),
            Line::Report(line) => line.serialize(serializer),
            Line::Refused(line) => line.serialize(serializer),
        }
    }
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not a decision-log line: {0}")]
    NotALine(String),
    #[error(
        "format version {0} is newer than this build reads (version {VERSION}); use a newer stepgate"
    )]
    Newer(u32),
    #[error("format version {0} is not one this build reads (version {VERSION})")]
    Unknown(u32),
    #[error("unknown kind `{0}`")]
    Kind(String),
    #[error("a version {VERSION} `{kind}` line that does not fit its schema: {message}")]
    Shape { kind: String, message: String },
}

/// How this build starts every decision line: readers that only want
/// decisions take it as a hint to parse once.
const DECISION_START: &str = r#"{"version":1,"kind":"decision","#;

/// Reads one line of the log if it is a decision; `Ok(None)` for a
/// well-formed line of another kind (checked as JSON, not read whole).
pub fn read_decision(text: &str) -> Result<Option<DecisionLine>, ReadError> {
    if text.starts_with(DECISION_START)
        && let Ok(decision) = serde_json::from_str::<DecisionLine>(text)
    {
        return Ok(Some(decision));
    }
    let probe: Probe<'_> =
        serde_json::from_str(text).map_err(|e| ReadError::NotALine(e.to_string()))?;
    match (probe.version, probe.kind.as_ref()) {
        (VERSION, "decision") => match read(text)? {
            Line::Decision(decision) => Ok(Some(*decision)),
            Line::Report(_) | Line::Refused(_) => Ok(None),
        },
        (VERSION, "report" | "refused") => Ok(None),
        _ => read(text).map(|_| None),
    }
}

/// Reads one line of the log.
pub fn read(text: &str) -> Result<Line, ReadError> {
    let probe: Probe<'_> =
        serde_json::from_str(text).map_err(|e| ReadError::NotALine(e.to_string()))?;
    if probe.version > VERSION {
        return Err(ReadError::Newer(probe.version));
    }
    if probe.version != VERSION {
        return Err(ReadError::Unknown(probe.version));
    }
    let shape = |e: serde_json::Error| ReadError::Shape {
        kind: probe.kind.to_string(),
        message: e.to_string(),
    };
    Ok(match probe.kind.as_ref() {
        "decision" => Line::Decision(Box::new(serde_json::from_str(text).map_err(shape)?)),
        "report" => Line::Report(Box::new(serde_json::from_str(text).map_err(shape)?)),
        "refused" => Line::Refused(Box::new(serde_json::from_str(text).map_err(shape)?)),
        other => return Err(ReadError::Kind(other.to_owned())),
    })
}

//! The domain of one decision: what was asked, what stepgate answered and why.
//!
//! Plain data only; nothing here knows about protobuf, Cedar or the store.
//! The gRPC adapter converts into these types after validating the request,
//! and the policy layer converts them into Cedar values.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Unix time in whole seconds; the core takes it as a parameter so that tests
/// pin the clock.
pub type UnixSeconds = i64;

/// Authenticator assurance level (NIST SP 800-63B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Aal {
    One = 1,
    Two = 2,
    Three = 3,
}

impl Aal {
    pub const ALL: [Aal; 3] = [Aal::One, Aal::Two, Aal::Three];

    /// Maps the wire value, where 0 (unknown) counts as AAL1.
    pub fn from_wire(value: u32) -> Option<Self> {
        match value {
            0 | 1 => Some(Aal::One),
            2 => Some(Aal::Two),
            3 => Some(Aal::Three),
            _ => None,
        }
    }

    /// The level with this number, 1 to 3.
    pub fn from_number(value: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|level| level.number() == value)
    }

    pub fn number(self) -> u32 {
        self as u32
    }

    /// This level and every higher one, in climbing order.
    pub fn and_above(self) -> impl Iterator<Item = Aal> {
        Self::ALL.into_iter().filter(move |level| *level >= self)
    }
}

impl fmt::Display for Aal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AAL{}", self.number())
    }
}

/// How sensitive a journey is; set in the server's journey catalog, never by
/// the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Low,
    Medium,
    High,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Medium => "medium",
            Tier::High => "high",
        }
    }
}

/// A journey-specific attribute value, shaped like the Cedar values it
/// becomes. Floats are refused at the edge because Cedar has none. Its
/// JSON form (in the decision log) is the plain JSON value: a boolean, an
/// integer, a string, an array or an object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Long(i64),
    String(String),
    Set(Vec<AttrValue>),
    Record(BTreeMap<String, AttrValue>),
}

/// The tenant of callers that send none. An empty tenant and this one are
/// the same tenant everywhere: in the store and in Cedar.
pub const DEFAULT_TENANT: &str = "default";

/// The account a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user_id: String,
    /// [`DEFAULT_TENANT`] when the caller sent none.
    pub tenant: String,
}

/// What the user has already proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authn {
    pub aal: Aal,
    pub amr: Vec<String>,
    /// Unix seconds, when the caller knows it.
    pub auth_time: Option<UnixSeconds>,
}

/// A validated Decide request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecideInput {
    pub journey: String,
    pub subject: Subject,
    pub authn: Authn,
    pub device_id: Option<String>,
    pub ip: IpAddr,
    pub attributes: BTreeMap<String, AttrValue>,
}

/// What the user did after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeEvent {
    AuthSucceeded,
    AuthFailed,
    StepUpSucceeded,
    StepUpFailed,
    /// Learned afterwards: the session (or device) was not the user's
    /// ("that wasn't me", a confirmed takeover). Un-trusts what it taught
    /// and makes the account step up until it passes one.
    Compromised,
    /// Learned afterwards: what looked risky was the user (a false
    /// positive). Lifts a compromise mark.
    ConfirmedSafe,
}

impl OutcomeEvent {
    pub fn succeeded(self) -> bool {
        matches!(self, Self::AuthSucceeded | Self::StepUpSucceeded)
    }

    /// Feedback about the account rather than the outcome of a step.
    pub fn is_feedback(self) -> bool {
        matches!(self, Self::Compromised | Self::ConfirmedSafe)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthSucceeded => "auth_succeeded",
            Self::AuthFailed => "auth_failed",
            Self::StepUpSucceeded => "step_up_succeeded",
            Self::StepUpFailed => "step_up_failed",
            Self::Compromised => "compromised",
            Self::ConfirmedSafe => "confirmed_safe",
        }
    }
}

/// The id of a decision stepgate issued: a UUIDv7, written the one way
/// stepgate writes it (lowercase, hyphenated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionId(uuid::Uuid);

impl DecisionId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Reads an id in the exact form stepgate issues. Any other spelling of
    /// a UUID (upper case, braces, `urn:uuid:`, no hyphens), the nil UUID and
    /// UUIDs of other versions are not ids stepgate issued.
    pub fn parse_issued(text: &str) -> Option<Self> {
        let id = uuid::Uuid::try_parse(text).ok()?;
        let canonical = id.get_version() == Some(uuid::Version::SortRand)
            && id.get_variant() == uuid::Variant::RFC4122
            && id.hyphenated().to_string() == text;
        canonical.then_some(Self(id))
    }

    /// The id as a number, for compact keys.
    pub fn as_u128(self) -> u128 {
        self.0.as_u128()
    }
}

impl Default for DecisionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A validated ForgetUser request: erase `subject` in its tenant, or the
/// same user id in every tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetInput {
    pub subject: Subject,
    pub all_tenants: bool,
}

/// A validated ReportOutcome request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInput {
    pub journey: String,
    pub subject: Subject,
    pub device_id: Option<String>,
    pub ip: IpAddr,
    pub event: OutcomeEvent,
    /// The decision this outcome answers, when the caller names one.
    pub decision_id: Option<DecisionId>,
    /// The level the user reached, when the caller says; otherwise the
    /// event implies it (see [`crate::reporting`]).
    pub reached: Option<Aal>,
}

/// What a reported outcome did to stored context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportEffect {
    /// The sign-in completed at the level asked for: the device, the
    /// country and the position were learned and the user's failures reset.
    Completed,
    /// A success below the level asked for (a first factor before the
    /// second): nothing learned, nothing reset.
    Partial,
    /// A failure, counted against the user (with its device) and the address.
    FailureCounted,
    /// A success reported against a decision that denied: nothing learned.
    IgnoredDenied,
    /// A compromise: the device and place the reported session taught are
    /// no longer trusted, and the account steps up until it passes one.
    Untrusted,
    /// Confirmed safe: the account's compromise mark is lifted.
    Cleared,
    /// A success at the level asked for, while the account is marked
    /// compromised, of a decision made before the mark (or of none):
    /// nothing learned, the mark stands.
    IgnoredCompromised,
}

impl ReportEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::FailureCounted => "failure_counted",
            Self::IgnoredDenied => "ignored_denied",
            Self::Untrusted => "untrusted",
            Self::Cleared => "cleared",
            Self::IgnoredCompromised => "ignored_compromised",
        }
    }
}

/// How a reported outcome was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportJudgement {
    pub effect: ReportEffect,
    /// The level the report was judged against: what the decision asked
    /// for, or `reporting.undecided_min_aal` without a decision; `None`
    /// against a decision that denied.
    pub required: Option<Aal>,
    /// The level the user was taken to have reached.
    pub reached: Aal,
    /// The report named a decision that stepgate still remembers.
    pub decision_found: bool,
}

impl ReportJudgement {
    /// The level reached as the protocol says it: 1..3, or 0 for feedback
    /// (`untrusted`, `cleared`), which reaches no level.
    pub fn reached_number(&self) -> u32 {
        match self.effect {
            ReportEffect::Untrusted | ReportEffect::Cleared => 0,
            _ => self.reached.number(),
        }
    }
}

/// A request field that broke a rule: the field's path and the rule, both
/// safe to send back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {rule}")]
pub struct FieldError {
    pub field: String,
    pub rule: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// The three answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// Ask the user to reach this level.
    StepUp(Aal),
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::StepUp(_) => "step_up",
            Outcome::Deny => "deny",
        }
    }
}

/// A policy that determined the answer, with its `@reason`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Reason {
    pub policy_id: String,
    pub message: String,
}

/// What a caller is told about a policy that failed to evaluate, whichever
/// door it asked through: Cedar's own message quotes the values involved,
/// which are signals, so it goes only to the service log.
pub const POLICY_ERROR_MESSAGE: &str = "the policy failed to evaluate, so the levels where it failed were not permitted; the service log has the detail";

/// A policy that failed to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PolicyFault {
    pub policy_id: String,
    pub message: String,
}

/// One named contribution to the risk score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RiskContribution {
    /// One of the names in [`crate::signals::risk::SIGNALS`]; reading any
    /// other name fails.
    pub signal: &'static str,
    pub points: u32,
}

impl<'de> serde::Deserialize<'de> for RiskContribution {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Named {
            signal: String,
            points: u32,
        }
        let named = Named::deserialize(deserializer)?;
        let signal = crate::signals::risk::SIGNALS
            .into_iter()
            .find(|known| *known == named.signal)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("`{}` is not a risk signal", named.signal))
            })?;
        Ok(Self {
            signal,
            points: named.points,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Risk {
    /// 0..=100.
    pub score: u32,
    pub level: RiskLevel,
    pub contributions: Vec<RiskContribution>,
}

/// The answer and everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// On a step-up, the oldest the new authentication may be, in seconds
    /// (RFC 9470 §3 `max_age`; see `policy::freshness`).
    pub max_age: Option<u32>,
    pub reasons: Vec<Reason>,
    pub faults: Vec<PolicyFault>,
    pub risk: Risk,
    pub policy_version: String,
}

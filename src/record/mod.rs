//! The record step of the decision path: the one place that feeds the
//! metrics and the decision log, once per request, for every door —
//! decisions, reports and refused requests alike.
//!
//! Labels come from closed sets or the journey catalog; the log says what
//! `decision_log` allows about people (see [`privacy`]).

pub mod line;
pub mod privacy;
pub mod sink;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::access::Caller;
use crate::config::{AddressesInLog, DecisionLogConfig, DeviceIdsInLog, UserIdsInLog};
use crate::decision::{DecideInput, Outcome, ReportInput, ReportJudgement};
use crate::engine::Answer;
use crate::fault::FaultKind;
use crate::metrics::Metrics;
use crate::pseudonym::HashedId;
use crate::signals::Signals;

pub use sink::DecisionLog;

/// Which front door a request came through: a closed set, used as the
/// `door` label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// `stepgate.v1.DecisionService` (and gRPC health).
    Grpc,
    /// The `/v1` HTTP/JSON API.
    Http,
    /// `/v1/hooks/decide`, for IdP hooks that can only block.
    Hook,
    /// AuthZEN 1.0 evaluation(s).
    AuthZen,
    /// Envoy ext_authz v3 `Check`.
    ExtAuthz,
    /// HTTP forward-auth (nginx `auth_request`, Traefik, Caddy).
    ForwardAuth,
}

impl Door {
    pub const ALL: [Door; 6] = [
        Door::Grpc,
        Door::Http,
        Door::Hook,
        Door::AuthZen,
        Door::ExtAuthz,
        Door::ForwardAuth,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::Http => "http",
            Door::Hook => "hook",
            Door::AuthZen => "authzen",
            Door::ExtAuthz => "ext_authz",
            Door::ForwardAuth => "forward_auth",
        }
    }
}

/// One request through a door: which door and operation, who asked, when
/// it arrived (the start of its latency) and when it must be done by.
#[derive(Debug, Clone)]
pub struct Call {
    pub door: Door,
    /// The operation, from a closed set per door (`Decide`,
    /// `http.decide`, `authzen.evaluation`, ...).
    pub rpc: &'static str,
    caller: Arc<Caller>,
    started: Instant,
    deadline: Option<Instant>,
}

impl Call {
    /// A request arriving now, asked by no one (who may do nothing) until
    /// [`Self::by`] says who asked: a path that forgets to say is refused,
    /// not trusted.
    pub fn new(door: Door, rpc: &'static str) -> Self {
        Self {
            door,
            rpc,
            caller: Caller::nobody(),
            started: Instant::now(),
            deadline: None,
        }
    }

    /// The same request, asked by `caller`.
    pub fn by(mut self, caller: Arc<Caller>) -> Self {
        self.caller = caller;
        self
    }

    /// The same request, to be done by `deadline`.
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn caller_name(&self) -> &str {
        self.caller.name()
    }

    /// When the request must be done by, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    fn elapsed_us(&self) -> u64 {
        u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// One decision as the record step sees it.
pub struct DecisionRecord<'a> {
    pub call: &'a Call,
    pub input: &'a DecideInput,
    pub answer: &'a Answer,
    /// Moved into the log line (the request is done with them).
    pub signals: Signals,
    pub user: HashedId,
    pub device: Option<HashedId>,
    /// The client address as counted and looked up.
    pub ip: IpAddr,
}

/// One reported outcome as the record step sees it.
pub struct ReportRecord<'a> {
    pub call: &'a Call,
    pub input: &'a ReportInput,
    pub judgement: &'a ReportJudgement,
    /// `found`, `forgotten` or `none`: the decision the report named.
    pub against: &'static str,
    pub user: HashedId,
    pub device: Option<HashedId>,
    pub ip: IpAddr,
}

/// Feeds the metrics and the decision log.
#[derive(Debug, Clone)]
pub struct Recorder {
    metrics: Arc<Metrics>,
    log: DecisionLog,
    privacy: Privacy,
}

/// What the decision log may say about a person.
#[derive(Debug, Clone, Copy, Default)]
pub struct Privacy {
    pub user_ids: UserIdsInLog,
    pub addresses: AddressesInLog,
    pub device_ids: DeviceIdsInLog,
}

impl Privacy {
    pub fn of(config: &DecisionLogConfig) -> Self {
        Self {
            user_ids: config.user_ids,
            addresses: config.addresses,
            device_ids: config.device_ids,
        }
    }

    fn user(&self, raw: &str, hashed: HashedId) -> Option<String> {
        match self.user_ids {
            UserIdsInLog::Pseudonymised => Some(hashed.short()),
            UserIdsInLog::Raw => Some(raw.to_owned()),
            UserIdsInLog::Omitted => None,
        }
    }

    fn address(&self, ip: IpAddr) -> Option<String> {
        match self.addresses {
            AddressesInLog::Truncated => Some(privacy::truncate_ip(ip)),
            AddressesInLog::Full => Some(ip.to_canonical().to_string()),
            AddressesInLog::Omitted => None,
        }
    }

    fn device(&self, hashed: Option<HashedId>) -> Option<String> {
        match self.device_ids {
            DeviceIdsInLog::Omitted => None,
            DeviceIdsInLog::Hashed => hashed.map(|d| d.short()),
        }
    }
}

/// Now, as the log writes times: RFC 3339, UTC, milliseconds.
fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Recorder {
    pub fn new(metrics: Arc<Metrics>, log: DecisionLog, privacy: Privacy) -> Self {
        Self {
            metrics,
            log,
            privacy,
        }
    }

    /// Metrics only, no decision log.
    pub fn without_log(metrics: Arc<Metrics>) -> Self {
        Self {
            log: DecisionLog::off(metrics.clone()),
            metrics,
            privacy: Privacy::default(),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn log(&self) -> &DecisionLog {
        &self.log
    }

    /// A decision: counted, timed and logged.
    pub fn decision(&self, r: DecisionRecord<'_>) {
        let d = &r.answer.decision;
        let latency = r.call.elapsed();
        self.metrics.decision(
            r.call.door.label(),
            r.call.caller_name(),
            &r.input.journey,
            r.signals.tier,
            d.outcome,
            latency,
        );
        for contribution in &d.risk.contributions {
            self.metrics.signal_fired(contribution.signal);
        }
        if !self.log.is_on() {
            return;
        }
        let required_aal = match d.outcome {
            Outcome::StepUp(level) => Some(level.number()),
            Outcome::Allow | Outcome::Deny => None,
        };
        self.log
            .write(line::Line::Decision(Box::new(line::DecisionLine {
                version: line::VERSION,
                kind: "decision".into(),
                time: now(),
                decision_id: r.answer.decision_id.to_string(),
                door: r.call.door.label().into(),
                rpc: r.call.rpc.into(),
                caller: Some(r.call.caller_name().to_owned()),
                journey: r.input.journey.clone(),
                tier: r.signals.tier,
                outcome: d.outcome.as_str().into(),
                aal: r.input.authn.aal.number(),
                required_aal,
                acr: r.answer.required_acr.clone(),
                max_age: d.max_age,
                reasons: d.reasons.clone(),
                policy_faults: d.faults.iter().map(|f| f.policy_id.clone()).collect(),
                policy_version: d.policy_version.clone(),
                user: self.privacy.user(&r.input.subject.user_id, r.user),
                tenant: r.input.subject.tenant.clone(),
                client: self.privacy.address(r.ip),
                device: self.privacy.device(r.device),
                signals: r.signals,
                attributes: r.input.attributes.clone(),
                latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
                degraded: r.answer.degraded,
            })));
    }

    /// A reported outcome: counted and logged.
    pub fn report(&self, r: &ReportRecord<'_>) {
        let j = r.judgement;
        self.metrics.report(j.effect, r.against);
        if !self.log.is_on() {
            return;
        }
        self.log
            .write(line::Line::Report(Box::new(line::ReportLine {
                version: line::VERSION,
                kind: "report".into(),
                time: now(),
                door: r.call.door.label().into(),
                rpc: r.call.rpc.into(),
                caller: Some(r.call.caller_name().to_owned()),
                decision_id: r.input.decision_id.map(|id| id.to_string()),
                decision_found: j.decision_found,
                journey: r.input.journey.clone(),
                event: r.input.event.as_str().into(),
                effect: j.effect.as_str().into(),
                required_aal: j.required.map(|l| l.number()),
                reached_aal: j.reached_number(),
                user: self.privacy.user(&r.input.subject.user_id, r.user),
                tenant: r.input.subject.tenant.clone(),
                client: self.privacy.address(r.ip),
                device: self.privacy.device(r.device),
                latency_us: r.call.elapsed_us(),
            })));
    }

    /// A request answered with a fault: counted, and logged without its
    /// content (only the field's path, caller-chosen keys hidden).
    pub fn refused(&self, call: &Call, kind: FaultKind, field: Option<&str>) {
        self.metrics
            .refused(call.rpc, call.caller_name(), kind.code());
        if !self.log.is_on() {
            return;
        }
        self.log
            .write(line::Line::Refused(Box::new(line::RefusedLine {
                version: line::VERSION,
                kind: "refused".into(),
                time: now(),
                door: call.door.label().into(),
                rpc: call.rpc.into(),
                caller: Some(call.caller_name().to_owned()),
                fault: kind.code().into(),
                field: field.map(privacy::loggable_field),
                latency_us: call.elapsed_us(),
            })));
    }
}

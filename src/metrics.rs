//! Prometheus counters for what operators must be able to see: policy
//! reloads, what a shadow policy set would have decided differently, what
//! reported outcomes did, refused requests and store faults.
//!
//! Labels come from closed sets (outcomes, results, set names) or from the
//! journey catalog, never from request data.

use prometheus::{IntCounterVec, Opts, Registry};

use crate::decision::{Aal, Outcome, ReportEffect};

/// Which policy set a reload was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRole {
    Live,
    Shadow,
}

impl PolicyRole {
    pub fn label(self) -> &'static str {
        match self {
            PolicyRole::Live => "live",
            PolicyRole::Shadow => "shadow",
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new version now serves.
    Applied,
    /// The files validated but hold the version already serving.
    Unchanged,
    /// The files did not validate; the last good version keeps serving.
    Refused,
}

impl ReloadResult {
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Refused => "refused",
        }
    }
}

/// The label of an outcome: `allow`, `step_up_aal2`, `step_up_aal3`, `deny`.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow => "allow",
        Outcome::StepUp(Aal::One) => "step_up_aal1",
        Outcome::StepUp(Aal::Two) => "step_up_aal2",
        Outcome::StepUp(Aal::Three) => "step_up_aal3",
        Outcome::Deny => "deny",
    }
}

/// One engine's counters, in a registry of their own.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reloads: IntCounterVec,
    shadow_divergences: IntCounterVec,
    shadow_errors: IntCounterVec,
    reports: IntCounterVec,
    refused: IntCounterVec,
    store_errors: IntCounterVec,
}

impl Metrics {
    /// Fails only if two counters here share a name.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reloads = IntCounterVec::new(
            Opts::new(
                "stepgate_policy_reloads_total",
                "Policy reloads by policy set and result (applied, unchanged, refused)",
            ),
            &["set", "result"],
        )?;
        let shadow_divergences = IntCounterVec::new(
            Opts::new(
                "stepgate_shadow_divergences_total",
                "Requests the shadow policy set answered differently, by journey and both outcomes",
            ),
            &["journey", "live", "shadow"],
        )?;
        let shadow_errors = IntCounterVec::new(
            Opts::new(
                "stepgate_shadow_errors_total",
                "Requests the shadow policy set could not answer, by journey",
            ),
            &["journey"],
        )?;
        let reports = IntCounterVec::new(
            Opts::new(
                "stepgate_reports_total",
                "Reported outcomes by effect (completed, partial, failure_counted, ignored_denied) and by the decision they named (found, forgotten, none)",
            ),
            &["effect", "decision"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "stepgate_request_faults_total",
                "Requests answered with a fault instead of a decision, by RPC and fault code",
            ),
            &["rpc", "fault"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "stepgate_store_errors_total",
                "Context-store operations that failed, by operation",
            ),
            &["op"],
        )?;
        for counter in [
            &reloads,
            &shadow_divergences,
            &shadow_errors,
            &reports,
            &refused,
            &store_errors,
        ] {
            registry.register(Box::new(counter.clone()))?;
        }
        Ok(Self {
            registry,
            reloads,
            shadow_divergences,
            shadow_errors,
            reports,
            refused,
            store_errors,
        })
    }

    pub fn reload(&self, role: PolicyRole, result: ReloadResult) {
        self.reloads
            .with_label_values(&[role.label(), result.label()])
            .inc();
    }

    pub fn reloads(&self, role: PolicyRole, result: ReloadResult) -> u64 {
        self.reloads
            .with_label_values(&[role.label(), result.label()])
            .get()
    }

    pub fn shadow_divergence(&self, journey: &str, live: Outcome, shadow: Outcome) {
        self.shadow_divergences
            .with_label_values(&[journey, outcome_label(live), outcome_label(shadow)])
            .inc();
    }

    pub fn shadow_divergences(&self, journey: &str, live: Outcome, shadow: Outcome) -> u64 {
        self.shadow_divergences
            .with_label_values(&[journey, outcome_label(live), outcome_label(shadow)])
            .get()
    }

    /// Every divergence counted so far, over all journeys and outcomes.
    pub fn shadow_divergences_total(&self) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == "stepgate_shadow_divergences_total")
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    pub fn shadow_error(&self, journey: &str) {
        self.shadow_errors.with_label_values(&[journey]).inc();
    }

    pub fn shadow_errors(&self, journey: &str) -> u64 {
        self.shadow_errors.with_label_values(&[journey]).get()
    }

    /// A reported outcome: what it did, and whether the decision it named
    /// was `found`, `forgotten` or `none` was named.
    pub fn report(&self, effect: ReportEffect, decision: &str) {
        self.reports
            .with_label_values(&[effect.as_str(), decision])
            .inc();
    }

    pub fn reports(&self, effect: ReportEffect, decision: &str) -> u64 {
        self.reports
            .with_label_values(&[effect.as_str(), decision])
            .get()
    }

    /// A request answered with a fault (refused, or failed); both labels
    /// come from closed sets.
    pub fn refused(&self, rpc: &str, fault: &str) {
        self.refused.with_label_values(&[rpc, fault]).inc();
    }

    pub fn refusals(&self, rpc: &str, fault: &str) -> u64 {
        self.refused.with_label_values(&[rpc, fault]).get()
    }

    /// A store operation that failed without failing the request.
    pub fn store_error(&self, op: &str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String only fails on invalid metric data, which
        // the typed counters above cannot produce.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

//! Prometheus metrics for what operators must be able to see: decisions by
//! door, journey, tier and outcome with their latency, the signals that
//! fired, policy reloads and the live version, what a shadow policy set
//! would have decided differently, what reported outcomes did, refused
//! requests, the store's size and evictions, and the decision log's lines.
//!
//! Labels come from closed sets (doors, outcomes, results, set names, fault
//! codes, signal names) or from the journey catalog, never from request
//! data. The README lists every family.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::decision::{Aal, Outcome, ReportEffect, Tier};

/// Upper bounds of the decision-latency buckets, seconds: fine from 10 µs,
/// where a decision usually lands, to a second, where something is wrong.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_01, 0.000_02, 0.000_035, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_25, 0.000_5,
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0,
];

/// What became of a decision-log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogResult {
    Written,
    /// The queue was full: the sink is behind.
    Dropped,
    /// The sink refused it (disk full, closed pipe).
    Failed,
}

impl LogResult {
    pub fn label(self) -> &'static str {
        match self {
            LogResult::Written => "written",
            LogResult::Dropped => "dropped",
            LogResult::Failed => "failed",
        }
    }
}

/// The context store's size, as a scrape reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub users: u64,
    pub ips: u64,
    /// Decisions remembered for the outcomes reported against them.
    pub decisions: u64,
    /// Users and addresses pushed out to stay within capacity.
    pub user_evictions: u64,
    pub ip_evictions: u64,
    /// Network round trips to a shared store so far.
    pub round_trips: u64,
}

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
    /// One tenant's files did not validate: that tenant's last good set
    /// keeps serving (counted once per tenant and reload).
    TenantRefused,
}

impl ReloadResult {
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Refused => "refused",
            ReloadResult::TenantRefused => "tenant_refused",
        }
    }
}

/// The label of an outcome: `allow`, `step_up_aal1` (authenticate again),
/// `step_up_aal2`, `step_up_aal3`, `deny`.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow => "allow",
        Outcome::StepUp(Aal::One) => "step_up_aal1",
        Outcome::StepUp(Aal::Two) => "step_up_aal2",
        Outcome::StepUp(Aal::Three) => "step_up_aal3",
        Outcome::Deny => "deny",
    }
}

/// The label of a step-up level: `aal1`, `aal2`, `aal3`.
pub fn level_label(level: Aal) -> &'static str {
    match level {
        Aal::One => "aal1",
        Aal::Two => "aal2",
        Aal::Three => "aal3",
    }
}

/// One engine's counters, in a registry of their own.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    step_ups: IntCounterVec,
    latency: HistogramVec,
    signals: IntCounterVec,
    policy_info: IntGaugeVec,
    store_entries: IntGaugeVec,
    store_evictions: IntCounterVec,
    log_lines: IntCounterVec,
    unmapped: IntCounterVec,
    ready: IntGauge,
    reloads: IntCounterVec,
    shadow_divergences: IntCounterVec,
    shadow_errors: IntCounterVec,
    reports: IntCounterVec,
    refused: IntCounterVec,
    store_errors: IntCounterVec,
    degraded: IntCounterVec,
    erasures: IntCounterVec,
    store_round_trips: prometheus::IntCounter,
    access_reloads: IntCounterVec,
    in_flight: IntGauge,
    /// `stepgate_policy_cache_total` by result, resolved once: it is
    /// counted on every decision.
    policy_cache: CacheCounters,
    policy_cache_family: IntCounterVec,
}

#[derive(Debug)]
struct CacheCounters {
    hit: prometheus::IntCounter,
    miss: prometheus::IntCounter,
    bypass: prometheus::IntCounter,
}

impl CacheCounters {
    fn of(&self, result: CacheResult) -> &prometheus::IntCounter {
        match result {
            CacheResult::Hit => &self.hit,
            CacheResult::Miss => &self.miss,
            CacheResult::Bypass => &self.bypass,
        }
    }
}

pub use crate::policy::memo::CacheResult;

impl Metrics {
    /// Fails only if two counters here share a name.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "stepgate_decisions_total",
                "Decisions made, by door, caller, journey, journey tier and outcome (allow, step_up, deny)",
            ),
            &["door", "caller", "journey", "tier", "outcome"],
        )?;
        let step_ups = IntCounterVec::new(
            Opts::new(
                "stepgate_step_ups_total",
                "Step-up answers by journey and the level asked for (aal1 to authenticate again, aal2, aal3)",
            ),
            &["journey", "level"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "stepgate_decision_duration_seconds",
                "Server-side time from a door receiving a request to its decision, by door",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["door"],
        )?;
        let signals = IntCounterVec::new(
            Opts::new(
                "stepgate_signals_fired_total",
                "Decisions whose risk score a signal contributed to, by signal",
            ),
            &["signal"],
        )?;
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "stepgate_policy_info",
                "The policy version (content hash) serving, per set: 1 on the serving version's series",
            ),
            &["set", "version"],
        )?;
        let store_entries = IntGaugeVec::new(
            Opts::new(
                "stepgate_store_entries",
                "Entries held by the context store, by kind (users, ips, decisions)",
            ),
            &["kind"],
        )?;
        let store_evictions = IntCounterVec::new(
            Opts::new(
                "stepgate_store_evictions_total",
                "Entries the context store pushed out to stay within capacity, by kind (users, ips)",
            ),
            &["kind"],
        )?;
        let log_lines = IntCounterVec::new(
            Opts::new(
                "stepgate_decision_log_lines_total",
                "Decision-log lines by result (written, dropped when the queue was full, failed when the sink refused them)",
            ),
            &["result"],
        )?;
        let unmapped = IntCounterVec::new(
            Opts::new(
                "stepgate_gateway_unmapped_total",
                "Gateway requests no route maps, by door and the configured answer (allow, deny)",
            ),
            &["door", "answer"],
        )?;
        let ready = IntGauge::new(
            "stepgate_ready",
            "1 while the service takes requests; 0 while it starts or drains",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "stepgate_policy_reloads_total",
                "Policy reloads by policy set and result (applied, unchanged, refused, tenant_refused)",
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
                "Reported outcomes by effect (completed, partial, failure_counted, ignored_denied, ignored_compromised, untrusted, cleared) and by the decision they named (found, forgotten, none)",
            ),
            &["effect", "decision"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "stepgate_request_faults_total",
                "Requests answered with a fault instead of a decision, by RPC, caller and fault code",
            ),
            &["rpc", "caller", "fault"],
        )?;
        let access_reloads = IntCounterVec::new(
            Opts::new(
                "stepgate_access_reloads_total",
                "Reloads of the callers' tokens and the TLS files, by result (applied, refused)",
            ),
            &["result"],
        )?;
        let in_flight = IntGauge::new(
            "stepgate_requests_in_flight",
            "Requests in progress on the decision listeners (`limits.max_in_flight` bounds it)",
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "stepgate_store_errors_total",
                "Context-store operations that failed, by operation",
            ),
            &["op"],
        )?;
        let degraded = IntCounterVec::new(
            Opts::new(
                "stepgate_degraded_decisions_total",
                "Decisions answered by their tier's failure mode because the context store was slow or unreachable, by journey, tier and reason",
            ),
            &["journey", "tier", "reason"],
        )?;
        let erasures = IntCounterVec::new(
            Opts::new(
                "stepgate_erasures_total",
                "ForgetUser erasures carried out, by scope (tenant, all_tenants) and result",
            ),
            &["scope", "result"],
        )?;
        let store_round_trips = prometheus::IntCounter::new(
            "stepgate_store_round_trips_total",
            "Network round trips to the shared context store (0 with the memory store)",
        )?;
        registry.register(Box::new(store_round_trips.clone()))?;
        let policy_cache = IntCounterVec::new(
            Opts::new(
                "stepgate_policy_cache_total",
                "Decisions by what the policy cache did: hit (an earlier answer for the same context reused), miss (evaluated and kept), bypass (not memoised)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(policy_cache.clone()))?;
        let result = |r: CacheResult| policy_cache.with_label_values(&[r.label()]);
        let policy_cache_family = policy_cache.clone();
        let policy_cache = CacheCounters {
            hit: result(CacheResult::Hit),
            miss: result(CacheResult::Miss),
            bypass: result(CacheResult::Bypass),
        };
        for counter in [
            &degraded,
            &erasures,
            &decisions,
            &step_ups,
            &signals,
            &log_lines,
            &unmapped,
            &reloads,
            &shadow_divergences,
            &shadow_errors,
            &reports,
            &refused,
            &store_errors,
            &access_reloads,
        ] {
            registry.register(Box::new(counter.clone()))?;
        }
        registry.register(Box::new(in_flight.clone()))?;
        for result in ["applied", "refused"] {
            access_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(policy_info.clone()))?;
        registry.register(Box::new(store_entries.clone()))?;
        registry.register(Box::new(store_evictions.clone()))?;
        for kind in ["users", "ips"] {
            store_evictions.with_label_values(&[kind]);
        }
        registry.register(Box::new(ready.clone()))?;
        // Every closed-set series exists from the start, so a rate over
        // it is defined before the first event.
        for result in [LogResult::Written, LogResult::Dropped, LogResult::Failed] {
            log_lines.with_label_values(&[result.label()]);
        }
        for signal in crate::signals::risk::SIGNALS {
            signals.with_label_values(&[signal]);
        }
        Ok(Self {
            registry,
            decisions,
            step_ups,
            latency,
            signals,
            policy_info,
            store_entries,
            store_evictions,
            log_lines,
            unmapped,
            ready,
            reloads,
            shadow_divergences,
            shadow_errors,
            reports,
            refused,
            store_errors,
            access_reloads,
            in_flight,
            degraded,
            erasures,
            store_round_trips,
            policy_cache,
            policy_cache_family,
        })
    }

    /// Counts what the policy cache did for one decision.
    pub fn policy_cache(&self, result: CacheResult) {
        self.policy_cache.of(result).inc();
    }

    pub fn policy_cache_count(&self, result: CacheResult) -> u64 {
        self.policy_cache.of(result).get()
    }

    /// The name of every family this registry exports (some only once
    /// their first series exists).
    pub fn families(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 22] = [
            &self.decisions,
            &self.step_ups,
            &self.latency,
            &self.signals,
            &self.policy_info,
            &self.store_entries,
            &self.store_evictions,
            &self.log_lines,
            &self.unmapped,
            &self.ready,
            &self.reloads,
            &self.shadow_divergences,
            &self.shadow_errors,
            &self.reports,
            &self.refused,
            &self.store_errors,
            &self.degraded,
            &self.erasures,
            &self.store_round_trips,
            &self.access_reloads,
            &self.in_flight,
            &self.policy_cache_family,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }

    /// A decision made through `door` for `caller`, `latency` after the
    /// request arrived.
    pub fn decision(
        &self,
        door: &str,
        caller: &str,
        journey: &str,
        tier: Tier,
        outcome: Outcome,
        latency: Duration,
    ) {
        self.decisions
            .with_label_values(&[door, caller, journey, tier.as_str(), outcome.as_str()])
            .inc();
        if let Outcome::StepUp(level) = outcome {
            self.step_ups
                .with_label_values(&[journey, level_label(level)])
                .inc();
        }
        self.latency
            .with_label_values(&[door])
            .observe(latency.as_secs_f64());
    }

    pub fn decisions(
        &self,
        door: &str,
        caller: &str,
        journey: &str,
        tier: Tier,
        outcome: Outcome,
    ) -> u64 {
        self.decisions
            .with_label_values(&[door, caller, journey, tier.as_str(), outcome.as_str()])
            .get()
    }

    /// A risk signal that contributed to a decision's score.
    pub fn signal_fired(&self, signal: &str) {
        self.signals.with_label_values(&[signal]).inc();
    }

    /// The version now serving for `role`; the previous one's series goes.
    /// The set's reload series are made at zero the first time, so the
    /// first refused reload is an increase an alert can see.
    pub fn policy_version(&self, role: PolicyRole, version: &str) {
        for metric in self
            .registry
            .gather()
            .iter()
            .filter(|family| family.name() == "stepgate_policy_info")
            .flat_map(|family| family.get_metric())
        {
            let labels = metric.get_label();
            let set = labels.iter().find(|l| l.name() == "set").map(|l| l.value());
            let old = labels
                .iter()
                .find(|l| l.name() == "version")
                .map(|l| l.value());
            if let (Some(set), Some(old)) = (set, old)
                && set == role.label()
                && old != version
            {
                let _ = self.policy_info.remove_label_values(&[set, old]);
            }
        }
        self.policy_info
            .with_label_values(&[role.label(), version])
            .set(1);
        for result in [
            ReloadResult::Applied,
            ReloadResult::Unchanged,
            ReloadResult::Refused,
        ] {
            self.reloads
                .with_label_values(&[role.label(), result.label()]);
        }
    }

    /// What a decision-log line came to.
    pub fn log_line(&self, result: LogResult) {
        self.log_lines.with_label_values(&[result.label()]).inc();
    }

    /// `count` decision-log lines that came to `result`.
    pub fn log_lines_by(&self, result: LogResult, count: u64) {
        self.log_lines
            .with_label_values(&[result.label()])
            .inc_by(count);
    }

    pub fn log_lines(&self, result: LogResult) -> u64 {
        self.log_lines.with_label_values(&[result.label()]).get()
    }

    /// A gateway request no route maps, answered per `gateway.unmapped`.
    pub fn unmapped(&self, door: &str, answer: &str) {
        self.unmapped.with_label_values(&[door, answer]).inc();
    }

    /// Whether the service takes requests.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The store's size as of now; set before each scrape.
    pub fn store(&self, stats: StoreStats) {
        let gauge = |g: &IntGaugeVec, kind: &str, value: u64| {
            g.with_label_values(&[kind])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge(&self.store_entries, "users", stats.users);
        gauge(&self.store_entries, "ips", stats.ips);
        gauge(&self.store_entries, "decisions", stats.decisions);
        // The store keeps running totals; the counters catch up to them.
        for (kind, total) in [("users", stats.user_evictions), ("ips", stats.ip_evictions)] {
            let counter = self.store_evictions.with_label_values(&[kind]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.store_round_trips.inc_by(
            stats
                .round_trips
                .saturating_sub(self.store_round_trips.get()),
        );
    }

    /// A decision answered by its tier's failure mode; `reason` is a
    /// [`crate::store::StoreError::reason`] code.
    pub fn degraded(&self, journey: &str, tier: Tier, reason: &str) {
        self.degraded
            .with_label_values(&[journey, tier.as_str(), reason])
            .inc();
    }

    /// Degraded decisions counted for `journey` so far, for tests.
    pub fn degraded_count(&self, journey: &str, tier: Tier, reason: &str) -> u64 {
        self.degraded
            .with_label_values(&[journey, tier.as_str(), reason])
            .get()
    }

    /// An erasure: `scope` is `tenant` or `all_tenants`, `result` `erased`
    /// or a fault code. Never the identifier.
    pub fn erasure(&self, scope: &str, result: &str) {
        self.erasures.with_label_values(&[scope, result]).inc();
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

    /// A request answered with a fault (refused, or failed); `rpc` and
    /// `fault` come from closed sets, `caller` from `[[callers]]`.
    pub fn refused(&self, rpc: &str, caller: &str, fault: &str) {
        self.refused.with_label_values(&[rpc, caller, fault]).inc();
    }

    pub fn refusals(&self, rpc: &str, caller: &str, fault: &str) -> u64 {
        self.refused.with_label_values(&[rpc, caller, fault]).get()
    }

    /// A reload of the callers' tokens and TLS files.
    pub fn access_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.access_reloads.with_label_values(&[result]).inc();
    }

    pub fn access_reloads(&self, applied: bool) -> u64 {
        let result = if applied { "applied" } else { "refused" };
        self.access_reloads.with_label_values(&[result]).get()
    }

    /// Requests in progress now.
    pub fn set_in_flight(&self, count: usize) {
        self.in_flight.set(i64::try_from(count).unwrap_or(i64::MAX));
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

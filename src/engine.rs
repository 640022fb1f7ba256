//! One decision, top to bottom: journey lookup, stored context, signals,
//! risk, the ladder, the record. And the other direction: a reported outcome
//! teaching the store.
//!
//! Transport-agnostic: the gRPC adapter hands in validated domain input and
//! maps [`EngineError`] to statuses in one place.

use std::sync::Arc;

use arc_swap::ArcSwap;

use std::borrow::Cow;
use std::net::IpAddr;

use crate::access::Operation;
use crate::config::Config;
use crate::decision::{
    DecideInput, Decision, DecisionId, FieldError, ForgetInput, Outcome, ReportEffect, ReportInput,
    ReportJudgement, UnixSeconds,
};
use crate::fault::FaultKind;
use crate::geo::{GeoDatabases, GeoLookup};
use crate::metrics::{Metrics, PolicyRole, ReloadResult};
use crate::policy::{
    self, Asked, ContextParts, JourneyEntry, JourneyPolicies, LadderError, LadderMemo,
    LadderRequest, PolicySnapshot,
};
use crate::pseudonym::{HashedId, Pseudonymizer};
use crate::record::{Call, DecisionLog, DecisionRecord, Door, Privacy, Recorder, ReportRecord};
use crate::reporting::Against;
use crate::signals::address::ClientAddressing;
use crate::signals::{self, IpList, Signals, Sources, TravelLimits};
use crate::store::{
    ContextStore, CountryCode, Erased, Erasure, IssuedDecision, JourneyKey, Lookup, Record,
    StoreError, StoredContext, StoredLocation, UserKey,
};

/// A request the engine refuses: the caller's mistake. Nothing was stored.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Refusal {
    #[error("`{field}`: `{journey}` is not a journey in the catalog")]
    UnknownJourney {
        field: &'static str,
        journey: String,
    },
    #[error("`attributes`: do not match the schema for journey `{journey}`: {message}")]
    Attributes { journey: String, message: String },
    /// A field broke a rule only the core can check (one that needs the
    /// clock or stored context).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The caller may not ask this.
    #[error(transparent)]
    NotPermitted(#[from] crate::access::NotPermitted),
    /// The request's deadline passed before its work was done; the work
    /// was abandoned before anything was stored.
    #[error("deadline exceeded: the request's time ran out before its answer; nothing was stored")]
    DeadlineExceeded,
}

/// The service's own fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ServerFault {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why the engine gave no answer: the caller's mistake or its own fault.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EngineError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Failed(#[from] ServerFault),
}

impl EngineError {
    fn internal(message: impl std::fmt::Display) -> Self {
        Self::Failed(ServerFault::Internal(message.to_string()))
    }

    fn attributes(journey: &str, message: impl std::fmt::Display) -> Self {
        Self::Refused(Refusal::Attributes {
            journey: journey.to_owned(),
            message: message.to_string(),
        })
    }

    /// Which fault this is.
    pub fn kind(&self) -> FaultKind {
        match self {
            Self::Refused(Refusal::UnknownJourney { .. }) => FaultKind::UnknownJourney,
            Self::Refused(Refusal::Attributes { .. }) => FaultKind::InvalidAttributes,
            Self::Refused(Refusal::Invalid(_)) => FaultKind::InvalidArgument,
            Self::Refused(Refusal::NotPermitted(_)) => FaultKind::PermissionDenied,
            Self::Refused(Refusal::DeadlineExceeded) => FaultKind::DeadlineExceeded,
            Self::Failed(ServerFault::Store(_)) => FaultKind::StoreUnavailable,
            Self::Failed(ServerFault::Internal(_)) => FaultKind::Internal,
        }
    }

    /// The field at fault, when the caller broke a rule.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Refused(Refusal::UnknownJourney { field, .. }) => Some(field),
            Self::Refused(Refusal::Attributes { .. }) => Some("attributes"),
            Self::Refused(Refusal::Invalid(e)) => Some(&e.field),
            Self::Refused(Refusal::NotPermitted(e)) => Some(e.field()),
            Self::Refused(Refusal::DeadlineExceeded) | Self::Failed(_) => None,
        }
    }
}

impl From<FieldError> for EngineError {
    fn from(err: FieldError) -> Self {
        Self::Refused(Refusal::Invalid(err))
    }
}

impl From<StoreError> for EngineError {
    fn from(err: StoreError) -> Self {
        Self::Failed(ServerFault::Store(err))
    }
}

/// A decision with its identity, ready to send.
#[derive(Debug, Clone)]
pub struct Answer {
    pub decision_id: DecisionId,
    pub decision: Decision,
    /// The acr value for a step-up.
    pub required_acr: Option<String>,
    pub degraded: bool,
}

pub struct Engine {
    policies: ArcSwap<PolicySnapshot>,
    /// The candidate set evaluated beside the live one, when configured.
    shadow: Option<ArcSwap<PolicySnapshot>>,
    /// Serialises reloads, so a slow one cannot land after a newer one.
    reloading: std::sync::Mutex<()>,
    /// Metrics and the decision log: the record step.
    recorder: Recorder,
    store: Arc<dyn ContextStore>,
    pseudonymizer: Pseudonymizer,
    deny_list: IpList,
    /// How client addresses that embed an IPv4 address are read.
    addressing: ClientAddressing,
    geo: Arc<GeoDatabases>,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    /// When a degraded answer was last logged (unix seconds).
    degraded_logged: std::sync::atomic::AtomicI64,
    /// Answers already made for a context (`policy_cache`); `None`: off.
    memo: Option<LadderMemo>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.policies.load())
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(
        policies: impl Into<Arc<PolicySnapshot>>,
        store: Arc<dyn ContextStore>,
        pseudonymizer: Pseudonymizer,
        deny_list: IpList,
        geo: Arc<GeoDatabases>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // `Config::validate` and `app::build_engine` refuse a bad prefix; a
        // config built in code can still hold one: keep the good ones and
        // say which is ignored.
        let (addressing, invalid) = ClientAddressing::lenient(&config.network.nat64_prefixes);
        for error in invalid {
            tracing::error!(%error, "`network.nat64_prefixes`: prefix ignored");
        }
        let policies: Arc<PolicySnapshot> = policies.into();
        metrics.policy_version(PolicyRole::Live, policies.version());
        Self {
            policies: ArcSwap::new(policies),
            shadow: None,
            reloading: std::sync::Mutex::new(()),
            recorder: Recorder::without_log(metrics),
            store,
            pseudonymizer,
            deny_list,
            addressing,
            geo,
            clock: Arc::new(SystemClock),
            degraded_logged: std::sync::atomic::AtomicI64::new(i64::MIN),
            memo: (config.policy_cache.entries > 0)
                .then(|| LadderMemo::new(config.policy_cache.entries)),
            config,
        }
    }

    /// Replaces the clock the adapters read.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Evaluates `shadow` beside the live set on every decision, for
    /// comparison only.
    #[must_use]
    pub fn with_shadow(mut self, shadow: PolicySnapshot) -> Self {
        self.recorder
            .metrics()
            .policy_version(PolicyRole::Shadow, shadow.version());
        self.shadow = Some(ArcSwap::from_pointee(shadow));
        self
    }

    /// Writes the decision log to `log`, saying what `privacy` allows.
    #[must_use]
    pub fn with_decision_log(mut self, log: DecisionLog, privacy: Privacy) -> Self {
        self.recorder = Recorder::new(self.recorder.metrics().clone(), log, privacy);
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.recorder.metrics()
    }

    /// The record step: what doors count and log refusals with.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The shadow snapshot, when one is configured.
    pub fn shadow_policies(&self) -> Option<Arc<PolicySnapshot>> {
        self.shadow.as_ref().map(ArcSwap::load_full)
    }

    /// Reads and validates the configured directory of one policy set in
    /// full and, if it holds a new version, swaps it in atomically: every
    /// decision is made by exactly one version. A directory that does not
    /// validate is refused with its problems logged, and the last good set
    /// keeps serving. Blocking: parsing and validating takes milliseconds.
    pub fn reload_policies(&self, role: PolicyRole) -> ReloadResult {
        let (slot, dir) = match role {
            PolicyRole::Live => (&self.policies, &self.config.policies_dir),
            PolicyRole::Shadow => match (&self.shadow, &self.config.shadow_policies_dir) {
                (Some(slot), Some(dir)) => (slot, dir),
                _ => return ReloadResult::Unchanged,
            },
        };
        // A poisoned lock only means an earlier reload panicked; the swap
        // below is still atomic.
        let _serial = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let serving = slot.load_full();
        let policy::Reloaded {
            checked,
            refused_tenants,
        } = PolicySnapshot::check_reload(dir, &serving);
        for (tenant, err) in &refused_tenants {
            // The other tenants and the base set still change.
            tracing::error!(
                policy.set = role.label(),
                policy.tenant = tenant.as_str(),
                problems = err.problems.len(),
                error = %err,
                "tenant policy change refused; the tenant is served its last good policies on the current base set (the base set alone if it never had good ones)"
            );
            self.recorder
                .metrics()
                .reload(role, ReloadResult::TenantRefused);
        }
        let result = match checked.snapshot {
            Ok(next)
                if next.version() == serving.version()
                    && next.tenant_versions() == serving.tenant_versions() =>
            {
                ReloadResult::Unchanged
            }
            Ok(next)
                if role == PolicyRole::Live
                    && !next.route_problems(&self.config.gateway.routes).is_empty() =>
            {
                // The gateway's routes would name journeys (or attributes)
                // the new set lacks: every such request would fail.
                tracing::error!(
                    policy.set = role.label(),
                    policy.version = serving.version(),
                    policy.refused_version = next.version(),
                    problems = next
                        .route_problems(&self.config.gateway.routes)
                        .join("; ")
                        .as_str(),
                    "policy change refused: `gateway.routes` do not fit it; the last good version keeps serving"
                );
                ReloadResult::Refused
            }
            Ok(next) => {
                let lost = lost_permits(&serving, &next);
                if lost.is_empty() {
                    policy::log_warnings(role.label(), next.version(), &checked.warnings);
                    self.recorder.metrics().policy_version(role, next.version());
                    let previous = slot.swap(Arc::new(next));
                    if let (PolicyRole::Live, Some(memo)) = (role, &self.memo) {
                        // Keyed by the old slices, they would never be asked
                        // for again; free the room now.
                        memo.clear();
                    }
                    tracing::info!(
                        policy.set = role.label(),
                        policy.version = slot.load().version(),
                        policy.previous_version = previous.version(),
                        policy.count = slot.load().policy_count(),
                        policy.tenants = slot.load().tenant_versions().len(),
                        "policies reloaded"
                    );
                    ReloadResult::Applied
                } else {
                    // Valid Cedar, but most likely a truncated or half-saved
                    // file: refuse rather than deny a whole journey by
                    // accident.
                    tracing::error!(
                        policy.set = role.label(),
                        policy.version = serving.version(),
                        policy.refused_version = next.version(),
                        journeys = lost.join(","),
                        "policy change refused: no permit would apply to journeys the serving set permits, so every request for them would be denied; the last good version keeps serving"
                    );
                    ReloadResult::Refused
                }
            }
            Err(err) => {
                tracing::error!(
                    policy.set = role.label(),
                    policy.version = slot.load().version(),
                    problems = err.problems.len(),
                    error = %err,
                    "policy change refused; the last good version keeps serving"
                );
                ReloadResult::Refused
            }
        };
        self.recorder.metrics().reload(role, result);
        result
    }

    /// The configuration the engine was built with, for the doors.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The configured acr values and their aliases, for doors that read
    /// or write them.
    pub fn acr(&self) -> &crate::config::AcrConfig {
        &self.config.acr
    }

    pub fn geo(&self) -> &Arc<GeoDatabases> {
        &self.geo
    }

    /// What the databases say about an address; reserved addresses are
    /// never looked up.
    fn locate(&self, ip: std::net::IpAddr) -> GeoLookup {
        if signals::ip::is_reserved(ip) {
            GeoLookup::default()
        } else {
            self.geo.lookup(ip)
        }
    }

    /// The address a client is known by: an IPv6 address that embeds an
    /// IPv4 one is read as that IPv4 address.
    pub fn client_ip(&self, ip: IpAddr) -> IpAddr {
        self.addressing.client(ip)
    }

    /// A user id as this deployment compares accounts.
    pub fn user_id<'a>(&self, id: &'a str) -> Cow<'a, str> {
        crate::identifiers::normalise(self.config.identifiers.user_id_normalization, id)
    }

    /// Refuses times from the caller that lie beyond the allowed clock skew
    /// ahead of `now`; within it they read as now.
    fn check_times(&self, input: &DecideInput, now: UnixSeconds) -> Result<(), EngineError> {
        let skew = self.config.limits.clock_skew();
        match input.authn.auth_time {
            Some(at) if at > now.saturating_add(skew) => Err(FieldError::new(
                "authn.auth_time",
                format!(
                    "{at} is {} s ahead of the server clock; at most {skew} s of clock skew is allowed (send unix seconds, not milliseconds)",
                    at.saturating_sub(now)
                ),
            )
            .into()),
            _ => Ok(()),
        }
    }

    /// The policy snapshot now serving.
    pub fn policies(&self) -> Arc<PolicySnapshot> {
        self.policies.load_full()
    }

    pub fn store(&self) -> &Arc<dyn ContextStore> {
        &self.store
    }

    /// Everything the ladder needs for one request: the snapshot it will be
    /// judged by, the signals and the Cedar entities. Reads the store, never
    /// writes it.
    pub async fn prepare(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
    ) -> Result<Prepared, EngineError> {
        self.prepare_adjusted(input, now, &|_| {}).await
    }

    /// A store call, bounded by the store's budget and what is left of
    /// `deadline`: the store never makes an answer miss its caller's
    /// deadline.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
        deadline: Option<std::time::Instant>,
    ) -> Result<T, StoreError> {
        let Some(budget) = self.store.budget() else {
            return call.await;
        };
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        within(left.map_or(budget, |left| left.min(budget)), call).await
    }

    /// [`Self::prepare`], with the gathered signals passed through `adjust`
    /// before the context is built (policy tests set signals directly).
    pub async fn prepare_adjusted(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
        adjust: &(dyn Fn(&mut Signals) + Sync),
    ) -> Result<Prepared, EngineError> {
        let prepared = self.gather(input, now, adjust, None).await?;
        match prepared.degraded {
            Some(error) => Err(error.into()),
            None => Ok(prepared),
        }
    }

    /// Gathers what judging needs: the only step that does I/O (the
    /// store), and the only one that may degrade. A store too slow for its
    /// budget or `deadline`, or unreachable, leaves `degraded` set and the
    /// signals gathered as if nothing were stored.
    async fn gather(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
        adjust: &(dyn Fn(&mut Signals) + Sync),
        deadline: Option<std::time::Instant>,
    ) -> Result<Prepared, EngineError> {
        // The tenant's own set when it has one (tenants/<tenant>/).
        let snapshot = self.policies.load_full().for_tenant(&input.subject.tenant);
        // The journey is resolved here (its catalog entry for the tier, its
        // policies for the rest) and passed on in `Prepared`: nothing after
        // this looks it up by name again.
        let (entry, _) = journey(&snapshot, &input.journey)?;
        let tier = entry.tier;
        let policies = snapshot
            .journey_shared(&input.journey)
            .ok_or_else(|| EngineError::internal("a catalogued journey without policies"))?;
        let action = policies.action().clone();
        snapshot
            .check_attributes(&input.journey, &input.attributes)
            .map_err(|message| EngineError::attributes(&input.journey, message))?;
        self.check_times(input, now)?;
        let user_id = self.user_id(&input.subject.user_id);
        let user = self.pseudonymizer.user_key(&input.subject.tenant, &user_id);
        let ip = self.client_ip(input.ip);
        let located = self.locate(ip);
        let lookup = Lookup {
            user,
            device: input
                .device_id
                .as_deref()
                .map(|d| self.pseudonymizer.device(d)),
            ip,
            country: located.country.as_deref().and_then(CountryCode::parse),
        };
        let (stored, degraded) = match self
            .bounded(self.store.lookup(&lookup, now), deadline)
            .await
        {
            Ok(stored) => (stored, None),
            // The caller's own deadline, not the store's budget, ran out:
            // no one is waiting for a degraded answer.
            Err(_) if expired(deadline) => return Err(Refusal::DeadlineExceeded.into()),
            Err(error) => (StoredContext::default(), Some(error)),
        };
        let sources = Sources {
            deny_list: &self.deny_list,
            risk: &self.config.risk,
            travel: TravelLimits {
                max_speed_kmh: self.config.geo.impossible_travel_kmh,
                min_distance_km: self.config.geo.impossible_travel_min_km,
                max_accuracy_km: self.config.geo.travel_max_accuracy_km,
            },
        };
        let mut signals = signals::gather(input, ip, tier, &stored, &located, &sources, now);
        adjust(&mut signals);
        Ok(Prepared {
            principal: snapshot.principal(&user_id),
            resource: snapshot.resource(&input.subject.tenant),
            action,
            journey: policies,
            snapshot,
            user,
            device: lookup.device,
            ip,
            tier,
            signals,
            degraded,
            compromised_since: stored.user.compromised_since,
        })
    }

    /// The Cedar request for the user's current level with the context in
    /// full (the ladder itself builds only the fields its policies read),
    /// for benchmarks and explanations.
    pub async fn cedar_request(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
    ) -> Result<cedar_policy::Request, EngineError> {
        let prepared = self.prepare(input, now).await?;
        let context = ContextParts::full(&prepared.signals, &input.attributes)
            .and_then(|parts| parts.at(input.authn.aal))
            .map_err(EngineError::internal)?;
        cedar_policy::Request::new(
            prepared.principal,
            prepared.action,
            prepared.resource,
            context,
            None,
        )
        .map_err(EngineError::internal)
    }

    /// Decides `input` now, by the engine's clock, and records the
    /// decision (metrics and decision log) as `call`'s: what every door
    /// calls.
    /// Refused, with nothing read or stored, if `call`'s caller may not
    /// ask about this journey or tenant; abandoned, with nothing stored,
    /// if `call`'s deadline passes first.
    pub async fn decide(&self, input: &DecideInput, call: &Call) -> Result<Answer, EngineError> {
        let operation = match call.door {
            Door::ExtAuthz | Door::ForwardAuth => Operation::Check,
            Door::Grpc | Door::Http | Door::Hook | Door::AuthZen => Operation::Decide,
        };
        call.caller()
            .may(operation, &input.journey, &input.subject.tenant)
            .map_err(Refusal::from)?;
        let decided = self
            .judge(input, self.clock.now(), &|_| {}, call.deadline())
            .await?;
        self.recorder.decision(DecisionRecord {
            call,
            input,
            answer: &decided.answer,
            signals: decided.signals,
            user: decided.user.id,
            device: decided.device,
            ip: decided.ip,
        });
        Ok(decided.answer)
    }

    /// Decides `input` as at `now`, recording nothing (policy tests,
    /// benches).
    pub async fn decide_at(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
    ) -> Result<Answer, EngineError> {
        self.decide_adjusted(input, now, &|_| {}).await
    }

    /// Why `input` gets its answer: the context, the risk score and every
    /// rung of the ladder. Reads the store, never writes it; logs nothing.
    pub async fn explain(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
        adjust: &(dyn Fn(&mut Signals) + Sync),
    ) -> Result<policy::explain::Explanation, EngineError> {
        let prepared = self.prepare_adjusted(input, now, adjust).await?;
        let parts = prepared.context(input)?;
        let request = LadderRequest {
            principal: &prepared.principal,
            journey: &prepared.journey,
            resource: &prepared.resource,
            context: &parts,
        };
        let internal = |e: LadderError| EngineError::internal(e);
        let full = ContextParts::full(&prepared.signals, &input.attributes)
            .map_err(|e| internal(e.into()))?;
        policy::explain::explain(
            &prepared.snapshot,
            &request,
            input.authn.aal,
            &prepared.signals,
            &full,
        )
        .map_err(internal)
    }

    /// [`Self::decide_at`] with the signals passed through `adjust` first.
    pub async fn decide_adjusted(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
        adjust: &(dyn Fn(&mut Signals) + Sync),
    ) -> Result<Answer, EngineError> {
        Ok(self.judge(input, now, adjust, None).await?.answer)
    }

    /// The decision and what the record step needs besides.
    async fn judge(
        &self,
        input: &DecideInput,
        now: UnixSeconds,
        adjust: &(dyn Fn(&mut Signals) + Sync),
        deadline: Option<std::time::Instant>,
    ) -> Result<Decided, EngineError> {
        let Prepared {
            snapshot,
            journey: policies,
            user,
            device,
            ip,
            tier,
            signals,
            principal,
            resource,
            degraded,
            compromised_since,
            ..
        } = self.gather(input, now, adjust, deadline).await?;
        if let Some(error) = degraded {
            return Ok(self.degraded(input, tier, &error, &snapshot, signals, (user, device, ip)));
        }
        let asked = Asked {
            aal: input.authn.aal,
            principal: &principal,
            resource: &resource,
            signals: &signals,
            attributes: &input.attributes,
        };
        let (result, cached) =
            policy::memo::evaluate(self.memo.as_ref(), &snapshot, &policies, &asked).map_err(
                |e| match e {
                    LadderError::Attributes(e) => EngineError::attributes(&input.journey, e),
                    e => EngineError::internal(e),
                },
            )?;
        self.recorder.metrics().policy_cache(cached);
        for fault in &result.faults {
            tracing::warn!(
                policy.id = fault.policy_id.as_str(),
                policy.version = snapshot.version(),
                error = fault.message.as_str(),
                "policy failed to evaluate; its level counted as not permitted"
            );
        }
        let decision_id = DecisionId::new();
        if let Some(shadow) = &self.shadow {
            let shadow = shadow.load_full().for_tenant(&input.subject.tenant);
            let live = Judged {
                snapshot: &snapshot,
                result: &result,
            };
            self.compare_shadow(&shadow, live, input, &asked, decision_id);
        }
        // Remembered so the outcome reported for it is judged against what
        // it asked for: the user's own level for an ALLOW, the step-up level
        // for a STEP_UP, nothing for a DENY.
        let issued = IssuedDecision {
            user,
            device,
            journey: JourneyKey::of(&input.journey),
            ip,
            from: input.authn.aal,
            demand: match result.outcome {
                Outcome::Allow => Some(input.authn.aal),
                Outcome::StepUp(level) => Some(level),
                Outcome::Deny => None,
            },
            reauth: result.outcome == Outcome::StepUp(input.authn.aal),
            compromise: compromised_since,
        };
        // Past the deadline the caller has stopped waiting: nothing is
        // remembered for an answer no one reads.
        if expired(deadline) {
            return Err(Refusal::DeadlineExceeded.into());
        }
        // The answer stands without it: a report naming a decision the
        // store could not keep is judged as one naming a forgotten decision.
        if let Err(error) = self
            .bounded(
                self.store.remember_decision(decision_id, &issued, now),
                deadline,
            )
            .await
        {
            self.recorder.metrics().store_error("remember_decision");
            tracing::warn!(%error, decision.id = %decision_id, "decision not remembered; reports naming it are judged without it");
        }
        let result = Arc::unwrap_or_clone(result);
        let decision = Decision {
            outcome: result.outcome,
            max_age: result.max_age,
            reasons: result.reasons,
            faults: result.faults,
            risk: signals.risk.clone(),
            policy_version: snapshot.version().to_owned(),
        };
        let required_acr = match decision.outcome {
            Outcome::StepUp(aal) => Some(self.config.acr.for_level(aal).to_owned()),
            Outcome::Allow | Outcome::Deny => None,
        };
        Ok(Decided {
            answer: Answer {
                decision_id,
                decision,
                required_acr,
                degraded: false,
            },
            signals,
            user,
            device,
            ip,
        })
    }

    /// The answer of a decision the store could not inform: the tier's
    /// failure mode (`store.on_failure`), marked degraded, with the store's
    /// reason code as its reason, and counted. Nothing is remembered, as
    /// the store is not answering.
    fn degraded(
        &self,
        input: &DecideInput,
        tier: crate::decision::Tier,
        error: &StoreError,
        snapshot: &PolicySnapshot,
        signals: Signals,
        (user, device, ip): (UserKey, Option<HashedId>, IpAddr),
    ) -> Decided {
        use crate::config::FailureMode;
        let have = input.authn.aal;
        let outcome = match self.config.store.on_failure.for_tier(tier) {
            FailureMode::Allow => Outcome::Allow,
            FailureMode::StepUp(level) if have >= level => Outcome::Allow,
            FailureMode::StepUp(level) => Outcome::StepUp(level),
            FailureMode::Deny => Outcome::Deny,
        };
        self.recorder
            .metrics()
            .degraded(&input.journey, tier, error.reason());
        // One line per DEGRADED_LOG_SECS at most: an outage must not
        // flood the log (the metric counts every answer).
        let now = self.clock.now();
        let last = self
            .degraded_logged
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= DEGRADED_LOG_SECS
            && self
                .degraded_logged
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                %error,
                journey = input.journey.as_str(),
                tier = tier.as_str(),
                outcome = crate::metrics::outcome_label(outcome),
                "context store unavailable; answering by the tiers' failure modes (logged at most every {DEGRADED_LOG_SECS} s; stepgate_degraded_decisions_total counts every answer)"
            );
        }
        let required_acr = match outcome {
            Outcome::StepUp(aal) => Some(self.config.acr.for_level(aal).to_owned()),
            Outcome::Allow | Outcome::Deny => None,
        };
        Decided {
            answer: Answer {
                decision_id: DecisionId::new(),
                decision: Decision {
                    outcome,
                    max_age: None,
                    reasons: vec![crate::decision::Reason {
                        policy_id: error.reason().to_owned(),
                        message: format!(
                            "the context store did not answer ({}); the {} tier's failure mode decided",
                            match error {
                                StoreError::Timeout { .. } => "too slow",
                                StoreError::Unavailable(_) | StoreError::Setup(_) => "unreachable",
                            },
                            tier.as_str()
                        ),
                    }],
                    faults: Vec::new(),
                    risk: signals.risk.clone(),
                    policy_version: snapshot.version().to_owned(),
                },
                required_acr,
                degraded: true,
            },
            signals,
            user,
            device,
            ip,
        }
    }

    /// Evaluates the request on the shadow set and counts and logs a
    /// different outcome. Never fails the request: a shadow set that cannot
    /// answer is counted and logged too.
    fn compare_shadow(
        &self,
        shadow: &PolicySnapshot,
        live: Judged<'_>,
        input: &DecideInput,
        asked: &Asked<'_>,
        decision_id: DecisionId,
    ) {
        let signals = asked.signals;
        if shadow.version() == live.snapshot.version() {
            // The same files: the same answer, by construction.
            return;
        }
        let evaluated = journey(shadow, &input.journey)
            .map_err(|e| e.to_string())
            .and_then(|(entry, policies)| {
                // The shadow's catalog may give the journey another tier.
                let retiered;
                let signals = if entry.tier == signals.tier {
                    signals
                } else {
                    retiered = Signals {
                        tier: entry.tier,
                        ..signals.clone()
                    };
                    &retiered
                };
                let context = ContextParts::new(signals, &input.attributes, policies.shape())
                    .map_err(|e| e.to_string())?;
                let request = LadderRequest {
                    principal: asked.principal,
                    journey: policies,
                    resource: asked.resource,
                    context: &context,
                };
                policy::ladder::evaluate(shadow, &request, input.authn.aal)
                    .map_err(|e| e.to_string())
            });
        match evaluated {
            Ok(result) if result.outcome == live.result.outcome => {}
            Ok(result) => {
                self.recorder.metrics().shadow_divergence(
                    &input.journey,
                    live.result.outcome,
                    result.outcome,
                );
                tracing::info!(
                    target: "stepgate::shadow",
                    journey = input.journey.as_str(),
                    decision.id = %decision_id,
                    live.outcome = crate::metrics::outcome_label(live.result.outcome),
                    live.reasons = %reason_ids(&live.result.reasons),
                    live.version = live.snapshot.version(),
                    shadow.outcome = crate::metrics::outcome_label(result.outcome),
                    shadow.reasons = %reason_ids(&result.reasons),
                    shadow.version = shadow.version(),
                    "shadow policy set would have answered differently"
                );
            }
            Err(error) => {
                self.recorder.metrics().shadow_error(&input.journey);
                tracing::warn!(
                    target: "stepgate::shadow",
                    journey = input.journey.as_str(),
                    decision.id = %decision_id,
                    shadow.version = shadow.version(),
                    error = error.as_str(),
                    "shadow policy set could not answer"
                );
            }
        }
    }

    /// Judges a reported outcome (see [`crate::reporting`]) and teaches the
    /// store what it means: a sign-in completed at the level asked for
    /// makes the device, the country and the position known and resets the
    /// user's failures; a failure is counted; a partial success teaches
    /// nothing. A success naming a decision about another user, journey or
    /// device is refused and changes nothing; a failure is counted whatever
    /// it names, since counting one can only make answers stricter.
    /// Records the report (metrics and decision log) as `call`'s.
    pub async fn report(
        &self,
        input: &ReportInput,
        call: &Call,
    ) -> Result<ReportJudgement, EngineError> {
        let caller = call.caller();
        if input.event.is_feedback() {
            // Feedback changes what every journey asks of the account.
            caller.may_give_feedback(&input.journey, &input.subject.tenant)
        } else {
            caller.may(
                Operation::ReportOutcome,
                &input.journey,
                &input.subject.tenant,
            )
        }
        .map_err(Refusal::from)?;
        let reported = self.learn(input, self.clock.now(), call.deadline()).await?;
        self.recorder.report(&ReportRecord {
            call,
            input,
            judgement: &reported.judgement,
            against: reported.against,
            user: reported.user.id,
            device: reported.device,
            ip: reported.ip,
        });
        Ok(reported.judgement)
    }

    /// [`Self::report`] as at `now`, recording nothing (policy tests
    /// replaying a history).
    pub async fn report_at(
        &self,
        input: &ReportInput,
        now: UnixSeconds,
    ) -> Result<ReportJudgement, EngineError> {
        Ok(self.learn(input, now, None).await?.judgement)
    }

    /// Judges a report and changes the store accordingly.
    async fn learn(
        &self,
        input: &ReportInput,
        now: UnixSeconds,
        deadline: Option<std::time::Instant>,
    ) -> Result<Reported, EngineError> {
        journey(&self.policies.load(), &input.journey)?;
        let user_id = self.user_id(&input.subject.user_id);
        let user = self.pseudonymizer.user_key(&input.subject.tenant, &user_id);
        let reported_device = input
            .device_id
            .as_deref()
            .map(|d| self.pseudonymizer.device(d));
        let ip = self.client_ip(input.ip);
        let issued = match input.decision_id {
            Some(id) => {
                self.bounded(self.store.issued_decision(id, now), deadline)
                    .await?
            }
            None => None,
        };
        let against = match (&issued, input.decision_id) {
            (Some(issued), _) => Against::Decision(issued),
            (None, Some(_)) => Against::Forgotten,
            (None, None) => Against::Nothing,
        };
        let judgement = crate::reporting::judge(
            input.event,
            input.reached,
            against,
            self.config.reporting.undecided_min(),
        );
        let record = match (judgement.effect, &issued, input.decision_id) {
            _ if expired(deadline) => return Err(Refusal::DeadlineExceeded.into()),
            (ReportEffect::Completed, Some(issued), Some(id)) => {
                let device = match same_sign_in(issued, id, input, user, reported_device)? {
                    // The decision did not know the device: it learns the
                    // first one a completion names, and only that one.
                    Some(named) if issued.device.is_none() => {
                        match self
                            .bounded(self.store.bind_decision_device(id, named, now), deadline)
                            .await?
                        {
                            Some(bound) if bound != named => {
                                return Err(FieldError::new(
                                    "device.id",
                                    format!(
                                        "decision `{id}` was already completed on another device"
                                    ),
                                )
                                .into());
                            }
                            _ => Some(named),
                        }
                    }
                    device => device,
                };
                // Under a compromise mark only a decision made under it
                // teaches, and its passed step-up lifts the mark.
                let under = Mark {
                    decided_under: issued.compromise,
                    step_up: issued.reauth || issued.demand > Some(issued.from),
                };
                Some(self.completed(user, device, issued.ip, under, now))
            }
            (ReportEffect::Completed, _, _) => {
                Some(self.completed(user, reported_device, ip, Mark::default(), now))
            }
            (ReportEffect::Untrusted, Some(issued), Some(id)) => {
                // What the reported session taught: its device, and the
                // country and position of the address it was judged from.
                let device = same_sign_in(issued, id, input, user, reported_device)?;
                let place = self.place(issued.ip, now);
                Some(self.compromised(user, device, place, Some(id), now))
            }
            // Without the session, only the device it names is known.
            (ReportEffect::Untrusted, _, _) => {
                Some(self.compromised(user, reported_device, (None, None), None, now))
            }
            (ReportEffect::Cleared, Some(issued), Some(id)) => {
                same_sign_in(issued, id, input, user, reported_device)?;
                Some(Record::ConfirmedSafe { user })
            }
            (ReportEffect::Cleared, _, _) => Some(Record::ConfirmedSafe { user }),
            // A failure leaving `device` out was on the decision's device,
            // if the decision was about this user at all.
            (ReportEffect::FailureCounted, _, _) => Some(Record::Failure {
                user,
                device: reported_device.or(issued
                    .as_ref()
                    .filter(|d| d.user == user)
                    .and_then(|d| d.device)),
                ip,
            }),
            (ReportEffect::Partial | ReportEffect::IgnoredDenied, Some(issued), Some(id)) => {
                // Refused like a completion would be, so a caller's
                // mismatch shows up before it matters.
                same_sign_in(issued, id, input, user, reported_device)?;
                None
            }
            (
                ReportEffect::Partial
                | ReportEffect::IgnoredDenied
                | ReportEffect::IgnoredCompromised,
                _,
                _,
            ) => None,
        };
        let mut judgement = judgement;
        if let Some(record) = record {
            if expired(deadline) {
                return Err(Refusal::DeadlineExceeded.into());
            }
            let applied = self
                .bounded(self.store.record(&record, now), deadline)
                .await?;
            if !applied {
                // The account is marked compromised and this sign-in was
                // not decided under the mark: it teaches nothing.
                judgement.effect = ReportEffect::IgnoredCompromised;
            }
        }
        Ok(Reported {
            judgement,
            against: against.label(),
            user,
            device: reported_device,
            ip,
        })
    }

    /// Erases everything stored about `input`'s user (`ForgetUser`): in
    /// its tenant, or in every tenant. Recorded as an erasure (a metric
    /// and a log line) without the identifier. Refused unless `call`'s
    /// caller may erase in that scope; fails with the store's error (gRPC
    /// UNAVAILABLE) when the store cannot do it, so the caller can retry.
    pub async fn forget(&self, input: &ForgetInput, call: &Call) -> Result<Erased, EngineError> {
        let scope = if input.all_tenants {
            "all_tenants"
        } else {
            "tenant"
        };
        call.caller()
            .may_forget((!input.all_tenants).then_some(input.subject.tenant.as_str()))
            .map_err(Refusal::from)?;
        let user_id = self.user_id(&input.subject.user_id);
        let erasure = if input.all_tenants {
            Erasure::AllTenants {
                person: self.pseudonymizer.person(&user_id),
            }
        } else {
            Erasure::Tenant(self.pseudonymizer.user_key(&input.subject.tenant, &user_id))
        };
        // An erasure is no sign-in: it gets the caller's whole deadline,
        // up to a bound, not the store's per-decision budget.
        let limit = std::time::Instant::now() + ERASURE_TIMEOUT;
        let deadline = call.deadline().map_or(limit, |d| d.min(limit));
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let erased = within(left, self.store.forget(&erasure, self.clock.now())).await;
        let metrics = self.recorder.metrics();
        match &erased {
            Ok(erased) => {
                metrics.erasure(scope, "erased");
                tracing::info!(
                    erasure.scope = scope,
                    erasure.users = erased.users,
                    caller = call.caller_name(),
                    "erasure carried out"
                );
            }
            Err(error) => {
                metrics.erasure(scope, FaultKind::StoreUnavailable.code());
                tracing::warn!(
                    erasure.scope = scope,
                    %error,
                    caller = call.caller_name(),
                    "erasure failed; the caller should retry"
                );
            }
        }
        Ok(erased?)
    }

    /// What a sign-in completed from `ip` on `device` teaches, and how it
    /// stands to a compromise mark.
    fn completed(
        &self,
        user: UserKey,
        device: Option<HashedId>,
        ip: IpAddr,
        under: Mark,
        now: UnixSeconds,
    ) -> Record {
        let (country, location) = self.place(ip, now);
        Record::Success {
            user,
            device,
            country,
            location,
            decided_under: under.decided_under,
            step_up: under.step_up,
        }
    }

    /// The country and the position a sign-in from `ip` at `now` is
    /// learned at. Only a position the databases vouch for becomes a
    /// user's last location: see `GeoLookup::travel_position`.
    fn place(&self, ip: IpAddr, now: UnixSeconds) -> (Option<CountryCode>, Option<StoredLocation>) {
        let located = self.locate(ip);
        (
            located.country.as_deref().and_then(CountryCode::parse),
            located
                .travel_position(self.config.geo.travel_max_accuracy_km)
                .map(|l| StoredLocation::new(l.latitude, l.longitude, l.accuracy_km, now)),
        )
    }

    /// What a compromise report un-trusts: `device` and the session's
    /// `place`, with the account marked for `reporting.compromised_secs`.
    fn compromised(
        &self,
        user: UserKey,
        device: Option<HashedId>,
        (country, location): (Option<CountryCode>, Option<StoredLocation>),
        decision: Option<DecisionId>,
        now: UnixSeconds,
    ) -> Record {
        Record::Compromised {
            user,
            device,
            country,
            location,
            decision,
            until: now.saturating_add(
                i64::try_from(self.config.reporting.compromised_secs).unwrap_or(i64::MAX),
            ),
        }
    }
}

/// How a completed decision stands to a compromise mark: the mark it was
/// made under (its start), and whether it was a STEP_UP.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    decided_under: Option<UnixSeconds>,
    step_up: bool,
}

/// The device a success reported for decision `id` teaches. Refuses a
/// report whose user or journey is not the decision's, or that names
/// another device than the decision did. A decision made without a device
/// id demanded the level a new device needs, so the device the report
/// names (one set during the sign-in, say) may be learned from it.
fn same_sign_in(
    issued: &IssuedDecision,
    id: DecisionId,
    input: &ReportInput,
    user: UserKey,
    device: Option<HashedId>,
) -> Result<Option<HashedId>, FieldError> {
    if issued.user != user {
        return Err(FieldError::new(
            "subject",
            format!("is not the subject of decision `{id}`"),
        ));
    }
    if issued.journey != JourneyKey::of(&input.journey) {
        return Err(FieldError::new(
            "journey",
            format!(
                "`{}` is not the journey decision `{id}` was made for",
                input.journey
            ),
        ));
    }
    match (device, issued.device) {
        (Some(reported), Some(decided)) if reported != decided => Err(FieldError::new(
            "device.id",
            format!("is not the device decision `{id}` was made for"),
        )),
        (reported, decided) => Ok(decided.or(reported)),
    }
}

/// Journeys some permit reaches in `serving` but none in `next`.
fn lost_permits(serving: &PolicySnapshot, next: &PolicySnapshot) -> Vec<String> {
    let mut lost: Vec<String> = next
        .catalog()
        .names()
        .filter(|name| {
            let permitted = |s: &PolicySnapshot| {
                s.journey_policies(name)
                    .is_some_and(|j| !j.permits().is_empty())
            };
            permitted(serving) && !permitted(next)
        })
        .map(str::to_owned)
        .collect();
    lost.sort();
    lost
}

/// A decision and what the record step needs besides the request.
struct Decided {
    answer: Answer,
    signals: Signals,
    user: UserKey,
    device: Option<HashedId>,
    ip: IpAddr,
}

/// A judged report and what the record step needs besides the request.
struct Reported {
    judgement: ReportJudgement,
    against: &'static str,
    user: UserKey,
    device: Option<HashedId>,
    ip: IpAddr,
}

/// The live set's answer, for comparison with the shadow's.
#[derive(Clone, Copy)]
struct Judged<'a> {
    snapshot: &'a PolicySnapshot,
    result: &'a policy::LadderResult,
}

/// Policy ids, comma-separated, for a log field.
fn reason_ids(reasons: &[crate::decision::Reason]) -> String {
    reasons
        .iter()
        .map(|r| r.policy_id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// One request's signals and Cedar inputs, gathered against one snapshot.
#[derive(Debug)]
pub struct Prepared {
    pub snapshot: Arc<PolicySnapshot>,
    /// The journey's policies in that snapshot, resolved once.
    pub journey: Arc<JourneyPolicies>,
    pub user: UserKey,
    /// The hashed device id, when the request named a device.
    pub device: Option<HashedId>,
    /// The client address as counted and looked up.
    pub ip: IpAddr,
    /// The journey's tier, from the catalog.
    pub tier: crate::decision::Tier,
    pub signals: Signals,
    /// Why the store's context is missing, when it is: the answer then
    /// comes from the tier's failure mode (`store.on_failure`).
    pub degraded: Option<StoreError>,
    /// When the account was reported compromised, while that mark stands.
    pub compromised_since: Option<UnixSeconds>,
    pub principal: cedar_policy::EntityUid,
    pub action: cedar_policy::EntityUid,
    pub resource: cedar_policy::EntityUid,
}

impl Prepared {
    /// The Cedar context the journey's policies read, for `input`.
    ///
    /// # Errors
    /// The caller's attributes cannot be held in a Cedar context.
    pub fn context(&self, input: &DecideInput) -> Result<ContextParts, EngineError> {
        ContextParts::new(&self.signals, &input.attributes, self.journey.shape())
            .map_err(|e| EngineError::attributes(&input.journey, e))
    }
}

/// The catalog entry and Cedar action of a journey, or the caller's error.
fn journey<'a>(
    snapshot: &'a PolicySnapshot,
    name: &str,
) -> Result<(&'a JourneyEntry, &'a JourneyPolicies), EngineError> {
    match (
        snapshot.catalog().get(name),
        snapshot.journey_policies(name),
    ) {
        (Some(entry), Some(action)) => Ok((entry, action)),
        _ => Err(Refusal::UnknownJourney {
            field: "journey",
            journey: name.to_owned(),
        }
        .into()),
    }
}

/// Where the adapters get "now" from; the core never reads a clock itself.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixSeconds;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixSeconds {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock tests set and advance by hand, so time-dependent behaviour
/// (windows, impossible travel) is exact and needs no sleeps.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

#[cfg(any(test, feature = "test-util"))]
impl ManualClock {
    pub fn new(now: UnixSeconds) -> Self {
        Self(std::sync::atomic::AtomicI64::new(now))
    }

    pub fn advance(&self, seconds: i64) {
        self.0
            .fetch_add(seconds, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for ManualClock {
    fn now(&self) -> UnixSeconds {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A store call given at most `limit`; past it, [`StoreError::Timeout`].
async fn within<T>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(StoreError::Timeout {
            budget_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        })
    })
}

/// The shortest time between two log lines about degraded answers, in
/// seconds.
const DEGRADED_LOG_SECS: i64 = 10;

/// The longest an erasure may take when its caller sets no shorter
/// deadline.
const ERASURE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `deadline` has passed.
fn expired(deadline: Option<std::time::Instant>) -> bool {
    deadline.is_some_and(|d| std::time::Instant::now() >= d)
}

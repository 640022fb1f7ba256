//! `stepgate loadtest`: drives a running deployment through one of its
//! front doors and reports what it measured.
//!
//! Three phases over the same connections and concurrency: a warm-up (not
//! recorded), the door's empty call as the floor (`grpc.health.v1.Health/
//! Check` on gRPC, `GET /healthz` on HTTP), then decisions with a realistic
//! spread of users, devices and addresses, each followed now and then by the
//! ReportOutcome an identity provider would send. Latencies go into HDR
//! histograms; with `--server-pid`, the server's CPU time per decision too.
//!
//! A client tool rather than part of the decision path: it speaks the
//! doors' own wire formats ([`doors`]), never the engine.

pub mod doors;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::server::proto;

pub use doors::{Door, Protocol};

/// Histograms hold 1 µs to 60 s at three significant figures.
const HIGHEST_MICROS: u64 = 60_000_000;
const SIGNIFICANT_FIGURES: u8 = 3;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    #[error("`--target`: `{target}` is not a usable address: {message}")]
    Target { target: String, message: String },
    #[error("cannot connect to `{target}`: {message}")]
    Connect { target: String, message: String },
    #[error("`--mix`: {0}")]
    Mix(String),
    #[error("`{field}`: {rule}")]
    Setting {
        field: &'static str,
        rule: &'static str,
    },
    #[error("a load worker stopped unexpectedly: {0}")]
    Worker(String),
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The door the load goes through.
    pub protocol: Protocol,
    /// `http://host:port` of the deployment's gRPC listener.
    pub target: String,
    /// `http://host:port` of its HTTP listener (`http` and `authzen`).
    pub http_target: String,
    /// The server's process id, to measure its CPU time per decision
    /// (Linux: user plus system time in `/proc/PID/stat`).
    pub server_pid: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    pub connections: usize,
    /// Length of the Decide phase.
    pub duration: Duration,
    /// Length of the Health/Check floor phase; zero skips it.
    pub check_duration: Duration,
    /// Unrecorded traffic before the measured phases.
    pub warmup: Duration,
    pub mix: Mix,
    /// Distinct users the traffic is spread over.
    pub users: u32,
    /// Share of decisions followed by a ReportOutcome, 0 to 1.
    pub report_ratio: f64,
    /// Seed of the traffic's random choices, so runs can be repeated.
    pub seed: u64,
    /// Before anything is measured, report a completed sign-in for every
    /// user's own devices, as a deployment that has been running for a
    /// while would have seen.
    pub prime: bool,
    /// Decisions per second to send, evenly spaced, in the warm-up and the
    /// Decide phase (a soak's load); none: as fast as answers come.
    pub rate: Option<u32>,
}

/// Evenly spaced send times for `rate` requests a second, shared by the
/// workers: each takes the next slot and waits for it. A late worker's
/// slot is past: it sends at once, so the rate holds while the server
/// keeps up.
#[derive(Debug)]
struct Pacer {
    start: Instant,
    interval_ns: u64,
    next_ns: std::sync::atomic::AtomicU64,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        Self {
            start: Instant::now(),
            interval_ns: 1_000_000_000 / u64::from(rate.max(1)),
            next_ns: std::sync::atomic::AtomicU64::new(0),
        }
    }

    async fn wait(&self) {
        let slot = self
            .next_ns
            .fetch_add(self.interval_ns, std::sync::atomic::Ordering::Relaxed);
        let at = self.start + Duration::from_nanos(slot);
        tokio::time::sleep_until(at.into()).await;
    }
}

impl LoadConfig {
    fn check(&self) -> Result<(), LoadError> {
        let rule = |field, rule| Err(LoadError::Setting { field, rule });
        if self.concurrency == 0 {
            return rule("--concurrency", "must be at least 1");
        }
        if self.connections == 0 {
            return rule("--connections", "must be at least 1");
        }
        if self.duration.is_zero() {
            return rule("--duration", "must be longer than zero");
        }
        if self.users == 0 {
            return rule("--users", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.report_ratio) {
            return rule("--report-ratio", "must be between 0 and 1");
        }
        if self.rate == Some(0) {
            return rule("--rate", "must be at least 1 decision a second");
        }
        Ok(())
    }
}

/// Journeys with their weights, as `login:80,payment:20`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mix(Vec<(String, u32)>);

impl std::str::FromStr for Mix {
    type Err = LoadError;

    fn from_str(text: &str) -> Result<Self, LoadError> {
        let mut parts = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (journey, weight) = part
                .split_once(':')
                .ok_or_else(|| LoadError::Mix(format!("`{part}` is not JOURNEY:WEIGHT")))?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                LoadError::Mix(format!("`{part}`: the weight must be a whole number"))
            })?;
            if journey.trim().is_empty() {
                return Err(LoadError::Mix(format!("`{part}` names no journey")));
            }
            parts.push((journey.trim().to_owned(), weight));
        }
        if parts.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
            return Err(LoadError::Mix(format!(
                "`{text}` has no journey with a weight above zero"
            )));
        }
        Ok(Self(parts))
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(j, w)| format!("{j}:{w}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl Mix {
    fn pick(&self, rng: &mut fastrand::Rng) -> &str {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut roll = rng.u64(0..total.max(1));
        for (journey, weight) in &self.0 {
            if roll < u64::from(*weight) {
                return journey;
            }
            roll -= u64::from(*weight);
        }
        self.0.first().map_or("login", |(j, _)| j.as_str())
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub requests: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub latency_us: Latency,
    /// Failed requests by gRPC status code.
    pub errors: BTreeMap<String, u64>,
    /// Decide outcomes, for the Decide phase.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outcomes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
    pub mean: f64,
    pub stdev: f64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub protocol: Protocol,
    pub target: String,
    pub concurrency: usize,
    pub connections: usize,
    pub users: u32,
    pub mix: String,
    pub report_ratio: f64,
    pub seed: u64,
    /// The priming ReportOutcome calls, absent when skipped.
    pub prime: Option<PhaseReport>,
    /// `Health/Check`, absent when skipped.
    pub check: Option<PhaseReport>,
    pub decide: PhaseReport,
    /// The ReportOutcome calls made during the Decide phase.
    pub report: PhaseReport,
    /// Decide p50 over Check p50.
    pub decide_check_p50_ratio: Option<f64>,
    /// The server's CPU time over the decide phase, per decision (reports
    /// included when the report ratio is above zero), in µs.
    pub server_cpu_us_per_decision: Option<f64>,
    /// The server's CPU time over the Check phase, per check, in µs: the
    /// floor a decision's CPU is compared with.
    pub server_cpu_us_per_check: Option<f64>,
}

impl LoadReport {
    /// Requests that failed, in every phase.
    pub fn errors(&self) -> u64 {
        let phase = |p: &PhaseReport| p.errors.values().sum::<u64>();
        self.prime.as_ref().map_or(0, phase)
            + self.check.as_ref().map_or(0, phase)
            + phase(&self.decide)
            + phase(&self.report)
    }

    /// The report as a table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} via {}  concurrency {} over {} connection(s)  users {}  mix {}  report ratio {}",
            self.protocol,
            self.target,
            self.concurrency,
            self.connections,
            self.users,
            self.mix,
            self.report_ratio
        );
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "phase",
            "requests",
            "per sec",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "errors"
        );
        let mut row = |name: &str, p: &PhaseReport| {
            let l = p.latency_us;
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                name,
                p.requests,
                p.per_second,
                l.p50,
                l.p90,
                l.p99,
                l.p99_9,
                l.max,
                p.errors.values().sum::<u64>()
            );
        };
        if let Some(prime) = &self.prime {
            row("prime", prime);
        }
        if let Some(check) = &self.check {
            row("check", check);
        }
        row("decide", &self.decide);
        row("report", &self.report);
        for (phase, p) in [
            ("prime", self.prime.as_ref()),
            ("check", self.check.as_ref()),
            ("decide", Some(&self.decide)),
        ] {
            for (code, n) in p.map(|p| &p.errors).into_iter().flatten() {
                let _ = writeln!(out, "{phase} errors {code}: {n}");
            }
        }
        for (code, n) in &self.report.errors {
            let _ = writeln!(out, "report errors {code}: {n}");
        }
        let total = self.decide.outcomes.values().sum::<u64>().max(1);
        let outcomes: Vec<String> = self
            .decide
            .outcomes
            .iter()
            .map(|(o, n)| format!("{o} {:.1}%", 100.0 * *n as f64 / total as f64))
            .collect();
        let _ = writeln!(out, "outcomes: {}", outcomes.join(", "));
        if let Some(ratio) = self.decide_check_p50_ratio {
            let _ = writeln!(out, "decide/check p50 ratio: {ratio:.2}");
        }
        if let Some(cpu) = self.server_cpu_us_per_decision {
            let _ = writeln!(out, "server CPU per decision: {cpu:.1} µs");
        }
        if let (Some(check), Some(decide)) = (
            self.server_cpu_us_per_check,
            self.server_cpu_us_per_decision,
        ) {
            let _ = writeln!(
                out,
                "server CPU per check: {check:.1} µs (decision/check {:.2})",
                decide / check
            );
        }
        out
    }
}

/// The request a worker sends next, drawn from the traffic model.
///
/// Each user has a home address and one to three devices that are theirs;
/// a fifth of their requests come from a second (mobile) address and one in
/// twenty from a device never seen before. Journeys follow the mix; a
/// sensitive journey arrives at AAL2 two times in five, as after an earlier
/// step-up. The user authenticated up to two hours earlier (so a share of
/// high-tier requests meets a freshness rule). Payments carry an amount.
fn next_request(config: &LoadConfig, rng: &mut fastrand::Rng) -> proto::DecideRequest {
    let user = rng.u32(0..config.users);
    let journey = config.mix.pick(rng).to_owned();
    let device = if rng.u8(0..20) == 0 {
        format!("new-{:016x}", rng.u64(..))
    } else {
        device_id(user, rng.u64(0..devices(config, user)))
    };
    let ip = address(config, user, rng.u8(0..5) == 0);
    let aal = if journey != "login" && journey != "signup" && rng.u8(0..5) < 2 {
        2
    } else {
        1
    };
    let attributes = (journey == "payment").then(|| prost_types::Struct {
        fields: BTreeMap::from([(
            "amount".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(f64::from(
                    rng.u32(100..500_000),
                ))),
            },
        )]),
    });
    proto::DecideRequest {
        journey,
        subject: Some(subject(user)),
        authn: Some(proto::Authn {
            aal,
            amr: vec!["pwd".to_owned()],
            auth_time: crate::engine::Clock::now(&crate::engine::SystemClock)
                - i64::from(rng.u16(0..7200)),
        }),
        device: Some(proto::Device {
            id: device,
            user_agent: String::new(),
        }),
        network: Some(proto::Network { ip }),
        attributes,
        request_id: String::new(),
    }
}

fn subject(user: u32) -> proto::Subject {
    proto::Subject {
        user_id: format!("user-{user}"),
        tenant: String::new(),
    }
}

/// How many devices of their own a user has: one to three.
fn devices(config: &LoadConfig, user: u32) -> u64 {
    1 + mix64(u64::from(user) ^ config.seed) % 3
}

fn device_id(user: u32, index: u64) -> String {
    format!("device-{user}-{index}")
}

/// A user's home address, or their mobile one. Public unicast space
/// (11.0.0.0/8 and 12.0.0.0/8), never a reserved range, so a geo database
/// would look every address up.
fn address(config: &LoadConfig, user: u32, mobile: bool) -> String {
    let spread = mix64(u64::from(user) ^ config.seed);
    let host = u32::try_from((spread >> 8) & 0x00ff_ffff).unwrap_or(0);
    let first: u32 = if mobile { 12 } else { 11 };
    std::net::Ipv4Addr::from((first << 24) | host).to_string()
}

/// What the identity provider reports after an answer: the user completes
/// an allowed sign-in, passes nine step-ups in ten, and fails when denied.
fn outcome_event(outcome: proto::Outcome, rng: &mut fastrand::Rng) -> proto::Event {
    match outcome {
        proto::Outcome::Allow => proto::Event::AuthSucceeded,
        proto::Outcome::StepUp if rng.u8(0..10) == 0 => proto::Event::StepUpFailed,
        proto::Outcome::StepUp => proto::Event::StepUpSucceeded,
        _ => proto::Event::AuthFailed,
    }
}

/// SplitMix64 finaliser: spreads a user number over 64 bits.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One worker's tallies for one phase.
struct Tally {
    latency: Histogram<u64>,
    report_latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    report_errors: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Result<Self, LoadError> {
        let histogram = || {
            Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_FIGURES)
                .map_err(|e| LoadError::Worker(e.to_string()))
        };
        Ok(Self {
            latency: histogram()?,
            report_latency: histogram()?,
            errors: BTreeMap::new(),
            report_errors: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        })
    }

    fn merge(&mut self, other: Self) -> Result<(), LoadError> {
        let add = |into: &mut Histogram<u64>, from: &Histogram<u64>| {
            into.add(from).map_err(|e| LoadError::Worker(e.to_string()))
        };
        add(&mut self.latency, &other.latency)?;
        add(&mut self.report_latency, &other.report_latency)?;
        for (into, from) in [
            (&mut self.errors, other.errors),
            (&mut self.report_errors, other.report_errors),
            (&mut self.outcomes, other.outcomes),
        ] {
            for (k, v) in from {
                *into.entry(k).or_default() += v;
            }
        }
        Ok(())
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, HIGHEST_MICROS)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prime,
    Check,
    Decide,
}

/// Reports a completed sign-in on each of its users' own devices, from
/// home; worker `worker` of `workers` takes every `workers`-th user.
async fn prime_worker(
    config: LoadConfig,
    mut door: Door,
    worker: u32,
    workers: u32,
) -> Result<Tally, LoadError> {
    let mut tally = Tally::new()?;
    let journey = config
        .mix
        .0
        .first()
        .map(|(j, _)| j.clone())
        .unwrap_or_default();
    for user in (worker..config.users).step_by(usize::try_from(workers).unwrap_or(1).max(1)) {
        for index in 0..devices(&config, user) {
            let report = proto::ReportOutcomeRequest {
                decision_id: String::new(),
                journey: journey.clone(),
                subject: Some(subject(user)),
                device: Some(proto::Device {
                    id: device_id(user, index),
                    user_agent: String::new(),
                }),
                network: Some(proto::Network {
                    ip: address(&config, user, false),
                }),
                event: proto::Event::AuthSucceeded.into(),
                // A completed multi-factor sign-in: with no decision behind
                // it, only that makes the device known.
                reached_aal: 2,
            };
            let started = Instant::now();
            let result = door.report(report).await;
            let _ = tally.report_latency.record(micros(started.elapsed()));
            if let Err(failure) = result {
                *tally.report_errors.entry(failure).or_default() += 1;
            }
        }
    }
    Ok(tally)
}

async fn check_worker(mut door: Door, until: Instant) -> Result<Tally, LoadError> {
    let mut tally = Tally::new()?;
    while Instant::now() < until {
        let started = Instant::now();
        let result = door.floor().await;
        let _ = tally.latency.record(micros(started.elapsed()));
        if let Err(failure) = result {
            *tally.errors.entry(failure).or_default() += 1;
        }
    }
    Ok(tally)
}

async fn decide_worker(
    config: LoadConfig,
    mut door: Door,
    until: Instant,
    worker: u64,
    pacer: Option<Arc<Pacer>>,
) -> Result<Tally, LoadError> {
    let mut tally = Tally::new()?;
    let mut rng = fastrand::Rng::with_seed(config.seed ^ mix64(worker));
    // Gateways ask; they do not report.
    let report_ratio = match config.protocol {
        Protocol::ExtAuthz => 0.0,
        _ => config.report_ratio,
    };
    while Instant::now() < until {
        if let Some(pacer) = &pacer {
            pacer.wait().await;
            if Instant::now() >= until {
                break;
            }
        }
        let request = next_request(&config, &mut rng);
        let report = rng.f64() < report_ratio;
        let context = report.then(|| {
            (
                request.journey.clone(),
                request.subject.clone(),
                request.device.clone(),
                request.network.clone(),
            )
        });
        let started = Instant::now();
        let result = door.decide(request).await;
        let _ = tally.latency.record(micros(started.elapsed()));
        let said = match result {
            Ok(said) => said,
            Err(failure) => {
                *tally.errors.entry(failure).or_default() += 1;
                continue;
            }
        };
        *tally.outcomes.entry(said.outcome.to_owned()).or_default() += 1;
        let Some((journey, subject, device, network)) = context else {
            continue;
        };
        let outcome = match said.outcome {
            "ALLOW" => proto::Outcome::Allow,
            "STEP_UP" => proto::Outcome::StepUp,
            _ => proto::Outcome::Deny,
        };
        let report = proto::ReportOutcomeRequest {
            decision_id: said.decision_id,
            journey,
            subject,
            device,
            network,
            event: outcome_event(outcome, &mut rng).into(),
            reached_aal: 0,
        };
        let started = Instant::now();
        let result = door.report(report).await;
        let _ = tally.report_latency.record(micros(started.elapsed()));
        if let Err(failure) = result {
            *tally.report_errors.entry(failure).or_default() += 1;
        }
    }
    Ok(tally)
}

/// A process's CPU time so far, in ns: user plus system time from
/// `/proc/PID/stat`, which (unlike a sum over the live threads) keeps the
/// time of threads that have ended. Linux counts it in ticks of 1/100 s
/// (`USER_HZ`), so a phase should last seconds.
fn cpu_ns(pid: u32) -> Option<u64> {
    const NS_PER_TICK: u64 = 10_000_000;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, field 2, is in parentheses and may hold spaces:
    // count fields after its closing one. utime and stime are fields 14
    // and 15, the 12th and 13th after it.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * NS_PER_TICK)
}

/// CPU time between two readings of [`cpu_ns`], per call the phase made,
/// in µs.
fn per_call_us(before: Option<u64>, after: Option<u64>, tally: &Tally) -> Option<f64> {
    let calls = tally.latency.len();
    #[expect(
        clippy::cast_precision_loss,
        reason = "nanoseconds and counts far below 2^52"
    )]
    match (before, after) {
        (Some(before), Some(after)) if calls > 0 => {
            Some(after.saturating_sub(before) as f64 / 1000.0 / calls as f64)
        }
        _ => None,
    }
}

async fn phase(
    config: &LoadConfig,
    doors: &[Door],
    phase: Phase,
    length: Duration,
) -> Result<(Tally, Duration), LoadError> {
    let started = Instant::now();
    let until = started + length;
    let pacer = config.rate.map(|rate| Arc::new(Pacer::new(rate)));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.concurrency {
        let Some(door) = doors.get(worker % doors.len()).cloned() else {
            return Err(LoadError::Worker("no connection".to_owned()));
        };
        match phase {
            Phase::Prime => workers.spawn(prime_worker(
                config.clone(),
                door,
                u32::try_from(worker).unwrap_or(0),
                u32::try_from(config.concurrency).unwrap_or(1),
            )),
            Phase::Check => workers.spawn(check_worker(door, until)),
            Phase::Decide => workers.spawn(decide_worker(
                config.clone(),
                door,
                until,
                u64::try_from(worker).unwrap_or(0),
                pacer.clone(),
            )),
        };
    }
    let mut total = Tally::new()?;
    while let Some(done) = workers.join_next().await {
        let tally = done.map_err(|e| LoadError::Worker(e.to_string()))??;
        total.merge(tally)?;
    }
    Ok((total, started.elapsed()))
}

fn summarise(
    latency: &Histogram<u64>,
    errors: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    elapsed: Duration,
) -> PhaseReport {
    let seconds = elapsed.as_secs_f64();
    let requests = latency.len();
    PhaseReport {
        requests,
        seconds,
        per_second: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        latency_us: Latency {
            min: latency.min(),
            p50: latency.value_at_quantile(0.5),
            p90: latency.value_at_quantile(0.9),
            p99: latency.value_at_quantile(0.99),
            p99_9: latency.value_at_quantile(0.999),
            max: latency.max(),
            mean: latency.mean(),
            stdev: latency.stdev(),
        },
        errors,
        outcomes,
    }
}

/// The doors the workers share: gRPC channels, or HTTP clients (which pool
/// their own connections) after a first call proves the target answers.
async fn open_doors(config: &LoadConfig) -> Result<Vec<Door>, LoadError> {
    if matches!(config.protocol, Protocol::Http | Protocol::Authzen) {
        let mut door = Door::http(config.protocol, &config.http_target);
        door.floor().await.map_err(|message| LoadError::Connect {
            target: config.http_target.clone(),
            message,
        })?;
        return Ok(vec![door]);
    }
    let endpoint = Endpoint::from_shared(config.target.clone()).map_err(|e| LoadError::Target {
        target: config.target.clone(),
        message: e.to_string(),
    })?;
    let mut doors = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let channel = endpoint
            .clone()
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| LoadError::Connect {
                target: config.target.clone(),
                message: e.to_string(),
            })?;
        doors.push(Door::grpc(config.protocol, channel));
    }
    Ok(doors)
}

/// Runs the three phases against the configured door.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    config.check()?;
    let channels = open_doors(&config).await?;
    let prime = if config.prime {
        let (tally, elapsed) = phase(&config, &channels, Phase::Prime, Duration::ZERO).await?;
        Some(summarise(
            &tally.report_latency,
            tally.report_errors,
            BTreeMap::new(),
            elapsed,
        ))
    } else {
        None
    };
    if !config.warmup.is_zero() {
        phase(&config, &channels, Phase::Decide, config.warmup).await?;
    }
    let (check, server_cpu_us_per_check) = if config.check_duration.is_zero() {
        (None, None)
    } else {
        let cpu_before = config.server_pid.and_then(cpu_ns);
        let (tally, elapsed) =
            phase(&config, &channels, Phase::Check, config.check_duration).await?;
        let cpu = per_call_us(cpu_before, config.server_pid.and_then(cpu_ns), &tally);
        let summary = summarise(&tally.latency, tally.errors, BTreeMap::new(), elapsed);
        (Some(summary), cpu)
    };
    let cpu_before = config.server_pid.and_then(cpu_ns);
    let (tally, elapsed) = phase(&config, &channels, Phase::Decide, config.duration).await?;
    let server_cpu_us_per_decision =
        per_call_us(cpu_before, config.server_pid.and_then(cpu_ns), &tally);
    let report = summarise(
        &tally.report_latency,
        tally.report_errors,
        BTreeMap::new(),
        elapsed,
    );
    let decide = summarise(&tally.latency, tally.errors, tally.outcomes, elapsed);
    let decide_check_p50_ratio = check
        .as_ref()
        .filter(|c| c.latency_us.p50 > 0)
        .map(|c| decide.latency_us.p50 as f64 / c.latency_us.p50 as f64);
    Ok(LoadReport {
        protocol: config.protocol,
        target: match config.protocol {
            Protocol::Http | Protocol::Authzen => config.http_target.clone(),
            Protocol::Grpc | Protocol::ExtAuthz => config.target.clone(),
        },
        concurrency: config.concurrency,
        connections: config.connections,
        users: config.users,
        mix: config.mix.to_string(),
        report_ratio: config.report_ratio,
        seed: config.seed,
        prime,
        check,
        decide,
        report,
        decide_check_p50_ratio,
        server_cpu_us_per_decision,
        server_cpu_us_per_check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mix: &str) -> LoadConfig {
        LoadConfig {
            protocol: Protocol::Grpc,
            target: "http://127.0.0.1:1".into(),
            http_target: "http://127.0.0.1:2".into(),
            server_pid: None,
            concurrency: 1,
            connections: 1,
            duration: Duration::from_secs(1),
            check_duration: Duration::ZERO,
            warmup: Duration::ZERO,
            mix: mix.parse().unwrap(),
            users: 1000,
            report_ratio: 0.5,
            seed: 7,
            prime: false,
            rate: None,
        }
    }

    #[test]
    fn mixes_parse_and_refuse_what_they_cannot_use() {
        let mix: Mix = "login:80, payment:20".parse().unwrap();
        assert_eq!(mix.to_string(), "login:80,payment:20");
        for bad in ["login", "login:x", ":5", "login:0", ""] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn traffic_follows_the_mix_and_spreads_over_users_and_devices() {
        let config = config("login:80,payment:20");
        let mut rng = fastrand::Rng::with_seed(1);
        let requests: Vec<_> = (0..10_000)
            .map(|_| next_request(&config, &mut rng))
            .collect();
        let logins = requests.iter().filter(|r| r.journey == "login").count();
        assert!((7_500..8_500).contains(&logins), "{logins}");
        let users: std::collections::HashSet<_> = requests
            .iter()
            .filter_map(|r| r.subject.as_ref().map(|s| s.user_id.clone()))
            .collect();
        assert!(users.len() > 900, "{}", users.len());
        let new_devices = requests
            .iter()
            .filter(|r| r.device.as_ref().is_some_and(|d| d.id.starts_with("new-")))
            .count();
        assert!((300..700).contains(&new_devices), "{new_devices}");
        // Payments carry an amount, logins do not.
        assert!(
            requests
                .iter()
                .all(|r| r.attributes.is_some() == (r.journey == "payment"))
        );
        // A user always has the same home address and the same mobile one.
        let mut addresses: std::collections::HashMap<String, std::collections::BTreeSet<String>> =
            std::collections::HashMap::new();
        for r in &requests {
            let user = r.subject.as_ref().map(|s| s.user_id.clone()).unwrap();
            let ip = r.network.as_ref().map(|n| n.ip.clone()).unwrap();
            addresses.entry(user).or_default().insert(ip);
        }
        assert!(addresses.values().all(|ips| ips.len() <= 2));
        assert!(addresses.values().any(|ips| ips.len() == 2));
        // Authenticated within the last two hours.
        let now = crate::engine::Clock::now(&crate::engine::SystemClock);
        assert!(requests.iter().all(|r| {
            let at = r.authn.as_ref().map_or(0, |a| a.auth_time);
            (now - 7_300..=now).contains(&at)
        }));
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let mut c = config("login:1");
        c.concurrency = 0;
        assert!(c.check().is_err());
        let mut c = config("login:1");
        c.report_ratio = 1.5;
        assert!(c.check().is_err());
    }
}

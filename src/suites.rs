//! Policy test suites: YAML files a security engineer writes without Rust,
//! run by `stepgate policy test`.
//!
//! Each case is a request plus either the signal values it should see or a
//! short history of reported outcomes, replayed through the real engine
//! against a fresh memory store with a fixed clock; then the expected
//! outcome, level and reason ids. Nothing here is simulated: the history
//! goes through `report`, the request through `decide`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Deserialize;

use crate::config::Config;
use crate::decision::{
    Aal, AttrValue, Authn, DecideInput, Outcome, OutcomeEvent, ReportInput, Subject, UnixSeconds,
};
use crate::engine::Engine;
use crate::geo::GeoDatabases;
use crate::metrics::Metrics;
use crate::policy::PolicySnapshot;
use crate::policy::explain::Explanation;
use crate::pseudonym::Pseudonymizer;
use crate::signals::{IpList, Signals, risk};
use crate::store::MemoryStore;

/// Where suites live inside a policy directory.
pub const SUITES_DIR: &str = "tests";
/// The clock of a suite that does not set `now`.
pub const DEFAULT_NOW: &str = "2026-01-01T00:00:00Z";

/// A suite file that cannot be used, located in it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{}{}: {message}", file.display(), at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct SuiteError {
    pub file: PathBuf,
    pub at: Option<(usize, usize)>,
    pub message: String,
}

/// A suite as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    /// Shown in reports; defaults to the file name.
    name: Option<String>,
    #[serde(default)]
    #[expect(dead_code, reason = "documentation for the reader of the suite file")]
    description: Option<String>,
    /// RFC 3339; the fixed clock every case runs at.
    now: Option<String>,
    /// Request fields every case starts from.
    #[serde(default)]
    defaults: RequestSpec,
    cases: Vec<CaseFile>,
}

/// Request fields; a case's fields override the suite's defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub journey: Option<String>,
    pub user: Option<String>,
    pub tenant: Option<String>,
    pub aal: Option<u8>,
    pub amr: Option<Vec<String>>,
    /// How long ago the user authenticated (`5m`).
    pub auth_age: Option<String>,
    /// The device id; empty for a request without one.
    pub device: Option<String>,
    pub ip: Option<String>,
    pub attributes: Option<BTreeMap<String, serde_yaml_ng::Value>>,
}

impl RequestSpec {
    fn over(self, defaults: &RequestSpec) -> RequestSpec {
        let d = defaults.clone();
        RequestSpec {
            journey: self.journey.or(d.journey),
            user: self.user.or(d.user),
            tenant: self.tenant.or(d.tenant),
            aal: self.aal.or(d.aal),
            amr: self.amr.or(d.amr),
            auth_age: self.auth_age.or(d.auth_age),
            device: self.device.or(d.device),
            ip: self.ip.or(d.ip),
            attributes: self.attributes.or(d.attributes),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    name: String,
    #[serde(default)]
    request: RequestSpec,
    #[serde(default)]
    history: Vec<HistoryFile>,
    #[serde(default)]
    signals: SignalOverrides,
    /// Required in test suites; a case given to `policy explain` may leave
    /// it out.
    expect: Option<ExpectFile>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EventName {
    AuthSucceeded,
    AuthFailed,
    StepUpSucceeded,
    StepUpFailed,
    Compromised,
    ConfirmedSafe,
}

impl From<EventName> for OutcomeEvent {
    fn from(name: EventName) -> Self {
        match name {
            EventName::AuthSucceeded => OutcomeEvent::AuthSucceeded,
            EventName::AuthFailed => OutcomeEvent::AuthFailed,
            EventName::StepUpSucceeded => OutcomeEvent::StepUpSucceeded,
            EventName::StepUpFailed => OutcomeEvent::StepUpFailed,
            EventName::Compromised => OutcomeEvent::Compromised,
            EventName::ConfirmedSafe => OutcomeEvent::ConfirmedSafe,
        }
    }
}

/// What happened before the request; fields left out are the request's.
/// Either one reported `event` with no decision behind it, or an `attempt`:
/// a Decide (at AAL1) followed by each event reported against it, in order,
/// the way an identity provider reports a sign-in step by step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryFile {
    event: Option<EventName>,
    attempt: Option<Vec<EventName>>,
    /// With `event`: the level the user reached (`reached_aal`, 1..3).
    aal: Option<u8>,
    /// How long before `now` (`3d`, `10m`).
    ago: String,
    journey: Option<String>,
    user: Option<String>,
    device: Option<String>,
    ip: Option<String>,
    /// Report the event this many times (default 1).
    count: Option<u32>,
    /// Each of the `count` events comes from a different account:
    /// `<user>-1`, `<user>-2`, ...
    #[serde(default)]
    distinct_users: bool,
}

/// Signal values set directly, over what the history produced. The risk
/// score is computed again from the result unless `risk` is set too.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalOverrides {
    device: Option<DeviceOverrides>,
    ip: Option<IpOverrides>,
    geo: Option<GeoOverrides>,
    behaviour: Option<BehaviourOverrides>,
    risk: Option<RiskOverrides>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceOverrides {
    known: Option<bool>,
    provided: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpOverrides {
    deny_listed: Option<bool>,
    reserved: Option<bool>,
    asn: Option<u32>,
    as_org: Option<String>,
    anonymous: Option<bool>,
    anonymous_vpn: Option<bool>,
    hosting_provider: Option<bool>,
    public_proxy: Option<bool>,
    residential_proxy: Option<bool>,
    tor_exit: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeoOverrides {
    country: Option<String>,
    country_known: Option<bool>,
    distance_km: Option<i64>,
    speed_kmh: Option<i64>,
    impossible_travel: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BehaviourOverrides {
    user_failures: Option<u32>,
    ip_failures: Option<u32>,
    ip_distinct_failed_users: Option<u32>,
    first_sign_in: Option<bool>,
    seconds_since_last_success: Option<i64>,
    compromised_recently: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RiskOverrides {
    score: u32,
}

impl SignalOverrides {
    fn apply(&self, signals: &mut Signals, config: &Config) {
        if let Some(d) = &self.device {
            set(&mut signals.device.known, d.known);
            set(&mut signals.device.provided, d.provided);
        }
        if let Some(ip) = &self.ip {
            let s = &mut signals.ip;
            set(&mut s.deny_listed, ip.deny_listed);
            set(&mut s.reserved, ip.reserved);
            if ip.asn.is_some() {
                s.asn = ip.asn;
            }
            if ip.as_org.is_some() {
                s.as_org.clone_from(&ip.as_org);
            }
            let flags = [
                ip.anonymous,
                ip.anonymous_vpn,
                ip.hosting_provider,
                ip.public_proxy,
                ip.residential_proxy,
                ip.tor_exit,
            ];
            if flags.iter().any(Option::is_some) {
                // Setting any flag means the database was consulted: the
                // others read false.
                let a = s.anonymity.get_or_insert_with(Default::default);
                set(&mut a.anonymous, ip.anonymous);
                set(&mut a.anonymous_vpn, ip.anonymous_vpn);
                set(&mut a.hosting_provider, ip.hosting_provider);
                set(&mut a.public_proxy, ip.public_proxy);
                set(&mut a.residential_proxy, ip.residential_proxy);
                set(&mut a.tor_exit, ip.tor_exit);
            }
        }
        if let Some(g) = &self.geo {
            let s = &mut signals.geo;
            if let Some(country) = &g.country {
                s.country = Some(country.clone());
                if s.status != crate::signals::GeoStatus::Located {
                    s.status = crate::signals::GeoStatus::CountryOnly;
                }
            }
            some(&mut s.country_known, g.country_known);
            some(&mut s.distance_km, g.distance_km);
            some(&mut s.speed_kmh, g.speed_kmh);
            some(&mut s.impossible_travel, g.impossible_travel);
        }
        if let Some(b) = &self.behaviour {
            let s = &mut signals.behaviour;
            set(&mut s.user_failures, b.user_failures);
            set(&mut s.ip_failures, b.ip_failures);
            set(&mut s.ip_distinct_failed_users, b.ip_distinct_failed_users);
            set(&mut s.first_sign_in, b.first_sign_in);
            set(&mut s.compromised_recently, b.compromised_recently);
            some(
                &mut s.seconds_since_last_success,
                b.seconds_since_last_success,
            );
        }
        match &self.risk {
            Some(r) => {
                signals.risk.score = r.score;
                signals.risk.level = risk::level(r.score, &config.risk);
                signals.risk.contributions.clear();
            }
            None => {
                signals.risk = risk::score(
                    &risk::Inputs {
                        device: &signals.device,
                        behaviour: &signals.behaviour,
                        ip: &signals.ip,
                        geo: &signals.geo,
                    },
                    &config.risk,
                );
            }
        }
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

fn some<T>(field: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *field = value;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ExpectedOutcome {
    Allow,
    StepUp,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    outcome: ExpectedOutcome,
    /// The level a step-up asks for (1 to 3; the user's own level when a
    /// freshness rule asks them to authenticate again).
    level: Option<u8>,
    /// A step-up's `max_age`, as a duration (`15m`); checked when given.
    max_age: Option<String>,
    /// The determining policy ids, in any order.
    reasons: Option<Vec<String>>,
}

/// A suite ready to run: every field checked and every time resolved.
#[derive(Debug)]
pub struct Suite {
    pub file: PathBuf,
    pub name: String,
    pub now: UnixSeconds,
    cases: Vec<Case>,
}

/// One step of a case's history, replayed at its time.
#[derive(Debug)]
enum Step {
    /// A report with no decision behind it.
    Report(ReportInput),
    /// A Decide, then each report against the decision it returns.
    Attempt {
        decide: DecideInput,
        reports: Vec<ReportInput>,
    },
}

/// One case: a request, what happened before it, and (in a test suite)
/// the answer expected.
#[derive(Debug)]
pub struct Case {
    name: String,
    input: DecideInput,
    history: Vec<(UnixSeconds, Step)>,
    signals: SignalOverrides,
    expected: Option<Expected>,
}

impl Case {
    /// A bare request with no history, as `policy explain` builds from
    /// flags.
    pub fn request(request: RequestSpec, now: UnixSeconds) -> Result<Case, String> {
        let case = CaseFile {
            name: "request".to_owned(),
            request,
            history: Vec::new(),
            signals: SignalOverrides::default(),
            expect: None,
        };
        build_case(case, &RequestSpec::default(), now).map_err(|(_, message)| message)
    }
}

impl Suite {
    /// The case named `name`, or the first one.
    pub fn case(&self, name: Option<&str>) -> Option<&Case> {
        match name {
            Some(name) => self.cases.iter().find(|c| c.name == name),
            None => self.cases.first(),
        }
    }

    pub fn case_names(&self) -> impl Iterator<Item = &str> {
        self.cases.iter().map(|c| c.name.as_str())
    }
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub outcome: Outcome,
    /// A step-up's `max_age` in seconds; compared when given.
    pub max_age: Option<u32>,
    /// Compared as a set when given.
    pub reasons: Option<BTreeSet<String>>,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", describe(self.outcome))?;
        if let Some(age) = self.max_age {
            write!(f, " (max_age {age} s)")?;
        }
        if let Some(reasons) = &self.reasons {
            let ids: Vec<&str> = reasons.iter().map(String::as_str).collect();
            write!(f, " [{}]", ids.join(", "))?;
        }
        Ok(())
    }
}

fn describe(outcome: Outcome) -> String {
    match outcome {
        Outcome::Allow => "ALLOW".to_owned(),
        Outcome::StepUp(aal) => format!("STEP_UP to AAL{}", aal.number()),
        Outcome::Deny => "DENY".to_owned(),
    }
}

/// How one case went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed {
        expected: String,
        actual: String,
    },
    /// The case could not run (an unknown journey, attributes the schema
    /// refuses); the message says why.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub verdict: Verdict,
    pub time: Duration,
}

#[derive(Debug, Clone)]
pub struct SuiteResult {
    pub file: PathBuf,
    pub name: String,
    pub cases: Vec<CaseResult>,
}

impl SuiteResult {
    pub fn passed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| c.verdict == Verdict::Passed)
            .count()
    }
}

/// Every `*.yaml` / `*.yml` file in `dir`, in name order, parsed and
/// checked. All problems are reported, not just the first.
pub fn load_dir(dir: &Path) -> Result<Vec<Suite>, Vec<SuiteError>> {
    let entries = std::fs::read_dir(dir).map_err(|err| {
        vec![SuiteError {
            file: dir.to_owned(),
            at: None,
            message: format!("cannot list test suites: {err}"),
        }]
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(vec![SuiteError {
            file: dir.to_owned(),
            at: None,
            message: "holds no `*.yaml` test suites".to_owned(),
        }]);
    }
    let mut suites = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_file(&file) {
            Ok(suite) => suites.push(suite),
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    if errors.is_empty() {
        Ok(suites)
    } else {
        Err(errors)
    }
}

/// One suite file, parsed and checked; every case must state `expect`.
pub fn load_file(file: &Path) -> Result<Suite, Vec<SuiteError>> {
    load(file, true)
}

/// One suite file whose cases may leave `expect` out, for `policy explain`.
pub fn load_cases(file: &Path) -> Result<Suite, Vec<SuiteError>> {
    load(file, false)
}

fn load(file: &Path, require_expect: bool) -> Result<Suite, Vec<SuiteError>> {
    let error = |at: Option<(usize, usize)>, message: String| SuiteError {
        file: file.to_owned(),
        at,
        message,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|err| vec![error(None, format!("cannot read: {err}"))])?;
    let parsed: SuiteFile = serde_yaml_ng::from_str(&text).map_err(|err| {
        let at = err.location().map(|l| (l.line(), l.column()));
        let mut message = err.to_string();
        // The location is reported beside the file name already.
        if let (Some(_), Some(cut)) = (at, message.rfind(" at line ")) {
            message.truncate(cut);
        }
        vec![error(at, message)]
    })?;
    let now_text = parsed.now.as_deref().unwrap_or(DEFAULT_NOW);
    let now = parse_time(now_text)
        .map_err(|m| vec![error(find(&text, "now:"), format!("`now`: {m}"))])?;
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for case in parsed.cases {
        let at = find(&text, &case.name);
        match build_case(case, &parsed.defaults, now) {
            Ok(case) if require_expect && case.expected.is_none() => errors.push(error(
                at,
                format!("case `{}`: `expect` is required in a test suite", case.name),
            )),
            Ok(case) => cases.push(case),
            Err((name, message)) => {
                errors.push(error(at, format!("case `{name}`: {message}")));
            }
        }
    }
    if cases.is_empty() && errors.is_empty() {
        errors.push(error(None, "has no cases".to_owned()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let name = parsed.name.unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    Ok(Suite {
        file: file.to_owned(),
        name,
        now,
        cases,
    })
}

/// Line and column of the first occurrence of `needle`, to point at a case.
fn find(text: &str, needle: &str) -> Option<(usize, usize)> {
    text.find(needle)
        .map(|offset| crate::config::line_col(text, offset))
}

fn parse_time(text: &str) -> Result<UnixSeconds, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))?;
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before 1970"))?
        .as_secs();
    UnixSeconds::try_from(secs).map_err(|_| format!("`{text}` is too far in the future"))
}

fn parse_ago(field: &str, text: &str, now: UnixSeconds) -> Result<UnixSeconds, String> {
    let ago = humantime::parse_duration(text)
        .map_err(|e| format!("`{field}`: `{text}` is not a duration such as `10m` or `3d`: {e}"))?;
    let ago =
        i64::try_from(ago.as_secs()).map_err(|_| format!("`{field}`: `{text}` is too long"))?;
    Ok(now.saturating_sub(ago))
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("`{field}`: `{text}` is not an IP address"))
}

/// Fields left out of a request entirely.
const DEFAULT_USER: &str = "alice";
const DEFAULT_IP: &str = "81.2.69.142";

fn build_case(
    case: CaseFile,
    defaults: &RequestSpec,
    now: UnixSeconds,
) -> Result<Case, (String, String)> {
    let name = case.name.clone();
    let fail = |message: String| (name.clone(), message);
    let request = case.request.over(defaults);
    let journey = request
        .journey
        .clone()
        .ok_or_else(|| fail("`request.journey` is required (or set it in `defaults`)".into()))?;
    let aal = match request.aal.unwrap_or(1) {
        1 => Aal::One,
        2 => Aal::Two,
        3 => Aal::Three,
        other => return Err(fail(format!("`request.aal`: {other} is not 1, 2 or 3"))),
    };
    let user = request.user.clone().unwrap_or_else(|| DEFAULT_USER.into());
    let tenant = request.tenant.clone().unwrap_or_default();
    let ip = parse_ip("request.ip", request.ip.as_deref().unwrap_or(DEFAULT_IP)).map_err(&fail)?;
    let device = request.device.clone().filter(|d| !d.is_empty());
    let auth_time = request
        .auth_age
        .as_deref()
        .map(|age| parse_ago("request.auth_age", age, now))
        .transpose()
        .map_err(&fail)?;
    let attributes = request
        .attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| {
            let path = format!("request.attributes.{key}");
            attribute(&path, value).map(|v| (key, v))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map_err(&fail)?;
    let input = DecideInput {
        journey: journey.clone(),
        subject: Subject {
            user_id: user.clone(),
            tenant: tenant.clone(),
        },
        authn: Authn {
            aal,
            amr: request.amr.clone().unwrap_or_else(|| vec!["pwd".into()]),
            auth_time,
        },
        device_id: device.clone(),
        ip,
        attributes,
    };
    let mut history = Vec::new();
    for (index, event) in case.history.into_iter().enumerate() {
        let field = |name: &str| format!("history[{index}].{name}");
        let at = parse_ago(&field("ago"), &event.ago, now).map_err(&fail)?;
        let ip = match &event.ip {
            Some(text) => parse_ip(&field("ip"), text).map_err(&fail)?,
            None => ip,
        };
        let base_user = event.user.clone().unwrap_or_else(|| user.clone());
        let device = match event.device {
            Some(d) if d.is_empty() => None,
            Some(d) => Some(d),
            None => device.clone(),
        };
        let count = event.count.unwrap_or(1);
        if count == 0 || count > 10_000 {
            return Err(fail(format!(
                "`{}`: {count} is not between 1 and 10000",
                field("count")
            )));
        }
        let reached = match event.aal {
            None => None,
            Some(n) => Some(
                Aal::from_number(u32::from(n))
                    .ok_or_else(|| fail(format!("`{}`: {n} is not 1, 2 or 3", field("aal"))))?,
            ),
        };
        let kind = match (event.event, &event.attempt, reached) {
            (Some(one), None, _) => Ok(one),
            (None, Some(events), None) if !events.is_empty() => Err(events.clone()),
            (None, Some(_), Some(_)) => {
                return Err(fail(format!(
                    "`{}` is the level reached by a single `event`; an `attempt` is decided at AAL1",
                    field("aal")
                )));
            }
            _ => {
                return Err(fail(format!(
                    "`{}`: give either `event` or a non-empty `attempt`",
                    field("event")
                )));
            }
        };
        let journey = event.journey.clone().unwrap_or_else(|| "login".into());
        for n in 1..=count {
            let subject = Subject {
                user_id: if event.distinct_users {
                    format!("{base_user}-{n}")
                } else {
                    base_user.clone()
                },
                tenant: tenant.clone(),
            };
            let report = |event: EventName| ReportInput {
                journey: journey.clone(),
                subject: subject.clone(),
                device_id: device.clone(),
                ip,
                event: event.into(),
                decision_id: None,
                reached,
            };
            let step = match &kind {
                Ok(one) => Step::Report(report(*one)),
                Err(events) => Step::Attempt {
                    decide: DecideInput {
                        journey: journey.clone(),
                        subject: subject.clone(),
                        authn: Authn {
                            aal: Aal::One,
                            amr: vec!["pwd".into()],
                            auth_time: None,
                        },
                        device_id: device.clone(),
                        ip,
                        attributes: BTreeMap::new(),
                    },
                    reports: events.iter().map(|e| report(*e)).collect(),
                },
            };
            history.push((at, step));
        }
    }
    // Replayed oldest first, as they would have happened.
    history.sort_by_key(|(at, _)| *at);
    let expected = case
        .expect
        .map(|expect| expected(expect).map_err(&fail))
        .transpose()?;
    Ok(Case {
        name: case.name,
        input,
        history,
        signals: case.signals,
        expected,
    })
}

fn expected(expect: ExpectFile) -> Result<Expected, String> {
    let outcome = match (expect.outcome, expect.level) {
        (ExpectedOutcome::Allow, None) => Outcome::Allow,
        (ExpectedOutcome::Deny, None) => Outcome::Deny,
        (ExpectedOutcome::StepUp, Some(1)) => Outcome::StepUp(Aal::One),
        (ExpectedOutcome::StepUp, Some(2)) => Outcome::StepUp(Aal::Two),
        (ExpectedOutcome::StepUp, Some(3)) => Outcome::StepUp(Aal::Three),
        (ExpectedOutcome::StepUp, None) => {
            return Err("`expect.level` is required for `step_up` (1 to 3)".into());
        }
        (ExpectedOutcome::StepUp, Some(level)) => {
            return Err(format!(
                "`expect.level`: a step-up goes to 1, 2 or 3, not {level}"
            ));
        }
        (_, Some(_)) => return Err("`expect.level` is only for `step_up`".into()),
    };
    let max_age = match (&outcome, expect.max_age) {
        (_, None) => None,
        (Outcome::StepUp(_), Some(text)) => {
            let age = humantime::parse_duration(&text).map_err(|e| {
                format!("`expect.max_age`: `{text}` is not a duration such as \"15m\": {e}")
            })?;
            Some(
                u32::try_from(age.as_secs())
                    .map_err(|_| format!("`expect.max_age`: `{text}` is too long"))?,
            )
        }
        (_, Some(_)) => return Err("`expect.max_age` is only for `step_up`".into()),
    };
    Ok(Expected {
        outcome,
        max_age,
        reasons: expect.reasons.map(|r| r.into_iter().collect()),
    })
}

/// A YAML value as a journey attribute, by the same rules as the API.
fn attribute(path: &str, value: serde_yaml_ng::Value) -> Result<AttrValue, String> {
    use serde_yaml_ng::Value;
    match value {
        Value::Bool(b) => Ok(AttrValue::Bool(b)),
        Value::Number(n) => n
            .as_i64()
            .map(AttrValue::Long)
            .ok_or_else(|| format!("`{path}`: {n} is not a whole number (Cedar has no fractions)")),
        Value::String(s) => Ok(AttrValue::String(s)),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| attribute(&format!("{path}[{i}]"), v))
            .collect::<Result<_, _>>()
            .map(AttrValue::Set),
        Value::Mapping(map) => map
            .into_iter()
            .map(|(k, v)| {
                let key = k
                    .as_str()
                    .ok_or_else(|| format!("`{path}`: keys must be strings"))?
                    .to_owned();
                attribute(&format!("{path}.{key}"), v).map(|v| (key, v))
            })
            .collect::<Result<_, _>>()
            .map(AttrValue::Record),
        Value::Null | Value::Tagged(_) => Err(format!("`{path}`: not a value Cedar can hold")),
    }
}

/// What every case shares: the policies under test and the configuration
/// (risk weights, windows, deny lists, MaxMind databases).
pub struct Runner {
    policies: Arc<PolicySnapshot>,
    config: Arc<Config>,
    deny_list: IpList,
    geo: Arc<GeoDatabases>,
}

impl Runner {
    pub fn new(
        policies: Arc<PolicySnapshot>,
        config: Arc<Config>,
        deny_list: IpList,
        geo: Arc<GeoDatabases>,
    ) -> Self {
        Self {
            policies,
            config,
            deny_list,
            geo,
        }
    }

    /// The version of the policies under test.
    pub fn version(&self) -> &str {
        self.policies.version()
    }

    pub async fn run(&self, suite: &Suite) -> SuiteResult {
        let mut cases = Vec::new();
        for case in &suite.cases {
            let started = Instant::now();
            let verdict = self.run_case(case, suite.now).await;
            cases.push(CaseResult {
                name: case.name.clone(),
                verdict,
                time: started.elapsed(),
            });
        }
        SuiteResult {
            file: suite.file.clone(),
            name: suite.name.clone(),
            cases,
        }
    }

    /// A fresh engine and store per case, so cases cannot leak into each
    /// other, with the case's history replayed into it.
    async fn engine_for(&self, case: &Case) -> Result<Engine, String> {
        let metrics = Arc::new(Metrics::new().map_err(|e| e.to_string())?);
        let store = Arc::new(MemoryStore::new(&self.config.store, self.config.windows));
        let engine = Engine::new(
            self.policies.clone(),
            store,
            // A fixed key: the store only ever compares hashes made with it.
            Pseudonymizer::new([0x5e; 32]),
            self.deny_list.clone(),
            self.geo.clone(),
            self.config.clone(),
            metrics,
        );
        let failed = |err: crate::engine::EngineError| format!("history: {err}");
        for (at, step) in &case.history {
            match step {
                Step::Report(report) => {
                    engine.report_at(report, *at).await.map_err(failed)?;
                }
                Step::Attempt { decide, reports } => {
                    let answer = engine.decide_at(decide, *at).await.map_err(failed)?;
                    for report in reports {
                        let linked = ReportInput {
                            decision_id: Some(answer.decision_id),
                            ..report.clone()
                        };
                        engine.report_at(&linked, *at).await.map_err(failed)?;
                    }
                }
            }
        }
        Ok(engine)
    }

    /// Sets the case's signal values over the gathered ones.
    fn adjust(&self, case: &Case) -> impl Fn(&mut Signals) + Sync + use<> {
        let config = self.config.clone();
        let overrides = case.signals.clone();
        move |signals: &mut Signals| overrides.apply(signals, &config)
    }

    async fn run_case(&self, case: &Case, now: UnixSeconds) -> Verdict {
        let Some(expected) = &case.expected else {
            return Verdict::Error("the case states no `expect`".to_owned());
        };
        let engine = match self.engine_for(case).await {
            Ok(engine) => engine,
            Err(message) => return Verdict::Error(message),
        };
        let answer = match engine
            .decide_adjusted(&case.input, now, &self.adjust(case))
            .await
        {
            Ok(answer) => answer,
            Err(err) => return Verdict::Error(err.to_string()),
        };
        let decision = answer.decision;
        let ids: BTreeSet<String> = decision
            .reasons
            .iter()
            .map(|r| r.policy_id.clone())
            .collect();
        let outcome_ok = decision.outcome == expected.outcome;
        let age_ok = expected
            .max_age
            .is_none_or(|age| decision.max_age == Some(age));
        let reasons_ok = expected.reasons.as_ref().is_none_or(|r| *r == ids);
        if outcome_ok && age_ok && reasons_ok {
            Verdict::Passed
        } else {
            let actual = Expected {
                outcome: decision.outcome,
                max_age: decision.max_age,
                reasons: Some(ids),
            };
            Verdict::Failed {
                expected: expected.to_string(),
                actual: actual.to_string(),
            }
        }
    }

    /// Why the case's request gets its answer, after its history.
    pub async fn explain(&self, case: &Case, now: UnixSeconds) -> Result<Explanation, String> {
        let engine = self.engine_for(case).await?;
        engine
            .explain(&case.input, now, &self.adjust(case))
            .await
            .map_err(|e| e.to_string())
    }
}

/// The results as a JUnit XML report, one test suite per file.
pub fn junit(results: &[SuiteResult]) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("stepgate policy test");
    for suite in results {
        let mut junit_suite = TestSuite::new(suite.name.as_str());
        for case in &suite.cases {
            let status = match &case.verdict {
                Verdict::Passed => TestCaseStatus::success(),
                Verdict::Failed { expected, actual } => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status
                        .set_message(format!("expected {expected}, got {actual}"))
                        .set_type("wrong decision");
                    status
                }
                Verdict::Error(message) => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                    status.set_message(message.as_str()).set_type("case error");
                    status
                }
            };
            let mut test_case = TestCase::new(case.name.as_str(), status);
            test_case
                .set_classname(suite.file.display().to_string())
                .set_time(case.time);
            junit_suite.add_test_case(test_case);
        }
        report.add_test_suite(junit_suite);
    }
    report.to_string()
}

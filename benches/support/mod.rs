//! Set-up shared by the benchmarks: engines over the bundled policies, the
//! fixture databases, and requests for the three outcomes.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]
#![allow(
    dead_code,
    reason = "each bench target uses its own part of the shared set-up"
)]

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Authorizer, Entities, PolicySet, Request, Response};
use stepgate::config::{Config, GeoConfig};
use stepgate::config::{StoreConfig, WindowConfig};
use stepgate::decision::{
    Aal, Authn, DEFAULT_TENANT, DecideInput, OutcomeEvent, ReportInput, Subject, UnixSeconds,
};
use stepgate::engine::Engine;
use stepgate::geo::fixtures::{self, FixturePaths};
use stepgate::pseudonym::{HashedId, Pseudonymizer};
use stepgate::store::{CountryCode, MemoryStore, Record, StoredLocation};

/// Benchmarks run with the allocator the `stepgate` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The time every benchmark decides at.
pub const NOW: UnixSeconds = 1_800_000_000;

pub fn bundled_policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// The three fixture databases in `dir`.
pub fn geo_config(dir: &Path) -> GeoConfig {
    let FixturePaths {
        city,
        asn,
        anonymous_ip,
        ..
    } = fixtures::write_all(dir).expect("fixtures");
    GeoConfig {
        city_db: Some(city),
        asn_db: Some(asn),
        anonymous_ip_db: Some(anonymous_ip),
        ..GeoConfig::default()
    }
}

/// A copy of the policy directory `from` with one more policy file.
pub fn policies_with(from: &Path, name: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(from).expect("policy dir") {
        let path = entry.expect("entry").path();
        if let (true, Some(file)) = (path.is_file(), path.file_name()) {
            std::fs::copy(&path, dir.path().join(file)).expect("copy");
        }
    }
    std::fs::write(dir.path().join(name), text).expect("write policy");
    dir
}

pub fn engine(policies_dir: &Path, geo: GeoConfig) -> Engine {
    engine_with(policies_dir, geo, Config::default().policy_cache)
}

/// [`engine`] with the policy cache given: `entries: 0` has every
/// decision evaluate its policies, as a context seen for the first time.
pub fn engine_with(
    policies_dir: &Path,
    geo: GeoConfig,
    policy_cache: stepgate::config::PolicyCacheConfig,
) -> Engine {
    let config = Config {
        policies_dir: policies_dir.to_owned(),
        geo,
        policy_cache,
        ..Config::default()
    };
    stepgate::app::build_engine(Arc::new(config)).expect("engine builds")
}

/// No policy cache: every decision is evaluated.
pub fn uncached() -> stepgate::config::PolicyCacheConfig {
    stepgate::config::PolicyCacheConfig { entries: 0 }
}

pub fn login(user: &str, device: &str, ip: &str) -> DecideInput {
    DecideInput {
        journey: "login".into(),
        subject: Subject {
            user_id: user.into(),
            tenant: DEFAULT_TENANT.into(),
        },
        authn: Authn {
            aal: Aal::One,
            amr: vec!["pwd".into()],
            auth_time: None,
        },
        device_id: Some(device.into()),
        ip: ip.parse().expect("ip"),
        attributes: Default::default(),
    }
}

pub fn report(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    input: &DecideInput,
    event: OutcomeEvent,
    at: UnixSeconds,
) {
    let report = ReportInput {
        journey: input.journey.clone(),
        subject: input.subject.clone(),
        device_id: input.device_id.clone(),
        ip: input.ip,
        event,
        decision_id: None,
        // A completed multi-factor sign-in, so a success teaches.
        reached: Some(stepgate::decision::Aal::Two),
    };
    rt.block_on(engine.report_at(&report, at)).expect("report");
}

/// The three requests of the outcome benchmarks, with the history that
/// gives each its answer: alice signed in on her laptop in London a day ago.
pub struct Scenarios {
    /// Her laptop again, from London: allowed.
    pub allow: DecideInput,
    /// A phone she never used: step-up to AAL2 (`login-new-device`).
    pub step_up: DecideInput,
    /// A device she never used, from an address where ten accounts just
    /// failed: denied (`stuffing-ip`).
    pub deny: DecideInput,
}

pub fn scenarios(rt: &tokio::runtime::Runtime, engine: &Engine) -> Scenarios {
    let allow = login("alice", "laptop", fixtures::LONDON.ip);
    let step_up = login("alice", "phone", fixtures::LONDON.ip);
    let deny = login("alice", "tablet", fixtures::PARIS.ip);
    let mut earlier = allow.clone();
    earlier.ip = fixtures::LONDON_2.ip.parse().expect("ip");
    report(
        rt,
        engine,
        &earlier,
        OutcomeEvent::AuthSucceeded,
        NOW - 86_400,
    );
    for i in 0..10 {
        let victim = login(&format!("victim-{i}"), "bot", fixtures::PARIS.ip);
        report(rt, engine, &victim, OutcomeEvent::AuthFailed, NOW - 60);
    }
    Scenarios {
        allow,
        step_up,
        deny,
    }
}

/// Bare Cedar: the same policy files parsed by `cedar-policy` alone, with no
/// stepgate code between the request and the answer.
pub struct BareCedar {
    policies: PolicySet,
    entities: Entities,
    authorizer: Authorizer,
}

impl BareCedar {
    pub fn load(dir: &Path) -> Self {
        let mut text = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("policy dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
            .collect();
        files.sort();
        for file in files {
            text.push_str(&std::fs::read_to_string(file).expect("policy file"));
            text.push('\n');
        }
        Self {
            policies: PolicySet::from_str(&text).expect("policies parse"),
            entities: Entities::empty(),
            authorizer: Authorizer::new(),
        }
    }

    pub fn is_authorized(&self, request: &Request) -> Response {
        self.authorizer
            .is_authorized(request, &self.policies, &self.entities)
    }
}

/// The Cedar request stepgate evaluates first for `input`.
pub fn cedar_request(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    input: &DecideInput,
) -> Request {
    rt.block_on(engine.cedar_request(input, NOW))
        .expect("cedar request")
}

/// Hashed ids for user `n` and their devices, as the engine would store them.
pub struct Ids(Pseudonymizer);

impl Ids {
    pub fn new() -> Self {
        Self(Pseudonymizer::new([7; 32]))
    }

    pub fn user(&self, n: u64) -> stepgate::store::UserKey {
        self.0.user_key("", &format!("user-{n}"))
    }

    pub fn device(&self, user: u64, index: u64) -> HashedId {
        self.0.device(&format!("device-{user}-{index}"))
    }
}

/// A memory store with room for `users` users and as many addresses.
pub fn memory_store(users: u64) -> MemoryStore {
    let config = StoreConfig {
        max_users: users * 2,
        max_ips: users * 2,
        ..StoreConfig::default()
    };
    MemoryStore::new(&config, WindowConfig::default())
}

/// The address user `n`'s failures come from: one of `pool` addresses.
pub fn failure_ip(n: u64, pool: u64) -> std::net::IpAddr {
    let host = u32::try_from(n % pool).unwrap_or(0);
    std::net::IpAddr::V4(std::net::Ipv4Addr::from((11 << 24) | host))
}

/// Teaches the store a typical profile for user `n`: three devices signed
/// in from two countries over the past week, then two failed attempts
/// (from one of `ip_pool` addresses) in the last hour.
pub fn typical_profile(
    rt: &tokio::runtime::Runtime,
    store: &MemoryStore,
    ids: &Ids,
    n: u64,
    ip_pool: u64,
) {
    use stepgate::store::ContextStore;
    let user = ids.user(n);
    let places = [("GB", 51.5, -0.1), ("FR", 48.9, 2.3), ("GB", 53.5, -2.2)];
    for (index, (country, lat, lon)) in (0u64..).zip(places) {
        let at = NOW - 7 * 86_400 + i64::try_from(index).unwrap_or(0) * 86_400;
        let record = Record::Success {
            user,
            device: Some(ids.device(n, index)),
            country: CountryCode::parse(country),
            location: Some(StoredLocation::new(lat, lon, 20, at)),
            decided_under: None,
            step_up: false,
        };
        rt.block_on(store.record(&record, at)).expect("record");
    }
    for minutes in [50, 20] {
        let record = Record::Failure {
            user,
            device: None,
            ip: failure_ip(n, ip_pool),
        };
        rt.block_on(store.record(&record, NOW - minutes * 60))
            .expect("record");
    }
}

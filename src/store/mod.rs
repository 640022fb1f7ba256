//! The context store: what stepgate remembers about users and IPs between
//! requests, and the recent decisions reports are judged against.
//!
//! A trait so that the embedded memory backend and a shared backend (Redis,
//! for several replicas) answer the same questions. Decide calls
//! [`ContextStore::lookup`] and [`ContextStore::remember_decision`] (its own
//! answer, never anything about the user); only ReportOutcome calls
//! [`ContextStore::record`].

pub mod memory;
pub mod recent;
pub mod redis;

use std::net::IpAddr;

use async_trait::async_trait;

use crate::decision::{Aal, DecisionId, UnixSeconds};
use crate::pseudonym::HashedId;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A user as the store knows them: the tenant-scoped key their context is
/// kept under, and the tenant-free key of the account id behind it, by
/// which an erasure across every tenant finds them. Both are keyed hashes
/// ([`crate::pseudonym`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserKey {
    /// The user in one tenant: what every stored context is keyed by.
    pub id: HashedId,
    /// The account id in every tenant.
    pub person: HashedId,
}

/// An ISO 3166-1 alpha-2 country code, stored in two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Two ASCII letters, any case; anything else is not a country code.
    pub fn parse(code: &str) -> Option<Self> {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The two uppercase letters.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Where a user last completed a sign-in, coarsened to 0.1 degree (about
/// 11 km) so the store never holds a precise position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLocation {
    /// Tenths of a degree.
    lat_e1: i16,
    lon_e1: i16,
    pub accuracy_km: u32,
    pub at: UnixSeconds,
}

impl StoredLocation {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "clamped to ±1800 tenths, well inside i16"
    )]
    pub fn new(latitude: f64, longitude: f64, accuracy_km: u32, at: UnixSeconds) -> Self {
        let tenths = |deg: f64, max: f64| (deg.clamp(-max, max) * 10.0).round() as i16;
        Self {
            lat_e1: tenths(latitude, 90.0),
            lon_e1: tenths(longitude, 180.0),
            accuracy_km,
            at,
        }
    }

    pub fn latitude(&self) -> f64 {
        f64::from(self.lat_e1) / 10.0
    }

    pub fn longitude(&self) -> f64 {
        f64::from(self.lon_e1) / 10.0
    }

    /// The same place (to the stored tenth of a degree), whenever and
    /// however accurately it was seen.
    pub fn same_place(&self, other: &StoredLocation) -> bool {
        (self.lat_e1, self.lon_e1) == (other.lat_e1, other.lon_e1)
    }
}

/// What is known about the user, as seen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserContext {
    /// The requested device completed a sign-in for this user before.
    pub device_known: bool,
    /// When the user last completed a sign-in.
    pub last_success: Option<UnixSeconds>,
    /// Failures inside the user-failure window, wherever they came from.
    pub failures: u32,
    /// Of those, the failures reported with the requested device (0 when
    /// the request names no device).
    pub failures_on_device: u32,
    /// The requested country saw a completed sign-in for this user before
    /// (false when the lookup named no country).
    pub country_known: bool,
    /// The position of the user's last located success.
    pub last_location: Option<StoredLocation>,
    /// When the account was reported compromised, while that mark stands
    /// (until a step-up is passed, it is confirmed safe, or
    /// `reporting.compromised_secs` pass).
    pub compromised_since: Option<UnixSeconds>,
}

/// What is known about the client's IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpContext {
    /// Failures inside the IP-failure window.
    pub failures: u32,
    /// Distinct users that failed inside the distinct-users window.
    pub distinct_failed_users: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredContext {
    pub user: UserContext,
    pub ip: IpContext,
}

/// The keys of one lookup.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    pub user: UserKey,
    pub device: Option<HashedId>,
    pub ip: IpAddr,
    /// The country the request comes from, when known.
    pub country: Option<CountryCode>,
}

/// The key under which an address's context is counted: an IPv4 address as
/// itself, an IPv6 address by its /64, because one client usually holds a
/// whole /64 and could otherwise rotate addresses to dodge the counters.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// What a reported outcome teaches the store.
#[derive(Debug, Clone, Copy)]
pub enum Record {
    /// The user completed a sign-in or step-up: the device and the country
    /// become known, the last success (and, when located, the last position)
    /// moves, and the user's failure count resets.
    ///
    /// While the account is marked compromised, only a completion of a
    /// decision made under that very mark (`decided_under`: the mark's
    /// start, as the decision saw it) teaches anything; one that was a
    /// STEP_UP (`step_up`) also lifts the mark. Any other completion (of a
    /// decision made before the report, or of none) changes nothing.
    Success {
        user: UserKey,
        device: Option<HashedId>,
        country: Option<CountryCode>,
        location: Option<StoredLocation>,
        decided_under: Option<UnixSeconds>,
        step_up: bool,
    },
    /// The account was reported compromised: `device` is no longer known,
    /// nor `country`; the last position is forgotten if it is `location`
    /// (the reported session's); the reported `decision` is forgotten, so
    /// no later report can complete it; the account is marked compromised
    /// from now until `until` (a mark already standing keeps the later
    /// end, and the new mark starts at least a second after the old one,
    /// so a step-up decided under the old one cannot lift it).
    Compromised {
        user: UserKey,
        device: Option<HashedId>,
        country: Option<CountryCode>,
        location: Option<StoredLocation>,
        decision: Option<DecisionId>,
        until: UnixSeconds,
    },
    /// The account was confirmed safe: its compromise mark is lifted.
    ConfirmedSafe { user: UserKey },
    /// The user failed: counts against the user (remembering the device
    /// it was reported with, if any) and the IP.
    Failure {
        user: UserKey,
        device: Option<HashedId>,
        ip: IpAddr,
    },
}

/// A decision as stepgate remembers it for a while, so that the outcome
/// reported for it can be judged against what it asked for. Compact (about
/// 90 bytes), because one is kept for every Decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedDecision {
    pub user: UserKey,
    pub device: Option<HashedId>,
    pub journey: JourneyKey,
    /// The client address the decision judged (as counted and looked up):
    /// a completed sign-in teaches this address's country and position,
    /// not whatever address the report comes from.
    pub ip: IpAddr,
    /// The level the user had when the decision was asked for.
    pub from: Aal,
    /// The level that completes the sign-in: `from` for an ALLOW, the
    /// step-up level for a STEP_UP; `None` for a DENY.
    pub demand: Option<Aal>,
    /// The decision was a STEP_UP to the user's own level (authenticate
    /// again, for a freshness rule): a first factor alone does not complete
    /// it, unless the level is AAL1.
    pub reauth: bool,
    /// When the account's compromise mark was set, if it stood when the
    /// decision was made: completing this decision's step-up lifts it.
    pub compromise: Option<UnixSeconds>,
}

/// A journey name in eight bytes (FNV-1a), the same in every build and on
/// every replica. Only ever compared for equality: two names of one catalog
/// collide with a chance of one in 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JourneyKey(u64);

impl JourneyKey {
    /// The key as a shared store holds it.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn from_u64(key: u64) -> Self {
        Self(key)
    }

    pub fn of(name: &str) -> Self {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        Self(
            name.bytes()
                .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME)),
        )
    }
}

/// What an erasure (`ForgetUser`) removes: one user in one tenant, or the
/// same account id in every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erasure {
    Tenant(UserKey),
    AllTenants { person: HashedId },
}

impl Erasure {
    /// Whether `user` is one this erasure removes.
    pub fn covers(&self, user: &UserKey) -> bool {
        match self {
            Erasure::Tenant(key) => key == user,
            Erasure::AllTenants { person } => user.person == *person,
        }
    }
}

/// What an erasure found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Erased {
    /// Tenant-scoped users that had context or remembered decisions.
    pub users: u64,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StoreError {
    /// The store answered with an error, or could not be reached.
    #[error("context store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within its budget (`store.redis.timeout_ms`,
    /// or what was left of the caller's deadline), in milliseconds.
    #[error("context store did not answer within {budget_ms} ms")]
    Timeout { budget_ms: u64 },
    /// The store cannot be set up from its configuration (at start).
    #[error("{0}")]
    Setup(String),
}

impl StoreError {
    /// The reason code a degraded answer carries for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) | StoreError::Setup(_) => "stepgate.store_unavailable",
            StoreError::Timeout { .. } => "stepgate.store_timeout",
        }
    }
}

#[async_trait]
pub trait ContextStore: Send + Sync + 'static {
    async fn lookup(&self, key: &Lookup, now: UnixSeconds) -> Result<StoredContext, StoreError>;
    /// Applies `record`. `Ok(false)`: a success refused because the
    /// account is marked compromised and its decision was not made under
    /// that mark (see [`Record::Success`]); nothing changed.
    async fn record(&self, record: &Record, now: UnixSeconds) -> Result<bool, StoreError>;
    /// Remembers a decision made at `now` for `store.decision_ttl_secs`,
    /// so a report can name it.
    async fn remember_decision(
        &self,
        id: DecisionId,
        decision: &IssuedDecision,
        now: UnixSeconds,
    ) -> Result<(), StoreError>;
    /// Binds a decision made without a device id to the device the sign-in
    /// it asked for completed on, the first time one does: returns the
    /// device the decision is bound to after the call (an earlier binding
    /// wins), or `None` when the decision is no longer remembered.
    async fn bind_decision_device(
        &self,
        id: DecisionId,
        device: HashedId,
        now: UnixSeconds,
    ) -> Result<Option<HashedId>, StoreError>;
    /// A decision remembered and not yet expired at `now`.
    async fn issued_decision(
        &self,
        id: DecisionId,
        now: UnixSeconds,
    ) -> Result<Option<IssuedDecision>, StoreError>;
    /// Erases everything stored about the users `erasure` names: their
    /// context, their place in addresses' distinct-user counts and the
    /// decisions remembered about them.
    async fn forget(&self, erasure: &Erasure, now: UnixSeconds) -> Result<Erased, StoreError>;
    /// The longest a call may wait for the store before the answer degrades
    /// (`None`: it never waits, as the memory store).
    fn budget(&self) -> Option<std::time::Duration> {
        None
    }
    /// Sequential network round trips made so far, for `/metrics` and the
    /// benchmarks (0 for the memory store).
    fn round_trips(&self) -> u64 {
        0
    }
    /// Entries held, for metrics and tests: (users, ips).
    fn sizes(&self) -> (u64, u64);
    /// Entries held and evicted, for `/metrics`. By default only the
    /// sizes.
    fn stats(&self) -> crate::metrics::StoreStats {
        let (users, ips) = self.sizes();
        crate::metrics::StoreStats {
            users,
            ips,
            round_trips: self.round_trips(),
            ..crate::metrics::StoreStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_share_their_slash_64_and_ipv4_stays_exact() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        assert_eq!(ip_key(a).to_string(), "2001:db8:1:2::");
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(ip_key(v4), v4);
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(ip_key(mapped), v4);
    }

    #[test]
    fn country_codes_are_two_letters_uppercased() {
        assert_eq!(CountryCode::parse("gb"), CountryCode::parse("GB"));
        assert!(CountryCode::parse("GB").is_some());
        assert!(CountryCode::parse("GBR").is_none());
        assert!(CountryCode::parse("1A").is_none());
        assert!(CountryCode::parse("").is_none());
    }

    #[test]
    fn stored_locations_are_rounded_to_a_tenth_of_a_degree() {
        let l = StoredLocation::new(51.5142, -0.0931, 10, 7);
        assert_eq!((l.latitude(), l.longitude()), (51.5, -0.1));
        let edge = StoredLocation::new(95.0, -181.0, 0, 0);
        assert_eq!((edge.latitude(), edge.longitude()), (90.0, -180.0));
    }
}

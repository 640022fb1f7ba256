//! The context store: what stepgate remembers about users and IPs between
//! requests.
//!
//! A trait so that the embedded memory backend and a shared backend (Redis,
//! for several replicas) answer the same questions. Decide only calls
//! [`ContextStore::lookup`]; only ReportOutcome calls [`ContextStore::record`].

pub mod memory;

use std::net::IpAddr;

use async_trait::async_trait;

use crate::decision::UnixSeconds;
use crate::pseudonym::HashedId;

pub use memory::MemoryStore;

/// What is known about the user, as seen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserContext {
    /// The requested device completed a sign-in for this user before.
    pub device_known: bool,
    /// When the user last completed a sign-in.
    pub last_success: Option<UnixSeconds>,
    /// Failures inside the user-failure window.
    pub failures: u32,
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
    pub user: HashedId,
    pub device: Option<HashedId>,
    pub ip: IpAddr,
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
    /// The user completed a sign-in or step-up: the device becomes known, the
    /// last success moves, and the user's failure count resets.
    Success {
        user: HashedId,
        device: Option<HashedId>,
    },
    /// The user failed: counts against the user and the IP.
    Failure { user: HashedId, ip: IpAddr },
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StoreError {
    #[error("context store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait ContextStore: Send + Sync + 'static {
    async fn lookup(&self, key: &Lookup, now: UnixSeconds) -> Result<StoredContext, StoreError>;
    async fn record(&self, record: &Record, now: UnixSeconds) -> Result<(), StoreError>;
    /// Entries held, for metrics and tests: (users, ips).
    fn sizes(&self) -> (u64, u64);
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
}

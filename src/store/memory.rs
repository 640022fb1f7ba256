//! The embedded context store: two bounded caches, one per user and one per
//! IP address, each entry a small mutex-guarded state.
//!
//! Capacity bounds evict the least useful entries (quick_cache's S3-FIFO);
//! an entry idle for the retention period is gone: unseen from then on, and
//! swept from memory within a few minutes. Windows are counted from stored
//! timestamps at lookup time against the caller's `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use smallvec::SmallVec;

use crate::config::{StoreConfig, WindowConfig};
use crate::decision::UnixSeconds;
use crate::pseudonym::HashedId;

use super::recent::Recent;
use super::{
    ContextStore, CountryCode, Erased, Erasure, IpContext, IssuedDecision, Lookup, Record,
    StoreError, StoredContext, StoredLocation, UserContext, UserKey, ip_key,
};
use crate::decision::DecisionId;

#[derive(Debug, Default)]
struct UserState {
    /// When the entry was last read or written (the caller's `now`).
    touched: UnixSeconds,
    /// Known devices with the time of their last completed sign-in. The
    /// lists hold a typical user's (three devices, two countries, a couple
    /// of failures) inline, so a user is one allocation besides the cache's.
    devices: SmallVec<[(HashedId, UnixSeconds); 3]>,
    /// Countries with the time of their last completed sign-in.
    countries: SmallVec<[(CountryCode, UnixSeconds); 2]>,
    last_location: Option<StoredLocation>,
    last_success: Option<UnixSeconds>,
    /// Failures, oldest first, at most `max_events` of them, each with the
    /// device it was reported with.
    failures: SmallVec<[Failure; 2]>,
    /// The compromise mark: (reported at, stands until).
    compromise: Option<(UnixSeconds, UnixSeconds)>,
}

/// One failure of a user: when, and on which device (if the report named
/// one), so failures on a known device can be told from failures elsewhere.
/// Sixteen bytes, as a user may hold `max_events_per_key` of them.
#[derive(Debug, Clone, Copy)]
struct Failure {
    at: UnixSeconds,
    /// [`device_tag`] of the device, 0 for none.
    device: u64,
}

/// Eight bytes of a hashed device id, never 0. Two devices of one user
/// share a tag with a chance of one in 2^64, which would only pool their
/// failure counts.
fn device_tag(device: Option<HashedId>) -> u64 {
    device.map_or(0, |d| {
        let mut first = [0u8; 8];
        first.copy_from_slice(d.as_bytes().get(..8).unwrap_or(&[1; 8]));
        u64::from_le_bytes(first).max(1)
    })
}

#[derive(Debug, Default)]
struct IpState {
    /// When the entry was last read or written (the caller's `now`).
    touched: UnixSeconds,
    failures: SmallVec<[UnixSeconds; 2]>,
    /// Last failure time per user that failed from this address.
    failed_users: HashMap<HashedId, UnixSeconds>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    retention: i64,
    max_devices: usize,
    max_countries: usize,
    max_events: usize,
    windows: WindowConfig,
}

/// The caches' hasher: seeded per process, and much cheaper than SipHash
/// for these short keys (keyed hashes, addresses).
type Hasher = foldhash::quality::RandomState;

/// The `touched` of a state removed from its cache.
const DEAD: UnixSeconds = UnixSeconds::MIN;

/// A state that knows when it was last used.
trait Touched: Default {
    fn touched(&mut self) -> &mut UnixSeconds;
}

impl Touched for UserState {
    fn touched(&mut self) -> &mut UnixSeconds {
        &mut self.touched
    }
}

impl Touched for IpState {
    fn touched(&mut self) -> &mut UnixSeconds {
        &mut self.touched
    }
}

/// Counts the entries a cache drops to stay within its capacity.
#[derive(Clone)]
struct CountEvictions(Arc<AtomicU64>);

impl<K, V> quick_cache::Lifecycle<K, V> for CountEvictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: K, _val: V) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bounded per-key states that expire when idle for `retention` seconds
/// of the callers' clock.
struct Entries<K, S> {
    cache: quick_cache::sync::Cache<
        K,
        Arc<Mutex<S>>,
        quick_cache::UnitWeighter,
        Hasher,
        CountEvictions,
    >,
    retention: i64,
    evicted: Arc<AtomicU64>,
    /// The latest `now` a caller passed: the sweep's clock.
    latest: AtomicI64,
}

impl<K: Eq + std::hash::Hash + Clone, S: Touched> Entries<K, S> {
    fn new(capacity: u64, retention: i64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let evicted = Arc::new(AtomicU64::new(0));
        Self {
            cache: quick_cache::sync::Cache::with(
                capacity,
                u64::try_from(capacity).unwrap_or(u64::MAX),
                quick_cache::UnitWeighter,
                Hasher::default(),
                CountEvictions(evicted.clone()),
            ),
            retention,
            evicted,
            latest: AtomicI64::new(UnixSeconds::MIN),
        }
    }

    /// Whether a state last used at `touched` is still kept at `now`.
    fn live(&self, touched: UnixSeconds, now: UnixSeconds) -> bool {
        touched > now.saturating_sub(self.retention)
    }

    /// The state under `key`, marked used at `now`; `None` when there is
    /// none, or it was idle too long (then it is dropped).
    fn get(&self, key: &K, now: UnixSeconds) -> Option<Arc<Mutex<S>>> {
        self.latest.fetch_max(now, Ordering::Relaxed);
        let entry = self.cache.get(key)?;
        {
            let mut state = lock(&entry);
            let touched = state.touched();
            if self.live(*touched, now) {
                *touched = (*touched).max(now);
                drop(state);
                return Some(entry);
            }
        }
        self.cache
            .remove_if(key, |e| Arc::ptr_eq(e, &entry) && self.expire(e, now));
        None
    }

    /// The state under `key`, created (or started afresh, when it was idle
    /// too long) if need be, marked used at `now`.
    fn get_or_default(&self, key: K, now: UnixSeconds) -> Arc<Mutex<S>> {
        self.latest.fetch_max(now, Ordering::Relaxed);
        let fresh = || {
            let mut state = S::default();
            *state.touched() = now;
            Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(state)))
        };
        // A state removed between being found and being locked is marked
        // dead by its remover (under its lock, inside the removal): then
        // look again, and the removal being complete, find or make a live
        // one. Once more is enough unless removals race this one key.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let entry = match self.cache.get_or_insert_with(&key, fresh) {
                Ok(entry) => entry,
                Err(never) => match never {},
            };
            {
                let mut state = lock(&entry);
                if *state.touched() == DEAD && attempts < 4 {
                    continue;
                }
                if !self.live(*state.touched(), now) {
                    *state = S::default();
                }
                let touched = state.touched();
                *touched = (*touched).max(now);
            }
            return entry;
        }
    }

    /// Whether `state` is to be removed at `now`: idle too long. If so it
    /// is marked dead first, so a writer that already holds it looks again.
    fn expire(&self, state: &Mutex<S>, now: UnixSeconds) -> bool {
        let mut state = lock(state);
        let touched = state.touched();
        if self.live(*touched, now) {
            return false;
        }
        *touched = DEAD;
        true
    }

    fn contains(&self, key: &K) -> bool {
        self.cache.contains_key(key)
    }

    fn remove(&self, key: &K) {
        self.cache.remove(key);
    }

    fn keys(&self) -> Vec<K> {
        self.cache.iter().map(|(key, _)| key).collect()
    }

    fn states(&self) -> Vec<Arc<Mutex<S>>> {
        self.cache.iter().map(|(_, state)| state).collect()
    }

    fn len(&self) -> u64 {
        u64::try_from(self.cache.len()).unwrap_or(u64::MAX)
    }

    /// Drops every state idle for the retention period, as of the latest
    /// `now` a caller passed.
    fn sweep(&self) {
        let now = self.latest.load(Ordering::Relaxed);
        if now == UnixSeconds::MIN {
            return;
        }
        self.cache.retain(|_, state| !self.expire(state, now));
    }
}

/// How often idle entries are swept from memory: an eighth of the
/// retention period, at most five minutes, at least a second.
fn sweep_every(retention: i64) -> Duration {
    Duration::from_secs(u64::try_from(retention / 8).unwrap_or(0).clamp(1, 300))
}

/// The thread sweeping a store's caches, stopped when the store is dropped.
struct Sweeper {
    thread: Option<std::thread::Thread>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }
}

/// Sweeps both caches every `every` until the store is dropped.
fn start_sweeper(tables: Weak<Tables>, every: Duration) -> Sweeper {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stopped.clone();
    let spawned = std::thread::Builder::new()
        .name("stepgate-store-sweep".into())
        .spawn(move || {
            loop {
                std::thread::park_timeout(every);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Some(tables) = tables.upgrade() else {
                    return;
                };
                tables.users.sweep();
                tables.ips.sweep();
            }
        });
    let thread = match spawned {
        Ok(handle) => Some(handle.thread().clone()),
        Err(error) => {
            // Idle entries are still unseen; they stay in memory until evicted.
            tracing::error!(%error, "cannot start the memory store's sweeper; idle entries will be dropped only when the store is full");
            None
        }
    };
    Sweeper { thread, stopped }
}

struct Tables {
    users: Entries<UserKey, UserState>,
    ips: Entries<IpAddr, IpState>,
}

pub struct MemoryStore {
    tables: Arc<Tables>,
    /// Stops its thread when the store is dropped.
    _sweeper: Sweeper,
    /// Recent decisions by id, expiring after the decision TTL.
    decisions: Recent<IssuedDecision>,
    limits: Limits,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("users", &self.tables.users.len())
            .field("ips", &self.tables.ips.len())
            .finish()
    }
}

/// A poisoned lock only means another request panicked mid-update; the state
/// is plain counters, still safe to read and extend.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn count_since(times: &[UnixSeconds], since: UnixSeconds) -> u32 {
    saturating_count(times.iter().filter(|t| **t > since).count())
}

fn saturating_count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether `key` was seen after `fresh` in a remembered list.
fn remembered<K: PartialEq>(list: &[(K, UnixSeconds)], key: &K, fresh: UnixSeconds) -> bool {
    list.iter()
        .any(|(known, seen)| known == key && *seen > fresh)
}

/// Remembers `key` as seen `now`: forgets entries older than `fresh`, and
/// past `max` entries the one seen longest ago.
fn remember<K: PartialEq, A: smallvec::Array<Item = (K, UnixSeconds)>>(
    list: &mut SmallVec<A>,
    key: K,
    now: UnixSeconds,
    fresh: UnixSeconds,
    max: usize,
) {
    list.retain(|(_, seen)| *seen > fresh);
    if let Some(entry) = list.iter_mut().find(|(known, _)| *known == key) {
        entry.1 = now;
        return;
    }
    if list.len() >= max
        && let Some(oldest) = list
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, seen))| *seen)
            .map(|(i, _)| i)
    {
        list.swap_remove(oldest);
    }
    list.push((key, now));
}

/// Appends `item`, dropping the oldest first past `max` (at most a few
/// hundred, so shifting is cheap).
fn push_bounded<A: smallvec::Array>(items: &mut SmallVec<A>, item: A::Item, max: usize) {
    if items.len() >= max {
        let excess = items.len() + 1 - max.max(1);
        items.drain(..excess);
    }
    items.push(item);
}

fn window(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl MemoryStore {
    pub fn new(store: &StoreConfig, windows: WindowConfig) -> Self {
        let retention = window(store.retention_secs);
        let tables = Arc::new(Tables {
            users: Entries::new(store.max_users, retention),
            ips: Entries::new(store.max_ips, retention),
        });
        let sweeper = start_sweeper(Arc::downgrade(&tables), sweep_every(retention));
        Self {
            tables,
            _sweeper: sweeper,
            decisions: Recent::new(window(store.decision_ttl_secs), store.max_decisions),
            limits: Limits {
                retention: window(store.retention_secs),
                max_devices: store.max_devices_per_user,
                max_countries: store.max_countries_per_user,
                max_events: store.max_events_per_key,
                windows,
            },
        }
    }

    fn lookup_now(&self, key: &Lookup, now: UnixSeconds) -> StoredContext {
        let w = self.limits.windows;
        let user = self
            .tables
            .users
            .get(&key.user, now)
            .map(|state| {
                let state = lock(&state);
                let fresh = now - self.limits.retention;
                let since = now - window(w.user_failures_secs);
                let recent = || state.failures.iter().filter(|f| f.at > since);
                UserContext {
                    device_known: key
                        .device
                        .is_some_and(|d| remembered(&state.devices, &d, fresh)),
                    last_success: state.last_success,
                    failures: saturating_count(recent().count()),
                    failures_on_device: match device_tag(key.device) {
                        0 => 0,
                        tag => saturating_count(recent().filter(|f| f.device == tag).count()),
                    },
                    country_known: key
                        .country
                        .is_some_and(|c| remembered(&state.countries, &c, fresh)),
                    last_location: state.last_location.filter(|l| l.at > fresh),
                    compromised_since: state
                        .compromise
                        .filter(|(_, until)| *until > now)
                        .map(|(since, _)| since),
                }
            })
            .unwrap_or_default();
        let ip = self
            .tables
            .ips
            .get(&ip_key(key.ip), now)
            .map(|state| {
                let state = lock(&state);
                let since = now - window(w.ip_distinct_users_secs);
                let distinct = state.failed_users.values().filter(|t| **t > since).count();
                IpContext {
                    failures: count_since(&state.failures, now - window(w.ip_failures_secs)),
                    distinct_failed_users: u32::try_from(distinct).unwrap_or(u32::MAX),
                }
            })
            .unwrap_or_default();
        StoredContext { user, ip }
    }

    /// Erasures are rare: walking every user and address (about 100 ns
    /// each) is cheaper than an index kept up to date on every request.
    fn forget_now(&self, erasure: &Erasure, now: UnixSeconds) -> Erased {
        let mut users: std::collections::HashSet<UserKey> = match erasure {
            Erasure::Tenant(user) => self
                .tables
                .users
                .contains(user)
                .then_some(*user)
                .into_iter()
                .collect(),
            Erasure::AllTenants { .. } => self
                .tables
                .users
                .keys()
                .into_iter()
                .filter(|key| erasure.covers(key))
                .collect(),
        };
        users.extend(
            self.decisions
                .remove_where(|d| erasure.covers(&d.user), now)
                .into_iter()
                .map(|d| d.user),
        );
        for user in &users {
            self.tables.users.remove(user);
        }
        let ids: std::collections::HashSet<HashedId> = match erasure {
            // A user who only ever failed still has a user entry; one whose
            // entry was evicted may still be counted at an address.
            Erasure::Tenant(user) => std::iter::once(user.id).collect(),
            Erasure::AllTenants { .. } => users.iter().map(|u| u.id).collect(),
        };
        for state in self.tables.ips.states() {
            lock(&state)
                .failed_users
                .retain(|user, _| !ids.contains(user));
        }
        Erased {
            users: u64::try_from(users.len()).unwrap_or(u64::MAX),
        }
    }

    /// Applies `record`; false for a success refused under a compromise
    /// mark.
    fn record_now(&self, record: &Record, now: UnixSeconds) -> bool {
        let limits = self.limits;
        match *record {
            Record::Success {
                user,
                device,
                country,
                location,
                decided_under,
                step_up,
            } => {
                let state = self.tables.users.get_or_default(user, now);
                let mut state = lock(&state);
                if let Some((since, until)) = state.compromise
                    && until > now
                {
                    if decided_under != Some(since) {
                        return false;
                    }
                    if step_up {
                        state.compromise = None;
                    }
                }
                state.last_success = Some(now);
                state.failures.clear();
                let fresh = now - limits.retention;
                if let Some(device) = device {
                    remember(&mut state.devices, device, now, fresh, limits.max_devices);
                }
                if let Some(country) = country {
                    remember(
                        &mut state.countries,
                        country,
                        now,
                        fresh,
                        limits.max_countries,
                    );
                }
                if let Some(location) = location {
                    state.last_location = Some(location);
                }
            }
            Record::Compromised {
                user,
                device,
                country,
                location,
                decision,
                until,
            } => {
                if let Some(id) = decision {
                    self.decisions.remove(id.as_u128());
                }
                let state = self.tables.users.get_or_default(user, now);
                let mut state = lock(&state);
                if let Some(device) = device {
                    state.devices.retain(|(d, _)| *d != device);
                }
                if let Some(country) = country {
                    state.countries.retain(|(c, _)| *c != country);
                }
                if let (Some(reported), Some(last)) = (location, state.last_location)
                    && reported.same_place(&last)
                {
                    state.last_location = None;
                }
                // A newer report starts a newer mark: a step-up asked for
                // under the older one does not lift it.
                state.compromise = Some(match state.compromise {
                    Some((since, ends)) if ends > now => (now.max(since + 1), ends.max(until)),
                    _ => (now, until),
                });
            }
            Record::ConfirmedSafe { user } => {
                if let Some(state) = self.tables.users.get(&user, now) {
                    lock(&state).compromise = None;
                }
            }
            Record::Failure { user, device, ip } => {
                {
                    let state = self.tables.users.get_or_default(user, now);
                    let mut state = lock(&state);
                    let failure = Failure {
                        at: now,
                        device: device_tag(device),
                    };
                    push_bounded(&mut state.failures, failure, limits.max_events);
                }
                let state = self.tables.ips.get_or_default(ip_key(ip), now);
                let mut state = lock(&state);
                push_bounded(&mut state.failures, now, limits.max_events);
                let since = now - window(limits.windows.ip_distinct_users_secs);
                state.failed_users.retain(|_, t| *t > since);
                if state.failed_users.len() < limits.max_events
                    || state.failed_users.contains_key(&user.id)
                {
                    state.failed_users.insert(user.id, now);
                }
            }
        }
        true
    }
}

#[async_trait]
impl ContextStore for MemoryStore {
    async fn lookup(&self, key: &Lookup, now: UnixSeconds) -> Result<StoredContext, StoreError> {
        Ok(self.lookup_now(key, now))
    }

    async fn record(&self, record: &Record, now: UnixSeconds) -> Result<bool, StoreError> {
        Ok(self.record_now(record, now))
    }

    async fn remember_decision(
        &self,
        id: DecisionId,
        decision: &IssuedDecision,
        now: UnixSeconds,
    ) -> Result<(), StoreError> {
        self.decisions.insert(id.as_u128(), *decision, now);
        Ok(())
    }

    async fn issued_decision(
        &self,
        id: DecisionId,
        now: UnixSeconds,
    ) -> Result<Option<IssuedDecision>, StoreError> {
        Ok(self.decisions.get(id.as_u128(), now))
    }

    async fn bind_decision_device(
        &self,
        id: DecisionId,
        device: HashedId,
        now: UnixSeconds,
    ) -> Result<Option<HashedId>, StoreError> {
        Ok(self
            .decisions
            .update(id.as_u128(), now, |d| {
                d.device.get_or_insert(device);
            })
            .and_then(|d| d.device))
    }

    async fn forget(&self, erasure: &Erasure, now: UnixSeconds) -> Result<Erased, StoreError> {
        Ok(self.forget_now(erasure, now))
    }

    fn sizes(&self) -> (u64, u64) {
        (self.tables.users.len(), self.tables.ips.len())
    }

    fn stats(&self) -> crate::metrics::StoreStats {
        let (users, ips) = self.sizes();
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        crate::metrics::StoreStats {
            users,
            ips,
            decisions: u64::try_from(self.decisions.len()).unwrap_or(u64::MAX),
            user_evictions: read(&self.tables.users.evicted),
            ip_evictions: read(&self.tables.ips.evicted),
            round_trips: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pseudonym::Pseudonymizer;

    const T0: UnixSeconds = 1_700_000_000;

    fn store() -> MemoryStore {
        MemoryStore::new(&StoreConfig::default(), WindowConfig::default())
    }

    fn ids() -> (UserKey, UserKey, HashedId, IpAddr) {
        let p = Pseudonymizer::new([1; 32]);
        (
            p.user_key("", "alice"),
            p.user_key("", "bob"),
            p.device("laptop"),
            "203.0.113.5".parse().unwrap(),
        )
    }

    fn lookup(user: UserKey, device: Option<HashedId>, ip: IpAddr) -> Lookup {
        Lookup {
            user,
            device,
            ip,
            country: None,
        }
    }

    fn failure(user: UserKey, ip: IpAddr) -> Record {
        Record::Failure {
            user,
            device: None,
            ip,
        }
    }

    fn success(user: UserKey, device: Option<HashedId>) -> Record {
        Record::Success {
            user,
            device,
            country: None,
            location: None,
            decided_under: None,
            step_up: false,
        }
    }

    #[test]
    fn failed_attempt_does_not_make_device_known() {
        let s = store();
        let (alice, _, laptop, ip) = ids();
        s.record_now(&failure(alice, ip), T0);
        let seen = s.lookup_now(&lookup(alice, Some(laptop), ip), T0 + 1);
        assert!(!seen.user.device_known);
        assert_eq!(seen.user.last_success, None);
        assert_eq!(seen.user.failures, 1);
    }

    fn small_store(retention_secs: u64, max_users: u64) -> MemoryStore {
        let config = StoreConfig {
            retention_secs,
            max_users,
            ..StoreConfig::default()
        };
        MemoryStore::new(&config, WindowConfig::default())
    }

    #[test]
    fn an_entry_idle_for_the_retention_period_is_gone_and_restarts_empty() {
        let s = small_store(3600, 1000);
        let (alice, _, laptop, ip) = ids();
        let key = lookup(alice, Some(laptop), ip);
        s.record_now(&success(alice, Some(laptop)), T0);
        s.record_now(&failure(alice, ip), T0 + 10);
        // Each lookup counts as use, so a user seen every 50 minutes stays.
        for hour in 0..5 {
            let at = T0 + 10 + hour * 3000;
            assert!(s.lookup_now(&key, at).user.last_success.is_some(), "{at}");
        }
        // Idle past the retention: unseen, and dropped on that lookup.
        let idle = T0 + 10 + 4 * 3000 + 3600;
        let gone = s.lookup_now(&key, idle);
        assert_eq!(gone.user.last_success, None);
        assert_eq!(gone.ip.failures, 0, "the address was idle as long");
        assert_eq!(
            s.sizes(),
            (0, 0),
            "both entries were dropped on that lookup"
        );
        // A failure after that starts an entry afresh, not on the old one.
        s.record_now(&failure(alice, ip), idle + 1);
        let fresh = s.lookup_now(&key, idle + 1);
        assert_eq!((fresh.user.failures, fresh.user.last_success), (1, None));
        assert_eq!(fresh.ip.failures, 1);
    }

    #[test]
    fn a_state_removed_while_a_writer_holds_it_is_marked_and_the_writer_gets_a_live_one() {
        let s = small_store(3600, 1000);
        let (alice, bob, _, ip) = ids();
        // A new state is live from its first moment, so a lookup racing its
        // creation cannot take it for an idle one.
        let created = s.tables.users.get_or_default(bob, T0);
        assert!(s.tables.users.get(&bob, T0).is_some());
        drop(created);
        s.record_now(&failure(alice, ip), T0);
        let held = s.tables.users.get_or_default(alice, T0);
        // A sweep much later removes it while it is held, and marks it.
        s.tables.users.latest.store(T0 + 10_000, Ordering::Relaxed);
        s.tables.users.sweep();
        assert!(!s.tables.users.contains(&alice));
        assert_eq!(*lock(&held).touched(), DEAD);
        // The next writer gets a state that is in the cache, not the dead one.
        let again = s.tables.users.get_or_default(alice, T0 + 10_001);
        assert!(!Arc::ptr_eq(&held, &again));
        assert!(s.tables.users.contains(&alice));
    }

    #[test]
    fn a_sweep_drops_idle_entries_from_memory() {
        let s = small_store(3600, 1000);
        let (alice, bob, _, ip) = ids();
        s.record_now(&failure(alice, ip), T0);
        s.record_now(&failure(bob, ip), T0 + 3000);
        s.tables.users.sweep();
        assert_eq!(s.sizes(), (2, 1));
        // Bob and the address were used later than Alice.
        s.lookup_now(&lookup(bob, None, ip), T0 + 3700);
        s.tables.users.sweep();
        s.tables.ips.sweep();
        assert_eq!(s.sizes(), (1, 1));
        assert!(s.tables.users.contains(&bob));
        assert!(!s.tables.users.contains(&alice));
    }

    #[test]
    fn capacity_bounds_the_users_held_and_counts_what_it_pushes_out() {
        let s = small_store(3600, 200);
        let p = Pseudonymizer::new([1; 32]);
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        for n in 0..2000 {
            s.record_now(&failure(p.user_key("", &format!("user-{n}")), ip), T0);
        }
        let stats = s.stats();
        assert!(stats.users <= 220, "{} users held", stats.users);
        assert!(stats.users >= 100, "{} users held", stats.users);
        assert_eq!(
            stats.user_evictions,
            2000 - stats.users,
            "every user pushed out is counted"
        );
    }

    #[test]
    fn success_makes_device_known_and_resets_failures() {
        let s = store();
        let (alice, _, laptop, ip) = ids();
        s.record_now(&failure(alice, ip), T0);
        s.record_now(&success(alice, Some(laptop)), T0 + 10);
        let seen = s.lookup_now(&lookup(alice, Some(laptop), ip), T0 + 20);
        assert!(seen.user.device_known);
        assert_eq!(seen.user.last_success, Some(T0 + 10));
        assert_eq!(seen.user.failures, 0);
        // The IP keeps its failure: a success does not launder an address.
        assert_eq!(seen.ip.failures, 1);
    }

    #[test]
    fn user_failures_slide_out_of_the_window() {
        let s = store();
        let (alice, _, _, ip) = ids();
        for i in 0..5 {
            s.record_now(&failure(alice, ip), T0 + i * 60);
        }
        let window = window(WindowConfig::default().user_failures_secs);
        let at = |t| s.lookup_now(&lookup(alice, None, ip), t).user.failures;
        assert_eq!(at(T0 + 4 * 60), 5);
        // The first failure (at T0) leaves the window exactly `window` later.
        assert_eq!(at(T0 + window), 4);
        assert_eq!(at(T0 + 4 * 60 + window), 0);
    }

    #[test]
    fn distinct_failed_users_count_each_user_once() {
        let s = store();
        let (alice, bob, _, ip) = ids();
        for t in 0..3 {
            s.record_now(&failure(alice, ip), T0 + t);
        }
        s.record_now(&failure(bob, ip), T0 + 5);
        let seen = s.lookup_now(&lookup(alice, None, ip), T0 + 6);
        assert_eq!(seen.ip.failures, 4);
        assert_eq!(seen.ip.distinct_failed_users, 2);
        let later = T0 + window(WindowConfig::default().ip_distinct_users_secs) + 3;
        let seen = s.lookup_now(&lookup(alice, None, ip), later);
        assert_eq!(
            seen.ip.distinct_failed_users, 1,
            "alice's failures left the window"
        );
    }

    #[test]
    fn oldest_device_is_forgotten_past_the_per_user_bound() {
        let config = StoreConfig {
            max_devices_per_user: 2,
            ..StoreConfig::default()
        };
        let s = MemoryStore::new(&config, WindowConfig::default());
        let p = Pseudonymizer::new([1; 32]);
        let (alice, ip) = (p.user_key("", "alice"), "192.0.2.1".parse().unwrap());
        for (i, d) in ["a", "b", "c"].iter().enumerate() {
            let device = Some(p.device(d));
            s.record_now(&success(alice, device), T0 + i as i64);
        }
        let known = |d| {
            s.lookup_now(&lookup(alice, Some(p.device(d)), ip), T0 + 10)
                .user
                .device_known
        };
        assert!(!known("a"));
        assert!(known("b"));
        assert!(known("c"));
    }

    #[test]
    fn device_unused_for_the_retention_period_is_no_longer_known() {
        let s = store();
        let (alice, _, laptop, ip) = ids();
        let retention = window(StoreConfig::default().retention_secs);
        s.record_now(&success(alice, Some(laptop)), T0);
        let seen = s.lookup_now(&lookup(alice, Some(laptop), ip), T0 + retention);
        assert!(!seen.user.device_known);
    }

    #[test]
    fn success_teaches_country_and_location_and_a_failure_teaches_neither() {
        let s = store();
        let (alice, _, _, ip) = ids();
        let gb = CountryCode::parse("GB");
        let at_london = |t| Some(StoredLocation::new(51.51, -0.09, 10, t));
        s.record_now(&failure(alice, ip), T0);
        let mut key = lookup(alice, None, ip);
        key.country = gb;
        let seen = s.lookup_now(&key, T0 + 1);
        assert!(!seen.user.country_known);
        assert_eq!(seen.user.last_location, None);

        s.record_now(
            &Record::Success {
                user: alice,
                device: None,
                country: gb,
                location: at_london(T0 + 2),
                decided_under: None,
                step_up: false,
            },
            T0 + 2,
        );
        let seen = s.lookup_now(&key, T0 + 3);
        assert!(seen.user.country_known);
        assert_eq!(seen.user.last_location, at_london(T0 + 2));
        key.country = CountryCode::parse("FR");
        assert!(!s.lookup_now(&key, T0 + 3).user.country_known);

        // A later success without a position keeps the last known one.
        s.record_now(&success(alice, None), T0 + 4);
        assert_eq!(
            s.lookup_now(&key, T0 + 5).user.last_location,
            at_london(T0 + 2)
        );
    }

    #[test]
    fn countries_are_forgotten_after_the_retention_period() {
        let s = store();
        let (alice, _, _, ip) = ids();
        let gb = CountryCode::parse("GB");
        s.record_now(
            &Record::Success {
                user: alice,
                device: None,
                country: gb,
                location: Some(StoredLocation::new(51.5, -0.1, 10, T0)),
                decided_under: None,
                step_up: false,
            },
            T0,
        );
        let retention = window(StoreConfig::default().retention_secs);
        let mut key = lookup(alice, None, ip);
        key.country = gb;
        let seen = s.lookup_now(&key, T0 + retention);
        assert!(!seen.user.country_known);
        assert_eq!(seen.user.last_location, None);
    }

    #[test]
    fn lookup_never_creates_entries() {
        let s = store();
        let (alice, _, laptop, ip) = ids();
        s.lookup_now(&lookup(alice, Some(laptop), ip), T0);
        assert_eq!(s.sizes(), (0, 0));
    }

    #[test]
    fn failure_counts_saturate_at_the_event_bound() {
        let config = StoreConfig {
            max_events_per_key: 3,
            ..StoreConfig::default()
        };
        let s = MemoryStore::new(&config, WindowConfig::default());
        let (alice, _, _, ip) = ids();
        for t in 0..10 {
            s.record_now(&failure(alice, ip), T0 + t);
        }
        let seen = s.lookup_now(&lookup(alice, None, ip), T0 + 10);
        assert_eq!((seen.user.failures, seen.ip.failures), (3, 3));
    }

    #[test]
    fn failures_remember_the_device_they_were_reported_with() {
        let s = store();
        let p = Pseudonymizer::new([1; 32]);
        let (carol, ip) = (p.user_key("", "carol"), "203.0.113.66".parse().unwrap());
        let (phone, other) = (p.device("carol-phone"), p.device("atk-dev"));
        for device in [None, Some(other), Some(other), Some(phone)] {
            s.record_now(
                &Record::Failure {
                    user: carol,
                    device,
                    ip,
                },
                T0,
            );
        }
        let seen = |device| s.lookup_now(&lookup(carol, device, ip), T0 + 1).user;
        assert_eq!(
            (
                seen(Some(phone)).failures,
                seen(Some(phone)).failures_on_device
            ),
            (4, 1)
        );
        assert_eq!(seen(Some(other)).failures_on_device, 2);
        assert_eq!(
            seen(None).failures_on_device,
            0,
            "no device named, none on it"
        );
        let window = window(WindowConfig::default().user_failures_secs);
        let later = s
            .lookup_now(&lookup(carol, Some(phone), ip), T0 + window)
            .user;
        assert_eq!((later.failures, later.failures_on_device), (0, 0));
    }

    #[test]
    fn decisions_are_remembered_until_their_ttl() {
        let s = store();
        let (alice, _, laptop, _) = ids();
        let id = DecisionId::new();
        let issued = IssuedDecision {
            user: alice,
            device: Some(laptop),
            journey: super::super::JourneyKey::of("login"),
            ip: "203.0.113.5".parse().unwrap(),
            from: crate::decision::Aal::One,
            demand: Some(crate::decision::Aal::Two),
            reauth: false,
            compromise: None,
        };
        let ttl = window(StoreConfig::default().decision_ttl_secs);
        let found = |now| block(s.issued_decision(id, now));
        assert_eq!(found(T0), None, "nothing before it is remembered");
        block(s.remember_decision(id, &issued, T0));
        assert_eq!(found(T0 + ttl - 1).as_ref(), Some(&issued));
        assert_eq!(found(T0 + ttl), None, "expired");
        assert_eq!(block(s.issued_decision(DecisionId::new(), T0)), None);
    }

    #[test]
    fn an_erasure_removes_the_user_everywhere_it_is_counted_and_nothing_else() {
        let s = store();
        let p = Pseudonymizer::new([1; 32]);
        let (alice, bob, laptop, ip) = ids();
        let alice_acme = p.user_key("acme", "alice");
        for user in [alice, bob, alice_acme] {
            s.record_now(&success(user, Some(laptop)), T0);
            s.record_now(&failure(user, ip), T0 + 1);
        }
        let id = DecisionId::new();
        let issued = IssuedDecision {
            user: alice,
            device: None,
            journey: super::super::JourneyKey::of("login"),
            ip,
            from: crate::decision::Aal::One,
            demand: None,
            reauth: false,
            compromise: None,
        };
        block(s.remember_decision(id, &issued, T0));
        let seen = |user| s.lookup_now(&lookup(user, Some(laptop), ip), T0 + 2);
        assert_eq!(seen(alice).ip.distinct_failed_users, 3);

        let erased = block(s.forget(&Erasure::Tenant(alice), T0 + 2));
        assert_eq!(erased.users, 1);
        assert_eq!(seen(alice).user, UserContext::default());
        assert_eq!(seen(alice).ip.distinct_failed_users, 2);
        assert_eq!(block(s.issued_decision(id, T0 + 2)), None);
        assert!(
            seen(alice_acme).user.device_known,
            "another tenant is another user"
        );
        assert!(seen(bob).user.device_known);

        let everywhere = block(s.forget(
            &Erasure::AllTenants {
                person: alice.person,
            },
            T0 + 3,
        ));
        assert_eq!(everywhere.users, 1);
        assert!(!seen(alice_acme).user.device_known);
        assert_eq!(seen(bob).ip.distinct_failed_users, 1);
        assert_eq!(
            block(s.forget(
                &Erasure::AllTenants {
                    person: alice.person
                },
                T0 + 4
            ))
            .users,
            0
        );
    }

    /// Runs a store call to completion; the memory store never waits.
    fn block<T>(f: impl std::future::Future<Output = Result<T, StoreError>>) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(f).expect("memory store never fails")
    }
}

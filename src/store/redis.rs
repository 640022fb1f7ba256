//! The shared context store: Redis, Redis Cluster or Valkey, so that every
//! replica behind a load balancer sees the same users and addresses.
//!
//! Every change is one Lua script per hash slot, so each update and its
//! expiry are atomic and take `now` from stepgate's clock (never Redis's);
//! reads are plain pipelined commands, and windows are counted here from
//! stored times against that `now`, exactly as the memory store counts
//! them. Decisions are written behind the answer in batches
//! ([`DecisionWriter`]). Key TTLs only clean up. A short-lived moka L1
//! remembers devices and countries found known (never counters, never
//! "unknown"), so a device learned on another replica is seen at once.
//!
//! Key layout, version 1 (`P` the tenant-free person hash, `U` the
//! tenant-scoped user hash, `A` the keyed hash of the address, all hex;
//! `{…}` is the Cluster hash tag, so one person's keys share a slot):
//!
//! | key | type | holds | expires after |
//! | --- | --- | --- | --- |
//! | `<prefix>:1:{P}:t` | set | the `U`s of this person, one per tenant | retention (or the decision TTL, if longer) |
//! | `<prefix>:1:{P}:u:U:s` | hash | `ls` last success, `loc` last position (0.1°), `cs`/`cu` the compromise mark's start and end | retention, or the mark's end if later |
//! | `<prefix>:1:{P}:u:U:dev` | zset | device hash → last completed sign-in | retention |
//! | `<prefix>:1:{P}:u:U:cty` | zset | country → last completed sign-in | retention |
//! | `<prefix>:1:{P}:u:U:f` | list | failures, `time:device-tag`, newest first | user window |
//! | `<prefix>:1:{P}:u:U:a` | zset | `A`s whose distinct-user sets hold `U` → last failure (for erasure; at most `max_events_per_key`) | 2 × distinct window |
//! | `<prefix>:1:{P}:u:U:d` | zset | decision ids about `U` → made at (for erasure; at most `max_events_per_key`) | decision TTL |
//! | `<prefix>:1:{a:A}:f` | list | failure times from the address, newest first | IP window |
//! | `<prefix>:1:{a:A}:u` | zset | `U` → last failure from the address | distinct window |
//! | `<prefix>:1:{d:ID}` | hash | one remembered decision (`u p dev j ip from dem re cs at`; `re` is 1 for a step-up to authenticate again, `cs` the compromise mark standing when it was made; both absent in older entries) | decision TTL |

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisFuture, Script, Value};

use crate::config::{RedisConfig, StoreConfig, WindowConfig};
use crate::decision::{Aal, DecisionId, UnixSeconds};
use crate::pseudonym::{HashedId, Pseudonymizer};

use super::{
    ContextStore, CountryCode, Erased, Erasure, IpContext, IssuedDecision, JourneyKey, Lookup,
    Record, StoreError, StoredContext, StoredLocation, UserContext, UserKey, ip_key,
};

/// The layout version in every key name; bump it when the layout changes
/// so that two versions never read each other's data.
pub const KEY_VERSION: &str = "1";

/// A completed sign-in. KEYS: t s dev cty f. ARGV: now, fresh, retention
/// TTL, U, device, country, position, max devices, max countries, the
/// compromise mark its decision was made under (its start, or ''), '1' if
/// that decision was a step-up. Under a standing mark only a decision made
/// under it teaches (returns 0 otherwise), and its step-up lifts the mark.
const RECORD_SUCCESS: &str = r"
local now, fresh, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mark = redis.call('HMGET', KEYS[2], 'cs', 'cu')
if mark[1] and mark[2] and tonumber(mark[2]) > tonumber(now) then
  if ARGV[10] ~= mark[1] then return 0 end
  if ARGV[11] == '1' then
    redis.call('HDEL', KEYS[2], 'cs', 'cu')
    redis.call('EXPIRE', KEYS[2], ttl)
  end
end
redis.call('SADD', KEYS[1], ARGV[4])
local left = redis.call('TTL', KEYS[1])
if left < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
redis.call('HSET', KEYS[2], 'ls', now)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'loc', ARGV[7]) end
-- Never shortened: a compromise mark may outlive the retention period.
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
redis.call('DEL', KEYS[5])
-- The one seen longest ago makes room, never the one being learned.
local function remember(key, member, max)
  if member == '' then return end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fresh)
  if not redis.call('ZSCORE', key, member) then
    local over = redis.call('ZCARD', key) - max + 1
    if over > 0 then redis.call('ZPOPMIN', key, over) end
  end
  redis.call('ZADD', key, now, member)
  redis.call('EXPIRE', key, ttl)
end
remember(KEYS[3], ARGV[5], tonumber(ARGV[8]))
remember(KEYS[4], ARGV[6], tonumber(ARGV[9]))
return 1
";

/// A compromise report. KEYS: t s dev cty. ARGV: now, mark's end, U,
/// device, country, the reported position's `lat,lon,` prefix (or ''),
/// retention TTL. A newer mark starts now and ends at the later end.
const RECORD_COMPROMISE: &str = r"
local now, ends, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[7])
redis.call('SADD', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[3], ARGV[4]) end
if ARGV[5] ~= '' then redis.call('ZREM', KEYS[4], ARGV[5]) end
if ARGV[6] ~= '' then
  local loc = redis.call('HGET', KEYS[2], 'loc')
  if loc and string.sub(loc, 1, #ARGV[6]) == ARGV[6] then redis.call('HDEL', KEYS[2], 'loc') end
end
local since = now
local mark = redis.call('HMGET', KEYS[2], 'cs', 'cu')
if mark[1] and mark[2] and tonumber(mark[2]) > now then
  -- A newer mark: later than the standing one, ending no sooner.
  since = math.max(now, tonumber(mark[1]) + 1)
  ends = math.max(ends, tonumber(mark[2]))
end
redis.call('HSET', KEYS[2], 'cs', since, 'cu', ends)
if ends - now > ttl then ttl = ends - now end
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
return 1
";

/// A failure, the user's side. KEYS: t f a. ARGV: failure entry, max
/// events, user window TTL, A, index TTL, U, retention TTL, now.
const RECORD_FAILURE_USER: &str = r"
local max, index_ttl, now = tonumber(ARGV[2]), tonumber(ARGV[5]), tonumber(ARGV[8])
redis.call('SADD', KEYS[1], ARGV[6])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[7]) then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, max - 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - index_ttl)
redis.call('ZADD', KEYS[3], now, ARGV[4])
local over = redis.call('ZCARD', KEYS[3]) - max
if over > 0 then redis.call('ZPOPMIN', KEYS[3], over) end
redis.call('EXPIRE', KEYS[3], index_ttl)
return 1
";

/// A failure, the address's side. KEYS: f u. ARGV: now, max events, IP
/// window TTL, distinct since, U, distinct window TTL.
const RECORD_FAILURE_ADDRESS: &str = r"
local max = tonumber(ARGV[2])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, max - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[2]) < max or redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[5])
end
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
";

/// A decision. KEYS: the decision. ARGV: TTL, then its fields and values.
const REMEMBER_DECISION: &str = r"
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
";

/// A decision made about `U`, indexed for erasure (at most `max`, the
/// oldest dropped first: those expire soonest anyway). KEYS: t d. ARGV:
/// now, id, decision TTL, U, oldest still remembered, max, the person's
/// set's TTL.
const INDEX_DECISION: &str = r"
redis.call('SADD', KEYS[1], ARGV[4])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[7]) then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then redis.call('ZPOPMIN', KEYS[2], over) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
";

/// Binds a decision to a device the first time. KEYS: the decision. ARGV:
/// device, oldest still remembered. Returns the bound device, or false.
const BIND_DEVICE: &str = r"
local at = redis.call('HGET', KEYS[1], 'at')
if not at or tonumber(at) <= tonumber(ARGV[2]) then return false end
redis.call('HSETNX', KEYS[1], 'dev', ARGV[1])
return redis.call('HGET', KEYS[1], 'dev')
";

/// What an erasure must clean up outside a person's slot, read before
/// anything is deleted so that a failed erasure can be retried. KEYS: t.
/// ARGV: the key base of their users (`<prefix>:1:{P}:u:`), the U to
/// erase or `*` for every one. Returns, per user, {U, addresses, decision
/// ids}.
///
/// The user keys it reads are built from the base rather than passed in
/// KEYS (the users are only known here); they share the person's hash tag
/// and so the slot of KEYS[1], which is what Redis Cluster requires.
const FORGET_LIST: &str = r"
local users
if ARGV[2] == '*' then users = redis.call('SMEMBERS', KEYS[1]) else users = {ARGV[2]} end
local out = {}
for _, u in ipairs(users) do
  local base = ARGV[1] .. u
  table.insert(out, {u, redis.call('ZRANGE', base .. ':a', 0, -1), redis.call('ZRANGE', base .. ':d', 0, -1)})
end
return out
";

/// Erases users of one person, once everything outside their slot is
/// gone. KEYS: t. ARGV: the key base, then the Us. Returns, per U, how
/// many of its keys existed.
const FORGET_ERASE: &str = r"
local out = {}
for i = 2, #ARGV do
  local base = ARGV[1] .. ARGV[i]
  table.insert(out, redis.call('DEL', base .. ':s', base .. ':dev', base .. ':cty', base .. ':f', base .. ':a', base .. ':d'))
  redis.call('SREM', KEYS[1], ARGV[i])
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return out
";

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &[u8]) -> Option<[u8; 16]> {
    let text = std::str::from_utf8(text).ok()?;
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, i) in out.iter_mut().zip((0..32).step_by(2)) {
        *byte = u8::from_str_radix(text.get(i..i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Eight bytes of a hashed device id as the failure lists tag it; "0" for
/// none. Matches the memory store's pooling chance (one in 2^64).
fn device_tag(device: Option<HashedId>) -> String {
    device.map_or_else(
        || "0".to_owned(),
        |d| hex(d.as_bytes().get(..8).unwrap_or(&[1; 8])),
    )
}

fn secs(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A TTL in whole seconds for EXPIRE: at least one.
fn ttl(value: u64) -> u64 {
    value.max(1)
}

/// The keys of one person, tenant and address, spelled once.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn person(&self, person: HashedId) -> String {
        format!(
            "{}:{KEY_VERSION}:{{{}}}",
            self.prefix,
            hex(person.as_bytes())
        )
    }

    fn tenants(&self, person: HashedId) -> String {
        format!("{}:t", self.person(person))
    }

    /// The base every key of one user starts with.
    fn user_base(&self, person: HashedId) -> String {
        format!("{}:u:", self.person(person))
    }

    fn user(&self, user: &UserKey, part: &str) -> String {
        format!(
            "{}{}:{part}",
            self.user_base(user.person),
            hex(user.id.as_bytes())
        )
    }

    fn address(&self, address: &str, part: &str) -> String {
        format!("{}:{KEY_VERSION}:{{a:{address}}}:{part}", self.prefix)
    }

    fn decision(&self, id: u128) -> String {
        format!("{}:{KEY_VERSION}:{{d:{id:032x}}}", self.prefix)
    }
}

/// A connection to a single Redis (reconnecting by itself) or to a Cluster
/// (connected lazily, and again after a failure, with backoff).
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The first wait before connecting again, doubling up to the second.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Commands an erasure sends at once to other slots.
const ERASURE_BATCH: usize = 256;
/// The longest one batch of decision writes may take.
const WRITE_BEHIND_TIMEOUT: Duration = Duration::from_secs(2);
/// The most decisions waiting to be written; more are not remembered (and
/// counted as failed writes) until Redis catches up.
const WRITE_QUEUE_MAX: usize = 100_000;

/// What stepgate connects to.
enum Target {
    Single {
        client: redis::Client,
        config: redis::AsyncConnectionConfig,
    },
    Cluster(ClusterClient),
}

/// Where the shared connection stands.
#[derive(Clone)]
enum Link {
    /// The first attempt is under way.
    Connecting,
    Up(Connection),
    /// Why Redis cannot be used now: the last attempt's error, or how the
    /// connection was lost. Attempts go on in the background.
    Down(String),
}

/// Makes the one shared connection in a task of its own, so a request
/// that gives up waiting (its budget spent) never cuts a handshake short,
/// and makes it again after it is lost, no more often than the backoff
/// allows. While it is down, requests fail at once with the reason
/// instead of each waiting out its budget. A Cluster connection follows
/// the Cluster's changes and reconnects to its nodes by itself; a single
/// Redis's connection is dropped and made again when it breaks.
struct Connector {
    target: Target,
    link: tokio::sync::watch::Sender<Link>,
    /// An attempt is under way.
    connecting: std::sync::atomic::AtomicBool,
    /// When the next attempt may start, and the wait after that.
    next_attempt: Mutex<(Instant, Duration)>,
}

impl Connector {
    async fn connect(self: &Arc<Self>) -> Result<Connection, StoreError> {
        let mut link = self.link.subscribe();
        let now = link.borrow().clone();
        let settled = match now {
            Link::Up(connection) => return Ok(connection),
            Link::Down(_) => {
                self.attempt();
                now
            }
            // The first connection: worth waiting for, within the budget.
            Link::Connecting => {
                self.attempt();
                link.wait_for(|l| !matches!(l, Link::Connecting))
                    .await
                    .map_err(|_| StoreError::Unavailable("the Redis connector stopped".into()))?
                    .clone()
            }
        };
        match settled {
            Link::Up(connection) => Ok(connection),
            Link::Down(why) => Err(StoreError::Unavailable(format!("{why} (reconnecting)"))),
            Link::Connecting => Err(StoreError::Unavailable("connecting to Redis".into())),
        }
    }

    /// An operation failed with `error`: a single Redis's connection that
    /// broke is dropped, so that a new one is made.
    fn failed(self: &Arc<Self>, error: &RedisError) {
        let broken = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error();
        if !broken || matches!(self.target, Target::Cluster(_)) {
            return;
        }
        let lost = self.link.send_if_modified(|link| {
            if matches!(link, Link::Up(_)) {
                *link = Link::Down(format!("lost the connection to Redis: {error}"));
                true
            } else {
                false
            }
        });
        if lost {
            tracing::warn!(%error, "lost the connection to Redis; decisions take their tier's failure mode until it is back");
        }
        self.attempt();
    }

    /// Starts an attempt unless one is under way or the backoff says wait.
    fn attempt(self: &Arc<Self>) {
        {
            let mut next = self
                .next_attempt
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if now < next.0 || self.connecting.swap(true, Ordering::AcqRel) {
                return;
            }
            *next = (now + next.1, (next.1 * 2).min(BACKOFF_MAX));
        }
        let this = self.clone();
        tokio::spawn(async move {
            let made = match &this.target {
                Target::Single { client, config } => client
                    .get_multiplexed_async_connection_with_config(config)
                    .await
                    .map(Connection::Single),
                Target::Cluster(client) => {
                    client.get_async_connection().await.map(Connection::Cluster)
                }
            };
            match made {
                Ok(connection) => {
                    *this
                        .next_attempt
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = (Instant::now(), BACKOFF_MIN);
                    let before = this.link.send_replace(Link::Up(connection));
                    match before {
                        Link::Down(_) => tracing::info!("Redis is reachable again"),
                        Link::Connecting | Link::Up(_) => tracing::info!("connected to Redis"),
                    }
                }
                Err(error) => {
                    let why = format!("cannot connect to Redis: {error}");
                    let before = this.link.send_replace(Link::Down(why.clone()));
                    // Once per new reason, not once per attempt.
                    if !matches!(&before, Link::Down(old) if *old == why) {
                        tracing::warn!(%error, "cannot connect to Redis; retrying with backoff (decisions take their tier's failure mode meanwhile)");
                    }
                }
            }
            this.connecting.store(false, Ordering::Release);
        });
    }
}

fn unavailable(error: &RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// What the L1 remembers as known for a user: a device or a country.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Known {
    Device(HashedId),
    Country(CountryCode),
}

#[derive(Clone)]
struct Scripts {
    record_success: Script,
    record_compromise: Script,
    record_failure_user: Script,
    record_failure_address: Script,
    remember_decision: Script,
    index_decision: Script,
    bind_device: Script,
    forget_list: Script,
    forget_erase: Script,
}

pub struct RedisStore {
    connector: Arc<Connector>,
    keys: Keys,
    scripts: Arc<Scripts>,
    /// Writes decisions behind the answer, in batches.
    writer: Arc<DecisionWriter>,
    /// Hashes client addresses for their keys.
    pseudonymizer: Pseudonymizer,
    config: StoreConfig,
    windows: WindowConfig,
    budget: Duration,
    /// Devices and countries found known, per user, with when that ends
    /// (`l1_ttl_ms` after Redis said so). The end is kept in the entry
    /// rather than left to moka's own expiry, whose upkeep cost a Decide
    /// more than the L1 saved it.
    l1: Option<moka::sync::Cache<(HashedId, Known), Instant>>,
    l1_ttl: Duration,
    round_trips: Arc<AtomicU64>,
}

impl Drop for RedisStore {
    /// The decision writer writes what is queued and stops.
    fn drop(&mut self) {
        self.writer.closed.store(true, Ordering::Release);
        self.writer.more.notify_one();
    }
}

/// Writes remembered decisions behind the answers, many in one round
/// trip. A decision is queued and the Decide returns; one task writes
/// whatever has gathered as one pipeline, and while that write is under
/// way the next batch gathers. So an idle replica writes each decision at
/// once, and a busy one adds a fraction of a round trip per decision.
#[derive(Default)]
struct DecisionWriter {
    queue: Mutex<WriteQueue>,
    /// The last batch written (or given up on): batches are numbered
    /// from 1.
    done: tokio::sync::watch::Sender<u64>,
    more: tokio::sync::Notify,
    /// The writing task has been started (on the first decision, inside
    /// the runtime).
    started: std::sync::OnceLock<()>,
    /// Where failed writes are counted.
    metrics: Mutex<Option<Arc<crate::metrics::Metrics>>>,
    /// The store is gone: write what is queued, then stop.
    closed: std::sync::atomic::AtomicBool,
    /// Decisions were turned away from a full queue since the last batch
    /// was written (so it is logged once, not per decision).
    overflowing: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct WriteQueue {
    /// Each decision's commands: the decision, its index entry.
    writes: Vec<[Cmd; 2]>,
    /// The batch each queued or in-flight decision goes out in.
    batch_of: std::collections::HashMap<u128, u64>,
    /// The batch the queued decisions go out in.
    next: u64,
}

impl DecisionWriter {
    fn queue(&self) -> std::sync::MutexGuard<'_, WriteQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, id: u128, cmds: [Cmd; 2]) {
        {
            let mut queue = self.queue();
            if queue.writes.len() >= WRITE_QUEUE_MAX {
                drop(queue);
                // Counted every time, logged once until a batch is written.
                if self.overflowing.swap(true, Ordering::AcqRel) {
                    self.count_failed(1);
                } else {
                    self.failed(1, "too many decisions waiting to be written");
                }
                return;
            }
            let batch = queue.next.max(1);
            queue.next = batch;
            queue.writes.push(cmds);
            queue.batch_of.insert(id, batch);
        }
        // Stores a permit when the writer is busy: no task is woken then.
        self.more.notify_one();
    }

    /// Counts `count` decisions that could not be written.
    fn count_failed(&self, count: usize) {
        if let Some(metrics) = &*self.metrics.lock().unwrap_or_else(PoisonError::into_inner) {
            for _ in 0..count {
                metrics.store_error("remember_decision");
            }
        }
    }

    /// Counts and logs `count` decisions that could not be written.
    fn failed(&self, count: usize, error: &str) {
        self.count_failed(count);
        tracing::warn!(%error, decisions = count, "decisions not remembered; reports naming them are judged without them");
    }

    /// Waits until batch `batch` is written or given up on.
    async fn flushed(&self, batch: u64) {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|written| *written >= batch).await;
    }

    async fn run(
        self: Arc<Self>,
        connector: Arc<Connector>,
        scripts: Arc<Scripts>,
        round_trips: Arc<AtomicU64>,
    ) {
        loop {
            let (writes, batch) = {
                let mut queue = self.queue();
                let batch = queue.next.max(1);
                let writes = std::mem::take(&mut queue.writes);
                if !writes.is_empty() {
                    queue.next = batch + 1;
                }
                (writes, batch)
            };
            if writes.is_empty() {
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                self.more.notified().await;
                continue;
            }
            let count = writes.len();
            let failed = match connector.connect().await {
                Ok(mut conn) => {
                    round_trips.fetch_add(1, Ordering::Relaxed);
                    let groups = writes.into_iter().flat_map(|[a, b]| [vec![a], vec![b]]);
                    let needed = [&scripts.remember_decision, &scripts.index_decision];
                    let all = per_slot(&mut conn, groups.collect(), &needed);
                    match tokio::time::timeout(WRITE_BEHIND_TIMEOUT, all).await {
                        Ok(Ok(_)) => None,
                        Ok(Err(error)) => {
                            connector.failed(&error);
                            Some(error.to_string())
                        }
                        Err(_) => Some(format!("no answer within {WRITE_BEHIND_TIMEOUT:?}")),
                    }
                }
                Err(error) => Some(error.to_string()),
            };
            if let Some(error) = failed {
                self.failed(count, &error);
            }
            self.queue().batch_of.retain(|_, b| *b > batch);
            self.done.send_replace(batch);
            self.overflowing.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis or the Cluster `config.redis` names. A single
    /// Redis is connected lazily, so stepgate starts (and answers degraded)
    /// while Redis is down; errors are only a URL that does not parse.
    pub fn new(
        config: &StoreConfig,
        windows: WindowConfig,
        pseudonymizer: Pseudonymizer,
    ) -> Result<Self, StoreError> {
        let redis = &config.redis;
        let connector = connect(redis)?;
        let l1 = (redis.l1_ttl_ms > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(redis.l1_max_entries)
                .build()
        });
        Ok(Self {
            connector,
            keys: Keys {
                prefix: redis.key_prefix.clone(),
            },
            scripts: Arc::new(Scripts {
                record_success: Script::new(RECORD_SUCCESS),
                record_compromise: Script::new(RECORD_COMPROMISE),
                record_failure_user: Script::new(RECORD_FAILURE_USER),
                record_failure_address: Script::new(RECORD_FAILURE_ADDRESS),
                remember_decision: Script::new(REMEMBER_DECISION),
                index_decision: Script::new(INDEX_DECISION),
                bind_device: Script::new(BIND_DEVICE),
                forget_list: Script::new(FORGET_LIST),
                forget_erase: Script::new(FORGET_ERASE),
            }),
            writer: Arc::new(DecisionWriter::default()),
            pseudonymizer,
            config: config.clone(),
            windows,
            budget: Duration::from_millis(redis.timeout_ms),
            l1,
            l1_ttl: Duration::from_millis(redis.l1_ttl_ms),
            round_trips: Arc::default(),
        })
    }

    /// Counts failed writes behind the answer in `metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        *self
            .writer
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(metrics);
        self
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        self.connector.connect().await
    }

    /// A failed call's error, after telling the connector (which drops a
    /// broken connection).
    fn unavailable(&self, error: &RedisError) -> StoreError {
        self.connector.failed(error);
        unavailable(error)
    }

    /// Counts one round trip: everything sent before waiting once.
    fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    fn address(&self, ip: IpAddr) -> String {
        hex(self.pseudonymizer.address(ip_key(ip)).as_bytes())
    }

    fn l1_has(&self, user: &UserKey, known: Known) -> bool {
        self.l1
            .as_ref()
            .and_then(|l1| l1.get(&(user.id, known)))
            .is_some_and(|until| Instant::now() < until)
    }

    fn l1_learn(&self, user: &UserKey, known: Known) {
        if let Some(l1) = &self.l1 {
            l1.insert((user.id, known), Instant::now() + self.l1_ttl);
        }
    }

    /// Forgets what this replica's L1 holds about `users`. Other
    /// replicas' L1s forget within `l1_ttl_ms`.
    fn l1_forget(&self, users: &[HashedId]) {
        if let Some(l1) = &self.l1 {
            let gone: Vec<_> = l1
                .iter()
                .map(|(key, _)| *key)
                .filter(|(user, _)| users.contains(user))
                .collect();
            for key in gone {
                l1.invalidate(&key);
            }
        }
    }

    async fn lookup_now(
        &self,
        key: &Lookup,
        now: UnixSeconds,
    ) -> Result<StoredContext, StoreError> {
        let mut conn = self.connection().await?;
        let w = self.windows;
        let fresh = now - secs(self.config.retention_secs);
        // What the L1 already knows is not asked again.
        let device = key
            .device
            .filter(|d| !self.l1_has(&key.user, Known::Device(*d)));
        let country = key
            .country
            .filter(|c| !self.l1_has(&key.user, Known::Country(*c)));
        // Plain reads rather than a script: on Redis a script costs several
        // times the commands it runs, and this is the call a decision waits
        // for. Windows are counted here, from the stored times.
        let mut user = Vec::with_capacity(4);
        if let Some(d) = device {
            let mut cmd = redis::cmd("ZSCORE");
            cmd.arg(self.keys.user(&key.user, "dev"))
                .arg(hex(d.as_bytes()));
            user.push(cmd);
        }
        if let Some(c) = country {
            let mut cmd = redis::cmd("ZSCORE");
            cmd.arg(self.keys.user(&key.user, "cty")).arg(c.as_str());
            user.push(cmd);
        }
        let mut state = redis::cmd("HMGET");
        state
            .arg(self.keys.user(&key.user, "s"))
            .arg("ls")
            .arg("loc")
            .arg("cs")
            .arg("cu");
        let mut failures = redis::cmd("LRANGE");
        failures.arg(self.keys.user(&key.user, "f")).arg(0).arg(-1);
        user.extend([state, failures]);
        let address = self.address(key.ip);
        let mut ip_failures = redis::cmd("LRANGE");
        ip_failures
            .arg(self.keys.address(&address, "f"))
            .arg(0)
            .arg(-1);
        let mut distinct = redis::cmd("ZCOUNT");
        distinct
            .arg(self.keys.address(&address, "u"))
            .arg(format!("({}", now - secs(w.ip_distinct_users_secs)))
            .arg("+inf");
        // One round trip: a single Redis takes both groups as one
        // pipeline; a Cluster, where the user's and the address's keys
        // live on different slots, gets one pipeline per group, sent to
        // their nodes at once.
        self.trip();
        let values = per_slot(&mut conn, vec![user, vec![ip_failures, distinct]], &[])
            .await
            .map_err(|e| self.unavailable(&e))?;
        let answer = |e: redis::ParsingError| {
            StoreError::Unavailable(format!("unexpected answer from Redis: {e}"))
        };
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or(Value::Nil);
        // Known: seen at a completed sign-in within retention.
        let mut seen = |asked: bool| -> Result<bool, StoreError> {
            if !asked {
                return Ok(false);
            }
            let at: Option<f64> = redis::from_redis_value(next()).map_err(answer)?;
            #[allow(clippy::cast_precision_loss)] // Unix seconds, far below 2^52
            Ok(at.is_some_and(|at| at > fresh as f64))
        };
        let device_known = seen(device.is_some())?;
        let country_known = seen(country.is_some())?;
        let (last_success, location, since, until): (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        ) = redis::from_redis_value(next()).map_err(answer)?;
        let entries: Vec<String> = redis::from_redis_value(next()).map_err(answer)?;
        let ip_entries: Vec<String> = redis::from_redis_value(next()).map_err(answer)?;
        let distinct: u32 = redis::from_redis_value(next()).map_err(answer)?;
        let (failures, on_device) = count_failures(
            &entries,
            now - secs(w.user_failures_secs),
            key.device.map(|d| device_tag(Some(d))),
        );
        let (ip_failures, _) = count_failures(&ip_entries, now - secs(w.ip_failures_secs), None);
        // Learned only from Redis's own answer, so an entry expires
        // `l1_ttl_ms` after Redis last said so, however often it is read.
        if device_known && let Some(d) = device {
            self.l1_learn(&key.user, Known::Device(d));
        }
        if country_known && let Some(c) = country {
            self.l1_learn(&key.user, Known::Country(c));
        }
        Ok(StoredContext {
            user: UserContext {
                device_known: key.device.is_some() && (device.is_none() || device_known),
                last_success: last_success.and_then(|t| t.parse().ok()),
                failures,
                failures_on_device: on_device,
                country_known: key.country.is_some() && (country.is_none() || country_known),
                last_location: location
                    .as_deref()
                    .and_then(parse_location)
                    .filter(|l| l.at > fresh),
                compromised_since: since.filter(|_| until.is_some_and(|u| u > now)),
            },
            ip: IpContext {
                failures: ip_failures,
                distinct_failed_users: distinct,
            },
        })
    }

    async fn record_now(&self, record: &Record, now: UnixSeconds) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let c = &self.config;
        let w = self.windows;
        match *record {
            Record::Success {
                user,
                device,
                country,
                location,
                decided_under,
                step_up,
            } => {
                let mut script = self.scripts.record_success.prepare_invoke();
                script
                    .key(self.keys.tenants(user.person))
                    .key(self.keys.user(&user, "s"))
                    .key(self.keys.user(&user, "dev"))
                    .key(self.keys.user(&user, "cty"))
                    .key(self.keys.user(&user, "f"))
                    .arg(now)
                    .arg(now - secs(c.retention_secs))
                    .arg(ttl(c.retention_secs))
                    .arg(hex(user.id.as_bytes()))
                    .arg(device.map(|d| hex(d.as_bytes())).unwrap_or_default())
                    .arg(country.map(|c| c.as_str().to_owned()).unwrap_or_default())
                    .arg(location.map(format_location).unwrap_or_default())
                    .arg(c.max_devices_per_user)
                    .arg(c.max_countries_per_user)
                    .arg(decided_under.map(|t| t.to_string()).unwrap_or_default())
                    .arg(if step_up { "1" } else { "0" });
                self.trip();
                let taught: i64 = script
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.unavailable(&e))?;
                if taught == 0 {
                    return Ok(false);
                }
                if let Some(d) = device {
                    self.l1_learn(&user, Known::Device(d));
                }
                if let Some(country) = country {
                    self.l1_learn(&user, Known::Country(country));
                }
                Ok(true)
            }
            Record::Compromised {
                user,
                device,
                country,
                location,
                decision,
                until,
            } => {
                // This replica stops trusting at once; the others when
                // their L1 entries end (`l1_ttl_ms`).
                self.l1_forget(&[user.id]);
                let mut script = evalsha(&self.scripts.record_compromise, 4);
                script
                    .arg(self.keys.tenants(user.person))
                    .arg(self.keys.user(&user, "s"))
                    .arg(self.keys.user(&user, "dev"))
                    .arg(self.keys.user(&user, "cty"))
                    .arg(now)
                    .arg(until)
                    .arg(hex(user.id.as_bytes()))
                    .arg(device.map(|d| hex(d.as_bytes())).unwrap_or_default())
                    .arg(country.map(|c| c.as_str().to_owned()).unwrap_or_default())
                    .arg(
                        location
                            .map(|l| format!("{:.1},{:.1},", l.latitude(), l.longitude()))
                            .unwrap_or_default(),
                    )
                    .arg(ttl(c.retention_secs));
                // The reported decision is forgotten, so no later report
                // completes it (its key lives on a slot of its own).
                let mut groups = vec![vec![script]];
                if let Some(id) = decision {
                    // A write still queued here would bring it back.
                    self.written(id).await;
                    let mut forget = redis::cmd("DEL");
                    forget.arg(self.keys.decision(id.as_u128()));
                    groups.push(vec![forget]);
                }
                self.trip();
                let done = per_slot(&mut conn, groups, &[&self.scripts.record_compromise])
                    .await
                    .map(|_| true)
                    .map_err(|e| self.unavailable(&e));
                // A lookup that ran alongside may have cached the device.
                self.l1_forget(&[user.id]);
                done
            }
            Record::ConfirmedSafe { user } => {
                // Lifted, the user's hash goes back to the retention period.
                let key = self.keys.user(&user, "s");
                let mut lift = redis::pipe();
                lift.cmd("HDEL").arg(&key).arg("cs").arg("cu").ignore();
                lift.cmd("EXPIRE")
                    .arg(&key)
                    .arg(ttl(c.retention_secs))
                    .arg("LT")
                    .ignore();
                self.trip();
                lift.query_async::<()>(&mut conn)
                    .await
                    .map(|()| true)
                    .map_err(|e| self.unavailable(&e))
            }
            Record::Failure { user, device, ip } => {
                let address = self.address(ip);
                let user_hex = hex(user.id.as_bytes());
                let mut on_user = evalsha(&self.scripts.record_failure_user, 3);
                on_user
                    .arg(self.keys.tenants(user.person))
                    .arg(self.keys.user(&user, "f"))
                    .arg(self.keys.user(&user, "a"))
                    .arg(format!("{now}:{}", device_tag(device)))
                    .arg(c.max_events_per_key)
                    .arg(ttl(w.user_failures_secs))
                    .arg(&address)
                    .arg(ttl(w.ip_distinct_users_secs.saturating_mul(2)))
                    .arg(&user_hex)
                    .arg(ttl(c.retention_secs))
                    .arg(now);
                let mut on_address = evalsha(&self.scripts.record_failure_address, 2);
                on_address
                    .arg(self.keys.address(&address, "f"))
                    .arg(self.keys.address(&address, "u"))
                    .arg(now)
                    .arg(c.max_events_per_key)
                    .arg(ttl(w.ip_failures_secs))
                    .arg(now - secs(w.ip_distinct_users_secs))
                    .arg(&user_hex)
                    .arg(ttl(w.ip_distinct_users_secs));
                self.trip();
                let scripts = [
                    &self.scripts.record_failure_user,
                    &self.scripts.record_failure_address,
                ];
                per_slot(&mut conn, vec![vec![on_user], vec![on_address]], &scripts)
                    .await
                    .map(|_| true)
                    .map_err(|e| self.unavailable(&e))
            }
        }
    }

    /// Waits until decision `id`'s write (if this replica is still making
    /// it) is done, so a report never misses a decision remembered here.
    async fn written(&self, id: DecisionId) {
        let batch = self.writer.queue().batch_of.get(&id.as_u128()).copied();
        if let Some(batch) = batch {
            self.writer.flushed(batch).await;
        }
    }

    /// Waits until every decision write this replica has going is done.
    async fn all_written(&self) {
        let last = self.writer.queue().batch_of.values().max().copied();
        if let Some(batch) = last {
            self.writer.flushed(batch).await;
        }
    }

    /// The oldest time a decision may have been made at to be remembered
    /// at `now` (exclusive).
    fn decisions_since(&self, now: UnixSeconds) -> UnixSeconds {
        now - secs(self.config.decision_ttl_secs)
    }
}

/// `EVALSHA` of `script` with `keys` keys; the keys and then the
/// arguments follow as `arg`s.
fn evalsha(script: &Script, keys: usize) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys);
    cmd
}

/// Runs groups of commands (`EVALSHA`s of `scripts`, or plain ones), each
/// group keeping to one slot, in one round trip: everything as one
/// pipeline on a single Redis; on a Cluster, one pipeline per group, each
/// to its node, all at once (the slots may differ). Every command's
/// answer, in order.
async fn per_slot(
    conn: &mut Connection,
    groups: Vec<Vec<Cmd>>,
    scripts: &[&Script],
) -> redis::RedisResult<Vec<Value>> {
    let pipeline = |cmds: Vec<Cmd>| {
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        pipe
    };
    if let Connection::Single(_) = conn {
        let pipe = pipeline(groups.into_iter().flatten().collect());
        return query(conn, &pipe, scripts).await;
    }
    let each = groups.into_iter().map(|cmds| {
        let mut conn = conn.clone();
        let pipe = pipeline(cmds);
        async move { query::<Vec<Value>>(&mut conn, &pipe, scripts).await }
    });
    let answers = futures_util::future::try_join_all(each).await?;
    Ok(answers.into_iter().flatten().collect())
}

/// Runs a pipeline of `EVALSHA`s; when Redis does not have a script yet
/// (it restarted, or a Cluster node is new), loads `scripts` and runs it
/// once more.
async fn query<T: redis::FromRedisValue>(
    conn: &mut Connection,
    pipe: &redis::Pipeline,
    scripts: &[&Script],
) -> redis::RedisResult<T> {
    match pipe.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            for script in scripts {
                script.load_async(conn).await?;
            }
            pipe.query_async(conn).await
        }
        done => done,
    }
}

fn format_location(l: StoredLocation) -> String {
    format!(
        "{:.1},{:.1},{},{}",
        l.latitude(),
        l.longitude(),
        l.accuracy_km,
        l.at
    )
}

fn parse_location(text: &str) -> Option<StoredLocation> {
    let mut parts = text.split(',');
    let latitude = parts.next()?.parse().ok()?;
    let longitude = parts.next()?.parse().ok()?;
    let accuracy_km = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    Some(StoredLocation::new(latitude, longitude, accuracy_km, at))
}

/// Counts failure entries (`time` or `time:device-tag`, newest first)
/// after `since`, and among them those on `device` (a tag). Entries that
/// do not parse are not counted.
fn count_failures(entries: &[String], since: UnixSeconds, device: Option<String>) -> (u32, u32) {
    let (mut all, mut on_device) = (0, 0);
    for entry in entries {
        let (at, tag) = entry.split_once(':').unwrap_or((entry.as_str(), ""));
        if at.parse::<UnixSeconds>().is_ok_and(|at| at > since) {
            all += 1;
            if device.as_deref().is_some_and(|d| d == tag) {
                on_device += 1;
            }
        }
    }
    (all, on_device)
}

/// Small requests answered in microseconds: Nagle's algorithm would hold
/// a request back until the previous one's acknowledgement.
fn tcp() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

fn connect(config: &RedisConfig) -> Result<Arc<Connector>, StoreError> {
    let invalid = |e: RedisError| StoreError::Setup(format!("`store.redis`: {e}"));
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let password = config.password()?;
    let target = if config.cluster_nodes.is_empty() {
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(invalid)?;
        if let Some(password) = password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        info = info.set_tcp_settings(tcp());
        Target::Single {
            client: redis::Client::open(info).map_err(invalid)?,
            // Every call is bounded by stepgate's own budget instead.
            config: redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(None),
        }
    } else {
        let mut builder = ClusterClient::builder(config.cluster_nodes.clone())
            .connection_timeout(connect_timeout)
            .tcp_settings(tcp())
            .retries(1);
        if let Some(password) = password {
            builder = builder.password(password);
        }
        Target::Cluster(builder.build().map_err(invalid)?)
    };
    let connector = Arc::new(Connector {
        target,
        link: tokio::sync::watch::Sender::new(Link::Connecting),
        connecting: std::sync::atomic::AtomicBool::new(false),
        next_attempt: Mutex::new((Instant::now(), BACKOFF_MIN)),
    });
    // Connected from the start when there is a runtime to do it in;
    // otherwise on the first request.
    if tokio::runtime::Handle::try_current().is_ok() {
        connector.attempt();
    }
    Ok(connector)
}

#[async_trait]
impl ContextStore for RedisStore {
    async fn lookup(&self, key: &Lookup, now: UnixSeconds) -> Result<StoredContext, StoreError> {
        self.lookup_now(key, now).await
    }

    async fn record(&self, record: &Record, now: UnixSeconds) -> Result<bool, StoreError> {
        self.record_now(record, now).await
    }

    /// Written behind the answer, in batches (see [`DecisionWriter`]): the
    /// Decide path waits for the context read only. A report on this
    /// replica that names the decision waits for its write to finish first
    /// (see `written`); a failed write is counted in
    /// `stepgate_store_errors_total{op="remember_decision"}`.
    async fn remember_decision(
        &self,
        id: DecisionId,
        decision: &IssuedDecision,
        now: UnixSeconds,
    ) -> Result<(), StoreError> {
        let key = self.keys.decision(id.as_u128());
        let ttl = ttl(self.config.decision_ttl_secs);
        let level = |aal: Option<Aal>| aal.map_or(0, Aal::number);
        let mut fields = vec![
            ("u", hex(decision.user.id.as_bytes())),
            ("p", hex(decision.user.person.as_bytes())),
            ("j", decision.journey.as_u64().to_string()),
            ("ip", decision.ip.to_string()),
            ("from", decision.from.number().to_string()),
            ("dem", level(decision.demand).to_string()),
            ("re", u8::from(decision.reauth).to_string()),
            ("at", now.to_string()),
        ];
        if let Some(device) = decision.device {
            fields.push(("dev", hex(device.as_bytes())));
        }
        if let Some(since) = decision.compromise {
            fields.push(("cs", since.to_string()));
        }
        let mut record = evalsha(&self.scripts.remember_decision, 1);
        record.arg(&key).arg(ttl);
        for (field, value) in &fields {
            record.arg(*field).arg(value);
        }
        let mut index = evalsha(&self.scripts.index_decision, 2);
        index
            .arg(self.keys.tenants(decision.user.person))
            .arg(self.keys.user(&decision.user, "d"))
            .arg(now)
            .arg(format!("{:032x}", id.as_u128()))
            .arg(ttl)
            .arg(hex(decision.user.id.as_bytes()))
            .arg(self.decisions_since(now))
            .arg(self.config.max_events_per_key)
            .arg(self.config.retention_secs.max(ttl).max(1));
        self.writer.push(id.as_u128(), [record, index]);
        if self.writer.started.set(()).is_ok() {
            tokio::spawn(self.writer.clone().run(
                self.connector.clone(),
                self.scripts.clone(),
                self.round_trips.clone(),
            ));
        }
        Ok(())
    }

    async fn bind_decision_device(
        &self,
        id: DecisionId,
        device: HashedId,
        now: UnixSeconds,
    ) -> Result<Option<HashedId>, StoreError> {
        self.written(id).await;
        let mut conn = self.connection().await?;
        let mut bind = self.scripts.bind_device.prepare_invoke();
        bind.key(self.keys.decision(id.as_u128()))
            .arg(hex(device.as_bytes()))
            .arg(self.decisions_since(now));
        self.trip();
        let bound: Option<Vec<u8>> = bind
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(&e))?;
        Ok(bound.and_then(|b| unhex(&b)).map(HashedId::from_bytes))
    }

    async fn issued_decision(
        &self,
        id: DecisionId,
        now: UnixSeconds,
    ) -> Result<Option<IssuedDecision>, StoreError> {
        self.written(id).await;
        let mut conn = self.connection().await?;
        self.trip();
        let fields: std::collections::HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys.decision(id.as_u128()))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(&e))?;
        Ok(parse_decision(&fields)
            .filter(|(_, at)| *at > self.decisions_since(now))
            .map(|(d, _)| d))
    }

    /// Three steps, each safe to repeat: list what lies outside the
    /// person's slot, remove that, then delete the users' own keys. An
    /// erasure that fails part-way leaves its lists in place, so the
    /// caller's retry finishes it.
    async fn forget(&self, erasure: &Erasure, _now: UnixSeconds) -> Result<Erased, StoreError> {
        // A decision still being written would bring the user back.
        self.all_written().await;
        let mut conn = self.connection().await?;
        let (person, which) = match erasure {
            Erasure::Tenant(user) => (user.person, hex(user.id.as_bytes())),
            Erasure::AllTenants { person } => (*person, "*".to_owned()),
        };
        let tenants = self.keys.tenants(person);
        let base = self.keys.user_base(person);
        let mut list = self.scripts.forget_list.prepare_invoke();
        list.key(&tenants).arg(&base).arg(which);
        self.trip();
        let listed: Vec<(String, Vec<String>, Vec<String>)> = list
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let mut cleanup = Vec::new();
        for (user, addresses, decisions) in &listed {
            for address in addresses {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(self.keys.address(address, "u")).arg(user);
                cleanup.push(cmd);
            }
            for decision in decisions {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(format!(
                    "{}:{KEY_VERSION}:{{d:{decision}}}",
                    self.keys.prefix
                ));
                cleanup.push(cmd);
            }
        }
        // Other slots, other nodes: in batches, each batch at once.
        while !cleanup.is_empty() {
            let batch: Vec<Cmd> = cleanup.drain(..cleanup.len().min(ERASURE_BATCH)).collect();
            self.trip();
            per_slot(
                &mut conn,
                batch.into_iter().map(|cmd| vec![cmd]).collect(),
                &[],
            )
            .await
            .map_err(|e| self.unavailable(&e))?;
        }
        if listed.is_empty() {
            return Ok(Erased::default());
        }
        let mut erase = self.scripts.forget_erase.prepare_invoke();
        erase.key(&tenants).arg(&base);
        for (user, _, _) in &listed {
            erase.arg(user);
        }
        self.trip();
        let existed: Vec<u32> = erase
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.unavailable(&e))?;
        let users: Vec<HashedId> = listed
            .iter()
            .filter_map(|(user, _, _)| unhex(user.as_bytes()).map(HashedId::from_bytes))
            .collect();
        self.l1_forget(&users);
        let found = listed
            .iter()
            .zip(existed)
            .filter(|((_, _, decisions), keys)| *keys > 0 || !decisions.is_empty())
            .count();
        Ok(Erased {
            users: u64::try_from(found).unwrap_or(u64::MAX),
        })
    }

    fn budget(&self) -> Option<Duration> {
        Some(self.budget)
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// A shared store's sizes are Redis's to report (`INFO keyspace`),
    /// not one replica's: none here.
    fn sizes(&self) -> (u64, u64) {
        (0, 0)
    }
}

fn parse_decision(
    fields: &std::collections::HashMap<String, Vec<u8>>,
) -> Option<(IssuedDecision, UnixSeconds)> {
    let text = |name: &str| fields.get(name).and_then(|v| std::str::from_utf8(v).ok());
    let id = |name: &str| {
        fields
            .get(name)
            .and_then(|v| unhex(v))
            .map(HashedId::from_bytes)
    };
    let number = |name: &str| text(name).and_then(|t| t.parse::<u32>().ok());
    let decision = IssuedDecision {
        user: UserKey {
            id: id("u")?,
            person: id("p")?,
        },
        device: id("dev"),
        journey: JourneyKey::from_u64(text("j")?.parse().ok()?),
        ip: text("ip")?.parse().ok()?,
        from: Aal::from_number(number("from")?)?,
        demand: match number("dem")? {
            0 => None,
            n => Some(Aal::from_number(n)?),
        },
        // Absent in decisions written before they were kept.
        reauth: number("re") == Some(1),
        compromise: text("cs").and_then(|t| t.parse().ok()),
    };
    Some((decision, text("at")?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex() {
        let bytes = [0xab; 16];
        assert_eq!(unhex(hex(&bytes).as_bytes()), Some(bytes));
        assert_eq!(unhex(b"zz"), None);
        assert_eq!(unhex(&[b'g'; 32]), None);
    }

    #[test]
    fn positions_round_trip_at_a_tenth_of_a_degree() {
        let l = StoredLocation::new(51.51, -0.13, 25, 1_700_000_000);
        assert_eq!(parse_location(&format_location(l)), Some(l));
        assert_eq!(parse_location("1,2,3"), None);
    }

    #[test]
    fn one_persons_keys_share_a_cluster_slot_and_addresses_do_not_show() {
        let keys = Keys {
            prefix: "sg".into(),
        };
        let p = Pseudonymizer::new([3; 32]);
        let user = p.user_key("acme", "alice");
        let other_tenant = p.user_key("globex", "alice");
        // Redis hashes only what is inside the first `{…}`: equal tags,
        // equal slots.
        let slot = |key: &str| {
            let start = key.find('{').map_or(0, |i| i + 1);
            let end = key
                .get(start..)
                .and_then(|k| k.find('}'))
                .map_or(start, |i| start + i);
            key.get(start..end).unwrap_or_default().to_owned()
        };
        let s = keys.user(&user, "s");
        assert!(s.starts_with("sg:1:{"), "{s}");
        assert_eq!(slot(&s), slot(&keys.user(&other_tenant, "dev")));
        assert_eq!(slot(&s), slot(&keys.tenants(user.person)));
        let address = hex(p.address(ip_key("203.0.113.9".parse().unwrap())).as_bytes());
        let a = keys.address(&address, "u");
        assert!(!a.contains("203.0.113"), "{a}");
        assert_eq!(slot(&a), slot(&keys.address(&address, "f")));
    }

    #[test]
    fn remembered_decisions_read_back_as_written() {
        let p = Pseudonymizer::new([3; 32]);
        let issued = IssuedDecision {
            user: p.user_key("", "alice"),
            device: Some(p.device("laptop")),
            journey: JourneyKey::of("login"),
            ip: "2001:db8::1".parse().unwrap(),
            from: Aal::One,
            demand: Some(Aal::Two),
            reauth: false,
            compromise: None,
        };
        let fields: std::collections::HashMap<String, Vec<u8>> = [
            ("u", hex(issued.user.id.as_bytes())),
            ("p", hex(issued.user.person.as_bytes())),
            ("dev", hex(p.device("laptop").as_bytes())),
            ("j", issued.journey.as_u64().to_string()),
            ("ip", "2001:db8::1".into()),
            ("from", "1".into()),
            ("dem", "2".into()),
            ("at", "7".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
        // Written before `re` was kept: not a re-authentication.
        assert_eq!(parse_decision(&fields), Some((issued, 7)));
        let mut again = fields.clone();
        again.insert("re".into(), b"1".to_vec());
        assert_eq!(
            parse_decision(&again),
            Some((
                IssuedDecision {
                    reauth: true,
                    compromise: None,
                    ..issued
                },
                7
            ))
        );
        let mut broken = fields.clone();
        broken.insert("from".into(), b"9".to_vec());
        assert_eq!(parse_decision(&broken), None);
    }
}

//! Recent decisions, kept for the reports that follow them: written once on
//! every Decide, read once or twice, then never again.
//!
//! A general cache (moka) costs about 2.5 µs an insert for that, an eighth
//! of a whole decision; this keeps two generations of plain hash maps per
//! shard instead. A generation lasts one TTL, or until its share of the
//! capacity is full; when a third would begin, the oldest is dropped whole.
//! So an entry lives at least one TTL unless the capacity runs out first,
//! at most two, and reads check each entry's own age, so expiry is exact.

use std::sync::{Mutex, PoisonError};

use foldhash::fast::RandomState;

use crate::decision::UnixSeconds;

/// Shards, so concurrent Decides rarely wait for one another.
const SHARDS: usize = 16;

/// Ids are made by this process (UUIDv7), never chosen by a caller, so a
/// fast hasher is safe here.
type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

#[derive(Debug)]
struct Shard<V> {
    /// When the current generation began.
    started: UnixSeconds,
    current: HashMap<u128, (UnixSeconds, V)>,
    previous: HashMap<u128, (UnixSeconds, V)>,
}

/// Values by id for `ttl` seconds, at most about `capacity` of them.
#[derive(Debug)]
pub struct Recent<V> {
    shards: Vec<Mutex<Shard<V>>>,
    ttl: i64,
    /// Entries one generation of one shard may hold.
    per_generation: usize,
}

impl<V: Clone> Recent<V> {
    /// `ttl` in seconds; `capacity` entries in all (at least one per
    /// generation of each shard).
    pub fn new(ttl: i64, capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        let per_generation = (capacity / (2 * SHARDS)).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        started: UnixSeconds::MIN,
                        current: HashMap::default(),
                        previous: HashMap::default(),
                    })
                })
                .collect(),
            ttl,
            per_generation,
        }
    }

    fn shard(&self, id: u128) -> Option<&Mutex<Shard<V>>> {
        // The low bits of a UUIDv7 are random: an even spread.
        let index = usize::try_from(id % SHARDS as u128).unwrap_or(0);
        self.shards.get(index)
    }

    /// Keeps `value` under `id`, made at `now`.
    pub fn insert(&self, id: u128, value: V, now: UnixSeconds) {
        let Some(shard) = self.shard(id) else {
            return;
        };
        // A poisoned lock only means a panic mid-insert elsewhere; the maps
        // are still whole.
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_sub(shard.started) >= self.ttl
            || shard.current.len() >= self.per_generation
        {
            // The dropped generation's table is emptied and reused, so a
            // steady rate neither rehashes nor faults in fresh pages; after
            // a burst (a table far larger than the rate needs) a new one is
            // sized like the last generation, so memory follows the rate.
            let mut next = std::mem::take(&mut shard.previous);
            next.clear();
            let wanted = shard.current.len().min(self.per_generation);
            if next.capacity() > 2 * wanted.max(64) {
                next = HashMap::with_capacity_and_hasher(wanted, RandomState::default());
            }
            shard.previous = std::mem::replace(&mut shard.current, next);
            shard.started = now;
        }
        shard.current.insert(id, (now, value));
    }

    /// The value under `id`, if it was made less than `ttl` before `now`.
    pub fn get(&self, id: u128, now: UnixSeconds) -> Option<V> {
        let shard = self.shard(id)?;
        let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        shard
            .current
            .get(&id)
            .or_else(|| shard.previous.get(&id))
            .filter(|(at, _)| now.saturating_sub(*at) < self.ttl)
            .map(|(_, value)| value.clone())
    }

    /// Applies `change` to the value under `id`, if it was made less than
    /// `ttl` before `now`, and returns the value as changed; atomic with
    /// every other call for that id.
    pub fn update(&self, id: u128, now: UnixSeconds, change: impl FnOnce(&mut V)) -> Option<V> {
        let shard = self.shard(id)?;
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let Shard {
            current, previous, ..
        } = &mut *shard;
        let (at, value) = match current.get_mut(&id) {
            Some(found) => found,
            None => previous.get_mut(&id)?,
        };
        if now.saturating_sub(*at) >= self.ttl {
            return None;
        }
        change(value);
        Some(value.clone())
    }

    /// Removes the entry under `id`, if any.
    pub fn remove(&self, id: u128) {
        if let Some(shard) = self.shard(id) {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.current.remove(&id);
            shard.previous.remove(&id);
        }
    }

    /// Removes every entry whose value `matches`, and returns the values
    /// removed that had not expired at `now`.
    pub fn remove_where(&self, matches: impl Fn(&V) -> bool, now: UnixSeconds) -> Vec<V> {
        let mut removed = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let Shard {
                current, previous, ..
            } = &mut *shard;
            for map in [current, previous] {
                map.retain(|_, (at, value)| {
                    if !matches(value) {
                        return true;
                    }
                    if now.saturating_sub(*at) < self.ttl {
                        removed.push(value.clone());
                    }
                    false
                });
            }
        }
        removed
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_exactly_its_ttl() {
        let recent = Recent::new(600, 1000);
        recent.insert(7, "d", 1_000);
        assert_eq!(recent.get(7, 1_000), Some("d"));
        assert_eq!(recent.get(7, 1_599), Some("d"));
        assert_eq!(recent.get(7, 1_600), None);
        assert_eq!(recent.get(8, 1_000), None);
    }

    #[test]
    fn old_generations_are_dropped_so_memory_follows_the_rate() {
        let recent = Recent::new(600, 1_000_000);
        for id in 0..100u128 {
            recent.insert(id, id, 0);
        }
        // One TTL later the first generation is still readable (if young
        // enough), two TTLs later it is gone from memory.
        for id in 100..200u128 {
            recent.insert(id, id, 600);
        }
        assert_eq!(recent.len(), 200);
        for id in 200..300u128 {
            recent.insert(id, id, 1_200);
        }
        assert_eq!(recent.len(), 200, "the generation from time 0 was dropped");
        assert_eq!(recent.get(150, 1_199), Some(150), "younger than its TTL");
        assert_eq!(recent.get(250, 1_200), Some(250));
    }

    #[test]
    fn an_update_changes_a_live_entry_only() {
        let recent = Recent::new(600, 1000);
        recent.insert(7, 1, 1_000);
        assert_eq!(recent.update(7, 1_100, |v| *v += 1), Some(2));
        assert_eq!(recent.get(7, 1_100), Some(2));
        assert_eq!(recent.update(7, 1_600, |v| *v += 1), None, "expired");
        assert_eq!(recent.update(8, 1_100, |v| *v += 1), None, "absent");
    }

    #[test]
    fn capacity_bounds_what_is_held() {
        let recent = Recent::new(600, 64);
        for id in 0..10_000u128 {
            recent.insert(id, id, 0);
        }
        assert!(recent.len() <= 64, "{}", recent.len());
        assert_eq!(recent.get(9_999, 0), Some(9_999), "the newest are kept");
    }
}

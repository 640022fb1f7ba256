//! The memory context store holding a million users: a Decide's lookup and
//! the decision it remembers, the two updates ReportOutcome makes, and the
//! remembered decision a report reads.
//!
//! Run with `cargo bench --bench store`.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stepgate::decision::{Aal, DecisionId};
use stepgate::store::{ContextStore, CountryCode, IssuedDecision, JourneyKey, Lookup, Record};

use support::{Ids, NOW};

const USERS: u64 = 1_000_000;
const IP_POOL: u64 = 200_000;

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let store = support::memory_store(USERS);
    let ids = Ids::new();
    for n in 0..USERS {
        support::typical_profile(&rt, &store, &ids, n, IP_POOL);
    }
    let (users, ips) = store.sizes();
    assert!(users >= USERS * 99 / 100, "the store kept {users} users");
    eprintln!("store holds {users} users and {ips} addresses");

    // Keys drawn across the whole population, so reads are not served
    // from a handful of hot cache lines.
    let mut rng = fastrand::Rng::with_seed(3);
    let keys: Vec<(Lookup, u64)> = (0..4096)
        .map(|_| {
            let n = rng.u64(0..USERS);
            let lookup = Lookup {
                user: ids.user(n),
                device: Some(ids.device(n, rng.u64(0..4))),
                ip: support::failure_ip(n, IP_POOL),
                country: CountryCode::parse("GB"),
            };
            (lookup, n)
        })
        .collect();

    let mut group = c.benchmark_group("store_1m_users");
    let mut i = 0usize;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let (key, _) = keys.get(i).expect("key");
            rt.block_on(store.lookup(black_box(key), NOW))
        })
    });
    group.bench_function("record_success", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let (key, _) = keys.get(i).expect("key");
            let record = Record::Success {
                user: key.user,
                device: key.device,
                country: key.country,
                location: None,
                decided_under: None,
                step_up: false,
            };
            rt.block_on(store.record(black_box(&record), NOW))
        })
    });
    group.bench_function("record_failure", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let (key, _) = keys.get(i).expect("key");
            let record = Record::Failure {
                user: key.user,
                device: key.device,
                ip: key.ip,
            };
            rt.block_on(store.record(black_box(&record), NOW))
        })
    });
    let issued = |key: &Lookup| IssuedDecision {
        user: key.user,
        device: key.device,
        journey: JourneyKey::of("login"),
        ip: key.ip,
        from: Aal::One,
        demand: Some(Aal::Two),
        reauth: false,
        compromise: None,
    };
    let mut recent = Vec::with_capacity(4096);
    group.bench_function("remember_decision", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let (key, _) = keys.get(i).expect("key");
            let id = DecisionId::new();
            if recent.len() < 4096 {
                recent.push(id);
            }
            rt.block_on(store.remember_decision(black_box(id), &issued(key), NOW))
        })
    });
    group.bench_function("issued_decision", |b| {
        b.iter(|| {
            i = (i + 1) % recent.len();
            let id = recent.get(i).copied().expect("id");
            rt.block_on(store.issued_decision(black_box(id), NOW))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);

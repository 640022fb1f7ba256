//! What the geo and network signals add to one decision: the in-process
//! decision for the same request with and without the three MaxMind
//! databases, and the bare database lookup on its own.
//!
//! Run with `cargo bench --bench geo`.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stepgate::config::GeoConfig;

use support::NOW;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = support::bundled_policies();
    let with_geo = support::engine(&policies, support::geo_config(dir.path()));
    let without_geo = support::engine(&policies, GeoConfig::default());
    let rt = support::runtime();
    // Alice signed in from London (same device) a day earlier, so the
    // new-country and travel checks run in full.
    let request = support::scenarios(&rt, &with_geo).allow;
    support::scenarios(&rt, &without_geo);

    let mut group = c.benchmark_group("decide_login_london");
    group.bench_function("without_geo", |b| {
        b.iter(|| rt.block_on(without_geo.decide_at(black_box(&request), NOW)))
    });
    group.bench_function("with_city_asn_anonymous_ip", |b| {
        b.iter(|| rt.block_on(with_geo.decide_at(black_box(&request), NOW)))
    });
    group.finish();

    let ip = request.ip;
    c.bench_function("geo_lookup_all_three", |b| {
        b.iter(|| with_geo.geo().lookup(black_box(ip)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

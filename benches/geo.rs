//! What the geo and network signals add to one decision: the in-process
//! decision for the same request with and without the three MaxMind
//! databases, and the bare database lookup on its own.
//!
//! Run with `cargo bench --bench geo`.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use stepgate::config::{Config, GeoConfig};
use stepgate::decision::{Aal, Authn, DEFAULT_TENANT, DecideInput, Subject};
use stepgate::engine::Engine;
use stepgate::geo::fixtures;

fn policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn engine(geo: GeoConfig) -> Engine {
    let config = Config {
        policies_dir: policies(),
        geo,
        ..Config::default()
    };
    stepgate::app::build_engine(Arc::new(config)).expect("engine builds")
}

fn login(ip: &str) -> DecideInput {
    DecideInput {
        journey: "login".into(),
        subject: Subject {
            user_id: "alice".into(),
            tenant: DEFAULT_TENANT.into(),
        },
        authn: Authn {
            aal: Aal::One,
            amr: vec!["pwd".into()],
            auth_time: None,
        },
        device_id: Some("laptop".into()),
        ip: ip.parse().expect("ip"),
        attributes: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = fixtures::write_all(dir.path()).expect("fixtures");
    let with_geo = engine(GeoConfig {
        city_db: Some(paths.city.clone()),
        asn_db: Some(paths.asn.clone()),
        anonymous_ip_db: Some(paths.anonymous_ip.clone()),
        ..GeoConfig::default()
    });
    let without_geo = engine(GeoConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let request = login(fixtures::LONDON.ip);
    // Alice signed in from London (same device) a day earlier, so the
    // new-country and travel checks run in full.
    for engine in [&with_geo, &without_geo] {
        let mut success = stepgate::decision::ReportInput {
            journey: "login".into(),
            subject: request.subject.clone(),
            device_id: request.device_id.clone(),
            ip: request.ip,
            event: stepgate::decision::OutcomeEvent::AuthSucceeded,
        };
        success.ip = fixtures::LONDON_2.ip.parse().expect("ip");
        rt.block_on(engine.report(&success, "", 1_800_000_000 - 86_400))
            .expect("report");
    }

    let mut group = c.benchmark_group("decide_login_london");
    group.bench_function("without_geo", |b| {
        b.iter(|| rt.block_on(without_geo.decide(black_box(&request), 1_800_000_000)))
    });
    group.bench_function("with_city_asn_anonymous_ip", |b| {
        b.iter(|| rt.block_on(with_geo.decide(black_box(&request), 1_800_000_000)))
    });
    group.finish();

    let ip = request.ip;
    c.bench_function("geo_lookup_all_three", |b| {
        b.iter(|| with_geo.geo().lookup(black_box(ip)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! How the decision's cost grows with the size of the policy set: 10, 100
//! and 1,000 generated forbids beside one base permit, for bare Cedar and
//! for stepgate on the same allowed sign-in.
//!
//! The generated rules are of four kinds, in turn: a login rule released at
//! AAL2, a rule for every journey on the risk score, a payment rule on the
//! amount released at AAL3, and a country rule for every journey. None
//! fires on the request, so every one is evaluated to the end.
//!
//! Run with `cargo bench --bench policy_scaling`.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

mod support;

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use stepgate::decision::Outcome;

use support::{BareCedar, NOW};

const SIZES: [usize; 3] = [10, 100, 1_000];

/// A policy directory with the bundled schema and catalog, one base permit
/// and `n` generated forbids.
fn generated(dir: &Path, n: usize) {
    let bundled = support::bundled_policies();
    for name in ["schema.cedarschema", "journeys.toml"] {
        std::fs::copy(bundled.join(name), dir.join(name)).expect("copy");
    }
    let mut text = String::from(
        "@id(\"base\") @reason(\"base permit\")\npermit (principal, action, resource);\n",
    );
    for i in 0..n {
        let rule = match i % 4 {
            0 => format!(
                "forbid (principal, action == Action::\"login\", resource)\n\
                 when {{ context.behaviour.user_failures >= {} }}\n\
                 unless {{ context.authn.aal >= 2 }};",
                1_000 + i
            ),
            1 => format!(
                "forbid (principal, action, resource)\nwhen {{ context.risk.score > {} }};",
                200 + i
            ),
            2 => format!(
                "forbid (principal, action == Action::\"payment\", resource)\n\
                 when {{ context.attributes has amount && context.attributes.amount > {} }}\n\
                 unless {{ context.authn.aal >= 3 }};",
                1_000_000 + i
            ),
            _ => format!(
                "forbid (principal, action, resource)\n\
                 when {{ context.geo has country && context.geo.country == \"X{i}\" }};"
            ),
        };
        let _ = writeln!(
            text,
            "@id(\"generated-{i}\") @reason(\"generated rule {i}\")\n{rule}"
        );
    }
    std::fs::write(dir.join("generated.cedar"), text).expect("write policies");
}

fn bench(c: &mut Criterion) {
    let geo_dir = tempfile::tempdir().expect("tempdir");
    let geo = support::geo_config(geo_dir.path());
    let rt = support::runtime();
    let mut group = c.benchmark_group("policy_scaling");
    for n in SIZES {
        let dir = tempfile::tempdir().expect("tempdir");
        generated(dir.path(), n);
        let engine = support::engine(dir.path(), geo.clone());
        let uncached = support::engine_with(dir.path(), geo.clone(), support::uncached());
        let bare = BareCedar::load(dir.path());
        let scenarios = support::scenarios(&rt, &engine);
        let input = &scenarios.allow;
        let answer = rt.block_on(engine.decide_at(input, NOW)).expect("decides");
        assert_eq!(answer.decision.outcome, Outcome::Allow, "{n} policies");
        let request = support::cedar_request(&rt, &engine, input);
        group.bench_with_input(BenchmarkId::new("bare_cedar", n), &n, |b, _| {
            b.iter(|| bare.is_authorized(black_box(&request)))
        });
        // A context seen before: the answer comes from the policy cache.
        group.bench_with_input(BenchmarkId::new("stepgate", n), &n, |b, _| {
            b.iter(|| rt.block_on(engine.decide_at(black_box(input), NOW)))
        });
        // A context seen for the first time: every policy evaluated.
        let uncached_input = &support::scenarios(&rt, &uncached).allow;
        group.bench_with_input(BenchmarkId::new("stepgate_uncached", n), &n, |b, _| {
            b.iter(|| rt.block_on(uncached.decide_at(black_box(uncached_input), NOW)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);

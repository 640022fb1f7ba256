//! The in-process decision against its floor, bare Cedar `is_authorized` on
//! the same policies and the same request, for each outcome.
//!
//! The floor is one Cedar evaluation of the request stepgate builds for the
//! user's current level. stepgate's figure adds everything else: input
//! hashing, the three database lookups, the store reads, the signals and
//! risk score, building the context, the ladder's further rungs and the
//! answer with its reasons.
//!
//! `stepgate_with_shadow` is the same decision with a shadow policy set
//! evaluated beside the live set: the bundled pack plus one candidate rule
//! that does not fire here, so the two agree. The difference is the
//! shadow's cost per request.
//!
//! Run with `cargo bench --bench decide`.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stepgate::decision::{Aal, Outcome};
use stepgate::policy::PolicySnapshot;

use support::{BareCedar, NOW};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = support::bundled_policies();
    let engine = support::engine(&policies, support::geo_config(dir.path()));
    let bare = BareCedar::load(&policies);
    let rt = support::runtime();
    let scenarios = support::scenarios(&rt, &engine);
    let candidate = support::policies_with(
        &policies,
        "candidate.cedar",
        "@id(\"candidate\") @reason(\"a rule under trial\")\n\
         forbid (principal, action, resource) when { context.behaviour.ip_failures >= 500 };\n",
    );
    let uncached = support::engine_with(
        &policies,
        support::geo_config(dir.path()),
        support::uncached(),
    );
    let uncached_scenarios = support::scenarios(&rt, &uncached);
    let shadowed = support::engine(&policies, support::geo_config(dir.path()))
        .with_shadow(PolicySnapshot::load(candidate.path()).expect("candidate loads"));
    let shadowed_scenarios = support::scenarios(&rt, &shadowed);
    let cases = [
        (
            "allow",
            &scenarios.allow,
            &shadowed_scenarios.allow,
            &uncached_scenarios.allow,
            Outcome::Allow,
        ),
        (
            "step_up",
            &scenarios.step_up,
            &shadowed_scenarios.step_up,
            &uncached_scenarios.step_up,
            Outcome::StepUp(Aal::Two),
        ),
        (
            "deny",
            &scenarios.deny,
            &shadowed_scenarios.deny,
            &uncached_scenarios.deny,
            Outcome::Deny,
        ),
    ];
    for (name, input, shadowed_input, uncached_input, expected) in cases {
        // A benchmark of the wrong answer measures nothing.
        let answer = rt.block_on(engine.decide_at(input, NOW)).expect("decides");
        assert_eq!(answer.decision.outcome, expected, "{name}");
        let request = support::cedar_request(&rt, &engine, input);

        let mut group = c.benchmark_group(format!("decide_{name}"));
        group.bench_function("bare_cedar", |b| {
            b.iter(|| bare.is_authorized(black_box(&request)))
        });
        // The same request every time: after the first, its policies'
        // answer comes from the policy cache.
        group.bench_function("stepgate", |b| {
            b.iter(|| rt.block_on(engine.decide_at(black_box(input), NOW)))
        });
        let answer = rt
            .block_on(uncached.decide_at(uncached_input, NOW))
            .expect("decides");
        assert_eq!(answer.decision.outcome, expected, "{name} uncached");
        // Every decision evaluated, as for a context seen the first time.
        group.bench_function("stepgate_uncached", |b| {
            b.iter(|| rt.block_on(uncached.decide_at(black_box(uncached_input), NOW)))
        });
        let answer = rt
            .block_on(shadowed.decide_at(shadowed_input, NOW))
            .expect("decides");
        assert_eq!(answer.decision.outcome, expected, "{name} with shadow");
        group.bench_function("stepgate_with_shadow", |b| {
            b.iter(|| rt.block_on(shadowed.decide_at(black_box(shadowed_input), NOW)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Resident memory per tracked user in the memory store.
//!
//! Fills one store with typical profiles (three devices, two countries, a
//! last position, two recent failures counted against the user and one of
//! 200,000 addresses) and prints the process's resident set size at each
//! step up to a million users; then remembers a million decisions (what
//! Decide keeps for the reports that follow) and prints what they add.
//! Linux only: it reads `/proc/self/statm`.
//!
//! Run with `cargo bench --bench memory`.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

mod support;

use stepgate::decision::{Aal, DecisionId};
use stepgate::store::{ContextStore, IssuedDecision, JourneyKey};
use support::Ids;

const STEPS: [u64; 5] = [0, 100_000, 250_000, 500_000, 1_000_000];
const IP_POOL: u64 = 200_000;

/// Resident set size in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    // The page size is 4 KiB on the machines this runs on; statm counts
    // pages.
    pages * 4096
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that names another bench
    // means this one should not run.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !"memory".contains(a.as_str()))
    {
        return;
    }
    let rt = support::runtime();
    let max = STEPS.last().copied().unwrap_or(0);
    let store = support::memory_store(max);
    let ids = Ids::new();
    let base = resident();
    println!("users      resident MiB   bytes/user   (users, addresses held)");
    let mut filled = 0;
    for step in STEPS {
        for n in filled..step {
            support::typical_profile(&rt, &store, &ids, n, IP_POOL);
        }
        filled = step;
        let held = store.sizes();
        let now = resident();
        let grown = now.saturating_sub(base);
        let per_user = grown.checked_div(step).unwrap_or(0);
        println!(
            "{step:>9}  {:>12.1}   {per_user:>10}   {held:?}",
            now as f64 / (1024.0 * 1024.0)
        );
    }
    let before = resident();
    let decisions: u64 = 1_000_000;
    for n in 0..decisions {
        let issued = IssuedDecision {
            user: ids.user(n),
            device: Some(ids.device(n, 0)),
            journey: JourneyKey::of("login"),
            ip: support::failure_ip(n, IP_POOL),
            from: Aal::One,
            demand: Some(Aal::Two),
            reauth: false,
            compromise: None,
        };
        rt.block_on(store.remember_decision(DecisionId::new(), &issued, support::NOW))
            .expect("remembered");
    }
    let grown = resident().saturating_sub(before);
    println!(
        "decisions remembered: {decisions}, +{:.1} MiB, {} bytes/decision",
        grown as f64 / (1024.0 * 1024.0),
        grown / decisions
    );
}

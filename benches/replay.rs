//! `stepgate replay`'s throughput: recorded decision-log lines judged again
//! by a candidate policy set, per line. The log is written by a real engine
//! (allows, step-ups and denies, with geo signals from the fixture
//! databases), then repeated to the batch size.

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stepgate::geo::fixtures;
use stepgate::policy::PolicySnapshot;
use stepgate::record::{Call, DecisionLog, Door, Privacy};
use stepgate::replay::{Filter, replay};

/// Lines replayed per iteration.
const LINES: usize = 10_000;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A decision log of `LINES` lines, as an engine writes it.
fn recorded(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> String {
    let engine = support::engine(&support::bundled_policies(), support::geo_config(dir));
    let buffer = Buffer::default();
    let log = DecisionLog::start(Box::new(buffer.clone()), 1 << 16, engine.metrics().clone())
        .expect("log");
    let engine = engine.with_decision_log(log, Privacy::default());
    let scenarios = support::scenarios(rt, &engine);
    let call = Call::new(Door::Grpc, "Decide").by(stepgate::access::Caller::anonymous());
    let places = [fixtures::LONDON.ip, fixtures::SYDNEY.ip, "203.0.113.9"];
    for i in 0..300 {
        let input = match i % 4 {
            0 => scenarios.allow.clone(),
            1 => scenarios.step_up.clone(),
            2 => scenarios.deny.clone(),
            _ => support::login(
                &format!("user-{i}"),
                "phone",
                places.iter().cycle().nth(i).expect("a place"),
            ),
        };
        rt.block_on(engine.decide(&input, &call)).expect("decides");
    }
    assert!(engine.recorder().log().flush(Duration::from_secs(10)));
    let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .cycle()
        .take(LINES)
        .map(|l| format!("{l}\n"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = recorded(&rt, dir.path());
    let candidate = PolicySnapshot::load(&support::bundled_policies()).expect("policies");
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(LINES as u64));
    group.sample_size(10);
    group.bench_function("10k_lines", |b| {
        b.iter(|| {
            let compared = replay(log.as_bytes(), &candidate, &Filter::default()).expect("replays");
            assert_eq!(compared.replayed, LINES as u64);
            compared
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

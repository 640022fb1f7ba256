//! What the decision log costs per decision, in its two parts: on the
//! request path (building the record and queueing it, against the same
//! decision with the log off) and on the writer thread (serialising one
//! line).

#![expect(
    clippy::expect_used,
    reason = "benchmark set-up fails loudly: a broken fixture should stop the run"
)]

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stepgate::record::line::{self, Line};
use stepgate::record::{Call, DecisionLog, Door, Privacy};

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = support::bundled_policies();
    let off = support::engine(&policies, support::geo_config(dir.path()));
    let on = support::engine(&policies, support::geo_config(dir.path()));
    let log =
        DecisionLog::start(Box::new(std::io::sink()), 1 << 20, on.metrics().clone()).expect("log");
    let on = on.with_decision_log(log, Privacy::default());
    let off_input = support::scenarios(&rt, &off).step_up;
    let on_input = support::scenarios(&rt, &on).step_up;
    let call = Call::new(Door::Grpc, "Decide").by(stepgate::access::Caller::anonymous());
    let mut group = c.benchmark_group("decision_log");
    group.bench_function("decide_log_off", |b| {
        b.iter(|| rt.block_on(off.decide(black_box(&off_input), &call)))
    });
    group.bench_function("decide_log_on", |b| {
        b.iter(|| rt.block_on(on.decide(black_box(&on_input), &call)))
    });
    // One line as the writer thread serialises it.
    let buffer = SharedBuffer::default();
    let sample =
        DecisionLog::start(Box::new(buffer.clone()), 16, on.metrics().clone()).expect("log");
    let sampled = support::engine(&policies, support::geo_config(dir.path()))
        .with_decision_log(sample, Privacy::default());
    let input = support::scenarios(&rt, &sampled).step_up;
    rt.block_on(sampled.decide(&input, &call)).expect("decides");
    assert!(sampled.recorder().log().flush(Duration::from_secs(5)));
    let text = buffer.text();
    let first = text.lines().next().expect("a line");
    let Ok(Line::Decision(decision)) = line::read(first) else {
        unreachable!("a decision line")
    };
    let decision = Line::Decision(decision);
    let mut out = Vec::with_capacity(4096);
    group.bench_function("serialise_one_line", |b| {
        b.iter(|| {
            out.clear();
            serde_json::to_writer(&mut out, black_box(&decision)).expect("serialises");
            out.len()
        })
    });
    group.finish();
}

#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("UTF-8")
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

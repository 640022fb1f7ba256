//! The decision log, tested like the answer: a golden line per record kind
//! (ids, times and latencies redacted), privacy under default and relaxed
//! settings, and a stalled sink that drops and counts lines while answers
//! go on.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;
use stepgate::config::{AddressesInLog, Config, DecisionLogConfig, DeviceIdsInLog, UserIdsInLog};
use stepgate::metrics::LogResult;
use stepgate::record::{DecisionLog, Privacy};
use stepgate::server::proto::Event;

use crate::harness::*;

/// Lines written, kept in memory.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(
            &self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }
}

/// A fixed pseudonym key, so the golden lines are stable.
pub const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The bundled policies, a fixed key, and the decision log written to
/// `sink` with `settings`' privacy and a queue of `capacity` lines.
pub async fn logged_server(
    settings: DecisionLogConfig,
    sink: Box<dyn Write + Send>,
    capacity: usize,
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("hash.key");
    std::fs::write(&key, KEY).expect("key");
    let mut config = Config {
        policies_dir: bundled_policies(),
        decision_log: settings,
        ..Config::default()
    };
    config.store.hash_key_file = Some(key);
    let privacy = Privacy::of(&config.decision_log);
    // A clock that stands still: ages in the golden lines are exact.
    let clock = Arc::new(stepgate::engine::ManualClock::new(CLOCK));
    let engine = stepgate::app::build_engine(Arc::new(config))
        .expect("engine builds")
        .with_clock(clock);
    let log = DecisionLog::start(sink, capacity, engine.metrics().clone()).expect("log starts");
    let engine = engine.with_decision_log(log, privacy);
    (TestServer::serve(Arc::new(engine)).await, dir)
}

/// Waits until every line queued so far is written.
fn caught_up(server: &TestServer) {
    let log = server.engine.recorder().log();
    assert!(log.flush(Duration::from_secs(10)), "the sink caught up");
}

/// Every line written so far, once the sink has caught up.
pub fn lines(server: &TestServer, sink: &Captured) -> Vec<Value> {
    caught_up(server);
    sink.text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

/// The fields that differ from run to run, replaced by their names.
fn redacted(mut line: Value) -> Value {
    for field in ["time", "decision_id", "latency_us", "policy_version"] {
        if let Some(value) = line.get_mut(field)
            && !value.is_null()
        {
            *value = Value::String(format!("[{field}]"));
        }
    }
    line
}

const IP: &str = "203.0.113.7";

/// Where the test clock stands, in Unix seconds.
const CLOCK: i64 = 1_800_000_000;

/// A step-up, the completed sign-in, an allow through the JSON door and a
/// refusal: one line of each kind (and door).
async fn one_of_each(server: &TestServer) {
    let mut client = server.client().await;
    // Authenticated a minute before the standing clock.
    let mut asked = decide("login", "alice", "laptop", IP, 1);
    asked.authn.as_mut().expect("authn").auth_time = CLOCK - 60;
    let first = ask(&mut client, asked).await;
    let mut done = report("login", "alice", "laptop", IP, Event::StepUpSucceeded);
    done.decision_id = first.decision_id.clone();
    send(&mut client, done).await;
    let mut json = decide_json("alice", "laptop", 1);
    *json.pointer_mut("/authn/authTime").expect("authTime") = (CLOCK - 60).into();
    let reply = post_json(server, "/v1/decide", &json).await;
    assert_eq!(reply.status, 200);
    client
        .decide(decide("login", "alice", "laptop", IP, 9))
        .await
        .expect_err("aal 9");
}

#[tokio::test]
async fn each_record_kind_has_its_golden_line() {
    let sink = Captured::default();
    let (server, _dir) =
        logged_server(DecisionLogConfig::default(), Box::new(sink.clone()), 1024).await;
    one_of_each(&server).await;
    let lines = lines(&server, &sink);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    // The report names the decision it answers, as issued.
    let first_id = lines[0]["decision_id"].clone();
    assert_eq!(lines[1]["decision_id"], first_id);
    let golden: Vec<Value> = lines.into_iter().map(redacted).collect();
    insta::assert_snapshot!(serde_json::to_string_pretty(&golden).expect("JSON"));
}

#[tokio::test]
async fn by_default_no_line_holds_a_user_id_an_address_or_a_device_id() {
    let user = "dora.private@example.com";
    let device = "device-7f3a-PRIVATE";
    let ip = "198.51.100.77";
    let run = |settings: DecisionLogConfig| async move {
        let sink = Captured::default();
        let (server, _dir) = logged_server(settings, Box::new(sink.clone()), 1024).await;
        let mut client = server.client().await;
        let first = ask(&mut client, decide("login", user, device, ip, 1)).await;
        let mut failed = report("login", user, device, ip, Event::StepUpFailed);
        failed.decision_id = first.decision_id;
        send(&mut client, failed).await;
        let mut bad = decide("login", user, device, ip, 9);
        bad.request_id = user.into();
        client.decide(bad).await.expect_err("aal 9");
        let lines = lines(&server, &sink);
        assert_eq!(lines.len(), 3);
        sink.text()
    };
    let text = run(DecisionLogConfig::default()).await;
    for secret in [user, "dora", device, "PRIVATE", ip] {
        assert!(!text.contains(secret), "`{secret}` in:\n{text}");
    }
    assert!(text.contains(r#""client":"198.51.100.0/24""#), "{text}");
    // Relaxed, each setting exposes what the README says, and only that:
    // the raw user id and the full address; a device id only hashed.
    let text = run(DecisionLogConfig {
        user_ids: UserIdsInLog::Raw,
        addresses: AddressesInLog::Full,
        device_ids: DeviceIdsInLog::Hashed,
        ..DecisionLogConfig::default()
    })
    .await;
    assert!(text.contains(&format!(r#""user":"{user}""#)), "{text}");
    assert!(text.contains(&format!(r#""client":"{ip}""#)), "{text}");
    assert!(text.contains(r#""device":""#), "{text}");
    assert!(!text.contains(device), "a device id is never written raw");
    let text = run(DecisionLogConfig {
        user_ids: UserIdsInLog::Omitted,
        addresses: AddressesInLog::Omitted,
        ..DecisionLogConfig::default()
    })
    .await;
    assert!(text.contains(r#""user":null"#) && text.contains(r#""client":null"#));
}

/// A sink that blocks every write until it is opened.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        let (open, changed) = &*self.0;
        *open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        changed.notify_all();
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (open, changed) = &*self.0;
        let mut is_open = open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*is_open {
            is_open = changed
                .wait(is_open)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_stalled_sink_drops_and_counts_lines_and_answers_go_on() {
    const CAPACITY: usize = 8;
    const CALLS: u64 = 60;
    let gate = Gate::default();
    let (server, _dir) = logged_server(
        DecisionLogConfig::default(),
        Box::new(std::io::BufWriter::with_capacity(16, gate.clone())),
        CAPACITY,
    )
    .await;
    let mut client = server.client().await;
    // Every call is answered while the sink writes nothing; a log that
    // waited for its sink would hang here.
    tokio::time::timeout(Duration::from_secs(60), async {
        for i in 0..CALLS {
            let user = format!("user-{i}");
            ask(&mut client, decide("login", &user, "laptop", IP, 1)).await;
        }
    })
    .await
    .expect("every answer came while the sink was stalled");
    let metrics = server.engine.metrics();
    let dropped = metrics.log_lines(LogResult::Dropped);
    // The queue holds CAPACITY lines and the writer at most one batch
    // (what was queued when it last drained, so at most CAPACITY more),
    // stuck in its write; the rest were dropped.
    assert!(
        dropped >= CALLS - 2 * CAPACITY as u64,
        "dropped {dropped} of {CALLS}"
    );
    assert_eq!(metrics.log_lines(LogResult::Written), 0);
    gate.open();
    caught_up(&server);
    let written = metrics.log_lines(LogResult::Written);
    assert_eq!(written + dropped, CALLS, "every line written or counted");
    let scrape = http_call(&server.admin_addr, "GET", "/metrics", &[], "").await;
    let scrape = Scrape(String::from_utf8_lossy(&scrape.body).into_owned());
    assert_eq!(
        scrape.value(
            "stepgate_decision_log_lines_total",
            &[("result", "dropped")]
        ),
        Some(dropped as f64)
    );
}

//! The shared context store against a real Redis and a real local Redis
//! Cluster, each started by the test on its own ports and directory
//! (`.ci/run` installs `redis-server` and `redis-cli` when missing): two
//! replicas see one memory, an outage degrades answers by tier and heals by
//! itself, and ForgetUser leaves no key behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stepgate::config::{Config, StoreBackend};
use stepgate::decision::Tier;
use stepgate::pseudonym::Pseudonymizer;
use stepgate::server::proto::decision_service_client::DecisionServiceClient;
use stepgate::server::proto::{self, Event, Outcome};
use stepgate::store::{ContextStore, Lookup, RedisStore};
use tonic::transport::Channel;

use crate::harness::*;

const IP: &str = "203.0.113.40";
const HASH_KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

fn redis_server() -> PathBuf {
    program("REDIS_SERVER", "redis-server", "redis-server")
}

fn redis_cli() -> PathBuf {
    program("REDIS_CLI", "redis-cli", "redis-tools")
}

/// One redis-server of the test's own, keeping nothing on disk.
struct RedisNode {
    port: u16,
    dir: PathBuf,
    cluster: bool,
    /// More `redis-server` arguments (`--requirepass`, say).
    extra: Vec<String>,
    /// Listening on this Unix socket only (no TCP port).
    socket: Option<PathBuf>,
    process: Option<Peer>,
}

impl RedisNode {
    fn start(dir: &Path, cluster: bool) -> Self {
        let mut node = Self {
            port: free_port(),
            dir: dir.join(format!("node-{}", free_port())),
            cluster,
            extra: Vec::new(),
            socket: None,
            process: None,
        };
        std::fs::create_dir_all(&node.dir).expect("redis dir");
        node.resume();
        node
    }

    /// A redis-server reachable only through a Unix socket in its
    /// directory.
    fn start_on_socket(dir: &Path) -> Self {
        let dir = dir.join("socket-node");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut node = Self {
            port: 0,
            socket: Some(dir.join("redis.sock")),
            dir,
            cluster: false,
            extra: Vec::new(),
            process: None,
        };
        node.resume();
        node
    }

    /// Starts (again) on the same port and directory.
    fn resume(&mut self) {
        let mut command = Command::new(redis_server());
        if let Some(socket) = &self.socket {
            command
                .arg("--unixsocket")
                .arg(socket)
                .args(["--unixsocketperm", "700"]);
        }
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        self.process = Some(Peer(command.spawn().expect("spawn redis-server")));
        let deadline = Instant::now() + Duration::from_secs(10);
        let up = |node: &Self| match &node.socket {
            Some(socket) => std::os::unix::net::UnixStream::connect(socket).is_ok(),
            None => std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok(),
        };
        while !up(self) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        self.process = None;
    }

    fn url(&self) -> String {
        match &self.socket {
            Some(socket) => format!("unix://{}", socket.display()),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }
}

/// A single Redis, or a three-master Cluster, with a config pointing at it.
struct Shared {
    nodes: Vec<RedisNode>,
    dir: tempfile::TempDir,
}

impl Shared {
    fn single() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = vec![RedisNode::start(dir.path(), false)];
        Self::with_key(nodes, dir)
    }

    fn cluster() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<RedisNode> = (0..3).map(|_| RedisNode::start(dir.path(), true)).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(redis_cli())
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = Command::new(redis_cli())
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self::with_key(nodes, dir)
    }

    fn with_key(nodes: Vec<RedisNode>, dir: tempfile::TempDir) -> Self {
        std::fs::write(dir.path().join("hash.key"), HASH_KEY).expect("key");
        Self { nodes, dir }
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("hash.key")
    }

    fn config(&self) -> Config {
        let mut config = Config {
            policies_dir: bundled_policies(),
            ..Config::default()
        };
        config.store.backend = StoreBackend::Redis;
        config.store.hash_key_file = Some(self.key_file());
        match self.nodes.as_slice() {
            [single] => config.store.redis.url = single.url(),
            nodes => config.store.redis.cluster_nodes = nodes.iter().map(RedisNode::url).collect(),
        }
        config
    }

    /// A store of the test's own on the same Redis, to read exact counts.
    fn store(&self) -> RedisStore {
        let config = self.config();
        RedisStore::new(&config.store, config.windows, self.pseudonymizer()).expect("store")
    }

    fn pseudonymizer(&self) -> Pseudonymizer {
        Pseudonymizer::from_file(&self.key_file()).expect("key")
    }

    /// Every key name in the store, on every node.
    fn keys(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|node| {
                let out = Command::new(redis_cli())
                    .args(["-p", &node.port.to_string(), "--scan"])
                    .output()
                    .expect("redis-cli runs");
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every member of every sorted set and set, and every hash value: the
    /// data that names users without being a key name.
    fn values(&self) -> String {
        let cli = |port: &str, args: &[&str]| {
            let out = Command::new(redis_cli())
                .args(["-p", port])
                .args(args)
                .output()
                .expect("redis-cli runs");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let mut all = String::new();
        for node in &self.nodes {
            let port = node.port.to_string();
            for key in cli(&port, &["--scan"]).lines() {
                let read = match cli(&port, &["type", key]).as_str() {
                    "zset" => vec!["zrange", key, "0", "-1"],
                    "set" => vec!["smembers", key],
                    "hash" => vec!["hgetall", key],
                    "list" => vec!["lrange", key, "0", "-1"],
                    _ => vec!["get", key],
                };
                all.push_str(&cli(&port, &read));
                all.push('\n');
            }
        }
        all
    }
}

/// The single Redis of a [`Shared::single`].
fn node(shared: &mut Shared) -> &mut RedisNode {
    shared.nodes.first_mut().expect("one node")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Two replicas on one shared store, each with its own connection and L1.
async fn replicas(shared: &Shared) -> (TestServer, TestServer) {
    (
        TestServer::start_with(shared.config()).await,
        TestServer::start_with(shared.config()).await,
    )
}

/// What two replicas on one store must share: failures reported to one
/// are counted by the other, a device learned through one is known to the
/// other, and distinct failed users counted from both are exact.
async fn replicas_share_one_memory(
    shared: &Shared,
    a: &mut DecisionServiceClient<Channel>,
    b: &mut DecisionServiceClient<Channel>,
) {
    fail(a, "alice", IP, 3).await;
    let answer = ask(b, decide("login", "alice", "", IP, 1)).await;
    let names = signal_names(&answer);
    assert!(
        names.iter().any(|n| n == "behaviour.user_failures"),
        "the other replica counts the failures: {names:?}"
    );

    let asked = decide("login", "bob", "bob-laptop", IP, 1);
    let first = ask(a, asked.clone()).await;
    assert_eq!(seen(&first).outcome, Outcome::StepUp);
    let mut done = answering(&first, &asked, Event::StepUpSucceeded);
    done.reached_aal = 2;
    let judged = send(a, done).await;
    assert_eq!(
        proto::ReportEffect::try_from(judged.effect),
        Ok(proto::ReportEffect::Completed)
    );
    let again = ask(b, decide("login", "bob", "bob-laptop", IP, 1)).await;
    assert_eq!(
        seen(&again),
        expect(Outcome::Allow, 0, &["journey-permit"]),
        "the device learned through one replica is known to the other"
    );

    const USERS: usize = 40;
    let stuffing = "198.51.100.77";
    let reports = (0..USERS).map(|i| {
        let mut client = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            fail(&mut client, &format!("victim-{i}"), stuffing, 1).await;
        }
    });
    futures_util::future::join_all(reports).await;
    let store = shared.store();
    let p = shared.pseudonymizer();
    let seen = store
        .lookup(
            &Lookup {
                user: p.user_key("default", "nobody"),
                device: None,
                ip: stuffing.parse().expect("ip"),
                country: None,
            },
            now(),
        )
        .await
        .expect("lookup");
    assert_eq!(
        (seen.ip.distinct_failed_users, seen.ip.failures),
        (USERS as u32, USERS as u32),
        "concurrent reports to both replicas are counted exactly"
    );
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `stepgate serve --config FILE` with a free gRPC port, ready to call.
async fn spawn_replica(config: &Path) -> (Peer, DecisionServiceClient<Channel>) {
    let listen = format!("127.0.0.1:{}", free_port());
    let peer = Peer(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", &listen])
            .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .env_remove("STEPGATE_CONFIG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stepgate"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(client) = DecisionServiceClient::connect(format!("http://{listen}")).await {
            return (peer, client);
        }
        assert!(Instant::now() < deadline, "stepgate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_stepgate_processes_on_one_redis_share_failures_devices_and_distinct_users() {
    let shared = Shared::single();
    let config = shared.dir.path().join("stepgate.toml");
    std::fs::write(
        &config,
        format!(
            "policies_dir = {:?}\n[store]\nbackend = \"redis\"\nhash_key_file = \"hash.key\"\n[store.redis]\nurl = \"{}\"\n",
            bundled_policies().display().to_string(),
            shared.nodes.first().map(RedisNode::url).unwrap_or_default()
        ),
    )
    .expect("config");
    let (_a, mut a) = spawn_replica(&config).await;
    let (_b, mut b) = spawn_replica(&config).await;
    replicas_share_one_memory(&shared, &mut a, &mut b).await;
}

/// Feedback on two replicas of one store: a compromise reported to one
/// marks the account for both, and the other stops trusting the device
/// once its L1 entry ends.
async fn feedback_is_shared(shared: &Shared) {
    let (a, b) = replicas(shared).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let l1 = std::time::Duration::from_millis(shared.config().store.redis.l1_ttl_ms + 200);
    crate::feedback::compromise_steps_up_until_passed_and_confirmed_safe_clears(
        &mut ca, &mut cb, l1,
    )
    .await;
}

#[tokio::test]
async fn compromise_and_confirmed_safe_on_redis_reach_every_replica() {
    feedback_is_shared(&Shared::single()).await;
}

#[tokio::test]
async fn compromise_and_confirmed_safe_on_a_redis_cluster_reach_every_replica() {
    feedback_is_shared(&Shared::cluster()).await;
}

#[tokio::test]
async fn replicas_reach_a_redis_on_the_same_host_through_its_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No TCP port at all: only the socket can be what they share.
    let node = RedisNode::start_on_socket(dir.path());
    let shared = Shared::with_key(vec![node], dir);
    assert!(shared.config().store.redis.url.starts_with("unix://"));
    let (a, b) = replicas(&shared).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    replicas_share_one_memory(&shared, &mut ca, &mut cb).await;
}

#[tokio::test]
async fn two_replicas_on_a_redis_cluster_share_failures_devices_and_distinct_users() {
    let shared = Shared::cluster();
    let (a, b) = replicas(&shared).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    replicas_share_one_memory(&shared, &mut ca, &mut cb).await;
    assert!(
        a.engine.store().round_trips() > 0,
        "the replica went to the Cluster"
    );
}

#[tokio::test]
async fn a_redis_outage_degrades_answers_by_tier_within_the_deadline_and_heals_by_itself() {
    let mut shared = Shared::single();
    let server = TestServer::start_with(shared.config()).await;
    let client = server.client().await;
    // (journey, tier, the default failure mode's answer at AAL1)
    let tiers = [
        ("signup", Tier::Low, Outcome::Allow, 0),
        ("login", Tier::Medium, Outcome::StepUp, 2),
        ("payment", Tier::High, Outcome::Deny, 0),
    ];
    let asked = |journey: &str| {
        let mut request = tonic::Request::new(decide(journey, "carol", "carol-phone", IP, 1));
        request.set_timeout(Duration::from_millis(300));
        request
    };
    let before = client
        .clone()
        .decide(asked("login"))
        .await
        .expect("answers");
    assert!(!before.get_ref().degraded);

    node(&mut shared).stop();
    // Load during the outage: every answer comes, in its tier's mode,
    // marked degraded, inside the caller's 300 ms deadline.
    let mut calls = Vec::new();
    for round in 0..30 {
        for (journey, tier, outcome, level) in tiers {
            let mut client = client.clone();
            let request = asked(journey);
            calls.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = client.decide(request).await;
                (
                    round,
                    journey,
                    tier,
                    outcome,
                    level,
                    started.elapsed(),
                    answer,
                )
            }));
        }
    }
    for call in calls {
        let (round, journey, _, outcome, level, took, answer) = call.await.expect("joined");
        let answer = answer
            .unwrap_or_else(|status| unreachable!("{journey} round {round}: {status:?}"))
            .into_inner();
        assert!(answer.degraded, "{journey}: {answer:?}");
        assert_eq!(
            (seen(&answer).outcome, answer.required_aal),
            (outcome, level),
            "{journey}"
        );
        assert!(
            answer
                .reasons
                .iter()
                .any(|r| r.policy_id.starts_with("stepgate.store_")),
            "{:?}",
            answer.reasons
        );
        assert!(took < Duration::from_millis(300), "{journey} took {took:?}");
    }
    for (journey, tier, _, _) in tiers {
        // Refused connections are told apart from a slow store, and
        // answered at once rather than after the budget.
        let metrics = server.engine.metrics();
        let unavailable = metrics.degraded_count(journey, tier, "stepgate.store_unavailable");
        let slow = metrics.degraded_count(journey, tier, "stepgate.store_timeout");
        assert_eq!((unavailable, slow), (30, 0), "{journey}");
    }
    // Reports fail visibly while nothing can learn from them.
    let refused = client
        .clone()
        .report_outcome(report(
            "login",
            "carol",
            "carol-phone",
            IP,
            Event::AuthFailed,
        ))
        .await
        .expect_err("no store, no report");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    node(&mut shared).resume();
    let healed = Instant::now();
    loop {
        let answer = client
            .clone()
            .decide(asked("login"))
            .await
            .expect("answers");
        if !answer.get_ref().degraded {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "still degraded 5 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let normal = client
        .clone()
        .decide(asked("payment"))
        .await
        .expect("answers");
    assert!(!normal.get_ref().degraded);
    assert_ne!(seen(normal.get_ref()).outcome, Outcome::Deny);
}

/// Gives `user` in `tenant` everything the store can hold: a known device,
/// a country, failures counted at an address, remembered decisions.
async fn history(client: &mut DecisionServiceClient<Channel>, user: &str, tenant: &str) {
    let with_tenant = |mut request: proto::DecideRequest| {
        request.subject = Some(proto::Subject {
            user_id: user.into(),
            tenant: tenant.into(),
        });
        request
    };
    let asked = with_tenant(decide("login", user, "phone", IP, 1));
    let first = ask(client, asked.clone()).await;
    let mut done = answering(&first, &asked, Event::StepUpSucceeded);
    done.reached_aal = 2;
    send(client, done).await;
    let mut failed = report("login", user, "phone", "192.0.2.9", Event::AuthFailed);
    failed.subject = asked.subject.clone();
    send(client, failed).await;
    ask(client, with_tenant(decide("payment", user, "phone", IP, 1))).await;
}

async fn forget_user_leaves_no_key_behind(shared: &Shared) {
    let server = TestServer::start_with(shared.config()).await;
    let mut client = server.client().await;
    for tenant in ["acme", "globex"] {
        history(&mut client, "alice", tenant).await;
    }
    history(&mut client, "bob", "acme").await;
    let p = shared.pseudonymizer();
    let alice_acme = hex(p.user_key("acme", "alice").id.as_bytes());
    let alice_globex = hex(p.user_key("globex", "alice").id.as_bytes());
    let alice = hex(p.person("alice").as_bytes());
    let bob = hex(p.user_key("acme", "bob").id.as_bytes());
    let keys = shared.keys();
    assert!(keys.iter().any(|k| k.contains(&alice_acme)), "{keys:?}");
    assert!(shared.values().contains(&alice_acme));

    let erased = client
        .forget_user(forget("alice", "acme", false))
        .await
        .expect("erased")
        .into_inner();
    assert_eq!(erased.users_erased, 1);
    assert!(!shared.keys().iter().any(|k| k.contains(&alice_acme)));
    assert!(
        !shared.values().contains(&alice_acme),
        "no set, hash or list names her acme user any more"
    );
    assert!(shared.keys().iter().any(|k| k.contains(&alice_globex)));

    let erased = client
        .forget_user(forget("alice", "", true))
        .await
        .expect("erased")
        .into_inner();
    assert_eq!(erased.users_erased, 1, "only globex had anything left");
    let keys = shared.keys();
    assert!(!keys.iter().any(|k| k.contains(&alice)), "{keys:?}");
    let values = shared.values();
    assert!(!values.contains(&alice_globex) && !values.contains(&alice));
    assert!(
        keys.iter().any(|k| k.contains(&bob)),
        "bob is untouched: {keys:?}"
    );

    // Afterwards alice is a first-time user on the device she had.
    let mut fresh = decide("login", "alice", "phone", IP, 1);
    fresh.subject = Some(proto::Subject {
        user_id: "alice".into(),
        tenant: "acme".into(),
    });
    let answer = ask(&mut client, fresh).await;
    assert_eq!(
        signal_names(&answer),
        ["device.new", "behaviour.first_sign_in"]
    );
    let again = client
        .forget_user(forget("alice", "", true))
        .await
        .expect("erasing nothing succeeds")
        .into_inner();
    assert_eq!(again.users_erased, 1, "the decision just made is about her");
    let rendered = server.engine.metrics().render();
    assert_eq!(
        Scrape(rendered.clone()).value(
            "stepgate_erasures_total",
            &[("scope", "all_tenants"), ("result", "erased")]
        ),
        Some(2.0),
        "{rendered}"
    );
    assert!(!rendered.contains("alice"));
}

#[tokio::test]
async fn forget_user_on_redis_leaves_no_key_behind_and_a_first_time_user() {
    forget_user_leaves_no_key_behind(&Shared::single()).await;
}

#[tokio::test]
async fn forget_user_on_a_redis_cluster_leaves_no_key_behind() {
    forget_user_leaves_no_key_behind(&Shared::cluster()).await;
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_degrades_then_serves_once_it_is_up() {
    let mut shared = Shared::single();
    node(&mut shared).stop();
    let server = TestServer::start_with(shared.config()).await;
    let client = server.client().await;
    let answer = client
        .clone()
        .decide(decide("signup", "dora", "", IP, 1))
        .await
        .expect("answers")
        .into_inner();
    assert!(answer.degraded);
    assert_eq!(seen(&answer).outcome, Outcome::Allow, "low tier fails open");
    node(&mut shared).resume();
    let started = Instant::now();
    while client
        .clone()
        .decide(decide("signup", "dora", "", IP, 1))
        .await
        .expect("answers")
        .into_inner()
        .degraded
    {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failure_modes_are_configured_per_tier() {
    let mut shared = Shared::single();
    node(&mut shared).stop();
    let mut config = shared.config();
    config.store.on_failure =
        toml::from_str("low = \"deny\"\nmedium = \"allow\"\nhigh = \"step_up_aal3\"")
            .expect("modes");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    for (journey, aal, outcome, level) in [
        ("signup", 1, Outcome::Deny, 0),
        ("login", 1, Outcome::Allow, 0),
        ("payment", 1, Outcome::StepUp, 3),
        ("payment", 3, Outcome::Allow, 0),
    ] {
        let answer = ask(&mut client, decide(journey, "erin", "", IP, aal)).await;
        assert!(answer.degraded);
        assert_eq!(
            (seen(&answer).outcome, answer.required_aal),
            (outcome, level),
            "{journey} at AAL{aal}"
        );
    }
}

#[tokio::test]
async fn a_redis_config_needs_a_shared_hash_key_and_valid_urls() {
    let mut config = Config::default();
    config.store.backend = StoreBackend::Redis;
    config.store.redis.url = "http://localhost:6379".into();
    config.store.redis.key_prefix = "has space".into();
    let problems = config
        .validate(Path::new("stepgate.toml"))
        .expect_err("refused")
        .to_string();
    for expected in [
        "`store.hash_key_file` is unset",
        "`store.redis.url` `http://localhost:6379`",
        "`store.redis.key_prefix` `has space`",
    ] {
        assert!(problems.contains(expected), "{expected} in {problems}");
    }
    // A Unix socket names a single Redis, never a Cluster node.
    config.store.redis.url = "unix:///run/redis/redis.sock".into();
    config.store.redis.cluster_nodes = vec!["unix:///run/redis/redis.sock".into()];
    let problems = config
        .validate(Path::new("stepgate.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        !problems.contains("`store.redis.url`")
            && problems.contains("`store.redis.cluster_nodes` `unix:///run/redis/redis.sock` must be a `redis://host:port` URL"),
        "{problems}"
    );
    let modes: Result<stepgate::config::FailureModes, _> = toml::from_str("low = \"maybe\"");
    let error = modes.expect_err("refused").to_string();
    assert!(error.contains("`maybe` is not a failure mode"), "{error}");
}

/// Waits until the store's round-trip count has not moved for 100 ms (the
/// decision writer has written what was queued) and returns it.
async fn settled_round_trips(store: &std::sync::Arc<dyn ContextStore>) -> u64 {
    let mut last = store.round_trips();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = store.round_trips();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn round_trips_per_decision_are_counted_and_decision_writes_are_batched() {
    let shared = Shared::single();
    let server = TestServer::start_with(shared.config()).await;
    let mut client = server.client().await;
    let store = server.engine.store().clone();
    ask(&mut client, decide("login", "frank", "", IP, 1)).await;
    // One at a time: one read each, and at most one write each.
    let before = settled_round_trips(&store).await;
    for _ in 0..10 {
        ask(&mut client, decide("login", "frank", "", IP, 1)).await;
    }
    let one_by_one = settled_round_trips(&store).await - before;
    assert!(
        (11..=20).contains(&one_by_one),
        "10 reads and 1 to 10 batches of writes, not {one_by_one}"
    );
    // Many at once: a read each, and the writes share batches.
    let before = settled_round_trips(&store).await;
    let asks = (0..64).map(|i| {
        let mut client = client.clone();
        async move {
            ask(
                &mut client,
                decide("login", &format!("user-{i}"), "", IP, 1),
            )
            .await
        }
    });
    futures_util::future::join_all(asks).await;
    let writes = settled_round_trips(&store).await - before - 64;
    assert!(
        (1..32).contains(&writes),
        "64 decisions at once written in {writes} batches"
    );
}

/// Runs one history on both stores at the same (injected) times and
/// compares every lookup: the shared store keeps the memory store's rules
/// (windows, freshness, saturation, which device makes room, what a
/// success resets).
#[tokio::test]
async fn the_redis_store_answers_as_the_memory_store_does() {
    use stepgate::store::{CountryCode, MemoryStore, Record, StoredLocation};
    let shared = Shared::single();
    let mut config = shared.config();
    config.store.max_devices_per_user = 2;
    config.store.max_events_per_key = 32;
    config.store.redis.l1_ttl_ms = 0;
    let redis =
        RedisStore::new(&config.store, config.windows, shared.pseudonymizer()).expect("redis");
    let memory = MemoryStore::new(&config.store, config.windows);
    let stores: [&dyn ContextStore; 2] = [&memory, &redis];
    let p = shared.pseudonymizer();
    let (alice, bob) = (p.user_key("default", "alice"), p.user_key("default", "bob"));
    let device = |d: &str| Some(p.device(d));
    let ip: std::net::IpAddr = "198.51.100.8".parse().expect("ip");
    let t0 = 1_800_000_000;
    let success = |user, d: &str, at: i64| Record::Success {
        user,
        device: device(d),
        country: CountryCode::parse("GB"),
        location: Some(StoredLocation::new(51.5, -0.1, 20, at)),
        decided_under: None,
        step_up: false,
    };
    let failure = |user, d: &str| Record::Failure {
        user,
        device: device(d).filter(|_| !d.is_empty()),
        ip,
    };
    // Three devices in one second with room for two: the newest stays.
    let history: Vec<(i64, Record)> = vec![
        (t0, success(alice, "a", t0)),
        (t0 + 1, success(alice, "b", t0 + 1)),
        (t0 + 1, success(alice, "c", t0 + 1)),
        (t0 + 2, failure(alice, "c")),
        (t0 + 3, failure(alice, "")),
        (t0 + 4, failure(bob, "x")),
        (t0 + 5, failure(bob, "x")),
    ];
    for (at, record) in &history {
        for store in stores {
            store.record(record, *at).await.expect("record");
        }
    }
    for i in 0..40 {
        for store in stores {
            store
                .record(
                    &failure(p.user_key("default", &format!("v{i}")), ""),
                    t0 + 6,
                )
                .await
                .expect("record");
        }
    }
    let windows = config.windows;
    let user_window = i64::try_from(windows.user_failures_secs).expect("window");
    for (user, d, at) in [
        (alice, "a", t0 + 7),
        (alice, "b", t0 + 7),
        (alice, "c", t0 + 7),
        (alice, "c", t0 + user_window + 3),
        (bob, "x", t0 + 7),
        (bob, "", t0 + 7),
        (alice, "c", t0 + 30 * 86_400 + 2),
    ] {
        let key = Lookup {
            user,
            device: device(d).filter(|_| !d.is_empty()),
            ip,
            country: CountryCode::parse("GB"),
        };
        let seen_in_memory = memory.lookup(&key, at).await.expect("memory");
        let seen_in_redis = redis.lookup(&key, at).await.expect("redis");
        assert_eq!(
            seen_in_redis,
            seen_in_memory,
            "device {d} at t0+{}",
            at - t0
        );
    }
    let first = memory
        .lookup(
            &Lookup {
                user: alice,
                device: device("c"),
                ip,
                country: None,
            },
            t0 + 7,
        )
        .await
        .expect("memory");
    assert!(first.user.device_known && first.user.failures == 2);
    assert_eq!(
        first.ip.distinct_failed_users, 32,
        "saturated at max_events_per_key"
    );
}

/// Feedback records read back the same from both stores: the compromise
/// mark, what it un-trusts (the reported decision included), which
/// completions teach and lift it under the mark, a second report in the
/// same second, confirmed safe, and the mark's end.
#[tokio::test]
async fn feedback_reads_back_from_redis_as_from_memory() {
    use stepgate::decision::{Aal, DecisionId};
    use stepgate::store::{
        CountryCode, IssuedDecision, JourneyKey, MemoryStore, Record, StoredLocation, UserContext,
    };
    let shared = Shared::single();
    let mut config = shared.config();
    config.store.redis.l1_ttl_ms = 0;
    let redis =
        RedisStore::new(&config.store, config.windows, shared.pseudonymizer()).expect("redis");
    let memory = MemoryStore::new(&config.store, config.windows);
    let stores: [&dyn ContextStore; 2] = [&memory, &redis];
    let p = shared.pseudonymizer();
    let carol = p.user_key("default", "carol");
    let ip: std::net::IpAddr = "198.51.100.8".parse().expect("ip");
    let t0 = 1_800_000_000;
    let gb = CountryCode::parse("GB");
    let london = StoredLocation::new(51.5, -0.1, 20, t0);
    let success = |d: &str, decided_under: Option<i64>, step_up: bool| Record::Success {
        user: carol,
        device: Some(p.device(d)),
        country: gb,
        location: Some(london),
        decided_under,
        step_up,
    };
    let reported = DecisionId::new();
    let compromised = |until, decision| Record::Compromised {
        user: carol,
        device: Some(p.device("d1")),
        country: gb,
        location: Some(StoredLocation::new(51.5, -0.1, 100, t0 + 9)),
        decision,
        until,
    };
    let seen = |d: &'static str, at: i64| {
        let key = Lookup {
            user: carol,
            device: Some(p.device(d)),
            ip,
            country: gb,
        };
        let (memory, redis) = (&memory, &redis);
        async move {
            let in_memory = memory.lookup(&key, at).await.expect("memory").user;
            let in_redis = redis.lookup(&key, at).await.expect("redis").user;
            assert_eq!(in_redis, in_memory, "device {d} at t0+{}", at - t0);
            in_memory
        }
    };
    let issued = IssuedDecision {
        user: carol,
        device: Some(p.device("d1")),
        journey: JourneyKey::of("login"),
        ip,
        from: Aal::One,
        demand: Some(Aal::One),
        reauth: false,
        compromise: None,
    };
    for store in stores {
        store
            .record(&success("d1", None, false), t0)
            .await
            .expect("record");
        store
            .record(&success("d2", None, false), t0 + 1)
            .await
            .expect("record");
        store
            .remember_decision(reported, &issued, t0 + 2)
            .await
            .expect("remember");
        store
            .record(&compromised(t0 + 1000, Some(reported)), t0 + 10)
            .await
            .expect("record");
        assert_eq!(
            store
                .issued_decision(reported, t0 + 11)
                .await
                .expect("read"),
            None,
            "the reported decision is forgotten"
        );
    }
    let d1: UserContext = seen("d1", t0 + 11).await;
    assert_eq!(
        (d1.device_known, d1.country_known, d1.last_location),
        (false, false, None),
        "the reported session's device, country and position are un-trusted"
    );
    assert_eq!(d1.compromised_since, Some(t0 + 10));
    assert!(seen("d2", t0 + 11).await.device_known, "d2 was not named");
    // Under the mark: a step-up decided under an older mark, or a
    // completion of no decision, teaches nothing and lifts nothing; an
    // ALLOW decided under it teaches; its step-up lifts it.
    for (at, record, known, lifted) in [
        (t0 + 12, success("d3", Some(t0 + 5), true), false, false),
        (t0 + 13, success("d3", None, false), false, false),
        (t0 + 14, success("d3", Some(t0 + 10), false), true, false),
        (t0 + 15, success("d4", Some(t0 + 10), true), true, true),
    ] {
        for store in stores {
            store.record(&record, at).await.expect("record");
        }
        let device = if at == t0 + 15 { "d4" } else { "d3" };
        let now = seen(device, at).await;
        assert_eq!(
            (now.device_known, now.compromised_since.is_none()),
            (known, lifted),
            "at t0+{}",
            at - t0
        );
    }
    // Two reports in one second: the second mark starts a second later,
    // keeps the later end, and a step-up decided under the first does not
    // lift it.
    for (until, at) in [(t0 + 1000, t0 + 20), (t0 + 500, t0 + 20)] {
        for store in stores {
            store
                .record(&compromised(until, None), at)
                .await
                .expect("record");
        }
    }
    assert_eq!(seen("d2", t0 + 21).await.compromised_since, Some(t0 + 21));
    for store in stores {
        store
            .record(&success("d2", Some(t0 + 20), true), t0 + 22)
            .await
            .expect("record");
    }
    assert_eq!(seen("d2", t0 + 999).await.compromised_since, Some(t0 + 21));
    for store in stores {
        store
            .record(&Record::ConfirmedSafe { user: carol }, t0 + 23)
            .await
            .expect("record");
    }
    assert_eq!(seen("d2", t0 + 24).await.compromised_since, None);
    for store in stores {
        store
            .record(&compromised(t0 + 40, None), t0 + 30)
            .await
            .expect("record");
    }
    assert_eq!(seen("d2", t0 + 39).await.compromised_since, Some(t0 + 30));
    assert_eq!(
        seen("d2", t0 + 40).await.compromised_since,
        None,
        "the mark ends"
    );
}

#[tokio::test]
async fn every_key_a_decision_or_a_report_writes_expires() {
    let shared = Shared::single();
    let server = TestServer::start_with(shared.config()).await;
    let mut client = server.client().await;
    ask(&mut client, decide("login", "gina", "tablet", IP, 1)).await;
    fail(&mut client, "hank", IP, 1).await;
    sign_in(&mut client, "ivy", "phone", IP).await;
    // A compromise mark on a user with nothing else stored.
    send(
        &mut client,
        report("login", "jon", "phone", IP, Event::Compromised),
    )
    .await;
    // Writes behind the answer land within moments.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keys = shared.keys();
    assert!(keys.len() >= 8, "{keys:?}");
    let port = shared
        .nodes
        .first()
        .map(|n| n.port.to_string())
        .unwrap_or_default();
    for key in keys {
        let ttl = Command::new(redis_cli())
            .args(["-p", &port, "ttl", &key])
            .output()
            .expect("redis-cli runs");
        let ttl: i64 = String::from_utf8_lossy(&ttl.stdout)
            .trim()
            .parse()
            .expect("a number");
        assert!(ttl > 0, "`{key}` has no expiry ({ttl})");
    }
}

#[tokio::test]
async fn a_stalled_redis_degrades_within_the_budget_and_a_shorter_deadline_is_not_degraded() {
    let shared = Shared::single();
    let server = TestServer::start_with(shared.config()).await;
    let client = server.client().await;
    ask(&mut client.clone(), decide("login", "jack", "", IP, 1)).await;
    let pid = shared
        .nodes
        .first()
        .and_then(|n| n.process.as_ref())
        .map(|p| p.0.id().to_string())
        .expect("a redis-server");
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs")
    };
    assert!(signal("-STOP").success());
    let within = |ms: u64| {
        let mut request = tonic::Request::new(decide("login", "jack", "", IP, 1));
        request.set_timeout(Duration::from_millis(ms));
        request
    };
    let started = Instant::now();
    let slow = client.clone().decide(within(1000)).await;
    let took = started.elapsed();
    let short = client.clone().decide(within(20)).await;
    assert!(signal("-CONT").success());
    let slow = slow.expect("answered degraded").into_inner();
    assert!(slow.degraded);
    assert_eq!(
        slow.reasons.first().map(|r| r.policy_id.as_str()),
        Some("stepgate.store_timeout")
    );
    assert!(
        took < Duration::from_millis(500),
        "the 50 ms budget held: {took:?}"
    );
    // The client gives up at its deadline too, so which side speaks first
    // is a race; the server's own count says what it did.
    let short = short.expect_err("no one waits for it");
    assert!(
        matches!(
            short.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{short:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = server.engine.metrics();
    assert_eq!(
        metrics.degraded_count("login", Tier::Medium, "stepgate.store_timeout"),
        1,
        "only the call with time to spare was answered degraded"
    );
    let scrape = Scrape(metrics.render());
    assert_eq!(
        scrape.value(
            "stepgate_request_faults_total",
            &[
                ("rpc", "Decide"),
                ("caller", "anonymous"),
                ("fault", "deadline_exceeded")
            ]
        ),
        Some(1.0),
        "{}",
        scrape.0
    );
}

#[tokio::test]
async fn a_wrong_redis_password_degrades_answers_and_the_right_one_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = RedisNode::start(dir.path(), false);
    node.stop();
    node.extra = vec!["--requirepass".into(), "s3cret-enough".into()];
    node.resume();
    let shared = Shared::with_key(vec![node], dir);
    let password = shared.dir.path().join("redis.password");
    std::fs::write(&password, "wrong\n").expect("password");
    let mut config = shared.config();
    config.store.redis.password_file = Some(password.clone());
    let refused = TestServer::start_with(config.clone()).await;
    let mut client = refused.client().await;
    for _ in 0..3 {
        let answer = ask(&mut client, decide("signup", "kim", "", IP, 1)).await;
        assert!(answer.degraded);
        assert_eq!(
            answer.reasons.first().map(|r| r.policy_id.as_str()),
            Some("stepgate.store_unavailable"),
            "a refused password is no slow store"
        );
    }
    std::fs::write(&password, "s3cret-enough\n").expect("password");
    let served = TestServer::start_with(config).await;
    let answer = ask(
        &mut served.client().await,
        decide("signup", "kim", "", IP, 1),
    )
    .await;
    assert!(!answer.degraded, "{answer:?}");
}

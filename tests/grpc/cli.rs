//! The `stepgate` binary itself: refusing to start on bad input, and the
//! `decide` / `report` client subcommands against a running `serve`.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{Peer, bundled_policies, free_port};

fn stepgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(args)
        .env_remove("STEPGATE_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run stepgate")
}

#[test]
fn serve_refuses_a_policy_directory_that_does_not_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["schema.cedarschema", "journeys.toml"] {
        std::fs::copy(bundled_policies().join(name), dir.path().join(name)).expect("copy");
    }
    std::fs::write(
        dir.path().join("broken.cedar"),
        "@id(\"broken\") @reason(\"typo\")\nforbid (principal, action, resource)\nwhen { context.ip.deny_lsted };\n",
    )
    .expect("write");
    let out = stepgate(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--policies",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.cedar:3:"), "{stderr}");
    assert!(stderr.contains("deny_lsted"), "{stderr}");
}

#[test]
fn serve_reports_every_bad_config_value_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stepgate.toml");
    std::fs::write(
        &config,
        "[windows]\nuser_failures_secs = 0\n[acr]\naal2 = \"\"\n",
    )
    .expect("write");
    let out = stepgate(&["serve", "--config", config.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("windows.user_failures_secs"), "{stderr}");
    assert!(stderr.contains("acr.aal2"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_deny_list_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("deny.txt"), "10.0.0.0/8\n10.0.0.0/33\n").expect("write");
    let config = dir.path().join("stepgate.toml");
    let policies = bundled_policies();
    std::fs::write(
        &config,
        format!(
            "policies_dir = {:?}\n[ip_lists]\ndeny = [\"deny.txt\"]\n",
            policies.to_str().expect("utf-8")
        ),
    )
    .expect("write");
    let out = stepgate(&["serve", "--config", config.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deny.txt:2: `10.0.0.0/33`"), "{stderr}");
}

/// Kills the server even when an assertion fails.
/// `stepgate serve ARGS` in the background, its output discarded.
fn spawn_serve(args: &[&str]) -> Peer {
    spawn_serve_to(args, Stdio::null())
}

/// `stepgate serve ARGS` in the background, its decision log (stdout)
/// written to `log`; its HTTP and admin listeners on free ports of their
/// own.
fn spawn_serve_to(args: &[&str], log: impl Into<Stdio>) -> Peer {
    let http = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    Peer(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .arg("serve")
            .args(args)
            .args(["--http-listen", &http, "--admin-listen", &admin])
            .env_remove("STEPGATE_CONFIG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve"),
    )
}

/// Calls `attempt` every 100 ms until it gives a value, for up to 10 s.
fn poll<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(value) = attempt() {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    attempt().unwrap_or_else(|| unreachable!("{what} within 10 s"))
}

#[test]
fn decide_and_report_subcommands_talk_to_a_served_instance() {
    let listen = format!("127.0.0.1:{}", free_port());
    let addr = format!("http://{listen}");
    let policies = bundled_policies();
    let _server = spawn_serve(&[
        "--listen",
        &listen,
        "--policies",
        policies.to_str().expect("utf-8"),
    ]);
    let target = [
        "--addr",
        &addr,
        "--journey",
        "login",
        "--user",
        "alice",
        "--device",
        "laptop",
        "--ip",
        "203.0.113.7",
    ];
    let first = poll("the server answered", || {
        let out = stepgate(&[&["decide"][..], &target[..]].concat());
        out.status.success().then_some(out)
    });
    let answer: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    assert_eq!(answer["outcome"], "OUTCOME_STEP_UP");
    assert_eq!(answer["required_aal"], 2);
    assert_eq!(answer["reasons"][0]["policy_id"], "login-new-device");

    let decision = answer["decision_id"].as_str().expect("decision id");
    let report = |event: &str| {
        let out = stepgate(
            &[
                &["report"][..],
                &target[..],
                &["--event", event, "--decision-id", decision][..],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let password = report("auth-succeeded");
    assert_eq!(password["effect"], "REPORT_EFFECT_PARTIAL", "{password}");
    assert_eq!(password["required_aal"], 2);
    let out = stepgate(&[&["decide"][..], &target[..]].concat());
    let still: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        still["outcome"], "OUTCOME_STEP_UP",
        "a first factor teaches nothing"
    );
    let second = report("step-up-succeeded");
    assert_eq!(second["effect"], "REPORT_EFFECT_COMPLETED", "{second}");
    assert_eq!(second["decision_found"], true);

    let out = stepgate(&[&["decide"][..], &target[..]].concat());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["outcome"], "OUTCOME_ALLOW");

    let out = stepgate(&[&["decide"][..], &target[..], &["--aal", "7"][..]].concat());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains("`authn.aal`: 7 is not an assurance level"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_drives_a_served_instance_without_errors() {
    let server = crate::harness::TestServer::start().await;
    let target = server.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        stepgate(&[
            "loadtest",
            "--target",
            &target,
            "--duration",
            "2s",
            "--check-duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--users",
            "200",
            "--report-ratio",
            "0.5",
            "--json",
        ])
    })
    .await
    .expect("loadtest ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let count = |path: &str| report.pointer(path).and_then(serde_json::Value::as_u64);
    assert!(
        count("/decide/requests").is_some_and(|n| n > 100),
        "{report}"
    );
    assert!(
        count("/check/requests").is_some_and(|n| n > 100),
        "{report}"
    );
    assert!(
        count("/report/requests").is_some_and(|n| n > 10),
        "{report}"
    );
    for phase in ["check", "decide", "report"] {
        let errors = report.pointer(&format!("/{phase}/errors"));
        assert_eq!(errors, Some(&serde_json::json!({})), "{phase}: {report}");
    }
    // The traffic model reaches both answers an IdP acts on.
    for outcome in ["ALLOW", "STEP_UP"] {
        let n = count(&format!("/decide/outcomes/{outcome}"));
        assert!(n.is_some_and(|n| n > 0), "{outcome}: {report}");
    }
    let p50 = count("/decide/latency_us/p50").expect("p50");
    let max = count("/decide/latency_us/max").expect("max");
    assert!(p50 > 0 && p50 <= max, "{report}");
    assert!(
        report["decide_check_p50_ratio"].as_f64().is_some(),
        "{report}"
    );
    // Every decision the traffic asked for was answered and reported back,
    // so the store learned from it.
    assert!(server.store_sizes().0 > 0);
    server.stop().await;
}

#[test]
fn loadtest_against_nothing_fails_naming_the_target() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let target = format!("http://127.0.0.1:{port}");
    let out = stepgate(&["loadtest", "--target", &target, "--duration", "1s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains(&target), "{stderr}");
    let bad_mix = stepgate(&["loadtest", "--mix", "login"]);
    assert!(!bad_mix.status.success());
    assert!(
        String::from_utf8_lossy(&bad_mix.stderr).contains("JOURNEY:WEIGHT"),
        "{}",
        String::from_utf8_lossy(&bad_mix.stderr)
    );
}

/// With watching off, a changed file waits for SIGHUP; then the new set
/// answers.
#[cfg(unix)]
#[test]
fn sighup_reloads_the_policies_of_a_served_instance() {
    let policies = crate::harness::bundled_policies_with(&[]);
    let port = free_port();
    let config = policies.path().join("stepgate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\npolicies_dir = {:?}\n[policy_reload]\nwatch = false\n",
            policies.path()
        ),
    )
    .expect("write config");
    let server = spawn_serve(&["--config", config.to_str().expect("utf-8")]);
    let addr = format!("http://127.0.0.1:{port}");
    let ask = || {
        let out = stepgate(&[
            "decide",
            "--addr",
            &addr,
            "--journey",
            "login",
            "--user",
            "alice",
            "--device",
            "laptop",
            "--ip",
            "81.2.69.142",
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json"))
    };
    let first = poll("the server answered", ask);
    assert_eq!(first["outcome"], "OUTCOME_STEP_UP");

    std::fs::write(
        policies.path().join("lockdown.cedar"),
        "@id(\"lockdown\") @reason(\"sign-ins are paused\")\nforbid (principal, action == Action::\"login\", resource);\n",
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(800));
    let unsignalled = ask().expect("answers");
    assert_eq!(
        unsignalled["outcome"], "OUTCOME_STEP_UP",
        "no watch, no signal: no reload"
    );
    assert_eq!(unsignalled["policy_version"], first["policy_version"]);

    let hup = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let reloaded = poll("the new set answered after SIGHUP", || {
        let answer = ask().expect("answers while reloading");
        (answer["outcome"] == "OUTCOME_DENY").then_some(answer)
    });
    assert_eq!(reloaded["reasons"][0]["policy_id"], "lockdown");
    assert_ne!(reloaded["policy_version"], first["policy_version"]);
}

#[tokio::test]
async fn refused_requests_are_logged_without_their_content() {
    use prost::Message as _;
    let listen = format!("127.0.0.1:{}", free_port());
    let policies = bundled_policies();
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut server = spawn_serve_to(
        &[
            "--listen",
            &listen,
            "--policies",
            policies.to_str().expect("utf-8"),
        ],
        log,
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{listen}")).expect("uri");
    let mut connected = None;
    for _ in 0..100 {
        if let Ok(c) = channel.connect().await {
            connected = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = connected.expect("served within 10 s");
    let secret = "SECRETUSERX";
    let good = crate::harness::decide("login", secret, "laptop", "203.0.113.7", 1).encode_to_vec();
    let at = good
        .windows(secret.len())
        .position(|w| w == secret.as_bytes())
        .expect("marker");
    let mut bad_utf8 = good.clone();
    bad_utf8[at + 3] = 0xff;
    let status = crate::harness::raw_call(
        channel.clone(),
        "/stepgate.v1.DecisionService/Decide",
        crate::harness::frame(&bad_utf8),
    )
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut bad_field = crate::harness::decide("login", secret, "laptop", "203.0.113.7", 9);
    bad_field.request_id = "REQUESTSECRET".into();
    let mut client =
        stepgate::server::proto::decision_service_client::DecisionServiceClient::new(channel);
    let status = client.decide(bad_field).await.expect_err("aal 9");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // The log is written off the request path: both lines arrive within
    // moments of their answers.
    let text = poll("both refusals in the decision log", || {
        let text = std::fs::read_to_string(&log_path).ok()?;
        (text.matches(r#""kind":"refused""#).count() >= 2).then_some(text)
    });
    let _ = server.0.kill();
    let _ = server.0.wait();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every decision-log line is JSON"))
        .collect();
    let refused: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["kind"] == "refused").collect();
    assert_eq!(refused.len(), 2, "{text}");
    let malformed = refused.first().expect("first refusal");
    assert_eq!(malformed["rpc"], "Decide", "{malformed}");
    assert_eq!(malformed["door"], "grpc", "{malformed}");
    assert_eq!(malformed["fault"], "malformed_request", "{malformed}");
    assert_eq!(malformed["field"], "request", "{malformed}");
    let invalid = refused.get(1).expect("second refusal");
    assert_eq!(invalid["fault"], "invalid_argument", "{invalid}");
    assert_eq!(invalid["field"], "authn.aal", "{invalid}");
    assert!(
        !text.contains("SECRET"),
        "request content reached the log:\n{text}"
    );
}

#[tokio::test]
async fn loadtest_drives_every_door_of_a_served_instance_without_errors() {
    use stepgate::config::Config;
    let routes = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join("gateway.toml");
    let mut config = Config::load(&routes).expect("benches/gateway.toml loads");
    config.policies_dir = bundled_policies();
    let server = crate::harness::TestServer::start_with(config).await;
    let pid = std::process::id().to_string();
    for protocol in ["http", "authzen", "ext-authz"] {
        let (target, http_target, pid) =
            (server.addr.clone(), server.http_addr.clone(), pid.clone());
        let out = tokio::task::spawn_blocking(move || {
            stepgate(&[
                "loadtest",
                "--protocol",
                protocol,
                "--target",
                &target,
                "--http-target",
                &http_target,
                "--server-pid",
                &pid,
                "--duration",
                "1s",
                "--check-duration",
                "1s",
                "--warmup",
                "0s",
                "--concurrency",
                "4",
                "--users",
                "200",
                "--json",
            ])
        })
        .await
        .expect("loadtest ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{protocol}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        let decided = report
            .pointer("/decide/requests")
            .and_then(serde_json::Value::as_u64);
        assert!(decided.is_some_and(|n| n > 20), "{protocol}: {report}");
        for phase in ["check", "decide", "report"] {
            let errors = report.pointer(&format!("/{phase}/errors"));
            assert_eq!(
                errors,
                Some(&serde_json::json!({})),
                "{protocol} {phase}: {report}"
            );
        }
        for outcome in ["ALLOW", "STEP_UP"] {
            let n = report
                .pointer(&format!("/decide/outcomes/{outcome}"))
                .and_then(serde_json::Value::as_u64);
            assert!(n.is_some_and(|n| n > 0), "{protocol} {outcome}: {report}");
        }
        assert!(
            report
                .pointer("/server_cpu_us_per_decision")
                .and_then(serde_json::Value::as_f64)
                .is_some_and(|cpu| cpu > 0.0),
            "{protocol}: {report}"
        );
    }
}

#[test]
fn stdout_holds_only_decision_lines_and_the_service_log_has_no_colour_or_personal_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    // Neither stream is a terminal and NO_COLOR is unset (`serve_logged`
    // removes it): the service must still write no colour escapes.
    let (_server, listen, _) = serve_logged(dir.path(), "");
    let user = "erin.private@example.com";
    poll("a decision", || {
        let done = stepgate(&[
            "decide",
            "--addr",
            &format!("http://{listen}"),
            "--journey",
            "login",
            "--user",
            user,
            "--device",
            "laptop",
            "--ip",
            "198.51.100.23",
        ]);
        done.status.success().then_some(())
    });
    let decisions = poll("the decision line", || {
        let text = std::fs::read_to_string(&out).ok()?;
        (!text.is_empty()).then_some(text)
    });
    for line in decisions.lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(line["version"], 1);
    }
    let service = std::fs::read_to_string(&err).expect("stderr");
    assert!(service.contains("serving gRPC"), "{service}");
    assert!(!service.contains('\u{1b}'), "colour escapes in:\n{service}");
    for secret in [user, "erin", "198.51.100.23", "laptop"] {
        assert!(!service.contains(secret), "`{secret}` in the service log");
        assert!(
            !decisions.contains(secret),
            "`{secret}` in the decision log"
        );
    }
}

/// Sends SIGTERM to a served instance.
fn terminate(server: &Peer) {
    let done = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(done.success());
}

/// A served instance with its stdout (the decision log) and stderr in
/// files, on free ports, `NO_COLOR` unset; returns it and the gRPC and
/// HTTP addresses once the HTTP listener takes connections.
fn serve_logged(dir: &std::path::Path, config: &str) -> (Peer, String, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let config_path = dir.join("stepgate.toml");
    std::fs::write(&config_path, config).expect("config");
    let server = Peer(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", &listen, "--http-listen", &http])
            .args(["--admin-listen", &admin, "--policies"])
            .arg(bundled_policies())
            .env_remove("STEPGATE_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout"))
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr"))
            .spawn()
            .expect("spawn serve"),
    );
    poll("the HTTP listener", || {
        std::net::TcpStream::connect(&http).ok()
    });
    (server, listen, http)
}

/// Waits up to 10 s for the process to exit.
fn exited(server: &mut Peer) -> std::process::ExitStatus {
    poll("the process to exit", || server.0.try_wait().ok().flatten())
}

#[test]
fn a_request_that_never_finishes_does_not_hold_the_shutdown_past_its_grace() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    // The decision budget outlasts the grace period, so the request is
    // still in flight when the grace period ends.
    let (mut server, _, http) = serve_logged(
        dir.path(),
        "[shutdown]\ngrace_secs = 1\n[limits]\ndecision_budget_ms = 60000\n",
    );
    // A body announced and never sent: the request stays in flight.
    let mut stalled = std::net::TcpStream::connect(&http).expect("connect");
    stalled
        .write_all(b"POST /v1/decide HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .expect("send");
    std::thread::sleep(Duration::from_millis(200));
    let asked = std::time::Instant::now();
    terminate(&server);
    let status = exited(&mut server);
    assert!(!status.success(), "an abandoned request is an error exit");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "exited {:?} after SIGTERM",
        asked.elapsed()
    );
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).expect("stderr");
    assert!(stderr.contains("`shutdown.grace_secs`"), "{stderr}");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_answered_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, listen, _) = serve_logged(dir.path(), "[shutdown]\ngrace_secs = 10\n");
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..8 {
        let answered = answered.clone();
        let addr = format!("http://{listen}");
        clients.push(tokio::spawn(async move {
            let Ok(mut client) =
                stepgate::server::proto::decision_service_client::DecisionServiceClient::connect(
                    addr,
                )
                .await
            else {
                return;
            };
            for i in 0.. {
                let user = format!("load-{c}-{i}");
                let request = crate::harness::decide("login", &user, "laptop", "203.0.113.7", 1);
                match client.decide(request).await {
                    Ok(answer) => answered
                        .lock()
                        .expect("lock")
                        .push(answer.into_inner().decision_id),
                    // Refused or cut off once the shutdown began: never
                    // answered, so nothing to lose.
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    terminate(&server);
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(15), client).await;
    }
    let status = tokio::task::spawn_blocking(move || exited(&mut server))
        .await
        .expect("joined");
    assert!(status.success(), "a clean drain exits 0: {status:?}");
    let answered = answered.lock().expect("lock").clone();
    assert!(answered.len() > 50, "only {} answers", answered.len());
    // Every answered decision reached the decision log before exit.
    let log = std::fs::read_to_string(dir.path().join("stdout")).expect("stdout");
    let logged: std::collections::HashSet<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter_map(|l| l["decision_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} answered decisions not logged",
        missing.len()
    );
}

#[test]
fn a_decision_door_beyond_loopback_without_authentication_is_refused_unless_accepted() {
    let port = free_port();
    let wide = format!("0.0.0.0:{port}");
    let admin = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let policies = bundled_policies();
    let policies = policies.to_str().expect("utf-8");
    let out = stepgate(&[
        "serve",
        "--listen",
        &wide,
        "--http-listen",
        &http,
        "--admin-listen",
        &admin,
        "--policies",
        policies,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "`listen` is `{wide}`, which is not a loopback address"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("security.allow_unauthenticated_callers"),
        "{stderr}"
    );
    // Said explicitly, it serves, and says so at start and in readiness.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("stepgate.toml");
    std::fs::write(
        &config,
        "[security]\nallow_unauthenticated_callers = true\n",
    )
    .expect("config");
    let err_path = dir.path().join("stderr");
    let _server = Peer(
        Command::new(env!("CARGO_BIN_EXE_stepgate"))
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &wide, "--http-listen", &http])
            .args(["--admin-listen", &admin, "--policies", policies])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).expect("stderr"))
            .spawn()
            .expect("spawn serve"),
    );
    let ready = poll("/readyz", || {
        use std::io::{Read as _, Write as _};
        let mut admin = std::net::TcpStream::connect(&admin).ok()?;
        admin
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        admin.read_to_string(&mut reply).ok()?;
        reply.starts_with("HTTP/1.1 200").then_some(reply)
    });
    assert!(
        ready.contains("WARNING: callers are not authenticated"),
        "{ready}"
    );
    let stderr = std::fs::read_to_string(&err_path).expect("stderr");
    assert!(stderr.contains("callers are NOT authenticated"), "{stderr}");
}

#[test]
fn a_decision_log_fifo_without_a_reader_does_not_hold_up_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("decisions.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let config = format!(
        "[decision_log]\nsink = \"file\"\npath = \"{}\"\nqueue_capacity = 4\n",
        fifo.display()
    );
    // `serve_logged` waits for the HTTP listener: a start that opened the
    // FIFO itself would wait for a reader forever.
    let (_server, listen, _) = serve_logged(dir.path(), &config);
    for i in 0..10 {
        let out = stepgate(&[
            "decide",
            "--addr",
            &format!("http://{listen}"),
            "--journey",
            "login",
            "--user",
            &format!("fifo-{i}"),
            "--ip",
            "203.0.113.9",
        ]);
        assert!(out.status.success(), "answered with nobody reading the log");
    }
}

#[test]
fn decide_sends_how_long_ago_the_user_authenticated() {
    let listen = format!("127.0.0.1:{}", free_port());
    let addr = format!("http://{listen}");
    // The bundled pack asks for an authentication from the last 15
    // minutes on a payout change.
    let policies = bundled_policies();
    let _server = spawn_serve(&[
        "--listen",
        &listen,
        "--policies",
        policies.to_str().expect("utf-8"),
    ]);
    let ask = |age: &str| {
        let args = [
            "decide",
            "--addr",
            &addr,
            "--journey",
            "change_payout",
            "--user",
            "alice",
            "--device",
            "laptop",
            "--ip",
            "203.0.113.7",
            "--aal",
            "3",
            "--auth-age",
            age,
        ];
        let out = poll("the server answered", || {
            let out = stepgate(&args);
            out.status.success().then_some(out)
        });
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let stale = ask("3d");
    assert_eq!(stale["outcome"], "OUTCOME_STEP_UP", "{stale}");
    assert_eq!(
        (stale["required_aal"].as_u64(), stale["max_age"].as_u64()),
        (Some(3), Some(900))
    );
    let fresh = ask("5m");
    assert_eq!(fresh["outcome"], "OUTCOME_ALLOW", "{fresh}");
    assert!(fresh["max_age"].is_null(), "{fresh}");
    let refused = stepgate(&[
        "decide",
        "--addr",
        &addr,
        "--journey",
        "login",
        "--auth-age",
        "soon",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--auth-age"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

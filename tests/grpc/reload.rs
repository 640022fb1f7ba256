//! Policy hot reload under load, a refused change, debouncing and the shadow
//! set, all through a served instance.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stepgate::config::{Config, PolicyReloadConfig};
use stepgate::decision::Outcome as DomainOutcome;
use stepgate::metrics::{CacheResult, PolicyRole, ReloadResult};
use stepgate::server::proto::decision_service_client::DecisionServiceClient;
use stepgate::server::proto::{DecideResponse, Outcome};
use stepgate::watch::DirWatcher;
use tonic::transport::Channel;

use crate::harness::{TestServer, bundled_policies_with, decide, sign_in};

const PUBLIC_IP: &str = "81.2.69.142";
const LOCKDOWN: &str = r#"@id("lockdown")
@reason("sign-ins are paused")
forbid (principal, action == Action::"login", resource);
"#;

/// One answer seen by the load: its policy version and outcome and reason
/// ids, or the status code of a failed call.
type Seen = Result<(String, i32, Vec<String>), tonic::Code>;

/// A server watching `dir` with a short debounce (long enough that a
/// stalled test machine does not read a file between its creation and its
/// first write).
async fn watched(dir: &Path, shadow: Option<&Path>) -> (TestServer, Vec<DirWatcher>) {
    watched_with(dir, shadow, 300).await
}

async fn watched_with(
    dir: &Path,
    shadow: Option<&Path>,
    debounce_ms: u64,
) -> (TestServer, Vec<DirWatcher>) {
    let config = Config {
        policies_dir: dir.to_owned(),
        shadow_policies_dir: shadow.map(Path::to_owned),
        policy_reload: PolicyReloadConfig {
            watch: true,
            debounce_ms,
        },
        ..Config::default()
    };
    let server = TestServer::start_with(config.clone()).await;
    let watchers = stepgate::app::watch_policies(&server.engine, &config).expect("watch");
    (server, watchers)
}

/// Eight clients sending login decisions until `stop` is set.
async fn load(
    server: &TestServer,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let mut client = server.client().await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let user = format!("user-{worker}-{n}");
                let answer = client
                    .decide(decide("login", &user, "laptop", PUBLIC_IP, 1))
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        let ids = r.reasons.iter().map(|x| x.policy_id.clone()).collect();
                        (r.policy_version, r.outcome, ids)
                    })
                    .map_err(|status| status.code());
                seen.push(answer);
            }
            seen
        }));
    }
    tasks
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<Vec<Seen>>>) -> Vec<Vec<Seen>> {
    let mut all = Vec::new();
    for task in tasks {
        all.push(task.await.expect("load task"));
    }
    all
}

/// A Decide that must succeed.
async fn ask(
    client: &mut DecisionServiceClient<Channel>,
    journey: &str,
    user: &str,
    device: &str,
    ip: &str,
    aal: u32,
) -> DecideResponse {
    client
        .decide(decide(journey, user, device, ip, aal))
        .await
        .expect("decide")
        .into_inner()
}

/// Polls `done` every 20 ms for up to 10 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done(), "timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_switches_versions_without_a_failed_request() {
    let dir = bundled_policies_with(&[]);
    let (server, _watchers) = watched(dir.path(), None).await;
    let old = server.engine.policies().version().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&server, stop.clone()).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(dir.path().join("lockdown.cedar"), LOCKDOWN).expect("write");
    until("the new version", || {
        server.engine.policies().version() != old
    })
    .await;
    let new = server.engine.policies().version().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = finish(tasks).await;

    let versions: BTreeSet<&str> = seen
        .iter()
        .flatten()
        .map(|answer| answer.as_ref().expect("no request fails").0.as_str())
        .collect();
    assert_eq!(versions, BTreeSet::from([old.as_str(), new.as_str()]));
    for answer in seen.iter().flatten() {
        let (version, outcome, ids) = answer.as_ref().expect("no request fails");
        let lockdown = *outcome == Outcome::Deny as i32 && ids == &["lockdown".to_owned()];
        // Each answer is wholly one version's: the new one denies every
        // sign-in with the lockdown reason, the old one never does.
        assert_eq!(lockdown, *version == new, "{answer:?}");
    }
    for worker in &seen {
        let last = worker.last().expect("answers").as_ref().expect("ok");
        assert_eq!(last.0, new, "every client ends on the new version");
    }
    let metrics = server.engine.metrics();
    assert_eq!(metrics.reloads(PolicyRole::Live, ReloadResult::Applied), 1);
    // The load repeats one context, so most answers on both sides of the
    // switch came from the policy cache, and none outlived its version
    // (checked above: every answer is wholly its version's).
    let hits = metrics.policy_cache_count(CacheResult::Hit);
    let misses = metrics.policy_cache_count(CacheResult::Miss);
    assert!(hits > misses, "{hits} hits, {misses} misses");
    assert!(misses >= 2, "one miss per version at least: {misses}");
    assert_eq!(metrics.reloads(PolicyRole::Live, ReloadResult::Refused), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_policy_file_under_load_is_refused_and_the_old_version_keeps_answering() {
    let dir = bundled_policies_with(&[]);
    let (server, _watchers) = watched(dir.path(), None).await;
    let old = server.engine.policies().version().to_owned();
    let metrics = server.engine.metrics().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&server, stop.clone()).await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(
        dir.path().join("broken.cedar"),
        "@id(\"broken\") @reason(\"oops\")\nforbid (principal, action, resource) when { context.device.nonexistent };\n",
    )
    .expect("write");
    until("the refusal", || {
        metrics.reloads(PolicyRole::Live, ReloadResult::Refused) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = finish(tasks).await;

    assert!(seen.iter().all(|worker| !worker.is_empty()));
    for answer in seen.iter().flatten() {
        let (version, outcome, _) = answer.as_ref().expect("no request fails");
        assert_eq!(version, &old);
        assert_eq!(
            *outcome,
            Outcome::StepUp as i32,
            "a new device still steps up"
        );
    }
    assert_eq!(server.engine.policies().version(), old);
    assert_eq!(metrics.reloads(PolicyRole::Live, ReloadResult::Applied), 0);

    // Taking the broken file away again validates, as the version serving.
    std::fs::remove_file(dir.path().join("broken.cedar")).expect("remove");
    until("the unchanged reload", || {
        metrics.reloads(PolicyRole::Live, ReloadResult::Unchanged) == 1
    })
    .await;
    assert_eq!(server.engine.policies().version(), old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_in_pieces_is_read_once_it_is_whole() {
    let dir = bundled_policies_with(&[]);
    // Ten times the gap between the writes below.
    let (server, _watchers) = watched_with(dir.path(), None, 400).await;
    let old = server.engine.policies().version().to_owned();
    let path = dir.path().join("lockdown.cedar");
    // An editor or a checkout writing the file in three steps, each within
    // the debounce of the last; the first two are not valid Cedar.
    let cut = [0, 20, 50, LOCKDOWN.len()];
    for pair in cut.windows(2) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut file, &LOCKDOWN.as_bytes()[pair[0]..pair[1]])
            .expect("write");
        drop(file);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let metrics = server.engine.metrics().clone();
    until("the reload", || {
        metrics.reloads(PolicyRole::Live, ReloadResult::Applied) == 1
    })
    .await;
    assert_ne!(server.engine.policies().version(), old);
    assert_eq!(metrics.reloads(PolicyRole::Live, ReloadResult::Refused), 0);
}

#[tokio::test]
async fn shadow_divergence_is_counted_where_the_sets_differ_and_not_where_they_agree() {
    let live = bundled_policies_with(&[]);
    let shadow = bundled_policies_with(&[(
        "candidate.cedar",
        r#"@id("candidate-no-new-devices")
@reason("sign-in from a new device is refused outright")
forbid (principal, action == Action::"login", resource)
when { !context.device.known };
"#,
    )]);
    let (server, _watchers) = watched(live.path(), Some(shadow.path())).await;
    let metrics = server.engine.metrics().clone();
    let mut client = server.client().await;

    // Known device: both sets allow.
    sign_in(&mut client, "alice", "laptop", PUBLIC_IP).await;
    let agreed = ask(&mut client, "login", "alice", "laptop", PUBLIC_IP, 1).await;
    assert_eq!(agreed.outcome, Outcome::Allow as i32);
    assert_eq!(metrics.shadow_divergences_total(), 0);

    // New device: live steps up, the shadow would deny; the answer is the
    // live one.
    let differed = ask(&mut client, "login", "alice", "phone", PUBLIC_IP, 1).await;
    assert_eq!(differed.outcome, Outcome::StepUp as i32);
    assert_eq!(differed.required_aal, 2);
    assert_eq!(differed.policy_version, server.engine.policies().version());
    assert_eq!(
        metrics.shadow_divergences(
            "login",
            DomainOutcome::StepUp(stepgate::decision::Aal::Two),
            DomainOutcome::Deny
        ),
        1
    );
    assert_eq!(metrics.shadow_divergences_total(), 1);
    assert!(
        metrics
            .render()
            .contains(r#"stepgate_shadow_divergences_total{journey="login",live="step_up_aal2",shadow="deny"} 1"#),
        "{}",
        metrics.render()
    );

    // A payment that both sets treat alike is not counted either.
    let before = metrics.shadow_divergences_total();
    let payment = ask(&mut client, "payment", "alice", "laptop", PUBLIC_IP, 2).await;
    assert_eq!(payment.outcome, Outcome::Allow as i32);
    assert_eq!(metrics.shadow_divergences_total(), before);

    // Reloading the shadow set with the candidate withdrawn ends the
    // divergence.
    std::fs::remove_file(shadow.path().join("candidate.cedar")).expect("remove");
    until("the shadow reload", || {
        metrics.reloads(PolicyRole::Shadow, ReloadResult::Applied) == 1
    })
    .await;
    ask(&mut client, "login", "alice", "tablet", PUBLIC_IP, 1).await;
    assert_eq!(metrics.shadow_divergences_total(), 1);
    assert_eq!(metrics.reloads(PolicyRole::Live, ReloadResult::Applied), 0);
}

#[tokio::test]
async fn a_shadow_set_that_cannot_answer_is_counted_and_the_live_answer_stands() {
    let live = bundled_policies_with(&[]);
    // A candidate without the payment journey: its catalog and schema both
    // drop it.
    let shadow = bundled_policies_with(&[]);
    let edit = |name: &str, from: &str, to: &str| {
        let path = shadow.path().join(name);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{name} holds `{from}`");
        std::fs::write(&path, text.replace(from, to)).expect("write");
    };
    edit(
        "schema.cedarschema",
        "action payment, change_payout",
        "action change_payout",
    );
    edit(
        "journeys.toml",
        "[journeys.payment]\ntier = \"high\"\ndescription = \"sending money\"\n",
        "",
    );
    edit(
        "freshness.cedar",
        "@id(\"payment-recent-authentication\")\n\
         @reason(\"a payment needs an authentication from the last hour\")\n\
         @max_age(\"1h\")\n\
         forbid (principal, action == Action::\"payment\", resource);",
        "",
    );
    let (server, _watchers) = watched(live.path(), Some(shadow.path())).await;
    let metrics = server.engine.metrics().clone();
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", PUBLIC_IP).await;

    let answer = ask(&mut client, "payment", "alice", "laptop", PUBLIC_IP, 1).await;
    assert_eq!(answer.outcome, Outcome::StepUp as i32);
    assert_eq!(answer.required_aal, 2);
    assert_eq!(metrics.shadow_errors("payment"), 1);
    assert_eq!(metrics.shadow_divergences_total(), 0);
}

#[tokio::test]
async fn a_shadow_catalog_that_raises_a_tier_is_judged_with_its_own_tier() {
    let live = bundled_policies_with(&[]);
    let shadow = bundled_policies_with(&[]);
    let catalog = shadow.path().join("journeys.toml");
    let text = std::fs::read_to_string(&catalog).expect("read");
    let raised = text.replace(
        "[journeys.signup]\ntier = \"low\"",
        "[journeys.signup]\ntier = \"high\"",
    );
    assert_ne!(raised, text);
    std::fs::write(&catalog, raised).expect("write");
    let (server, _watchers) = watched(live.path(), Some(shadow.path())).await;
    let metrics = server.engine.metrics().clone();
    let mut client = server.client().await;

    let answer = ask(&mut client, "signup", "newcomer", "laptop", PUBLIC_IP, 1).await;
    assert_eq!(answer.outcome, Outcome::Allow as i32, "a low-tier sign-up");
    // As a high-tier journey the candidate asks for AAL3 (new device).
    assert_eq!(
        metrics.shadow_divergences(
            "signup",
            DomainOutcome::Allow,
            DomainOutcome::StepUp(stepgate::decision::Aal::Three)
        ),
        1,
        "{}",
        metrics.render()
    );
}

#[tokio::test]
async fn a_change_that_leaves_a_journey_without_any_permit_is_refused() {
    let dir = bundled_policies_with(&[]);
    let (server, _watchers) = watched(dir.path(), None).await;
    let old = server.engine.policies().version().to_owned();
    let metrics = server.engine.metrics().clone();
    // Valid Cedar, but the file holding the only permit was emptied, as a
    // truncated save would leave it.
    std::fs::write(dir.path().join("base.cedar"), "// nothing here yet\n").expect("write");
    until("the refusal", || {
        metrics.reloads(PolicyRole::Live, ReloadResult::Refused) == 1
    })
    .await;
    assert_eq!(server.engine.policies().version(), old);
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", PUBLIC_IP).await;
    let answer = ask(&mut client, "login", "alice", "laptop", PUBLIC_IP, 1).await;
    assert_eq!(answer.outcome, Outcome::Allow as i32);
    assert_eq!(answer.policy_version, old);
}

/// `request` for `user`'s account in `tenant`.
fn in_tenant(
    mut request: stepgate::server::proto::DecideRequest,
    tenant: &str,
) -> stepgate::server::proto::DecideRequest {
    if let Some(subject) = request.subject.as_mut() {
        subject.tenant = tenant.into();
    }
    request
}

const ACME_PAYMENTS: &str = r#"@id("acme-payments-need-aal3")
@reason("acme asks AAL3 for every payment")
forbid (principal, action == Action::"payment", resource)
unless { context.authn.aal >= 3 };
"#;

#[tokio::test]
async fn tenant_rules_apply_to_their_tenant_only_and_a_broken_tenant_file_keeps_every_tenant_serving()
 {
    let dir = bundled_policies_with(&[]);
    let acme = dir.path().join("tenants/acme");
    std::fs::create_dir_all(&acme).expect("dir");
    std::fs::write(acme.join("payments.cedar"), ACME_PAYMENTS).expect("write");
    let (server, _watchers) = watched(dir.path(), None).await;
    let metrics = server.engine.metrics().clone();
    let mut client = server.client().await;
    let asker = client.clone();
    let ask = |tenant: &'static str, journey: &'static str, aal: u32| {
        let request = in_tenant(decide(journey, "alice", "laptop", PUBLIC_IP, aal), tenant);
        let mut client = asker.clone();
        async move { client.decide(request).await.expect("answer").into_inner() }
    };
    let seen = |answer: &DecideResponse| {
        let reasons: Vec<String> = answer.reasons.iter().map(|r| r.policy_id.clone()).collect();
        (answer.outcome, answer.required_aal, reasons)
    };

    // The same user id in two tenants shares nothing: a device learned in
    // acme is new in globex.
    let mut signed = crate::harness::report(
        "login",
        "alice",
        "laptop",
        PUBLIC_IP,
        stepgate::server::proto::Event::AuthSucceeded,
    );
    signed.reached_aal = 2;
    signed.subject = Some(stepgate::server::proto::Subject {
        user_id: "alice".into(),
        tenant: "acme".into(),
    });
    crate::harness::send(&mut client, signed).await;
    let globex_login = ask("globex", "login", 1).await;
    assert_eq!(
        seen(&globex_login),
        (
            Outcome::StepUp as i32,
            2,
            vec!["login-new-device".to_owned()]
        )
    );
    let acme_login = ask("acme", "login", 1).await;
    assert_eq!(
        seen(&acme_login),
        (Outcome::Allow as i32, 0, vec!["journey-permit".to_owned()])
    );
    sign_in(&mut client, "alice", "laptop", PUBLIC_IP).await;

    // acme's rule applies to acme's payments only.
    let acme_pay = ask("acme", "payment", 2).await;
    assert_eq!(
        seen(&acme_pay),
        (
            Outcome::StepUp as i32,
            3,
            vec!["acme-payments-need-aal3".to_owned()]
        )
    );
    let default_pay = ask("", "payment", 2).await;
    assert_eq!(seen(&default_pay).0, Outcome::Allow as i32);
    assert_ne!(acme_pay.policy_version, default_pay.policy_version);
    assert_eq!(
        default_pay.policy_version,
        server.engine.policies().version()
    );
    let acme_version = acme_pay.policy_version.clone();

    // A broken acme file next to a new rule for the default tenant: acme
    // keeps its last good set, the default tenant's change is taken.
    std::fs::write(acme.join("payments.cedar"), "forbid (principal").expect("break");
    let default = dir.path().join("tenants/default");
    std::fs::create_dir_all(&default).expect("dir");
    std::fs::write(
        default.join("d.cedar"),
        ACME_PAYMENTS.replace("acme", "default"),
    )
    .expect("write");
    until("the tenant change is refused", || {
        metrics.reloads(PolicyRole::Live, ReloadResult::TenantRefused) >= 1
            && server
                .engine
                .policies()
                .tenant_versions()
                .contains_key("default")
    })
    .await;
    let acme_pay = ask("acme", "payment", 2).await;
    assert_eq!(seen(&acme_pay).2, ["acme-payments-need-aal3"]);
    assert_eq!(
        acme_pay.policy_version, acme_version,
        "acme's last good set serves"
    );
    let default_pay = ask("", "payment", 2).await;
    assert_eq!(
        seen(&default_pay),
        (
            Outcome::StepUp as i32,
            3,
            vec!["default-payments-need-aal3".to_owned()]
        )
    );
    let globex_pay = ask("globex", "payment", 2).await;
    assert_eq!(
        seen(&globex_pay),
        (
            Outcome::StepUp as i32,
            3,
            vec!["high-tier-new-device-needs-aal3".to_owned()]
        ),
        "globex knows no device of alice's and has no rules of its own"
    );
    assert!(
        !seen(&globex_pay)
            .2
            .iter()
            .any(|r| r.contains("payments-need-aal3")),
        "{globex_pay:?}"
    );

    // Fixed: acme's new rule serves.
    std::fs::write(
        acme.join("payments.cedar"),
        ACME_PAYMENTS
            .replace(">= 3", ">= 2")
            .replace("AAL3", "AAL2"),
    )
    .expect("fix");
    until("acme's fix is applied", || {
        server
            .engine
            .policies()
            .tenant_versions()
            .get("acme")
            .is_some_and(|v| *v != acme_version)
    })
    .await;
    let acme_pay = ask("acme", "payment", 2).await;
    assert_eq!(seen(&acme_pay).0, Outcome::Allow as i32);
}

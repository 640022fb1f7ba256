//! ForgetUser on the memory store, and who may ask for it: an erased user
//! is a first-time user again, other users and tenants keep their context,
//! the address's distinct-user count forgets them, and only a caller bound
//! to `forget_user` (in every tenant, for an erasure in every tenant) may
//! erase. The Redis side is in `redis.rs`.

use stepgate::config::{CallerConfig, Config};
use stepgate::server::proto::{self, Event, Outcome};
use tonic::Code;

use crate::harness::*;

const IP: &str = "203.0.113.60";

fn in_tenant<T>(mut request: T, tenant: &str, set: impl Fn(&mut T, proto::Subject)) -> T {
    set(
        &mut request,
        proto::Subject {
            user_id: "alice".into(),
            tenant: tenant.into(),
        },
    );
    request
}

#[tokio::test]
async fn an_erased_user_is_a_first_time_user_and_others_keep_their_context() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for tenant in ["", "acme"] {
        let report = in_tenant(
            report("login", "alice", "phone", IP, Event::AuthSucceeded),
            tenant,
            |r, s| r.subject = Some(s),
        );
        let mut report = report;
        report.reached_aal = 2;
        send(&mut client, report).await;
    }
    sign_in(&mut client, "bob", "laptop", IP).await;
    fail(&mut client, "alice", IP, 2).await;
    fail(&mut client, "bob", IP, 1).await;
    let known = ask(&mut client, decide("login", "alice", "phone", IP, 1)).await;
    assert_eq!(seen(&known).outcome, Outcome::Allow);

    let erased = client
        .forget_user(forget("alice", "", false))
        .await
        .expect("erased")
        .into_inner();
    assert_eq!(erased.users_erased, 1);
    let fresh = ask(&mut client, decide("login", "alice", "phone", IP, 1)).await;
    assert_eq!(
        seen(&fresh),
        expect(Outcome::StepUp, 2, &["login-new-device"])
    );
    assert!(
        signal_names(&fresh).contains(&"behaviour.first_sign_in".to_owned()),
        "{:?}",
        signal_names(&fresh)
    );
    let bob = ask(&mut client, decide("login", "bob", "laptop", IP, 1)).await;
    assert_eq!(seen(&bob).outcome, Outcome::Allow, "bob keeps his device");
    let acme = in_tenant(decide("login", "alice", "phone", IP, 1), "acme", |r, s| {
        r.subject = Some(s)
    });
    assert_eq!(
        seen(&ask(&mut client, acme.clone()).await).outcome,
        Outcome::Allow,
        "alice in another tenant is another user"
    );

    let everywhere = client
        .forget_user(forget("alice", "", true))
        .await
        .expect("erased")
        .into_inner();
    assert!(everywhere.users_erased >= 1);
    assert_eq!(
        seen(&ask(&mut client, acme).await).outcome,
        Outcome::StepUp,
        "an erasure in every tenant reaches acme too"
    );
    let nothing = client
        .forget_user(forget("nobody-ever", "", true))
        .await
        .expect("erasing nothing succeeds")
        .into_inner();
    assert_eq!(nothing.users_erased, 0);
}

#[tokio::test]
async fn an_erased_user_leaves_the_addresses_distinct_user_counts() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let stuffing = "198.51.100.90";
    for i in 0..10 {
        fail(&mut client, &format!("victim-{i}"), stuffing, 1).await;
    }
    let before = ask(&mut client, decide("login", "zed", "", stuffing, 1)).await;
    assert!(
        before.reasons.iter().any(|r| r.policy_id == "stuffing-ip"),
        "{:?}",
        before.reasons
    );
    client
        .forget_user(forget("victim-0", "", false))
        .await
        .expect("erased");
    let after = ask(&mut client, decide("login", "zed", "", stuffing, 1)).await;
    assert!(
        !after.reasons.iter().any(|r| r.policy_id == "stuffing-ip"),
        "nine distinct users are below the threshold: {:?}",
        after.reasons
    );
}

#[tokio::test]
async fn forget_user_refuses_bad_subjects_and_changes_nothing() {
    let (server, spy) = TestServer::start_spied().await;
    let mut client = server.client().await;
    let cases = [
        (forget("", "", false), "subject.user_id"),
        (forget("alice", "acme", true), "subject.tenant"),
        (
            proto::ForgetUserRequest {
                subject: None,
                all_tenants: false,
            },
            "subject.user_id",
        ),
    ];
    for (request, field) in cases {
        let status = client.forget_user(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    assert_eq!(spy.calls(), (0, 0), "a refused erasure touches nothing");
    let http = post_json(
        &server,
        "/v1/forget-user",
        &serde_json::json!({"subject": {"userId": "alice", "tenant": "acme"}, "allTenants": true}),
    )
    .await;
    let said = String::from_utf8_lossy(&http.body);
    assert_eq!(http.status, 400, "{said}");
    assert!(said.contains("subject.tenant"), "{said}");
    let done = post_json(
        &server,
        "/v1/forget-user",
        &serde_json::json!({"subject": {"userId": "alice"}}),
    )
    .await;
    assert_eq!(done.status, 200);
    assert_eq!(done.json()["usersErased"], 0);
}

#[tokio::test]
async fn only_callers_bound_to_forget_user_may_erase_and_only_in_their_tenants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = [
        ("idp", "i".repeat(40), vec!["decide", "report_outcome"], "*"),
        ("privacy", "p".repeat(40), vec!["forget_user"], "acme"),
        ("dpo", "d".repeat(40), vec!["forget_user"], "*"),
    ];
    let callers = tokens
        .iter()
        .map(|(name, token, operations, tenant)| {
            let file = dir.path().join(format!("{name}.token"));
            std::fs::write(&file, token).expect("token");
            CallerConfig {
                name: (*name).into(),
                token_file: Some(file),
                spiffe_id: None,
                dns_name: None,
                operations: operations.iter().map(|o| (*o).to_owned()).collect(),
                journeys: vec!["*".into()],
                tenants: vec![(*tenant).into()],
                rate_per_second: None,
                burst: None,
            }
        })
        .collect();
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        callers,
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    let by = |caller: usize, request: proto::ForgetUserRequest| {
        let mut request = tonic::Request::new(request);
        let token = tokens.get(caller).map(|t| t.1.clone()).unwrap_or_default();
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        request
    };
    let idp = client
        .forget_user(by(0, forget("alice", "acme", false)))
        .await
        .expect_err("the IdP may not erase");
    assert_eq!(idp.code(), Code::PermissionDenied, "{idp:?}");
    assert!(idp.message().contains("forget_user"), "{idp:?}");
    client
        .forget_user(by(1, forget("alice", "acme", false)))
        .await
        .expect("privacy may erase in acme");
    for outside in [forget("alice", "globex", false), forget("alice", "", true)] {
        let refused = client
            .forget_user(by(1, outside))
            .await
            .expect_err("outside its tenants");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    client
        .forget_user(by(2, forget("alice", "", true)))
        .await
        .expect("a caller scoped to every tenant may erase everywhere");
    let anonymous = client
        .forget_user(forget("alice", "acme", false))
        .await
        .expect_err("no credential");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

//! Every door, one core: the same questions through gRPC Decide, HTTP
//! `/v1/decide`, AuthZEN and Envoy ext_authz get the same outcome, level,
//! reasons and policy version.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use serde_json::{Value, json};
use stepgate::config::{ClientConfig, Config, GatewayConfig, IpListConfig, RouteConfig};
use stepgate::loadtest::doors::envoy_check;
use stepgate::server::proto::Outcome;

use crate::harness::*;

const HOME: &str = "81.2.69.142";
const LISTED: &str = "6.6.6.6";

/// What every door lets a caller see of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Said {
    outcome: &'static str,
    level: u32,
    /// Sorted; `None` where a door does not say (ext_authz on an allow).
    reasons: Option<Vec<String>>,
    version: Option<String>,
}

struct Question {
    journey: &'static str,
    device: &'static str,
    ip: &'static str,
    aal: u32,
}

fn sorted(mut ids: Vec<String>) -> Option<Vec<String>> {
    ids.sort();
    Some(ids)
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r[key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn via_grpc(server: &TestServer, q: &Question) -> Said {
    let mut client = server.client().await;
    let answer = ask(
        &mut client,
        decide(q.journey, "alice", q.device, q.ip, q.aal),
    )
    .await;
    let outcome = match Outcome::try_from(answer.outcome).expect("outcome") {
        Outcome::Allow => "allow",
        Outcome::StepUp => "step_up",
        _ => "deny",
    };
    Said {
        outcome,
        level: answer.required_aal,
        reasons: sorted(answer.reasons.iter().map(|r| r.policy_id.clone()).collect()),
        version: Some(answer.policy_version),
    }
}

async fn via_http(server: &TestServer, q: &Question) -> Said {
    let request = json!({
        "journey": q.journey,
        "subject": {"userId": "alice"},
        "authn": {"aal": q.aal},
        "device": {"id": q.device},
        "network": {"ip": q.ip},
    });
    let answer = post_json(server, "/v1/decide", &request).await.json();
    let field = |key: &str| answer.get(key).cloned().unwrap_or(Value::Null);
    let outcome = match field("outcome").as_str() {
        Some("OUTCOME_ALLOW") => "allow",
        Some("OUTCOME_STEP_UP") => "step_up",
        _ => "deny",
    };
    Said {
        outcome,
        level: u32::try_from(field("requiredAal").as_u64().unwrap_or(0)).unwrap_or(0),
        reasons: sorted(ids(&field("reasons"), "policyId")),
        version: field("policyVersion").as_str().map(str::to_owned),
    }
}

async fn via_authzen(server: &TestServer, q: &Question) -> Said {
    let request = json!({
        "subject": {"type": "user", "id": "alice", "properties": {"device_id": q.device, "ip": q.ip, "aal": q.aal}},
        "resource": {"type": "tenant", "id": "default"},
        "action": {"name": q.journey},
    });
    let answer = post_json(server, "/access/v1/evaluation", &request)
        .await
        .json();
    let context = answer.get("context").cloned().unwrap_or(Value::Null);
    let get = |key: &str| context.get(key).cloned().unwrap_or(Value::Null);
    let outcome = match (
        answer.get("decision").and_then(Value::as_bool),
        get("outcome").as_str(),
    ) {
        (Some(true), _) => "allow",
        (_, Some("step_up")) => "step_up",
        _ => "deny",
    };
    Said {
        outcome,
        level: u32::try_from(get("required_aal").as_u64().unwrap_or(0)).unwrap_or(0),
        // An allow carries no reasons: the permits are not the PEP's
        // business (and may make it reject the decision).
        reasons: (outcome != "allow")
            .then(|| ids(&get("reasons"), "id"))
            .and_then(sorted),
        version: get("policy_version").as_str().map(str::to_owned),
    }
}

async fn via_ext_authz(server: &TestServer, q: &Question) -> Said {
    let acr = format!("http://idmanagement.gov/ns/assurance/aal/{}", q.aal.max(1));
    let claims = json!({"sub": "alice", "acr": acr});
    let headers = [("x-forwarded-for", q.ip), ("x-device-id", q.device)];
    let path = format!("/{}", q.journey);
    let request = envoy_check("POST", &path, &headers, "10.0.0.5", Some(&claims));
    let mut client = AuthorizationClient::new(server.channel().await);
    let response = client.check(request).await.expect("check").into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => Said {
            outcome: "allow",
            level: 0,
            reasons: None,
            version: None,
        },
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: Value = serde_json::from_str(&denied.body).expect("JSON body");
            let field = |key: &str| body.get(key).cloned().unwrap_or(Value::Null);
            Said {
                outcome: if field("outcome") == "step_up" {
                    "step_up"
                } else {
                    "deny"
                },
                level: u32::try_from(field("required_aal").as_u64().unwrap_or(0)).unwrap_or(0),
                reasons: sorted(ids(&field("reasons"), "policy_id")),
                version: field("policy_version").as_str().map(str::to_owned),
            }
        }
        other => unreachable!("{other:?}"),
    }
}

/// Where two doors' answers may differ only in what a door does not say.
fn agree(expected: &Said, got: &Said) -> bool {
    expected.outcome == got.outcome
        && expected.level == got.level
        && got
            .reasons
            .as_ref()
            .is_none_or(|r| Some(r) == expected.reasons.as_ref())
        && got
            .version
            .as_ref()
            .is_none_or(|v| Some(v) == expected.version.as_ref())
}

#[tokio::test]
async fn every_door_gives_the_same_answer_to_the_same_question() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("deny.txt");
    std::fs::write(&list, format!("{LISTED}\n")).expect("deny list");
    let routes = ["login", "payment", "signup", "change_payout"]
        .into_iter()
        .map(|journey| RouteConfig {
            methods: Vec::new(),
            path: Some(format!("/{journey}")),
            prefix: None,
            template: None,
            journey: journey.into(),
            attributes: BTreeMap::new(),
        })
        .collect();
    let server = TestServer::start_with(Config {
        policies_dir: bundled_policies(),
        ip_lists: IpListConfig { deny: vec![list] },
        gateway: GatewayConfig {
            routes,
            client: ClientConfig {
                trusted_hops: 1,
                device_header: "x-device-id".into(),
                ..ClientConfig::default()
            },
            ..GatewayConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", HOME).await;
    let questions = [
        Question {
            journey: "login",
            device: "laptop",
            ip: HOME,
            aal: 1,
        },
        Question {
            journey: "login",
            device: "phone",
            ip: HOME,
            aal: 1,
        },
        Question {
            journey: "payment",
            device: "laptop",
            ip: HOME,
            aal: 1,
        },
        Question {
            journey: "payment",
            device: "kiosk",
            ip: HOME,
            aal: 1,
        },
        Question {
            journey: "payment",
            device: "kiosk",
            ip: HOME,
            aal: 2,
        },
        Question {
            journey: "change_payout",
            device: "laptop",
            ip: HOME,
            aal: 3,
        },
        Question {
            journey: "login",
            device: "laptop",
            ip: LISTED,
            aal: 3,
        },
        Question {
            journey: "signup",
            device: "laptop",
            ip: HOME,
            aal: 1,
        },
    ];
    let mut outcomes = std::collections::BTreeSet::new();
    for q in &questions {
        let grpc = via_grpc(&server, q).await;
        outcomes.insert(grpc.outcome);
        for (door, said) in [
            ("http", via_http(&server, q).await),
            ("authzen", via_authzen(&server, q).await),
            ("ext_authz", via_ext_authz(&server, q).await),
        ] {
            assert!(
                agree(&grpc, &said),
                "{} from {} at AAL{} via {door}: gRPC said {grpc:?}, {door} said {said:?}",
                q.journey,
                q.device,
                q.aal
            );
        }
    }
    assert_eq!(
        outcomes.len(),
        3,
        "the table covers allow, step-up and deny"
    );
}

//! Every door, one core: the same questions through gRPC Decide, HTTP
//! `/v1/decide`, AuthZEN and Envoy ext_authz get the same outcome, level,
//! reasons and policy version.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use serde_json::{Value, json};
use stepgate::config::{
    AttributeSource, AttributeType, ClientConfig, Config, GatewayConfig, IpListConfig,
    RouteAttribute, RouteConfig,
};
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
    /// (policy id, message), sorted; `None` only where a door says nothing
    /// beyond the outcome (a gateway's allow).
    reasons: Option<Vec<(String, String)>>,
    /// `None` only where a door says nothing beyond the outcome.
    version: Option<String>,
    /// A step-up's `max_age` (seconds), as the door carries it.
    max_age: Option<u64>,
}

struct Question {
    journey: &'static str,
    device: &'static str,
    ip: &'static str,
    /// 0: the caller says nothing of the level.
    aal: u32,
    /// A payment's amount, in minor units.
    amount: Option<i64>,
    /// AuthZEN names the level by its acr value instead of `aal`.
    by_acr: bool,
    /// How long ago the user authenticated, in seconds; `None`: unsaid.
    auth_age: Option<i64>,
}

impl Question {
    /// `auth_time`, Unix seconds; 0 when unsaid.
    fn auth_time(&self) -> i64 {
        self.auth_age.map_or(0, |age| unix_now() - age)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Sets member `key` of a JSON object.
fn set(object: &mut Value, key: &str, value: Value) {
    if let Some(members) = object.as_object_mut() {
        members.insert(key.to_owned(), value);
    }
}

fn acr(aal: u32) -> String {
    format!("http://idmanagement.gov/ns/assurance/aal/{aal}")
}

fn reasons(list: &Value, key: &str) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = list
        .as_array()?
        .iter()
        .map(|r| {
            (
                r[key].as_str().unwrap_or("?").to_owned(),
                r["message"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    out.sort();
    Some(out)
}

async fn via_grpc(server: &TestServer, q: &Question) -> Said {
    let mut client = server.client().await;
    let mut request = decide(q.journey, "alice", q.device, q.ip, q.aal);
    if let Some(authn) = request.authn.as_mut() {
        authn.amr.clear();
        authn.auth_time = q.auth_time();
    }
    request.attributes = q.amount.map(|amount| prost_types::Struct {
        fields: [(
            "amount".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(amount as f64)),
            },
        )]
        .into_iter()
        .collect(),
    });
    let answer = ask(&mut client, request).await;
    let outcome = match Outcome::try_from(answer.outcome).expect("outcome") {
        Outcome::Allow => "allow",
        Outcome::StepUp => "step_up",
        _ => "deny",
    };
    let mut listed: Vec<(String, String)> = answer
        .reasons
        .iter()
        .map(|r| (r.policy_id.clone(), r.message.clone()))
        .collect();
    listed.sort();
    Said {
        outcome,
        level: answer.required_aal,
        reasons: Some(listed),
        version: Some(answer.policy_version),
        max_age: answer.max_age.map(u64::from),
    }
}

async fn via_http(server: &TestServer, q: &Question) -> Said {
    let mut request = json!({
        "journey": q.journey,
        "subject": {"userId": "alice"},
        "authn": {"aal": q.aal, "authTime": q.auth_time()},
        "device": {"id": q.device},
        "network": {"ip": q.ip},
    });
    if let Some(amount) = q.amount {
        set(&mut request, "attributes", json!({"amount": amount}));
    }
    let answer = post_json(server, "/v1/decide", &request).await.json();
    let field = |key: &str| answer.get(key).cloned().unwrap_or(Value::Null);
    let outcome = match field("outcome").as_str() {
        Some("OUTCOME_ALLOW") => "allow",
        Some("OUTCOME_STEP_UP") => "step_up",
        _ => "deny",
    };
    Said {
        outcome,
        level: u32::try_from(field("requiredAal").as_u64().unwrap_or(99)).unwrap_or(99),
        reasons: reasons(&field("reasons"), "policyId"),
        version: field("policyVersion").as_str().map(str::to_owned),
        max_age: field("maxAge").as_u64(),
    }
}

async fn via_authzen(server: &TestServer, q: &Question) -> Said {
    let mut properties = json!({"device_id": q.device, "ip": q.ip});
    if q.auth_age.is_some() {
        set(&mut properties, "auth_time", json!(q.auth_time()));
    }
    match (q.aal, q.by_acr) {
        (0, _) => {}
        (aal, true) => set(&mut properties, "acr", json!(acr(aal))),
        (aal, false) => set(&mut properties, "aal", json!(aal)),
    }
    let mut request = json!({
        "subject": {"type": "user", "id": "alice", "properties": properties},
        "resource": {"type": "tenant", "id": "default"},
        "action": {"name": q.journey},
    });
    if let Some(amount) = q.amount {
        set(&mut request, "context", json!({"amount": amount}));
    }
    let answer = post_json(server, "/access/v1/evaluation", &request)
        .await
        .json();
    let context = answer.get("context").cloned().unwrap_or(Value::Null);
    let get = |key: &str| context.get(key).cloned().unwrap_or(Value::Null);
    // A step-up's obligation names the same age as the summary.
    if let Some(obligation) = get("obligations").get(0) {
        assert_eq!(
            obligation["properties"]
                .get("max_age")
                .and_then(Value::as_u64),
            get("max_age").as_u64(),
            "{answer}"
        );
    }
    let outcome = match (
        answer.get("decision").and_then(Value::as_bool),
        get("outcome").as_str(),
    ) {
        (Some(true), Some("allow")) => "allow",
        (Some(false), Some("step_up")) => "step_up",
        (Some(false), Some("deny")) => "deny",
        other => unreachable!("an AuthZEN answer that says two things: {other:?} in {answer}"),
    };
    Said {
        outcome,
        level: u32::try_from(get("required_aal").as_u64().unwrap_or(99)).unwrap_or(99),
        reasons: reasons(&get("reasons"), "policy_id"),
        version: get("policy_version").as_str().map(str::to_owned),
        max_age: get("max_age").as_u64(),
    }
}

async fn via_ext_authz(server: &TestServer, q: &Question) -> Said {
    let mut claims = json!({"sub": "alice"});
    if q.aal > 0 {
        set(&mut claims, "acr", json!(acr(q.aal)));
    }
    if q.auth_age.is_some() {
        set(&mut claims, "auth_time", json!(q.auth_time()));
    }
    let headers = [("x-forwarded-for", q.ip), ("x-device-id", q.device)];
    let path = match q.amount {
        Some(amount) => format!("/{}?amount={amount}", q.journey),
        None => format!("/{}", q.journey),
    };
    let request = envoy_check("POST", &path, &headers, "10.0.0.5", Some(&claims));
    let mut client = AuthorizationClient::new(server.channel().await);
    let response = client.check(request).await.expect("check").into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => Said {
            outcome: "allow",
            level: 0,
            reasons: None,
            version: None,
            max_age: None,
        },
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body: Value = serde_json::from_str(&denied.body).expect("JSON body");
            let field = |key: &str| body.get(key).cloned().unwrap_or(Value::Null);
            // The RFC 9470 challenge says the same age as the body.
            let challenge = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key.eq_ignore_ascii_case("www-authenticate"))
                .map(|h| h.value.clone())
                .unwrap_or_default();
            let in_challenge = challenge
                .split(", ")
                .find_map(|part| part.strip_prefix("max_age=\""))
                .and_then(|rest| rest.trim_end_matches('"').parse::<u64>().ok());
            assert_eq!(
                in_challenge,
                field("max_age").as_u64(),
                "challenge {challenge:?} and body {body}"
            );
            Said {
                outcome: match field("outcome").as_str() {
                    Some("step_up") => "step_up",
                    Some("deny") => "deny",
                    _ => unreachable!("a denied response that is no decision: {body}"),
                },
                level: u32::try_from(field("required_aal").as_u64().unwrap_or(99)).unwrap_or(99),
                reasons: reasons(&field("reasons"), "policy_id"),
                version: field("policy_version").as_str().map(str::to_owned),
                max_age: field("max_age").as_u64(),
            }
        }
        other => unreachable!("{other:?}"),
    }
}

/// Two doors agree when they say the same; a gateway's allow says only
/// the outcome (and carries the decision id to the upstream).
fn agree(expected: &Said, got: &Said, door: &str) -> bool {
    let silent = door == "ext_authz" && got.outcome == "allow";
    expected.outcome == got.outcome
        && expected.level == got.level
        && expected.max_age == got.max_age
        && (silent || (got.reasons == expected.reasons && got.version == expected.version))
        && expected.version.as_ref().is_some_and(|v| !v.is_empty())
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
            attributes: if journey == "payment" {
                BTreeMap::from([(
                    "amount".to_owned(),
                    RouteAttribute {
                        from: AttributeSource::Query,
                        name: "amount".into(),
                        kind: AttributeType::Long,
                    },
                )])
            } else {
                BTreeMap::new()
            },
        })
        .collect();
    let policies = bundled_policies_with(&[LARGE_PAYMENT_POLICY]);
    let server = TestServer::start_with(Config {
        policies_dir: policies.path().to_owned(),
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
    let q = |journey, device, ip, aal| Question {
        journey,
        device,
        ip,
        aal,
        amount: None,
        by_acr: false,
        auth_age: None,
    };
    let questions = [
        q("login", "laptop", HOME, 1),
        q("login", "phone", HOME, 1),
        // Nothing said of the level.
        q("login", "phone", HOME, 0),
        q("payment", "laptop", HOME, 1),
        q("payment", "kiosk", HOME, 1),
        q("payment", "kiosk", HOME, 2),
        Question {
            by_acr: true,
            ..q("payment", "kiosk", HOME, 2)
        },
        // An attribute read from the request: a large payment needs AAL3.
        Question {
            amount: Some(5_000_000),
            ..q("payment", "laptop", HOME, 2)
        },
        Question {
            amount: Some(5_000_000),
            by_acr: true,
            ..q("payment", "laptop", HOME, 3)
        },
        Question {
            amount: Some(1_500),
            ..q("payment", "laptop", HOME, 2)
        },
        // Freshness: a three-day-old AAL2 authenticates again at AAL2
        // within 15 minutes; a ten-minute-old one passes; unknown age is
        // stale.
        Question {
            auth_age: Some(3 * 86_400),
            ..q("change_payout", "laptop", HOME, 2)
        },
        Question {
            auth_age: Some(3 * 86_400),
            by_acr: true,
            ..q("change_payout", "laptop", HOME, 2)
        },
        Question {
            auth_age: Some(600),
            ..q("change_payout", "laptop", HOME, 2)
        },
        q("change_payout", "laptop", HOME, 3),
        q("login", "laptop", LISTED, 3),
        q("signup", "laptop", HOME, 1),
    ];
    let mut outcomes = std::collections::BTreeSet::new();
    let mut ages = std::collections::BTreeSet::new();
    for q in &questions {
        let grpc = via_grpc(&server, q).await;
        outcomes.insert(grpc.outcome);
        ages.insert((
            q.journey,
            q.auth_age,
            grpc.outcome,
            grpc.level,
            grpc.max_age,
        ));
        for (door, said) in [
            ("http", via_http(&server, q).await),
            ("authzen", via_authzen(&server, q).await),
            ("ext_authz", via_ext_authz(&server, q).await),
        ] {
            assert!(
                agree(&grpc, &said, door),
                "{} from {} at AAL{} (amount {:?}) via {door}: gRPC said {grpc:?}, {door} said {said:?}",
                q.journey,
                q.device,
                q.aal,
                q.amount
            );
        }
    }
    assert_eq!(
        outcomes.len(),
        3,
        "the table covers allow, step-up and deny"
    );
    for freshness in [
        ("change_payout", Some(3 * 86_400), "step_up", 2, Some(900)),
        ("change_payout", Some(600), "allow", 0, None),
        ("change_payout", None, "step_up", 3, Some(900)),
    ] {
        assert!(ages.contains(&freshness), "{freshness:?} in {ages:?}");
    }
}

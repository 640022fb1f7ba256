//! The HTTP doors over a real HTTP/1.1 connection: the JSON API
//! (`/v1/decide`, `/v1/report-outcome`) and AuthZEN 1.0.

use serde_json::{Value, json};

use crate::harness::*;

const IP: &str = "203.0.113.7";

#[tokio::test]
async fn v1_decide_and_report_speak_the_proto3_json_mapping() {
    let server = TestServer::start().await;
    let reply = post_json(&server, "/v1/decide", &decide_json("alice", "laptop", 1)).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let answer = reply.json();
    assert_eq!(answer["outcome"], "OUTCOME_STEP_UP");
    assert_eq!(answer["requiredAal"], 2);
    assert_eq!(answer["reasons"][0]["policyId"], "login-new-device");
    assert_eq!(answer["requestId"], "req-7");
    assert_eq!(answer["policyVersion"], server.engine.policies().version());
    let decision_id = answer["decisionId"]
        .as_str()
        .expect("decision id")
        .to_owned();

    // The proto field names are accepted too, and the report answers the
    // decision.
    let report = json!({
        "decision_id": decision_id,
        "journey": "login",
        "subject": {"user_id": "alice"},
        "device": {"id": "laptop"},
        "network": {"ip": IP},
        "event": "EVENT_STEP_UP_SUCCEEDED",
    });
    let judged = post_json(&server, "/v1/report-outcome", &report).await;
    assert_eq!(judged.status, 200, "{:?}", judged.body);
    let judged = judged.json();
    assert_eq!(judged["effect"], "REPORT_EFFECT_COMPLETED");
    assert_eq!(judged["decisionFound"], true);
    let again = post_json(&server, "/v1/decide", &decide_json("alice", "laptop", 1)).await;
    assert_eq!(again.json()["outcome"], "OUTCOME_ALLOW");
}

#[tokio::test]
async fn bad_json_requests_are_400_naming_the_problem_and_store_nothing() {
    let (server, spy) = TestServer::start_spied().await;
    let mut bad_ip = decide_json("alice", "laptop", 1);
    bad_ip["network"]["ip"] = json!("300.1.1.1");
    let mut unknown_journey = decide_json("alice", "laptop", 1);
    unknown_journey["journey"] = json!("teleport");
    let mut bad_type = decide_json("alice", "laptop", 1);
    bad_type["authn"]["aal"] = json!("two");
    let huge = json!({"journey": "login", "requestId": "r".repeat(20_000)});
    let mut control = decide_json("alice", "laptop", 1);
    control["requestId"] = json!("a\nb");
    let twice =
        decide_json("alice", "laptop", 1)
            .to_string()
            .replacen("{", r#"{"journey":"payment","#, 1);
    // One field under both of its JSON names, in either order.
    let mut both_names = decide_json("alice", "laptop", 1);
    both_names["subject"]["user_id"] = json!("");
    let mut both_names_reversed = decide_json("alice", "laptop", 1);
    both_names_reversed["authn"]["aal"] = json!(1);
    let both_names_reversed =
        both_names_reversed
            .to_string()
            .replacen(r#""authn":{"#, r#""authn":{"aal":3,"#, 1);
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "a member named twice",
            twice,
            400,
            "malformed_request",
            "member `journey` is given twice",
        ),
        (
            "a field under its proto name and its JSON name",
            both_names.to_string(),
            400,
            "malformed_request",
            "`subject.user_id` is sent twice",
        ),
        (
            "a field under one name twice, the other name absent",
            both_names_reversed,
            400,
            "malformed_request",
            "member `aal` is given twice",
        ),
        (
            "a control character in the request id",
            control.to_string(),
            400,
            "invalid_argument",
            "`request_id`: must not hold control characters",
        ),
        (
            "not JSON",
            "{oops".into(),
            400,
            "malformed_request",
            "`request`: is not a JSON",
        ),
        (
            "trailing garbage",
            format!("{} x", decide_json("a", "b", 1)),
            400,
            "malformed_request",
            "`request`:",
        ),
        (
            "a field of the wrong type",
            bad_type.to_string(),
            400,
            "malformed_request",
            "`request`: is not a JSON `stepgate.v1.DecideRequest`",
        ),
        (
            "an invalid address",
            bad_ip.to_string(),
            400,
            "invalid_argument",
            "`network.ip`: `300.1.1.1`",
        ),
        (
            "an unknown journey",
            unknown_journey.to_string(),
            400,
            "unknown_journey",
            "`teleport`",
        ),
        (
            "a body over the limit",
            huge.to_string(),
            400,
            "request_too_large",
            "16384 bytes",
        ),
    ];
    for (name, body, status, code, message) in cases {
        let reply = http_call(
            &server.http_addr,
            "POST",
            "/v1/decide",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "abc-1"),
            ],
            body,
        )
        .await;
        assert_eq!(reply.status, status, "{name}: {:?}", reply.body);
        let error = reply.json();
        assert_eq!(error["code"], code, "{name}: {error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{name}: {error}"
        );
        assert_eq!(reply.header("x-request-id"), Some("abc-1"), "{name}");
    }
    // Not sent as JSON: a web page could send it without asking first.
    let report = json!({
        "journey": "login", "subject": {"userId": "alice"}, "device": {"id": "laptop"},
        "network": {"ip": IP}, "event": "EVENT_STEP_UP_SUCCEEDED", "reachedAal": 2,
    });
    for (path, body) in [
        ("/v1/decide", decide_json("alice", "laptop", 1)),
        ("/v1/report-outcome", report.clone()),
        ("/v1/hooks/decide", decide_json("alice", "laptop", 1)),
    ] {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let headers: Vec<(&str, &str)> = content_type
                .map(|c| ("content-type", c))
                .into_iter()
                .collect();
            let reply =
                http_call(&server.http_addr, "POST", path, &headers, body.to_string()).await;
            assert_eq!(reply.status, 400, "{path} {content_type:?}");
            assert_eq!(reply.json()["code"], "malformed_request");
            assert!(
                reply.json()["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Content-Type: application/json")),
                "{path}"
            );
        }
    }
    // A failure and a success in one report: neither is believed.
    let twice = r#"{"journey":"login","subject":{"userId":"alice"},"network":{"ip":"203.0.113.7"},"event":"EVENT_AUTH_FAILED","event":"EVENT_AUTH_SUCCEEDED"}"#;
    let reply = http_call(
        &server.http_addr,
        "POST",
        "/v1/report-outcome",
        &[("content-type", "application/json")],
        twice,
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("`event` is given twice"))
    );
    // The level reached under both of its names: which one would count?
    let both = r#"{"journey":"login","subject":{"userId":"alice"},"network":{"ip":"203.0.113.7"},"event":"EVENT_AUTH_SUCCEEDED","reachedAal":2,"reached_aal":1}"#;
    let reply = http_call(
        &server.http_addr,
        "POST",
        "/v1/report-outcome",
        &[("content-type", "application/json")],
        both,
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("`reached_aal` is sent twice")),
        "{}",
        reply.json()
    );
    assert_eq!(spy.calls(), (0, 0), "nothing read or written");
}

#[tokio::test]
async fn every_answer_echoes_the_request_id() {
    let server = TestServer::start().await;
    for (method, path, status) in [
        ("GET", "/nowhere", 404),
        ("GET", "/v1/decide", 405),
        ("GET", "/healthz", 200),
        ("GET", "/.well-known/authzen-configuration", 200),
    ] {
        let reply = http_call(
            &server.http_addr,
            method,
            path,
            &[("x-request-id", "e-1")],
            "",
        )
        .await;
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("x-request-id"), Some("e-1"), "{path}");
        if status >= 400 {
            let code = reply.json()["code"].clone();
            let expected = if status == 404 {
                "not_found"
            } else {
                "method_not_allowed"
            };
            assert_eq!(code, expected, "{path}: a JSON body naming the problem");
        }
    }
}

#[tokio::test]
async fn unknown_fields_are_ignored_like_the_binary_form_ignores_them() {
    let server = TestServer::start().await;
    let mut request = decide_json("alice", "laptop", 3);
    request["futureField"] = json!({"anything": [1, 2]});
    let reply = post_json(&server, "/v1/decide", &request).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["outcome"], "OUTCOME_ALLOW");
}

// ---- AuthZEN 1.0 ----

/// An evaluation request; the subject authenticated
/// [`just_authenticated`] unless `properties` says when.
fn evaluation(user: &str, journey: &str, mut properties: Value) -> Value {
    if let Some(props) = properties.as_object_mut() {
        props
            .entry("auth_time")
            .or_insert_with(|| just_authenticated().into());
    }
    json!({
        "subject": {"type": "user", "id": user, "properties": properties},
        "resource": {"type": "tenant", "id": "default"},
        "action": {"name": journey},
    })
}

#[tokio::test]
async fn authzen_evaluation_answers_allow_step_up_and_deny() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let props = |device: &str, aal: u32| json!({"device_id": device, "ip": IP, "aal": aal});

    let allow = post_json(
        &server,
        "/access/v1/evaluation",
        &evaluation("alice", "login", props("laptop", 1)),
    )
    .await;
    assert_eq!(allow.status, 200);
    let allow = allow.json();
    assert_eq!(allow["decision"], true);
    assert!(allow["context"]["decision_id"].is_string());

    let step_up = post_json(
        &server,
        "/access/v1/evaluation",
        &evaluation("alice", "payment", props("kiosk", 1)),
    )
    .await;
    let step_up = step_up.json();
    assert_eq!(step_up["decision"], false);
    let context = &step_up["context"];
    assert_eq!(
        context["acr_values"],
        "http://idmanagement.gov/ns/assurance/aal/3"
    );
    assert_eq!(context["required_aal"], 3);
    assert_eq!(context["obligations"][0]["type"], "step-up");
    assert_eq!(
        context["obligations"][0]["properties"]["acr_value"],
        "http://idmanagement.gov/ns/assurance/aal/3"
    );
    assert_eq!(
        context["policy_version"],
        server.engine.policies().version()
    );

    // An acr value stands for its level.
    let acr = json!({"device_id": "kiosk", "ip": IP, "acr": "http://idmanagement.gov/ns/assurance/aal/3"});
    let at_three = post_json(
        &server,
        "/access/v1/evaluation",
        &evaluation("alice", "payment", acr),
    )
    .await;
    assert_eq!(at_three.json()["decision"], true);

    for i in 0..10 {
        fail(&mut client, &format!("victim{i}"), "198.51.100.99", 1).await;
    }
    let deny_props = json!({"device_id": "kiosk", "ip": "198.51.100.99", "aal": 3});
    let deny = post_json(
        &server,
        "/access/v1/evaluation",
        &evaluation("alice", "login", deny_props),
    )
    .await;
    assert_eq!(deny.status, 200, "a deny is HTTP 200");
    let deny = deny.json();
    assert_eq!(deny["decision"], false);
    assert_eq!(deny["context"]["reasons"][0]["policy_id"], "stuffing-ip");
    assert!(deny["context"].get("obligations").is_none());
}

#[tokio::test]
async fn authzen_refuses_what_the_spec_requires_with_400_naming_it() {
    let (server, spy) = TestServer::start_spied().await;
    let good = evaluation("alice", "login", json!({"ip": IP}));
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    for (path, name) in [
        ("/subject", "subject"),
        ("/subject/type", "subject.type"),
        ("/subject/id", "subject.id"),
        ("/resource", "resource"),
        ("/resource/id", "resource.id"),
        ("/action/name", "action.name"),
    ] {
        let mut request = good.clone();
        let (parent, key) = path.rsplit_once('/').expect("path");
        if let Some(object) = request
            .pointer_mut(if parent.is_empty() { "" } else { parent })
            .and_then(Value::as_object_mut)
        {
            object.remove(key);
        }
        cases.push((name, request, name));
    }
    let mut bad_acr = good.clone();
    bad_acr["subject"]["properties"]["acr"] = json!("urn:unknown:loa");
    cases.push(("an unknown acr", bad_acr, "subject.properties.acr"));
    let mut bad_ip = good.clone();
    bad_ip["subject"]["properties"]["ip"] = json!("not-an-ip");
    cases.push(("a bad address", bad_ip, "subject.properties.ip"));
    let mut empty_type = good.clone();
    empty_type["subject"]["type"] = json!("");
    cases.push(("an empty subject type", empty_type, "subject.type"));
    let mut empty_id = good.clone();
    empty_id["resource"]["id"] = json!("");
    cases.push(("an empty resource id", empty_id, "resource.id"));
    let mut zero = good.clone();
    zero["subject"]["properties"]["aal"] = json!(0);
    cases.push(("level 0", zero, "subject.properties.aal"));
    let mut disagree = good.clone();
    disagree["subject"]["properties"]["aal"] = json!(2);
    disagree["subject"]["properties"]["acr"] = json!("http://idmanagement.gov/ns/assurance/aal/1");
    cases.push(("aal and acr disagree", disagree, "subject.properties.acr"));
    let mut twice = good.clone();
    twice["subject"]["properties"]["device_id"] = json!("d");
    let twice_text =
        twice
            .to_string()
            .replacen("\"device_id\"", "\"device_id\":\"e\",\"device_id\"", 1);
    let reply = http_call(
        &server.http_addr,
        "POST",
        "/access/v1/evaluation",
        &[("content-type", "application/json")],
        twice_text,
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("`device_id` is given twice")),
        "{:?}",
        reply.body
    );
    for (name, request, field) in cases {
        let reply = post_json(&server, "/access/v1/evaluation", &request).await;
        assert_eq!(reply.status, 400, "{name}: {:?}", reply.body);
        let message = reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(&format!("`{field}`")), "{name}: {message}");
    }
    for (name, body, content_type, code, says) in [
        (
            "not JSON",
            "{".to_owned(),
            "application/json",
            "malformed_request",
            "is not JSON",
        ),
        (
            "not an object",
            "[1,2]".to_owned(),
            "application/json",
            "malformed_request",
            "must be a JSON object",
        ),
        (
            "no JSON content type",
            good.to_string(),
            "text/plain",
            "malformed_request",
            "Content-Type",
        ),
        (
            "a member of the wrong type",
            json!({"subject": "alice", "action": {"name": "login"}}).to_string(),
            "application/json",
            "malformed_request",
            "shape AuthZEN",
        ),
        (
            "a body over the limit",
            json!({"x": "y".repeat(20_000)}).to_string(),
            "application/json",
            "request_too_large",
            "limits.max_request_bytes",
        ),
    ] {
        let reply = http_call(
            &server.http_addr,
            "POST",
            "/access/v1/evaluation",
            &[("content-type", content_type), ("x-request-id", "r-9")],
            body,
        )
        .await;
        assert_eq!(reply.status, 400, "{name}: {:?}", reply.body);
        assert_eq!(reply.header("x-request-id"), Some("r-9"), "{name}");
        let answer = reply.json();
        assert_eq!(answer["code"], code, "{name}");
        assert!(
            answer["message"].as_str().is_some_and(|m| m.contains(says)),
            "{name}: {answer}"
        );
    }
    assert_eq!(spy.calls(), (0, 0), "nothing read or written");
}

#[tokio::test]
async fn authzen_batches_follow_each_evaluations_semantic() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    // login allows, payment at AAL1 steps up, signup of an existing
    // account denies.
    let batch = |semantic: Option<&str>| {
        let mut request = json!({
            "subject": {"type": "user", "id": "alice", "properties": {"device_id": "laptop", "ip": IP}},
            "resource": {"type": "tenant", "id": "default"},
            "evaluations": [
                {"action": {"name": "login"}},
                {"action": {"name": "payment"}},
                {"action": {"name": "login"}},
                {"action": {"name": "signup"}},
            ],
        });
        if let Some(semantic) = semantic {
            request["options"] = json!({"evaluations_semantic": semantic});
        }
        request
    };
    let decisions = |reply: &HttpReply| -> Vec<bool> {
        reply.json()["evaluations"]
            .as_array()
            .expect("evaluations")
            .iter()
            .map(|d| d["decision"].as_bool().expect("decision"))
            .collect()
    };
    for (semantic, expected) in [
        (None, vec![true, false, true, false]),
        (Some("execute_all"), vec![true, false, true, false]),
        (Some("deny_on_first_deny"), vec![true, false]),
        (Some("permit_on_first_permit"), vec![true]),
    ] {
        let reply = post_json(&server, "/access/v1/evaluations", &batch(semantic)).await;
        assert_eq!(reply.status, 200, "{semantic:?}: {:?}", reply.body);
        assert_eq!(decisions(&reply), expected, "{semantic:?}");
    }

    // An item replaces a default whole; an item missing what the spec
    // requires is that item's closed decision, and the rest stand.
    let mixed = json!({
        "subject": {"type": "user", "id": "alice", "properties": {"device_id": "laptop", "ip": IP}},
        "action": {"name": "login"},
        "resource": {"type": "tenant", "id": "default"},
        "evaluations": [
            {"subject": {"type": "user", "id": "bob", "properties": {"device_id": "laptop", "ip": IP}}},
            {"resource": {"type": "tenant"}},
            {},
            {"action": {"name": 5}},
            null,
            {"subject": {"type": "user", "id": "alice", "properties": {"ip": IP, "auth_time": 99_999_999_999_i64}}},
            {"action": null},
            {"subject": null},
        ],
    });
    let reply = post_json(&server, "/access/v1/evaluations", &mixed).await;
    let items = reply.json()["evaluations"]
        .as_array()
        .expect("array")
        .clone();
    assert_eq!(items.len(), 8);
    // Items of the wrong shape, and a rule only the core checks (a time
    // in the future), are each that item's error, named where it sits.
    for (i, names) in [
        (3, "evaluations[3]"),
        (4, "evaluations[4]"),
        (5, "subject.properties.auth_time"),
        (6, "`evaluations[6]`: `action` is null"),
        (7, "`evaluations[7]`: `subject` is null"),
    ] {
        assert_eq!(items[i]["decision"], false, "{i}");
        let error = &items[i]["context"]["error"];
        assert_eq!(error["status"], 400, "{i}");
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains(names)),
            "{i}: {error}"
        );
    }
    assert_eq!(items[0]["decision"], false, "bob's laptop is new to him");
    assert_eq!(
        items[0]["context"]["acr_values"],
        "http://idmanagement.gov/ns/assurance/aal/2"
    );
    assert_eq!(items[1]["decision"], false);
    assert!(
        items[1]["context"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`resource.id`"))
    );
    assert_eq!(items[2]["decision"], true);

    // No evaluations: a single evaluation, answered as one.
    let single = json!({
        "subject": {"type": "user", "id": "alice", "properties": {"device_id": "laptop", "ip": IP}},
        "action": {"name": "login"},
        "resource": {"type": "tenant", "id": "default"},
        "evaluations": [],
    });
    let reply = post_json(&server, "/access/v1/evaluations", &single).await;
    assert_eq!(reply.json()["decision"], true);

    let unknown = json!({"evaluations": [{}], "options": {"evaluations_semantic": "first_wins"}});
    let reply = post_json(&server, "/access/v1/evaluations", &unknown).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("options.evaluations_semantic"))
    );

    // A batch past `limits.max_batch_evaluations` (64) is refused whole:
    // nothing decided, nothing remembered.
    let remembered = server.engine.store().stats().decisions;
    let items: Vec<Value> = (0..65).map(|_| json!({})).collect();
    let mut big = single.clone();
    big["evaluations"] = Value::Array(items);
    let reply = post_json(&server, "/access/v1/evaluations", &big).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("`evaluations`: holds 65 evaluations; at most 64")),
        "{:?}",
        reply.body
    );
    assert_eq!(server.engine.store().stats().decisions, remembered);
    big["evaluations"]
        .as_array_mut()
        .expect("array")
        .truncate(64);
    let reply = post_json(&server, "/access/v1/evaluations", &big).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        server.engine.store().stats().decisions,
        remembered + 64,
        "64 decisions made and remembered"
    );
}

#[tokio::test]
async fn authzen_metadata_names_the_endpoints_and_the_step_up_obligation() {
    let server = TestServer::start().await;
    let reply = http_call(
        &server.http_addr,
        "GET",
        "/.well-known/authzen-configuration",
        &[("x-request-id", "m-1")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), Some("m-1"));
    let metadata = reply.json();
    let base = metadata["policy_decision_point"]
        .as_str()
        .expect("pdp")
        .to_owned();
    assert_eq!(base, server.http_addr);
    assert_eq!(
        metadata["access_evaluation_endpoint"],
        format!("{base}/access/v1/evaluation")
    );
    assert_eq!(
        metadata["access_evaluations_endpoint"],
        format!("{base}/access/v1/evaluations")
    );
    assert_eq!(metadata["obligations_supported"], json!(["step-up"]));
    // What the caller chose is echoed only when it is a plain authority.
    for host in [r#"evil.example"><script>"#, "user@evil.example", "a b"] {
        let reply = http_call(
            &server.http_addr,
            "GET",
            "/.well-known/authzen-configuration",
            &[("host", host)],
            "",
        )
        .await;
        assert_eq!(reply.status, 400, "{host}");
        assert_eq!(reply.json()["code"], "malformed_request", "{host}");
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("evil"),
            "{host}"
        );
    }
}

#[tokio::test]
async fn authzen_journey_attributes_come_from_resource_action_and_context() {
    let dir = bundled_policies_with(&[LARGE_PAYMENT_POLICY]);
    let server = TestServer::start_with(stepgate::config::Config {
        policies_dir: dir.path().to_owned(),
        ..stepgate::config::Config::default()
    })
    .await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", IP).await;
    let props = json!({"device_id": "laptop", "ip": IP, "aal": 2});
    let mut big = evaluation("alice", "payment", props.clone());
    big["resource"]["properties"] = json!({"amount": 5_000_000, "currency": "EUR"});
    let reply = post_json(&server, "/access/v1/evaluation", &big)
        .await
        .json();
    assert_eq!(reply["context"]["reasons"][0]["policy_id"], "large-payment");
    let mut in_context = evaluation("alice", "payment", props.clone());
    in_context["context"] = json!({"amount": 150_000, "supported_obligations": ["step-up"]});
    assert_eq!(
        post_json(&server, "/access/v1/evaluation", &in_context)
            .await
            .json()["decision"],
        true
    );
    let mut twice = evaluation("alice", "payment", props);
    twice["resource"]["properties"] = json!({"amount": 1});
    twice["context"] = json!({"amount": 2});
    let reply = post_json(&server, "/access/v1/evaluation", &twice).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("`context.amount`"))
    );
}

//! The ladder, evaluated directly on signals built in the test.

use std::collections::BTreeMap;

use std::sync::LazyLock;
use stepgate::decision::{Aal, AttrValue, Outcome, Risk, RiskLevel, Tier};

use stepgate::policy::{
    Asked, CacheResult, ContextParts, LadderMemo, LadderRequest, LadderResult, PolicySnapshot,
    ladder, memo,
};
use stepgate::signals::{
    AuthnSignals, BehaviourSignals, DeviceSignals, GeoSignals, GeoStatus, IpSignals, Signals,
};

use crate::{bundled, policy_dir};

fn signals(journey: &str, tier: Tier) -> Signals {
    Signals {
        journey: journey.to_owned(),
        tier,
        authn: AuthnSignals {
            amr: vec!["pwd".into()],
            seconds_since_auth: Some(30),
        },
        device: DeviceSignals {
            provided: true,
            known: true,
        },
        ip: IpSignals::default(),
        geo: GeoSignals::unknown(GeoStatus::NotConfigured),
        behaviour: BehaviourSignals::default(),
        risk: Risk {
            score: 0,
            level: RiskLevel::Low,
            contributions: Vec::new(),
        },
    }
}

fn run(snapshot: &PolicySnapshot, signals: &Signals, aal: Aal) -> LadderResult {
    run_with(snapshot, signals, &BTreeMap::new(), aal)
}

fn run_with(
    snapshot: &PolicySnapshot,
    signals: &Signals,
    attributes: &BTreeMap<String, AttrValue>,
    aal: Aal,
) -> LadderResult {
    let principal = snapshot.principal("alice");
    let resource = snapshot.resource("");
    let journey = snapshot
        .journey_policies(&signals.journey)
        .expect("journey");
    let parts = ContextParts::new(signals, attributes, journey.shape()).expect("context");
    let request = LadderRequest {
        principal: &principal,
        journey,
        resource: &resource,
        context: &parts,
    };
    let answer = ladder::evaluate(snapshot, &request, aal).expect("evaluates");
    // The fast path (sliced policies, pruned context, one pass where it
    // can) answers exactly as the ladder's definition: every policy, the
    // whole context, one rung at a time.
    let full = ContextParts::full(signals, attributes).expect("context");
    let reference = LadderRequest {
        context: &full,
        ..request
    };
    let expected = ladder::reference(snapshot, &reference, aal).expect("evaluates");
    assert_eq!(
        answer, expected,
        "the fast ladder and the reference disagree"
    );
    // And a memoised answer is the same, whether it was made for this
    // request or for an earlier one with the same key (another age of the
    // same class, another policy set: every test here shares one cache).
    let asked = Asked {
        aal,
        principal: &principal,
        resource: &resource,
        signals,
        attributes,
    };
    let (first, _) = memo::evaluate(Some(&MEMO), snapshot, journey, &asked).expect("evaluates");
    assert_eq!(
        *first, expected,
        "a memoised answer and the reference disagree"
    );
    let (again, how) = memo::evaluate(Some(&MEMO), snapshot, journey, &asked).expect("evaluates");
    assert_eq!(
        *again, expected,
        "a memoised answer and the reference disagree"
    );
    let expected_use = match journey.memo() {
        Some(_) => CacheResult::Hit,
        None => CacheResult::Bypass,
    };
    assert_eq!(how, expected_use);
    answer
}

/// One cache for every test in this file, large enough to hold them all.
static MEMO: LazyLock<LadderMemo> = LazyLock::new(|| LadderMemo::new(1 << 20));

fn ids(result: &LadderResult) -> Vec<&str> {
    result
        .reasons
        .iter()
        .map(|r| r.policy_id.as_str())
        .collect()
}

#[test]
fn permitted_at_the_current_level_is_allow_with_the_permits() {
    let snapshot = PolicySnapshot::load(&bundled()).expect("bundled policies load");
    let result = run(&snapshot, &signals("login", Tier::Medium), Aal::One);
    assert_eq!(result.outcome, Outcome::Allow);
    assert_eq!(ids(&result), ["journey-permit"]);
    assert!(result.faults.is_empty());
}

#[test]
fn step_up_goes_to_the_lowest_level_that_permits() {
    let snapshot = PolicySnapshot::load(&bundled()).expect("load");
    let mut s = signals("payment", Tier::High);
    assert_eq!(
        run(&snapshot, &s, Aal::One).outcome,
        Outcome::StepUp(Aal::Two)
    );
    s.device.known = false;
    let result = run(&snapshot, &s, Aal::One);
    assert_eq!(result.outcome, Outcome::StepUp(Aal::Three));
    // The reasons are the forbids that fired at the current level.
    assert_eq!(
        ids(&result),
        ["high-tier-needs-aal2", "high-tier-new-device-needs-aal3"]
    );
}

#[test]
fn deny_reports_the_forbids_still_firing_at_the_top() {
    let snapshot = PolicySnapshot::load(&bundled()).expect("load");
    let mut s = signals("payment", Tier::High);
    s.device.known = false;
    s.ip.deny_listed = true;
    let result = run(&snapshot, &s, Aal::One);
    assert_eq!(result.outcome, Outcome::Deny);
    assert_eq!(
        ids(&result),
        ["ip-deny-list"],
        "satisfiable forbids are not blamed for a deny"
    );
}

#[test]
fn a_user_above_the_required_level_is_allowed() {
    let snapshot = PolicySnapshot::load(&bundled()).expect("load");
    let mut s = signals("change_payout", Tier::High);
    s.device.known = false;
    assert_eq!(run(&snapshot, &s, Aal::Three).outcome, Outcome::Allow);
}

#[test]
fn no_permit_at_all_denies_with_a_named_reason() {
    let dir = policy_dir(&[(
        "only-login.cedar",
        r#"@id("login-only") @reason("only login is open")
permit (principal, action == Action::"login", resource);"#,
    )]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    let result = run(&snapshot, &signals("signup", Tier::Low), Aal::One);
    assert_eq!(result.outcome, Outcome::Deny);
    assert_eq!(ids(&result), [ladder::NO_PERMIT_ID]);
}

#[test]
fn a_permit_that_needs_assurance_gives_a_step_up() {
    let dir = policy_dir(&[(
        "p.cedar",
        r#"@id("aal2-permit") @reason("everything needs AAL2")
permit (principal, action, resource) when { context.authn.aal >= 2 };"#,
    )]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    let result = run(&snapshot, &signals("login", Tier::Medium), Aal::One);
    assert_eq!(result.outcome, Outcome::StepUp(Aal::Two));
    assert_eq!(ids(&result), [ladder::NO_PERMIT_ID]);
}

/// A forbid whose evaluation overflows. Cedar skips erroring policies, which
/// would make this forbid silently vanish; the ladder must not let it.
const OVERFLOWING_FORBID: &str = r#"
@id("permit-all") @reason("base")
permit (principal, action, resource);

@id("overflowing-forbid") @reason("risky when failures times a huge number is positive")
forbid (principal, action, resource)
when { context.behaviour.user_failures * 9223372036854775807 > 0 };
"#;

#[test]
fn a_failing_forbid_never_makes_the_answer_more_permissive() {
    let dir = policy_dir(&[("p.cedar", OVERFLOWING_FORBID)]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("strict validation accepts it");
    let mut s = signals("login", Tier::Medium);

    s.behaviour.user_failures = 0;
    assert_eq!(
        run(&snapshot, &s, Aal::One).outcome,
        Outcome::Allow,
        "no overflow at 0"
    );

    s.behaviour.user_failures = 2;
    let result = run(&snapshot, &s, Aal::One);
    assert_eq!(
        result.outcome,
        Outcome::Deny,
        "an error at every level is a deny"
    );
    assert_eq!(result.faults.len(), 1);
    assert_eq!(result.faults[0].policy_id, "overflowing-forbid");
    assert!(
        result.faults[0].message.contains("overflow"),
        "{}",
        result.faults[0].message
    );
}

#[test]
fn a_level_where_a_policy_fails_is_skipped_not_granted() {
    // The forbid overflows only below AAL3; the ladder must step up to AAL3
    // rather than allow at AAL1 where Cedar would skip the broken forbid.
    let dir = policy_dir(&[(
        "p.cedar",
        r#"
@id("permit-all") @reason("base")
permit (principal, action, resource);

@id("fragile") @reason("fails below AAL3")
forbid (principal, action, resource)
when { context.authn.aal < 3 && context.behaviour.user_failures * 9223372036854775807 > 0 };
"#,
    )]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    let mut s = signals("login", Tier::Medium);
    s.behaviour.user_failures = 3;
    let result = run(&snapshot, &s, Aal::One);
    assert_eq!(result.outcome, Outcome::StepUp(Aal::Three));
    let ids: Vec<&str> = result
        .reasons
        .iter()
        .map(|r| r.policy_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["stepgate.policy_error"],
        "no forbid fired; the fault explains it"
    );
    assert_eq!(result.faults[0].policy_id, "fragile");
}

#[test]
fn attributes_are_visible_to_policies() {
    let dir = policy_dir(&[(
        "p.cedar",
        r#"
@id("permit-all") @reason("base")
permit (principal, action, resource);

@id("large-payment") @reason("payments over 10000 need AAL3")
forbid (principal, action == Action::"payment", resource)
when { context.attributes has amount && context.attributes.amount > 10000 }
unless { context.authn.aal >= 3 };
"#,
    )]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    let s = signals("payment", Tier::High);
    let small = BTreeMap::from([("amount".to_owned(), AttrValue::Long(500))]);
    let large = BTreeMap::from([("amount".to_owned(), AttrValue::Long(50_000))]);
    assert_eq!(
        run_with(&snapshot, &s, &small, Aal::One).outcome,
        Outcome::Allow
    );
    let result = run_with(&snapshot, &s, &large, Aal::One);
    assert_eq!(result.outcome, Outcome::StepUp(Aal::Three));
    assert_eq!(ids(&result), ["large-payment"]);
}

#[test]
fn every_bundled_journey_is_answered_in_one_pass() {
    let snapshot = PolicySnapshot::load(&bundled()).expect("load");
    for journey in snapshot.catalog().journeys.keys() {
        let policies = snapshot.journey_policies(journey).expect("journey");
        assert!(
            policies.one_pass(),
            "{journey} needs rung-by-rung evaluation"
        );
    }
    // Login is sliced down to what can apply to it: no payment-tier rules.
    let login: Vec<String> = snapshot
        .journey_policies("login")
        .expect("login")
        .all()
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    assert!(login.contains(&"login-new-device".to_owned()));
    assert!(login.contains(&"stuffing-ip".to_owned()));
    assert!(!login.contains(&"high-tier-needs-aal2".to_owned()));
    assert!(!login.contains(&"high-tier-tor-or-public-proxy".to_owned()));
}

#[test]
fn a_journey_with_a_level_dependent_permit_is_climbed_rung_by_rung() {
    let dir = policy_dir(&[(
        "p.cedar",
        r#"@id("aal2-payments") @reason("payments need AAL2")
permit (principal, action == Action::"payment", resource) when { context.authn.aal >= 2 };
@id("others") @reason("the rest is open")
permit (principal, action, resource) when { context.journey.name != "payment" };"#,
    )]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    let one_pass = |j: &str| snapshot.journey_policies(j).expect(j).one_pass();
    assert!(!one_pass("payment"));
    // The payment-only permit is sliced away from the other journeys.
    assert!(one_pass("login"));
    assert_eq!(
        run(&snapshot, &signals("payment", Tier::High), Aal::One).outcome,
        Outcome::StepUp(Aal::Two)
    );
    assert_eq!(
        run(&snapshot, &signals("login", Tier::Medium), Aal::One).outcome,
        Outcome::Allow
    );
}

/// Forbids of every kind the one-pass ladder distinguishes: released at 2,
/// at 3, never (a bound above the top), hard, and failing.
const MIXED_FORBIDS: &str = r#"
@id("permit-small-payments") @reason("payments up to 1000")
permit (principal, action == Action::"payment", resource)
when { context.attributes has amount && context.attributes.amount <= 1000 };

@id("permit-login") @reason("login is open")
permit (principal, action == Action::"login", resource);

@id("new-device") @reason("new device")
forbid (principal, action, resource) when { !context.device.known }
unless { context.authn.aal >= 2 };

@id("failures") @reason("failures")
forbid (principal, action, resource) when { context.behaviour.user_failures >= 3 }
unless { context.authn.aal > 2 };

@id("unreachable") @reason("needs more than the top level")
forbid (principal, action, resource) when { context.behaviour.ip_failures >= 3 }
unless { context.authn.aal >= 4 };

@id("deny-listed") @reason("listed")
forbid (principal, action, resource) when { context.ip.deny_listed };

@id("overflow") @reason("fails when distinct users are counted")
forbid (principal, action, resource)
when { context.behaviour.ip_distinct_failed_users * 9223372036854775807 > 1 };
"#;

#[test]
fn one_pass_and_rung_by_rung_agree_on_every_combination() {
    let dir = policy_dir(&[("p.cedar", MIXED_FORBIDS)]);
    let mixed = PolicySnapshot::load(dir.path()).expect("load");
    let bundled = PolicySnapshot::load(&bundled()).expect("load");
    assert!(
        mixed
            .journey_policies("payment")
            .expect("payment")
            .one_pass()
    );
    let anonymity = |tor: bool, hosting: bool| stepgate::geo::Anonymity {
        anonymous: tor || hosting,
        anonymous_vpn: false,
        hosting_provider: hosting,
        public_proxy: false,
        residential_proxy: false,
        tor_exit: tor,
    };
    let mut outcomes = std::collections::BTreeSet::new();
    let mut checked = 0;
    for (journey, tier) in [("login", Tier::Medium), ("payment", Tier::High)] {
        for bits in 0u32..256 {
            let bit = |n: u32| bits & (1 << n) != 0;
            let mut s = signals(journey, tier);
            s.device.known = bit(0);
            s.behaviour.user_failures = if bit(1) { 25 } else { 0 };
            s.behaviour.ip_failures = if bit(2) { 3 } else { 0 };
            s.ip.deny_listed = bit(3);
            s.behaviour.ip_distinct_failed_users = if bit(4) { 2 } else { 0 };
            s.ip.anonymity = Some(anonymity(bit(5), bit(6)));
            s.geo.country_known = Some(bit(7));
            s.geo.impossible_travel = Some(bit(1) && bit(5));
            for amount in [500, 5000] {
                let attrs = match journey {
                    "payment" => BTreeMap::from([("amount".to_owned(), AttrValue::Long(amount))]),
                    _ => BTreeMap::new(),
                };
                for aal in Aal::ALL {
                    // `run_with` fails if the two ways of climbing differ.
                    let answer = run_with(&mixed, &s, &attrs, aal);
                    outcomes.insert(format!("{:?}", answer.outcome));
                    run(&bundled, &s, aal);
                    checked += 2;
                }
            }
        }
    }
    assert_eq!(checked, 2 * 256 * 2 * 3 * 2);
    // The grid reaches every outcome, so the agreement means something.
    assert_eq!(
        outcomes.into_iter().collect::<Vec<_>>(),
        ["Allow", "Deny", "StepUp(Three)", "StepUp(Two)"]
    );
}

/// A permit for everything.
const PERMIT_ALL: (&str, &str) = (
    "permit.cedar",
    r#"@id("permit-all") @reason("open") permit (principal, action, resource);"#,
);

/// A freshness rule on payouts, and a pure freshness rule on every
/// high-tier journey.
const FRESH_ONLY: &str = r#"
@id("payout-recent-aal2") @reason("payouts need AAL2 from the last 15 minutes")
@max_age("15m")
forbid (principal, action == Action::"change_payout", resource)
unless { context.authn.aal >= 2 };

@id("high-tier-recent") @reason("high-tier journeys need an authentication from the last hour")
@max_age("1h")
forbid (principal, action, resource) when { context.journey.tier == "high" };
"#;

/// Freshness rules the one-pass ladder cannot follow: one released by the
/// device rather than the level, one with a level bound and a device test.
const FRESH_ON_OTHER_THINGS: &str = r#"
@id("recent-on-known-device") @reason("payouts need a recent authentication on a known device")
@max_age("15m")
forbid (principal, action == Action::"change_payout", resource)
unless { context.device.known };

@id("recent-aal2-or-known") @reason("payments need a recent AAL2, or a known device")
@max_age("1h")
forbid (principal, action == Action::"payment", resource)
unless { context.authn.aal >= 2 } unless { context.device.known };
"#;

const HAND_WRITTEN_AGE: &str = r#"
@id("recovery-age") @reason("recovery needs an authentication from the last 10 minutes")
forbid (principal, action == Action::"account_recovery", resource)
unless { context.authn has seconds_since_auth && context.authn.seconds_since_auth <= 600 };
"#;

fn aged(journey: &str, tier: Tier, age: Option<i64>) -> Signals {
    let mut s = signals(journey, tier);
    s.authn.seconds_since_auth = age;
    s
}

#[test]
fn a_stale_authentication_is_asked_again_and_a_fresh_one_is_allowed() {
    let dir = policy_dir(&[PERMIT_ALL, ("f.cedar", FRESH_ONLY)]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    assert!(
        snapshot
            .journey_policies("change_payout")
            .expect("journey")
            .one_pass(),
        "freshness rules keep the one-pass ladder"
    );
    let payout = |aal: Aal, age: Option<i64>| {
        let result = run(&snapshot, &aged("change_payout", Tier::High, age), aal);
        (result.outcome, result.max_age, ids(&result).join(","))
    };
    let recent = "payout-recent-aal2".to_owned();
    // Fresh AAL2, up to the boundary itself: allowed.
    for age in [0, 30, 900] {
        assert_eq!(
            payout(Aal::Two, Some(age)).0,
            Outcome::Allow,
            "AAL2 {age} s old"
        );
    }
    // Stale, or of unknown age: authenticate again at AAL2 within 15 min.
    for age in [Some(901), Some(3 * 86_400), None] {
        let (outcome, max_age, reasons) = payout(Aal::Two, age);
        assert_eq!(
            (outcome, max_age),
            (Outcome::StepUp(Aal::Two), Some(900)),
            "{age:?}"
        );
        assert!(reasons.contains(&recent), "{reasons}");
    }
    // Past the hour, the high-tier rule fires too: the smaller age wins.
    let (_, max_age, reasons) = payout(Aal::Two, Some(7200));
    assert_eq!(max_age, Some(900));
    assert_eq!(reasons, "high-tier-recent,payout-recent-aal2");
    // AAL1, however fresh: a step-up to AAL2, which is made fresh.
    let (outcome, max_age, _) = payout(Aal::One, Some(10));
    assert_eq!((outcome, max_age), (Outcome::StepUp(Aal::Two), Some(900)));
    // A stale AAL3 is asked for AAL3 again, not let through or lowered.
    assert_eq!(
        payout(Aal::Three, Some(5000)).0,
        Outcome::StepUp(Aal::Three)
    );
    // Another high-tier journey: only the hour; a medium one: nothing.
    let payment = run(
        &snapshot,
        &aged("payment", Tier::High, Some(3601)),
        Aal::One,
    );
    assert_eq!(
        (payment.outcome, payment.max_age),
        (Outcome::StepUp(Aal::One), Some(3600))
    );
    let login = run(&snapshot, &aged("login", Tier::Medium, None), Aal::One);
    assert_eq!((login.outcome, login.max_age), (Outcome::Allow, None));
}

#[test]
fn an_age_test_without_max_age_is_climbed_rung_by_rung_and_asks_for_a_new_authentication() {
    let dir = policy_dir(&[
        PERMIT_ALL,
        ("f.cedar", FRESH_ONLY),
        ("age.cedar", HAND_WRITTEN_AGE),
    ]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    assert!(
        !snapshot
            .journey_policies("account_recovery")
            .expect("journey")
            .one_pass()
    );
    let stale = run(
        &snapshot,
        &aged("account_recovery", Tier::High, Some(700)),
        Aal::Two,
    );
    // No rule names an age: the answer asks for one made now.
    assert_eq!(
        (stale.outcome, stale.max_age),
        (Outcome::StepUp(Aal::Two), Some(0))
    );
    let fresh = run(
        &snapshot,
        &aged("account_recovery", Tier::High, Some(60)),
        Aal::Two,
    );
    assert_eq!(fresh.outcome, Outcome::Allow);
}

#[test]
fn freshness_one_pass_and_rung_by_rung_agree_on_every_combination() {
    let mixed = policy_dir(&[("p.cedar", MIXED_FORBIDS), ("f.cedar", FRESH_ONLY)]);
    let with_hand_written = policy_dir(&[
        PERMIT_ALL,
        ("f.cedar", FRESH_ONLY),
        ("age.cedar", HAND_WRITTEN_AGE),
    ]);
    let other_things = policy_dir(&[PERMIT_ALL, ("p.cedar", FRESH_ON_OTHER_THINGS)]);
    let sets = [
        PolicySnapshot::load(mixed.path()).expect("load"),
        PolicySnapshot::load(with_hand_written.path()).expect("load"),
        PolicySnapshot::load(other_things.path()).expect("load"),
    ];
    for journey in ["change_payout", "payment"] {
        assert!(
            !sets[2].journey_policies(journey).expect(journey).one_pass(),
            "{journey}: a freshness rule released by something besides the level"
        );
    }
    let mut outcomes = std::collections::BTreeSet::new();
    for snapshot in &sets {
        for (journey, tier) in [
            ("login", Tier::Medium),
            ("payment", Tier::High),
            ("change_payout", Tier::High),
            ("account_recovery", Tier::High),
        ] {
            for bits in 0u32..16 {
                let bit = |n: u32| bits & (1 << n) != 0;
                for age in [
                    None,
                    Some(0),
                    Some(600),
                    Some(601),
                    Some(900),
                    Some(901),
                    Some(3600),
                    Some(3601),
                ] {
                    let mut s = aged(journey, tier, age);
                    s.device.known = bit(0);
                    s.behaviour.user_failures = if bit(1) { 25 } else { 0 };
                    s.ip.deny_listed = bit(2);
                    s.behaviour.ip_failures = if bit(3) { 3 } else { 0 };
                    let attrs = BTreeMap::from([("amount".to_owned(), AttrValue::Long(500))]);
                    for aal in Aal::ALL {
                        // `run_with` fails if the two ways of climbing differ.
                        let answer = run_with(snapshot, &s, &attrs, aal);
                        outcomes.insert(format!(
                            "{:?} {}",
                            answer.outcome,
                            answer.max_age.is_some()
                        ));
                    }
                }
            }
        }
    }
    for reached in [
        "StepUp(One) true",
        "StepUp(Two) true",
        "StepUp(Three) true",
        "Allow false",
        "Deny false",
    ] {
        assert!(outcomes.contains(reached), "{reached} in {outcomes:?}");
    }
}

#[test]
fn a_freshness_rule_that_fails_validation_is_refused_at_its_file_and_line() {
    // The rule is evaluated with its age test joined, but validated as
    // written, so the error points at the unknown action in the file.
    let text = "\n\n@id(\"f\") @reason(\"r\") @max_age(\"15m\")\n\
                forbid (principal, action == Action::\"nope\", resource)\n\
                unless { context.authn.aal >= 2 };";
    let dir = policy_dir(&[PERMIT_ALL, ("f.cedar", text)]);
    let error = PolicySnapshot::load(dir.path()).expect_err("refused");
    let problem = error
        .problems
        .iter()
        .find(|p| p.message.contains("unrecognized action `Action::\"nope\"`"))
        .unwrap_or_else(|| panic!("{error:?}"));
    assert!(problem.file.ends_with("f.cedar"), "{problem:?}");
    assert_eq!(
        (problem.line, problem.column),
        (Some(4), Some(30)),
        "{problem:?}"
    );
}

#[test]
fn a_max_age_that_is_not_a_duration_or_not_on_a_forbid_is_refused_with_its_place() {
    for (text, expected) in [
        (
            r#"@id("f") @reason("r") @max_age("soon") forbid (principal, action, resource);"#,
            r#"policy `f`: `@max_age("soon")` is not a duration"#,
        ),
        (
            r#"@id("f") @reason("r") @max_age("90days") forbid (principal, action, resource);"#,
            "must be between 1 second and 30 days",
        ),
        (
            r#"@id("p") @max_age("15m") permit (principal, action, resource);"#,
            "policy `p`: `@max_age` belongs on a forbid",
        ),
    ] {
        let dir = policy_dir(&[("p.cedar", text)]);
        let error = PolicySnapshot::load(dir.path()).expect_err("refused");
        let problem = error
            .problems
            .iter()
            .find(|p| p.message.contains(expected))
            .unwrap_or_else(|| panic!("{expected} in {error:?}"));
        assert!(problem.file.ends_with("p.cedar"), "{problem:?}");
        assert_eq!(problem.line, Some(1), "{problem:?}");
    }
}

#[test]
fn a_freshness_rule_released_by_a_known_device_never_asks_an_unknown_one_to_authenticate_again() {
    let dir = policy_dir(&[PERMIT_ALL, ("p.cedar", FRESH_ON_OTHER_THINGS)]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    let mut s = aged("change_payout", Tier::High, Some(30));
    s.device.known = false;
    // Authenticating again cannot make the device known: deny, not a
    // step-up that could never be met.
    assert_eq!(run(&snapshot, &s, Aal::Two).outcome, Outcome::Deny);
    s.device.known = true;
    assert_eq!(run(&snapshot, &s, Aal::Two).outcome, Outcome::Allow);
    s.authn.seconds_since_auth = Some(901);
    assert_eq!(
        run(&snapshot, &s, Aal::Two).outcome,
        Outcome::StepUp(Aal::Two)
    );
}

/// Rules whose answers depend on everything a memo key must tell apart:
/// the principal (in a scope), the tenant (in a condition), caller
/// attributes, the methods used, and two `@max_age` bounds on one journey.
const KEYED_ON_EVERYTHING: &str = r#"
@id("mallory") @reason("this principal is blocked")
forbid (principal == User::"mallory", action, resource);

@id("tenant-b-payments") @reason("tenant b needs AAL3 for payments")
forbid (principal, action == Action::"payment", resource)
when { resource == Tenant::"b" } unless { context.authn.aal >= 3 };

@id("big-payment") @reason("payments over 1000 need AAL2 from the last 5 minutes")
@max_age("5m")
forbid (principal, action == Action::"payment", resource)
when { context.attributes has amount && context.attributes.amount > 1000 }
unless { context.authn.aal >= 2 };

@id("otp-only-login") @reason("sign-ins by one-time password alone need AAL2")
forbid (principal, action == Action::"login", resource)
when { context.authn.amr.contains("otp") } unless { context.authn.aal >= 2 };
"#;

/// Random requests over small domains (so keys repeat) against packs that
/// read every kind of input: each memoised answer, hit or miss, equals the
/// reference ladder's on the request's real context (its real age, every
/// policy, every field).
#[test]
fn memoised_answers_equal_evaluated_ones_on_random_requests() {
    let mut bundled_files: Vec<(String, String)> = std::fs::read_dir(bundled())
        .expect("bundled")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read"))
        })
        .collect();
    bundled_files.push(("keyed.cedar".into(), KEYED_ON_EVERYTHING.into()));
    let files: Vec<(&str, &str)> = bundled_files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let everything = policy_dir(&files);
    let hand_written = policy_dir(&[
        PERMIT_ALL,
        ("f.cedar", FRESH_ONLY),
        ("age.cedar", HAND_WRITTEN_AGE),
    ]);
    let sets = [
        PolicySnapshot::load(everything.path()).expect("load"),
        PolicySnapshot::load(hand_written.path()).expect("load"),
        PolicySnapshot::load(&bundled()).expect("load"),
    ];
    // The hand-written age test is not memoised; the rest are.
    assert!(
        sets[1]
            .journey_policies("account_recovery")
            .expect("journey")
            .memo()
            .is_none()
    );
    assert!(
        sets[0]
            .journey_policies("payment")
            .expect("journey")
            .memo()
            .is_some()
    );
    let memo = LadderMemo::new(4096);
    let mut rng = fastrand::Rng::with_seed(15);
    let journeys = [
        ("login", Tier::Medium),
        ("payment", Tier::High),
        ("change_payout", Tier::High),
        ("account_recovery", Tier::High),
        ("signup", Tier::Low),
    ];
    let mut tally = BTreeMap::<String, u32>::new();
    let mut outcomes = std::collections::BTreeSet::new();
    for _ in 0..6000 {
        let snapshot = &sets[rng.usize(..sets.len())];
        let (journey, tier) = journeys[rng.usize(..journeys.len())];
        let mut s = signals(journey, tier);
        s.device.known = rng.bool();
        s.device.provided = s.device.known || rng.bool();
        s.behaviour.user_failures = [0, 4, 5, 19, 20, 30][rng.usize(..6)];
        s.behaviour.user_failures_on_device = [0, 20][rng.usize(..2)];
        s.behaviour.ip_distinct_failed_users = [0, 9, 10][rng.usize(..3)];
        s.behaviour.first_sign_in = rng.u8(..8) == 0;
        s.behaviour.compromised_recently = rng.u8(..8) == 0;
        s.ip.deny_listed = rng.u8(..16) == 0;
        s.ip.anonymity = (rng.u8(..4) == 0).then(|| stepgate::geo::Anonymity {
            anonymous: true,
            anonymous_vpn: false,
            hosting_provider: rng.bool(),
            public_proxy: rng.bool(),
            residential_proxy: false,
            tor_exit: rng.bool(),
        });
        s.geo.country_known = [None, Some(true), Some(false)][rng.usize(..3)];
        s.geo.impossible_travel = [None, Some(false), Some(true)][rng.usize(..3)];
        s.risk.level = [RiskLevel::Low, RiskLevel::Medium, RiskLevel::High][rng.usize(..3)];
        s.authn.amr = [
            vec!["pwd".into()],
            vec!["otp".into()],
            vec!["pwd".into(), "otp".into()],
        ][rng.usize(..3)]
        .clone();
        // Ages on and around every bound in these packs, and anywhere.
        s.authn.seconds_since_auth = match rng.u8(..4) {
            0 => None,
            1 => Some([-5, 0, 299, 300, 301, 600, 601, 900, 901, 3600, 3601][rng.usize(..11)]),
            _ => Some(rng.i64(0..8000)),
        };
        let attrs = match (journey, rng.u8(..3)) {
            ("payment" | "change_payout", 0) => BTreeMap::new(),
            ("payment" | "change_payout", n) => BTreeMap::from([(
                "amount".to_owned(),
                AttrValue::Long(if n == 1 { 500 } else { 5000 }),
            )]),
            _ => BTreeMap::new(),
        };
        let user = ["alice", "bob", "mallory"][rng.usize(..3)];
        let tenant = ["", "a", "b"][rng.usize(..3)];
        let aal = Aal::ALL[rng.usize(..3)];
        let principal = snapshot.principal(user);
        let resource = snapshot.resource(tenant);
        let policies = snapshot.journey_policies(journey).expect("journey");
        let asked = Asked {
            aal,
            principal: &principal,
            resource: &resource,
            signals: &s,
            attributes: &attrs,
        };
        let (answer, how) =
            memo::evaluate(Some(&memo), snapshot, policies, &asked).expect("answers");
        let full = ContextParts::full(&s, &attrs).expect("context");
        let reference = LadderRequest {
            principal: &principal,
            journey: policies,
            resource: &resource,
            context: &full,
        };
        let expected = ladder::reference(snapshot, &reference, aal).expect("evaluates");
        assert_eq!(
            *answer, expected,
            "{how:?} answer for {user}@{tenant:?} {journey} at {aal:?}, {s:?} {attrs:?}"
        );
        *tally.entry(how.label().to_owned()).or_default() += 1;
        outcomes.insert(format!("{:?}", answer.outcome));
    }
    // Hits are most answers, so the agreement is about reused ones; every
    // kind of use and outcome was reached.
    let count = |k: &str| tally.get(k).copied().unwrap_or(0);
    assert!(count("hit") > 2000, "{tally:?}");
    assert!(count("miss") > 500, "{tally:?}");
    assert!(count("bypass") > 50, "{tally:?}");
    for reached in [
        "Allow",
        "Deny",
        "StepUp(One)",
        "StepUp(Two)",
        "StepUp(Three)",
    ] {
        assert!(outcomes.contains(reached), "{reached} in {outcomes:?}");
    }
}

/// A key too long to keep (a long user id where a policy names the
/// principal) is evaluated every time, and counted as a bypass.
#[test]
fn an_answer_with_a_key_too_long_to_keep_is_evaluated_every_time() {
    let dir = policy_dir(&[PERMIT_ALL, ("k.cedar", KEYED_ON_EVERYTHING)]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("load");
    let journey = snapshot.journey_policies("login").expect("journey");
    assert!(journey.memo().is_some());
    let memo = LadderMemo::new(64);
    let s = signals("login", Tier::Medium);
    let attrs = BTreeMap::new();
    let resource = snapshot.resource("");
    for (user, first, again) in [
        ("alice", CacheResult::Miss, CacheResult::Hit),
        (
            &*"u".repeat(memo::MAX_KEY_BYTES),
            CacheResult::Bypass,
            CacheResult::Bypass,
        ),
    ] {
        let principal = snapshot.principal(user);
        let asked = Asked {
            aal: Aal::One,
            principal: &principal,
            resource: &resource,
            signals: &s,
            attributes: &attrs,
        };
        let uses: Vec<CacheResult> = (0..2)
            .map(|_| {
                let (answer, how) =
                    memo::evaluate(Some(&memo), &snapshot, journey, &asked).expect("answers");
                assert_eq!(answer.outcome, Outcome::Allow);
                how
            })
            .collect();
        assert_eq!(uses, [first, again], "{} bytes of user id", user.len());
    }
}

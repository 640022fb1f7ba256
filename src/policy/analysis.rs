//! What a policy does with `context.authn.aal`, read once at load from its
//! JSON syntax tree.
//!
//! The ladder uses this to answer every rung from one evaluation: a forbid
//! whose only use of the level is `unless { context.authn.aal >= k }` fires
//! at a level exactly when it fired at the user's level and the level is
//! below `k`. Anything the analysis cannot prove that of is marked
//! [`AalUse::Other`], and its journeys are evaluated rung by rung instead.

use cedar_policy::{Effect, Policy};
use serde_json::Value;

/// How one policy depends on the assurance level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AalUse {
    /// The level is never read: the policy answers the same at every rung.
    Independent,
    /// A forbid that stops firing once the level reaches this number.
    ReleasedAt(i64),
    /// Anything else; evaluate it at each rung.
    Other,
}

/// The attribute path of the assurance level inside `context`.
const AAL_PATH: [&str; 2] = ["authn", "aal"];
/// The attribute path of the authentication's age inside `context`, which
/// the ladder also varies (a stepped-up rung is an authentication made
/// now).
const AGE_PATH: [&str; 2] = ["authn", "seconds_since_auth"];

/// What the ladder needs to know about one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub aal: AalUse,
    /// Every context path the policy reads or tests with `has`; an empty
    /// path is the whole context.
    pub reads: Vec<Vec<String>>,
    /// The journey test the policy's condition starts with, if any.
    guard: Option<Guard>,
    /// A freshness rule's largest authentication age, in seconds
    /// (`@max_age`, see [`super::freshness`]).
    pub max_age: Option<u32>,
    /// Whether the policy as written reads the authentication's age
    /// itself (rather than through `@max_age`), or a record holding it.
    pub reads_age: bool,
    /// Whether the answer can depend on which principal asks (a scope on
    /// `principal`, or `principal` in a condition).
    pub principal: bool,
    /// The same for the resource (the tenant).
    pub resource: bool,
}

/// `context.journey.<field> == "value"` (or `!=`), the first thing a
/// condition evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Guard {
    field: String,
    equal: bool,
    value: String,
}

impl Analysis {
    /// Whether the policy can ever be satisfied, or fail, on this journey.
    /// Cedar evaluates a condition left to right and stops at the first
    /// false conjunct, so a policy that opens by testing the journey
    /// against a value this journey does not have is inert for it.
    pub fn applies_to(&self, journey: &str, tier: &str) -> bool {
        let Some(guard) = &self.guard else {
            return true;
        };
        let actual = match guard.field.as_str() {
            "name" => journey,
            "tier" => tier,
            _ => return true,
        };
        (actual == guard.value) == guard.equal
    }
}

pub fn analyse(policy: &Policy) -> Analysis {
    let unknown = Analysis {
        aal: AalUse::Other,
        reads: vec![Vec::new()],
        guard: None,
        max_age: None,
        reads_age: true,
        principal: true,
        resource: true,
    };
    let Ok(json) = policy.to_json() else {
        return unknown;
    };
    let Some(conditions) = json.get("conditions").and_then(Value::as_array) else {
        return unknown;
    };
    let mut reads = Vec::new();
    for condition in conditions {
        collect_reads(condition.get("body").unwrap_or(&Value::Null), &mut reads);
    }
    Analysis {
        aal: aal_use(policy.effect(), &json),
        reads_age: reads.iter().any(|path| path_holds(path, &AGE_PATH)),
        reads: reads
            .into_iter()
            .map(|path| path.into_iter().map(str::to_owned).collect())
            .collect(),
        guard: conditions.first().and_then(guard),
        max_age: None,
        principal: uses_var(&json, "principal"),
        resource: uses_var(&json, "resource"),
    }
}

/// Whether a policy's answer can depend on the request's `var`
/// (`principal` or `resource`): its scope constrains it, or a condition
/// names it.
fn uses_var(policy: &Value, var: &str) -> bool {
    let scoped = policy
        .get(var)
        .and_then(|scope| scope.get("op"))
        .and_then(Value::as_str)
        != Some("All");
    scoped
        || policy
            .get("conditions")
            .is_some_and(|conditions| names_var(conditions, var))
}

fn names_var(expr: &Value, var: &str) -> bool {
    match expr {
        Value::Object(fields) => {
            fields.get("Var").and_then(Value::as_str) == Some(var)
                || fields.values().any(|v| names_var(v, var))
        }
        Value::Array(items) => items.iter().any(|v| names_var(v, var)),
        _ => false,
    }
}

/// The analysis of a freshness rule: `original` as written, `effective`
/// with its age test joined (what Cedar evaluates). The reads and the
/// journey test are the effective policy's; the level is the original's,
/// and a forbid the level never released is released at any level once
/// the authentication is fresh. Forbids the analysis cannot follow stay
/// [`AalUse::Other`].
pub fn analyse_fresh(original: &Policy, effective: &Policy, max_age: u32) -> Analysis {
    let mut analysis = analyse(effective);
    analysis.aal = fresh_release(original);
    analysis.max_age = Some(max_age);
    // The joined test reads the age only to compare it with `max_age`;
    // whether the rule as written reads it too is the original's business.
    analysis.reads_age = analyse(original).reads_age;
    analysis
}

/// A freshness rule's release as the one-pass ladder needs it: its `when`
/// clauses must not read the rung and each `unless` clause must be a plain
/// lower bound on the level (released at the lowest; at any level when
/// there is none). Then it fires at a fresh rung exactly when it fired as
/// the user is and the level is below its release. An `unless` on anything
/// else (`context.device.known`, say) could be what keeps it firing at
/// every rung, so such rules are evaluated rung by rung.
fn fresh_release(original: &Policy) -> AalUse {
    let json = original.to_json().ok();
    let Some(clauses) = json.as_ref().and_then(clauses) else {
        return AalUse::Other;
    };
    let mut release: Option<i64> = None;
    for (kind, body) in clauses {
        match (kind, threshold(body)) {
            ("when", _) if !reads_aal(body) => {}
            ("unless", Some(k)) => release = Some(release.map_or(k, |old| old.min(k))),
            _ => return AalUse::Other,
        }
    }
    AalUse::ReleasedAt(release.unwrap_or(1))
}

/// A policy's conditions (its JSON form) as (`when` or `unless`, body);
/// `None` when one is not of that shape.
fn clauses(policy: &Value) -> Option<Vec<(&str, &Value)>> {
    policy
        .get("conditions")?
        .as_array()?
        .iter()
        .map(|c| Some((c.get("kind")?.as_str()?, c.get("body")?)))
        .collect()
}

fn aal_use(effect: Effect, policy: &Value) -> AalUse {
    let Some(clauses) = clauses(policy) else {
        return AalUse::Other;
    };
    let mut released_at: Option<i64> = None;
    for (kind, body) in clauses {
        if !reads_aal(body) {
            continue;
        }
        match (effect, kind, threshold(body)) {
            // `unless { aal >= k }` on a forbid: released from level k up.
            // Several such clauses release at the lowest of them.
            (Effect::Forbid, "unless", Some(k)) => {
                released_at = Some(released_at.map_or(k, |old| old.min(k)));
            }
            _ => return AalUse::Other,
        }
    }
    released_at.map_or(AalUse::Independent, AalUse::ReleasedAt)
}

/// The journey test a `when` clause evaluates first, found by following the
/// left operands of `&&`.
fn guard(condition: &Value) -> Option<Guard> {
    if condition.get("kind").and_then(Value::as_str) != Some("when") {
        return None;
    }
    let mut first = condition.get("body")?;
    while let Some(and) = first.get("&&") {
        first = and.get("left")?;
    }
    let (op, args) = first.as_object().filter(|o| o.len() == 1)?.iter().next()?;
    let equal = match op.as_str() {
        "==" => true,
        "!=" => false,
        _ => return None,
    };
    let (left, right) = (args.get("left")?, args.get("right")?);
    let string = |e: &Value| e.get("Value").and_then(Value::as_str).map(str::to_owned);
    let journey_field = |e: &Value| match context_path(e)?.as_slice() {
        ["journey", field] => Some((*field).to_owned()),
        _ => None,
    };
    let (field, value) = match (journey_field(left), journey_field(right)) {
        (Some(field), None) => (field, string(right)?),
        (None, Some(field)) => (field, string(left)?),
        _ => return None,
    };
    Some(Guard {
        field,
        equal,
        value,
    })
}

/// Collects the context paths an expression reads: each maximal
/// `context.a.b…`, and for `… has x` the tested path with `x`.
fn collect_reads<'a>(expr: &'a Value, reads: &mut Vec<Vec<&'a str>>) {
    if let Some(path) = context_path(expr) {
        reads.push(path);
        return;
    }
    if let Some(has) = expr.get("has")
        && let Some(mut path) = has.get("left").and_then(context_path)
    {
        match has.get("attr") {
            Some(Value::String(attr)) => path.push(attr),
            Some(Value::Array(attrs)) => path.extend(attrs.iter().filter_map(Value::as_str)),
            // Unknown form: the whole record it tests.
            _ => {}
        }
        reads.push(path);
        return;
    }
    match expr {
        Value::Object(fields) => fields.values().for_each(|v| collect_reads(v, reads)),
        Value::Array(items) => items.iter().for_each(|v| collect_reads(v, reads)),
        _ => {}
    }
}

/// `context.a.b…` as the list of attribute names, for an expression that is
/// nothing but such a path.
fn context_path(expr: &Value) -> Option<Vec<&str>> {
    if expr.get("Var").and_then(Value::as_str) == Some("context") {
        return Some(Vec::new());
    }
    let get = expr.get(".")?;
    let mut path = context_path(get.get("left")?)?;
    path.push(get.get("attr")?.as_str()?);
    Some(path)
}

/// Whether a value read along this path can contain what the ladder
/// varies, the level or the authentication's age: the value itself,
/// something inside it, or a record holding it (`context.authn`,
/// `context`).
fn path_holds_rung(path: &[&str]) -> bool {
    [AAL_PATH, AGE_PATH]
        .iter()
        .any(|varied| path_holds(path, varied))
}

/// Whether reading `path` reads `field`: the field itself, something
/// inside it, or a record holding it.
fn path_holds(path: &[&str], field: &[&str]) -> bool {
    path.iter().zip(field).all(|(a, b)| a == b)
}

/// Whether evaluating `expr` can read what the ladder varies. `has` tests
/// only presence, which the ladder does not change for the level
/// (`context.authn has aal`) but does for the age (present at every
/// stepped-up rung).
fn reads_aal(expr: &Value) -> bool {
    if let Some(path) = context_path(expr) {
        return path_holds_rung(&path);
    }
    if let Some(has) = expr.get("has")
        && let Some(mut path) = has.get("left").and_then(context_path)
    {
        match has.get("attr") {
            Some(Value::String(attr)) => path.push(attr),
            Some(Value::Array(attrs)) => path.extend(attrs.iter().filter_map(Value::as_str)),
            _ => return true,
        }
        return path.starts_with(&AGE_PATH);
    }
    match expr {
        Value::Object(fields) => fields.values().any(reads_aal),
        Value::Array(items) => items.iter().any(reads_aal),
        _ => false,
    }
}

/// `k` for a clause that is exactly a lower bound on the level:
/// `aal >= k`, `aal > k - 1`, `k <= aal` or `k - 1 < aal`.
fn threshold(body: &Value) -> Option<i64> {
    let is_aal = |e: &Value| context_path(e).is_some_and(|p| p == AAL_PATH);
    let literal = |e: &Value| e.get("Value").and_then(Value::as_i64);
    let (op, args) = body.as_object().filter(|o| o.len() == 1)?.iter().next()?;
    let (left, right) = (args.get("left")?, args.get("right")?);
    match op.as_str() {
        ">=" if is_aal(left) => literal(right),
        ">" if is_aal(left) => literal(right)?.checked_add(1),
        "<=" if is_aal(right) => literal(left),
        "<" if is_aal(right) => literal(left)?.checked_add(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn analyse(text: &str) -> AalUse {
        super::analyse(&Policy::from_str(text).unwrap()).aal
    }

    fn full(text: &str) -> Analysis {
        super::analyse(&Policy::from_str(text).unwrap())
    }

    #[test]
    fn reads_are_the_paths_a_policy_touches() {
        let policy = full(
            "forbid (principal, action, resource) \
             when { context.geo has country_known && !context.geo.country_known } \
             unless { context.authn.aal >= 2 };",
        );
        assert_eq!(
            policy.reads,
            [
                vec!["geo", "country_known"],
                vec!["geo", "country_known"],
                vec!["authn", "aal"]
            ]
        );
        let whole = full("forbid (principal, action, resource) when { context.ip == context.ip };");
        assert_eq!(whole.reads, [vec!["ip"], vec!["ip"]]);
    }

    #[test]
    fn a_condition_opening_with_another_journey_never_applies() {
        let high = full(
            r#"forbid (principal, action, resource)
               when { context.journey.tier == "high" && context.device.known };"#,
        );
        assert!(high.applies_to("payment", "high"));
        assert!(!high.applies_to("login", "medium"));
        let not_login = full(
            r#"forbid (principal, action, resource)
               when { "login" != context.journey.name };"#,
        );
        assert!(!not_login.applies_to("login", "medium"));
        assert!(not_login.applies_to("signup", "low"));
        // A journey test that is not evaluated first proves nothing: what
        // comes before it may fail on any journey.
        let later = full(
            r#"forbid (principal, action, resource)
               when { context.behaviour.user_failures * 2 > 1 && context.journey.tier == "high" };"#,
        );
        assert!(later.applies_to("login", "medium"));
        let unless = full(
            r#"forbid (principal, action, resource) unless { context.journey.tier == "high" };"#,
        );
        assert!(unless.applies_to("login", "medium"));
    }

    #[test]
    fn a_forbid_released_by_assurance_names_its_level() {
        let forbid = "forbid (principal, action, resource) when { context.device.known } \
                      unless { context.authn.aal >= 2 };";
        assert_eq!(analyse(forbid), AalUse::ReleasedAt(2));
        let strict = "forbid (principal, action, resource) unless { context.authn.aal > 2 };";
        assert_eq!(analyse(strict), AalUse::ReleasedAt(3));
        let flipped = "forbid (principal, action, resource) unless { 3 <= context.authn.aal };";
        assert_eq!(analyse(flipped), AalUse::ReleasedAt(3));
        let two = "forbid (principal, action, resource) \
                   unless { context.authn.aal >= 3 } unless { context.authn.aal >= 2 };";
        assert_eq!(analyse(two), AalUse::ReleasedAt(2));
    }

    #[test]
    fn policies_that_never_read_the_level_are_independent() {
        let hard = "forbid (principal, action, resource) when { context.ip.deny_listed };";
        assert_eq!(analyse(hard), AalUse::Independent);
        let permit = "permit (principal, action, resource);";
        assert_eq!(analyse(permit), AalUse::Independent);
        let amr = r#"forbid (principal, action, resource)
                     unless { context.authn.amr.contains("hwk") && context.authn has aal };"#;
        assert_eq!(analyse(amr), AalUse::Independent);
    }

    #[test]
    fn any_other_use_of_the_level_is_evaluated_rung_by_rung() {
        for text in [
            // The level in a `when`: firing could start at a higher level.
            "forbid (principal, action, resource) when { context.authn.aal >= 2 };",
            // A permit that needs assurance.
            "permit (principal, action, resource) when { context.authn.aal >= 2 };",
            // Not a plain lower bound.
            "forbid (principal, action, resource) unless { context.authn.aal == 2 };",
            "forbid (principal, action, resource) \
             unless { context.authn.aal >= 2 && context.device.known };",
            // Whole records that hold the level.
            "forbid (principal, action, resource) \
             unless { context.authn == {aal: 2, amr: []} };",
            "forbid (principal, action, resource) when { context == context };",
        ] {
            assert_eq!(analyse(text), AalUse::Other, "{text}");
        }
    }
}

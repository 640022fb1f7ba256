//! Freshness rules: a forbid annotated `@max_age("15m")` is released only
//! by an authentication at most that old, besides whatever its `unless`
//! clauses ask.
//!
//! ```cedar
//! @id("payout-needs-recent-aal2")
//! @reason("changing payouts needs multi-factor authentication from the last 15 minutes")
//! @max_age("15m")
//! forbid (principal, action == Action::"change_payout", resource)
//! unless { context.authn.aal >= 2 };
//! ```
//!
//! reads "AAL2, authenticated within 15 minutes". At load stepgate joins
//! the age test to the forbid's release, so Cedar evaluates
//! `unless { (context.authn.aal >= 2) && context.authn has
//! seconds_since_auth && context.authn.seconds_since_auth <= 900 }`: an
//! authentication of unknown age is not fresh. On the assurance ladder a
//! stepped-up rung is an authentication made just now (age 0), and
//! authenticating again at the user's own level is a rung of its own, so a
//! stale AAL2 is asked to authenticate again at AAL2 (RFC 9470 §3's
//! `max_age`), not denied.

use std::time::Duration;

use cedar_policy::{Effect, Policy, PolicyId};
use serde_json::{Value, json};

/// The annotation naming a forbid's largest authentication age.
pub const ANNOTATION: &str = "max_age";

/// The largest `@max_age` accepted: 30 days, past any reauthentication
/// limit NIST SP 800-63B-4 sets (AAL2: 24 hours overall).
pub const LONGEST: Duration = Duration::from_secs(30 * 24 * 3600);

/// `@max_age("15m")`'s value in whole seconds (1 s ..= 30 days), from a
/// duration such as `900s`, `15m`, `1h 30m` or `12h`.
///
/// # Errors
/// A message naming what is wrong with `text`.
pub fn parse(text: &str) -> Result<u32, String> {
    let age = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`@{ANNOTATION}(\"{text}\")` is not a duration such as \"15m\" or \"12h\": {e}")
    })?;
    if age < Duration::from_secs(1) || age > LONGEST {
        return Err(format!(
            "`@{ANNOTATION}(\"{text}\")` must be between 1 second and 30 days"
        ));
    }
    if age.subsec_nanos() != 0 {
        return Err(format!("`@{ANNOTATION}(\"{text}\")` must be whole seconds"));
    }
    u32::try_from(age.as_secs()).map_err(|_| format!("`@{ANNOTATION}(\"{text}\")` is too long"))
}

/// `context.authn`
fn authn() -> Value {
    json!({ ".": { "left": { "Var": "context" }, "attr": "authn" } })
}

/// `context.authn has seconds_since_auth && context.authn.seconds_since_auth <= max_age`
fn fresh(max_age: u32) -> Value {
    json!({ "&&": {
        "left": { "has": { "left": authn(), "attr": "seconds_since_auth" } },
        "right": { "<=": {
            "left": { ".": { "left": authn(), "attr": "seconds_since_auth" } },
            "right": { "Value": max_age }
        } }
    } })
}

/// The forbid `policy` (named `id`) with its release joined to an
/// authentication at most `max_age` seconds old: its `unless` clauses
/// (any of which released it) become one, `(u1 || u2 …) && fresh`, or
/// `unless { fresh }` when it has none.
///
/// # Errors
/// The policy is not a forbid, or Cedar cannot express it as JSON.
pub fn rewrite(policy: &Policy, id: PolicyId, max_age: u32) -> Result<Policy, String> {
    if policy.effect() != Effect::Forbid {
        return Err(format!(
            "`@{ANNOTATION}` belongs on a forbid: it says what authentication age releases it"
        ));
    }
    let mut est = policy.to_json().map_err(|e| e.to_string())?;
    let conditions = est
        .get_mut("conditions")
        .and_then(Value::as_array_mut)
        .ok_or("the policy has no condition list")?;
    let is_unless = |c: &Value| c.get("kind").and_then(Value::as_str) == Some("unless");
    // The joined clause stands where the first `unless` stood, so the
    // conditions are still evaluated in the order they were written.
    let at = conditions
        .iter()
        .position(is_unless)
        .unwrap_or(conditions.len());
    let (unless, mut kept): (Vec<Value>, Vec<Value>) = conditions.drain(..).partition(is_unless);
    let released = unless
        .into_iter()
        .filter_map(|c| c.get("body").cloned())
        .reduce(|left, right| json!({ "||": { "left": left, "right": right } }));
    let body = match released {
        Some(released) => json!({ "&&": { "left": released, "right": fresh(max_age) } }),
        None => fresh(max_age),
    };
    let at = at.min(kept.len());
    kept.insert(at, json!({ "kind": "unless", "body": body }));
    *conditions = kept;
    Policy::from_json(Some(id), est).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn durations_read_as_whole_seconds_within_bounds() {
        assert_eq!(parse("15m"), Ok(900));
        assert_eq!(parse("1h 30m"), Ok(5400));
        assert_eq!(parse("900s"), Ok(900));
        assert_eq!(parse("30days"), Ok(30 * 24 * 3600));
        for bad in ["", "soon", "0s", "31days", "1500ms", "-5m"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_release_needs_the_old_condition_and_a_fresh_authentication() {
        let policy = Policy::from_str(
            r#"@id("p") forbid (principal, action, resource)
               when { context.journey.tier == "high" }
               unless { context.authn.aal >= 2 } unless { context.authn.aal >= 3 };"#,
        )
        .unwrap();
        let rewritten = rewrite(&policy, PolicyId::new("p"), 900).unwrap();
        let text = rewritten.to_string();
        assert!(text.contains("when"), "{text}");
        assert_eq!(text.matches("unless").count(), 1, "{text}");
        assert!(text.contains("seconds_since_auth <= 900"), "{text}");
        assert!(text.contains("||"), "{text}");
        let bare = Policy::from_str("forbid (principal, action, resource);").unwrap();
        let rewritten = rewrite(&bare, PolicyId::new("b"), 60).unwrap().to_string();
        assert!(rewritten.contains("unless"), "{rewritten}");
        let permit = Policy::from_str("permit (principal, action, resource);").unwrap();
        assert!(rewrite(&permit, PolicyId::new("x"), 60).is_err());
    }
}

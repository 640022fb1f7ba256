//! Memoised ladder answers: a journey's answer is a pure function of its
//! policy slice, the user's current level, the principal and resource
//! where a policy names them, and the context fields its policies read;
//! sign-ins repeat a few such contexts, so each is evaluated once.
//!
//! The authentication's age rarely repeats, but the policies only compare
//! it with their `@max_age` bounds: it is keyed (and evaluated) as its age
//! class, the smallest bound it is within. A journey whose policies read
//! the age any other way, or read a value that changes with every request
//! (seconds since the last success, distance and speed since the last
//! sign-in), is not memoised. Keys hold a serial unique to the journey's
//! slice, so an answer never outlives the policy version it was made by.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cedar_policy::EntityUid;

use crate::decision::{Aal, AttrValue};
use crate::signals::Signals;

use super::analysis::Analysis;
use super::context::{self, ContextParts, Shape};
use super::ladder::{self, LadderError, LadderRequest, LadderResult};
use super::{JourneyPolicies, PolicySnapshot};

/// Context fields whose values change with every request, so an answer
/// keyed on them would never be asked for again.
const UNREPEATED: [[&str; 2]; 3] = [
    ["behaviour", "seconds_since_last_success"],
    ["geo", "distance_km"],
    ["geo", "speed_kmh"],
];

/// The longest key kept, in bytes; a request with a longer one is
/// evaluated and counted as a bypass. The bundled pack's keys are about 40
/// bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Whether and how a journey's answers are memoised; made once per slice.
#[derive(Debug)]
pub struct MemoPlan {
    /// Unique in the process (the slice's own; a reload makes new ones).
    serial: u64,
    /// The `@max_age` bounds the slice's freshness rules compare the age
    /// with, in seconds, ascending and without repeats.
    ages: Vec<u32>,
    /// Whether a policy names the principal, so the key must hold it.
    principal: bool,
    /// Whether a policy names the resource (the tenant).
    resource: bool,
}

/// The key of one memoised answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemoKey {
    serial: u64,
    bytes: Box<[u8]>,
}

fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

impl MemoPlan {
    /// The plan for a slice whose policies are `analyses` and read
    /// `shape`; `None` when its answers are not to be memoised.
    pub fn new<'a>(
        analyses: impl IntoIterator<Item = &'a Analysis>,
        shape: &Shape,
    ) -> Option<Self> {
        let unrepeated = UNREPEATED.iter().any(|[record, field]| {
            shape
                .field(record)
                .is_some_and(|record| record.field(field).is_some())
        });
        if unrepeated {
            return None;
        }
        let mut ages = Vec::new();
        let (mut principal, mut resource) = (false, false);
        for analysis in analyses {
            if analysis.reads_age {
                return None;
            }
            ages.extend(analysis.max_age);
            principal |= analysis.principal;
            resource |= analysis.resource;
        }
        ages.sort_unstable();
        ages.dedup();
        Some(Self {
            serial: next_serial(),
            ages,
            principal,
            resource,
        })
    }

    /// The age the answer is evaluated at: the smallest bound `age` is
    /// within, or one past the largest. For every bound `b`, `age <= b`
    /// exactly when the class is, and an unknown age stays unknown.
    pub fn age_class(&self, age: Option<i64>) -> Option<i64> {
        let age = age?;
        let within = self.ages.iter().find(|bound| age <= i64::from(**bound));
        Some(match (within, self.ages.last()) {
            (Some(bound), _) => i64::from(*bound),
            (None, Some(largest)) => i64::from(*largest) + 1,
            // No bound: nothing reads the age.
            (None, None) => 0,
        })
    }

    /// The key of the answer to `request` on the slice whose policies read
    /// `shape` (the one this plan was made for).
    pub fn key(&self, shape: &Shape, request: &Asked<'_>) -> MemoKey {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&request.aal.number().to_le_bytes());
        // INVARIANT: the principal's and the resource's entity types are
        // one per snapshot (`EntityTypes`), so their ids tell them apart.
        if self.principal {
            context::write_str(&mut bytes, 8, request.principal.id().unescaped());
        }
        if self.resource {
            context::write_str(&mut bytes, 9, request.resource.id().unescaped());
        }
        if let Some(authn) = shape.field("authn") {
            let signals = &request.signals.authn;
            if authn.field("amr").is_some() {
                bytes.extend_from_slice(&signals.amr.len().to_le_bytes());
                for method in &signals.amr {
                    context::write_str(&mut bytes, 10, method);
                }
            }
            if authn.field("seconds_since_auth").is_some() {
                match self.age_class(signals.seconds_since_auth) {
                    Some(class) => {
                        bytes.push(11);
                        bytes.extend_from_slice(&class.to_le_bytes());
                    }
                    None => bytes.push(0),
                }
            }
        }
        context::write_key(&mut bytes, request.signals, request.attributes, shape);
        MemoKey {
            serial: self.serial,
            bytes: bytes.into_boxed_slice(),
        }
    }
}

/// One question for the ladder: the user at `aal`, with these signals
/// and caller attributes.
#[derive(Clone, Copy)]
pub struct Asked<'a> {
    /// The user's current level.
    pub aal: Aal,
    /// `User::"<user id>"`.
    pub principal: &'a EntityUid,
    /// `Tenant::"<tenant>"`.
    pub resource: &'a EntityUid,
    /// The request's signals, as gathered.
    pub signals: &'a Signals,
    /// The caller's journey attributes.
    pub attributes: &'a BTreeMap<String, AttrValue>,
}

/// The bounded store of memoised answers, shared by every journey and
/// policy version; the least useful answers are dropped first.
pub struct LadderMemo {
    answers: quick_cache::sync::Cache<MemoKey, Arc<LadderResult>>,
}

impl std::fmt::Debug for LadderMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LadderMemo")
            .field("answers", &self.answers.len())
            .finish()
    }
}

impl LadderMemo {
    /// Holds up to about `entries` answers.
    pub fn new(entries: usize) -> Self {
        Self {
            answers: quick_cache::sync::Cache::new(entries),
        }
    }

    /// The answer kept under `key`, if any.
    pub fn get(&self, key: &MemoKey) -> Option<Arc<LadderResult>> {
        self.answers.get(key)
    }

    /// Keeps `answer` under `key`, dropping a less used one when full.
    pub fn insert(&self, key: MemoKey, answer: Arc<LadderResult>) {
        self.answers.insert(key, answer);
    }

    /// Drops every answer (the policies changed; older answers could no
    /// longer be asked for anyway).
    pub fn clear(&self) {
        self.answers.clear();
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

/// What the cache did for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// An answer made earlier for the same context was reused.
    Hit,
    /// The policies were evaluated and the answer kept.
    Miss,
    /// The journey's answers are not memoised (or there is no cache).
    Bypass,
}

impl CacheResult {
    /// The `result` label of `stepgate_policy_cache_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// The ladder's answer to `asked` on `journey` (a slice of `snapshot`): a
/// memoised one when `memo` holds one for the same key; otherwise the
/// ladder is climbed, at the age's class when the journey is memoised, and
/// the answer kept.
///
/// # Errors
/// The context cannot be built from the caller's attributes
/// ([`LadderError::Attributes`]), or Cedar refused the request.
pub fn evaluate(
    memo: Option<&LadderMemo>,
    snapshot: &PolicySnapshot,
    journey: &JourneyPolicies,
    asked: &Asked<'_>,
) -> Result<(Arc<LadderResult>, CacheResult), LadderError> {
    let keyed = memo
        .zip(journey.memo())
        .map(|(memo, plan)| (memo, plan, plan.key(journey.shape(), asked)))
        // A key this long (a long user id, large attributes) is not kept:
        // entries are counted, not weighed, so this bounds the cache's size.
        .filter(|(_, _, key)| key.bytes.len() <= MAX_KEY_BYTES);
    if let Some((memo, _, key)) = &keyed
        && let Some(answer) = memo.get(key)
    {
        return Ok((answer, CacheResult::Hit));
    }
    let mut parts = ContextParts::new(asked.signals, asked.attributes, journey.shape())
        .map_err(LadderError::Attributes)?;
    if let Some((_, plan, _)) = &keyed {
        // The answer kept is the one every age of the class gets.
        parts = parts.with_age(plan.age_class(asked.signals.authn.seconds_since_auth));
    }
    let request = LadderRequest {
        principal: asked.principal,
        journey,
        resource: asked.resource,
        context: &parts,
    };
    let answer = Arc::new(ladder::evaluate(snapshot, &request, asked.aal)?);
    Ok(match keyed {
        Some((memo, _, key)) => {
            memo.insert(key, Arc::clone(&answer));
            (answer, CacheResult::Miss)
        }
        None => (answer, CacheResult::Bypass),
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::Policy;

    use super::*;
    use crate::policy::analysis::{analyse, analyse_fresh};
    use crate::policy::freshness;

    fn analysed(text: &str) -> Analysis {
        analyse(&Policy::from_str(text).unwrap_or_else(|e| panic!("{e}")))
    }

    fn fresh(text: &str, max_age: u32) -> Analysis {
        let original = Policy::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let id = original.id().clone();
        let effective =
            freshness::rewrite(&original, id, max_age).unwrap_or_else(|e| panic!("{e}"));
        analyse_fresh(&original, &effective, max_age)
    }

    fn plan(analyses: &[Analysis]) -> Option<MemoPlan> {
        let mut shape = Shape::empty();
        for path in analyses.iter().flat_map(|a| &a.reads) {
            shape.mark(path);
        }
        MemoPlan::new(analyses, &shape)
    }

    const FORBID_HIGH: &str =
        r#"forbid (principal, action, resource) when { context.journey.tier == "high" };"#;

    #[test]
    fn an_age_is_keyed_by_the_smallest_bound_it_is_within() {
        let plan = plan(&[fresh(FORBID_HIGH, 900), fresh(FORBID_HIGH, 3600)])
            .unwrap_or_else(|| panic!("memoised"));
        let class = |age| plan.age_class(age);
        assert_eq!(class(None), None);
        for (age, expected) in [
            (-30, 900),
            (0, 900),
            (900, 900),
            (901, 3600),
            (3600, 3600),
            (3601, 3601),
            (86_400, 3601),
        ] {
            assert_eq!(class(Some(age)), Some(expected), "{age} s");
            // The class answers every bound's test as the age does.
            for bound in [900, 3600] {
                assert_eq!(age <= bound, expected <= bound, "{age} s against {bound}");
            }
        }
    }

    #[test]
    fn an_age_read_by_hand_or_a_value_that_never_repeats_is_not_memoised() {
        let by_hand = analysed(
            "forbid (principal, action, resource) unless { context.authn has seconds_since_auth && context.authn.seconds_since_auth < 60 };",
        );
        assert!(by_hand.reads_age);
        assert!(plan(&[by_hand]).is_none());
        for text in [
            "forbid (principal, action, resource) when { context.authn == {aal: 1} };",
            "forbid (principal, action, resource) when { context has authn };",
            "forbid (principal, action, resource) when { context == {} };",
            "forbid (principal, action, resource) when { {a: context.authn}.a has seconds_since_auth };",
        ] {
            assert!(plan(&[analysed(text)]).is_none(), "{text}");
        }
        // A freshness rule that also reads the age itself.
        let both = fresh(
            "forbid (principal, action, resource) when { context.authn has seconds_since_auth && context.authn.seconds_since_auth > 5 };",
            900,
        );
        assert!(plan(&[both]).is_none());
        for field in [
            "context.behaviour has seconds_since_last_success",
            "context.geo has distance_km",
            "context.geo has speed_kmh",
        ] {
            let text = format!("forbid (principal, action, resource) when {{ {field} }};");
            assert!(plan(&[analysed(&text)]).is_none(), "{field}");
        }
        // `@max_age` alone, and ordinary reads, are memoised.
        assert!(plan(&[fresh(FORBID_HIGH, 900), analysed(FORBID_HIGH)]).is_some());
    }

    #[test]
    fn the_principal_and_resource_are_keyed_only_where_a_policy_names_them() {
        let cases = [
            ("permit (principal, action, resource);", false, false),
            (
                r#"forbid (principal == User::"m", action, resource);"#,
                true,
                false,
            ),
            (
                r#"forbid (principal is User, action, resource in Tenant::"b");"#,
                true,
                true,
            ),
            (
                r#"forbid (principal, action, resource) when { resource == Tenant::"b" };"#,
                false,
                true,
            ),
            (
                r#"forbid (principal, action, resource) when { principal == User::"m" };"#,
                true,
                false,
            ),
            (
                r#"forbid (principal in User::"g", action, resource);"#,
                true,
                false,
            ),
            (
                r#"forbid (principal is User in User::"g", action, resource);"#,
                true,
                false,
            ),
            (
                r#"forbid (principal, action, resource is Tenant);"#,
                false,
                true,
            ),
            (
                r#"forbid (principal, action, resource) when { principal has name };"#,
                true,
                false,
            ),
        ];
        for (text, principal, resource) in cases {
            let a = analysed(text);
            assert_eq!((a.principal, a.resource), (principal, resource), "{text}");
        }
    }
}

//! Builds the Cedar `context` record from typed signals.
//!
//! Values are constructed directly as Cedar expressions (no JSON round trip).
//! Everything but `authn` is built once per request; the ladder swaps in an
//! `authn` record per assurance level.

use std::collections::BTreeMap;

use cedar_policy::{Context, RestrictedExpression};

use crate::decision::{Aal, AttrValue};
use crate::geo::Anonymity;
use crate::signals::{IpSignals, Signals};

/// A context construction fault. Our own records cannot have duplicate keys,
/// so in practice this only reports caller attributes Cedar cannot hold.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot build the Cedar context: {0}")]
pub struct ContextError(String);

/// Which parts of the context a journey's policies read. Cedar has no way
/// to reach a field that no policy names, so only these are built: the
/// answer is the same, and each request builds less.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Everything under this point.
    Whole,
    /// Only these fields (a record with no fields named is still built).
    Fields(BTreeMap<String, Shape>),
}

impl Shape {
    /// Nothing read yet.
    pub fn empty() -> Self {
        Self::Fields(BTreeMap::new())
    }

    /// Adds a read path; the empty path is the whole context.
    pub fn mark(&mut self, path: &[String]) {
        let Self::Fields(fields) = self else {
            return;
        };
        match path.split_first() {
            None => *self = Self::Whole,
            Some((head, rest)) => fields
                .entry(head.clone())
                .or_insert_with(Self::empty)
                .mark(rest),
        }
    }

    /// The shape of a field, if it is read at all.
    pub fn field(&self, name: &str) -> Option<&Shape> {
        match self {
            Self::Whole => Some(&Self::Whole),
            Self::Fields(fields) => fields.get(name),
        }
    }
}

/// The parts of the context that do not depend on the assurance level.
#[derive(Debug, Clone)]
pub struct ContextParts {
    fixed: Vec<(String, RestrictedExpression)>,
    /// The shape of `authn`, when read.
    authn: Option<Shape>,
    amr: Vec<String>,
    seconds_since_auth: Option<i64>,
}

/// A record of the fields `shape` names.
fn record<'a>(
    shape: &Shape,
    fields: impl IntoIterator<Item = (&'a str, RestrictedExpression)>,
) -> Result<RestrictedExpression, ContextError> {
    RestrictedExpression::new_record(
        fields
            .into_iter()
            .filter(|(k, _)| shape.field(k).is_some())
            .map(|(k, v)| (k.to_owned(), v)),
    )
    .map_err(|e| ContextError(e.to_string()))
}

fn long(value: impl Into<i64>) -> RestrictedExpression {
    RestrictedExpression::new_long(value.into())
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

fn boolean(value: bool) -> RestrictedExpression {
    RestrictedExpression::new_bool(value)
}

/// Converts caller attributes; an attribute record the schema does not
/// declare is caught later, by request validation.
pub fn attribute(value: &AttrValue) -> Result<RestrictedExpression, ContextError> {
    Ok(match value {
        AttrValue::Bool(b) => boolean(*b),
        AttrValue::Long(n) => long(*n),
        AttrValue::String(s) => string(s),
        AttrValue::Set(items) => RestrictedExpression::new_set(
            items.iter().map(attribute).collect::<Result<Vec<_>, _>>()?,
        ),
        AttrValue::Record(fields) => attributes(fields)?,
    })
}

pub fn attributes(
    fields: &BTreeMap<String, AttrValue>,
) -> Result<RestrictedExpression, ContextError> {
    let converted = fields
        .iter()
        .map(|(k, v)| Ok((k.clone(), attribute(v)?)))
        .collect::<Result<Vec<_>, ContextError>>()?;
    RestrictedExpression::new_record(converted).map_err(|e| ContextError(e.to_string()))
}

/// One value of the context before it becomes a Cedar expression: what
/// both the context and a memoised answer's key are built from.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Bool(bool),
    Long(i64),
    Str(&'a str),
}

impl Field<'_> {
    fn expr(self) -> RestrictedExpression {
        match self {
            Self::Bool(b) => boolean(b),
            Self::Long(n) => long(n),
            Self::Str(s) => string(s),
        }
    }
}

/// A record's fields; `None` for an unknown value, which is left out so
/// policies test it with `has`.
type Fields<'a> = [(&'static str, Option<Field<'a>>)];

/// Walks the records of the context built from signals (all but `authn`
/// and `attributes`), in a fixed order, stopping at `visit`'s first error.
fn each_record<'a, E>(
    signals: &'a Signals,
    mut visit: impl FnMut(&'static str, &Fields<'a>) -> Result<(), E>,
) -> Result<(), E> {
    use Field::{Bool, Long, Str};
    visit(
        "journey",
        &[
            ("name", Some(Str(&signals.journey))),
            ("tier", Some(Str(signals.tier.as_str()))),
        ],
    )?;
    visit(
        "device",
        &[
            ("provided", Some(Bool(signals.device.provided))),
            ("known", Some(Bool(signals.device.known))),
        ],
    )?;
    let IpSignals {
        deny_listed,
        reserved,
        asn,
        as_org,
        anonymity: a,
    } = &signals.ip;
    let anonymity = |flag: fn(&Anonymity) -> bool| a.as_ref().map(|a| Bool(flag(a)));
    visit(
        "ip",
        &[
            ("deny_listed", Some(Bool(*deny_listed))),
            ("reserved", Some(Bool(*reserved))),
            ("asn", asn.map(|n| Long(n.into()))),
            ("as_org", as_org.as_deref().map(Str)),
            ("anonymous", anonymity(|a| a.anonymous)),
            ("anonymous_vpn", anonymity(|a| a.anonymous_vpn)),
            ("hosting_provider", anonymity(|a| a.hosting_provider)),
            ("public_proxy", anonymity(|a| a.public_proxy)),
            ("residential_proxy", anonymity(|a| a.residential_proxy)),
            ("tor_exit", anonymity(|a| a.tor_exit)),
        ],
    )?;
    let geo = &signals.geo;
    visit(
        "geo",
        &[
            ("lookup", Some(Str(geo.status.as_str()))),
            ("country", geo.country.as_deref().map(Str)),
            ("country_known", geo.country_known.map(Bool)),
            ("distance_km", geo.distance_km.map(Long)),
            ("speed_kmh", geo.speed_kmh.map(Long)),
            ("impossible_travel", geo.impossible_travel.map(Bool)),
        ],
    )?;
    let b = &signals.behaviour;
    visit(
        "behaviour",
        &[
            ("user_failures", Some(Long(b.user_failures.into()))),
            (
                "user_failures_on_device",
                Some(Long(b.user_failures_on_device.into())),
            ),
            ("ip_failures", Some(Long(b.ip_failures.into()))),
            (
                "ip_distinct_failed_users",
                Some(Long(b.ip_distinct_failed_users.into())),
            ),
            ("first_sign_in", Some(Bool(b.first_sign_in))),
            ("compromised_recently", Some(Bool(b.compromised_recently))),
            (
                "seconds_since_last_success",
                b.seconds_since_last_success.map(Long),
            ),
        ],
    )?;
    visit(
        "risk",
        &[
            ("score", Some(Long(signals.risk.score.into()))),
            ("level", Some(Str(signals.risk.level.as_str()))),
        ],
    )
}

/// The known fields of `fields` that `shape` names, as a Cedar record.
fn known_record(shape: &Shape, fields: &Fields<'_>) -> Result<RestrictedExpression, ContextError> {
    record(
        shape,
        fields
            .iter()
            .filter_map(|(name, value)| value.map(|v| (*name, v.expr()))),
    )
}

impl ContextParts {
    /// The parts `shape` names.
    pub fn new(
        signals: &Signals,
        attrs: &BTreeMap<String, AttrValue>,
        shape: &Shape,
    ) -> Result<Self, ContextError> {
        let mut fixed = Vec::with_capacity(7);
        each_record(signals, |name, fields| {
            if let Some(shape) = shape.field(name) {
                fixed.push((name.to_owned(), known_record(shape, fields)?));
            }
            Ok(())
        })?;
        if shape.field("attributes").is_some() {
            fixed.push(("attributes".to_owned(), attributes(attrs)?));
        }
        Ok(Self {
            fixed,
            authn: shape.field("authn").cloned(),
            amr: signals.authn.amr.clone(),
            seconds_since_auth: signals.authn.seconds_since_auth,
        })
    }

    /// The same parts with the authentication's age replaced (see
    /// [`super::memo`]: a memoised answer is evaluated at its age class).
    #[must_use]
    pub fn with_age(mut self, seconds_since_auth: Option<i64>) -> Self {
        self.seconds_since_auth = seconds_since_auth;
        self
    }

    /// Every part, as the schema declares the context.
    pub fn full(
        signals: &Signals,
        attrs: &BTreeMap<String, AttrValue>,
    ) -> Result<Self, ContextError> {
        Self::new(signals, attrs, &Shape::Whole)
    }

    /// The context as if the user were at `aal`, authenticated as the
    /// request says.
    pub fn at(&self, aal: Aal) -> Result<Context, ContextError> {
        self.at_rung(aal, false)
    }

    /// The context as if the user were at `aal`; with `fresh`, having
    /// authenticated at it just now (`seconds_since_auth` 0), as a step-up
    /// or a repeated authentication would leave them.
    pub fn at_rung(&self, aal: Aal, fresh: bool) -> Result<Context, ContextError> {
        let age = if fresh {
            Some(0)
        } else {
            self.seconds_since_auth
        };
        let authn = match &self.authn {
            Some(shape) => {
                let mut authn = vec![("aal", long(aal.number()))];
                if shape.field("amr").is_some() {
                    let amr = RestrictedExpression::new_set(self.amr.iter().map(|m| string(m)));
                    authn.push(("amr", amr));
                }
                if let Some(age) = age {
                    authn.push(("seconds_since_auth", long(age)));
                }
                Some(("authn".to_owned(), record(shape, authn)?))
            }
            None => None,
        };
        let pairs = self.fixed.iter().cloned().chain(authn);
        Context::from_pairs(pairs).map_err(|e| ContextError(e.to_string()))
    }
}

/// Appends to `key` every value of the context that `shape` names, built
/// from `signals` and `attrs` as [`ContextParts::new`] builds them, except
/// the authentication (which the caller keys as it needs). For one shape
/// the bytes are equal exactly when those values are: each value is
/// written in a fixed order with a tag, and strings with their length.
pub fn write_key(
    key: &mut Vec<u8>,
    signals: &Signals,
    attrs: &BTreeMap<String, AttrValue>,
    shape: &Shape,
) {
    let walked = each_record(signals, |name, fields| {
        if let Some(shape) = shape.field(name) {
            for (field, value) in fields {
                if shape.field(field).is_some() {
                    write_field(key, *value);
                }
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
    match walked {
        Ok(()) => {}
        Err(never) => match never {},
    }
    if shape.field("attributes").is_some() {
        write_attributes(key, attrs);
    }
}

fn write_field(key: &mut Vec<u8>, value: Option<Field<'_>>) {
    match value {
        None => key.push(0),
        Some(Field::Bool(b)) => key.push(if b { 2 } else { 1 }),
        Some(Field::Long(n)) => {
            key.push(3);
            key.extend_from_slice(&n.to_le_bytes());
        }
        Some(Field::Str(s)) => write_str(key, 4, s),
    }
}

/// A tag, the length and the bytes.
pub fn write_str(key: &mut Vec<u8>, tag: u8, s: &str) {
    key.push(tag);
    key.extend_from_slice(&s.len().to_le_bytes());
    key.extend_from_slice(s.as_bytes());
}

fn write_len(key: &mut Vec<u8>, len: usize) {
    key.extend_from_slice(&len.to_le_bytes());
}

fn write_attribute(key: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Bool(b) => write_field(key, Some(Field::Bool(*b))),
        AttrValue::Long(n) => write_field(key, Some(Field::Long(*n))),
        AttrValue::String(s) => write_field(key, Some(Field::Str(s))),
        AttrValue::Set(items) => {
            key.push(5);
            write_len(key, items.len());
            items.iter().for_each(|item| write_attribute(key, item));
        }
        AttrValue::Record(fields) => write_attributes(key, fields),
    }
}

fn write_attributes(key: &mut Vec<u8>, fields: &BTreeMap<String, AttrValue>) {
    key.push(6);
    write_len(key, fields.len());
    for (name, value) in fields {
        write_str(key, 7, name);
        write_attribute(key, value);
    }
}

/// Appends the shape of caller attributes to `key`: their names, nesting
/// and value types, in order, but no value. The schema accepts two
/// attribute maps of one shape alike (their values are plain literals).
pub fn write_attribute_types(key: &mut Vec<u8>, fields: &BTreeMap<String, AttrValue>) {
    key.push(6);
    write_len(key, fields.len());
    for (name, value) in fields {
        write_str(key, 7, name);
        write_attribute_type(key, value);
    }
}

fn write_attribute_type(key: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Bool(_) => key.push(1),
        AttrValue::Long(_) => key.push(3),
        AttrValue::String(_) => key.push(4),
        AttrValue::Set(items) => {
            key.push(5);
            write_len(key, items.len());
            items
                .iter()
                .for_each(|item| write_attribute_type(key, item));
        }
        AttrValue::Record(fields) => write_attribute_types(key, fields),
    }
}

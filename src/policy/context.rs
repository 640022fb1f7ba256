//! Builds the Cedar `context` record from typed signals.
//!
//! Values are constructed directly as Cedar expressions (no JSON round trip).
//! Everything but `authn` is built once per request; the ladder swaps in an
//! `authn` record per assurance level.

use std::collections::BTreeMap;

use cedar_policy::{Context, RestrictedExpression};

use crate::decision::{Aal, AttrValue};
use crate::signals::{GeoSignals, IpSignals, Signals};

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

/// `context.ip`; unknown values are left out, so policies test them with
/// `has`.
fn ip_record(shape: &Shape, ip: &IpSignals) -> Result<RestrictedExpression, ContextError> {
    let mut fields = vec![
        ("deny_listed", boolean(ip.deny_listed)),
        ("reserved", boolean(ip.reserved)),
    ];
    if let Some(asn) = ip.asn {
        fields.push(("asn", long(asn)));
    }
    if let Some(org) = &ip.as_org {
        fields.push(("as_org", string(org)));
    }
    if let Some(a) = ip.anonymity {
        fields.extend([
            ("anonymous", boolean(a.anonymous)),
            ("anonymous_vpn", boolean(a.anonymous_vpn)),
            ("hosting_provider", boolean(a.hosting_provider)),
            ("public_proxy", boolean(a.public_proxy)),
            ("residential_proxy", boolean(a.residential_proxy)),
            ("tor_exit", boolean(a.tor_exit)),
        ]);
    }
    record(shape, fields)
}

/// `context.geo`; unknown values are left out.
fn geo_record(shape: &Shape, geo: &GeoSignals) -> Result<RestrictedExpression, ContextError> {
    let mut fields = vec![("lookup", string(geo.status.as_str()))];
    if let Some(country) = &geo.country {
        fields.push(("country", string(country)));
    }
    if let Some(known) = geo.country_known {
        fields.push(("country_known", boolean(known)));
    }
    if let Some(km) = geo.distance_km {
        fields.push(("distance_km", long(km)));
    }
    if let Some(kmh) = geo.speed_kmh {
        fields.push(("speed_kmh", long(kmh)));
    }
    if let Some(impossible) = geo.impossible_travel {
        fields.push(("impossible_travel", boolean(impossible)));
    }
    record(shape, fields)
}

impl ContextParts {
    /// The parts `shape` names.
    pub fn new(
        signals: &Signals,
        attrs: &BTreeMap<String, AttrValue>,
        shape: &Shape,
    ) -> Result<Self, ContextError> {
        let mut fixed = Vec::with_capacity(7);
        if let Some(shape) = shape.field("journey") {
            let journey = record(
                shape,
                [
                    ("name", string(&signals.journey)),
                    ("tier", string(signals.tier.as_str())),
                ],
            )?;
            fixed.push(("journey".to_owned(), journey));
        }
        if let Some(shape) = shape.field("device") {
            let device = record(
                shape,
                [
                    ("provided", boolean(signals.device.provided)),
                    ("known", boolean(signals.device.known)),
                ],
            )?;
            fixed.push(("device".to_owned(), device));
        }
        if let Some(shape) = shape.field("ip") {
            fixed.push(("ip".to_owned(), ip_record(shape, &signals.ip)?));
        }
        if let Some(shape) = shape.field("geo") {
            fixed.push(("geo".to_owned(), geo_record(shape, &signals.geo)?));
        }
        if let Some(shape) = shape.field("behaviour") {
            let b = &signals.behaviour;
            let mut behaviour = vec![
                ("user_failures", long(b.user_failures)),
                ("user_failures_on_device", long(b.user_failures_on_device)),
                ("ip_failures", long(b.ip_failures)),
                ("ip_distinct_failed_users", long(b.ip_distinct_failed_users)),
                ("first_sign_in", boolean(b.first_sign_in)),
                ("compromised_recently", boolean(b.compromised_recently)),
            ];
            if let Some(age) = b.seconds_since_last_success {
                behaviour.push(("seconds_since_last_success", long(age)));
            }
            fixed.push(("behaviour".to_owned(), record(shape, behaviour)?));
        }
        if let Some(shape) = shape.field("risk") {
            let risk = record(
                shape,
                [
                    ("score", long(signals.risk.score)),
                    ("level", string(signals.risk.level.as_str())),
                ],
            )?;
            fixed.push(("risk".to_owned(), risk));
        }
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

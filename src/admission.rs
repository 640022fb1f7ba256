//! Admission: a request as any front door received it, checked against
//! every rule that does not need the policies or the store, and turned into
//! domain input, or the first broken rule naming its field.
//!
//! Every door (gRPC, HTTP/JSON, AuthZEN, ext_authz, forward-auth) fills an
//! [`DecideAsk`] or a [`ReportAsk`] from its own wire format and calls
//! [`decide`] or [`report`]; so every door bounds, refuses and names fields
//! the same way. The rules that need a policy snapshot (the journey in the
//! catalog, attributes against the schema) or the clock (`auth_time`) run
//! next, in the engine, before anything is read from the store.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::decision::{
    Aal, AttrValue, Authn, DEFAULT_TENANT, DecideInput, DecisionId, FieldError, ForgetInput,
    OutcomeEvent, ReportInput, Subject,
};
use crate::identifiers;
use crate::policy::catalog::{self, MAX_JOURNEY_NAME};

/// Longest user id, in bytes.
pub const MAX_USER_ID: usize = 256;
/// Longest tenant, in bytes.
pub const MAX_TENANT: usize = 128;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID: usize = 256;
/// Longest user agent, in bytes (never stored).
pub const MAX_USER_AGENT: usize = 512;
/// Most authentication method references (RFC 8176).
pub const MAX_AMR_VALUES: usize = 16;
/// Longest authentication method reference, in bytes.
pub const MAX_AMR_VALUE: usize = 32;
/// Longest caller correlation id, in bytes.
pub const MAX_REQUEST_ID: usize = 128;
/// Deepest nesting of journey attributes.
pub const MAX_ATTRIBUTE_DEPTH: usize = 4;
/// Most journey attribute values, nested ones included.
pub const MAX_ATTRIBUTE_VALUES: usize = 64;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// Longest attribute string, in bytes.
pub const MAX_ATTRIBUTE_STRING: usize = 1024;
/// Longest IP address text, in bytes.
const MAX_IP_TEXT: usize = 64;

type Result<T> = std::result::Result<T, FieldError>;

/// Who a request is about, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubjectAsk<'a> {
    pub user_id: &'a str,
    /// Empty: the default tenant.
    pub tenant: &'a str,
}

/// What the user already proved, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthnAsk<'a> {
    /// 0 (unknown, read as 1) to 3.
    pub aal: u32,
    pub amr: &'a [String],
    /// Unix seconds; 0 when unknown.
    pub auth_time: i64,
}

/// The device, as received. A door that has no device id sends no
/// `DeviceAsk` at all; an empty `id` is a caller's bug and is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceAsk<'a> {
    pub id: &'a str,
    pub user_agent: &'a str,
}

/// A Decide as a door received it.
#[derive(Debug, Clone, Copy)]
pub struct DecideAsk<'a, V> {
    pub journey: &'a str,
    pub subject: Option<SubjectAsk<'a>>,
    pub authn: Option<AuthnAsk<'a>>,
    pub device: Option<DeviceAsk<'a>>,
    pub ip: Option<&'a str>,
    /// The journey attributes: a record of the door's own values.
    pub attributes: Option<&'a [(&'a str, &'a V)]>,
    pub request_id: &'a str,
}

/// The event of a report, as a door read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAsk<'a> {
    Missing,
    /// Named, but not an event stepgate knows; the text is the door's own
    /// spelling of it.
    Unknown(&'a str),
    Known(OutcomeEvent),
}

/// A ReportOutcome as a door received it.
#[derive(Debug, Clone, Copy)]
pub struct ReportAsk<'a> {
    pub journey: &'a str,
    pub subject: Option<SubjectAsk<'a>>,
    pub device: Option<DeviceAsk<'a>>,
    pub ip: Option<&'a str>,
    pub event: EventAsk<'a>,
    /// Empty: no decision named.
    pub decision_id: &'a str,
    /// 0: not said.
    pub reached_aal: u32,
}

/// A ForgetUser as a door received it.
#[derive(Debug, Clone, Copy)]
pub struct ForgetAsk<'a> {
    pub subject: Option<SubjectAsk<'a>>,
    /// Erase the user id in every tenant; the subject's tenant must then
    /// be empty.
    pub all_tenants: bool,
}

/// One attribute value as a door holds it (a protobuf `Value`, a JSON
/// value), seen through the shapes Cedar can hold.
pub trait AttrNode: Sized {
    fn view(&self) -> AttrView<'_, Self>;
}

/// What an attribute value is.
#[derive(Debug)]
pub enum AttrView<'a, V> {
    Null,
    Bool(bool),
    /// JSON and protobuf numbers are doubles; Cedar wants whole numbers.
    Number(f64),
    /// A whole number the door already holds as one (JSON `1500`).
    Integer(i64),
    String(&'a str),
    List(Vec<&'a V>),
    Record(Vec<(&'a str, &'a V)>),
    /// Something no attribute can be (a huge JSON number, say), with why.
    Invalid(String),
}

fn bounded(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {max} are allowed", value.len()),
        ));
    }
    Ok(())
}

fn required(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    bounded(field, value, max)
}

/// A journey name as written in the catalog; whether the catalog has it is
/// the engine's check.
pub fn journey(field: &str, value: &str) -> Result<String> {
    required(field, value, MAX_JOURNEY_NAME)?;
    if !catalog::valid_name(value) {
        return Err(FieldError::new(
            field,
            format!("`{value}` is not a journey name (lowercase letters, digits and `_`)"),
        ));
    }
    Ok(value.to_owned())
}

fn subject(subject: Option<SubjectAsk<'_>>) -> Result<Subject> {
    let Some(subject) = subject else {
        return Err(FieldError::new("subject.user_id", "is required"));
    };
    required("subject.user_id", subject.user_id, MAX_USER_ID)?;
    identifiers::check("subject.user_id", subject.user_id)?;
    bounded("subject.tenant", subject.tenant, MAX_TENANT)?;
    let tenant = if subject.tenant.is_empty() {
        DEFAULT_TENANT.to_owned()
    } else {
        identifiers::check("subject.tenant", subject.tenant)?;
        subject.tenant.to_owned()
    };
    Ok(Subject {
        user_id: subject.user_id.to_owned(),
        tenant,
    })
}

/// A client address in text.
pub fn ip(field: &str, text: Option<&str>) -> Result<IpAddr> {
    let text = text.unwrap_or_default();
    required(field, text, MAX_IP_TEXT)?;
    text.parse()
        .map_err(|_| FieldError::new(field, format!("`{text}` is not an IPv4 or IPv6 address")))
}

fn device(device: Option<DeviceAsk<'_>>) -> Result<Option<String>> {
    // No device at all means the caller has no device id; a device sent
    // with an empty id is a caller bug, and silently reading it as "new
    // device" would hide it.
    let Some(device) = device else {
        return Ok(None);
    };
    if device.id.is_empty() {
        return Err(FieldError::new(
            "device.id",
            "is empty; send a device id or leave `device` out",
        ));
    }
    bounded("device.id", device.id, MAX_DEVICE_ID)?;
    identifiers::check("device.id", device.id)?;
    bounded("device.user_agent", device.user_agent, MAX_USER_AGENT)?;
    Ok(Some(device.id.to_owned()))
}

fn authn(authn: Option<AuthnAsk<'_>>) -> Result<Authn> {
    let authn = authn.unwrap_or_default();
    let aal = Aal::from_wire(authn.aal).ok_or_else(|| {
        FieldError::new(
            "authn.aal",
            format!(
                "{} is not an assurance level (0 for unknown, or 1..3)",
                authn.aal
            ),
        )
    })?;
    if authn.amr.len() > MAX_AMR_VALUES {
        return Err(FieldError::new(
            "authn.amr",
            format!(
                "has {} values; at most {MAX_AMR_VALUES} are allowed",
                authn.amr.len()
            ),
        ));
    }
    for (i, method) in authn.amr.iter().enumerate() {
        required(&format!("authn.amr[{i}]"), method, MAX_AMR_VALUE)?;
    }
    if authn.auth_time < 0 {
        return Err(FieldError::new(
            "authn.auth_time",
            "must be unix seconds, or 0 when unknown",
        ));
    }
    Ok(Authn {
        aal,
        amr: authn.amr.to_vec(),
        auth_time: (authn.auth_time > 0).then_some(authn.auth_time),
    })
}

/// Converts a door's attributes into Cedar-shaped values, within bounds.
struct AttributeReader {
    values: usize,
}

impl AttributeReader {
    fn record<V: AttrNode>(
        &mut self,
        path: &str,
        fields: &[(&str, &V)],
        depth: usize,
    ) -> Result<BTreeMap<String, AttrValue>> {
        if depth > MAX_ATTRIBUTE_DEPTH {
            return Err(FieldError::new(
                path,
                format!("nests deeper than {MAX_ATTRIBUTE_DEPTH} levels"),
            ));
        }
        let mut out = BTreeMap::new();
        for (key, value) in fields {
            let field = format!("{path}.{key}");
            if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY {
                return Err(FieldError::new(
                    field,
                    format!("keys must be 1..{MAX_ATTRIBUTE_KEY} bytes"),
                ));
            }
            let converted = self.value(&field, *value, depth)?;
            out.insert((*key).to_owned(), converted);
        }
        Ok(out)
    }

    fn value<V: AttrNode>(&mut self, path: &str, value: &V, depth: usize) -> Result<AttrValue> {
        if depth > MAX_ATTRIBUTE_DEPTH {
            return Err(FieldError::new(
                path,
                format!("nests deeper than {MAX_ATTRIBUTE_DEPTH} levels"),
            ));
        }
        self.values += 1;
        if self.values > MAX_ATTRIBUTE_VALUES {
            return Err(FieldError::new(
                "attributes",
                format!("holds more than {MAX_ATTRIBUTE_VALUES} values"),
            ));
        }
        match value.view() {
            AttrView::Null => Err(FieldError::new(
                path,
                "is null; leave the attribute out instead",
            )),
            AttrView::Bool(b) => Ok(AttrValue::Bool(b)),
            AttrView::Number(n) => whole_number(path, n).map(AttrValue::Long),
            AttrView::Integer(n) => Ok(AttrValue::Long(n)),
            AttrView::String(s) => {
                bounded(path, s, MAX_ATTRIBUTE_STRING)?;
                Ok(AttrValue::String(s.to_owned()))
            }
            AttrView::List(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| self.value(&format!("{path}[{i}]"), v, depth + 1))
                .collect::<Result<Vec<_>>>()
                .map(AttrValue::Set),
            AttrView::Record(fields) => {
                self.record(path, &fields, depth + 1).map(AttrValue::Record)
            }
            AttrView::Invalid(why) => Err(FieldError::new(path, why)),
        }
    }
}

/// Cedar has integers only; a number must be whole and fit in 53 bits,
/// the range a double holds exactly.
fn whole_number(path: &str, n: f64) -> Result<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= EXACT {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "checked above: whole and within 2^53"
        )]
        return Ok(n as i64);
    }
    Err(FieldError::new(
        path,
        format!(
            "{n} is not a whole number within ±2^53 (Cedar has no fractions; send minor units)"
        ),
    ))
}

/// The journey attributes a door received, as domain values.
pub fn attributes<V: AttrNode>(fields: &[(&str, &V)]) -> Result<BTreeMap<String, AttrValue>> {
    AttributeReader { values: 0 }.record("attributes", fields, 1)
}

/// Admits a Decide: every field within its bounds and rules.
pub fn decide<V: AttrNode>(ask: &DecideAsk<'_, V>) -> Result<DecideInput> {
    let journey = journey("journey", ask.journey)?;
    let subject = subject(ask.subject)?;
    let authn = authn(ask.authn)?;
    let device_id = device(ask.device)?;
    let ip = ip("network.ip", ask.ip)?;
    bounded("request_id", ask.request_id, MAX_REQUEST_ID)?;
    if ask.request_id.chars().any(char::is_control) {
        // It is echoed into answers and may be logged by callers.
        return Err(FieldError::new(
            "request_id",
            "must not hold control characters",
        ));
    }
    let attributes = match ask.attributes {
        Some(fields) => attributes(fields)?,
        None => BTreeMap::new(),
    };
    Ok(DecideInput {
        journey,
        subject,
        authn,
        device_id,
        ip,
        attributes,
    })
}

/// A ForgetUser, admitted: the subject as Decide admits it, and
/// `all_tenants` only without a tenant.
pub fn forget(ask: &ForgetAsk<'_>) -> Result<ForgetInput> {
    let subject = subject(ask.subject)?;
    if ask.all_tenants && ask.subject.is_some_and(|s| !s.tenant.is_empty()) {
        return Err(FieldError::new(
            "subject.tenant",
            "must be empty when all_tenants is set: the erasure covers every tenant",
        ));
    }
    Ok(ForgetInput {
        subject,
        all_tenants: ask.all_tenants,
    })
}

/// Admits a ReportOutcome.
pub fn report(ask: &ReportAsk<'_>) -> Result<ReportInput> {
    let journey = journey("journey", ask.journey)?;
    let subject = subject(ask.subject)?;
    let device_id = device(ask.device)?;
    let ip = ip("network.ip", ask.ip)?;
    let decision_id = decision_id(ask.decision_id)?;
    let event = match ask.event {
        EventAsk::Known(event) => event,
        EventAsk::Missing => {
            return Err(FieldError::new(
                "event",
                "is required: one of EVENT_AUTH_SUCCEEDED, EVENT_AUTH_FAILED, EVENT_STEP_UP_SUCCEEDED, EVENT_STEP_UP_FAILED, EVENT_COMPROMISED, EVENT_CONFIRMED_SAFE (over JSON, a name this version does not know reads as none)",
            ));
        }
        EventAsk::Unknown(text) => {
            let shown: String = text.chars().take(40).collect();
            return Err(FieldError::new(
                "event",
                format!("{shown} is not a known event"),
            ));
        }
    };
    // The level reached only matters for a success; with a failure a
    // valid one is ignored. An invalid one is refused either way: a
    // broken rule changes nothing.
    let reached = match ask.reached_aal {
        0 => None,
        n => Some(Aal::from_number(n).ok_or_else(|| {
            FieldError::new(
                "reached_aal",
                format!("{n} is not an assurance level (0 when unknown, or 1..3)"),
            )
        })?),
    }
    .filter(|_| event.succeeded());
    Ok(ReportInput {
        journey,
        subject,
        device_id,
        ip,
        event,
        decision_id,
        reached,
    })
}

/// Only the exact form stepgate issues (a lowercase, hyphenated UUIDv7) is
/// accepted, so free caller text never reaches the decision log and one
/// decision has one spelling.
pub fn decision_id(text: &str) -> Result<Option<DecisionId>> {
    if text.is_empty() {
        return Ok(None);
    }
    DecisionId::parse_issued(text).map(Some).ok_or_else(|| {
        // Quoting at most a short prefix keeps caller text out of errors
        // that may be logged.
        let shown: String = text.chars().take(40).collect();
        FieldError::new(
            "decision_id",
            format!(
                "`{shown}` is not a decision id stepgate issued (the lowercase, hyphenated UUIDv7 from a DecideResponse)"
            ),
        )
    })
}

/// JSON values, as the HTTP doors receive them.
impl AttrNode for serde_json::Value {
    fn view(&self) -> AttrView<'_, Self> {
        use serde_json::Value;
        match self {
            Value::Null => AttrView::Null,
            Value::Bool(b) => AttrView::Bool(*b),
            Value::Number(n) => {
                let beyond = || {
                    AttrView::Invalid(format!(
                        "{n} is not a whole number within ±2^53 (Cedar has no fractions; send minor units)"
                    ))
                };
                match (n.as_i64(), n.is_u64(), n.as_f64()) {
                    (Some(i), _, _) if i.unsigned_abs() <= 1 << 53 => AttrView::Integer(i),
                    (Some(_), _, _) | (None, true, _) => beyond(),
                    (None, false, Some(f)) => AttrView::Number(f),
                    (None, false, None) => beyond(),
                }
            }
            Value::String(s) => AttrView::String(s),
            Value::Array(items) => AttrView::List(items.iter().collect()),
            Value::Object(fields) => {
                AttrView::Record(fields.iter().map(|(k, v)| (k.as_str(), v)).collect())
            }
        }
    }
}

/// Checks that no JSON object in `text` names a member twice (RFC 8259
/// §4 leaves the meaning open, I-JSON, RFC 7493 §2.3, forbids it): parsers
/// disagree on which one counts, so a filter in front of stepgate could
/// read a different request than stepgate does. The error names the
/// member and where it was. Text that is not JSON passes: reading it is
/// the parser's job, and its error is the one the caller should see.
pub fn json_members_unique(text: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{Deserializer as _, Error as _, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;

    struct Key<'de>(Cow<'de, str>);
    impl<'de> serde::Deserialize<'de> for Key<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a member name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_owned())))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    struct Any;
    impl<'de> serde::Deserialize<'de> for Any {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            d.deserialize_any(AnyVisitor)
        }
    }
    struct AnyVisitor;
    impl<'de> Visitor<'de> for AnyVisitor {
        type Value = Any;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<Any, E> {
            Ok(Any)
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<Any, E> {
            Ok(Any)
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<Any, E> {
            Ok(Any)
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<Any, E> {
            Ok(Any)
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<Any, E> {
            Ok(Any)
        }
        fn visit_unit<E>(self) -> std::result::Result<Any, E> {
            Ok(Any)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Any, A::Error> {
            while seq.next_element::<Any>()?.is_some() {}
            Ok(Any)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Any, A::Error> {
            let mut seen: Vec<Cow<'de, str>> = Vec::new();
            while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                if seen.contains(&key) {
                    let shown: String = key.chars().take(64).collect();
                    return Err(A::Error::custom(format!(
                        "member `{shown}` is given twice in one object"
                    )));
                }
                map.next_value::<Any>()?;
                seen.push(key);
            }
            Ok(Any)
        }
    }

    let mut json = serde_json::Deserializer::from_slice(text);
    match json.deserialize_any(AnyVisitor) {
        Err(e) if e.to_string().contains("is given twice") => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Readers of one member of a JSON object, for the doors that map JSON
/// objects they do not own the shape of onto a Decide (AuthZEN's
/// `subject.properties`, a gateway's token claims): absent and `null` are
/// `None`; a member of another type is refused naming `path.key`.
pub mod member {
    use serde_json::{Map, Value};

    use super::Result;
    use crate::decision::FieldError;

    fn field(path: &str, key: &str) -> String {
        format!("{path}.{key}")
    }

    /// A string member.
    pub fn string<'a>(
        object: &'a Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<Option<&'a str>> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FieldError::new(field(path, key), "must be a string")),
        }
    }

    /// A whole-number member (such as `auth_time`, unix seconds).
    pub fn whole_number(object: &Map<String, Value>, path: &str, key: &str) -> Result<Option<i64>> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| FieldError::new(field(path, key), "must be a whole number")),
            Some(_) => Err(FieldError::new(field(path, key), "must be a number")),
        }
    }

    /// An array-of-strings member (such as `amr`, RFC 8176 §1: a JSON array
    /// of strings).
    pub fn strings(object: &Map<String, Value>, path: &str, key: &str) -> Result<Vec<String>> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        FieldError::new(format!("{}[{i}]", field(path, key)), "must be a string")
                    })
                })
                .collect(),
            Some(_) => Err(FieldError::new(
                field(path, key),
                "must be an array of strings",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth() {
        assert!(json_members_unique(br#"{"a":1,"b":{"c":[{"d":1}]}}"#).is_ok());
        for text in [
            r#"{"event":"EVENT_AUTH_FAILED","event":"EVENT_AUTH_SUCCEEDED"}"#,
            r#"{"subject":{"userId":"a","userId":"b"}}"#,
            r#"[{"x":1},{"y":{"z":1,"z":2}}]"#,
            r#"{"s\u0075b":"a","sub":"b"}"#,
        ] {
            let err = json_members_unique(text.as_bytes()).expect_err(text);
            assert!(err.contains("given twice"), "{err}");
        }
        // Not JSON: left to the parser that reads it.
        assert!(json_members_unique(b"{").is_ok());
        // The same name in two objects is two members.
        assert!(json_members_unique(br#"[{"a":1},{"a":2}]"#).is_ok());
    }

    fn ask<'a>(attributes: Option<&'a [(&'a str, &'a Value)]>) -> DecideAsk<'a, Value> {
        DecideAsk {
            journey: "login",
            subject: Some(SubjectAsk {
                user_id: "alice",
                tenant: "",
            }),
            authn: None,
            device: None,
            ip: Some("198.51.100.4"),
            attributes,
            request_id: "",
        }
    }

    #[test]
    fn aal_zero_means_aal1_and_an_empty_tenant_is_the_default() {
        let mut a = ask(None);
        a.authn = Some(AuthnAsk {
            aal: 0,
            ..AuthnAsk::default()
        });
        let input = decide(&a).unwrap();
        assert_eq!(input.authn.aal, Aal::One);
        assert_eq!(input.subject.tenant, DEFAULT_TENANT);
    }

    #[test]
    fn fractional_and_oversized_numbers_are_refused_with_their_path() {
        for (value, path) in [
            (json!(12.5), "attributes.amount"),
            (json!(9_007_199_254_740_993_u64), "attributes.amount"),
            (json!({ "inner": 1e300 }), "attributes.amount.inner"),
        ] {
            let fields = [("amount", &value)];
            let err = decide(&ask(Some(&fields))).unwrap_err();
            assert_eq!(err.field, path, "{value}");
        }
        let whole = json!(1500);
        let fields = [("amount", &whole)];
        let input = decide(&ask(Some(&fields))).unwrap();
        assert_eq!(input.attributes.get("amount"), Some(&AttrValue::Long(1500)));
    }

    #[test]
    fn deep_records_and_lists_are_refused() {
        for deep in [
            json!({"a": {"b": {"c": {"d": {"e": 1}}}}}),
            json!([[[[[1]]]]]),
        ] {
            let fields = [("deep", &deep)];
            let err = decide(&ask(Some(&fields))).unwrap_err();
            assert!(err.rule.contains("deeper"), "{err}");
        }
    }

    #[test]
    fn absent_device_means_no_device_but_an_empty_id_is_refused() {
        let mut a = ask(None);
        assert_eq!(decide(&a).unwrap().device_id, None);
        a.device = Some(DeviceAsk::default());
        assert_eq!(decide(&a).unwrap_err().field, "device.id");
    }

    #[test]
    fn only_the_form_stepgate_issues_is_a_decision_id() {
        let issued = DecisionId::new().to_string();
        assert!(decision_id(&issued).unwrap().is_some());
        assert_eq!(decision_id("").unwrap(), None);
        let bare = issued.replace('-', "");
        for other in [
            issued.to_uppercase(),
            format!("{{{issued}}}"),
            format!("urn:uuid:{issued}"),
            bare,
            "00000000-0000-0000-0000-000000000000".to_owned(),
            // A version 4 UUID: well formed, but not one stepgate issues.
            "9f0c5e36-6c4b-4e0b-8f7a-2f3c1d0e9b11".to_owned(),
            " ".to_owned() + &issued,
        ] {
            let err = decision_id(&other).unwrap_err();
            assert_eq!(err.field, "decision_id", "{other}");
        }
    }

    #[test]
    fn a_level_reached_is_checked_for_every_event_and_ignored_on_failures() {
        let report_ask = |event, reached_aal| ReportAsk {
            journey: "login",
            subject: Some(SubjectAsk {
                user_id: "alice",
                tenant: "",
            }),
            device: None,
            ip: Some("198.51.100.4"),
            event: EventAsk::Known(event),
            decision_id: "",
            reached_aal,
        };
        let failure = report(&report_ask(OutcomeEvent::AuthFailed, 3)).unwrap();
        assert_eq!(failure.reached, None, "a failure reached nothing");
        for event in [OutcomeEvent::AuthFailed, OutcomeEvent::AuthSucceeded] {
            let err = report(&report_ask(event, 7)).unwrap_err();
            assert_eq!(err.field, "reached_aal", "{event:?}");
        }
    }
}

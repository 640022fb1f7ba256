//! Request validation: protobuf in, domain types out, or the first broken
//! rule naming its field. Nothing else runs on a refused request.
//!
//! Every string and list is bounded here; the bounds are constants so the
//! README and the tests can name them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use prost_types::value::Kind;

use crate::decision::{
    Aal, AttrValue, Authn, DEFAULT_TENANT, DecideInput, DecisionId, OutcomeEvent, ReportInput,
    Subject,
};
use crate::identifiers;
use crate::policy::catalog::{self, MAX_JOURNEY_NAME};

use super::proto;
use super::status::FieldError;

pub const MAX_USER_ID: usize = 256;
pub const MAX_TENANT: usize = 128;
pub const MAX_DEVICE_ID: usize = 256;
pub const MAX_USER_AGENT: usize = 512;
pub const MAX_AMR_VALUES: usize = 16;
pub const MAX_AMR_VALUE: usize = 32;
pub const MAX_REQUEST_ID: usize = 128;
pub const MAX_ATTRIBUTE_DEPTH: usize = 4;
pub const MAX_ATTRIBUTE_VALUES: usize = 64;
pub const MAX_ATTRIBUTE_KEY: usize = 64;
pub const MAX_ATTRIBUTE_STRING: usize = 1024;

type Result<T> = std::result::Result<T, FieldError>;

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

fn journey(field: &str, value: &str) -> Result<String> {
    required(field, value, MAX_JOURNEY_NAME)?;
    if !catalog::valid_name(value) {
        return Err(FieldError::new(
            field,
            format!("`{value}` is not a journey name (lowercase letters, digits and `_`)"),
        ));
    }
    Ok(value.to_owned())
}

fn subject(subject: Option<&proto::Subject>) -> Result<Subject> {
    let Some(subject) = subject else {
        return Err(FieldError::new("subject.user_id", "is required"));
    };
    required("subject.user_id", &subject.user_id, MAX_USER_ID)?;
    identifiers::check("subject.user_id", &subject.user_id)?;
    bounded("subject.tenant", &subject.tenant, MAX_TENANT)?;
    let tenant = if subject.tenant.is_empty() {
        DEFAULT_TENANT.to_owned()
    } else {
        identifiers::check("subject.tenant", &subject.tenant)?;
        subject.tenant.clone()
    };
    Ok(Subject {
        user_id: subject.user_id.clone(),
        tenant,
    })
}

fn ip(network: Option<&proto::Network>) -> Result<IpAddr> {
    let text = network.map(|n| n.ip.as_str()).unwrap_or_default();
    required("network.ip", text, 64)?;
    text.parse().map_err(|_| {
        FieldError::new(
            "network.ip",
            format!("`{text}` is not an IPv4 or IPv6 address"),
        )
    })
}

fn device(device: Option<&proto::Device>) -> Result<Option<String>> {
    // No `device` at all means the caller has no device id; a `device` sent
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
    bounded("device.id", &device.id, MAX_DEVICE_ID)?;
    identifiers::check("device.id", &device.id)?;
    bounded("device.user_agent", &device.user_agent, MAX_USER_AGENT)?;
    Ok(Some(device.id.clone()))
}

fn authn(authn: Option<&proto::Authn>) -> Result<Authn> {
    let Some(authn) = authn else {
        return Ok(Authn {
            aal: Aal::One,
            amr: Vec::new(),
            auth_time: None,
        });
    };
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
        amr: authn.amr.clone(),
        auth_time: (authn.auth_time > 0).then_some(authn.auth_time),
    })
}

/// Converts `google.protobuf.Struct` attributes into Cedar-shaped values.
struct AttributeReader {
    values: usize,
}

impl AttributeReader {
    fn record(
        &mut self,
        path: &str,
        fields: &BTreeMap<String, prost_types::Value>,
        depth: usize,
    ) -> Result<BTreeMap<String, AttrValue>> {
        if depth > MAX_ATTRIBUTE_DEPTH {
            return Err(FieldError::new(
                path,
                format!("nests deeper than {MAX_ATTRIBUTE_DEPTH} levels"),
            ));
        }
        fields
            .iter()
            .map(|(key, value)| {
                let field = format!("{path}.{key}");
                if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY {
                    return Err(FieldError::new(
                        field,
                        format!("keys must be 1..{MAX_ATTRIBUTE_KEY} bytes"),
                    ));
                }
                Ok((key.clone(), self.value(&field, value, depth)?))
            })
            .collect()
    }

    fn value(&mut self, path: &str, value: &prost_types::Value, depth: usize) -> Result<AttrValue> {
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
        match &value.kind {
            None | Some(Kind::NullValue(_)) => Err(FieldError::new(
                path,
                "is null; leave the attribute out instead",
            )),
            Some(Kind::BoolValue(b)) => Ok(AttrValue::Bool(*b)),
            Some(Kind::NumberValue(n)) => whole_number(path, *n).map(AttrValue::Long),
            Some(Kind::StringValue(s)) => {
                bounded(path, s, MAX_ATTRIBUTE_STRING)?;
                Ok(AttrValue::String(s.clone()))
            }
            Some(Kind::ListValue(list)) => list
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| self.value(&format!("{path}[{i}]"), v, depth + 1))
                .collect::<Result<Vec<_>>>()
                .map(AttrValue::Set),
            Some(Kind::StructValue(s)) => self
                .record(path, &s.fields, depth + 1)
                .map(AttrValue::Record),
        }
    }
}

/// Cedar has integers only; a JSON number must be whole and fit in 53 bits,
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

pub fn decide(req: &proto::DecideRequest) -> Result<DecideInput> {
    let journey = journey("journey", &req.journey)?;
    let subject = subject(req.subject.as_ref())?;
    let authn = authn(req.authn.as_ref())?;
    let device_id = device(req.device.as_ref())?;
    let ip = ip(req.network.as_ref())?;
    bounded("request_id", &req.request_id, MAX_REQUEST_ID)?;
    let attributes = match &req.attributes {
        Some(s) => AttributeReader { values: 0 }.record("attributes", &s.fields, 1)?,
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

pub fn report(req: &proto::ReportOutcomeRequest) -> Result<ReportInput> {
    let journey = journey("journey", &req.journey)?;
    let subject = subject(req.subject.as_ref())?;
    let device_id = device(req.device.as_ref())?;
    let ip = ip(req.network.as_ref())?;
    let decision_id = decision_id(&req.decision_id)?;
    let event = match proto::Event::try_from(req.event) {
        Ok(proto::Event::AuthSucceeded) => OutcomeEvent::AuthSucceeded,
        Ok(proto::Event::AuthFailed) => OutcomeEvent::AuthFailed,
        Ok(proto::Event::StepUpSucceeded) => OutcomeEvent::StepUpSucceeded,
        Ok(proto::Event::StepUpFailed) => OutcomeEvent::StepUpFailed,
        Ok(proto::Event::Unspecified) => return Err(FieldError::new("event", "is required")),
        Err(_) => {
            return Err(FieldError::new(
                "event",
                format!("{} is not a known event", req.event),
            ));
        }
    };
    // The level reached only matters for a success; with a failure it is
    // ignored, so a bad one cannot cost the failure its count.
    let reached = match req.reached_aal {
        0 => None,
        _ if !event.succeeded() => None,
        n => Some(Aal::from_number(n).ok_or_else(|| {
            FieldError::new(
                "reached_aal",
                format!("{n} is not an assurance level (0 when unknown, or 1..3)"),
            )
        })?),
    };
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
fn decision_id(text: &str) -> Result<Option<DecisionId>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> proto::DecideRequest {
        proto::DecideRequest {
            journey: "login".into(),
            subject: Some(proto::Subject {
                user_id: "alice".into(),
                tenant: String::new(),
            }),
            network: Some(proto::Network {
                ip: "198.51.100.4".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn aal_zero_means_aal1() {
        let mut r = request();
        r.authn = Some(proto::Authn {
            aal: 0,
            ..Default::default()
        });
        assert_eq!(decide(&r).unwrap().authn.aal, Aal::One);
    }

    #[test]
    fn fractional_attribute_is_refused_with_its_path() {
        let mut r = request();
        let mut fields = BTreeMap::new();
        fields.insert(
            "amount".to_owned(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(12.5)),
            },
        );
        r.attributes = Some(prost_types::Struct { fields });
        let err = decide(&r).unwrap_err();
        assert_eq!(err.field, "attributes.amount");
        assert!(err.rule.contains("whole number"), "{}", err.rule);
    }

    #[test]
    fn deep_attributes_are_refused() {
        let mut value = prost_types::Value {
            kind: Some(Kind::BoolValue(true)),
        };
        for _ in 0..6 {
            let mut fields = BTreeMap::new();
            fields.insert("x".to_owned(), value);
            value = prost_types::Value {
                kind: Some(Kind::StructValue(prost_types::Struct { fields })),
            };
        }
        let mut r = request();
        let Some(Kind::StructValue(s)) = value.kind else {
            unreachable!()
        };
        r.attributes = Some(s);
        let err = decide(&r).unwrap_err();
        assert!(err.rule.contains("deeper"), "{err}");
    }

    #[test]
    fn absent_device_means_no_device_but_an_empty_id_is_refused() {
        let mut r = request();
        assert_eq!(decide(&r).unwrap().device_id, None);
        r.device = Some(proto::Device::default());
        assert_eq!(decide(&r).unwrap_err().field, "device.id");
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
    fn empty_tenant_is_the_default_tenant() {
        assert_eq!(decide(&request()).unwrap().subject.tenant, DEFAULT_TENANT);
    }

    #[test]
    fn nested_lists_respect_the_depth_limit() {
        let mut value = prost_types::Value {
            kind: Some(Kind::BoolValue(true)),
        };
        for _ in 0..6 {
            value = prost_types::Value {
                kind: Some(Kind::ListValue(prost_types::ListValue {
                    values: vec![value],
                })),
            };
        }
        let mut r = request();
        r.attributes = Some(prost_types::Struct {
            fields: BTreeMap::from([("deep".to_owned(), value)]),
        });
        let err = decide(&r).unwrap_err();
        assert!(err.rule.contains("deeper"), "{err}");
    }
}

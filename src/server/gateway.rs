//! What the two gateway doors share (Envoy ext_authz and HTTP forward-auth):
//! a request at the edge of an application becomes a Decide through the
//! route map, the verified token's claims and the client's address, and
//! the answer becomes an HTTP verdict: let it through, 401 with an RFC 9470
//! step-up challenge, or 403.
//!
//! stepgate never verifies tokens: the claims are what the gateway already
//! verified. A request stepgate cannot read is never an accident of
//! allow: it gets the configured status with a body naming what was wrong.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::admission::{self, AuthnAsk, DecideAsk, DeviceAsk, SubjectAsk};
use crate::config::{
    AcrConfig, AttributeSource, AttributeType, GatewayConfig, RouteConfig, UnmappedAnswer,
};
use crate::decision::{DecideInput, FieldError, Outcome};
use crate::engine::{Answer, Engine};
use crate::fault::FaultKind;

use super::status::ServiceError;

/// How a route matches a path.
#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Segments; `None` stands for a `{name}` segment.
    Template(Vec<(String, bool)>),
}

/// A compiled route.
#[derive(Debug, Clone)]
struct Route {
    methods: Vec<String>,
    path: PathMatch,
    journey: String,
    attributes: BTreeMap<String, crate::config::RouteAttribute>,
}

impl Route {
    fn compile(config: &RouteConfig) -> Self {
        let path = match (&config.path, &config.prefix, &config.template) {
            (Some(p), _, _) => PathMatch::Exact(p.clone()),
            (None, Some(p), _) => PathMatch::Prefix(p.clone()),
            (None, None, Some(t)) => PathMatch::Template(
                t.split('/')
                    .map(|segment| {
                        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => (name.to_owned(), true),
                            None => (segment.to_owned(), false),
                        }
                    })
                    .collect(),
            ),
            // Refused by `Config::validate`; an empty prefix would match
            // everything, so match nothing instead.
            (None, None, None) => PathMatch::Exact(String::new()),
        };
        Self {
            methods: config.methods.clone(),
            path,
            journey: config.journey.clone(),
            attributes: config.attributes.clone(),
        }
    }

    /// The path parameters when `method` and `path` match.
    fn matches(&self, method: &str, path: &str) -> Option<BTreeMap<String, String>> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return None;
        }
        match &self.path {
            PathMatch::Exact(p) => (p == path).then(BTreeMap::new),
            PathMatch::Prefix(p) => path.starts_with(p.as_str()).then(BTreeMap::new),
            PathMatch::Template(segments) => {
                let parts: Vec<&str> = path.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut params = BTreeMap::new();
                for (part, (segment, parameter)) in parts.iter().zip(segments) {
                    if *parameter {
                        if part.is_empty() {
                            return None;
                        }
                        params.insert(segment.clone(), percent_decode(part));
                    } else if part != segment {
                        return None;
                    }
                }
                Some(params)
            }
        }
    }
}

/// `%XX` escapes decoded; anything not valid UTF-8 afterwards is kept as
/// sent.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// The value of query parameter `name`, decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.trim_matches('"').to_owned())
    })
}

/// A request at a gateway, as a door read it.
pub struct GatewayAsk<'a> {
    pub method: &'a str,
    /// Path and query, as sent.
    pub target: &'a str,
    /// A header's value by its lower-case name.
    pub header: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
    /// The address the gateway saw the request come from.
    pub source: Option<IpAddr>,
    /// Claims the door found outside the headers (ext_authz metadata).
    pub claims: Option<Value>,
}

/// What the gateway is to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through, adding these headers to the upstream request.
    Allow { headers: Vec<(String, String)> },
    /// Stop it with this status, these headers and this JSON body.
    Stop {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

/// The gateway doors' configuration, compiled once.
pub struct Gateway {
    routes: Vec<Route>,
    config: GatewayConfig,
    trusted: Vec<ipnet::IpNet>,
}

impl Gateway {
    pub fn new(config: &GatewayConfig) -> Self {
        let trusted = config
            .client
            .trusted_proxies
            .iter()
            .filter_map(|c| {
                c.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| c.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .collect();
        Self {
            routes: config.routes.iter().map(Route::compile).collect(),
            config: config.clone(),
            trusted,
        }
    }

    /// Where the claims are.
    pub fn claims_config(&self) -> &crate::config::ClaimsConfig {
        &self.config.claims
    }

    /// The client's address: `x-forwarded-for` read right to left past the
    /// trusted proxies (by count or by address), else the source address.
    fn client(&self, ask: &GatewayAsk<'_>) -> Result<IpAddr, FieldError> {
        let hops = self.config.client.trusted_hops;
        let unreadable = |rule: String| FieldError::new("x-forwarded-for", rule);
        if hops == 0 && self.trusted.is_empty() {
            return ask
                .source
                .ok_or_else(|| FieldError::new("source", "the connecting address is unknown"));
        }
        let forwarded: Vec<&str> = (ask.header)("x-forwarded-for")
            .map(|h| {
                h.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let parse = |text: &str| {
            text.parse::<IpAddr>()
                .map_err(|_| unreadable(format!("`{text}` is not an address")))
        };
        if hops > 0 {
            // The client is the entry the nearest trusted proxy appended
            // for it; anything further left was written by the client.
            let at = forwarded.len().checked_sub(hops).ok_or_else(|| {
                unreadable(format!(
                    "holds {} entries; {hops} trusted proxies should have added at least that many",
                    forwarded.len()
                ))
            })?;
            return forwarded
                .get(at)
                .ok_or_else(|| unreadable("is empty".to_owned()))
                .and_then(|text| parse(text));
        }
        // Right to left past trusted proxies: the source first, then each
        // forwarded entry.
        let mut chain: Vec<IpAddr> = Vec::with_capacity(forwarded.len() + 1);
        for text in &forwarded {
            chain.push(parse(text)?);
        }
        chain.extend(ask.source);
        let trusted = |ip: &IpAddr| self.trusted.iter().any(|net| net.contains(ip));
        chain
            .iter()
            .rev()
            .find(|ip| !trusted(ip))
            .or_else(|| chain.first())
            .copied()
            .ok_or_else(|| FieldError::new("source", "the connecting address is unknown"))
    }

    /// The claims: the door's (ext_authz metadata), or the configured
    /// header's, as JSON or base64url JSON.
    fn claims(&self, ask: &GatewayAsk<'_>) -> Result<Value, FieldError> {
        if let Some(claims) = &ask.claims {
            return Ok(claims.clone());
        }
        let name = &self.config.claims.header;
        let field = || name.to_ascii_lowercase();
        let text = (ask.header)(&field()).ok_or_else(|| {
            FieldError::new(field(), "is missing: no verified claims reached stepgate")
        })?;
        let json = match serde_json::from_str::<Value>(text) {
            Ok(value) => value,
            Err(_) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text.trim_end_matches('='))
                    .map_err(|_| FieldError::new(field(), "is neither JSON nor base64url JSON"))?;
                serde_json::from_slice(&bytes)
                    .map_err(|_| FieldError::new(field(), "does not decode to JSON"))?
            }
        };
        if json.is_object() {
            Ok(json)
        } else {
            Err(FieldError::new(field(), "is not a JSON object"))
        }
    }

    /// The Decide a mapped request stands for.
    fn admit(
        &self,
        ask: &GatewayAsk<'_>,
        route: &Route,
        params: &BTreeMap<String, String>,
        acr: &AcrConfig,
    ) -> Result<DecideInput, FieldError> {
        let claims = self.claims(ask)?;
        let names = &self.config.claims;
        let claim = |name: &str| (!name.is_empty()).then(|| claims.get(name)).flatten();
        let string_claim = |name: &str| -> Result<Option<&str>, FieldError> {
            match claim(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(FieldError::new(
                    format!("claims.{name}"),
                    "must be a string",
                )),
            }
        };
        let user_id = string_claim(&names.subject)?
            .ok_or_else(|| FieldError::new(format!("claims.{}", names.subject), "is required"))?;
        let tenant = string_claim(&names.tenant)?.unwrap_or_default();
        let aal = match string_claim(&names.acr)? {
            None => 0,
            Some(value) => acr.level_of(value).map(|l| l.number()).ok_or_else(|| {
                let shown: String = value.chars().take(60).collect();
                FieldError::new(
                    format!("claims.{}", names.acr),
                    format!("`{shown}` is not an acr value this deployment knows (`acr.aal1..3`, `acr.aliases`)"),
                )
            })?,
        };
        let amr: Vec<String> = match claim(&names.amr) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            Some(_) => {
                return Err(FieldError::new(
                    format!("claims.{}", names.amr),
                    "must be an array of strings",
                ));
            }
        };
        let auth_time = match claim(&names.auth_time) {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
                FieldError::new(
                    format!("claims.{}", names.auth_time),
                    "must be whole unix seconds",
                )
            })?,
            Some(_) => {
                return Err(FieldError::new(
                    format!("claims.{}", names.auth_time),
                    "must be a number",
                ));
            }
        };
        let ip = self.client(ask)?.to_string();
        let device_id = self.device(ask);
        let user_agent = (ask.header)("user-agent").unwrap_or_default();
        let query = ask
            .target
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default();
        let mut values: Vec<(String, Value)> = Vec::new();
        for (name, attribute) in &route.attributes {
            let raw = match attribute.from {
                AttributeSource::Path => params.get(&attribute.name).cloned(),
                AttributeSource::Query => query_param(query, &attribute.name),
                AttributeSource::Header => {
                    (ask.header)(&attribute.name.to_ascii_lowercase()).map(str::to_owned)
                }
            };
            let Some(raw) = raw else { continue };
            let value = match attribute.kind {
                AttributeType::String => Value::String(raw),
                AttributeType::Long => {
                    raw.trim().parse::<i64>().map(Value::from).map_err(|_| {
                        FieldError::new(
                            format!("attributes.{name}"),
                            format!("`{raw}` is not a whole number"),
                        )
                    })?
                }
                AttributeType::Bool => match raw.trim() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => {
                        return Err(FieldError::new(
                            format!("attributes.{name}"),
                            format!("`{raw}` is not `true` or `false`"),
                        ));
                    }
                },
            };
            values.push((name.clone(), value));
        }
        let attributes: Vec<(&str, &Value)> = values.iter().map(|(k, v)| (k.as_str(), v)).collect();
        admission::decide(&DecideAsk {
            journey: &route.journey,
            subject: Some(SubjectAsk { user_id, tenant }),
            authn: Some(AuthnAsk {
                aal,
                amr: &amr,
                auth_time,
            }),
            device: device_id.as_deref().map(|id| DeviceAsk { id, user_agent }),
            ip: Some(&ip),
            attributes: Some(&attributes),
            request_id: "",
        })
    }

    fn device(&self, ask: &GatewayAsk<'_>) -> Option<String> {
        let client = &self.config.client;
        let from_header = (!client.device_header.is_empty())
            .then(|| (ask.header)(&client.device_header.to_ascii_lowercase()))
            .flatten()
            .map(str::to_owned);
        from_header.or_else(|| {
            (!client.device_cookie.is_empty())
                .then(|| (ask.header)("cookie").and_then(|c| cookie(c, &client.device_cookie)))
                .flatten()
        })
    }

    /// Decides a gateway request. Never fails: a request stepgate cannot
    /// map or read gets its configured answer, and a fault of the service
    /// a 503 that stops the request.
    pub async fn check(&self, ask: &GatewayAsk<'_>, engine: &Engine, rpc: &str) -> Verdict {
        let path = ask.target.split('?').next().unwrap_or_default();
        let mapped = self.routes.iter().find_map(|route| {
            route
                .matches(ask.method, path)
                .map(|params| (route, params))
        });
        let Some((route, params)) = mapped else {
            return match self.config.unmapped {
                UnmappedAnswer::Allow => Verdict::Allow {
                    headers: Vec::new(),
                },
                UnmappedAnswer::Deny => {
                    let code = FaultKind::UnmappedRoute.code();
                    engine.metrics().refused(rpc, code);
                    crate::audit::refused(rpc, code, None);
                    stop(
                        403,
                        json!({"code": code, "message": "no route in `gateway.routes` maps this request"}),
                    )
                }
            };
        };
        let input = match self.admit(ask, route, &params, engine.acr()) {
            Ok(input) => input,
            Err(err) => return self.unreadable_request(&err, rpc, engine),
        };
        match engine.decide(&input).await {
            Ok(answer) => self.verdict(&answer, engine),
            Err(err) => {
                let err = ServiceError::from(err);
                let kind = err.record(rpc, engine.metrics());
                let status = if kind.is_callers() {
                    self.config.unreadable_status
                } else {
                    503
                };
                stop(
                    status,
                    json!({"code": kind.code(), "message": err.public_message()}),
                )
            }
        }
    }

    /// The configured answer for a request stepgate cannot read, naming
    /// what was wrong.
    pub fn unreadable_request(&self, err: &FieldError, rpc: &str, engine: &Engine) -> Verdict {
        let code = FaultKind::UnreadableRequest.code();
        engine.metrics().refused(rpc, code);
        crate::audit::refused(rpc, code, Some(&err.field));
        stop(
            self.config.unreadable_status,
            json!({"code": code, "message": err.to_string()}),
        )
    }

    /// An answer as a verdict.
    fn verdict(&self, answer: &Answer, engine: &Engine) -> Verdict {
        let d = &answer.decision;
        let id = answer.decision_id.to_string();
        let reasons: Vec<Value> = d
            .reasons
            .iter()
            .map(|r| json!({"policy_id": r.policy_id, "message": r.message}))
            .collect();
        match d.outcome {
            Outcome::Allow => Verdict::Allow {
                headers: vec![(self.config.decision_header.clone(), id)],
            },
            Outcome::StepUp(level) => {
                let acr = engine.acr().for_level(level);
                let description = d
                    .reasons
                    .first()
                    .map_or("a higher authentication level is required", |r| {
                        r.message.as_str()
                    });
                let challenge = challenge(description, acr);
                let mut verdict = stop(
                    401,
                    json!({
                        "outcome": "step_up",
                        "decision_id": id,
                        "required_aal": level.number(),
                        "acr_values": acr,
                        "reasons": reasons,
                        "policy_version": d.policy_version,
                    }),
                );
                if let Verdict::Stop { headers, .. } = &mut verdict {
                    headers.push(("www-authenticate".to_owned(), challenge));
                    headers.push((self.config.decision_header.clone(), id));
                }
                verdict
            }
            Outcome::Deny => {
                let mut verdict = stop(
                    403,
                    json!({
                        "outcome": "deny",
                        "decision_id": id,
                        "reasons": reasons,
                        "policy_version": d.policy_version,
                    }),
                );
                if let Verdict::Stop { headers, .. } = &mut verdict {
                    headers.push((self.config.decision_header.clone(), id));
                }
                verdict
            }
        }
    }
}

fn stop(status: u16, body: Value) -> Verdict {
    Verdict::Stop {
        status,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: body.to_string(),
    }
}

/// The RFC 9470 §3 challenge: `Bearer error="insufficient_user_authentication",
/// error_description="…", acr_values="…"`, each value a quoted string
/// (RFC 9110 §5.6.4) of visible ASCII.
pub fn challenge(description: &str, acr: &str) -> String {
    format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"{}\", acr_values=\"{}\"",
        quoted(description),
        quoted(acr)
    )
}

/// The inside of a quoted string: `"` and `\` escaped, anything that is not
/// visible ASCII or a space replaced by `?`.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    fn route(path: Option<&str>, prefix: Option<&str>, template: Option<&str>) -> Route {
        Route::compile(&RouteConfig {
            methods: vec!["POST".into()],
            path: path.map(Into::into),
            prefix: prefix.map(Into::into),
            template: template.map(Into::into),
            journey: "payment".into(),
            attributes: BTreeMap::new(),
        })
    }

    #[test]
    fn routes_match_exactly_by_prefix_or_by_template() {
        let exact = route(Some("/pay"), None, None);
        assert!(exact.matches("POST", "/pay").is_some());
        assert!(
            exact.matches("post", "/pay").is_some(),
            "methods ignore case"
        );
        assert!(exact.matches("GET", "/pay").is_none());
        assert!(exact.matches("POST", "/pay/x").is_none());
        let prefix = route(None, Some("/api/"), None);
        assert!(prefix.matches("POST", "/api/anything").is_some());
        assert!(prefix.matches("POST", "/apix").is_none());
        let template = route(None, None, Some("/accounts/{account}/payouts"));
        let params = template
            .matches("POST", "/accounts/a%2Fb/payouts")
            .expect("match");
        assert_eq!(params.get("account").map(String::as_str), Some("a/b"));
        assert!(template.matches("POST", "/accounts//payouts").is_none());
        assert!(template.matches("POST", "/accounts/1/payouts/2").is_none());
    }

    #[test]
    fn challenges_quote_and_escape_their_values() {
        assert_eq!(
            challenge("say \"hi\" \\ now", "urn:acr:2"),
            "Bearer error=\"insufficient_user_authentication\", error_description=\"say \\\"hi\\\" \\\\ now\", acr_values=\"urn:acr:2\""
        );
        assert_eq!(quoted("zoë\n"), "zo??");
    }

    fn gateway(hops: usize, proxies: &[&str]) -> Gateway {
        Gateway::new(&GatewayConfig {
            client: ClientConfig {
                trusted_hops: hops,
                trusted_proxies: proxies.iter().map(|p| (*p).to_owned()).collect(),
                ..ClientConfig::default()
            },
            ..GatewayConfig::default()
        })
    }

    fn client_of(
        g: &Gateway,
        xff: Option<&'static str>,
        source: &str,
    ) -> Result<String, FieldError> {
        let header = move |name: &str| (name == "x-forwarded-for").then_some(xff).flatten();
        let ask = GatewayAsk {
            method: "GET",
            target: "/",
            header: &header,
            source: source.parse().ok(),
            claims: None,
        };
        g.client(&ask).map(|ip| ip.to_string())
    }

    #[test]
    fn the_client_is_read_right_to_left_past_trusted_proxies_only() {
        let xff = Some("6.6.6.6, 81.2.69.142, 10.0.0.2");
        // No trust: the connecting address, whatever the header says.
        assert_eq!(
            client_of(&gateway(0, &[]), xff, "10.0.0.9").unwrap(),
            "10.0.0.9"
        );
        // One trusted hop: the entry it appended; a spoofed leftmost
        // entry is never read.
        assert_eq!(
            client_of(&gateway(1, &[]), xff, "10.0.0.9").unwrap(),
            "10.0.0.2"
        );
        assert_eq!(
            client_of(&gateway(2, &[]), xff, "10.0.0.9").unwrap(),
            "81.2.69.142"
        );
        assert!(
            client_of(&gateway(4, &[]), xff, "10.0.0.9").is_err(),
            "fewer entries than hops"
        );
        // Trusted addresses: skipped right to left.
        assert_eq!(
            client_of(&gateway(0, &["10.0.0.0/8"]), xff, "10.0.0.9").unwrap(),
            "81.2.69.142"
        );
        assert_eq!(
            client_of(&gateway(0, &["10.0.0.0/8"]), None, "10.0.0.9").unwrap(),
            "10.0.0.9"
        );
        assert!(client_of(&gateway(1, &[]), Some("garbage"), "10.0.0.9").is_err());
    }

    #[test]
    fn query_parameters_and_cookies_are_decoded() {
        assert_eq!(
            query_param("a=1&amount=15%2000&b", "amount").as_deref(),
            Some("15 00")
        );
        assert_eq!(query_param("a=1", "amount"), None);
        assert_eq!(
            cookie("x=1; device_id=\"abc\"; y=2", "device_id").as_deref(),
            Some("abc")
        );
    }
}

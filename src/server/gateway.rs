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
use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value, json};

use crate::admission::{self, AuthnAsk, DecideAsk, DeviceAsk, SubjectAsk, member};
use crate::config::{
    AcrConfig, AttributeSource, AttributeType, GatewayConfig, RouteConfig, UnmappedAnswer,
};
use crate::decision::{DecideInput, FieldError, Outcome};
use crate::engine::{Answer, Engine, EngineError, Refusal, ServerFault};
use crate::fault::FaultKind;
use crate::record::Call;

use super::status::{ServiceError, statuses};
use super::summary::summary;

/// The header that tells the upstream an allow came from a failure mode
/// (a signal source failed), so the application can be careful.
pub const DEGRADED_HEADER: &str = "x-stepgate-degraded";
/// On a 401 or 403 that is a decision: `step_up` or `deny`.
pub const OUTCOME_HEADER: &str = "x-stepgate-outcome";
/// On a 401, 403 or 5xx that is not a decision: the fault's code
/// (`unmapped_route`, `unreadable_request`, `request_too_large`, ...).
pub const FAULT_HEADER: &str = "x-stepgate-fault";

/// How a route matches a path's segments.
#[derive(Debug, Clone)]
enum PathMatch {
    Exact(Vec<String>),
    /// These segments and any below them.
    Prefix(Vec<String>),
    /// Segments of a template: `(name, true)` for a `{name}` segment, which
    /// matches any one segment; `(text, false)` for a literal one.
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
        let segments_of = |p: &str| segments(p).unwrap_or_default();
        let path = match (&config.path, &config.prefix, &config.template) {
            (Some(p), _, _) => PathMatch::Exact(segments_of(p)),
            (None, Some(p), _) => PathMatch::Prefix(segments_of(p)),
            (None, None, Some(t)) => PathMatch::Template(
                t.split('/')
                    .filter(|segment| !segment.is_empty())
                    .map(|segment| {
                        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => (name.to_owned(), true),
                            None => (decode_unreserved(segment), false),
                        }
                    })
                    .collect(),
            ),
            // Refused by `Config::validate`; an empty prefix would match
            // everything, so match nothing instead.
            (None, None, None) => PathMatch::Exact(vec![String::new()]),
        };
        Self {
            methods: config.methods.clone(),
            path,
            journey: config.journey.clone(),
            attributes: config.attributes.clone(),
        }
    }

    /// The path parameters when `method` and the path's `segments` match.
    fn matches(&self, method: &str, segments: &[String]) -> Option<BTreeMap<String, String>> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return None;
        }
        match &self.path {
            PathMatch::Exact(p) => (p.as_slice() == segments).then(BTreeMap::new),
            PathMatch::Prefix(p) => segments.starts_with(p).then(BTreeMap::new),
            PathMatch::Template(template) => {
                if template.len() != segments.len() {
                    return None;
                }
                let mut params = BTreeMap::new();
                for (part, (segment, parameter)) in segments.iter().zip(template) {
                    if *parameter {
                        params.insert(segment.clone(), percent_decode(part, false));
                    } else if part != segment {
                        return None;
                    }
                }
                Some(params)
            }
        }
    }
}

/// A request target's path as the segments routes match against, or `None`
/// when the target has no path (not origin-form or absolute-form).
///
/// Spellings an upstream treats as the same path match the same routes, so
/// a sensitive route cannot be dodged by writing it differently: the query
/// and fragment go, `%XX` escapes of unreserved characters are decoded
/// (RFC 3986 §6.2.2.2), `;parameters` are cut from each segment (as Java
/// servlet containers do), empty segments (`//`, a trailing `/`) are
/// dropped, and `.` and `..` are resolved (RFC 3986 §5.2.4). Other escapes
/// (`%2F` among them) stay as sent.
fn segments(target: &str) -> Option<Vec<String>> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let path = match path.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')) =>
        {
            rest.find('/').and_then(|at| rest.get(at..)).unwrap_or("/")
        }
        _ => path,
    };
    if !path.starts_with('/') {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or_default();
        let segment = decode_unreserved(raw);
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(segment),
        }
    }
    Some(out)
}

/// `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded,
/// every other escape kept with upper-case hex digits.
fn decode_unreserved(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                let decoded = u8::try_from(hi * 16 + lo).unwrap_or(0);
                if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
                    out.push(decoded);
                } else {
                    out.extend_from_slice(format!("%{decoded:02X}").as_bytes());
                }
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only whole ASCII escapes were rewritten, so the text stays UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// `%XX` escapes decoded, and `+` as a space when `plus_is_space` (query
/// strings, HTML form encoding; never paths); anything not valid UTF-8
/// afterwards is kept as sent.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
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
            (b'+', _, _) if plus_is_space => {
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

/// Every value of query parameter `name`, decoded.
fn query_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true) == name).then(|| percent_decode(value, true))
        })
        .collect()
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.trim_matches('"').to_owned())
    })
}

/// An `x-forwarded-for` entry's address: a bare address, or one with a
/// port (`192.0.2.1:5678`, `[2001:db8::1]:443`) or in brackets, as some
/// proxies write it; IPv4-mapped IPv6 as IPv4.
fn forwarded_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        })
        .map(|ip| ip.to_canonical())
}

/// Where a gateway request's claims are, as its door found them.
#[derive(Debug, Clone)]
pub enum ClaimsAt {
    /// In the header `gateway.claims.header` (forward-auth; ext_authz with
    /// `ext_authz_from = "header"`).
    Header,
    /// In ext_authz's `metadata_context`: the payload at the configured
    /// namespace and field, `None` when either is absent.
    Metadata(Option<Value>),
}

/// A request at a gateway, as a door read it.
pub struct GatewayAsk<'a> {
    pub method: &'a str,
    /// Path and query, as sent.
    pub target: &'a str,
    /// A header's value by its lower-case name; a header sent on several
    /// lines as one value, the lines joined with `, ` (as Envoy gives them).
    pub header: &'a (dyn Fn(&str) -> Option<&'a str> + Sync),
    /// The address the gateway saw the request come from.
    pub source: Option<IpAddr>,
    /// Where the claims are.
    pub claims: ClaimsAt,
}

/// What the gateway is to do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through, adding these headers to the upstream request and
    /// removing those (lower-case names).
    Allow {
        headers: Vec<(String, String)>,
        remove: Vec<String>,
    },
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
            .map(|net| match net {
                // Compared with canonical addresses: an IPv4-mapped block
                // is the IPv4 block it maps.
                ipnet::IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                    Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len().saturating_sub(96))
                        .map_or(net, ipnet::IpNet::V4),
                    None => net,
                },
                ipnet::IpNet::V4(_) => net,
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

    /// The gateway's configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The client's address: `x-forwarded-for` read right to left past the
    /// trusted proxies (by count or by address), else the source address.
    /// IPv4-mapped addresses are read as IPv4 throughout.
    fn client(&self, ask: &GatewayAsk<'_>) -> Result<IpAddr, FieldError> {
        let hops = self.config.client.trusted_hops;
        let unreadable = |rule: String| FieldError::new("x-forwarded-for", rule);
        let unknown_source = || FieldError::new("source", "the connecting address is unknown");
        let source = ask.source.map(|ip| ip.to_canonical());
        if hops == 0 && self.trusted.is_empty() {
            return source.ok_or_else(unknown_source);
        }
        let forwarded: Vec<&str> = (ask.header)("x-forwarded-for")
            .map(|h| {
                h.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let address = |text: &str| {
            forwarded_address(text).ok_or_else(|| {
                let shown: String = text.chars().take(60).collect();
                unreadable(format!("`{shown}` is not an address"))
            })
        };
        if hops > 0 {
            // The client is the entry the farthest trusted proxy appended
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
                .and_then(|text| address(text));
        }
        // Right to left past trusted proxies: the connecting address
        // first, then each entry; entries left of the client are never
        // read, whatever they hold. Without the connecting address there
        // is no telling who wrote the header.
        let trusted = |ip: &IpAddr| self.trusted.iter().any(|net| net.contains(ip));
        let source = source.ok_or_else(unknown_source)?;
        if !trusted(&source) {
            return Ok(source);
        }
        for text in forwarded.iter().rev() {
            let ip = address(text)?;
            if !trusted(&ip) {
                return Ok(ip);
            }
        }
        Err(unreadable(
            "holds only trusted proxies (`gateway.client.trusted_proxies`), and so does the connecting address: the client cannot be told"
                .to_owned(),
        ))
    }

    /// The claims, from where the door found them: ext_authz metadata, or
    /// the configured header as JSON or base64url JSON.
    fn claims(&self, ask: &GatewayAsk<'_>) -> Result<Map<String, Value>, FieldError> {
        let config = &self.config.claims;
        let (field, json) = match &ask.claims {
            ClaimsAt::Metadata(found) => {
                let field = format!(
                    "metadata_context.filter_metadata[\"{}\"].{}",
                    config.metadata_namespace, config.metadata_field
                );
                let Some(json) = found.clone() else {
                    return Err(FieldError::new(
                        field,
                        "is missing: no verified claims reached stepgate (`gateway.claims.ext_authz_from` is \"metadata\")",
                    ));
                };
                (field, json)
            }
            ClaimsAt::Header => {
                let field = config.header.to_ascii_lowercase();
                let text = (ask.header)(&field)
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        FieldError::new(
                            field.clone(),
                            "is missing (or not visible ASCII): no verified claims reached stepgate",
                        )
                    })?;
                let decoded;
                let bytes = if text.starts_with('{') {
                    text.as_bytes()
                } else {
                    use base64::Engine as _;
                    decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(text.trim_end_matches('='))
                        .map_err(|_| {
                            FieldError::new(
                                field.clone(),
                                "is neither a JSON object nor base64url JSON (or was sent twice)",
                            )
                        })?;
                    decoded.as_slice()
                };
                admission::json_members_unique(bytes)
                    .map_err(|e| FieldError::new(field.clone(), e))?;
                let json = serde_json::from_slice::<Value>(bytes).map_err(|_| {
                    FieldError::new(field.clone(), "is not JSON (or was sent twice)")
                })?;
                (field, json)
            }
        };
        match json {
            Value::Object(claims) => Ok(claims),
            _ => Err(FieldError::new(field, "is not a JSON object")),
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
        const CLAIMS: &str = "claims";
        let claims = self.claims(ask)?;
        let names = &self.config.claims;
        // A claim name left empty in the config is not read.
        let string = |name: &str| {
            if name.is_empty() {
                Ok(None)
            } else {
                member::string(&claims, CLAIMS, name)
            }
        };
        let user_id = string(&names.subject)?
            .ok_or_else(|| FieldError::new(format!("{CLAIMS}.{}", names.subject), "is required"))?;
        let tenant = string(&names.tenant)?.unwrap_or_default();
        let aal = match string(&names.acr)? {
            None => 0,
            Some(value) => acr.level_of(value).map(|l| l.number()).ok_or_else(|| {
                let shown: String = value.chars().take(60).collect();
                FieldError::new(
                    format!("{CLAIMS}.{}", names.acr),
                    format!("`{shown}` is not an acr value this deployment knows (`acr.aal1..3`, `acr.aliases`)"),
                )
            })?,
        };
        let amr = if names.amr.is_empty() {
            Vec::new()
        } else {
            member::strings(&claims, CLAIMS, &names.amr)?
        };
        let auth_time = if names.auth_time.is_empty() {
            0
        } else {
            member::whole_number(&claims, CLAIMS, &names.auth_time)?.unwrap_or(0)
        };
        let ip = self.client(ask)?.to_string();
        let device_id = self.device(ask);
        let user_agent = (ask.header)("user-agent").unwrap_or_default();
        let query = ask
            .target
            .split('#')
            .next()
            .and_then(|t| t.split_once('?'))
            .map(|(_, q)| q)
            .unwrap_or_default();
        let mut values: Vec<(String, Value)> = Vec::new();
        for (name, attribute) in &route.attributes {
            let field = || format!("attributes.{name}");
            let raw = match attribute.from {
                AttributeSource::Path => params.get(&attribute.name).cloned(),
                AttributeSource::Query => {
                    let mut found = query_values(query, &attribute.name);
                    if found.len() > 1 {
                        // An upstream may read the first or the last: judge
                        // neither.
                        return Err(FieldError::new(
                            field(),
                            format!(
                                "query parameter `{}` is sent {} times; send it once",
                                attribute.name,
                                found.len()
                            ),
                        ));
                    }
                    found.pop()
                }
                AttributeSource::Header => {
                    (ask.header)(&attribute.name.to_ascii_lowercase()).map(str::to_owned)
                }
            };
            let Some(raw) = raw else { continue };
            let shown = || raw.chars().take(60).collect::<String>();
            let value = match attribute.kind {
                AttributeType::String => Value::String(raw.clone()),
                AttributeType::Long => {
                    raw.trim().parse::<i64>().map(Value::from).map_err(|_| {
                        FieldError::new(
                            field(),
                            format!("`{}` is not a whole number within ±2^63", shown()),
                        )
                    })?
                }
                AttributeType::Bool => match raw.trim() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => {
                        return Err(FieldError::new(
                            field(),
                            format!("`{}` is not `true` or `false`", shown()),
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
    /// the fault's status (503, 500), which stops the request.
    pub async fn check(&self, ask: &GatewayAsk<'_>, engine: &Engine, call: &Call) -> Verdict {
        let path = match segments(ask.target) {
            Some(path) if !ask.method.is_empty() => path,
            _ => {
                return self.unreadable_request(
                    &FieldError::new(
                        "request",
                        "names no method and path (origin-form `/…` or absolute-form) to map",
                    ),
                    call,
                    engine,
                );
            }
        };
        let mapped = self.routes.iter().find_map(|route| {
            route
                .matches(ask.method, &path)
                .map(|params| (route, params))
        });
        let Some((route, params)) = mapped else {
            return match self.config.unmapped {
                // Nothing was decided: no decision id may reach the
                // upstream, whoever wrote one.
                UnmappedAnswer::Allow => {
                    engine.metrics().unmapped(call.door.label(), "allow");
                    Verdict::Allow {
                        headers: Vec::new(),
                        remove: vec![self.config.decision_header.to_ascii_lowercase()],
                    }
                }
                UnmappedAnswer::Deny => {
                    let kind = FaultKind::UnmappedRoute;
                    engine.metrics().unmapped(call.door.label(), "deny");
                    engine.recorder().refused(call, kind, None);
                    fault(
                        403,
                        kind.code(),
                        "no route in `gateway.routes` maps this request".to_owned(),
                    )
                }
            };
        };
        let input = match self.admit(ask, route, &params, engine.acr()) {
            Ok(input) => input,
            Err(err) => return self.unreadable_request(&err, call, engine),
        };
        match engine.decide(&input, call).await {
            Ok(answer) => self.verdict(&answer, engine),
            // What the request carried broke a rule only the core checks
            // (an `auth_time` in the future, an attribute the schema types
            // otherwise): unreadable, like the rest.
            Err(EngineError::Refused(Refusal::Invalid(rule))) => {
                self.unreadable_request(&rule, call, engine)
            }
            Err(EngineError::Refused(Refusal::Attributes { journey, message })) => {
                let rule = FieldError::new(
                    "attributes",
                    format!("do not match the schema for journey `{journey}`: {message}"),
                );
                self.unreadable_request(&rule, call, engine)
            }
            Err(err) => {
                // The route's journey is the config's, not the caller's:
                // checked at start and on every reload, so this is the
                // service's fault if it ever happens.
                let err = match err {
                    EngineError::Refused(Refusal::UnknownJourney { .. }) => {
                        EngineError::Failed(ServerFault::Internal(format!(
                            "`gateway.routes` maps a request to journey `{}`, which the policies do not have",
                            route.journey
                        )))
                    }
                    other => other,
                };
                let err = ServiceError::from(err);
                let kind = err.record(call, engine.recorder());
                let mut verdict =
                    fault(statuses(kind).1.as_u16(), kind.code(), err.public_message());
                self.challenge_if_401(&mut verdict);
                verdict
            }
        }
    }

    /// The configured answer for a request stepgate cannot read, naming
    /// what was wrong.
    /// The refusal for a caller that may not use the gateway doors at all
    /// (`check` is not among its operations), counted and logged; none if
    /// it may. Asked before anything of the request is read.
    pub fn not_permitted(&self, call: &Call, engine: &Engine) -> Option<Verdict> {
        let err = call
            .caller()
            .may_use(crate::access::Operation::Check)
            .err()?;
        let kind = FaultKind::PermissionDenied;
        engine.recorder().refused(call, kind, Some(err.field()));
        Some(self.refusal(kind, &FieldError::new(err.field(), err.to_string())))
    }

    pub fn unreadable_request(&self, err: &FieldError, call: &Call, engine: &Engine) -> Verdict {
        let kind = FaultKind::UnreadableRequest;
        engine.recorder().refused(call, kind, Some(&err.field));
        self.refusal(kind, err)
    }

    /// The configured answer (`gateway.unreadable_status`) to a request
    /// refused for `kind`, naming what was wrong; counting and logging it
    /// is the caller's.
    pub fn refusal(&self, kind: FaultKind, err: &FieldError) -> Verdict {
        let mut verdict = fault(self.config.unreadable_status, kind.code(), err.to_string());
        self.challenge_if_401(&mut verdict);
        verdict
    }

    /// A 401 carries a challenge (RFC 9110 §15.5.2): a plain `Bearer`, with
    /// no error code, for a request that carried no usable credentials
    /// (RFC 6750 §3.1).
    fn challenge_if_401(&self, verdict: &mut Verdict) {
        if let Verdict::Stop {
            status: 401,
            headers,
            ..
        } = verdict
        {
            headers.push(("www-authenticate".to_owned(), "Bearer".to_owned()));
        }
    }

    /// An answer as a verdict: the decision id to the upstream on an allow
    /// (and the degraded mark, when it is one); a 401 with the RFC 9470
    /// challenge or a 403, each with the decision's summary as the body.
    fn verdict(&self, answer: &Answer, engine: &Engine) -> Verdict {
        let d = &answer.decision;
        let id = answer.decision_id.to_string();
        let decision_header = self.config.decision_header.clone();
        let mut headers = vec![(decision_header, id)];
        let status = match d.outcome {
            Outcome::Allow => {
                let mut remove = Vec::new();
                if answer.degraded {
                    headers.push((DEGRADED_HEADER.to_owned(), "true".to_owned()));
                } else {
                    remove.push(DEGRADED_HEADER.to_owned());
                }
                return Verdict::Allow { headers, remove };
            }
            Outcome::StepUp(level) => {
                let description = d
                    .reasons
                    .first()
                    .map_or("a higher authentication level is required", |r| {
                        r.message.as_str()
                    });
                headers.push((
                    "www-authenticate".to_owned(),
                    challenge(description, engine.acr().for_level(level), d.max_age),
                ));
                401
            }
            Outcome::Deny => 403,
        };
        headers.push((OUTCOME_HEADER.to_owned(), d.outcome.as_str().to_owned()));
        let mut verdict = stop(status, Value::Object(summary(answer, engine.acr())));
        if let Verdict::Stop { headers: all, .. } = &mut verdict {
            all.extend(headers);
        }
        verdict
    }
}

/// A stop that is not a decision: `{"code", "message"}` and the fault
/// header.
fn fault(status: u16, code: &str, message: String) -> Verdict {
    let mut verdict = stop(status, json!({"code": code, "message": message}));
    if let Verdict::Stop { headers, .. } = &mut verdict {
        headers.push((FAULT_HEADER.to_owned(), code.to_owned()));
    }
    verdict
}

fn stop(status: u16, body: Value) -> Verdict {
    Verdict::Stop {
        status,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: body.to_string(),
    }
}

/// The RFC 9470 §3 challenge: `Bearer error="insufficient_user_authentication",
/// error_description="…", acr_values="…"`. Each value is a quoted string
/// (RFC 9110 §5.6.4) holding only the characters RFC 6750 §3 allows in
/// `error_description` (`%x20-21 / %x23-5B / %x5D-7E`): `"` is written as
/// `'`, and `\` and anything outside visible ASCII and the space as `?`,
/// so no value can end the string or the header early. With `max_age`
/// (seconds), the challenge also carries `max_age="…"`, the oldest the
/// new authentication may be (RFC 9470 §3).
pub fn challenge(description: &str, acr: &str, max_age: Option<u32>) -> String {
    let mut header = format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"{}\", acr_values=\"{}\"",
        quoted(description),
        quoted(acr)
    );
    if let Some(age) = max_age {
        header.push_str(&format!(", max_age=\"{age}\""));
    }
    header
}

/// The inside of an RFC 6750 quoted value.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '?',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
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

    fn at(route: &Route, method: &str, target: &str) -> Option<BTreeMap<String, String>> {
        route.matches(method, &segments(target).expect("a path"))
    }

    #[test]
    fn routes_match_exactly_by_prefix_or_by_template() {
        let exact = route(Some("/pay"), None, None);
        assert!(at(&exact, "POST", "/pay").is_some());
        assert!(at(&exact, "post", "/pay").is_some(), "methods ignore case");
        assert!(at(&exact, "GET", "/pay").is_none());
        assert!(at(&exact, "POST", "/pay/x").is_none());
        assert!(at(&exact, "POST", "/payx").is_none());
        let prefix = route(None, Some("/api/"), None);
        assert!(at(&prefix, "POST", "/api/anything").is_some());
        assert!(at(&prefix, "POST", "/api").is_some());
        assert!(at(&prefix, "POST", "/apix").is_none(), "whole segments");
        let template = route(None, None, Some("/accounts/{account}/payouts"));
        let params = at(&template, "POST", "/accounts/a%2Fb+c/payouts").expect("match");
        assert_eq!(
            params.get("account").map(String::as_str),
            Some("a/b+c"),
            "a path keeps its `+`"
        );
        assert!(at(&template, "POST", "/accounts//payouts").is_none());
        assert!(at(&template, "POST", "/accounts/1/payouts/2").is_none());
    }

    #[test]
    fn other_spellings_of_a_mapped_path_match_it() {
        let exact = route(Some("/payments"), None, None);
        for spelling in [
            "/payments/",
            "//payments",
            "/payments;jsessionid=1",
            "/%70ayments",
            "/%70AYMENTS/../payments",
            "/x/../payments",
            "/./payments",
            "/%2e/payments",
            "/payments?amount=1",
            "/payments#top",
            "https://shop.example/payments",
        ] {
            assert!(at(&exact, "POST", spelling).is_some(), "{spelling}");
        }
        for other in ["/payments%2F", "/Payments", "/payments/x", "/%2Fpayments"] {
            assert!(at(&exact, "POST", other).is_none(), "{other}");
        }
        assert_eq!(segments("payments"), None, "not a path");
        assert_eq!(segments("*"), None);
        assert_eq!(
            segments("/a/../../b").expect("path"),
            vec!["b".to_owned()],
            "`..` stops at the root"
        );
    }

    #[test]
    fn challenges_quote_their_values_within_rfc_6750() {
        assert_eq!(
            challenge("say \"hi\" \\ now", "urn:acr:2", None),
            "Bearer error=\"insufficient_user_authentication\", error_description=\"say 'hi' ? now\", acr_values=\"urn:acr:2\""
        );
        assert_eq!(quoted("zoë\r\nx"), "zo???x");
        assert_eq!(
            challenge("stale", "urn:acr:2", Some(900)),
            "Bearer error=\"insufficient_user_authentication\", error_description=\"stale\", acr_values=\"urn:acr:2\", max_age=\"900\""
        );
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
            claims: ClaimsAt::Header,
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
        let proxies = gateway(0, &["10.0.0.0/8"]);
        assert_eq!(client_of(&proxies, xff, "10.0.0.9").unwrap(), "81.2.69.142");
        // A connecting address that is not a proxy is the client.
        assert_eq!(client_of(&proxies, xff, "81.2.69.1").unwrap(), "81.2.69.1");
        // Only proxies: nobody to name.
        assert!(client_of(&proxies, None, "10.0.0.9").is_err());
        assert!(client_of(&proxies, Some("10.1.1.1"), "10.0.0.9").is_err());
        assert!(client_of(&gateway(1, &[]), Some("garbage"), "10.0.0.9").is_err());
    }

    #[test]
    fn entries_left_of_the_client_are_never_read() {
        let proxies = gateway(0, &["10.0.0.0/8"]);
        for junk in ["unknown", "not-an-address", "1.2.3.4:5:6", "_hidden"] {
            let xff: &'static str = Box::leak(format!("{junk}, 81.2.69.142").into_boxed_str());
            assert_eq!(
                client_of(&proxies, Some(xff), "10.0.0.9").unwrap(),
                "81.2.69.142",
                "{junk}"
            );
        }
    }

    #[test]
    fn forwarded_addresses_come_in_several_spellings() {
        let g = gateway(1, &[]);
        for (entry, client) in [
            ("192.0.2.1:5678", "192.0.2.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
        ] {
            let xff: &'static str = Box::leak(format!("6.6.6.6, {entry}").into_boxed_str());
            assert_eq!(
                client_of(&g, Some(xff), "10.0.0.9").unwrap(),
                client,
                "{entry}"
            );
        }
    }

    #[test]
    fn ipv4_mapped_connecting_addresses_match_ipv4_proxies() {
        // A dual-stack listener sees an IPv4 proxy as ::ffff:10.0.0.9.
        let g = gateway(0, &["10.0.0.0/8"]);
        assert_eq!(
            client_of(&g, Some("81.2.69.142"), "::ffff:10.0.0.9").unwrap(),
            "81.2.69.142"
        );
        let mapped = gateway(0, &["::ffff:10.0.0.0/104"]);
        assert_eq!(
            client_of(&mapped, Some("81.2.69.142"), "10.0.0.9").unwrap(),
            "81.2.69.142"
        );
    }

    #[test]
    fn query_parameters_and_cookies_are_decoded() {
        assert_eq!(
            query_values("a=1&amount=15%2000&b", "amount"),
            vec!["15 00".to_owned()]
        );
        assert_eq!(query_values("amount=1+2", "amount"), vec!["1 2".to_owned()]);
        assert!(query_values("a=1", "amount").is_empty());
        assert_eq!(query_values("amount=1&amount=2", "amount").len(), 2);
        assert_eq!(
            cookie("x=1; device_id=\"abc\"; y=2", "device_id").as_deref(),
            Some("abc")
        );
    }
}

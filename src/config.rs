//! The service configuration: one TOML file, every key optional.
//!
//! Each section has its defaults as named constants and a doc comment per
//! field; [`Config::validate`] reports every problem at once, so an operator
//! fixes a bad file in one pass instead of one error per restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::decision::Aal;

/// Default gRPC listen address: loopback only, so a fresh start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default HTTP listen address (the JSON API, AuthZEN and forward-auth),
/// loopback only too.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:50052";
/// Default policy directory, relative to the working directory (or to the
/// config file when set there).
pub const DEFAULT_POLICIES_DIR: &str = "policies";
/// Where the admin listener (`/metrics`, `/healthz`, `/readyz`) listens:
/// loopback, away from the API ports; 9464 is the port OpenTelemetry's
/// Prometheus exporters use, and it leaves Prometheus' own 9090 free.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// Lines the decision log holds while its sink catches up; beyond this,
/// lines are dropped and counted, never waited for.
pub const DEFAULT_DECISION_LOG_QUEUE: usize = 65_536;
const MAX_DECISION_LOG_QUEUE: usize = 1 << 22;
/// Seconds in-flight requests get to finish after SIGTERM before the
/// process exits anyway (Kubernetes' default termination grace is 30 s).
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 20;
const MAX_SHUTDOWN_GRACE_SECS: u64 = 3600;
/// Default acr values, one per assurance level (the idmanagement.gov URIs
/// that many IdPs already understand).
pub const DEFAULT_ACR_AAL1: &str = "http://idmanagement.gov/ns/assurance/aal/1";
pub const DEFAULT_ACR_AAL2: &str = "http://idmanagement.gov/ns/assurance/aal/2";
pub const DEFAULT_ACR_AAL3: &str = "http://idmanagement.gov/ns/assurance/aal/3";
/// Default retention of per-user and per-IP context: 30 days.
pub const DEFAULT_RETENTION_SECS: u64 = 30 * 24 * 3600;
pub const DEFAULT_MAX_USERS: u64 = 1_000_000;
pub const DEFAULT_MAX_IPS: u64 = 1_000_000;
pub const DEFAULT_MAX_DEVICES_PER_USER: usize = 32;
pub const DEFAULT_MAX_COUNTRIES_PER_USER: usize = 16;
/// Impossible travel: faster than an airliner...
pub const DEFAULT_IMPOSSIBLE_TRAVEL_KMH: u32 = 1000;
/// ...over at least this distance, so city-level noise never fires.
pub const DEFAULT_IMPOSSIBLE_TRAVEL_MIN_KM: u32 = 500;
/// Upper bound on the timestamps kept per failure window; the counts that
/// policies compare against saturate here.
pub const DEFAULT_MAX_EVENTS_PER_KEY: usize = 256;
pub const DEFAULT_USER_FAILURES_WINDOW_SECS: u64 = 15 * 60;
pub const DEFAULT_IP_FAILURES_WINDOW_SECS: u64 = 15 * 60;
pub const DEFAULT_IP_DISTINCT_USERS_WINDOW_SECS: u64 = 10 * 60;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024;
/// An Envoy check carries the whole request's headers: 64 KiB leaves room
/// for Envoy's own 60 KiB header limit.
pub const DEFAULT_MAX_CHECK_REQUEST_BYTES: usize = 64 * 1024;
/// How far ahead of the server clock a caller's time may be and still read
/// as "now": five minutes, the skew Kerberos and most JWT libraries allow.
pub const DEFAULT_MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Evaluations one AuthZEN batch may carry: each is a full decision,
/// remembered for its report, so a batch is bounded like a request.
pub const DEFAULT_MAX_BATCH_EVALUATIONS: usize = 64;
/// Default `limits.max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Default `limits.decision_budget_ms`.
pub const DEFAULT_DECISION_BUDGET_MS: u64 = 500;
/// Shortest caller token accepted, in bytes.
pub const MIN_TOKEN_BYTES: usize = 32;
const MAX_BATCH_EVALUATIONS: usize = 1000;
const MAX_CLOCK_SKEW_SECS: u64 = 3600;
/// How long a decision is remembered for the outcome reported against it:
/// long enough for a user to fetch a code from a phone or an email.
pub const DEFAULT_DECISION_TTL_SECS: u64 = 15 * 60;
const MIN_DECISION_TTL_SECS: u64 = 60;
const MAX_DECISION_TTL_SECS: u64 = 24 * 3600;
pub const DEFAULT_MAX_DECISIONS: u64 = 1_000_000;
/// A success reported without a decision completes a sign-in only at this
/// level or above: a multi-factor sign-in (NIST SP 800-63B AAL2).
pub const DEFAULT_UNDECIDED_MIN_AAL: u32 = 2;
/// Only positions located to a city within this radius feed impossible
/// travel; country-level records carry radii of 500 to 1000 km.
pub const DEFAULT_TRAVEL_MAX_ACCURACY_KM: u32 = 200;
/// The NAT64 prefix read by default: the well-known prefix (RFC 6052 §2.1).
/// The local-use block `64:ff9b:1::/48` (RFC 8215) is not a prefix itself:
/// each network carves its own out of it, of a length only it knows.
pub const DEFAULT_NAT64_PREFIXES: [&str; 1] = ["64:ff9b::/96"];
pub const DEFAULT_RISK_MEDIUM_AT: u32 = 30;
pub const DEFAULT_RISK_HIGH_AT: u32 = 60;
/// How long the policy directories must stay quiet before a reload: long
/// enough for an editor's save or a `git checkout` to finish.
pub const DEFAULT_POLICY_DEBOUNCE_MS: u64 = 500;
/// Default for `policy_cache.entries`: far more distinct contexts than the
/// bundled pack produces (a few hundred), at roughly 0.3 KiB each.
pub const DEFAULT_POLICY_CACHE_ENTRIES: usize = 16_384;
/// The largest `policy_cache.entries` accepted.
pub const MAX_POLICY_CACHE_ENTRIES: usize = 4_194_304;
const MAX_POLICY_DEBOUNCE_MS: u64 = 60_000;

/// Hard limits that a config cannot pass.
const MAX_WINDOW_SECS: u64 = 7 * 24 * 3600;
const MAX_RETENTION_SECS: u64 = 400 * 24 * 3600;
/// Counts saturate at `max_events_per_key`; below this a policy threshold
/// such as "20 failures" could silently never be reached.
const MIN_EVENTS_PER_KEY: usize = 32;
/// The largest value `limits.max_request_bytes` may take.
pub const MAX_REQUEST_BYTES_CEILING: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// The HTTP listener: the JSON API, AuthZEN and forward-auth.
    pub http: HttpConfig,
    /// How gateway requests (Envoy ext_authz, forward-auth) become
    /// decisions: routes, claims, client addresses, answers.
    pub gateway: GatewayConfig,
    /// Directory holding `*.cedar`, `schema.cedarschema` and `journeys.toml`.
    pub policies_dir: PathBuf,
    /// A candidate policy directory evaluated beside the live one on every
    /// request. It never changes an answer; where it would have answered
    /// differently, the divergence is counted and logged. None by default.
    pub shadow_policies_dir: Option<PathBuf>,
    /// When changed policy files take effect.
    pub policy_reload: PolicyReloadConfig,
    /// Memoised policy answers for contexts already seen.
    pub policy_cache: PolicyCacheConfig,
    /// The acr value asked for at each assurance level.
    pub acr: AcrConfig,
    /// Where per-user and per-IP context lives.
    pub store: StoreConfig,
    /// Sliding-window lengths of the behaviour signals.
    pub windows: WindowConfig,
    /// IP address lists.
    pub ip_lists: IpListConfig,
    /// MaxMind databases and travel limits.
    pub geo: GeoConfig,
    /// Weights and bands of the risk score.
    pub risk: RiskConfig,
    /// What a reported outcome needs to teach stepgate.
    pub reporting: ReportingConfig,
    /// How user ids are compared.
    pub identifiers: IdentifiersConfig,
    /// How client addresses are read.
    pub network: NetworkConfig,
    /// Request bounds.
    pub limits: LimitsConfig,
    /// The service's own log (stderr).
    pub log: LogConfig,
    /// The decision log: one JSON line per decision, report and refusal.
    pub decision_log: DecisionLogConfig,
    /// The admin listener: metrics and health for operators.
    pub admin: AdminConfig,
    /// How the service stops.
    pub shutdown: ShutdownConfig,
    /// Who may ask.
    pub security: SecurityConfig,
    /// TLS on the decision listeners (`listen`, `http.listen`), and the CA
    /// that client certificates must chain to.
    pub tls: Option<TlsConfig>,
    /// The services allowed to ask, each bound to what it may ask about.
    /// None configured: every request is served as `anonymous`, which is
    /// allowed only on loopback (or with
    /// `security.allow_unauthenticated_callers`).
    pub callers: Vec<CallerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http: HttpConfig::default(),
            gateway: GatewayConfig::default(),
            policies_dir: PathBuf::from(DEFAULT_POLICIES_DIR),
            shadow_policies_dir: None,
            policy_reload: PolicyReloadConfig::default(),
            policy_cache: PolicyCacheConfig::default(),
            acr: AcrConfig::default(),
            store: StoreConfig::default(),
            windows: WindowConfig::default(),
            ip_lists: IpListConfig::default(),
            geo: GeoConfig::default(),
            risk: RiskConfig::default(),
            reporting: ReportingConfig::default(),
            identifiers: IdentifiersConfig::default(),
            network: NetworkConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            decision_log: DecisionLogConfig::default(),
            admin: AdminConfig::default(),
            shutdown: ShutdownConfig::default(),
            security: SecurityConfig::default(),
            tls: None,
            callers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Address the HTTP server listens on; must differ from `listen`.
    pub listen: SocketAddr,
    /// The PDP identifier AuthZEN metadata names: the URL callers reach
    /// stepgate at (`https://` in production, where TLS sits in front;
    /// `http://` is accepted for local use), no query or fragment. Unset:
    /// the `Host` the caller used, over `http://`; set it wherever a cache
    /// sits in front, so no caller can choose what others are told.
    pub authzen_identifier: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            authzen_identifier: None,
        }
    }
}

/// What a gateway is told for a request no route maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedAnswer {
    /// 403: a route stepgate was not told about is not let through.
    #[default]
    Deny,
    /// Let it through: stepgate only guards the routes it maps.
    Allow,
}

/// Where a journey attribute comes from in a gateway request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeSource {
    /// A `{name}` segment of the route's template.
    Path,
    /// A query parameter.
    Query,
    /// A request header.
    Header,
}

/// The Cedar type a gateway attribute is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeType {
    #[default]
    String,
    /// A whole number (Cedar `Long`).
    Long,
    /// `true` or `false`.
    Bool,
}

impl AttributeType {
    /// The name the config spells it with.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Long => "long",
            Self::Bool => "bool",
        }
    }
}

/// One journey attribute read from a gateway request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAttribute {
    /// Where it is read from.
    pub from: AttributeSource,
    /// The path parameter, query parameter or header name.
    pub name: String,
    /// The type it is read as; must match the schema's.
    #[serde(default, rename = "type")]
    pub kind: AttributeType,
}

/// One route of the gateway's route map: HTTP methods and a path to a
/// journey. Exactly one of `path`, `prefix`, `template` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Upper-case HTTP methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The whole path, exactly.
    pub path: Option<String>,
    /// Any path starting with this.
    pub prefix: Option<String>,
    /// A path whose `{name}` segments match any one segment.
    pub template: Option<String>,
    /// The journey a matching request is.
    pub journey: String,
    /// Journey attributes read from the request.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, RouteAttribute>,
}

/// Where a gateway request's claims (the verified token's payload) are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimsConfig {
    /// ext_authz: the `metadata_context` namespace holding the payload (the
    /// `jwt_authn` filter's).
    pub metadata_namespace: String,
    /// ext_authz: the field in that namespace (`payload_in_metadata`).
    pub metadata_field: String,
    /// A header carrying the payload as JSON or as base64url JSON (the
    /// `jwt_authn` filter's `forward_payload_header`): the source for
    /// forward-auth, and for ext_authz when `ext_authz_from = "header"`.
    /// Whatever sits in front must set it from a verified token and
    /// overwrite (or remove) a client's own.
    pub header: String,
    /// ext_authz: where the claims are read, one place only, never a
    /// fallback (a client can send a header of its own wherever the token
    /// was optional): `metadata` (default) or `header`.
    pub ext_authz_from: ClaimsSource,
    /// The claim naming the user (`sub`); required.
    pub subject: String,
    /// The claim naming the tenant; empty: none.
    pub tenant: String,
    /// The claim carrying the acr value, read through `acr.aal1..3` and
    /// `acr.aliases`.
    pub acr: String,
    /// The claim carrying the amr values (RFC 8176).
    pub amr: String,
    /// The claim carrying the authentication time, unix seconds.
    pub auth_time: String,
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self {
            metadata_namespace: "envoy.filters.http.jwt_authn".to_owned(),
            metadata_field: "jwt_payload".to_owned(),
            header: "x-jwt-payload".to_owned(),
            ext_authz_from: ClaimsSource::Metadata,
            subject: "sub".to_owned(),
            tenant: String::new(),
            acr: "acr".to_owned(),
            amr: "amr".to_owned(),
            auth_time: "auth_time".to_owned(),
        }
    }
}

/// Where ext_authz reads the claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimsSource {
    /// `metadata_context`, under `metadata_namespace` and `metadata_field`.
    #[default]
    Metadata,
    /// The request header `header`.
    Header,
}

/// Which headers name the original request at the forward-auth endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OriginalHeaders {
    /// `X-Original-Method` and `X-Original-URI`, set by nginx as the README
    /// configures it.
    #[default]
    #[serde(rename = "x-original")]
    XOriginal,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`, set by Traefik
    /// ForwardAuth and Caddy `forward_auth`.
    #[serde(rename = "x-forwarded")]
    XForwarded,
}

impl OriginalHeaders {
    /// The method's and the URI's header names, lower case.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::XOriginal => ("x-original-method", "x-original-uri"),
            Self::XForwarded => ("x-forwarded-method", "x-forwarded-uri"),
        }
    }
}

/// The forward-auth endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardAuthConfig {
    /// The one pair of headers read for the original method and URI; the
    /// other pair is ignored, since a proxy passes a client's own headers
    /// on and only overwrites the ones it sets.
    pub original_headers: OriginalHeaders,
}

/// How the client behind a gateway is found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Proxies between the client and stepgate that append to
    /// `x-forwarded-for`: the client is that many entries from the right.
    /// 0 with no `trusted_proxies`: the connecting address is the client.
    pub trusted_hops: usize,
    /// Proxy addresses (CIDRs): `x-forwarded-for` is read right to left
    /// past them, and the first other address is the client. Not together
    /// with `trusted_hops`.
    pub trusted_proxies: Vec<String>,
    /// A header carrying the device id; empty: none.
    pub device_header: String,
    /// A cookie carrying the device id; empty: none.
    pub device_cookie: String,
}

/// Gateway doors: Envoy ext_authz and HTTP forward-auth.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The route map; the first route that matches decides the journey.
    pub routes: Vec<RouteConfig>,
    /// The answer for a request no route maps.
    pub unmapped: UnmappedAnswer,
    /// The status (401 or 403) for a request stepgate cannot read: no
    /// subject, malformed claims, an unreadable address.
    pub unreadable_status: u16,
    /// The header carrying the decision id to the upstream on an allow.
    pub decision_header: String,
    /// Where the claims are.
    pub claims: ClaimsConfig,
    /// Where the client and its device are.
    pub client: ClientConfig,
    /// The forward-auth endpoint's reading of the original request.
    pub forward_auth: ForwardAuthConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            unmapped: UnmappedAnswer::Deny,
            unreadable_status: 403,
            decision_header: "x-stepgate-decision-id".to_owned(),
            claims: ClaimsConfig::default(),
            client: ClientConfig::default(),
            forward_auth: ForwardAuthConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcrConfig {
    /// acr value for AAL1.
    pub aal1: String,
    /// acr value for AAL2.
    pub aal2: String,
    /// acr value for AAL3.
    pub aal3: String,
    /// Other acr values callers send (in token claims, in AuthZEN subject
    /// properties) and the level each stands for (1 to 3), since identity
    /// providers spell them differently: `{ "mfa" = 2, "phr" = 3 }`.
    pub aliases: std::collections::BTreeMap<String, u32>,
}

impl Default for AcrConfig {
    fn default() -> Self {
        Self {
            aal1: DEFAULT_ACR_AAL1.to_owned(),
            aal2: DEFAULT_ACR_AAL2.to_owned(),
            aal3: DEFAULT_ACR_AAL3.to_owned(),
            aliases: std::collections::BTreeMap::new(),
        }
    }
}

impl AcrConfig {
    /// The acr value asked for at `aal`.
    pub fn for_level(&self, aal: Aal) -> &str {
        match aal {
            Aal::One => &self.aal1,
            Aal::Two => &self.aal2,
            Aal::Three => &self.aal3,
        }
    }

    /// The level an acr value stands for: one of the three configured
    /// values, or an alias; `None` for any other value.
    pub fn level_of(&self, acr: &str) -> Option<Aal> {
        Aal::ALL
            .into_iter()
            .find(|level| self.for_level(*level) == acr)
            .or_else(|| self.aliases.get(acr).and_then(|n| Aal::from_number(*n)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// In-process caches; one replica.
    Memory,
    /// Redis, Redis Cluster or Valkey (`[store.redis]`), shared by every
    /// replica.
    Redis,
}

/// Default `store.redis.url`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default `store.redis.key_prefix`.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "sg";
/// Default `store.redis.timeout_ms`: a store call slower than this makes a
/// degraded answer.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 50;
/// Default `store.redis.connect_timeout_ms`.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT_MS: u64 = 1000;
/// Default `store.redis.l1_ttl_ms`.
pub const DEFAULT_REDIS_L1_TTL_MS: u64 = 2000;
/// Default `store.redis.l1_max_entries`.
pub const DEFAULT_REDIS_L1_MAX_ENTRIES: u64 = 100_000;

/// Where the shared context lives (`store.backend = "redis"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// A single Redis or Valkey: `redis://host:port/db`, or its Unix
    /// socket on the same host, `unix:///path/to/redis.sock?db=N`
    /// (`rediss://` is not supported yet). Ignored when `cluster_nodes` is
    /// set.
    pub url: String,
    /// Redis Cluster: some of its nodes (`redis://host:port`); the rest are
    /// discovered. Empty: a single Redis at `url`.
    pub cluster_nodes: Vec<String>,
    /// A file holding the Redis password (AUTH), so it stays out of the
    /// config file; unset: none, or the one in the URL.
    pub password_file: Option<PathBuf>,
    /// What every key starts with, so several deployments can share a
    /// Redis (letters, digits, `-`, `_`, `.`; 1..32 bytes).
    pub key_prefix: String,
    /// The longest a store call may take, in milliseconds (1..10000), before
    /// the answer degrades to its tier's mode (`store.on_failure`); a
    /// caller's shorter deadline shortens it.
    pub timeout_ms: u64,
    /// The longest one connection attempt may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long a device or country found known is remembered by this
    /// replica without asking Redis, in milliseconds; 0: never. Counters
    /// are always read from Redis.
    pub l1_ttl_ms: u64,
    /// Most (user, device or country) entries the L1 holds.
    pub l1_max_entries: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_REDIS_URL.to_owned(),
            cluster_nodes: Vec::new(),
            password_file: None,
            key_prefix: DEFAULT_REDIS_KEY_PREFIX.to_owned(),
            timeout_ms: DEFAULT_REDIS_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
            l1_ttl_ms: DEFAULT_REDIS_L1_TTL_MS,
            l1_max_entries: DEFAULT_REDIS_L1_MAX_ENTRIES,
        }
    }
}

impl RedisConfig {
    /// The password in `password_file`, surrounding whitespace removed.
    pub fn password(&self) -> Result<Option<String>, crate::store::StoreError> {
        self.password_file
            .as_deref()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|text| text.trim().to_owned())
                    .map_err(|e| {
                        crate::store::StoreError::Setup(format!(
                            "`store.redis.password_file`: cannot read `{}`: {e}",
                            path.display()
                        ))
                    })
            })
            .transpose()
    }

    fn check(&self, problems: &mut Vec<String>) {
        let prefix_ok = (1..=32).contains(&self.key_prefix.len())
            && self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !prefix_ok {
            problems.push(format!(
                "`store.redis.key_prefix` `{}` must be 1..32 letters, digits, `-`, `_` or `.`",
                self.key_prefix
            ));
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            problems.push(format!(
                "`store.redis.timeout_ms` is {}; it must be between 1 and 10000",
                self.timeout_ms
            ));
        }
        if self.connect_timeout_ms == 0 {
            problems.push("`store.redis.connect_timeout_ms` must be at least 1".to_owned());
        }
        let urls = std::iter::once(("store.redis.url", &self.url)).chain(
            self.cluster_nodes
                .iter()
                .map(|node| ("store.redis.cluster_nodes", node)),
        );
        for (field, url) in urls {
            // A password in the URL is never repeated in a message.
            let shown = match url.split_once("://").and_then(|(scheme, rest)| {
                rest.split_once('@')
                    .map(|(_, host)| format!("{scheme}://***@{host}"))
            }) {
                Some(redacted) => redacted,
                None => url.clone(),
            };
            let unix = url.starts_with("unix://") || url.starts_with("redis+unix://");
            if field == "store.redis.url" && !url.starts_with("redis://") && !unix {
                problems.push(format!(
                    "`{field}` `{shown}` must be a `redis://host:port` or `unix:///path/to/redis.sock` URL"
                ));
            } else if field != "store.redis.url" && !url.starts_with("redis://") {
                problems.push(format!(
                    "`{field}` `{shown}` must be a `redis://host:port` URL"
                ));
            } else if redis::IntoConnectionInfo::into_connection_info(url.as_str()).is_err() {
                problems.push(format!("`{field}` `{shown}` is not a valid Redis URL"));
            }
        }
    }
}

/// What a decision answers when the context store is too slow or
/// unreachable: `allow` (fail open), `step_up_aal2` / `step_up_aal3` (ask
/// for that level unless the user already holds it), or `deny` (fail
/// closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum FailureMode {
    Allow,
    StepUp(Aal),
    Deny,
}

impl TryFrom<String> for FailureMode {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "allow" => Ok(Self::Allow),
            "step_up_aal2" => Ok(Self::StepUp(Aal::Two)),
            "step_up_aal3" => Ok(Self::StepUp(Aal::Three)),
            "deny" => Ok(Self::Deny),
            other => Err(format!(
                "`{other}` is not a failure mode; use `allow`, `step_up_aal2`, `step_up_aal3` or `deny`"
            )),
        }
    }
}

/// `store.on_failure`: a failure mode per journey tier. The defaults fail
/// open for low-tier journeys, ask for AAL2 on medium ones and fail closed
/// on high ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureModes {
    pub low: FailureMode,
    pub medium: FailureMode,
    pub high: FailureMode,
}

impl Default for FailureModes {
    fn default() -> Self {
        Self {
            low: FailureMode::Allow,
            medium: FailureMode::StepUp(Aal::Two),
            high: FailureMode::Deny,
        }
    }
}

impl FailureModes {
    pub fn for_tier(&self, tier: crate::decision::Tier) -> FailureMode {
        match tier {
            crate::decision::Tier::Low => self.low,
            crate::decision::Tier::Medium => self.medium,
            crate::decision::Tier::High => self.high,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Which backend holds the context.
    pub backend: StoreBackend,
    /// How long an idle user's or IP's context is kept, in seconds.
    pub retention_secs: u64,
    /// Most users kept at once (approximately: the cache is sharded); the
    /// least used go first.
    pub max_users: u64,
    /// Most IP addresses kept at once.
    pub max_ips: u64,
    /// Most known devices remembered per user; the oldest are forgotten.
    pub max_devices_per_user: usize,
    /// Most countries remembered per user; the oldest are forgotten.
    pub max_countries_per_user: usize,
    /// Most failure timestamps kept per user or IP (counts saturate here).
    pub max_events_per_key: usize,
    /// File holding the 32-byte key (64 hex characters) used to hash device
    /// and user ids. Unset: a random key per process, which is fine for the
    /// memory backend because its context does not outlive the process.
    pub hash_key_file: Option<PathBuf>,
    /// How long a decision is remembered so that the outcome reported for
    /// it can be judged against what it asked for, in seconds (60 to 86400).
    /// A report arriving later is judged as one without a decision.
    pub decision_ttl_secs: u64,
    /// Most decisions remembered at once; the oldest go first.
    pub max_decisions: u64,
    /// The shared store, when `backend = "redis"`.
    pub redis: RedisConfig,
    /// What each journey tier answers when the store is slow or down. The
    /// memory store never is.
    pub on_failure: FailureModes,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            retention_secs: DEFAULT_RETENTION_SECS,
            max_users: DEFAULT_MAX_USERS,
            max_ips: DEFAULT_MAX_IPS,
            max_devices_per_user: DEFAULT_MAX_DEVICES_PER_USER,
            max_countries_per_user: DEFAULT_MAX_COUNTRIES_PER_USER,
            max_events_per_key: DEFAULT_MAX_EVENTS_PER_KEY,
            hash_key_file: None,
            decision_ttl_secs: DEFAULT_DECISION_TTL_SECS,
            max_decisions: DEFAULT_MAX_DECISIONS,
            redis: RedisConfig::default(),
            on_failure: FailureModes::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Window of `behaviour.user_failures`, in seconds.
    pub user_failures_secs: u64,
    /// Window of `behaviour.ip_failures`, in seconds.
    pub ip_failures_secs: u64,
    /// Window of `behaviour.ip_distinct_failed_users`, in seconds.
    pub ip_distinct_users_secs: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            user_failures_secs: DEFAULT_USER_FAILURES_WINDOW_SECS,
            ip_failures_secs: DEFAULT_IP_FAILURES_WINDOW_SECS,
            ip_distinct_users_secs: DEFAULT_IP_DISTINCT_USERS_WINDOW_SECS,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpListConfig {
    /// Files of CIDR blocks or addresses, one a line, `#` comments; an IP in
    /// any of them sets `context.ip.deny_listed`.
    pub deny: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// MaxMind City or Country database (`.mmdb`). Unset: geo signals stay
    /// unknown.
    pub city_db: Option<PathBuf>,
    /// MaxMind ASN (or ISP) database. Unset: `ip.asn` stays unknown.
    pub asn_db: Option<PathBuf>,
    /// MaxMind Anonymous-IP database. Unset: the anonymity flags stay unknown.
    pub anonymous_ip_db: Option<PathBuf>,
    /// Travel faster than this (km/h) since the last located success is
    /// impossible.
    pub impossible_travel_kmh: u32,
    /// ...but only over at least this distance (km).
    pub impossible_travel_min_km: u32,
    /// Only positions located to a city with an accuracy radius of at most
    /// this many km feed impossible travel (1 to 20000).
    pub travel_max_accuracy_km: u32,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            city_db: None,
            asn_db: None,
            anonymous_ip_db: None,
            impossible_travel_kmh: DEFAULT_IMPOSSIBLE_TRAVEL_KMH,
            impossible_travel_min_km: DEFAULT_IMPOSSIBLE_TRAVEL_MIN_KM,
            travel_max_accuracy_km: DEFAULT_TRAVEL_MAX_ACCURACY_KM,
        }
    }
}

impl GeoConfig {
    /// The configured databases by kind.
    pub fn databases(&self) -> Vec<(crate::geo::DbKind, PathBuf)> {
        use crate::geo::DbKind;
        [
            (DbKind::City, &self.city_db),
            (DbKind::Asn, &self.asn_db),
            (DbKind::AnonymousIp, &self.anonymous_ip_db),
        ]
        .into_iter()
        .filter_map(|(kind, path)| path.clone().map(|p| (kind, p)))
        .collect()
    }
}

/// Points a signal adds to the risk score: `points` per unit, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weight {
    pub points: u32,
    pub cap: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// A device this user has not completed a sign-in on.
    pub new_device: Weight,
    /// The user has never completed a sign-in.
    pub first_sign_in: Weight,
    /// Per failure of this user in its window.
    pub user_failures: Weight,
    /// Per failure from this IP in its window.
    pub ip_failures: Weight,
    /// Per distinct user that failed from this IP in its window.
    pub ip_distinct_failed_users: Weight,
    /// The IP is on a deny list.
    pub ip_deny_listed: Weight,
    /// A country this user has not completed a sign-in from.
    pub new_country: Weight,
    /// Travel since the last located success was impossible.
    pub impossible_travel: Weight,
    /// A Tor exit node.
    pub tor_exit: Weight,
    /// A public proxy.
    pub public_proxy: Weight,
    /// A residential proxy.
    pub residential_proxy: Weight,
    /// An anonymous VPN.
    pub anonymous_vpn: Weight,
    /// A hosting provider (data centre).
    pub hosting_provider: Weight,
    /// Scores from here up are "medium".
    pub medium_at: u32,
    /// Scores from here up are "high".
    pub high_at: u32,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            new_device: Weight {
                points: 25,
                cap: 25,
            },
            first_sign_in: Weight {
                points: 10,
                cap: 10,
            },
            user_failures: Weight { points: 5, cap: 40 },
            ip_failures: Weight { points: 1, cap: 20 },
            ip_distinct_failed_users: Weight { points: 5, cap: 50 },
            ip_deny_listed: Weight {
                points: 100,
                cap: 100,
            },
            new_country: Weight {
                points: 15,
                cap: 15,
            },
            impossible_travel: Weight {
                points: 40,
                cap: 40,
            },
            tor_exit: Weight {
                points: 40,
                cap: 40,
            },
            public_proxy: Weight {
                points: 30,
                cap: 30,
            },
            residential_proxy: Weight {
                points: 20,
                cap: 20,
            },
            anonymous_vpn: Weight {
                points: 15,
                cap: 15,
            },
            hosting_provider: Weight {
                points: 15,
                cap: 15,
            },
            medium_at: DEFAULT_RISK_MEDIUM_AT,
            high_at: DEFAULT_RISK_HIGH_AT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted request message, in bytes as received; larger ones
    /// are refused with INVALID_ARGUMENT before they are decoded.
    pub max_request_bytes: usize,
    /// How far ahead of the server clock a time sent by a caller may be, in
    /// seconds (0 to 3600). Within it the time reads as now; beyond it the
    /// request is refused with INVALID_ARGUMENT.
    pub max_clock_skew_secs: u64,
    /// Largest Envoy `CheckRequest`, in bytes as received (256 B to 1 MiB):
    /// it carries the whole request's headers, cookies included.
    pub max_check_request_bytes: usize,
    /// Most evaluations in one AuthZEN batch (`/access/v1/evaluations`),
    /// 1 to 1000; a larger batch is refused whole with 400.
    pub max_batch_evaluations: usize,
    /// Most requests in progress at once over both decision listeners
    /// (1 to 100,000). One more is shed at once with UNAVAILABLE / 503 and
    /// a retry hint, so answers stay fast instead of queueing.
    pub max_in_flight: usize,
    /// The longest a request may take, in milliseconds (1 to 60,000),
    /// however long the caller's gRPC deadline (`grpc-timeout`) allows.
    /// Past it, or past the caller's deadline if sooner, the work is
    /// abandoned (nothing is stored) and the answer is DEADLINE_EXCEEDED /
    /// 504.
    pub decision_budget_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_clock_skew_secs: DEFAULT_MAX_CLOCK_SKEW_SECS,
            max_check_request_bytes: DEFAULT_MAX_CHECK_REQUEST_BYTES,
            max_batch_evaluations: DEFAULT_MAX_BATCH_EVALUATIONS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            decision_budget_ms: DEFAULT_DECISION_BUDGET_MS,
        }
    }
}

impl LimitsConfig {
    /// The clock skew allowed, in seconds, as a signed number.
    pub fn clock_skew(&self) -> i64 {
        i64::try_from(self.max_clock_skew_secs).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportingConfig {
    /// A success reported without a decision id (or naming a decision no
    /// longer remembered) completes a sign-in only when the level reached
    /// is at least this (1 to 3).
    pub undecided_min_aal: u32,
    /// How long a `COMPROMISED` report marks the account, in seconds
    /// (1 ..= 31,536,000, a year), unless a passed step-up or
    /// `CONFIRMED_SAFE` lifts the mark first. Default 2,592,000 (30 days).
    pub compromised_secs: u64,
}

/// The default of `reporting.compromised_secs`: 30 days.
pub const DEFAULT_COMPROMISED_SECS: u64 = 30 * 24 * 3600;

impl Default for ReportingConfig {
    fn default() -> Self {
        Self {
            undecided_min_aal: DEFAULT_UNDECIDED_MIN_AAL,
            compromised_secs: DEFAULT_COMPROMISED_SECS,
        }
    }
}

impl ReportingConfig {
    /// The level, AAL2 if the configured number is out of range (refused by
    /// [`Config::validate`]).
    pub fn undecided_min(&self) -> Aal {
        Aal::from_number(self.undecided_min_aal).unwrap_or(Aal::Two)
    }
}

/// How user ids are made comparable before they are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserIdNormalization {
    /// Byte for byte, as the caller sent it: right for immutable subject ids.
    #[default]
    None,
    /// Unicode NFC, then surrounding white space trimmed.
    NfcTrim,
    /// NFC, trimmed, then Unicode full case folding.
    NfcTrimCasefold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentifiersConfig {
    /// How `subject.user_id` is normalised before it is hashed and shown
    /// to policies. Only fold spellings the identity provider itself treats
    /// as one account; never fold an immutable `sub`.
    pub user_id_normalization: UserIdNormalization,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// NAT64 prefixes (RFC 6052) whose addresses carry a client's IPv4
    /// address, each of length 32, 40, 48, 56, 64 or 96. Such an address is
    /// counted, looked up and logged as the IPv4 address it embeds.
    pub nat64_prefixes: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            nat64_prefixes: DEFAULT_NAT64_PREFIXES.map(str::to_owned).to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `stepgate=debug`; `RUST_LOG`
    /// overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Where decision-log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionLogSink {
    /// Standard output (the service's own log goes to stderr).
    #[default]
    Stdout,
    /// The file at `decision_log.path`, appended to.
    File,
    /// Nowhere: no lines are built.
    Off,
}

/// How a user id appears in the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserIdsInLog {
    /// A keyed-hash pseudonym (16 hex characters): lines about one user
    /// can be correlated, but not traced back without the key.
    #[default]
    Pseudonymised,
    /// The user id as the caller sent it.
    Raw,
    /// Left out.
    Omitted,
}

/// How a client address appears in the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressesInLog {
    /// Its network: /24 for IPv4, /48 for IPv6.
    #[default]
    Truncated,
    /// The whole address.
    Full,
    /// Left out.
    Omitted,
}

/// How a device id appears in the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceIdsInLog {
    /// Left out.
    #[default]
    Omitted,
    /// A keyed-hash pseudonym (16 hex characters).
    Hashed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// `stdout` (default), `file` or `off`.
    pub sink: DecisionLogSink,
    /// The file lines are appended to when `sink = "file"`; created if
    /// missing.
    pub path: Option<PathBuf>,
    /// Lines held while the sink catches up, 1 to 4,194,304; when full,
    /// lines are dropped and counted (`stepgate_decision_log_lines_total`
    /// with `result="dropped"`), never waited for.
    pub queue_capacity: usize,
    /// `pseudonymised` (default), `raw` or `omitted`.
    pub user_ids: UserIdsInLog,
    /// `truncated` (default), `full` or `omitted`.
    pub addresses: AddressesInLog,
    /// `omitted` (default) or `hashed`.
    pub device_ids: DeviceIdsInLog,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self {
            sink: DecisionLogSink::Stdout,
            path: None,
            queue_capacity: DEFAULT_DECISION_LOG_QUEUE,
            user_ids: UserIdsInLog::default(),
            addresses: AddressesInLog::default(),
            device_ids: DeviceIdsInLog::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin listener at all.
    pub enabled: bool,
    /// Address of `/metrics`, `/healthz` and `/readyz`; must differ from
    /// `listen` and `http.listen`. Keep it off the network callers use.
    pub listen: SocketAddr,
    /// A file holding the bearer token(s) `/metrics` asks for (one per
    /// line, each at least 32 bytes; read again when it changes). The
    /// decision doors' callers and TLS do not apply here; `/healthz` and
    /// `/readyz` stay open for probes.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Serve the decision doors (`listen`, `http.listen`) on an address
    /// other than loopback although callers are not authenticated: anyone
    /// who reaches them can ask for decisions and report completed
    /// sign-ins, which make devices known. Off by default; when on, the
    /// start and `/readyz` say so.
    pub allow_unauthenticated_callers: bool,
}

/// TLS for the decision listeners. Every file is read again when it
/// changes (and on SIGHUP); a set that does not load keeps the last good
/// one serving.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. When
    /// set, a client certificate that does not chain to them, or has
    /// expired, fails the handshake; a verified certificate names its
    /// caller by a SPIFFE ID (URI SAN) or a DNS SAN. Clients without a
    /// certificate may still connect and present a token.
    pub client_ca_file: Option<PathBuf>,
}

/// One caller: how it proves who it is, and what it may ask.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// The caller's name: in refusals, the `caller` metric label and the
    /// decision log's `caller` field. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// A file holding the caller's bearer token, or several (one per
    /// line, for rotation), each at least 32 bytes. Only hashes are kept.
    pub token_file: Option<PathBuf>,
    /// The SPIFFE ID (a URI SAN, `spiffe://trust-domain/path`) of the
    /// caller's client certificate.
    pub spiffe_id: Option<String>,
    /// A DNS SAN of the caller's client certificate.
    pub dns_name: Option<String>,
    /// What it may do: `decide` (gRPC Decide, `/v1/decide`, the hook,
    /// AuthZEN), `report_outcome` (ReportOutcome, `/v1/report-outcome`),
    /// `check` (Envoy ext_authz, forward-auth), `forget_user` (ForgetUser,
    /// `/v1/forget-user`: erasures, in the tenants it may ask about; in
    /// every tenant only with `tenants = ["*"]`).
    pub operations: Vec<String>,
    /// The journeys it may ask about; `["*"]` for all.
    pub journeys: Vec<String>,
    /// The tenants it may ask about; `["*"]` (the default) for all.
    /// `default` (or the empty string) names the tenant of requests that
    /// send none.
    #[serde(default = "any")]
    pub tenants: Vec<String>,
    /// Requests per second it may make, sustained (none: no limit).
    pub rate_per_second: Option<u32>,
    /// Requests it may make at once above the rate; defaults to one
    /// second's worth.
    pub burst: Option<u32>,
}

fn any() -> Vec<String> {
    vec!["*".to_owned()]
}

impl Config {
    /// The decision doors' addresses that are not loopback.
    pub fn exposed_doors(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut doors = vec![("listen", self.listen)];
        if self.http.enabled {
            doors.push(("http.listen", self.http.listen));
        }
        doors.retain(|(_, addr)| !addr.ip().is_loopback());
        doors
    }

    /// Callers reach a decision door unauthenticated from beyond this host.
    pub fn insecure(&self) -> bool {
        self.callers.is_empty() && !self.exposed_doors().is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM or Ctrl-C, seconds in-flight requests get to finish
    /// (1 to 3600); past it the process exits with an error saying so.
    /// Keep it below the orchestrator's own grace period.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyReloadConfig {
    /// Watch the policy directories and reload when files change. SIGHUP
    /// reloads either way.
    pub watch: bool,
    /// Quiet time, in milliseconds, before changed files are read; 10 to
    /// 60,000.
    pub debounce_ms: u64,
}

impl Default for PolicyReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            debounce_ms: DEFAULT_POLICY_DEBOUNCE_MS,
        }
    }
}

/// Memoised ladder answers (see `stepgate::policy::memo`): each journey's
/// answer for a context already seen is reused instead of evaluating the
/// policies again. Signals are still gathered and stored on every
/// decision; only the Cedar evaluation is skipped. Answers are dropped
/// when the policies change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyCacheConfig {
    /// How many answers to keep, across journeys and tenants; 0 turns the
    /// cache off. At most 4,194,304.
    pub entries: usize,
}

impl Default for PolicyCacheConfig {
    fn default() -> Self {
        Self {
            entries: DEFAULT_POLICY_CACHE_ENTRIES,
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config file `{path}` is not valid:\n  - {}", problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads and validates a config file. Relative paths inside it are taken
    /// relative to the file's own directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        config.resolve_paths(base);
        config.validate(path)?;
        Ok(config)
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: err.message().to_owned(),
            }
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.policies_dir);
        if let Some(p) = self.shadow_policies_dir.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.store.hash_key_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.store.redis.password_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.decision_log.path.as_mut() {
            resolve(p);
        }
        if let Some(tls) = self.tls.as_mut() {
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
            if let Some(p) = tls.client_ca_file.as_mut() {
                resolve(p);
            }
        }
        for caller in &mut self.callers {
            if let Some(p) = caller.token_file.as_mut() {
                resolve(p);
            }
        }
        if let Some(p) = self.admin.token_file.as_mut() {
            resolve(p);
        }
        self.ip_lists.deny.iter_mut().for_each(resolve);
        for db in [
            &mut self.geo.city_db,
            &mut self.geo.asn_db,
            &mut self.geo.anonymous_ip_db,
        ] {
            if let Some(p) = db.as_mut() {
                resolve(p);
            }
        }
    }

    /// Checks every rule and reports all the broken ones together.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("acr.aal1", &self.acr.aal1),
            ("acr.aal2", &self.acr.aal2),
            ("acr.aal3", &self.acr.aal3),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("`{key}` must not be empty"));
            }
        }
        if !(1..=MAX_RETENTION_SECS).contains(&self.store.retention_secs) {
            problems.push(format!(
                "`store.retention_secs` is {}; it must be between 1 and {MAX_RETENTION_SECS} seconds",
                self.store.retention_secs
            ));
        }
        for (key, value) in [
            ("store.max_users", self.store.max_users),
            ("store.max_ips", self.store.max_ips),
        ] {
            if value == 0 {
                problems.push(format!("`{key}` must be at least 1"));
            }
        }
        if self.store.max_devices_per_user == 0 {
            problems.push("`store.max_devices_per_user` must be at least 1".to_owned());
        }
        if self.store.max_countries_per_user == 0 {
            problems.push("`store.max_countries_per_user` must be at least 1".to_owned());
        }
        let log = &self.decision_log;
        if !(1..=MAX_DECISION_LOG_QUEUE).contains(&log.queue_capacity) {
            problems.push(format!(
                "`decision_log.queue_capacity` is {}; it must be between 1 and {MAX_DECISION_LOG_QUEUE} lines",
                log.queue_capacity
            ));
        }
        match (log.sink, &log.path) {
            (DecisionLogSink::File, None) => problems.push(
                "`decision_log.sink` is `file` but `decision_log.path` is not set".to_owned(),
            ),
            (DecisionLogSink::File, Some(path)) if path.as_os_str().is_empty() => {
                problems.push("`decision_log.path` must not be empty".to_owned());
            }
            (DecisionLogSink::Stdout | DecisionLogSink::Off, Some(_)) => problems.push(
                "`decision_log.path` is set but `decision_log.sink` is not `file`, so nothing would be written there"
                    .to_owned(),
            ),
            _ => {}
        }
        if self.admin.enabled {
            if self.admin.listen == self.listen {
                problems.push("`admin.listen` is the same address as `listen`".to_owned());
            }
            if self.http.enabled && self.admin.listen == self.http.listen {
                problems.push("`admin.listen` is the same address as `http.listen`".to_owned());
            }
        }
        if self.policy_cache.entries > MAX_POLICY_CACHE_ENTRIES {
            problems.push(format!(
                "`policy_cache.entries` is {}; it must be at most {MAX_POLICY_CACHE_ENTRIES} (0 turns the cache off)",
                self.policy_cache.entries
            ));
        }
        if !(10..=MAX_POLICY_DEBOUNCE_MS).contains(&self.policy_reload.debounce_ms) {
            problems.push(format!(
                "`policy_reload.debounce_ms` is {}; it must be between 10 and {MAX_POLICY_DEBOUNCE_MS}",
                self.policy_reload.debounce_ms
            ));
        }
        if self.shadow_policies_dir.as_ref() == Some(&self.policies_dir) {
            problems.push(
                "`shadow_policies_dir` is the same directory as `policies_dir`; a shadow set must be a different candidate"
                    .to_owned(),
            );
        }
        if self.geo.impossible_travel_kmh == 0 {
            problems.push("`geo.impossible_travel_kmh` must be at least 1".to_owned());
        }
        if self.geo.impossible_travel_min_km > 20_000 {
            problems.push(format!(
                "`geo.impossible_travel_min_km` is {}; no two places on Earth are more than 20,000 km apart",
                self.geo.impossible_travel_min_km
            ));
        }
        if self.store.max_events_per_key < MIN_EVENTS_PER_KEY {
            problems.push(format!(
                "`store.max_events_per_key` is {}; at least {MIN_EVENTS_PER_KEY}, or failure counts would stop short of policy thresholds",
                self.store.max_events_per_key
            ));
        }
        for (key, value) in [
            (
                "windows.user_failures_secs",
                self.windows.user_failures_secs,
            ),
            ("windows.ip_failures_secs", self.windows.ip_failures_secs),
            (
                "windows.ip_distinct_users_secs",
                self.windows.ip_distinct_users_secs,
            ),
        ] {
            if value == 0 || value > MAX_WINDOW_SECS {
                problems.push(format!(
                    "`{key}` is {value}; it must be between 1 and {MAX_WINDOW_SECS} seconds"
                ));
            }
            if value > self.store.retention_secs {
                problems.push(format!(
                    "`{key}` ({value}s) is longer than `store.retention_secs` ({}s), so the window could never fill",
                    self.store.retention_secs
                ));
            }
        }
        for (alias, level) in &self.acr.aliases {
            if Aal::from_number(*level).is_none() {
                problems.push(format!(
                    "`acr.aliases.{alias}` is {level}; it must be 1, 2 or 3"
                ));
            }
            if Aal::ALL.into_iter().any(|l| self.acr.for_level(l) == alias) {
                problems.push(format!(
                    "`acr.aliases.{alias}` repeats a configured acr value"
                ));
            }
        }
        let risk = &self.risk;
        if risk.medium_at == 0 || risk.medium_at >= risk.high_at || risk.high_at > 100 {
            problems.push(format!(
                "`risk.medium_at` ({}) and `risk.high_at` ({}) must satisfy 0 < medium_at < high_at <= 100",
                risk.medium_at, risk.high_at
            ));
        }
        for (key, weight) in [
            ("risk.new_device", risk.new_device),
            ("risk.first_sign_in", risk.first_sign_in),
            ("risk.user_failures", risk.user_failures),
            ("risk.ip_failures", risk.ip_failures),
            (
                "risk.ip_distinct_failed_users",
                risk.ip_distinct_failed_users,
            ),
            ("risk.ip_deny_listed", risk.ip_deny_listed),
            ("risk.new_country", risk.new_country),
            ("risk.impossible_travel", risk.impossible_travel),
            ("risk.tor_exit", risk.tor_exit),
            ("risk.public_proxy", risk.public_proxy),
            ("risk.residential_proxy", risk.residential_proxy),
            ("risk.anonymous_vpn", risk.anonymous_vpn),
            ("risk.hosting_provider", risk.hosting_provider),
        ] {
            if weight.cap > 100 {
                problems.push(format!("`{key}.cap` is {}; at most 100", weight.cap));
            }
        }
        if self.http.enabled && self.http.listen == self.listen {
            problems.push(format!(
                "`http.listen` ({}) is the gRPC `listen` address; the two listeners need different ports",
                self.http.listen
            ));
        }
        self.gateway.check(&mut problems);
        if let Some(id) = &self.http.authzen_identifier {
            let scheme_ok = id.starts_with("https://") || id.starts_with("http://");
            if !scheme_ok || id.contains(['?', '#']) {
                problems.push(format!(
                    "`http.authzen_identifier` `{id}` must be an http(s) URL without a query or fragment"
                ));
            }
        }
        if !(MIN_DECISION_TTL_SECS..=MAX_DECISION_TTL_SECS).contains(&self.store.decision_ttl_secs)
        {
            problems.push(format!(
                "`store.decision_ttl_secs` is {}; it must be between {MIN_DECISION_TTL_SECS} and {MAX_DECISION_TTL_SECS} seconds",
                self.store.decision_ttl_secs
            ));
        }
        if self.store.max_decisions == 0 {
            problems.push("`store.max_decisions` must be at least 1".to_owned());
        }
        if self.store.backend == StoreBackend::Redis {
            self.store.redis.check(&mut problems);
            if self.store.hash_key_file.is_none() {
                problems.push(
                    "`store.backend` is `redis` but `store.hash_key_file` is unset; replicas sharing a store must hash ids with one key: 64 hex characters, as `openssl rand -hex 32` prints"
                        .to_owned(),
                );
            }
        }
        if Aal::from_number(self.reporting.undecided_min_aal).is_none() {
            problems.push(format!(
                "`reporting.undecided_min_aal` is {}; it must be 1, 2 or 3",
                self.reporting.undecided_min_aal
            ));
        }
        if !(1..=365 * 24 * 3600).contains(&self.reporting.compromised_secs) {
            problems.push(format!(
                "`reporting.compromised_secs` is {}; it must be between 1 and 31536000 (a year)",
                self.reporting.compromised_secs
            ));
        }
        // The memory store forgets a user idle for the retention period,
        // and a compromise mark with them.
        if self.store.backend == StoreBackend::Memory
            && self.reporting.compromised_secs > self.store.retention_secs
        {
            problems.push(format!(
                "`reporting.compromised_secs` is {}, longer than `store.retention_secs` ({}): the memory store would forget the mark before it ends",
                self.reporting.compromised_secs, self.store.retention_secs
            ));
        }
        if self.limits.max_clock_skew_secs > MAX_CLOCK_SKEW_SECS {
            problems.push(format!(
                "`limits.max_clock_skew_secs` is {}; at most {MAX_CLOCK_SKEW_SECS}",
                self.limits.max_clock_skew_secs
            ));
        }
        if !(1..=20_000).contains(&self.geo.travel_max_accuracy_km) {
            problems.push(format!(
                "`geo.travel_max_accuracy_km` is {}; it must be between 1 and 20000",
                self.geo.travel_max_accuracy_km
            ));
        }
        let (_, invalid) =
            crate::signals::address::ClientAddressing::lenient(&self.network.nat64_prefixes);
        for rule in invalid {
            problems.push(format!("`network.nat64_prefixes`: {rule}"));
        }
        for (key, max) in [
            ("limits.max_request_bytes", self.limits.max_request_bytes),
            (
                "limits.max_check_request_bytes",
                self.limits.max_check_request_bytes,
            ),
        ] {
            if !(256..=MAX_REQUEST_BYTES_CEILING).contains(&max) {
                problems.push(format!(
                    "`{key}` is {max}; it must be between 256 and {MAX_REQUEST_BYTES_CEILING}"
                ));
            }
        }
        if self.callers.is_empty() && !self.security.allow_unauthenticated_callers {
            for (key, addr) in self.exposed_doors() {
                problems.push(format!(
                    "`{key}` is `{addr}`, which is not a loopback address, and callers are not authenticated: anyone who reaches it could ask for decisions and report completed sign-ins; keep it on loopback, or set `security.allow_unauthenticated_callers = true` to accept that"
                ));
            }
        }
        if !(1..=MAX_SHUTDOWN_GRACE_SECS).contains(&self.shutdown.grace_secs) {
            problems.push(format!(
                "`shutdown.grace_secs` is {}; it must be between 1 and {MAX_SHUTDOWN_GRACE_SECS} seconds",
                self.shutdown.grace_secs
            ));
        }
        if !(1..=MAX_BATCH_EVALUATIONS).contains(&self.limits.max_batch_evaluations) {
            problems.push(format!(
                "`limits.max_batch_evaluations` is {}; it must be between 1 and {MAX_BATCH_EVALUATIONS}",
                self.limits.max_batch_evaluations
            ));
        }
        if !(1..=100_000).contains(&self.limits.max_in_flight) {
            problems.push(format!(
                "`limits.max_in_flight` is {}; it must be between 1 and 100000",
                self.limits.max_in_flight
            ));
        }
        if !(1..=60_000).contains(&self.limits.decision_budget_ms) {
            problems.push(format!(
                "`limits.decision_budget_ms` is {}; it must be between 1 and 60000 milliseconds",
                self.limits.decision_budget_ms
            ));
        }
        self.check_callers(&mut problems);
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "`log.level` `{}` is not a valid filter: {err}",
                self.log.level
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }
}

/// A SPIFFE ID naming a workload (SPIFFE ID standard §2): `spiffe://`, a
/// trust domain of lower-case letters, digits, `.`, `-` and `_`, and a
/// path of one or more non-empty segments of letters, digits, `.`, `-`
/// and `_` (not `.` or `..`), no trailing `/`, query or fragment.
fn is_spiffe_workload_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let Some((domain, path)) = rest.split_once('/') else {
        return false;
    };
    let domain_ok = !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    domain_ok && path.split('/').all(segment_ok)
}

/// The operations a caller may be bound to, as `callers[].operations`
/// spells them.
pub const CALLER_OPERATIONS: [&str; 4] = ["decide", "report_outcome", "check", "forget_user"];

impl Config {
    /// The rules of `callers`: names and identities unique, every caller
    /// with a credential and a scope, operations known.
    fn check_callers(&self, problems: &mut Vec<String>) {
        let mut names = std::collections::BTreeSet::new();
        let mut identities = std::collections::BTreeSet::new();
        for (i, caller) in self.callers.iter().enumerate() {
            let at = format!("callers[{i}]");
            let name_ok = !caller.name.is_empty()
                && caller.name.len() <= 64
                && caller
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                problems.push(format!(
                    "`{at}.name` `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`",
                    caller.name
                ));
            }
            if matches!(caller.name.as_str(), "anonymous" | "unauthenticated") {
                problems.push(format!(
                    "`{at}.name` `{}` is reserved for requests without a configured caller",
                    caller.name
                ));
            }
            if !names.insert(caller.name.as_str()) {
                problems.push(format!("`{at}.name` `{}` names two callers", caller.name));
            }
            if caller
                .token_file
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty() || p.is_dir())
            {
                problems.push(format!("`{at}.token_file` must name a file"));
            }
            if caller.token_file.is_none()
                && caller.spiffe_id.is_none()
                && caller.dns_name.is_none()
            {
                problems.push(format!(
                    "`{at}` (`{}`) has no way to prove who it is: set `token_file`, `spiffe_id` or `dns_name`",
                    caller.name
                ));
            }
            let wants_certificate = caller.spiffe_id.is_some() || caller.dns_name.is_some();
            let verifies = self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.client_ca_file.is_some());
            if wants_certificate && !verifies {
                problems.push(format!(
                    "`{at}` (`{}`) is named by a client certificate, but `tls.client_ca_file` is not set, so no certificate is verified",
                    caller.name
                ));
            }
            if let Some(id) = &caller.spiffe_id {
                if !is_spiffe_workload_id(id) {
                    problems.push(format!(
                        "`{at}.spiffe_id` `{id}` is not a SPIFFE workload ID (`spiffe://trust-domain/path`: a lower-case trust domain, then path segments of letters, digits, `.`, `-` and `_`, none empty)"
                    ));
                }
                if !identities.insert(format!("uri:{id}")) {
                    problems.push(format!("`{at}.spiffe_id` `{id}` names two callers"));
                }
            }
            if let Some(dns) = &caller.dns_name {
                let label_ok = |l: &str| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                };
                if dns.len() > 253 || !dns.split('.').all(label_ok) {
                    problems.push(format!(
                        "`{at}.dns_name` `{dns}` is not a DNS name (labels of letters, digits and `-`; no wildcards: it must equal a DNS SAN of the certificate)"
                    ));
                }
                if !identities.insert(format!("dns:{}", dns.to_ascii_lowercase())) {
                    problems.push(format!("`{at}.dns_name` `{dns}` names two callers"));
                }
            }
            if caller.operations.is_empty() {
                problems.push(format!(
                    "`{at}.operations` is empty; name what `{}` may do ({})",
                    caller.name,
                    CALLER_OPERATIONS.join(", ")
                ));
            }
            for op in &caller.operations {
                if !CALLER_OPERATIONS.contains(&op.as_str()) {
                    problems.push(format!(
                        "`{at}.operations` has `{op}`; each must be one of {}",
                        CALLER_OPERATIONS.join(", ")
                    ));
                }
            }
            if caller.journeys.is_empty() {
                problems.push(format!(
                    "`{at}.journeys` is empty; name the journeys `{}` may ask about, or `\"*\"` for all",
                    caller.name
                ));
            }
            if caller.tenants.is_empty() {
                problems.push(format!(
                    "`{at}.tenants` is empty; name the tenants `{}` may ask about, or `\"*\"` for all",
                    caller.name
                ));
            }
            if caller.rate_per_second == Some(0) || caller.burst == Some(0) {
                problems.push(format!(
                    "`{at}.rate_per_second` and `{at}.burst` must be at least 1 when set"
                ));
            }
            if caller.burst.is_some() && caller.rate_per_second.is_none() {
                problems.push(format!(
                    "`{at}.burst` is set without `{at}.rate_per_second`"
                ));
            }
        }
    }
}

impl GatewayConfig {
    /// Adds every problem of the gateway section to `problems`.
    fn check(&self, problems: &mut Vec<String>) {
        if ![401, 403].contains(&self.unreadable_status) {
            problems.push(format!(
                "`gateway.unreadable_status` is {}; it must be 401 or 403",
                self.unreadable_status
            ));
        }
        let header_name = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !header_name(&self.decision_header) {
            problems.push(format!(
                "`gateway.decision_header` `{}` is not a header name",
                self.decision_header
            ));
        }
        for (key, value) in [
            ("gateway.claims.header", &self.claims.header),
            ("gateway.client.device_header", &self.client.device_header),
        ] {
            if !value.is_empty() && !header_name(value) {
                problems.push(format!("`{key}` `{value}` is not a header name"));
            }
        }
        if self.claims.subject.is_empty() {
            problems.push("`gateway.claims.subject` must name a claim".to_owned());
        }
        for (i, cidr) in self.client.trusted_proxies.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                problems.push(format!(
                    "`gateway.client.trusted_proxies[{i}]`: `{cidr}` is not an address or CIDR block"
                ));
            }
        }
        if self.client.trusted_hops > 0 && !self.client.trusted_proxies.is_empty() {
            problems.push(
                "`gateway.client.trusted_hops` and `gateway.client.trusted_proxies` are both set; choose one way to find the client".to_owned(),
            );
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("gateway.routes[{i}]");
            let paths = [&route.path, &route.prefix, &route.template]
                .iter()
                .filter(|p| p.is_some())
                .count();
            if paths != 1 {
                problems.push(format!(
                    "`{at}` must set exactly one of `path`, `prefix`, `template`"
                ));
            }
            for p in [&route.path, &route.prefix, &route.template]
                .into_iter()
                .flatten()
            {
                if !p.starts_with('/') {
                    problems.push(format!("`{at}`: `{p}` must start with `/`"));
                }
            }
            if !crate::policy::catalog::valid_name(&route.journey) {
                problems.push(format!(
                    "`{at}.journey` `{}` is not a journey name",
                    route.journey
                ));
            }
            for method in &route.methods {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    problems.push(format!(
                        "`{at}.methods`: `{method}` is not an upper-case HTTP method"
                    ));
                }
            }
            let parameters: Vec<&str> = route
                .template
                .as_deref()
                .map(|t| {
                    t.split('/')
                        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                        .collect()
                })
                .unwrap_or_default();
            for (name, attribute) in &route.attributes {
                if attribute.from == AttributeSource::Path
                    && !parameters.contains(&attribute.name.as_str())
                {
                    problems.push(format!(
                        "`{at}.attributes.{name}`: the route's template has no `{{{}}}` segment",
                        attribute.name
                    ));
                }
            }
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("stepgate.example.toml");
        let text = std::fs::read_to_string(&path).expect("example config exists");
        let config = Config::parse(&text, &path).expect("example config parses");
        config.validate(&path).expect("example config is valid");
        // Every field, section by section, so a mismatch names its section.
        let d = Config::default();
        assert_eq!(
            (
                &config.listen,
                &config.policies_dir,
                &config.shadow_policies_dir
            ),
            (&d.listen, &d.policies_dir, &d.shadow_policies_dir)
        );
        assert_eq!(config.http, d.http);
        assert_eq!(config.gateway, d.gateway);
        assert_eq!(config.policy_reload, d.policy_reload);
        assert_eq!(config.acr, d.acr);
        assert_eq!(config.store, d.store);
        assert_eq!(config.windows, d.windows);
        assert_eq!(config.ip_lists, d.ip_lists);
        assert_eq!(config.geo, d.geo);
        assert_eq!(config.risk, d.risk);
        assert_eq!(config.reporting, d.reporting);
        assert_eq!(config.identifiers, d.identifiers);
        assert_eq!(config.network, d.network);
        assert_eq!(config.limits, d.limits);
        assert_eq!(config.log, d.log);
        assert_eq!(config.decision_log, d.decision_log);
        assert_eq!(config.admin, d.admin);
        assert_eq!(config.shutdown, d.shutdown);
        assert_eq!(config.security, d.security);
        assert_eq!((&config.tls, &config.callers), (&d.tls, &d.callers));
        assert_eq!(config, d);
    }

    #[test]
    fn the_example_callers_and_tls_blocks_parse_and_validate_once_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("stepgate.example.toml");
        let text = std::fs::read_to_string(&path).expect("example config exists");
        // Uncomment the lines of the `[security]` section onwards that are
        // TOML (`# key = ...`, `# [...]`), not the prose around them, up
        // to `[shutdown]`; and the admin token.
        let start = text.find("\n[security]\n").expect("a [security] section");
        let end = text.find("\n[shutdown]\n").expect("a [shutdown] section");
        let (before, rest) = text.split_at(start);
        let (section, after) = rest.split_at(end - start);
        let uncomment = |line: &str| -> String {
            match line.strip_prefix("# ") {
                Some(rest)
                    if (rest.starts_with('[') && rest.ends_with(']'))
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                {
                    rest.to_owned()
                }
                _ => line.to_owned(),
            }
        };
        let section: Vec<String> = section.lines().map(uncomment).collect();
        let uncommented = format!(
            "{}{}\n{}",
            before.replace("# token_file = ", "token_file = "),
            section.join("\n"),
            after
        );
        let config = Config::parse(&uncommented, &path).expect("uncommented example parses");
        config
            .validate(&path)
            .expect("uncommented example is valid");
        assert_eq!(config.callers.len(), 2);
        assert!(
            config
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some())
        );
        assert!(config.admin.token_file.is_some());
    }

    #[test]
    fn a_decision_door_beyond_loopback_needs_the_explicit_insecure_setting() {
        let path = Path::new("stepgate.toml");
        let mut config = Config::default();
        config.validate(path).expect("loopback by default");
        config.http.listen = "0.0.0.0:50052".parse().unwrap();
        config.admin.listen = "0.0.0.0:9464".parse().unwrap();
        let err = config.validate(path).unwrap_err().to_string();
        assert!(err.contains("`http.listen` is `0.0.0.0:50052`"), "{err}");
        assert!(
            err.contains("security.allow_unauthenticated_callers"),
            "{err}"
        );
        assert!(
            !err.contains("admin.listen"),
            "the admin listener changes nothing: {err}"
        );
        config.http.enabled = false;
        config
            .validate(path)
            .expect("a disabled listener is not exposed");
        config.listen = "[::]:50051".parse().unwrap();
        assert!(config.validate(path).is_err());
        config.security.allow_unauthenticated_callers = true;
        config
            .validate(path)
            .expect("accepted when said explicitly");
        assert!(config.insecure());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [store]
            retention_secs = 0
            [windows]
            user_failures_secs = 0
            [risk]
            medium_at = 70
            high_at = 60
        "#;
        let path = Path::new("bad.toml");
        let config = Config::parse(text, path).expect("syntax is fine");
        let Err(ConfigError::Invalid { problems, .. }) = config.validate(path) else {
            unreachable!("config must be refused");
        };
        let all = problems.join("\n");
        assert!(all.contains("store.retention_secs"), "{all}");
        assert!(all.contains("windows.user_failures_secs"), "{all}");
        assert!(all.contains("risk.medium_at"), "{all}");
    }

    #[test]
    fn reload_and_shadow_settings_are_checked() {
        let text = r#"
            policies_dir = "policies"
            shadow_policies_dir = "policies"
            [policy_reload]
            debounce_ms = 5
        "#;
        let path = Path::new("reload.toml");
        let config = Config::parse(text, path).expect("syntax is fine");
        let Err(ConfigError::Invalid { problems, .. }) = config.validate(path) else {
            unreachable!("config must be refused");
        };
        let all = problems.join("\n");
        assert!(all.contains("`policy_reload.debounce_ms` is 5"), "{all}");
        assert!(
            all.contains("`shadow_policies_dir` is the same directory"),
            "{all}"
        );
    }

    #[test]
    fn reporting_identifier_network_and_time_settings_are_checked() {
        let text = r#"
            [store]
            decision_ttl_secs = 5
            max_decisions = 0
            [reporting]
            undecided_min_aal = 4
            [identifiers]
            user_id_normalization = "nfc_trim_casefold"
            [network]
            nat64_prefixes = ["64:ff9b::/96", "2001:db8::/33", "2001:db8::1/96", "2002::/32", "64:ff9b::/96"]
            [geo]
            travel_max_accuracy_km = 0
            [limits]
            max_clock_skew_secs = 7200
        "#;
        let path = Path::new("settings.toml");
        let config = Config::parse(text, path).expect("syntax is fine");
        assert_eq!(
            config.identifiers.user_id_normalization,
            UserIdNormalization::NfcTrimCasefold
        );
        let Err(ConfigError::Invalid { problems, .. }) = config.validate(path) else {
            unreachable!("config must be refused");
        };
        let all = problems.join("\n");
        for expected in [
            "`store.decision_ttl_secs` is 5",
            "`store.max_decisions` must be at least 1",
            "`reporting.undecided_min_aal` is 4",
            "`network.nat64_prefixes`: `2001:db8::/33` is a /33",
            "`network.nat64_prefixes`: `2001:db8::1/96` has bits set past its /96",
            "`network.nat64_prefixes`: `2002::/32` overlaps the 6to4 range",
            "`network.nat64_prefixes`: `64:ff9b::/96` is listed twice",
            "`geo.travel_max_accuracy_km` is 0",
            "`limits.max_clock_skew_secs` is 7200",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(problems.len(), 9, "{all}");
        let unknown = Config::parse("[identifiers]\nuser_id_normalization = \"lower\"\n", path);
        assert!(matches!(unknown, Err(ConfigError::Parse { line: 2, .. })));
    }

    #[test]
    fn unknown_key_is_a_located_error() {
        let text = "listen = \"127.0.0.1:1\"\n\n[store]\nbackand = \"memory\"\n";
        let err = Config::parse(text, Path::new("x.toml")).err();
        let Some(ConfigError::Parse { line, message, .. }) = err else {
            unreachable!("unknown key must be refused");
        };
        assert_eq!(line, 4);
        assert!(message.contains("backand"), "{message}");
    }
}

//! Who may ask, and what: the callers' credentials, their scopes and their
//! rate limits. Transport-neutral: a door hands over what the connection
//! and the request carry (a verified client certificate's names, a bearer
//! token) and gets a [`Caller`] back, or the reason there is none.
//!
//! Callers are services, not people (NIST SP 800-207 §3's "non-person
//! entities"): each is named in `[[callers]]`, proves who it is with a
//! client certificate (mTLS; a SPIFFE ID in a URI SAN, or a DNS SAN) or a
//! bearer token, and is bound to the operations, journeys and tenants its
//! job needs. With no callers configured every request is served as
//! `anonymous`, with every scope, which the config allows only on loopback
//! unless `security.allow_unauthenticated_callers` says otherwise.

pub mod reload;
pub mod tls;
pub mod token;

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{CallerConfig, Config, MIN_TOKEN_BYTES};

pub use tls::PeerIdentity;
use token::{TokenSecret, TokenTable};

/// What a caller asks to do: a closed set, as `callers[].operations`
/// spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A decision: gRPC `Decide`, `/v1/decide`, `/v1/hooks/decide`,
    /// AuthZEN evaluation(s).
    Decide,
    /// A reported outcome: gRPC `ReportOutcome`, `/v1/report-outcome`.
    ReportOutcome,
    /// A gateway's check: Envoy ext_authz `Check`, forward-auth.
    Check,
    /// An erasure: gRPC `ForgetUser`, `/v1/forget-user`.
    ForgetUser,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Decide,
        Operation::ReportOutcome,
        Operation::Check,
        Operation::ForgetUser,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Operation::Decide => "decide",
            Operation::ReportOutcome => "report_outcome",
            Operation::Check => "check",
            Operation::ForgetUser => "forget_user",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.label() == text)
    }
}

/// A set of journeys or tenants: all of them, or those named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Any,
    Only(BTreeSet<String>),
}

impl Scope {
    fn of(names: &[String]) -> Self {
        if names.iter().any(|n| n == "*") {
            Scope::Any
        } else {
            Scope::Only(names.iter().cloned().collect())
        }
    }

    /// Tenants: the empty string is the default tenant, as in requests.
    fn of_tenants(names: &[String]) -> Self {
        let named: Vec<String> = names
            .iter()
            .map(|n| {
                if n.is_empty() {
                    crate::decision::DEFAULT_TENANT.to_owned()
                } else {
                    n.clone()
                }
            })
            .collect();
        Self::of(&named)
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Only(names) => names.contains(name),
        }
    }
}

type Limiter = governor::DefaultDirectRateLimiter;

/// An authenticated caller and what it may ask.
#[derive(Debug)]
pub struct Caller {
    name: Arc<str>,
    operations: Vec<Operation>,
    journeys: Scope,
    tenants: Scope,
    /// Its rate limit, with the quota it was made for (kept across reloads
    /// that leave the quota alone).
    limiter: Option<(governor::Quota, Arc<Limiter>)>,
}

/// Why a caller may not ask what it asked: the caller and the thing, named.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NotPermitted {
    #[error("caller `{caller}` may not use `{operation}` (its `operations` do not include it)")]
    Operation {
        caller: String,
        operation: &'static str,
    },
    #[error("caller `{caller}` may not ask about journey `{journey}` (not in its `journeys`)")]
    Journey { caller: String, journey: String },
    #[error("caller `{caller}` may not ask about tenant `{tenant}` (not in its `tenants`)")]
    Tenant { caller: String, tenant: String },
}

impl NotPermitted {
    /// The request field the refusal is about.
    pub fn field(&self) -> &'static str {
        match self {
            NotPermitted::Operation { .. } => "operation",
            NotPermitted::Journey { .. } => "journey",
            NotPermitted::Tenant { .. } => "subject.tenant",
        }
    }
}

/// A caller over its rate: how long until one more request would be let
/// through.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("caller `{caller}` is over its rate limit (`rate_per_second` {rate}); retry after {} ms", retry_after.as_millis())]
pub struct RateLimited {
    pub caller: String,
    pub rate: u32,
    pub retry_after: Duration,
}

/// Why a request was not let in: no credential, or one that names no
/// caller. The messages say what was wrong with what was presented, never
/// the token itself.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Unauthenticated {
    #[error(
        "no credentials: present a client certificate or a bearer token of a configured caller"
    )]
    Missing,
    #[error("the bearer token is not a configured caller's")]
    UnknownToken,
    #[error("the `{header}` header is not `Bearer <token>`")]
    MalformedToken { header: &'static str },
    #[error("the `{header}` header is sent more than once")]
    RepeatedToken { header: &'static str },
    #[error("the client certificate ({0}) names no configured caller")]
    UnknownCertificate(String),
    #[error("the client certificate ({0}) names more than one caller")]
    AmbiguousCertificate(String),
    #[error(
        "the client certificate names caller `{certificate}` but the bearer token is `{token}`'s"
    )]
    Mismatch { certificate: String, token: String },
}

impl Caller {
    /// The caller of every request when no callers are configured: every
    /// operation, journey and tenant, no rate limit.
    pub fn anonymous() -> Arc<Self> {
        static ANYONE: std::sync::OnceLock<Arc<Caller>> = std::sync::OnceLock::new();
        ANYONE
            .get_or_init(|| {
                Arc::new(Self {
                    name: Arc::from(ANONYMOUS),
                    operations: Operation::ALL.to_vec(),
                    journeys: Scope::Any,
                    tenants: Scope::Any,
                    limiter: None,
                })
            })
            .clone()
    }

    /// No one: may do nothing. What a handler sees if a request reached it
    /// without passing authentication (which the listeners never allow).
    pub fn nobody() -> Arc<Self> {
        static NO_ONE: std::sync::OnceLock<Arc<Caller>> = std::sync::OnceLock::new();
        NO_ONE
            .get_or_init(|| {
                Arc::new(Self {
                    name: Arc::from(UNAUTHENTICATED),
                    operations: Vec::new(),
                    journeys: Scope::Only(BTreeSet::new()),
                    tenants: Scope::Only(BTreeSet::new()),
                    limiter: None,
                })
            })
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// May this caller do `operation` about `journey` for `tenant`?
    ///
    /// # Errors
    /// [`NotPermitted`] naming the caller and the first thing outside its
    /// scope.
    pub fn may(
        &self,
        operation: Operation,
        journey: &str,
        tenant: &str,
    ) -> Result<(), NotPermitted> {
        self.may_use(operation)?;
        if !self.journeys.contains(journey) {
            return Err(NotPermitted::Journey {
                caller: self.name.to_string(),
                journey: journey.to_owned(),
            });
        }
        if !self.tenants.contains(tenant) {
            return Err(NotPermitted::Tenant {
                caller: self.name.to_string(),
                tenant: tenant.to_owned(),
            });
        }
        Ok(())
    }

    /// May this caller report feedback (`COMPROMISED`, `CONFIRMED_SAFE`)
    /// about an account in `tenant`? Feedback changes what every journey
    /// asks of the account, so it needs `report_outcome` on every journey
    /// (`journeys = ["*"]`), not only on `journey`.
    ///
    /// # Errors
    /// [`NotPermitted`] naming what the caller lacks.
    pub fn may_give_feedback(&self, journey: &str, tenant: &str) -> Result<(), NotPermitted> {
        self.may(Operation::ReportOutcome, journey, tenant)?;
        if matches!(self.journeys, Scope::Any) {
            Ok(())
        } else {
            Err(NotPermitted::Journey {
                caller: self.name.to_string(),
                journey: "*".to_owned(),
            })
        }
    }

    /// May this caller erase a user in `tenant` (`None`: in every tenant,
    /// which needs every tenant in its scope)?
    ///
    /// # Errors
    /// [`NotPermitted`] naming the caller and what is outside its scope.
    pub fn may_forget(&self, tenant: Option<&str>) -> Result<(), NotPermitted> {
        self.may_use(Operation::ForgetUser)?;
        let allowed = match tenant {
            Some(tenant) => self.tenants.contains(tenant),
            None => matches!(self.tenants, Scope::Any),
        };
        if allowed {
            Ok(())
        } else {
            Err(NotPermitted::Tenant {
                caller: self.name.to_string(),
                tenant: tenant.unwrap_or("*").to_owned(),
            })
        }
    }

    /// May this caller use `operation` at all? Checked by the gateway
    /// doors before they read a request, whose journey they learn only by
    /// mapping it.
    ///
    /// # Errors
    /// [`NotPermitted::Operation`].
    pub fn may_use(&self, operation: Operation) -> Result<(), NotPermitted> {
        if self.operations.contains(&operation) {
            Ok(())
        } else {
            Err(NotPermitted::Operation {
                caller: self.name.to_string(),
                operation: operation.label(),
            })
        }
    }

    /// Takes `more` requests at once from the caller's rate limit (the
    /// other members of a batch whose first the gate took).
    ///
    /// # Errors
    /// [`RateLimited`]: not that many left now, or more than the burst
    /// (then `retry_after` is zero: the batch can never pass whole).
    pub fn take_more(&self, more: usize) -> Result<(), RateLimited> {
        let (Some((quota, limiter)), Some(n)) = (
            &self.limiter,
            u32::try_from(more).ok().and_then(NonZeroU32::new),
        ) else {
            return Ok(());
        };
        let refused = |retry_after| RateLimited {
            caller: self.name.to_string(),
            rate: rate_of(*quota),
            retry_after,
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                use governor::clock::Clock as _;
                let now = governor::clock::DefaultClock::default().now();
                Err(refused(not_until.wait_time_from(now)))
            }
            Err(_more_than_the_burst) => Err(refused(Duration::ZERO)),
        }
    }

    /// Takes one request from the caller's rate limit.
    ///
    /// # Errors
    /// [`RateLimited`] with the wait until the next request would pass.
    pub fn take(&self) -> Result<(), RateLimited> {
        let Some((quota, limiter)) = &self.limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            use governor::clock::Clock as _;
            let now = governor::clock::DefaultClock::default().now();
            RateLimited {
                caller: self.name.to_string(),
                rate: rate_of(*quota),
                retry_after: not_until.wait_time_from(now),
            }
        })
    }
}

fn rate_of(quota: governor::Quota) -> u32 {
    let per_cell = quota.replenish_interval().as_secs_f64();
    if per_cell > 0.0 {
        // Whole requests per second, as configured.
        (1.0 / per_cell).round() as u32
    } else {
        u32::MAX
    }
}

/// The name requests carry when no callers are configured.
pub const ANONYMOUS: &str = "anonymous";
/// The name of a request that did not authenticate (metric label, log).
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// Why the callers or TLS files could not be used: the file and the
/// problem.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
pub enum AccessError {
    #[error("`{}`: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("`callers[{index}]` (`{name}`): {problem}")]
    Caller {
        index: usize,
        name: String,
        problem: String,
    },
}

/// Every configured caller, looked up by certificate or token.
#[derive(Debug)]
pub struct Access {
    callers: Vec<Arc<Caller>>,
    tokens: TokenTable,
    /// (`uri:...` or `dns:...`, caller index).
    certificate_names: Vec<(String, usize)>,
    /// No callers configured: everyone is `anonymous`.
    open: Option<Arc<Caller>>,
}

/// Reads a token file: one token per line (`\n` or `\r\n`; empty lines
/// skipped), each at least [`MIN_TOKEN_BYTES`] bytes of visible ASCII.
/// Several lines let a token be rotated without a gap: add the new one,
/// move the caller to it, remove the old one.
///
/// # Errors
/// The file cannot be read, holds no token, or a line breaks a rule (its
/// line number is named, never its content).
pub fn read_tokens(path: &std::path::Path) -> Result<Vec<TokenSecret>, AccessError> {
    let bytes = std::fs::read(path).map_err(|e| AccessError::File {
        path: path.to_owned(),
        problem: format!("cannot read the token: {e}"),
    })?;
    let mut tokens = Vec::new();
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        tokens.push(token_line(path, number + 1, line.to_vec())?);
    }
    if tokens.is_empty() {
        return Err(AccessError::File {
            path: path.to_owned(),
            problem: "holds no token".to_owned(),
        });
    }
    Ok(tokens)
}

fn token_line(
    path: &std::path::Path,
    number: usize,
    bytes: Vec<u8>,
) -> Result<TokenSecret, AccessError> {
    let path = std::path::PathBuf::from(format!("{}:{number}", path.display()));
    let secret = TokenSecret::new(bytes);
    if secret.len() < MIN_TOKEN_BYTES {
        return Err(AccessError::File {
            path: path.clone(),
            problem: format!(
                "the token is {} bytes; it must be at least {MIN_TOKEN_BYTES} (for example 32 random bytes, base64-encoded)",
                secret.len()
            ),
        });
    }
    if secret.bytes().iter().any(|b| !b.is_ascii_graphic()) {
        return Err(AccessError::File {
            path: path.clone(),
            problem: "the token must be visible ASCII (it travels in a header), with no spaces"
                .to_owned(),
        });
    }
    Ok(secret)
}

impl Access {
    /// Everyone is `anonymous`: no callers configured.
    pub fn open() -> Self {
        Self {
            callers: Vec::new(),
            tokens: TokenTable::default(),
            certificate_names: Vec::new(),
            open: Some(Caller::anonymous()),
        }
    }

    /// The callers `config` names, their token files read. Rate limiters of
    /// callers in `previous` with the same name and quota carry over, so a
    /// reload does not hand every caller a fresh burst.
    ///
    /// # Errors
    /// A token file that cannot be read or is too short, or a token two
    /// callers share.
    pub fn load(config: &Config, previous: Option<&Access>) -> Result<Self, AccessError> {
        if config.callers.is_empty() {
            return Ok(Self::open());
        }
        let mut access = Self {
            callers: Vec::with_capacity(config.callers.len()),
            tokens: TokenTable::default(),
            certificate_names: Vec::new(),
            open: None,
        };
        for (index, entry) in config.callers.iter().enumerate() {
            let caller_error = |problem: String| AccessError::Caller {
                index,
                name: entry.name.clone(),
                problem,
            };
            if let Some(path) = &entry.token_file {
                let tokens =
                    read_tokens(path).map_err(|e| caller_error(format!("`token_file` {e}")))?;
                for token in tokens {
                    if !access.tokens.insert(token, index) {
                        return Err(caller_error(format!(
                            "a token in `{}` is another caller's too (or written twice); each caller needs its own",
                            path.display()
                        )));
                    }
                }
            }
            if let Some(id) = &entry.spiffe_id {
                access.certificate_names.push((format!("uri:{id}"), index));
            }
            if let Some(dns) = &entry.dns_name {
                access
                    .certificate_names
                    .push((format!("dns:{}", dns.to_ascii_lowercase()), index));
            }
            let kept = previous.and_then(|p| p.named(&entry.name));
            access
                .callers
                .push(Arc::new(caller(entry, kept).map_err(caller_error)?));
        }
        Ok(access)
    }

    fn named(&self, name: &str) -> Option<&Arc<Caller>> {
        self.callers.iter().find(|c| &*c.name == name)
    }

    /// Whether callers must authenticate (some are configured).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The caller named by `certificate` (verified by the handshake) or
    /// `token`; both, when both are presented, must name the same one.
    ///
    /// # Errors
    /// [`Unauthenticated`] saying what was missing or wrong.
    pub fn identify(
        &self,
        certificate: Option<&PeerIdentity>,
        token: Option<&[u8]>,
    ) -> Result<Arc<Caller>, Unauthenticated> {
        if let Some(anonymous) = &self.open {
            return Ok(anonymous.clone());
        }
        let by_certificate = certificate
            .map(|peer| self.by_certificate(peer))
            .transpose()?;
        let by_token = match token {
            Some(token) => Some(
                self.tokens
                    .lookup(token)
                    .caller
                    .ok_or(Unauthenticated::UnknownToken)?,
            ),
            None => None,
        };
        let index = match (by_certificate, by_token) {
            (Some(c), Some(t)) if c != t => {
                return Err(Unauthenticated::Mismatch {
                    certificate: self.name_at(c),
                    token: self.name_at(t),
                });
            }
            (Some(index), _) | (None, Some(index)) => index,
            (None, None) => return Err(Unauthenticated::Missing),
        };
        self.callers
            .get(index)
            .cloned()
            .ok_or(Unauthenticated::Missing)
    }

    fn name_at(&self, index: usize) -> String {
        self.callers
            .get(index)
            .map(|c| c.name.to_string())
            .unwrap_or_default()
    }

    fn by_certificate(&self, peer: &PeerIdentity) -> Result<usize, Unauthenticated> {
        let names: BTreeSet<usize> = self
            .certificate_names
            .iter()
            .filter(|(name, _)| {
                peer.uris
                    .iter()
                    .any(|u| name.strip_prefix("uri:") == Some(u))
                    || peer
                        .dns_names
                        .iter()
                        .any(|d| name.strip_prefix("dns:") == Some(d))
            })
            .map(|(_, index)| *index)
            .collect();
        let mut found = names.into_iter();
        match (found.next(), found.next()) {
            (Some(index), None) => Ok(index),
            (Some(_), Some(_)) => Err(Unauthenticated::AmbiguousCertificate(peer.describe())),
            (None, _) => Err(Unauthenticated::UnknownCertificate(peer.describe())),
        }
    }
}

fn caller(entry: &CallerConfig, kept: Option<&Arc<Caller>>) -> Result<Caller, String> {
    let mut operations = Vec::new();
    for name in &entry.operations {
        let op = Operation::parse(name).ok_or_else(|| format!("unknown operation `{name}`"))?;
        operations.push(op);
    }
    let limiter = match entry.rate_per_second {
        Some(rate) => {
            let rate = NonZeroU32::new(rate).ok_or("`rate_per_second` must be at least 1")?;
            let burst = match entry.burst {
                Some(burst) => NonZeroU32::new(burst).ok_or("`burst` must be at least 1")?,
                None => rate,
            };
            let quota = governor::Quota::per_second(rate).allow_burst(burst);
            let reused = kept
                .and_then(|k| k.limiter.as_ref())
                .filter(|(q, _)| *q == quota)
                .map(|(_, limiter)| limiter.clone());
            Some((
                quota,
                reused.unwrap_or_else(|| Arc::new(governor::RateLimiter::direct(quota))),
            ))
        }
        None => None,
    };
    Ok(Caller {
        name: Arc::from(entry.name.as_str()),
        operations,
        journeys: Scope::of(&entry.journeys),
        tenants: Scope::of_tenants(&entry.tenants),
        limiter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> CallerConfig {
        CallerConfig {
            name: name.to_owned(),
            token_file: None,
            spiffe_id: None,
            dns_name: None,
            operations: vec!["decide".into(), "check".into()],
            journeys: vec!["payment".into(), "change_payout".into()],
            tenants: vec!["*".into()],
            rate_per_second: None,
            burst: None,
        }
    }

    #[test]
    fn a_caller_may_only_what_it_is_bound_to() {
        let gateway = caller(&entry("gateway"), None).unwrap();
        assert_eq!(gateway.may(Operation::Check, "payment", "acme"), Ok(()));
        assert_eq!(gateway.may(Operation::Decide, "change_payout", ""), Ok(()));
        assert!(matches!(
            gateway.may(Operation::ReportOutcome, "payment", ""),
            Err(NotPermitted::Operation {
                operation: "report_outcome",
                ..
            })
        ));
        let err = gateway.may(Operation::Decide, "login", "").unwrap_err();
        assert_eq!(err.field(), "journey");
        assert!(err.to_string().contains("`gateway`") && err.to_string().contains("`login`"));
        let mut tenanted = entry("idp");
        tenanted.tenants = vec!["acme".into()];
        let idp = caller(&tenanted, None).unwrap();
        assert!(idp.may(Operation::Decide, "payment", "acme").is_ok());
        assert!(matches!(
            idp.may(Operation::Decide, "payment", "globex"),
            Err(NotPermitted::Tenant { .. })
        ));
        // The default tenant is a tenant like any other, named `default`
        // or by the empty string.
        assert!(idp.may(Operation::Decide, "payment", "default").is_err());
        tenanted.tenants = vec![String::new()];
        let idp = caller(&tenanted, None).unwrap();
        assert!(idp.may(Operation::Decide, "payment", "default").is_ok());
    }

    #[test]
    fn nobody_may_do_anything_and_anonymous_everything() {
        let nobody = Caller::nobody();
        let anonymous = Caller::anonymous();
        for op in Operation::ALL {
            assert!(nobody.may(op, "login", "").is_err());
            assert!(anonymous.may(op, "login", "any").is_ok());
        }
    }

    #[test]
    fn the_rate_limit_lets_the_burst_through_then_says_when_to_retry() {
        let mut limited = entry("gateway");
        limited.rate_per_second = Some(5);
        limited.burst = Some(3);
        let gateway = caller(&limited, None).unwrap();
        for _ in 0..3 {
            assert_eq!(gateway.take(), Ok(()));
        }
        let refused = gateway.take().unwrap_err();
        assert_eq!(refused.rate, 5);
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_millis(200));
        // A reload with the same quota keeps the limiter (and its state).
        let reloaded = caller(&limited, Some(&Arc::new(gateway))).unwrap();
        assert!(reloaded.take().is_err());
    }
}

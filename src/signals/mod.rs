//! Signals: what Cedar sees in `context`, gathered from the request, the
//! context store and the IP lists.
//!
//! One file per signal family, each a pure function over plain data and an
//! injected `now`; [`gather`] puts them together for one request.

pub mod behaviour;
pub mod device;
pub mod ip_list;
pub mod risk;

use crate::config::RiskConfig;
use crate::decision::{DecideInput, Risk, Tier, UnixSeconds};
use crate::store::StoredContext;

pub use behaviour::BehaviourSignals;
pub use device::DeviceSignals;
pub use ip_list::IpList;

/// `context.authn`, as of the user's current level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnSignals {
    pub amr: Vec<String>,
    /// Absent when the caller did not say when the user authenticated.
    pub seconds_since_auth: Option<i64>,
}

/// `context.ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpSignals {
    pub deny_listed: bool,
}

/// Everything a policy can see about one request, except the assurance level,
/// which the ladder varies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signals {
    pub journey: String,
    pub tier: Tier,
    pub authn: AuthnSignals,
    pub device: DeviceSignals,
    pub ip: IpSignals,
    pub behaviour: BehaviourSignals,
    pub risk: Risk,
}

/// Lookups the signals need besides the stored context.
pub struct Sources<'a> {
    pub deny_list: &'a IpList,
    pub risk: &'a RiskConfig,
}

/// Gathers the signals of one request.
pub fn gather(
    input: &DecideInput,
    tier: Tier,
    stored: &StoredContext,
    sources: &Sources<'_>,
    now: UnixSeconds,
) -> Signals {
    let device = device::signals(input.device_id.is_some(), &stored.user);
    let behaviour = behaviour::signals(&stored.user, &stored.ip, now);
    let ip = IpSignals {
        deny_listed: sources.deny_list.contains(input.ip),
    };
    let risk = risk::score(&device, &behaviour, &ip, sources.risk);
    Signals {
        journey: input.journey.clone(),
        tier,
        authn: AuthnSignals {
            amr: input.authn.amr.clone(),
            seconds_since_auth: input.authn.auth_time.map(|t| now.saturating_sub(t).max(0)),
        },
        device,
        ip,
        behaviour,
        risk,
    }
}

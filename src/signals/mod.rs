//! Signals: what Cedar sees in `context`, gathered from the request, the
//! context store and the IP lists.
//!
//! One file per signal family, each a pure function over plain data and an
//! injected `now`; [`gather`] puts them together for one request.

pub mod address;
pub mod behaviour;
pub mod device;
pub mod geo;
pub mod ip;
pub mod ip_list;
pub mod risk;

use std::net::IpAddr;

use crate::config::RiskConfig;
use crate::decision::{DecideInput, Risk, Tier, UnixSeconds};
use crate::geo::GeoLookup;
use crate::store::StoredContext;

pub use behaviour::BehaviourSignals;
pub use device::DeviceSignals;
pub use geo::{GeoSignals, GeoStatus, TravelLimits};
pub use ip::IpSignals;
pub use ip_list::IpList;

/// `context.authn`, as of the user's current level.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthnSignals {
    pub amr: Vec<String>,
    /// Absent when the caller did not say when the user authenticated.
    pub seconds_since_auth: Option<i64>,
}

/// Everything a policy can see about one request, except the assurance level,
/// which the ladder varies. Its JSON form is the decision log's signal
/// snapshot (see [`crate::record::line`]), from which `stepgate replay`
/// runs the ladder again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signals {
    pub journey: String,
    pub tier: Tier,
    pub authn: AuthnSignals,
    pub device: DeviceSignals,
    pub ip: IpSignals,
    pub geo: GeoSignals,
    pub behaviour: BehaviourSignals,
    pub risk: Risk,
}

/// Lookups the signals need besides the stored context.
pub struct Sources<'a> {
    pub deny_list: &'a IpList,
    pub risk: &'a RiskConfig,
    pub travel: TravelLimits,
}

/// Gathers the signals of one request.
///
/// `ip` is the client address as counted and looked up (see [`address`]);
/// `lookup` is what the MaxMind databases said about it (nothing for a
/// reserved address, which is never looked up).
pub fn gather(
    input: &DecideInput,
    ip: IpAddr,
    tier: Tier,
    stored: &StoredContext,
    lookup: &GeoLookup,
    sources: &Sources<'_>,
    now: UnixSeconds,
) -> Signals {
    let device = device::signals(input.device_id.is_some(), &stored.user);
    let behaviour = behaviour::signals(&stored.user, &stored.ip, now);
    let reserved = ip::is_reserved(ip);
    // Listed as the client it stands for, or as sent.
    let listed = sources.deny_list.contains(ip) || sources.deny_list.contains(input.ip);
    let ip = ip::signals(listed, reserved, lookup);
    let geo = geo::signals(reserved, lookup, &stored.user, sources.travel, now);
    let risk = risk::score(
        &risk::Inputs {
            device: &device,
            behaviour: &behaviour,
            ip: &ip,
            geo: &geo,
        },
        sources.risk,
    );
    Signals {
        journey: input.journey.clone(),
        tier,
        authn: AuthnSignals {
            amr: input.authn.amr.clone(),
            seconds_since_auth: authentication_age(
                input.authn.auth_time,
                stored.user.compromised_since,
                now,
            ),
        },
        device,
        ip,
        geo,
        behaviour,
        risk,
    }
}

/// `authn.seconds_since_auth`: how long ago the user authenticated, never
/// negative (a clock step backwards reads as now). Unknown when the caller
/// did not say, and when the authentication predates a standing compromise
/// report: a session from before "that wasn't me" proves nothing fresh.
fn authentication_age(
    auth_time: Option<UnixSeconds>,
    compromised_since: Option<UnixSeconds>,
    now: UnixSeconds,
) -> Option<i64> {
    auth_time
        .filter(|at| compromised_since.is_none_or(|since| *at > since))
        .map(|at| now.saturating_sub(at).max(0))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::RiskConfig;
    use crate::decision::{Aal, Authn, Subject};
    use crate::store::{IpContext, UserContext};

    fn input(auth_time: Option<UnixSeconds>, device: Option<&str>) -> DecideInput {
        DecideInput {
            journey: "login".into(),
            subject: Subject {
                user_id: "alice".into(),
                tenant: "default".into(),
            },
            authn: Authn {
                aal: Aal::One,
                amr: vec!["pwd".into()],
                auth_time,
            },
            device_id: device.map(str::to_owned),
            ip: "203.0.113.5".parse().unwrap(),
            attributes: BTreeMap::new(),
        }
    }

    fn gathered(
        input: &DecideInput,
        stored: &StoredContext,
        list: &IpList,
        now: UnixSeconds,
    ) -> Signals {
        let risk = RiskConfig::default();
        let sources = Sources {
            deny_list: list,
            risk: &risk,
            travel: TravelLimits {
                max_speed_kmh: 1000,
                min_distance_km: 500,
                max_accuracy_km: 200,
            },
        };
        gather(
            input,
            input.ip,
            Tier::Medium,
            stored,
            &GeoLookup::default(),
            &sources,
            now,
        )
    }

    #[test]
    fn seconds_since_auth_follows_the_injected_clock() {
        let list = IpList::default();
        let stored = StoredContext::default();
        let s = gathered(&input(Some(1_000), None), &stored, &list, 1_090);
        assert_eq!(s.authn.seconds_since_auth, Some(90));
        let unknown = gathered(&input(None, None), &stored, &list, 1_090);
        assert_eq!(unknown.authn.seconds_since_auth, None);
        // An auth_time ahead of our clock (within the skew the engine
        // allows) reads as just now.
        let ahead = gathered(&input(Some(2_000), None), &stored, &list, 1_090);
        assert_eq!(ahead.authn.seconds_since_auth, Some(0));
    }

    #[test]
    fn stored_context_and_lists_become_signals_and_risk() {
        let list = IpList::from_nets(["203.0.113.0/24".parse().unwrap()]);
        let stored = StoredContext {
            user: UserContext {
                device_known: true,
                last_success: Some(500),
                failures: 2,
                ..UserContext::default()
            },
            ip: IpContext {
                failures: 3,
                distinct_failed_users: 1,
            },
        };
        let s = gathered(&input(None, Some("laptop")), &stored, &list, 1_000);
        assert!(s.device.known && s.device.provided);
        assert!(s.ip.deny_listed);
        assert_eq!(s.behaviour.seconds_since_last_success, Some(500));
        assert_eq!(s.behaviour.user_failures, 2);
        let names: Vec<&str> = s.risk.contributions.iter().map(|c| c.signal).collect();
        assert_eq!(
            names,
            [
                risk::USER_FAILURES,
                risk::IP_FAILURES,
                risk::IP_DISTINCT_FAILED_USERS,
                risk::IP_DENY_LISTED
            ]
        );
        assert_eq!(s.risk.score, 100);
    }

    #[test]
    fn a_stored_device_does_not_count_when_the_request_names_none() {
        let stored = StoredContext {
            user: UserContext {
                device_known: true,
                ..UserContext::default()
            },
            ..StoredContext::default()
        };
        let s = gathered(&input(None, None), &stored, &IpList::default(), 0);
        assert!(!s.device.known);
    }
}

//! `context.risk`: a 0..100 score in which every point names its signal.
//!
//! Weights come from the config; a policy can compare the score or the level,
//! and every answer carries the contributions so it can be explained.

use crate::config::{RiskConfig, Weight};
use crate::decision::{Risk, RiskContribution, RiskLevel};

use super::{BehaviourSignals, DeviceSignals, GeoSignals, IpSignals};

pub const NEW_DEVICE: &str = "device.new";
pub const FIRST_SIGN_IN: &str = "behaviour.first_sign_in";
pub const USER_FAILURES: &str = "behaviour.user_failures";
pub const IP_FAILURES: &str = "behaviour.ip_failures";
pub const IP_DISTINCT_FAILED_USERS: &str = "behaviour.ip_distinct_failed_users";
pub const IP_DENY_LISTED: &str = "ip.deny_listed";
pub const NEW_COUNTRY: &str = "geo.new_country";
pub const IMPOSSIBLE_TRAVEL: &str = "geo.impossible_travel";
pub const TOR_EXIT: &str = "ip.tor_exit";
pub const PUBLIC_PROXY: &str = "ip.public_proxy";
pub const RESIDENTIAL_PROXY: &str = "ip.residential_proxy";
pub const ANONYMOUS_VPN: &str = "ip.anonymous_vpn";
pub const HOSTING_PROVIDER: &str = "ip.hosting_provider";

/// Every signal the score can name: the closed set of the metric label and
/// of the decision log's risk contributions.
pub const SIGNALS: [&str; 13] = [
    NEW_DEVICE,
    FIRST_SIGN_IN,
    USER_FAILURES,
    IP_FAILURES,
    IP_DISTINCT_FAILED_USERS,
    IP_DENY_LISTED,
    NEW_COUNTRY,
    IMPOSSIBLE_TRAVEL,
    TOR_EXIT,
    PUBLIC_PROXY,
    RESIDENTIAL_PROXY,
    ANONYMOUS_VPN,
    HOSTING_PROVIDER,
];

/// The signal families the score reads.
pub struct Inputs<'a> {
    pub device: &'a DeviceSignals,
    pub behaviour: &'a BehaviourSignals,
    pub ip: &'a IpSignals,
    pub geo: &'a GeoSignals,
}

pub fn score(inputs: &Inputs<'_>, config: &RiskConfig) -> Risk {
    let Inputs {
        device,
        behaviour,
        ip,
        geo,
    } = inputs;
    // Unknown counts as nothing: the score only names what was observed.
    let anon = ip.anonymity.unwrap_or_default();
    let units = [
        (NEW_DEVICE, config.new_device, u32::from(!device.known)),
        (
            FIRST_SIGN_IN,
            config.first_sign_in,
            u32::from(behaviour.first_sign_in),
        ),
        (USER_FAILURES, config.user_failures, behaviour.user_failures),
        (IP_FAILURES, config.ip_failures, behaviour.ip_failures),
        (
            IP_DISTINCT_FAILED_USERS,
            config.ip_distinct_failed_users,
            behaviour.ip_distinct_failed_users,
        ),
        (
            IP_DENY_LISTED,
            config.ip_deny_listed,
            u32::from(ip.deny_listed),
        ),
        (
            NEW_COUNTRY,
            config.new_country,
            u32::from(geo.country_known == Some(false)),
        ),
        (
            IMPOSSIBLE_TRAVEL,
            config.impossible_travel,
            u32::from(geo.impossible_travel == Some(true)),
        ),
        (TOR_EXIT, config.tor_exit, u32::from(anon.tor_exit)),
        (
            PUBLIC_PROXY,
            config.public_proxy,
            u32::from(anon.public_proxy),
        ),
        (
            RESIDENTIAL_PROXY,
            config.residential_proxy,
            u32::from(anon.residential_proxy),
        ),
        (
            ANONYMOUS_VPN,
            config.anonymous_vpn,
            u32::from(anon.anonymous_vpn),
        ),
        (
            HOSTING_PROVIDER,
            config.hosting_provider,
            u32::from(anon.hosting_provider),
        ),
    ];
    let contributions: Vec<RiskContribution> = units
        .into_iter()
        .map(|(signal, weight, count)| RiskContribution {
            signal,
            points: points(weight, count),
        })
        .filter(|c| c.points > 0)
        .collect();
    let score = contributions
        .iter()
        .fold(0u32, |sum, c| sum.saturating_add(c.points))
        .min(100);
    Risk {
        score,
        level: level(score, config),
        contributions,
    }
}

/// The band a score falls in.
pub fn level(score: u32, config: &RiskConfig) -> RiskLevel {
    if score >= config.high_at {
        RiskLevel::High
    } else if score >= config.medium_at {
        RiskLevel::Medium
    } else {
        RiskLevel::Low
    }
}

fn points(weight: Weight, count: u32) -> u32 {
    weight.points.saturating_mul(count).min(weight.cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::Anonymity;
    use crate::signals::GeoStatus;

    fn no_geo() -> GeoSignals {
        GeoSignals::unknown(GeoStatus::NotConfigured)
    }

    fn score_of(
        device: &DeviceSignals,
        behaviour: &BehaviourSignals,
        ip: &IpSignals,
        config: &RiskConfig,
    ) -> Risk {
        score(
            &Inputs {
                device,
                behaviour,
                ip,
                geo: &no_geo(),
            },
            config,
        )
    }

    #[test]
    fn geo_and_anonymity_contribute_only_when_observed() {
        let known = DeviceSignals {
            provided: true,
            known: true,
        };
        let ip = IpSignals {
            anonymity: Some(Anonymity {
                anonymous: true,
                tor_exit: true,
                ..Anonymity::default()
            }),
            ..IpSignals::default()
        };
        let geo = GeoSignals {
            status: GeoStatus::Located,
            country: Some("AU".into()),
            country_known: Some(false),
            distance_km: Some(17_000),
            speed_kmh: Some(34_000),
            impossible_travel: Some(true),
        };
        let behaviour = BehaviourSignals::default();
        let r = score(
            &Inputs {
                device: &known,
                behaviour: &behaviour,
                ip: &ip,
                geo: &geo,
            },
            &RiskConfig::default(),
        );
        let named: Vec<(&str, u32)> = r
            .contributions
            .iter()
            .map(|c| (c.signal, c.points))
            .collect();
        assert_eq!(
            named,
            vec![(NEW_COUNTRY, 15), (IMPOSSIBLE_TRAVEL, 40), (TOR_EXIT, 40)]
        );
        assert_eq!((r.score, r.level), (95, RiskLevel::High));

        // Unknown (no database) adds nothing.
        let r = score_of(
            &known,
            &behaviour,
            &IpSignals::default(),
            &RiskConfig::default(),
        );
        assert_eq!(r.score, 0);
    }

    #[test]
    fn quiet_known_device_scores_zero() {
        let device = DeviceSignals {
            provided: true,
            known: true,
        };
        let r = score_of(
            &device,
            &BehaviourSignals::default(),
            &IpSignals::default(),
            &RiskConfig::default(),
        );
        assert_eq!((r.score, r.level), (0, RiskLevel::Low));
        assert!(r.contributions.is_empty());
    }

    #[test]
    fn every_point_names_its_signal_and_caps_apply() {
        let behaviour = BehaviourSignals {
            user_failures: 3,
            ip_distinct_failed_users: 30,
            first_sign_in: true,
            ..BehaviourSignals::default()
        };
        let r = score_of(
            &DeviceSignals::default(),
            &behaviour,
            &IpSignals::default(),
            &RiskConfig::default(),
        );
        let named: Vec<(&str, u32)> = r
            .contributions
            .iter()
            .map(|c| (c.signal, c.points))
            .collect();
        assert_eq!(
            named,
            vec![
                (NEW_DEVICE, 25),
                (FIRST_SIGN_IN, 10),
                (USER_FAILURES, 15),
                (IP_DISTINCT_FAILED_USERS, 50),
            ]
        );
        assert_eq!(r.score, 100);
        assert_eq!(r.level, RiskLevel::High);
    }

    #[test]
    fn bands_follow_the_configured_thresholds() {
        let config = RiskConfig {
            medium_at: 20,
            high_at: 40,
            ..RiskConfig::default()
        };
        let r = score_of(
            &DeviceSignals::default(),
            &BehaviourSignals::default(),
            &IpSignals::default(),
            &config,
        );
        assert_eq!((r.score, r.level), (25, RiskLevel::Medium));
    }
}

//! `context.risk`: a 0..100 score in which every point names its signal.
//!
//! Weights come from the config; a policy can compare the score or the level,
//! and every answer carries the contributions so it can be explained.

use crate::config::{RiskConfig, Weight};
use crate::decision::{Risk, RiskContribution, RiskLevel};

use super::{BehaviourSignals, DeviceSignals, IpSignals};

pub const NEW_DEVICE: &str = "device.new";
pub const FIRST_SIGN_IN: &str = "behaviour.first_sign_in";
pub const USER_FAILURES: &str = "behaviour.user_failures";
pub const IP_FAILURES: &str = "behaviour.ip_failures";
pub const IP_DISTINCT_FAILED_USERS: &str = "behaviour.ip_distinct_failed_users";
pub const IP_DENY_LISTED: &str = "ip.deny_listed";

pub fn score(
    device: &DeviceSignals,
    behaviour: &BehaviourSignals,
    ip: &IpSignals,
    config: &RiskConfig,
) -> Risk {
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
    let level = if score >= config.high_at {
        RiskLevel::High
    } else if score >= config.medium_at {
        RiskLevel::Medium
    } else {
        RiskLevel::Low
    };
    Risk {
        score,
        level,
        contributions,
    }
}

fn points(weight: Weight, count: u32) -> u32 {
    weight.points.saturating_mul(count).min(weight.cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_known_device_scores_zero() {
        let device = DeviceSignals {
            provided: true,
            known: true,
        };
        let r = score(
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
        let r = score(
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
        let r = score(
            &DeviceSignals::default(),
            &BehaviourSignals::default(),
            &IpSignals::default(),
            &config,
        );
        assert_eq!((r.score, r.level), (25, RiskLevel::Medium));
    }
}

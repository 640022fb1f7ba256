//! `context.behaviour`: failures in sliding windows, credential-stuffing
//! pressure from the client's IP, and the user's sign-in history.
//!
//! The store counts inside the configured windows; this turns its counts and
//! timestamps into the values policies compare against.

use crate::decision::UnixSeconds;
use crate::store::{IpContext, UserContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct BehaviourSignals {
    /// Failures of this user in the user-failure window, from anywhere.
    pub user_failures: u32,
    /// Of those, the failures reported with this request's device (0 when
    /// the request names no device). Tells an attack on the account from
    /// trouble on the user's own device.
    pub user_failures_on_device: u32,
    /// Failures from this IP in the IP-failure window.
    pub ip_failures: u32,
    /// Distinct users that failed from this IP in the distinct-users window.
    pub ip_distinct_failed_users: u32,
    /// The user has never completed a sign-in.
    pub first_sign_in: bool,
    /// Seconds since the user's last completed sign-in; absent on the first.
    pub seconds_since_last_success: Option<i64>,
    /// The account was reported compromised (`EVENT_COMPROMISED`) and no
    /// step-up asked for since has been passed, nor has it been confirmed
    /// safe; the mark ends after `reporting.compromised_secs`.
    pub compromised_recently: bool,
}

pub fn signals(user: &UserContext, ip: &IpContext, now: UnixSeconds) -> BehaviourSignals {
    BehaviourSignals {
        user_failures: user.failures,
        user_failures_on_device: user.failures_on_device,
        ip_failures: ip.failures,
        ip_distinct_failed_users: ip.distinct_failed_users,
        first_sign_in: user.last_success.is_none(),
        // A clock step backwards must not produce a negative age.
        seconds_since_last_success: user.last_success.map(|t| now.saturating_sub(t).max(0)),
        compromised_recently: user.compromised_since.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sign_in_has_no_last_success_age() {
        let b = signals(&UserContext::default(), &IpContext::default(), 1_000);
        assert!(b.first_sign_in);
        assert_eq!(b.seconds_since_last_success, None);
    }

    #[test]
    fn last_success_age_is_measured_from_now() {
        let user = UserContext {
            last_success: Some(1_000),
            failures: 3,
            ..UserContext::default()
        };
        let ip = IpContext {
            failures: 7,
            distinct_failed_users: 4,
        };
        let b = signals(&user, &ip, 1_600);
        assert!(!b.first_sign_in);
        assert_eq!(b.seconds_since_last_success, Some(600));
        assert_eq!(
            (b.user_failures, b.ip_failures, b.ip_distinct_failed_users),
            (3, 7, 4)
        );
    }

    #[test]
    fn clock_going_backwards_gives_zero_age() {
        let user = UserContext {
            last_success: Some(2_000),
            ..UserContext::default()
        };
        let b = signals(&user, &IpContext::default(), 1_000);
        assert_eq!(b.seconds_since_last_success, Some(0));
    }
}

//! `context.device`: has this user completed a sign-in on this device?
//!
//! Only a reported success teaches the store a device, so a device is never
//! "known" because of Decide calls or failed attempts.

use crate::store::UserContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DeviceSignals {
    /// The caller sent a device id.
    pub provided: bool,
    /// This user has completed a sign-in on this device before. Always false
    /// when no device id was sent.
    pub known: bool,
}

pub fn signals(provided: bool, user: &UserContext) -> DeviceSignals {
    DeviceSignals {
        provided,
        known: provided && user.device_known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_known_only_when_provided_and_stored() {
        let stored = UserContext {
            device_known: true,
            ..UserContext::default()
        };
        assert_eq!(
            signals(true, &stored),
            DeviceSignals {
                provided: true,
                known: true
            }
        );
        assert!(!signals(false, &stored).known);
        assert!(!signals(true, &UserContext::default()).known);
    }
}

//! The journey catalog (`journeys.toml`): which journeys exist and how
//! sensitive each is. Tiers are a server-side fact; callers only name the
//! journey.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::decision::Tier;

/// Longest journey name accepted in the catalog (and so on the wire).
pub const MAX_JOURNEY_NAME: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyEntry {
    /// `low`, `medium` or `high`.
    pub tier: Tier,
    /// What the journey is, for people reading the catalog.
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyCatalog {
    pub journeys: BTreeMap<String, JourneyEntry>,
}

impl JourneyCatalog {
    pub fn get(&self, name: &str) -> Option<&JourneyEntry> {
        self.journeys.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.journeys.keys().map(String::as_str)
    }
}

/// A journey name is a lowercase identifier, so it is also a readable Cedar
/// action id and a safe metric label.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_JOURNEY_NAME
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journey_names_are_lowercase_identifiers() {
        assert!(valid_name("login"));
        assert!(valid_name("change_payout2"));
        assert!(!valid_name(""));
        assert!(!valid_name("Login"));
        assert!(!valid_name("2fa"));
        assert!(!valid_name("log-in"));
        assert!(!valid_name(&"a".repeat(MAX_JOURNEY_NAME + 1)));
    }
}

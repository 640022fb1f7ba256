//! `context.geo`: the country, whether this user has succeeded from it
//! before, and the distance and implied speed since the user's last located
//! success (impossible travel).
//!
//! Conservative by construction: both positions are only known within their
//! accuracy radius (plus the rounding of stored positions), so the distance a
//! policy sees is the shortest the user could have travelled, and
//! impossible travel also needs a minimum distance so city-level noise never
//! fires.

use crate::decision::UnixSeconds;
use crate::geo::GeoLookup;
use crate::store::{StoredLocation, UserContext};

/// Mean Earth radius, km.
const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Stored positions are rounded to 0.1 degree: at most 0.05 degree off in
/// each coordinate, which is under 0.05 × √2 × 111.2 ≈ 7.9 km.
pub const ROUNDING_SLACK_KM: f64 = 8.0;

/// How the City database answered for this address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeoStatus {
    /// A country and a position.
    Located,
    /// A country but no position.
    CountryOnly,
    /// The database has no record for the address.
    NotFound,
    /// No City database is configured.
    NotConfigured,
    /// A private, loopback, link-local or documentation address: not looked up.
    Reserved,
}

impl GeoStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GeoStatus::Located => "located",
            GeoStatus::CountryOnly => "country_only",
            GeoStatus::NotFound => "not_found",
            GeoStatus::NotConfigured => "not_configured",
            GeoStatus::Reserved => "reserved",
        }
    }
}

/// Impossible-travel thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TravelLimits {
    /// Faster than this is impossible (km/h).
    pub max_speed_kmh: u32,
    /// Only distances of at least this much count (km).
    pub min_distance_km: u32,
    /// Only positions located to a city within this radius count (km); see
    /// [`GeoLookup::travel_position`].
    pub max_accuracy_km: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GeoSignals {
    pub status: GeoStatus,
    pub country: Option<String>,
    /// Present when the country is known.
    pub country_known: Option<bool>,
    /// Present when both this position and the last located success are known.
    pub distance_km: Option<i64>,
    pub speed_kmh: Option<i64>,
    pub impossible_travel: Option<bool>,
}

impl GeoSignals {
    /// Nothing known beyond how the lookup went.
    pub fn unknown(status: GeoStatus) -> Self {
        Self {
            status,
            country: None,
            country_known: None,
            distance_km: None,
            speed_kmh: None,
            impossible_travel: None,
        }
    }
}

/// Great-circle distance in km (haversine).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

/// The shortest distance the user must have covered, and the speed that
/// implies over `elapsed` seconds (at least one second).
pub fn travel(from: &StoredLocation, to: &crate::geo::Location, elapsed: i64) -> (f64, f64) {
    let raw = distance_km(from.latitude(), from.longitude(), to.latitude, to.longitude);
    let slack = f64::from(from.accuracy_km) + f64::from(to.accuracy_km) + ROUNDING_SLACK_KM;
    let distance = (raw - slack).max(0.0);
    #[expect(
        clippy::cast_precision_loss,
        reason = "seconds well inside f64's exact range"
    )]
    let hours = elapsed.max(1) as f64 / 3600.0;
    (distance, distance / hours)
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "distances and speeds are clamped far inside i64"
)]
fn whole(value: f64) -> i64 {
    value.clamp(0.0, 1.0e12).floor() as i64
}

pub fn signals(
    reserved: bool,
    lookup: &GeoLookup,
    user: &UserContext,
    limits: TravelLimits,
    now: UnixSeconds,
) -> GeoSignals {
    let status = if reserved {
        GeoStatus::Reserved
    } else if !lookup.city_configured {
        GeoStatus::NotConfigured
    } else if lookup.location.is_some() {
        GeoStatus::Located
    } else if lookup.country.is_some() {
        GeoStatus::CountryOnly
    } else {
        GeoStatus::NotFound
    };
    let mut out = GeoSignals::unknown(status);
    if reserved {
        return out;
    }
    out.country = lookup.country.clone();
    out.country_known = lookup.country.as_ref().map(|_| user.country_known);
    let elapsed = user.last_location.map(|last| now.saturating_sub(last.at));
    // A last success "in the future" (the clock stepped back) says nothing
    // about speed: leave travel unknown rather than divide by a guess. A
    // position the databases do not vouch for (country-level, coarse, an
    // anonymising exit) leaves it unknown too; the stored one was vouched
    // for when it was learned.
    if let (Some(here), Some(last), Some(elapsed @ 0..)) = (
        lookup.travel_position(limits.max_accuracy_km),
        user.last_location.as_ref(),
        elapsed,
    ) {
        let (distance, speed) = travel(last, here, elapsed);
        out.distance_km = Some(whole(distance));
        out.speed_kmh = Some(whole(speed));
        out.impossible_travel = Some(
            distance >= f64::from(limits.min_distance_km)
                && speed > f64::from(limits.max_speed_kmh),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::Location;

    const LIMITS: TravelLimits = TravelLimits {
        max_speed_kmh: 1000,
        min_distance_km: 500,
        max_accuracy_km: 200,
    };

    fn stored(lat: f64, lon: f64, accuracy_km: u32, at: i64) -> StoredLocation {
        StoredLocation::new(lat, lon, accuracy_km, at)
    }

    fn here(lat: f64, lon: f64, accuracy_km: u32) -> GeoLookup {
        GeoLookup {
            city_configured: true,
            country: Some("GB".into()),
            location: Some(Location {
                latitude: lat,
                longitude: lon,
                accuracy_km,
                city: true,
            }),
            ..GeoLookup::default()
        }
    }

    fn user_at(last: StoredLocation) -> UserContext {
        UserContext {
            last_location: Some(last),
            country_known: true,
            ..UserContext::default()
        }
    }

    #[test]
    fn same_point_is_zero_distance() {
        assert!(distance_km(51.5, -0.1, 51.5, -0.1).abs() < 1e-9);
    }

    #[test]
    fn antipodes_are_half_the_circumference() {
        let d = distance_km(0.0, 0.0, 0.0, 180.0);
        assert!(
            (d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6,
            "{d}"
        );
        let poles = distance_km(90.0, 0.0, -90.0, 0.0);
        assert!((poles - d).abs() < 1e-6, "{poles}");
    }

    #[test]
    fn london_to_paris_is_about_340_km() {
        let d = distance_km(51.5074, -0.1278, 48.8566, 2.3522);
        assert!((d - 343.5).abs() < 2.0, "{d}");
    }

    #[test]
    fn zero_elapsed_time_across_continents_is_impossible_not_a_division_by_zero() {
        let last = stored(51.5, -0.1, 10, 1_000);
        let s = signals(
            false,
            &here(-33.87, 151.21, 50),
            &user_at(last),
            LIMITS,
            1_000,
        );
        assert_eq!(s.impossible_travel, Some(true));
        let speed = s.speed_kmh.expect("speed");
        assert!(speed > 10_000_000, "{speed}");
    }

    #[test]
    fn zero_elapsed_time_at_the_same_place_is_not_travel() {
        let last = stored(51.5, -0.1, 10, 1_000);
        let s = signals(false, &here(51.5, -0.1, 10), &user_at(last), LIMITS, 1_000);
        assert_eq!(
            (s.distance_km, s.speed_kmh, s.impossible_travel),
            (Some(0), Some(0), Some(false))
        );
    }

    #[test]
    fn travel_between_antipodes_at_the_edges_of_time() {
        let from = stored(0.0, 0.0, 0, 0);
        let to = Location {
            latitude: 0.0,
            longitude: 180.0,
            accuracy_km: 0,
            city: true,
        };
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        let (d0, v0) = travel(&from, &to, 0);
        assert!((d0 - (half - ROUNDING_SLACK_KM)).abs() < 1e-6, "{d0}");
        assert!(
            (v0 - d0 * 3600.0).abs() < 1e-3,
            "zero elapsed counts as one second"
        );
        let (_, v1) = travel(&from, &to, 3600);
        assert!((v1 - d0).abs() < 1e-6, "one hour: speed equals distance");
    }

    #[test]
    fn a_last_success_in_the_future_leaves_travel_unknown() {
        let last = stored(51.5, -0.1, 10, 5_000);
        let s = signals(
            false,
            &here(-33.87, 151.21, 50),
            &user_at(last),
            LIMITS,
            1_000,
        );
        assert_eq!(
            (s.distance_km, s.speed_kmh, s.impossible_travel),
            (None, None, None)
        );
    }

    #[test]
    fn a_day_later_on_another_continent_is_possible() {
        let last = stored(51.5, -0.1, 10, 0);
        let s = signals(
            false,
            &here(-33.87, 151.21, 50),
            &user_at(last),
            LIMITS,
            24 * 3600,
        );
        assert_eq!(s.impossible_travel, Some(false));
        assert!(s.speed_kmh.expect("speed") < 1000);
    }

    #[test]
    fn fast_but_short_hops_never_fire() {
        // London to Manchester (~260 km) in ten minutes is fast, but under
        // the distance floor: database noise, not travel.
        let last = stored(51.5142, -0.0931, 10, 0);
        let s = signals(
            false,
            &here(53.4808, -2.2426, 20),
            &user_at(last),
            LIMITS,
            600,
        );
        assert_eq!(s.impossible_travel, Some(false));
        assert!(s.speed_kmh.expect("speed") > 1000);
    }

    #[test]
    fn accuracy_radii_shrink_the_distance() {
        let last = stored(51.5, -0.1, 10, 0);
        let near = signals(
            false,
            &here(48.8566, 2.3522, 20),
            &user_at(last),
            LIMITS,
            3600,
        );
        let coarse = signals(
            false,
            &here(48.8566, 2.3522, 150),
            &user_at(last),
            LIMITS,
            3600,
        );
        assert!(coarse.distance_km < near.distance_km);
    }

    #[test]
    fn unknown_stays_unknown() {
        let reserved = signals(true, &here(0.0, 0.0, 1), &UserContext::default(), LIMITS, 0);
        assert_eq!(reserved.status, GeoStatus::Reserved);
        assert_eq!((reserved.country, reserved.country_known), (None, None));
        let unconfigured = signals(
            false,
            &GeoLookup::default(),
            &UserContext::default(),
            LIMITS,
            0,
        );
        assert_eq!(unconfigured.status, GeoStatus::NotConfigured);
        let first = signals(
            false,
            &here(51.5, -0.1, 10),
            &UserContext::default(),
            LIMITS,
            0,
        );
        assert_eq!(first.status, GeoStatus::Located);
        assert_eq!(
            first.country_known,
            Some(false),
            "checked: never succeeded from GB"
        );
        assert_eq!(
            first.impossible_travel, None,
            "no earlier location to compare with"
        );
    }

    #[test]
    fn positions_the_databases_do_not_vouch_for_never_measure_travel() {
        let last = stored(40.7, -74.0, 20, 0);
        let mut country_level = here(37.751, -97.822, 1000);
        if let Some(l) = country_level.location.as_mut() {
            l.city = false;
        }
        let coarse_city = here(37.751, -97.822, 500);
        let mut vpn = here(51.5, -0.1, 10);
        vpn.anonymity = Some(crate::geo::Anonymity {
            anonymous: true,
            anonymous_vpn: true,
            ..Default::default()
        });
        for (name, lookup) in [
            ("no city", &country_level),
            ("radius above the bound", &coarse_city),
            ("an anonymising exit", &vpn),
        ] {
            let s = signals(false, lookup, &user_at(last), LIMITS, 20 * 60);
            assert_eq!(
                (s.distance_km, s.speed_kmh, s.impossible_travel),
                (None, None, None),
                "{name}"
            );
            assert_eq!(s.status, GeoStatus::Located, "{name}: still located");
        }
        // The same London position from a clean address is measured.
        let clean = signals(
            false,
            &here(51.5, -0.1, 10),
            &user_at(last),
            LIMITS,
            20 * 60,
        );
        assert_eq!(clean.impossible_travel, Some(true));
    }
}

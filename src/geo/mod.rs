//! MaxMind databases: City (or Country), ASN and Anonymous-IP, each optional.
//!
//! Opened and checked once at start (a missing, corrupt or wrong-type file
//! stops the start); afterwards a replaced file is swapped in atomically, and
//! a broken replacement is refused while the old one keeps answering. The
//! request path does one lookup per configured database and decodes only the
//! fields stepgate uses.

pub mod reload;

#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use maxminddb::Reader;
use serde::Deserialize;

/// The three kinds of database stepgate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbKind {
    /// GeoIP2/GeoLite2 City or Country.
    City,
    /// GeoLite2 ASN or GeoIP2 ISP.
    Asn,
    /// GeoIP2 Anonymous IP.
    AnonymousIp,
}

impl DbKind {
    pub const ALL: [DbKind; 3] = [DbKind::City, DbKind::Asn, DbKind::AnonymousIp];

    /// The config key that names this database.
    pub fn config_key(self) -> &'static str {
        match self {
            DbKind::City => "geo.city_db",
            DbKind::Asn => "geo.asn_db",
            DbKind::AnonymousIp => "geo.anonymous_ip_db",
        }
    }

    /// Whether a file's `database_type` metadata is one this kind can read.
    fn accepts(self, database_type: &str) -> bool {
        match self {
            DbKind::City => ["City", "Country", "Enterprise"]
                .iter()
                .any(|t| database_type.contains(t)),
            DbKind::Asn => database_type.contains("ASN") || database_type.contains("ISP"),
            DbKind::AnonymousIp => database_type.contains("Anonymous-IP"),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            DbKind::City => "a City or Country database (e.g. GeoLite2-City)",
            DbKind::Asn => "an ASN or ISP database (e.g. GeoLite2-ASN)",
            DbKind::AnonymousIp => "an Anonymous-IP database (GeoIP2-Anonymous-IP)",
        }
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GeoError {
    #[error("`{key}`: cannot open `{}`: {source}", path.display())]
    Open {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    #[error("`{key}`: `{}` is a `{found}` database; expected {expected}", path.display())]
    WrongType {
        key: &'static str,
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
}

/// One opened database and where it came from.
#[derive(Debug)]
pub struct Database {
    pub reader: Reader<Vec<u8>>,
    pub path: PathBuf,
    /// Set once a lookup error was logged, so a bad record cannot flood the
    /// log at request rate.
    warned: std::sync::atomic::AtomicBool,
}

impl Database {
    /// Opens, reads the metadata and checks the type; the whole file is
    /// verified so that corruption is caught now, not on some request.
    pub fn open(kind: DbKind, path: &Path) -> Result<Self, GeoError> {
        let open_error = |source| GeoError::Open {
            key: kind.config_key(),
            path: path.to_owned(),
            source,
        };
        let reader = Reader::open_readfile(path).map_err(open_error)?;
        let found = reader.metadata().database_type.clone();
        if !kind.accepts(&found) {
            return Err(GeoError::WrongType {
                key: kind.config_key(),
                path: path.to_owned(),
                found,
                expected: kind.expected(),
            });
        }
        reader.verify().map_err(open_error)?;
        Ok(Self {
            reader,
            path: path.to_owned(),
            warned: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// A coarse location from the City database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    /// Kilometres; the true position is somewhere within this radius.
    pub accuracy_km: u32,
    /// The record names a city; without one the position is a country's
    /// (or a region's) centre, not the user's.
    pub city: bool,
}

/// The Anonymous-IP flags; absence of a record means "checked and clean".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Anonymity {
    pub anonymous: bool,
    pub anonymous_vpn: bool,
    pub hosting_provider: bool,
    pub public_proxy: bool,
    pub residential_proxy: bool,
    pub tor_exit: bool,
}

/// What the databases say about one address. `None` everywhere means
/// unknown: no database, or no record in it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GeoLookup {
    /// Whether a City database is configured at all.
    pub city_configured: bool,
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    pub location: Option<Location>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    /// `None` when no Anonymous-IP database is configured.
    pub anonymity: Option<Anonymity>,
}

impl Anonymity {
    /// Any flag set: the address is an exit or a data centre, not where
    /// the user is.
    pub fn any(&self) -> bool {
        self.anonymous
            || self.anonymous_vpn
            || self.hosting_provider
            || self.public_proxy
            || self.residential_proxy
            || self.tor_exit
    }
}

impl GeoLookup {
    /// The position, when it is good enough to measure travel from or to:
    /// located to a city, within `max_accuracy_km`, and from an address
    /// the Anonymous-IP database does not flag (a VPN, proxy or Tor exit or
    /// a hosting network is where the traffic leaves, not where the user
    /// is). Anything else never becomes a user's last location and never
    /// makes travel impossible.
    pub fn travel_position(&self, max_accuracy_km: u32) -> Option<&Location> {
        let anonymising = self.anonymity.is_some_and(|a| a.any());
        self.location
            .as_ref()
            .filter(|l| l.city && l.accuracy_km <= max_accuracy_km && !anonymising)
    }
}

// Record shapes with only the fields stepgate reads, so decoding skips
// everything else (names in every language, subdivisions, postal codes).
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow)]
    country: Option<CountryRecord<'a>>,
    location: Option<LocationRecord>,
    /// Only its presence matters.
    city: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRecord {
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u16>,
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    autonomous_system_number: Option<u32>,
    autonomous_system_organization: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct AnonymousRecord {
    is_anonymous: Option<bool>,
    is_anonymous_vpn: Option<bool>,
    is_hosting_provider: Option<bool>,
    is_public_proxy: Option<bool>,
    is_residential_proxy: Option<bool>,
    is_tor_exit_node: Option<bool>,
}

/// The configured databases, each swappable on its own.
#[derive(Debug, Default)]
pub struct GeoDatabases {
    city: ArcSwapOption<Database>,
    asn: ArcSwapOption<Database>,
    anonymous_ip: ArcSwapOption<Database>,
    /// Configured paths, so reloads know what to reopen.
    paths: Vec<(DbKind, PathBuf)>,
    /// Serialises reloads, so a slow older read never replaces a newer one.
    reloading: std::sync::Mutex<()>,
    reloads: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

/// A lookup that failed (a record of an unexpected shape, say): the answer
/// is unknown, which is not the same as "no record".
struct LookupFailed;

/// Looks up one record: `Ok(None)` when the database has none. A failure is
/// logged (once per database copy) and must not fail the decision.
fn record<'de, T: Deserialize<'de>>(
    db: &'de Database,
    ip: IpAddr,
) -> Result<Option<T>, LookupFailed> {
    if ip.is_ipv6() && db.reader.metadata().ip_version == 4 {
        // An IPv4-only database knows nothing about IPv6 addresses.
        return Ok(None);
    }
    db.reader
        .lookup(ip)
        .and_then(|found| found.decode::<T>())
        .map_err(|err| {
            if !db.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    geo.db = %db.path.display(),
                    error = %err,
                    "database lookup failed; the signal is unknown (logged once per file)"
                );
            }
            LookupFailed
        })
}

/// A missing accuracy radius is read as this, the cautious side for travel.
pub const DEFAULT_ACCURACY_KM: u32 = 100;

impl GeoDatabases {
    /// Opens every configured database; the first problem stops the start.
    pub fn open(paths: &[(DbKind, PathBuf)]) -> Result<Self, GeoError> {
        let dbs = Self {
            paths: paths.to_vec(),
            ..Self::default()
        };
        for (kind, path) in paths {
            dbs.slot(*kind)
                .store(Some(Arc::new(Database::open(*kind, path)?)));
        }
        for kind in DbKind::ALL {
            if dbs.slot(kind).load().is_none() {
                tracing::info!(
                    geo.db = kind.config_key(),
                    "not configured; its signals stay unknown"
                );
            }
        }
        Ok(dbs)
    }

    fn slot(&self, kind: DbKind) -> &ArcSwapOption<Database> {
        match kind {
            DbKind::City => &self.city,
            DbKind::Asn => &self.asn,
            DbKind::AnonymousIp => &self.anonymous_ip,
        }
    }

    /// Configured databases and their files.
    pub fn paths(&self) -> &[(DbKind, PathBuf)] {
        &self.paths
    }

    /// Reopens one database and swaps it in; on failure the old one stays.
    /// Blocking (reads and verifies the whole file): async callers run it on
    /// a blocking thread.
    pub fn reload(&self, kind: DbKind) -> Result<(), GeoError> {
        use std::sync::atomic::Ordering;
        let Some((_, path)) = self.paths.iter().find(|(k, _)| *k == kind) else {
            return Ok(());
        };
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match Database::open(kind, path) {
            Ok(fresh) => {
                self.slot(kind).store(Some(Arc::new(fresh)));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    /// (reloads done, reloads refused) since start.
    pub fn reload_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.reloads.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Reloads every configured database, keeping the old copy of any that
    /// fails; returns the failures.
    pub fn reload_all(&self) -> Vec<GeoError> {
        self.paths
            .iter()
            .filter_map(|(kind, _)| self.reload(*kind).err())
            .collect()
    }

    /// The build time of a database, to tell which copy is serving.
    pub fn build_epoch(&self, kind: DbKind) -> Option<u64> {
        self.slot(kind)
            .load()
            .as_ref()
            .map(|db| db.reader.metadata().build_epoch)
    }

    /// Everything the databases know about a (public) address.
    pub fn lookup(&self, ip: IpAddr) -> GeoLookup {
        let ip = ip.to_canonical();
        let mut out = GeoLookup::default();
        if let Some(db) = self.city.load().as_deref() {
            out.city_configured = true;
            if let Ok(Some(r)) = record::<CityRecord<'_>>(db, ip) {
                // Only where the user is, never where the block is registered
                // (`registered_country`), which says little about the user.
                out.country = r.country.and_then(|c| c.iso_code).map(str::to_owned);
                let city = r.city.is_some();
                out.location = r.location.and_then(|l| {
                    Some(Location {
                        latitude: l.latitude?,
                        longitude: l.longitude?,
                        accuracy_km: l.accuracy_radius.map_or(DEFAULT_ACCURACY_KM, u32::from),
                        city,
                    })
                });
            }
        }
        if let Some(db) = self.asn.load().as_deref()
            && let Ok(Some(r)) = record::<AsnRecord<'_>>(db, ip)
        {
            out.asn = r.autonomous_system_number;
            out.as_org = r.autonomous_system_organization.map(str::to_owned);
        }
        // No record: checked and clean. A failed lookup: unknown.
        if let Some(db) = self.anonymous_ip.load().as_deref()
            && let Ok(r) = record::<AnonymousRecord>(db, ip)
        {
            let r = r.unwrap_or_default();
            let flag = |f: Option<bool>| f.unwrap_or(false);
            out.anonymity = Some(Anonymity {
                anonymous: flag(r.is_anonymous),
                anonymous_vpn: flag(r.is_anonymous_vpn),
                hosting_provider: flag(r.is_hosting_provider),
                public_proxy: flag(r.is_public_proxy),
                residential_proxy: flag(r.is_residential_proxy),
                tor_exit: flag(r.is_tor_exit_node),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{self, FixturePaths};
    use super::*;

    fn open_all(dir: &Path) -> (GeoDatabases, FixturePaths) {
        let paths = fixtures::write_all(dir).expect("fixtures");
        let dbs = GeoDatabases::open(&[
            (DbKind::City, paths.city.clone()),
            (DbKind::Asn, paths.asn.clone()),
            (DbKind::AnonymousIp, paths.anonymous_ip.clone()),
        ])
        .expect("fixtures open");
        (dbs, paths)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_located_address_has_country_position_and_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dbs, _) = open_all(dir.path());
        let found = dbs.lookup(ip(fixtures::LONDON.ip));
        assert_eq!(found.country.as_deref(), Some("GB"));
        let location = found.location.expect("located");
        assert!((location.latitude - fixtures::LONDON.latitude).abs() < 1e-9);
        assert_eq!(location.accuracy_km, 10);
        assert_eq!(found.asn, Some(64_500));
        assert_eq!(found.as_org.as_deref(), Some("Example Broadband"));
        assert_eq!(
            found.anonymity,
            Some(Anonymity::default()),
            "checked and clean"
        );
    }

    #[test]
    fn ipv6_and_ipv4_mapped_addresses_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dbs, _) = open_all(dir.path());
        assert_eq!(
            dbs.lookup(ip(fixtures::SYDNEY_V6.ip)).country.as_deref(),
            Some("AU")
        );
        let mapped = dbs.lookup(ip("::ffff:81.2.69.142"));
        assert_eq!(mapped.country.as_deref(), Some("GB"));
        let tor = dbs
            .lookup(ip(fixtures::TOR_EXIT_V6_IP))
            .anonymity
            .expect("configured");
        assert!(tor.tor_exit && tor.anonymous);
    }

    #[test]
    fn unknown_is_not_false() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dbs, _) = open_all(dir.path());
        let unlisted = dbs.lookup(ip(fixtures::UNLISTED_IP));
        assert!(unlisted.city_configured);
        assert_eq!(
            (unlisted.country, unlisted.location, unlisted.asn),
            (None, None, None)
        );
        assert_eq!(unlisted.anonymity, Some(Anonymity::default()));
        let country_only = dbs.lookup(ip(fixtures::COUNTRY_ONLY_IP));
        assert_eq!(
            country_only.country.as_deref(),
            Some(fixtures::COUNTRY_ONLY_COUNTRY)
        );
        assert_eq!(country_only.location, None);
        let none = GeoDatabases::default().lookup(ip(fixtures::LONDON.ip));
        assert_eq!(none, GeoLookup::default());
        assert_eq!(none.anonymity, None, "no database: unknown, not clean");
    }

    #[test]
    fn anonymous_ip_flags_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dbs, _) = open_all(dir.path());
        let flags = |addr| dbs.lookup(ip(addr)).anonymity.expect("configured");
        assert!(flags(fixtures::TOR_EXIT_IP).tor_exit);
        assert!(flags(fixtures::PUBLIC_PROXY_IP).public_proxy);
        assert!(flags(fixtures::HOSTING_IP).hosting_provider);
        assert!(flags(fixtures::VPN_IP).anonymous_vpn);
        let residential = flags(fixtures::RESIDENTIAL_PROXY_IP);
        assert!(residential.residential_proxy && !residential.anonymous);
    }

    #[test]
    fn broken_missing_and_wrong_type_files_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = fixtures::write_all(dir.path()).expect("fixtures");
        let broken = dir.path().join("broken.mmdb");
        std::fs::write(&broken, fixtures::broken_db().expect("broken")).expect("write");

        let err = Database::open(DbKind::City, &broken).expect_err("broken");
        let text = err.to_string();
        assert!(text.starts_with("`geo.city_db`: cannot open `"), "{text}");
        assert!(text.contains("broken.mmdb"), "{text}");

        let missing = dir.path().join("absent.mmdb");
        let text = Database::open(DbKind::Asn, &missing)
            .expect_err("missing")
            .to_string();
        assert!(
            text.contains("`geo.asn_db`") && text.contains("absent.mmdb"),
            "{text}"
        );

        let text = Database::open(DbKind::City, &paths.asn)
            .expect_err("wrong type")
            .to_string();
        assert!(
            text.contains("is a `GeoLite2-ASN` database; expected a City or Country database"),
            "{text}"
        );
    }

    #[test]
    fn reload_swaps_a_good_file_and_keeps_the_old_one_over_a_broken_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dbs, paths) = open_all(dir.path());
        assert_eq!(dbs.build_epoch(DbKind::City), Some(1));

        std::fs::write(
            &paths.city,
            fixtures::city_db_built("GeoIP2-City", 2).expect("db"),
        )
        .expect("write");
        dbs.reload(DbKind::City).expect("good file reloads");
        assert_eq!(dbs.build_epoch(DbKind::City), Some(2));

        std::fs::write(&paths.city, fixtures::broken_db().expect("broken")).expect("write");
        assert!(dbs.reload(DbKind::City).is_err());
        assert_eq!(dbs.build_epoch(DbKind::City), Some(2), "old copy kept");
        assert_eq!(
            dbs.lookup(ip(fixtures::LONDON.ip)).country.as_deref(),
            Some("GB"),
            "and still answering"
        );
        assert_eq!(dbs.reload_all().len(), 1);
    }

    #[test]
    fn only_city_level_precise_clean_positions_are_good_for_travel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (dbs, _) = open_all(dir.path());
        let bound = crate::config::DEFAULT_TRAVEL_MAX_ACCURACY_KM;
        let position = |addr| dbs.lookup(ip(addr)).travel_position(bound).copied();
        let ny = position(fixtures::NEW_YORK.ip).expect("a city within the bound");
        assert!(ny.city && ny.accuracy_km == 20);
        let country = dbs.lookup(ip(fixtures::US_COUNTRY_V6.ip));
        let located = country.location.expect("the record has a position");
        assert!(!located.city, "but no city");
        assert_eq!(position(fixtures::US_COUNTRY_V6.ip), None);
        assert_eq!(
            position(fixtures::JOHANNESBURG_COARSE.ip),
            None,
            "500 km radius"
        );
        assert!(dbs.lookup(ip(fixtures::VPN_IP)).location.is_some());
        assert_eq!(position(fixtures::VPN_IP), None, "an anonymising exit");
    }
}

//! Small MaxMind databases for tests and benchmarks, written with the
//! MaxMind record shapes (MaxMind's published field names) and read back only
//! through the `maxminddb` crate, exactly as production reads real ones.
//!
//! The mapping of networks to places is made up for testing; it is not
//! GeoLite2 data.

use std::path::{Path, PathBuf};

use mmdb_writer::{Value, Writer};

/// A network in the City fixture.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub network: &'static str,
    /// An address inside `network`.
    pub ip: &'static str,
    pub country: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub accuracy_km: u16,
    /// The record names a city (false: a country-level record).
    pub city: bool,
}

pub const LONDON: Place = Place {
    network: "81.2.69.0/24",
    ip: "81.2.69.142",
    country: "GB",
    latitude: 51.5142,
    longitude: -0.0931,
    accuracy_km: 10,
    city: true,
};
/// Same city as [`LONDON`], another network.
pub const LONDON_2: Place = Place {
    network: "81.2.80.0/24",
    ip: "81.2.80.9",
    country: "GB",
    latitude: 51.5074,
    longitude: -0.1278,
    accuracy_km: 20,
    city: true,
};
pub const MANCHESTER: Place = Place {
    network: "81.2.70.0/24",
    ip: "81.2.70.20",
    country: "GB",
    latitude: 53.4808,
    longitude: -2.2426,
    accuracy_km: 20,
    city: true,
};
pub const PARIS: Place = Place {
    network: "2.125.160.0/24",
    ip: "2.125.160.216",
    country: "FR",
    latitude: 48.8566,
    longitude: 2.3522,
    accuracy_km: 20,
    city: true,
};
pub const SYDNEY: Place = Place {
    network: "175.16.199.0/24",
    ip: "175.16.199.7",
    country: "AU",
    latitude: -33.8688,
    longitude: 151.2093,
    accuracy_km: 50,
    city: true,
};
/// IPv6, in London.
pub const LONDON_V6: Place = Place {
    network: "2a02:cf40::/32",
    ip: "2a02:cf40:1::17",
    country: "GB",
    latitude: 51.5142,
    longitude: -0.0931,
    accuracy_km: 100,
    city: true,
};
/// IPv6, in Sydney.
pub const SYDNEY_V6: Place = Place {
    network: "2400:cb00::/32",
    ip: "2400:cb00:2::1",
    country: "AU",
    latitude: -33.8688,
    longitude: 151.2093,
    accuracy_km: 100,
    city: true,
};

pub const NEW_YORK: Place = Place {
    network: "216.160.83.0/24",
    ip: "216.160.83.56",
    country: "US",
    latitude: 40.7128,
    longitude: -74.006,
    accuracy_km: 20,
    city: true,
};
/// IPv6, located only to the United States: the country's centre with a
/// 1000 km radius and no city, as country-level records are.
pub const US_COUNTRY_V6: Place = Place {
    network: "2600:1f00::/24",
    ip: "2600:1f00:1::9",
    country: "US",
    latitude: 37.751,
    longitude: -97.822,
    accuracy_km: 1000,
    city: false,
};
/// A city record whose accuracy radius (500 km) is too coarse for travel.
pub const JOHANNESBURG_COARSE: Place = Place {
    network: "196.25.1.0/24",
    ip: "196.25.1.30",
    country: "ZA",
    latitude: -26.2041,
    longitude: 28.0473,
    accuracy_km: 500,
    city: true,
};
/// Where the Anonymous-IP fixture's VPN exit ([`VPN_IP`]) is located: New
/// York, while its users may be anywhere.
pub const VPN_EXIT: Place = Place {
    network: "146.70.0.0/24",
    ip: VPN_IP,
    country: "US",
    latitude: 40.7128,
    longitude: -74.006,
    accuracy_km: 20,
    city: true,
};

pub const PLACES: [Place; 11] = [
    LONDON,
    LONDON_2,
    MANCHESTER,
    PARIS,
    SYDNEY,
    LONDON_V6,
    SYDNEY_V6,
    NEW_YORK,
    US_COUNTRY_V6,
    JOHANNESBURG_COARSE,
    VPN_EXIT,
];

/// In the City database with a country but no location.
pub const COUNTRY_ONLY_NETWORK: &str = "67.43.156.0/24";
pub const COUNTRY_ONLY_IP: &str = "67.43.156.10";
pub const COUNTRY_ONLY_COUNTRY: &str = "BT";

/// A private network the City and ASN fixtures do have records for, so a
/// test can prove reserved addresses are never looked up.
pub const PRIVATE_NETWORK: &str = "10.0.0.0/8";

/// Public, and in no fixture database at all.
pub const UNLISTED_IP: &str = "100.200.1.1";

/// ASN fixture: (network, number, organisation).
pub const ASNS: [(&str, u32, &str); 4] = [
    (PRIVATE_NETWORK, 64_999, "Never Looked Up"),
    ("81.2.0.0/16", 64_500, "Example Broadband"),
    ("175.16.0.0/16", 64_501, "Example Mobile"),
    ("2a02:cf40::/32", 64_502, "Example Fibre"),
];

/// Anonymous-IP fixture addresses.
pub const TOR_EXIT_IP: &str = "185.220.101.5";
pub const PUBLIC_PROXY_IP: &str = "45.14.0.77";
pub const HOSTING_IP: &str = "104.16.0.33";
pub const VPN_IP: &str = "146.70.0.9";
pub const RESIDENTIAL_PROXY_IP: &str = "89.46.0.12";
pub const TOR_EXIT_V6_IP: &str = "2a0b:f4c0::10";

const ANONYMOUS: [(&str, &[&str]); 6] = [
    ("185.220.101.0/24", &["is_anonymous", "is_tor_exit_node"]),
    ("45.14.0.0/24", &["is_anonymous", "is_public_proxy"]),
    ("104.16.0.0/24", &["is_anonymous", "is_hosting_provider"]),
    ("146.70.0.0/24", &["is_anonymous", "is_anonymous_vpn"]),
    ("89.46.0.0/24", &["is_residential_proxy"]),
    ("2a0b:f4c0::/32", &["is_anonymous", "is_tor_exit_node"]),
];

/// An error building a fixture; fixtures are test data, so callers usually
/// just fail the test.
pub type FixtureError = Box<dyn std::error::Error + Send + Sync>;

/// A writer with the metadata real MaxMind files carry (a description is
/// required by the reader's verification).
fn writer(database_type: &str, build_epoch: u64) -> Writer {
    Writer::builder(database_type)
        .description(&[("en", "stepgate test fixture (made-up data)")])
        .build_epoch(std::time::UNIX_EPOCH + std::time::Duration::from_secs(build_epoch))
        .build()
}

fn insert(writer: &mut Writer, network: &str, value: Value) -> Result<(), FixtureError> {
    writer.insert_value(network.parse::<mmdb_writer::ipnet::IpNet>()?, value)?;
    Ok(())
}

fn country(code: &str) -> Value {
    Value::map([
        ("iso_code", Value::from(code)),
        ("names", Value::map([("en", Value::from(code))])),
    ])
}

/// A GeoIP2-City shaped database (IPv6 tree, IPv4 reachable through it).
pub fn city_db(database_type: &str) -> Result<Vec<u8>, FixtureError> {
    city_db_built(database_type, 1)
}

/// [`city_db`] with a chosen build time, to tell two copies apart.
pub fn city_db_built(database_type: &str, build_epoch: u64) -> Result<Vec<u8>, FixtureError> {
    let mut w = writer(database_type, build_epoch);
    for place in PLACES {
        let mut fields = vec![
            ("country", country(place.country)),
            ("registered_country", country(place.country)),
            (
                "location",
                Value::map([
                    ("latitude", Value::from(place.latitude)),
                    ("longitude", Value::from(place.longitude)),
                    ("accuracy_radius", Value::from(place.accuracy_km)),
                    ("time_zone", Value::from("Etc/UTC")),
                ]),
            ),
        ];
        if place.city {
            fields.push((
                "city",
                Value::map([("names", Value::map([("en", Value::from("Fixture City"))]))]),
            ));
        }
        insert(&mut w, place.network, Value::map(fields))?;
    }
    insert(
        &mut w,
        COUNTRY_ONLY_NETWORK,
        Value::map([("country", country(COUNTRY_ONLY_COUNTRY))]),
    )?;
    insert(
        &mut w,
        PRIVATE_NETWORK,
        Value::map([("country", country("ZZ"))]),
    )?;
    Ok(w.to_bytes()?)
}

/// A GeoLite2-ASN shaped database.
pub fn asn_db() -> Result<Vec<u8>, FixtureError> {
    let mut w = writer("GeoLite2-ASN", 1);
    for (network, number, org) in ASNS {
        insert(
            &mut w,
            network,
            Value::map([
                ("autonomous_system_number", Value::from(number)),
                ("autonomous_system_organization", Value::from(org)),
            ]),
        )?;
    }
    Ok(w.to_bytes()?)
}

/// A GeoIP2-Anonymous-IP shaped database.
pub fn anonymous_ip_db() -> Result<Vec<u8>, FixtureError> {
    let mut w = writer("GeoIP2-Anonymous-IP", 1);
    for (network, flags) in ANONYMOUS {
        insert(
            &mut w,
            network,
            Value::map(flags.iter().map(|f| (*f, Value::from(true)))),
        )?;
    }
    Ok(w.to_bytes()?)
}

/// A City database cut short: the metadata marker is gone, so no reader
/// accepts it.
pub fn broken_db() -> Result<Vec<u8>, FixtureError> {
    let mut bytes = city_db("GeoIP2-City")?;
    bytes.truncate(bytes.len() / 2);
    Ok(bytes)
}

/// Paths of the three fixture databases written to a directory.
#[derive(Debug, Clone)]
pub struct FixturePaths {
    pub city: PathBuf,
    pub asn: PathBuf,
    pub anonymous_ip: PathBuf,
}

/// Writes all three databases into `dir`.
pub fn write_all(dir: &Path) -> Result<FixturePaths, FixtureError> {
    let paths = FixturePaths {
        city: dir.join("fixture-city.mmdb"),
        asn: dir.join("fixture-asn.mmdb"),
        anonymous_ip: dir.join("fixture-anonymous-ip.mmdb"),
    };
    std::fs::write(&paths.city, city_db("GeoIP2-City")?)?;
    std::fs::write(&paths.asn, asn_db()?)?;
    std::fs::write(&paths.anonymous_ip, anonymous_ip_db()?)?;
    Ok(paths)
}

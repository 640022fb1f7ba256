//! Geography and network intelligence end to end: fixture MaxMind databases
//! read through the `maxminddb` crate, a server over real gRPC, and a clock
//! the test moves by hand.

use std::sync::Arc;

use stepgate::config::{Config, GeoConfig};
use stepgate::engine::Clock as _;
use stepgate::engine::ManualClock;
use stepgate::geo::fixtures::{self, FixturePaths};
use stepgate::server::proto::{DecideRequest, Event, Outcome};

use crate::harness::*;

const T0: i64 = 1_800_000_000;
const MINUTE: i64 = 60;
const DAY: i64 = 24 * 3600;

struct GeoServer {
    server: TestServer,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn geo_config(paths: &FixturePaths, policies: std::path::PathBuf) -> Config {
    Config {
        policies_dir: policies,
        geo: GeoConfig {
            city_db: Some(paths.city.clone()),
            asn_db: Some(paths.asn.clone()),
            anonymous_ip_db: Some(paths.anonymous_ip.clone()),
            ..GeoConfig::default()
        },
        ..Config::default()
    }
}

impl GeoServer {
    /// [`decide`], authenticated a minute before the test clock's now.
    fn decide(&self, journey: &str, user: &str, device: &str, ip: &str, aal: u32) -> DecideRequest {
        let mut request = decide(journey, user, device, ip, aal);
        request.authn.as_mut().expect("authn").auth_time = self.clock.now() - MINUTE;
        request
    }
}

async fn start() -> GeoServer {
    start_with_policies(&[]).await
}

/// The bundled pack plus `extra` policy files, with all three databases.
async fn start_with_policies(extra: &[(&str, &str)]) -> GeoServer {
    let dir = bundled_policies_with(extra);
    let paths = fixtures::write_all(dir.path()).expect("fixtures");
    let clock = Arc::new(ManualClock::new(T0));
    let server =
        TestServer::start_with_clock(geo_config(&paths, dir.path().to_owned()), clock.clone())
            .await;
    GeoServer {
        server,
        clock,
        _dir: dir,
    }
}

#[tokio::test]
async fn minutes_after_london_a_sign_in_from_sydney_is_impossible_travel() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(20 * MINUTE);

    let known = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::SYDNEY.ip, 1),
    )
    .await;
    assert_eq!(
        seen(&known),
        expect(
            Outcome::StepUp,
            2,
            &["login-impossible-travel", "login-new-country"]
        )
    );
    let risk = known.risk.expect("risk");
    let names: Vec<&str> = risk.signals.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["geo.new_country", "geo.impossible_travel"]);

    let new_device = ask(
        &mut client,
        g.decide("login", "alice", "kiosk", fixtures::SYDNEY.ip, 1),
    )
    .await;
    assert_eq!(seen(&new_device).outcome, Outcome::StepUp);
    assert_eq!(
        new_device.required_aal, 3,
        "impossible travel on a new device needs AAL3"
    );
    assert!(
        new_device
            .reasons
            .iter()
            .any(|r| r.policy_id == "login-impossible-travel-new-device")
    );

    let payout = ask(
        &mut client,
        g.decide("change_payout", "alice", "laptop", fixtures::SYDNEY.ip, 3),
    )
    .await;
    assert_eq!(
        seen(&payout),
        expect(Outcome::Deny, 0, &["high-tier-impossible-travel"])
    );
}

#[tokio::test]
async fn the_same_city_a_day_later_fires_nothing() {
    // A probe on signup proves travel was measured (and found possible).
    let g = start_with_policies(&[(
        "measured.cedar",
        r#"@id("probe-travel-measured") @reason("travel was measured")
forbid (principal, action == Action::"change_credentials", resource)
when { context.geo has impossible_travel && !context.geo.impossible_travel &&
       context.geo has distance_km && context.geo.distance_km == 0 }
unless { context.authn.aal >= 3 };"#,
    )])
    .await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(DAY);
    let login = g.decide("login", "alice", "laptop", fixtures::LONDON_2.ip, 1);
    let answer = ask(&mut client, login).await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );
    assert!(answer.risk.expect("risk").signals.is_empty());
    let probed = g.decide(
        "change_credentials",
        "alice",
        "laptop",
        fixtures::LONDON_2.ip,
        2,
    );
    let probe = ask(&mut client, probed).await;
    assert_eq!(
        seen(&probe),
        expect(Outcome::StepUp, 3, &["probe-travel-measured"])
    );
}

#[tokio::test]
async fn a_fast_short_hop_inside_one_country_is_not_impossible_travel() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(10 * MINUTE);
    let answer = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::MANCHESTER.ip, 1),
    )
    .await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );
}

#[tokio::test]
async fn a_new_country_steps_up_login_and_a_success_there_teaches_it() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(DAY);
    let paris = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::PARIS.ip, 1),
    )
    .await;
    assert_eq!(
        seen(&paris),
        expect(Outcome::StepUp, 2, &["login-new-country"])
    );

    tell(
        &mut client,
        "alice",
        "laptop",
        fixtures::PARIS.ip,
        Event::StepUpSucceeded,
    )
    .await;
    g.clock.advance(DAY);
    let again = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::PARIS.ip, 1),
    )
    .await;
    assert_eq!(seen(&again).outcome, Outcome::Allow);
}

#[tokio::test]
async fn a_failed_attempt_teaches_no_country() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    tell(
        &mut client,
        "alice",
        "laptop",
        fixtures::PARIS.ip,
        Event::AuthFailed,
    )
    .await;
    g.clock.advance(DAY);
    let paris = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::PARIS.ip, 1),
    )
    .await;
    assert!(
        paris
            .reasons
            .iter()
            .any(|r| r.policy_id == "login-new-country")
    );
}

#[tokio::test]
async fn tor_exit_denies_high_tier_and_steps_up_login() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    for ip in [
        fixtures::TOR_EXIT_IP,
        fixtures::TOR_EXIT_V6_IP,
        fixtures::PUBLIC_PROXY_IP,
    ] {
        let payout = ask(
            &mut client,
            g.decide("change_payout", "alice", "laptop", ip, 3),
        )
        .await;
        assert_eq!(
            seen(&payout),
            expect(Outcome::Deny, 0, &["high-tier-tor-or-public-proxy"]),
            "{ip}"
        );
        let login = ask(&mut client, g.decide("login", "alice", "laptop", ip, 1)).await;
        assert_eq!(seen(&login).outcome, Outcome::StepUp, "{ip}");
        assert_eq!(login.required_aal, 2, "{ip}");
        assert!(
            login
                .reasons
                .iter()
                .any(|r| r.policy_id == "login-tor-or-public-proxy"),
            "{ip}"
        );
    }
}

#[tokio::test]
async fn a_hosting_provider_address_steps_up_login() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    let login = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::HOSTING_IP, 1),
    )
    .await;
    assert_eq!(
        seen(&login),
        expect(Outcome::StepUp, 2, &["login-hosting-provider"])
    );
}

#[tokio::test]
async fn a_high_risk_score_needs_at_least_aal2_on_any_journey() {
    let g = start().await;
    let mut client = g.server.client().await;
    // A first sign-up through Tor: new device 25 + first sign-in 10 + Tor 40.
    let signup = ask(
        &mut client,
        g.decide("signup", "newbie", "phone", fixtures::TOR_EXIT_IP, 1),
    )
    .await;
    assert_eq!(
        seen(&signup),
        expect(Outcome::StepUp, 2, &["high-risk-needs-aal2"])
    );
    assert_eq!(signup.risk.expect("risk").level, "high");
}

/// Policies that fire on what the geo and network signals know, so a test
/// can see unknown, clean and reserved from outside.
const PROBES: &str = r#"
@id("probe-reserved") @reason("reserved address")
forbid (principal, action == Action::"signup", resource)
when { context.geo.lookup == "reserved" && context.ip.reserved && !(context.geo has country) }
unless { context.authn.aal >= 2 };

@id("probe-not-found") @reason("no geo record")
forbid (principal, action == Action::"signup", resource)
when { context.geo.lookup == "not_found" && !(context.geo has country) && !(context.ip has asn) }
unless { context.authn.aal >= 2 };

@id("probe-checked-clean") @reason("anonymity checked and clean")
forbid (principal, action == Action::"signup", resource)
when { context.ip has tor_exit && !context.ip.tor_exit && context.ip has anonymous && !context.ip.anonymous }
unless { context.authn.aal >= 2 };

@id("probe-any-asn") @reason("some ASN is known")
forbid (principal, action == Action::"signup", resource)
when { context.ip has asn || context.geo has country }
unless { context.authn.aal >= 2 } ;

@id("probe-asn") @reason("the ASN is known")
forbid (principal, action == Action::"signup", resource)
when { context.ip has asn && context.ip.asn == 64500 && context.ip has as_org && context.ip.as_org == "Example Broadband" }
unless { context.authn.aal >= 2 };
"#;

#[tokio::test]
async fn an_address_in_no_database_is_unknown_not_an_error() {
    let g = start_with_policies(&[("probes.cedar", PROBES)]).await;
    let mut client = g.server.client().await;
    let answer = ask(
        &mut client,
        g.decide("signup", "bob", "phone", fixtures::UNLISTED_IP, 1),
    )
    .await;
    assert_eq!(
        seen(&answer),
        expect(
            Outcome::StepUp,
            2,
            &["probe-checked-clean", "probe-not-found"]
        )
    );
}

#[tokio::test]
async fn private_and_loopback_addresses_are_never_looked_up() {
    let g = start_with_policies(&[("probes.cedar", PROBES)]).await;
    let mut client = g.server.client().await;
    // 10.0.0.0/8 has City and ASN records in the fixtures: if it were looked
    // up, `probe-any-asn` would fire.
    for ip in ["10.1.2.3", "127.0.0.1", "::1", "fd00::5", "192.168.0.7"] {
        let answer = ask(&mut client, g.decide("signup", "bob", "phone", ip, 1)).await;
        // Reserved: no lookup, so the anonymity flags are unknown too.
        assert_eq!(
            seen(&answer),
            expect(Outcome::StepUp, 2, &["probe-reserved"]),
            "{ip}"
        );
    }
}

#[tokio::test]
async fn asn_and_organisation_reach_the_policies() {
    let g = start_with_policies(&[("probes.cedar", PROBES)]).await;
    let mut client = g.server.client().await;
    let answer = ask(
        &mut client,
        g.decide("signup", "bob", "phone", fixtures::LONDON.ip, 1),
    )
    .await;
    assert_eq!(
        seen(&answer),
        expect(
            Outcome::StepUp,
            2,
            &["probe-any-asn", "probe-asn", "probe-checked-clean"]
        )
    );
}

#[tokio::test]
async fn ipv6_travel_is_measured_too() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON_V6.ip).await;
    g.clock.advance(30 * MINUTE);
    let answer = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::SYDNEY_V6.ip, 1),
    )
    .await;
    assert!(
        answer
            .reasons
            .iter()
            .any(|r| r.policy_id == "login-impossible-travel"),
        "{:?}",
        answer.reasons
    );
}

#[tokio::test]
async fn without_databases_geo_rules_stay_silent() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    let sydney = ask(
        &mut client,
        decide("login", "alice", "laptop", fixtures::SYDNEY.ip, 1),
    )
    .await;
    assert_eq!(
        seen(&sydney),
        expect(Outcome::Allow, 0, &["journey-permit"])
    );
    let tor = ask(
        &mut client,
        decide("change_payout", "alice", "laptop", fixtures::TOR_EXIT_IP, 2),
    )
    .await;
    assert_eq!(seen(&tor).outcome, Outcome::Allow);
}

#[test]
fn a_broken_database_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = fixtures::write_all(dir.path()).expect("fixtures");
    std::fs::write(&paths.city, fixtures::broken_db().expect("broken")).expect("write");
    let config = geo_config(&paths, bundled_policies());
    let err = stepgate::app::build_engine(Arc::new(config)).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("`geo.city_db`: cannot open"), "{text}");
    assert!(text.contains("fixture-city.mmdb"), "{text}");
}

#[test]
fn a_database_of_the_wrong_type_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = fixtures::write_all(dir.path()).expect("fixtures");
    let mut config = geo_config(&paths, bundled_policies());
    config.geo.anonymous_ip_db = Some(paths.city.clone());
    let err = stepgate::app::build_engine(Arc::new(config)).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("`geo.anonymous_ip_db`"), "{text}");
    assert!(
        text.contains("is a `GeoIP2-City` database; expected an Anonymous-IP database"),
        "{text}"
    );
}

#[tokio::test]
async fn a_replaced_database_file_is_picked_up_and_a_broken_one_is_not() {
    use stepgate::geo::DbKind;
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = fixtures::write_all(dir.path()).expect("fixtures");
    let engine = stepgate::app::build_engine(Arc::new(geo_config(&paths, bundled_policies())))
        .expect("engine");
    let dbs = engine.geo().clone();
    let _watcher = stepgate::geo::reload::watch(dbs.clone())
        .expect("watch")
        .expect("configured");
    assert_eq!(dbs.build_epoch(DbKind::City), Some(1));

    // Replace the way geoipupdate does: write beside it, rename over it.
    let replace = |bytes: Vec<u8>| {
        let tmp = dir.path().join("incoming.tmp");
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, &paths.city).expect("rename");
    };
    replace(fixtures::city_db_built("GeoIP2-City", 2).expect("db"));
    let mut swapped = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if dbs.build_epoch(DbKind::City) == Some(2) {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "the new file was not picked up within 10 s");

    let (reloads, refused) = dbs.reload_counts();
    assert_eq!(refused, 0);
    replace(fixtures::broken_db().expect("broken"));
    let mut refusals = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        refusals = dbs.reload_counts().1;
        if refusals > 0 {
            break;
        }
    }
    assert_eq!(refusals, 1, "the broken file was tried and refused");
    assert_eq!(
        dbs.build_epoch(DbKind::City),
        Some(2),
        "the old copy is kept"
    );
    // Our own reads of the file must not trigger further reloads.
    tokio::time::sleep(stepgate::geo::reload::DEBOUNCE * 3).await;
    assert_eq!(dbs.reload_counts(), (reloads, 1), "no reload loop");
    let still = dbs.lookup(fixtures::LONDON.ip.parse().expect("ip"));
    assert_eq!(still.country.as_deref(), Some("GB"));
}

/// The risk signals of an answer, by name.
fn signal_names(answer: &stepgate::server::proto::DecideResponse) -> Vec<String> {
    let risk = answer.risk.as_ref().expect("risk");
    risk.signals.iter().map(|s| s.name.clone()).collect()
}

#[tokio::test]
async fn a_success_through_a_vpn_never_becomes_the_last_location() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(DAY);
    // A completed sign-in through a VPN whose exit is in New York.
    sign_in(&mut client, "alice", "laptop", fixtures::VPN_IP).await;
    g.clock.advance(30 * MINUTE);
    let home = ask(
        &mut client,
        g.decide("payment", "alice", "laptop", fixtures::LONDON.ip, 3),
    )
    .await;
    assert_eq!(
        seen(&home),
        expect(Outcome::Allow, 0, &["journey-permit"]),
        "home is where the last trusted position was"
    );
    assert!(!signal_names(&home).contains(&"geo.impossible_travel".to_owned()));

    // With only a VPN sign-in behind them, a user has no last location.
    sign_in(&mut client, "bob", "laptop", fixtures::VPN_IP).await;
    g.clock.advance(30 * MINUTE);
    let bob = ask(
        &mut client,
        g.decide("login", "bob", "laptop", fixtures::LONDON.ip, 1),
    )
    .await;
    assert_eq!(
        seen(&bob),
        expect(Outcome::StepUp, 2, &["login-new-country"])
    );
}

#[tokio::test]
async fn a_request_through_a_vpn_is_not_measured_for_travel() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(10 * MINUTE);
    let answer = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::VPN_IP, 1),
    )
    .await;
    assert_eq!(
        seen(&answer),
        expect(Outcome::StepUp, 2, &["login-new-country"])
    );
    assert_eq!(
        signal_names(&answer),
        ["geo.new_country", "ip.anonymous_vpn"],
        "no impossible travel from an exit's position"
    );
}

#[tokio::test]
async fn a_country_level_position_never_makes_travel_impossible() {
    let g = start().await;
    let mut client = g.server.client().await;
    // New York over IPv4, then 20 minutes later a US record with no city
    // over IPv6: the country's centre, 1000 km of radius.
    sign_in(&mut client, "alice", "laptop", fixtures::NEW_YORK.ip).await;
    g.clock.advance(20 * MINUTE);
    let v6 = ask(
        &mut client,
        g.decide("payment", "alice", "laptop", fixtures::US_COUNTRY_V6.ip, 3),
    )
    .await;
    assert_eq!(seen(&v6), expect(Outcome::Allow, 0, &["journey-permit"]));
    assert!(signal_names(&v6).is_empty(), "{:?}", signal_names(&v6));

    // A success at the country-level record is not learned as a position
    // either: the last one stays New York.
    sign_in(&mut client, "alice", "laptop", fixtures::US_COUNTRY_V6.ip).await;
    g.clock.advance(20 * MINUTE);
    let back = ask(
        &mut client,
        g.decide("payment", "alice", "laptop", fixtures::NEW_YORK.ip, 3),
    )
    .await;
    assert_eq!(seen(&back).outcome, Outcome::Allow);
}

#[tokio::test]
async fn a_city_record_coarser_than_the_bound_never_makes_travel_impossible() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(20 * MINUTE);
    // 9,000 km in 20 minutes, but the record is only good to 500 km.
    let coarse = ask(
        &mut client,
        g.decide(
            "login",
            "alice",
            "laptop",
            fixtures::JOHANNESBURG_COARSE.ip,
            1,
        ),
    )
    .await;
    assert_eq!(
        seen(&coarse),
        expect(Outcome::StepUp, 2, &["login-new-country"])
    );
    // The same trip to a precise record is impossible travel.
    let precise = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::SYDNEY.ip, 1),
    )
    .await;
    assert!(signal_names(&precise).contains(&"geo.impossible_travel".to_owned()));
}

#[tokio::test]
async fn nat64_addresses_are_looked_up_as_the_ipv4_client_they_embed() {
    let g = start().await;
    let mut client = g.server.client().await;
    // 81.2.69.142 (London) through NAT64.
    sign_in(&mut client, "alice", "laptop", "64:ff9b::5102:458e").await;
    g.clock.advance(20 * MINUTE);
    // 175.16.199.7 (Sydney) through NAT64, 20 minutes later.
    let answer = ask(
        &mut client,
        g.decide("login", "alice", "laptop", "64:ff9b::af10:c707", 1),
    )
    .await;
    assert_eq!(
        seen(&answer),
        expect(
            Outcome::StepUp,
            2,
            &["login-impossible-travel", "login-new-country"]
        )
    );
}

#[tokio::test]
async fn a_completed_sign_in_teaches_the_place_its_decision_judged() {
    let g = start().await;
    let mut client = g.server.client().await;
    sign_in(&mut client, "alice", "laptop", fixtures::LONDON.ip).await;
    g.clock.advance(DAY);
    let asked = g.decide("login", "alice", "laptop", fixtures::LONDON.ip, 1);
    let d = ask(&mut client, asked.clone()).await;
    assert_eq!(seen(&d).outcome, Outcome::Allow);
    // The report arrives from another country than the one judged.
    let mut done = answering(&d, &asked, Event::AuthSucceeded);
    done.network = Some(stepgate::server::proto::Network {
        ip: fixtures::PARIS.ip.into(),
    });
    let judged = send(&mut client, done).await;
    assert!(judged.decision_found);
    g.clock.advance(DAY);
    let paris = ask(
        &mut client,
        g.decide("login", "alice", "laptop", fixtures::PARIS.ip, 1),
    )
    .await;
    assert_eq!(
        seen(&paris),
        expect(Outcome::StepUp, 2, &["login-new-country"]),
        "no policy ever judged France"
    );
}

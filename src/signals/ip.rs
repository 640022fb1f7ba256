//! `context.ip`: deny lists, reserved ranges, the network's ASN and the
//! Anonymous-IP flags.
//!
//! Unknown stays distinguishable from false: the ASN and the anonymity flags
//! are absent when no database is configured (or, for the ASN, when the
//! address has no record), and false only when a database was consulted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::geo::{Anonymity, GeoLookup};

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct IpSignals {
    pub deny_listed: bool,
    /// Private, loopback, link-local, documentation or otherwise not
    /// globally routable; such addresses are never looked up.
    pub reserved: bool,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    /// `None`: no Anonymous-IP database is configured.
    pub anonymity: Option<Anonymity>,
}

pub fn signals(deny_listed: bool, reserved: bool, geo: &GeoLookup) -> IpSignals {
    IpSignals {
        deny_listed,
        reserved,
        asn: geo.asn,
        as_org: geo.as_org.clone(),
        anonymity: geo.anonymity,
    }
}

/// Whether an address is outside the public internet (RFC 6890 and friends),
/// so no database can say anything useful about it.
pub fn is_reserved(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => reserved_v4(v4),
        IpAddr::V6(v6) => reserved_v6(v6),
    }
}

fn reserved_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved for future use, 240.0.0.0/4.
        || a >= 240
}

fn reserved_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments().first().copied().unwrap_or(0);
    let second = ip.segments().get(1).copied().unwrap_or(0);
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (first & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (first & 0xffc0) == 0xfe80
        // Documentation, 2001:db8::/32 and 3fff::/20.
        || (first == 0x2001 && second == 0x0db8)
        || (first == 0x3fff && second < 0x1000)
        // Discard-only, 100::/64.
        || (first == 0x0100 && ip.segments().get(1..4).is_some_and(|s| s.iter().all(|x| *x == 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_documentation_are_reserved() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.10.10",
            "192.0.2.5",
            "198.51.100.5",
            "203.0.113.5",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd12:3456::1",
            "2001:db8::1",
            "3fff:fff::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_reserved(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_not_reserved() {
        for ip in [
            "81.2.69.142",
            "8.8.8.8",
            "2a02:cf40::1",
            "2400:cb00::1",
            "::ffff:81.2.69.1",
        ] {
            assert!(!is_reserved(ip.parse().unwrap()), "{ip}");
        }
    }
}

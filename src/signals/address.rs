//! One client, one address: an IPv6 address that carries a client's IPv4
//! address in a form the IETF defines is read as that IPv4 address, so it
//! is counted, looked up, listed and logged as the client it stands for.
//!
//! Read as the embedded IPv4 address:
//!
//! | form | prefix | where the IPv4 address sits |
//! | --- | --- | --- |
//! | IPv4-mapped (RFC 4291 §2.5.5.2) | `::ffff:0:0/96` | last 32 bits |
//! | IPv4-compatible, deprecated (RFC 4291 §2.5.5.1) | `::/96`, not `::` or `::1` | last 32 bits |
//! | IPv4-translated, SIIT (RFC 2765 §2.1) | `::ffff:0:0:0/96` | last 32 bits |
//! | NAT64 / IPv4-embedded (RFC 6052 §2.2) | `network.nat64_prefixes`: the well-known `64:ff9b::/96` by default, plus a network's own (one carved from RFC 8215's `64:ff9b:1::/48`, say) | after the prefix, skipping bits 64..71 |
//! | 6to4 (RFC 3056 §2) | `2002::/16` | bits 16..47 |
//! | Teredo (RFC 4380 §4) | `2001::/32` | last 32 bits, inverted (the client's public address) |
//!
//! Not read: ISATAP (RFC 5214), whose interface id carries the host's
//! address inside its own site (usually a private one shared by many
//! sites); its /64 already identifies the client's site.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The lengths RFC 6052 §2.2 defines for a NAT64 prefix.
const NAT64_LENGTHS: [u8; 6] = [32, 40, 48, 56, 64, 96];

/// Why a configured NAT64 prefix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum PrefixError {
    #[error("`{0}` is not an IPv6 prefix such as `64:ff9b::/96`")]
    NotAPrefix(String),
    #[error("`{text}` is a /{len}; RFC 6052 prefixes are /32, /40, /48, /56, /64 or /96")]
    Length { text: String, len: u8 },
    #[error("`{text}` has bits set past its /{len}")]
    HostBits { text: String, len: u8 },
    #[error("`{text}` sets bits 64..71, which RFC 6052 §2.2 reserves as zero")]
    ReservedOctet { text: String },
    #[error("`{text}` overlaps the {form} range, which is always read as {form}")]
    Overlaps { text: String, form: &'static str },
    #[error("`{text}` is listed twice")]
    Duplicate { text: String },
}

/// The ranges read as a fixed form whatever the configuration says, as
/// (first address, prefix length, name). A NAT64 prefix overlapping one of
/// them would never be read as configured.
const FIXED_FORMS: [(u128, u8, &str); 5] = [
    (0, 96, "IPv4-compatible"),
    (0xffff_0000_0000, 96, "IPv4-mapped"),
    (0xffff_0000_0000_0000, 96, "IPv4-translated"),
    (0x2002 << 112, 16, "6to4"),
    (0x2001_0000 << 96, 32, "Teredo"),
];

/// Whether two prefixes share any address: one contains the other.
fn overlap(a: u128, a_len: u8, b: u128, b_len: u8) -> bool {
    let len = u32::from(a_len.min(b_len));
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    (a ^ b) & mask == 0
}

/// An RFC 6052 prefix: addresses under it embed an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat64Prefix {
    bits: u128,
    len: u8,
}

impl Nat64Prefix {
    /// Reads `addr/len`; the length must be one RFC 6052 allows and no bit
    /// may be set past it.
    pub fn parse(text: &str) -> Result<Self, PrefixError> {
        let net: ipnet::Ipv6Net = text
            .parse()
            .map_err(|_| PrefixError::NotAPrefix(text.to_owned()))?;
        let len = net.prefix_len();
        if !NAT64_LENGTHS.contains(&len) {
            return Err(PrefixError::Length {
                text: text.to_owned(),
                len,
            });
        }
        if net.trunc() != net {
            return Err(PrefixError::HostBits {
                text: text.to_owned(),
                len,
            });
        }
        let bits = u128::from(net.network());
        if let Some((_, _, form)) = FIXED_FORMS
            .iter()
            .find(|(start, form_len, _)| overlap(bits, len, *start, *form_len))
        {
            return Err(PrefixError::Overlaps {
                text: text.to_owned(),
                form,
            });
        }
        if (bits >> 56) & 0xff != 0 {
            return Err(PrefixError::ReservedOctet {
                text: text.to_owned(),
            });
        }
        Ok(Self { bits, len })
    }

    fn mask(self) -> u128 {
        u128::MAX << (128 - u32::from(self.len))
    }

    /// The IPv4 address `ip` embeds under this prefix (RFC 6052 §2.2): the
    /// 32 bits after the prefix, skipping bits 64..71, which must be zero.
    fn embedded(self, ip: Ipv6Addr) -> Option<Ipv4Addr> {
        let value = u128::from(ip);
        if value & self.mask() != self.bits {
            return None;
        }
        let octets = ip.octets();
        // INVARIANT: octet 8 (bits 64..71) is the reserved "u" octet of
        // every format shorter than /96.
        if self.len < 96 && octets.get(8) != Some(&0) {
            return None;
        }
        let start = usize::from(self.len / 8);
        let mut v4 = (start..16)
            .filter(|i| *i != 8 || self.len == 96)
            .map(|i| octets.get(i).copied());
        let mut next = || v4.next().flatten();
        Some(Ipv4Addr::new(next()?, next()?, next()?, next()?))
    }
}

/// How a deployment reads client addresses.
#[derive(Debug, Clone, Default)]
pub struct ClientAddressing {
    /// Longest first, so the most specific configured prefix wins.
    nat64: Vec<Nat64Prefix>,
}

impl ClientAddressing {
    /// From `network.nat64_prefixes`; the first invalid prefix is the
    /// error.
    pub fn new(prefixes: &[String]) -> Result<Self, PrefixError> {
        match Self::lenient(prefixes) {
            (addressing, errors) if errors.is_empty() => Ok(addressing),
            (_, mut errors) => Err(errors.swap_remove(0)),
        }
    }

    /// The valid prefixes of `prefixes`, and what is wrong with the others.
    pub fn lenient(prefixes: &[String]) -> (Self, Vec<PrefixError>) {
        let mut nat64: Vec<Nat64Prefix> = Vec::new();
        let mut errors = Vec::new();
        for text in prefixes {
            match Nat64Prefix::parse(text) {
                Ok(prefix) if nat64.contains(&prefix) => {
                    errors.push(PrefixError::Duplicate { text: text.clone() })
                }
                Ok(prefix) => nat64.push(prefix),
                Err(error) => errors.push(error),
            }
        }
        nat64.sort_by_key(|p| std::cmp::Reverse(p.len));
        (Self { nat64 }, errors)
    }

    /// The address a client is known by: the IPv4 address an IPv6 address
    /// embeds, or the address itself.
    pub fn client(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => self.embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        }
    }

    fn embedded_ipv4(&self, ip: Ipv6Addr) -> Option<Ipv4Addr> {
        let value = u128::from(ip);
        let low32 = Ipv4Addr::from(u32::try_from(value & 0xffff_ffff).unwrap_or(0));
        let top = |bits: u32| value >> (128 - bits);
        if top(96) == 0xffff {
            return Some(low32); // ::ffff:a.b.c.d
        }
        if top(96) == 0 {
            // ::a.b.c.d, but never :: or ::1.
            return (value > 1).then_some(low32);
        }
        if top(96) == 0xffff_0000 {
            return Some(low32); // ::ffff:0:a.b.c.d
        }
        if let Some(v4) = self.nat64.iter().find_map(|p| p.embedded(ip)) {
            return Some(v4);
        }
        if top(16) == 0x2002 {
            let bits = (value >> 80) & 0xffff_ffff;
            return Some(Ipv4Addr::from(u32::try_from(bits).unwrap_or(0)));
        }
        if top(32) == 0x2001_0000 {
            return Some(Ipv4Addr::from(!u32::from(low32)));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ClientAddressing {
        let prefixes = crate::config::DEFAULT_NAT64_PREFIXES.map(str::to_owned);
        ClientAddressing::new(&prefixes).unwrap()
    }

    fn client(a: &ClientAddressing, text: &str) -> String {
        a.client(text.parse().unwrap()).to_string()
    }

    #[test]
    fn every_embedding_form_reads_as_its_ipv4_client() {
        let a = defaults();
        for (v6, v4) in [
            ("::ffff:198.51.100.7", "198.51.100.7"),
            ("::198.51.100.7", "198.51.100.7"),
            ("::ffff:0:198.51.100.7", "198.51.100.7"),
            ("64:ff9b::c633:6401", "198.51.100.1"),
            ("64:ff9b::808:808", "8.8.8.8"),
            ("64:ff9b::192.0.2.33", "192.0.2.33"),
            ("2002:c000:221::1", "192.0.2.33"),
            ("2002:808:808:1:2:3:4:5", "8.8.8.8"),
            // RFC 4380 §4: client 192.0.2.45 behind server 65.54.227.120.
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),
        ] {
            assert_eq!(client(&a, v6), v4, "{v6}");
        }
    }

    #[test]
    fn plain_ipv6_and_ipv4_stay_as_they_are() {
        let a = defaults();
        for ip in [
            // Inside the local-use block, but no prefix of it configured.
            "64:ff9b:1::c000:221",
            "2a02:cf40:1::17",
            "::1",
            "::",
            "fe80::1",
            "64:ff9c::808:808",
            "203.0.113.5",
        ] {
            assert_eq!(
                client(&a, ip),
                ip.parse::<IpAddr>().unwrap().to_string(),
                "{ip}"
            );
        }
    }

    #[test]
    fn every_rfc_6052_length_is_read_as_the_rfc_lays_it_out() {
        // RFC 6052 §2.4: 192.0.2.33 under 2001:db8::/32 .. /96.
        for (prefix, address) in [
            ("2001:db8::/32", "2001:db8:c000:221::"),
            ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
            ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
            ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
            ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
            ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
        ] {
            let a = ClientAddressing::new(&[prefix.to_owned()]).unwrap();
            assert_eq!(client(&a, address), "192.0.2.33", "{prefix}");
        }
        // Bits 64..71 must be zero under a prefix shorter than /96.
        let a = ClientAddressing::new(&["2001:db8:122::/48".to_owned()]).unwrap();
        let nonzero_u = "2001:db8:122:c000:ff02:2100::";
        assert_eq!(client(&a, nonzero_u), nonzero_u);
    }

    #[test]
    fn a_prefix_carved_from_the_local_use_block_is_read_at_its_own_length() {
        let mut prefixes = crate::config::DEFAULT_NAT64_PREFIXES
            .map(str::to_owned)
            .to_vec();
        prefixes.push("64:ff9b:1::/96".to_owned());
        prefixes.push("64:ff9b:1:aaaa::/96".to_owned());
        let a = ClientAddressing::new(&prefixes).unwrap();
        assert_eq!(client(&a, "64:ff9b:1::c000:221"), "192.0.2.33");
        assert_eq!(client(&a, "64:ff9b:1:aaaa::808:808"), "8.8.8.8");
        assert_eq!(client(&a, "64:ff9b::808:808"), "8.8.8.8");
    }

    #[test]
    fn the_longest_configured_prefix_wins() {
        let prefixes = [
            "2001:db8::/32".to_owned(),
            "2001:db8:122:344::/96".to_owned(),
        ];
        let a = ClientAddressing::new(&prefixes).unwrap();
        // Under the /32 this would read as 1.34.3.68.
        assert_eq!(client(&a, "2001:db8:122:344::192.0.2.33"), "192.0.2.33");
        assert_eq!(client(&a, "2001:db8:c000:221::"), "192.0.2.33");
    }

    #[test]
    fn prefixes_of_other_lengths_or_with_host_bits_are_refused() {
        for bad in ["64:ff9b::/95", "64:ff9b::1/96", "10.0.0.0/8", "nonsense"] {
            assert!(Nat64Prefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_that_could_never_be_read_as_configured_are_refused() {
        for (bad, form) in [
            ("2001::/32", "Teredo"),
            ("2002::/32", "6to4"),
            ("2000::/32", ""),
            ("::ffff:0:0/96", "IPv4-mapped"),
            ("::ffff:0:0:0/96", "IPv4-translated"),
            ("::/32", "IPv4-compatible"),
        ] {
            match Nat64Prefix::parse(bad) {
                Err(PrefixError::Overlaps { form: found, .. }) => assert_eq!(found, form, "{bad}"),
                other if form.is_empty() => assert!(other.is_ok(), "{bad}: {other:?}"),
                other => unreachable!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            Nat64Prefix::parse("64:ff9b:0:0:ff00::/96"),
            Err(PrefixError::ReservedOctet { .. })
        ));
        let (_, errors) =
            ClientAddressing::lenient(&["64:ff9b::/96".to_owned(), "64:ff9b::/96".to_owned()]);
        assert!(matches!(errors.as_slice(), [PrefixError::Duplicate { .. }]));
    }
}

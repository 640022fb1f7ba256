//! IP lists from CIDR files (`context.ip.deny_listed`).
//!
//! Parsed once at load into sorted, merged ranges, so a lookup is one binary
//! search whatever the size of the list.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// A parse problem in a list file, located by line.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum IpListError {
    #[error("cannot read IP list `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: `{entry}` is not an IP address or CIDR block")]
    Entry {
        path: PathBuf,
        line: usize,
        entry: String,
    },
}

/// A set of addresses, stored as inclusive ranges per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpList {
    /// Loads and merges every file; any bad line fails the whole list.
    pub fn load(paths: &[PathBuf]) -> Result<Self, IpListError> {
        let mut nets = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| IpListError::Read {
                path: path.clone(),
                source,
            })?;
            nets.extend(parse(&text, path)?);
        }
        Ok(Self::from_nets(nets))
    }

    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is the IPv4 address for list purposes.
        match ip.to_canonical() {
            IpAddr::V4(v4) => in_ranges(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => in_ranges(&self.v6, u128::from(v6)),
        }
    }
}

/// Parses one file: an address or CIDR block per line, `#` starts a comment.
pub fn parse(text: &str, path: &Path) -> Result<Vec<IpNet>, IpListError> {
    let mut nets = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let entry = raw.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| IpListError::Entry {
                path: path.to_owned(),
                line: index + 1,
                entry: entry.to_owned(),
            })?;
        nets.push(net.trunc());
    }
    Ok(nets)
}

fn merge<T: Ord + Copy + num_like::Successor>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.successor() => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], value: T) -> bool {
    // Index of the first range starting after `value`; the one before it is
    // the only candidate.
    let after = ranges.partition_point(|(start, _)| *start <= value);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|(_, end)| value <= *end)
}

mod num_like {
    /// `x + 1`, saturating, so adjacent ranges merge.
    pub trait Successor {
        fn successor(self) -> Self;
    }
    impl Successor for u32 {
        fn successor(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Successor for u128 {
        fn successor(self) -> Self {
            self.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> IpList {
        IpList::from_nets(parse(text, Path::new("t.txt")).unwrap())
    }

    #[test]
    fn cidr_blocks_and_single_addresses_match() {
        let l = list("# bad actors\n203.0.113.0/24\n198.51.100.7 # one host\n2001:db8::/32\n");
        assert!(l.contains("203.0.113.200".parse().unwrap()));
        assert!(l.contains("198.51.100.7".parse().unwrap()));
        assert!(!l.contains("198.51.100.8".parse().unwrap()));
        assert!(l.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!l.contains("2001:db9::1".parse().unwrap()));
        assert!(!l.contains("203.0.114.0".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_the_ipv4_entry() {
        let l = list("203.0.113.0/24\n");
        assert!(l.contains("::ffff:203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let l = list("10.0.0.0/25\n10.0.0.128/25\n10.0.0.5\n10.0.1.0/24\n");
        assert_eq!(l.v4.len(), 1);
        assert!(l.contains("10.0.1.255".parse().unwrap()));
        assert!(!l.contains("10.0.2.0".parse().unwrap()));
    }

    #[test]
    fn bad_line_is_reported_with_its_number() {
        let err = parse("10.0.0.0/8\n\nnot-an-ip\n", Path::new("deny.txt")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "deny.txt:3: `not-an-ip` is not an IP address or CIDR block"
        );
    }

    #[test]
    fn empty_list_contains_nothing() {
        assert!(!IpList::default().contains("127.0.0.1".parse().unwrap()));
    }
}

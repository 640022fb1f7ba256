//! What the decision log may say about a person: addresses truncated to
//! their network, caller-chosen keys hidden from field paths. Pseudonyms
//! come from [`crate::pseudonym`].

use std::net::IpAddr;

/// Truncates an address to the network it came from.
pub fn truncate_ip(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let (a, b, c) = (
                s.first().copied().unwrap_or(0),
                s.get(1).copied().unwrap_or(0),
                s.get(2).copied().unwrap_or(0),
            );
            format!("{a:x}:{b:x}:{c:x}::/48")
        }
    }
}

/// A field path fit for the log: below a member whose keys the caller
/// chooses (`attributes`, an AuthZEN `context` or `properties`), the key
/// is written `*`, whatever it looks like (a key can be an e-mail address
/// or a number someone typed), and nothing below it is kept.
pub fn loggable_field(field: &str) -> String {
    const CALLER_KEYED: [&str; 3] = ["attributes", "context", "properties"];
    // A parenthesised note (`attributes (resource.properties, ...)`) is not
    // part of the path.
    let field = match field.find(" (").and_then(|open| {
        let close = open + field.get(open..)?.find(')')?;
        Some(format!("{}{}", field.get(..open)?, field.get(close + 1..)?))
    }) {
        Some(cut) => cut,
        None => field.to_owned(),
    };
    let mut out: Vec<&str> = Vec::new();
    let mut segments = field.split('.');
    while let Some(segment) = segments.next() {
        out.push(segment);
        let name = segment.split('[').next().unwrap_or_default();
        if CALLER_KEYED.contains(&name) {
            if segments.next().is_some() {
                out.push("*");
            }
            break;
        }
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_chosen_keys_stay_out_of_the_log() {
        assert_eq!(loggable_field("subject.user_id"), "subject.user_id");
        assert_eq!(loggable_field("attributes.amount"), "attributes.*");
        assert_eq!(
            loggable_field("attributes.grpcuser_ssn_987654321"),
            "attributes.*",
            "a key that looks like a schema name can still be personal"
        );
        assert_eq!(loggable_field("attributes.amount[3].x"), "attributes.*");
        assert_eq!(loggable_field("attributes"), "attributes");
        assert_eq!(
            loggable_field("context.alice@example.com"),
            "context.*",
            "a dotted key is cut at its first dot and still hidden"
        );
        assert_eq!(
            loggable_field("resource.properties.Alice Smith"),
            "resource.properties.*"
        );
        assert_eq!(
            loggable_field("subject.properties.ip"),
            "subject.properties.*"
        );
        assert_eq!(
            loggable_field("attributes (resource.properties, action.properties, context).Bob"),
            "attributes.*"
        );
    }

    #[test]
    fn addresses_are_truncated_to_their_network() {
        assert_eq!(
            truncate_ip("203.0.113.77".parse().unwrap()),
            "203.0.113.0/24"
        );
        assert_eq!(
            truncate_ip("2001:db8:abcd:12::1".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
        assert_eq!(
            truncate_ip("::ffff:198.51.100.9".parse().unwrap()),
            "198.51.100.0/24"
        );
    }
}

//! Keyed hashing of identifiers, so that neither the store nor the logs hold
//! raw user or device ids.
//!
//! One secret key per deployment; BLAKE3 in keyed mode with a distinct
//! domain prefix per kind of identifier, so a user id and a device id that
//! happen to be equal never share a hash.

use std::fmt;
use std::path::Path;

/// A stored identifier: the first 16 bytes of a keyed BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HashedId([u8; 16]);

impl HashedId {
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A hash read back from a shared store.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Short hex form for logs (8 bytes): enough to correlate, not to reverse.
    pub fn short(&self) -> String {
        let digit = |d: u8| char::from_digit(u32::from(d), 16).unwrap_or('0');
        let mut out = String::with_capacity(16);
        for b in self.0.iter().take(8) {
            out.push(digit(b >> 4));
            out.push(digit(b & 0x0f));
        }
        out
    }
}

impl fmt::Debug for HashedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashedId({})", self.short())
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum KeyError {
    #[error("cannot read hash key file `{path}`")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hash key file `{path}` must hold exactly 64 hex characters (32 bytes)")]
    Format { path: std::path::PathBuf },
    #[error("cannot draw a random hash key from the operating system: {0}")]
    Random(String),
}

#[derive(Clone)]
pub struct Pseudonymizer {
    key: [u8; 32],
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer { key: <redacted> }")
    }
}

impl Pseudonymizer {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A fresh random key from the operating system.
    pub fn random() -> Result<Self, KeyError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { key })
    }

    /// Reads a key file of 64 hex characters (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let format_error = || KeyError::Format {
            path: path.to_owned(),
        };
        let hex = text.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(format_error());
        }
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| format_error())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| format_error())?;
        }
        Ok(Self { key })
    }

    fn hash(&self, domain: &[u8], parts: &[&str]) -> HashedId {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(domain);
        for part in parts {
            // Length-prefix each part so ("ab", "c") and ("a", "bc") differ.
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let mut out = [0u8; 16];
        hasher.finalize_xof().fill(&mut out);
        HashedId(out)
    }

    /// The store key of a user, scoped by tenant.
    pub fn user(&self, tenant: &str, user_id: &str) -> HashedId {
        self.hash(b"stepgate.user\0", &[tenant, user_id])
    }

    /// The account id in every tenant: what an erasure across tenants
    /// finds a user's context by.
    pub fn person(&self, user_id: &str) -> HashedId {
        self.hash(b"stepgate.person\0", &[user_id])
    }

    /// Both store keys of a user ([`crate::store::UserKey`]).
    pub fn user_key(&self, tenant: &str, user_id: &str) -> crate::store::UserKey {
        crate::store::UserKey {
            id: self.user(tenant, user_id),
            person: self.person(user_id),
        }
    }

    /// The store key of a client address (already reduced by
    /// [`crate::store::ip_key`]), so a shared store never holds an address
    /// in clear.
    pub fn address(&self, ip: std::net::IpAddr) -> HashedId {
        let text = ip.to_string();
        self.hash(b"stepgate.address\0", &[&text])
    }

    /// The stored form of a device id.
    pub fn device(&self, device_id: &str) -> HashedId {
        self.hash(b"stepgate.device\0", &[device_id])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_key_gives_same_hash_and_domains_differ() {
        let p = Pseudonymizer::new([7; 32]);
        assert_eq!(p.user("t", "alice"), p.user("t", "alice"));
        assert_ne!(p.user("t", "alice"), p.user("u", "alice"));
        assert_ne!(p.user("", "x"), p.device("x"));
        assert_ne!(p.user("ab", "c"), p.user("a", "bc"));
        assert_ne!(Pseudonymizer::new([8; 32]).device("d"), p.device("d"));
    }

    #[test]
    fn key_file_must_be_64_hex_characters() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(Pseudonymizer::from_file(&good).is_ok());
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "zz".repeat(32)).unwrap();
        assert!(matches!(
            Pseudonymizer::from_file(&bad),
            Err(KeyError::Format { .. })
        ));
    }
}

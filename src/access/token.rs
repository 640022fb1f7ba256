//! Caller bearer tokens, kept only as hashes.
//!
//! A presented token is hashed (BLAKE3, over every byte it has) and the
//! hash compared with every caller's in constant time (`blake3::Hash`'s
//! `==`), without stopping at a match: how long a lookup takes says
//! nothing about which token, or how much of one, was right.

/// The hashes of the configured tokens, each with its caller's index.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: Vec<(blake3::Hash, usize)>,
}

/// What one lookup found and how: `compared` is how many stored hashes it
/// compared against, which is all of them, whatever the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLookup {
    pub caller: Option<usize>,
    pub compared: usize,
}

impl TokenTable {
    /// Adds `token` (the secret itself, dropped after hashing) for caller
    /// `index`. Returns false if another caller already has it.
    pub fn insert(&mut self, token: TokenSecret, index: usize) -> bool {
        let hash = blake3::hash(token.bytes());
        if self.lookup(token.bytes()).caller.is_some() {
            return false;
        }
        self.entries.push((hash, index));
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller `presented` belongs to, if any.
    pub fn lookup(&self, presented: &[u8]) -> TokenLookup {
        let hash = blake3::hash(presented);
        let mut caller = None;
        let mut compared = 0;
        for (stored, index) in &self.entries {
            compared += 1;
            // Constant time; and no early exit.
            let equal = *stored == hash;
            caller = if equal { Some(*index) } else { caller };
        }
        TokenLookup { caller, compared }
    }
}

/// A token's bytes, read from its file; never printed.
pub struct TokenSecret(Vec<u8>);

impl TokenSecret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TokenTable {
        let mut table = TokenTable::default();
        for (i, token) in ["a".repeat(40), "b".repeat(40), "c".repeat(40)]
            .into_iter()
            .enumerate()
        {
            assert!(table.insert(TokenSecret::new(token.into_bytes()), i));
        }
        table
    }

    #[test]
    fn right_and_wrong_tokens_of_equal_length_take_the_same_path() {
        let table = table();
        let right = table.lookup("b".repeat(40).as_bytes());
        // Same length, differing only in the last byte: a comparison that
        // stopped at the first differing byte would be quickest here.
        let mut near = "b".repeat(39);
        near.push('c');
        let wrong = table.lookup(near.as_bytes());
        let far = table.lookup("z".repeat(40).as_bytes());
        assert_eq!(right.caller, Some(1));
        assert_eq!(wrong.caller, None);
        assert_eq!(far.caller, None);
        // Every stored hash is compared for each, found or not.
        assert_eq!(right.compared, 3);
        assert_eq!(wrong.compared, 3);
        assert_eq!(far.compared, 3);
    }

    #[test]
    fn a_prefix_or_an_extension_of_a_token_is_not_the_token() {
        let table = table();
        assert_eq!(table.lookup("a".repeat(39).as_bytes()).caller, None);
        assert_eq!(table.lookup("a".repeat(41).as_bytes()).caller, None);
        assert_eq!(table.lookup(b"").caller, None);
        assert_eq!(table.lookup("a".repeat(40).as_bytes()).caller, Some(0));
    }

    #[test]
    fn one_token_cannot_name_two_callers() {
        let mut table = table();
        assert!(!table.insert(TokenSecret::new("c".repeat(40).into_bytes()), 7));
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_secret_never_prints() {
        let secret = TokenSecret::new(b"do-not-print-me".to_vec());
        assert!(!format!("{secret:?}").contains("print"));
    }
}

//! One account, one key: the rules every identifier a caller sends must
//! meet, and the deployment's choice of how user ids are normalised before
//! they are hashed and shown to policies.
//!
//! Whether `Alice` and `alice` are one account is the identity provider's
//! call, never stepgate's: the default compares ids byte for byte, and the
//! folding modes exist for deployments whose IdP folds too.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::is_nfc_quick;

use crate::config::UserIdNormalization;
use crate::decision::FieldError;

/// Whether `c` has no business in an identifier, because it renders as
/// nothing, as something other than itself, or not at all, and so would
/// let one account hide behind invisible variants:
///
/// - controls (general category Cc: NUL, line feeds, escapes) and format
///   characters (Cf: zero-width joiners, bidirectional controls, the
///   byte-order mark, interlinear annotations);
/// - line and paragraph separators (Zl, Zp) and every space but U+0020
///   (Zs: no-break, hair, ideographic spaces);
/// - private-use (Co) and unassigned code points (Cn, which includes the
///   noncharacters such as U+FFFE);
/// - the remaining default-ignorable code points (variation selectors,
///   Hangul fillers, tag characters).
///
/// PRECIS (RFC 8264 §9) keeps the same classes out of identifiers.
fn unprintable(c: char) -> bool {
    use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory as Gc};
    use icu_properties::{CodePointMapData, CodePointSetData};
    let category = CodePointMapData::<Gc>::new().get(c);
    matches!(
        category,
        Gc::Control
            | Gc::Format
            | Gc::LineSeparator
            | Gc::ParagraphSeparator
            | Gc::PrivateUse
            | Gc::Surrogate
            | Gc::Unassigned
    ) || (category == Gc::SpaceSeparator && c != ' ')
        || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// Refuses an identifier that is blank once surrounding white space is
/// trimmed, or that holds an unprintable character (see [`unprintable`]).
pub fn check(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(
            field,
            "is empty once white space is trimmed",
        ));
    }
    if let Some((at, c)) = value.chars().enumerate().find(|(_, c)| unprintable(*c)) {
        return Err(FieldError::new(
            field,
            format!(
                "holds U+{:04X} at character {at}, a control or invisible character; identifiers must be printable",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// Unicode NFC, without copying text that is already in it.
fn nfc(text: &str) -> Cow<'_, str> {
    if is_nfc_quick(text.chars()) == unicode_normalization::IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

/// A user id as the deployment compares it.
///
/// - `None`: unchanged.
/// - `NfcTrim`: Unicode NFC (UAX #15), then surrounding white space removed.
/// - `NfcTrimCasefold`: as `NfcTrim`, then Unicode full case folding and NFC
///   again (folding can leave text outside NFC): case mapping before
///   normalisation, as RFC 8265 §3.3.2 orders them for case-mapped
///   usernames (its width mapping is not applied).
pub fn normalise(mode: UserIdNormalization, id: &str) -> Cow<'_, str> {
    match mode {
        UserIdNormalization::None => Cow::Borrowed(id),
        UserIdNormalization::NfcTrim => trimmed(nfc(id)),
        UserIdNormalization::NfcTrimCasefold => {
            let base = trimmed(nfc(id));
            let folded = icu_casemap::CaseMapper::new().fold_string(&base);
            match folded {
                Cow::Borrowed(_) => base,
                Cow::Owned(text) => Cow::Owned(nfc(&text).into_owned()),
            }
        }
    }
}

fn trimmed(text: Cow<'_, str>) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(t) => Cow::Borrowed(t.trim()),
        Cow::Owned(t) if t.trim().len() == t.len() => Cow::Owned(t),
        Cow::Owned(t) => Cow::Owned(t.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UserIdNormalization::{NfcTrim, NfcTrimCasefold, None};

    const ZOE_NFC: &str = "zo\u{eb}";
    const ZOE_NFD: &str = "zoe\u{308}";

    #[test]
    fn by_default_every_spelling_is_its_own_account() {
        for id in ["Alice", "alice", "alice ", ZOE_NFC, ZOE_NFD] {
            assert_eq!(normalise(None, id), id);
        }
    }

    #[test]
    fn nfc_trim_joins_composed_and_decomposed_forms_and_trailing_space() {
        assert_eq!(normalise(NfcTrim, ZOE_NFD), ZOE_NFC);
        assert_eq!(normalise(NfcTrim, ZOE_NFC), ZOE_NFC);
        assert_eq!(normalise(NfcTrim, " alice\t"), "alice");
        assert_eq!(normalise(NfcTrim, "Alice"), "Alice", "case is kept");
    }

    #[test]
    fn casefold_joins_cases_beyond_ascii() {
        for id in ["Alice", "ALICE", "alice ", "aLiCe"] {
            assert_eq!(normalise(NfcTrimCasefold, id), "alice", "{id}");
        }
        assert_eq!(normalise(NfcTrimCasefold, "ZOE\u{308}"), ZOE_NFC);
        // Full folding: the sharp s folds to "ss", which lowercasing does not.
        assert_eq!(
            normalise(NfcTrimCasefold, "STRASSE"),
            normalise(NfcTrimCasefold, "stra\u{df}e")
        );
        assert_eq!(
            normalise(NfcTrimCasefold, "\u{391}\u{3b8}\u{3b7}\u{3bd}\u{3ac}"),
            "\u{3b1}\u{3b8}\u{3b7}\u{3bd}\u{3ac}"
        );
    }

    #[test]
    fn blank_and_control_characters_are_refused() {
        for bad in [
            "ali\u{200a}ce",
            "al\u{fffe}ice",
            "alice\u{fff9}",
            "\u{13430}",
            "bob\u{e000}",
            "no\u{a0}break",
            "alice\u{2028}",
            "ali\u{200b}ce",
            "\u{feff}alice",
            "ad\u{202e}nimda",
            "ali\u{ad}ce",
            "zo\u{200d}e",
            " ",
            "\t\n",
            "al\u{0}ice",
            "alice\n",
            "a\u{1b}[31m",
            "bob\u{7f}",
        ] {
            let err = check("subject.user_id", bad).unwrap_err();
            assert_eq!(err.field, "subject.user_id", "{bad:?}");
        }
        for good in ["alice", "zo\u{eb}", "user@example.com", "a b"] {
            assert!(check("subject.user_id", good).is_ok(), "{good:?}");
        }
    }
}

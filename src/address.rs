//! G2P Connect financial addresses, parsed once.
//!
//! A financial address names where a payee is paid, in the form
//! `scheme:id@provider`: `mobile:256772123456@mtn.ug`,
//! `account:12345@national-bank`, `token:12345@gtbank`,
//! `account:12345@abcd0000001.ifsc.pymt-rail`. The scheme ends at the first
//! ':' and the provider starts after the last '@', so the id may itself hold
//! '@' or ':' (`email:jane@example.org@mail-bank`).
//!
//! Text is parsed into a [`FinancialAddress`] once, at the edge; the rest of
//! the crate works with its parts. The scheme and provider are stored
//! lower-cased, the id exactly as given, and `raw` keeps the input unchanged.
//! This module does no I/O and depends on nothing else in the crate.

use std::fmt;
use std::str::FromStr;

/// What every error message tells the caller to send.
const EXPECTED: &str = "expected scheme:id@provider, e.g. mobile:256772123456@mtn";

/// Longest whole address, in characters.
pub const MAX_ADDRESS_CHARS: usize = 256;

/// Longest id, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// A parsed, validated financial address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct FinancialAddress {
    /// Lower-cased scheme, e.g. "mobile", "account", "token".
    pub scheme: String,
    /// The id within the provider, exactly as given.
    pub id: String,
    /// Lower-cased provider, e.g. "mtn.ug".
    pub provider: String,
    /// The address exactly as it was sent.
    pub raw: String,
}

impl FinancialAddress {
    /// Parse `scheme:id@provider`. The text is taken as it is: surrounding
    /// whitespace is an error, not trimmed away.
    pub fn parse(text: &str) -> Result<FinancialAddress, AddressError> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        let chars = text.chars().count();
        if chars > MAX_ADDRESS_CHARS {
            return Err(AddressError::TooLong { chars });
        }
        if text.trim() != text {
            return Err(AddressError::SurroundingWhitespace);
        }
        let Some((scheme, rest)) = text.split_once(':') else {
            return Err(AddressError::MissingScheme);
        };
        if scheme.is_empty() {
            return Err(AddressError::MissingScheme);
        }
        if !valid_scheme(scheme) {
            return Err(AddressError::InvalidScheme(scheme.to_string()));
        }
        let Some((id, provider)) = rest.rsplit_once('@') else {
            return Err(AddressError::MissingProvider);
        };
        if id.is_empty() {
            return Err(AddressError::EmptyId);
        }
        let id_chars = id.chars().count();
        if id_chars > MAX_ID_CHARS {
            return Err(AddressError::IdTooLong { chars: id_chars });
        }
        if let Some(bad) = id.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(AddressError::InvalidId(bad));
        }
        if provider.is_empty() {
            return Err(AddressError::EmptyProvider);
        }
        if !valid_provider(provider) {
            return Err(AddressError::InvalidProvider(provider.to_string()));
        }
        Ok(FinancialAddress {
            scheme: scheme.to_ascii_lowercase(),
            id: id.to_string(),
            provider: provider.to_ascii_lowercase(),
            raw: text.to_string(),
        })
    }
}

/// An ASCII letter, then ASCII letters, digits, '-', '_' or '.'.
fn valid_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// ASCII letters, digits, '.', '-' or '_', as dot-separated non-empty labels
/// (so no leading, trailing or doubled '.').
fn valid_provider(provider: &str) -> bool {
    provider.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    })
}

impl FromStr for FinancialAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FinancialAddress::parse(text)
    }
}

impl fmt::Display for FinancialAddress {
    /// The address as it was sent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Why a financial address was refused. Every message says what was
/// expected; [`AddressError::reason_code`] is always "payee_fa.invalid".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("financial address is empty: {EXPECTED}")]
    Empty,
    #[error("financial address is {chars} characters long, at most 256 allowed: {EXPECTED}")]
    TooLong { chars: usize },
    #[error("financial address has leading or trailing whitespace: {EXPECTED}")]
    SurroundingWhitespace,
    #[error("financial address has no scheme before ':': {EXPECTED}")]
    MissingScheme,
    #[error(
        "financial address scheme {0:?} is invalid: a letter then letters, digits, '-', '_' or '.'; {EXPECTED}"
    )]
    InvalidScheme(String),
    #[error("financial address has no '@' before the provider: {EXPECTED}")]
    MissingProvider,
    #[error("financial address has an empty id: {EXPECTED}")]
    EmptyId,
    #[error("financial address id is {chars} characters long, at most 128 allowed: {EXPECTED}")]
    IdTooLong { chars: usize },
    #[error(
        "financial address id contains {0:?}, no whitespace or control characters allowed: {EXPECTED}"
    )]
    InvalidId(char),
    #[error("financial address has an empty provider after '@': {EXPECTED}")]
    EmptyProvider,
    #[error(
        "financial address provider {0:?} is invalid: letters, digits, '-', '_' and '.' between labels; {EXPECTED}"
    )]
    InvalidProvider(String),
}

impl AddressError {
    /// Stable machine-readable reason, for API error bodies.
    pub fn reason_code(&self) -> &'static str {
        "payee_fa.invalid"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> FinancialAddress {
        FinancialAddress::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> AddressError {
        match FinancialAddress::parse(text) {
            Ok(fa) => panic!("{text:?} accepted as {fa:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn good_forms() {
        for (text, scheme, id, provider) in [
            (
                "mobile:256772123456@mtn.ug",
                "mobile",
                "256772123456",
                "mtn.ug",
            ),
            ("mobile:256772123456@mtn", "mobile", "256772123456", "mtn"),
            (
                "account:12345@national-bank",
                "account",
                "12345",
                "national-bank",
            ),
            ("token:12345@gtbank", "token", "12345", "gtbank"),
            (
                "account:12345@abcd0000001.ifsc.pymt-rail",
                "account",
                "12345",
                "abcd0000001.ifsc.pymt-rail",
            ),
            (
                "email:jane@example.org@mail-bank",
                "email",
                "jane@example.org",
                "mail-bank",
            ),
            ("vpa:a:b:c@upi", "vpa", "a:b:c", "upi"),
            ("x:1@p", "x", "1", "p"),
            (
                "national-id.v2:AB_12-34@id_provider",
                "national-id.v2",
                "AB_12-34",
                "id_provider",
            ),
            ("s_1:ü€@p", "s_1", "ü€", "p"),
        ] {
            let fa = ok(text);
            assert_eq!(fa.scheme, scheme, "{text}");
            assert_eq!(fa.id, id, "{text}");
            assert_eq!(fa.provider, provider, "{text}");
            assert_eq!(fa.raw, text);
            assert_eq!(fa.to_string(), text);
            assert_eq!(text.parse::<FinancialAddress>().unwrap(), fa);
        }
    }

    #[test]
    fn uppercase_scheme_and_provider_normalised() {
        let fa = ok("MOBILE:AbC123@MTN.UG");
        assert_eq!(fa.scheme, "mobile");
        assert_eq!(fa.id, "AbC123", "the id keeps its case");
        assert_eq!(fa.provider, "mtn.ug");
        assert_eq!(fa.raw, "MOBILE:AbC123@MTN.UG");
        assert_eq!(fa.to_string(), "MOBILE:AbC123@MTN.UG");
        assert_eq!(ok("Account:1@Bank"), ok("Account:1@Bank"));
    }

    #[test]
    fn empty_rejected() {
        assert_eq!(err(""), AddressError::Empty);
    }

    #[test]
    fn no_scheme_rejected() {
        assert_eq!(err("256772123456@mtn"), AddressError::MissingScheme);
        assert_eq!(err(":256772123456@mtn"), AddressError::MissingScheme);
        assert_eq!(err("mobile256772123456@mtn"), AddressError::MissingScheme);
    }

    #[test]
    fn bad_scheme_rejected() {
        for (text, scheme) in [
            ("1mobile:123@mtn", "1mobile"),
            ("-mobile:123@mtn", "-mobile"),
            ("mo bile:123@mtn", "mo bile"),
            ("mob!le:123@mtn", "mob!le"),
            ("möbile:123@mtn", "möbile"),
            ("mobile@x:123@mtn", "mobile@x"),
        ] {
            assert_eq!(err(text), AddressError::InvalidScheme(scheme.to_string()));
        }
    }

    #[test]
    fn no_at_rejected() {
        assert_eq!(err("mobile:256772123456"), AddressError::MissingProvider);
        assert_eq!(err("mobile:"), AddressError::MissingProvider);
    }

    #[test]
    fn empty_id_rejected() {
        assert_eq!(err("mobile:@mtn"), AddressError::EmptyId);
        assert_eq!(err("mobile:@"), AddressError::EmptyId);
    }

    #[test]
    fn empty_provider_rejected() {
        assert_eq!(err("mobile:256772123456@"), AddressError::EmptyProvider);
        assert_eq!(err("email:jane@example.org@"), AddressError::EmptyProvider);
    }

    #[test]
    fn spaces_rejected() {
        assert_eq!(err(" mobile:123@mtn"), AddressError::SurroundingWhitespace);
        assert_eq!(err("mobile:123@mtn "), AddressError::SurroundingWhitespace);
        assert_eq!(err("mobile:123@mtn\n"), AddressError::SurroundingWhitespace);
        assert_eq!(err("\tmobile:123@mtn"), AddressError::SurroundingWhitespace);
        assert_eq!(err("   "), AddressError::SurroundingWhitespace);
        assert_eq!(err("mobile:256 772@mtn"), AddressError::InvalidId(' '));
        assert_eq!(
            err("mobile:256\u{a0}772@mtn"),
            AddressError::InvalidId('\u{a0}')
        );
        assert_eq!(
            err("mobile:123@mt n"),
            AddressError::InvalidProvider("mt n".to_string())
        );
        assert_eq!(
            err("mobile :123@mtn"),
            AddressError::InvalidScheme("mobile ".to_string())
        );
    }

    #[test]
    fn control_chars_in_id_rejected() {
        assert_eq!(err("mobile:12\u{0}3@mtn"), AddressError::InvalidId('\u{0}'));
        assert_eq!(
            err("mobile:12\u{7f}3@mtn"),
            AddressError::InvalidId('\u{7f}')
        );
        assert_eq!(err("mobile:12\t3@mtn"), AddressError::InvalidId('\t'));
    }

    #[test]
    fn bad_provider_rejected() {
        for provider in [
            ".mtn", "mtn.", "mtn..ug", ".", "mtn/ug", "mtn:ug", "mtñ", "mtn!", "mtn ug", "m+n",
        ] {
            let text = format!("mobile:123@{provider}");
            assert_eq!(
                err(&text),
                AddressError::InvalidProvider(provider.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn too_long_rejected() {
        let id = "1".repeat(MAX_ID_CHARS);
        assert_eq!(ok(&format!("mobile:{id}@mtn")).id, id);
        let id = "1".repeat(MAX_ID_CHARS + 1);
        assert_eq!(
            err(&format!("mobile:{id}@mtn")),
            AddressError::IdTooLong { chars: 129 }
        );
        // Id length is counted in characters, not bytes.
        let id = "é".repeat(MAX_ID_CHARS);
        assert_eq!(ok(&format!("mobile:{id}@mtn")).id, id);

        let provider = "p".repeat(MAX_ADDRESS_CHARS - "m:1@".len());
        assert_eq!(ok(&format!("m:1@{provider}")).provider, provider);
        let provider = "p".repeat(MAX_ADDRESS_CHARS - "m:1@".len() + 1);
        assert_eq!(
            err(&format!("m:1@{provider}")),
            AddressError::TooLong { chars: 257 }
        );
        let huge = format!("mobile:1@{}", "p".repeat(1_000_000));
        assert!(matches!(err(&huge), AddressError::TooLong { .. }));
    }

    #[test]
    fn messages_say_what_was_expected() {
        let errors = [
            err(""),
            err(" a:1@b"),
            err("a1@b"),
            err("1:1@b"),
            err("a:1"),
            err("a:@b"),
            err("a:1@"),
            err("a:1 2@b"),
            err("a:1@.b"),
            err(&format!("a:{}@b", "1".repeat(200))),
            err(&"a".repeat(300)),
        ];
        for e in errors {
            let message = e.to_string();
            assert!(
                message.contains("expected scheme:id@provider, e.g. mobile:256772123456@mtn"),
                "{message}"
            );
            assert_eq!(e.reason_code(), "payee_fa.invalid");
        }
        assert_eq!(
            err("a:1").to_string(),
            "financial address has no '@' before the provider: \
             expected scheme:id@provider, e.g. mobile:256772123456@mtn"
        );
    }

    #[test]
    fn is_serializable() {
        fn assert_serialize<T: serde::Serialize>(_: &T) {}
        assert_serialize(&ok("mobile:1@mtn"));
    }
}

//! Amounts and currencies.
//!
//! This module owns the exact representation of money in PIL: [`Currency`]
//! (an ISO 4217 code together with its number of minor units) and [`Money`]
//! (an amount held as an `i64` count of minor units of one currency), the
//! validation of amounts sent by callers ([`Money::parse`],
//! [`Money::from_decimal`]) and a few exact formatting helpers.
//!
//! What it must not do: no floating point anywhere (every amount is a
//! [`Decimal`] or an integer count of minor units, and nothing is ever
//! rounded), and no I/O (no database, no network, no logging). It depends on
//! nothing else in the crate.

use std::fmt;

use rust_decimal::Decimal;

/// The largest number of decimals a [`Decimal`] can hold, and so the largest
/// scale accepted by [`format_fixed`] and [`from_minor_units`].
pub const MAX_SCALE: u32 = 28;

/// Longest piece of caller input echoed back in an error message.
const ECHO_LIMIT: usize = 40;

/// An ISO 4217 currency that can be paid in, with its number of minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

impl Currency {
    /// ISO 4217 "XXX", no currency: only for a payment stored already rejected because its
    /// currency was invalid (an API answering per item must still keep that item). Never
    /// accepted as input, never paid.
    pub const NONE: Currency = Currency {
        code: "XXX",
        minor_units: 0,
    };

    /// A code read back from the store: an active code, or [`Currency::NONE`].
    pub fn from_stored(code: &str) -> Result<Currency, MoneyError> {
        if code == Currency::NONE.code {
            return Ok(Currency::NONE);
        }
        Currency::from_code(code)
    }

    /// Look up an active ISO 4217 code. The code must be exactly three
    /// upper-case ASCII letters ("USD", not "usd" or " USD").
    pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
        let well_formed = code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase());
        if well_formed && let Ok(index) = CURRENCIES.binary_search_by(|(c, _)| (*c).cmp(code)) {
            let (code, minor_units) = CURRENCIES[index];
            return Ok(Currency { code, minor_units });
        }
        Err(MoneyError::UnknownCurrency(echo(code)))
    }

    /// The three-letter ISO 4217 code, e.g. "USD".
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Number of decimals of the currency: 2 for USD, 0 for UGX, 3 for BHD.
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// Active ISO 4217 codes (list one) and their minor units, sorted by code.
///
/// Funds, precious metals, SDR and test codes without minor units (XAU, XAG,
/// XPT, XPD, XDR, XBA..XBD, XSU, XUA, XTS, XXX) are not payable and are left
/// out; so are withdrawn codes (HRK, SLL, ZWL, ANG, BGN, CUC, ...).
static CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// Exact amount in minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// Validate a decimal amount: more decimals than the currency allows →
    /// TooManyDecimals (but trailing zeros are fine: "100.10" USD ok,
    /// "100.100" USD ok, "100.105" not; "5.0" UGX ok, "5.5" UGX not); zero or
    /// negative → NotPositive; not representable in i64 minor units →
    /// Overflow; above `max` (if Some, compared exactly) → AboveMaximum.
    ///
    /// The checks run in that order of precedence: NotPositive,
    /// TooManyDecimals, Overflow, AboveMaximum.
    pub fn from_decimal(
        amount: Decimal,
        currency: Currency,
        max: Option<Decimal>,
    ) -> Result<Money, MoneyError> {
        if amount <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        let minor = scaled(amount, currency.minor_units).map_err(|failure| match failure {
            ScaleFailure::Decimals => MoneyError::TooManyDecimals {
                amount: amount.to_string(),
                currency: currency.code,
                allowed: currency.minor_units,
            },
            ScaleFailure::Overflow => MoneyError::Overflow(amount.to_string()),
        })?;
        if let Some(max) = max
            && amount > max
        {
            return Err(MoneyError::AboveMaximum {
                amount: amount.to_string(),
                max: max.to_string(),
            });
        }
        Ok(Money { minor, currency })
    }

    /// Parse the exact text of an amount as sent in JSON (string or number
    /// text): digits with an optional single '.' and digits; optional leading
    /// '-' (then NotPositive). Reject empty, whitespace, '+', exponents
    /// ("1e3"), hex, "NaN", thousands separators, ".5", "5." → InvalidAmount.
    /// More than 28 significant digits → Overflow (not InvalidAmount, not a
    /// panic). Then from_decimal.
    ///
    /// Leading zeros of the integer part and trailing zeros of the fraction
    /// are not significant: "0100.500" is 100.5.
    pub fn parse(
        text: &str,
        currency: Currency,
        max: Option<Decimal>,
    ) -> Result<Money, MoneyError> {
        let (negative, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int, frac) = match body.split_once('.') {
            Some((int, frac)) => (int, frac),
            None => (body, ""),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int) || (body.contains('.') && !all_digits(frac)) {
            return Err(MoneyError::InvalidAmount(echo(text)));
        }
        if negative {
            return Err(MoneyError::NotPositive);
        }
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        if int.is_empty() && frac.is_empty() {
            return Err(MoneyError::NotPositive);
        }
        if frac.len() > currency.minor_units as usize {
            return Err(MoneyError::TooManyDecimals {
                amount: echo(text),
                currency: currency.code,
                allowed: currency.minor_units,
            });
        }
        let significant = if int.is_empty() {
            frac.trim_start_matches('0').len()
        } else {
            int.len() + frac.len()
        };
        if significant > MAX_SCALE as usize {
            return Err(MoneyError::Overflow(echo(text)));
        }
        // At most 28 significant digits and at most 4 decimals: fits in an
        // i128 and in a Decimal's 96-bit mantissa.
        let digits = format!("{int}{frac}");
        let overflow = || MoneyError::Overflow(echo(text));
        let mantissa: i128 = digits.parse().map_err(|_| overflow())?;
        let scale = u32::try_from(frac.len()).map_err(|_| overflow())?;
        let amount = Decimal::try_from_i128_with_scale(mantissa, scale).map_err(|_| overflow())?;
        Money::from_decimal(amount, currency, max)
    }

    /// An amount as stored in the database: no validation (it was validated
    /// when it came in).
    pub fn from_minor(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// Amount in minor units: 10050 for 100.50 USD.
    pub fn minor(&self) -> i64 {
        self.minor
    }

    /// Currency of the amount.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Decimal with exactly the currency's scale: 10050 minor USD → 100.50
    pub fn to_decimal(&self) -> Decimal {
        from_minor_units(self.minor, self.currency.minor_units)
    }
}

impl fmt::Display for Money {
    /// "100.50 USD"
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal(), self.currency.code)
    }
}

/// Why an amount was refused. Each error has a stable [`reason_code`].
///
/// [`reason_code`]: MoneyError::reason_code
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency '{0}': expected an ISO 4217 code such as USD or KES")]
    UnknownCurrency(String),
    #[error("invalid amount '{0}': expected a decimal number such as 100.50")]
    InvalidAmount(String),
    #[error("amount {amount} has more decimals than {currency} allows ({allowed})")]
    TooManyDecimals {
        amount: String,
        currency: &'static str,
        allowed: u32,
    },
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount {0} is too large")]
    Overflow(String),
    #[error("amount {amount} is above the maximum {max}")]
    AboveMaximum { amount: String, max: String },
    /// From the currency-less helpers ([`format_fixed`], [`to_minor_units`]):
    /// the amount has more non-zero decimals than the requested scale.
    #[error("amount {amount} has more than {scale} decimals and is never rounded")]
    ScaleExceeded { amount: String, scale: u32 },
    /// From [`format_fixed`]: the requested scale is above [`MAX_SCALE`].
    #[error("scale {0} is not supported: at most 28 decimals")]
    UnsupportedScale(u32),
}

impl MoneyError {
    /// Stable machine-readable reason, for API error bodies.
    pub fn reason_code(&self) -> &'static str {
        match self {
            MoneyError::UnknownCurrency(_) => "currency_code.invalid",
            MoneyError::InvalidAmount(_) => "amount.invalid",
            MoneyError::TooManyDecimals { .. }
            | MoneyError::ScaleExceeded { .. }
            | MoneyError::UnsupportedScale(_) => "amount.scale",
            MoneyError::NotPositive => "amount.not_positive",
            MoneyError::Overflow(_) => "amount.overflow",
            MoneyError::AboveMaximum { .. } => "amount.above_maximum",
        }
    }
}

/// Write `amount` with exactly `scale` decimals: 100 → "100.00". Refuses
/// (ScaleExceeded, "amount.scale") to drop non-zero digits: 1.005 at scale 2
/// is an error, never rounded. Scales above [`MAX_SCALE`] → UnsupportedScale.
pub fn format_fixed(amount: Decimal, scale: u32) -> Result<String, MoneyError> {
    if scale > MAX_SCALE {
        return Err(MoneyError::UnsupportedScale(scale));
    }
    let normal = amount.normalize();
    if normal.scale() > scale {
        return Err(MoneyError::ScaleExceeded {
            amount: format_canonical(amount),
            scale,
        });
    }
    let mut text = format_canonical(normal);
    if scale > 0 {
        if normal.scale() == 0 {
            text.push('.');
        }
        text.extend(std::iter::repeat_n('0', (scale - normal.scale()) as usize));
    }
    Ok(text)
}

/// Write `amount` with no trailing zeros and no trailing '.':
/// 100.00 → "100", 100.50 → "100.5", 0.10 → "0.1".
pub fn format_canonical(amount: Decimal) -> String {
    let normal = amount.normalize();
    if normal.is_zero() {
        // Never "-0".
        return "0".to_string();
    }
    normal.to_string()
}

/// Count of minor units at `scale` decimals: 100.50 at 2 → 10050. Error if it
/// would lose digits (ScaleExceeded) or does not fit in an i64 (Overflow).
/// Negative amounts are converted as they are.
pub fn to_minor_units(amount: Decimal, scale: u32) -> Result<i64, MoneyError> {
    scaled(amount, scale).map_err(|failure| match failure {
        ScaleFailure::Decimals => MoneyError::ScaleExceeded {
            amount: format_canonical(amount),
            scale,
        },
        ScaleFailure::Overflow => MoneyError::Overflow(format_canonical(amount)),
    })
}

/// Decimal of `minor` units at `scale` decimals, keeping that scale:
/// 10050 at 2 → 100.50.
///
/// # Panics
///
/// If `scale` is above [`MAX_SCALE`] (28), which no currency comes near.
pub fn from_minor_units(minor: i64, scale: u32) -> Decimal {
    assert!(
        scale <= MAX_SCALE,
        "from_minor_units: scale {scale} is above {MAX_SCALE}"
    );
    Decimal::new(minor, scale)
}

enum ScaleFailure {
    Decimals,
    Overflow,
}

/// Exact `amount × 10^scale` as an i64.
fn scaled(amount: Decimal, scale: u32) -> Result<i64, ScaleFailure> {
    let normal = amount.normalize();
    if normal.scale() > scale {
        return Err(ScaleFailure::Decimals);
    }
    let mantissa = normal.mantissa();
    if mantissa == 0 {
        return Ok(0);
    }
    let factor = 10i128
        .checked_pow(scale - normal.scale())
        .ok_or(ScaleFailure::Overflow)?;
    let minor = mantissa.checked_mul(factor).ok_or(ScaleFailure::Overflow)?;
    i64::try_from(minor).map_err(|_| ScaleFailure::Overflow)
}

/// Caller input as echoed in an error message, cut to a readable length.
fn echo(text: &str) -> String {
    match text.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn cur(code: &str) -> Currency {
        Currency::from_code(code).unwrap()
    }

    fn dec(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn usd() -> Currency {
        cur("USD")
    }

    fn parse(text: &str, code: &str) -> Result<Money, MoneyError> {
        Money::parse(text, cur(code), None)
    }

    // ---- currencies ----

    #[test]
    fn table_is_sorted_unique_and_well_formed() {
        assert!(CURRENCIES.len() >= 150, "{} entries", CURRENCIES.len());
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (code, minor) in CURRENCIES {
            assert_eq!(code.len(), 3);
            assert!(code.bytes().all(|b| b.is_ascii_uppercase()), "{code}");
            assert!(*minor <= 4, "{code}");
            assert_eq!(Currency::from_code(code).unwrap().code(), *code);
        }
    }

    #[test]
    fn known_minor_units() {
        let cases = [
            ("USD", 2),
            ("EUR", 2),
            ("KES", 2),
            ("GBP", 2),
            ("INR", 2),
            ("UGX", 0),
            ("JPY", 0),
            ("KRW", 0),
            ("XAF", 0),
            ("XOF", 0),
            ("RWF", 0),
            ("VND", 0),
            ("ISK", 0),
            ("PYG", 0),
            ("GNF", 0),
            ("CLP", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("JOD", 3),
            ("LYD", 3),
            ("IQD", 3),
            ("CLF", 4),
            ("UYW", 4),
        ];
        for (code, minor) in cases {
            let c = cur(code);
            assert_eq!(c.code(), code);
            assert_eq!(c.minor_units(), minor, "{code}");
        }
    }

    #[test]
    fn unknown_currencies_rejected() {
        for code in [
            "usd", "Usd", "XYZ", "", "US", "USDD", " USD", "USD ", "XAU", "XDR", "XXX", "XTS",
            "HRK", "U$D", "ÜSD",
        ] {
            let err = Currency::from_code(code).unwrap_err();
            assert_eq!(err, MoneyError::UnknownCurrency(code.to_string()));
            assert_eq!(err.reason_code(), "currency_code.invalid");
        }
    }

    #[test]
    fn unknown_currency_message() {
        let err = Currency::from_code("usd").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown currency 'usd': expected an ISO 4217 code such as USD or KES"
        );
    }

    #[test]
    fn currency_display_is_code() {
        assert_eq!(cur("KES").to_string(), "KES");
    }

    // ---- scale ----

    #[test]
    fn scale_beyond_currency_rejected() {
        for (text, code, allowed) in [
            ("100.105", "USD", 2),
            ("0.001", "USD", 2),
            ("5.5", "UGX", 0),
            ("1.1", "JPY", 0),
            ("1.0001", "BHD", 3),
            ("1.00001", "CLF", 4),
        ] {
            let err = parse(text, code).unwrap_err();
            assert_eq!(
                err,
                MoneyError::TooManyDecimals {
                    amount: text.to_string(),
                    currency: cur(code).code(),
                    allowed
                },
                "{text} {code}"
            );
            assert_eq!(err.reason_code(), "amount.scale");
            let err = Money::from_decimal(dec(text), cur(code), None).unwrap_err();
            assert_eq!(err.reason_code(), "amount.scale", "{text} {code}");
        }
    }

    #[test]
    fn too_many_decimals_message() {
        let err = parse("100.105", "USD").unwrap_err();
        assert_eq!(
            err.to_string(),
            "amount 100.105 has more decimals than USD allows (2)"
        );
    }

    #[test]
    fn currency_scale_accepted() {
        assert_eq!(parse("1.234", "BHD").unwrap().minor(), 1234);
        assert_eq!(parse("0.001", "KWD").unwrap().minor(), 1);
        assert_eq!(parse("1.2345", "CLF").unwrap().minor(), 12345);
        assert_eq!(parse("100.10", "USD").unwrap().minor(), 10010);
        assert_eq!(parse("5000", "UGX").unwrap().minor(), 5000);
        assert_eq!(parse("5000", "USD").unwrap().minor(), 500000);
    }

    #[test]
    fn trailing_zeros_accepted() {
        assert_eq!(parse("100.10", "USD").unwrap().minor(), 10010);
        assert_eq!(parse("100.100", "USD").unwrap().minor(), 10010);
        assert_eq!(parse("100.10000000000000", "USD").unwrap().minor(), 10010);
        assert_eq!(parse("5.0", "UGX").unwrap().minor(), 5);
        assert_eq!(parse("5.000", "JPY").unwrap().minor(), 5);
        assert_eq!(parse("1.2340", "BHD").unwrap().minor(), 1234);
        let m = Money::from_decimal(dec("100.100"), usd(), None).unwrap();
        assert_eq!(m.minor(), 10010);
        let m = Money::from_decimal(dec("5.0"), cur("UGX"), None).unwrap();
        assert_eq!(m.minor(), 5);
    }

    #[test]
    fn leading_zeros_are_not_significant() {
        assert_eq!(parse("0100.50", "USD").unwrap().minor(), 10050);
        assert_eq!(parse("0.01", "USD").unwrap().minor(), 1);
        assert_eq!(
            parse("000000000000000000000000000000001", "USD")
                .unwrap()
                .minor(),
            100
        );
    }

    // ---- sign ----

    #[test]
    fn zero_and_negative_rejected() {
        for text in [
            "0", "0.0", "0.00", "000", "0.000000", "-0", "-0.00", "-1", "-100.50", "-0.001",
        ] {
            let err = parse(text, "USD").unwrap_err();
            assert_eq!(err, MoneyError::NotPositive, "{text}");
            assert_eq!(err.reason_code(), "amount.not_positive");
        }
        for amount in [
            Decimal::ZERO,
            dec("-0"),
            dec("-0.01"),
            dec("-5"),
            Decimal::MIN,
        ] {
            let err = Money::from_decimal(amount, usd(), None).unwrap_err();
            assert_eq!(err, MoneyError::NotPositive, "{amount}");
        }
        assert_eq!(
            MoneyError::NotPositive.to_string(),
            "amount must be greater than zero"
        );
    }

    // ---- overflow ----

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        // i64::MAX minor units is accepted, one more is not.
        let max = Money::parse("92233720368547758.07", usd(), None).unwrap();
        assert_eq!(max.minor(), i64::MAX);
        let err = parse("92233720368547758.08", "USD").unwrap_err();
        assert_eq!(
            err,
            MoneyError::Overflow("92233720368547758.08".to_string())
        );
        assert_eq!(err.reason_code(), "amount.overflow");
        assert_eq!(
            parse("9223372036854775807", "UGX").unwrap().minor(),
            i64::MAX
        );
        assert!(matches!(
            parse("9223372036854775808", "UGX"),
            Err(MoneyError::Overflow(_))
        ));
        // Through from_decimal.
        let err = Money::from_decimal(dec("92233720368547758.08"), usd(), None).unwrap_err();
        assert_eq!(err.reason_code(), "amount.overflow");
        let err = Money::from_decimal(Decimal::MAX, usd(), None).unwrap_err();
        assert_eq!(err.reason_code(), "amount.overflow");
        let err = Money::from_decimal(Decimal::MAX, cur("CLF"), None).unwrap_err();
        assert_eq!(err.reason_code(), "amount.overflow");
    }

    #[test]
    fn too_many_significant_digits_is_overflow() {
        let twenty_eight = "1234567890123456789012345678";
        assert!(matches!(
            parse(twenty_eight, "USD"),
            Err(MoneyError::Overflow(_))
        ));
        let twenty_nine = "12345678901234567890123456789";
        assert!(matches!(
            parse(twenty_nine, "USD"),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            parse("99999999999999999999999999999.99", "USD"),
            Err(MoneyError::Overflow(_))
        ));
        let huge = "9".repeat(10_000);
        let err = parse(&huge, "USD").unwrap_err();
        assert_eq!(err.reason_code(), "amount.overflow");
        // The message does not echo all 10,000 digits.
        assert!(err.to_string().len() < 100, "{err}");
        let huge_decimals = format!("{huge}.{huge}");
        assert!(parse(&huge_decimals, "USD").is_err());
    }

    // ---- malformed text ----

    #[test]
    fn malformed_text_rejected() {
        for text in [
            "", " ", " 1", "1 ", "1 000", "\t5", "5\n", "+5", "+5.00", "1e3", "1E3", "1.5e2",
            "0x10", "0X1F", "NaN", "nan", "inf", "Infinity", "-", "--5", "-+5", "1,000",
            "1,000.00", "1_000", "1'000", ".5", "5.", "-.5", "-5.", "1.2.3", "1..2", "..", ".",
            "abc", "12a", "١٢", "１", "\u{0}", "5.-1", "5.+1", "0.5%", "$5", "5 USD",
        ] {
            let err = parse(text, "USD").unwrap_err();
            assert_eq!(err, MoneyError::InvalidAmount(text.to_string()), "{text:?}");
            assert_eq!(err.reason_code(), "amount.invalid");
        }
        assert_eq!(
            parse("1e3", "USD").unwrap_err().to_string(),
            "invalid amount '1e3': expected a decimal number such as 100.50"
        );
    }

    // ---- maximum ----

    #[test]
    fn maximum_compared_exactly() {
        let max = Some(dec("1000000.00"));
        let err = Money::parse("1000000.01", usd(), max).unwrap_err();
        assert_eq!(
            err,
            MoneyError::AboveMaximum {
                amount: "1000000.01".to_string(),
                max: "1000000.00".to_string()
            }
        );
        assert_eq!(err.reason_code(), "amount.above_maximum");
        assert_eq!(
            err.to_string(),
            "amount 1000000.01 is above the maximum 1000000.00"
        );
        assert_eq!(
            Money::parse("1000000.00", usd(), max).unwrap().minor(),
            100000000
        );
        assert_eq!(
            Money::parse("1000000", usd(), max).unwrap().minor(),
            100000000
        );
        assert_eq!(
            Money::parse("999999.99", usd(), max).unwrap().minor(),
            99999999
        );
        let err = Money::from_decimal(dec("1000000.01"), usd(), max).unwrap_err();
        assert_eq!(err.reason_code(), "amount.above_maximum");
        // A maximum with more decimals than the currency is still exact.
        let max = Some(dec("10.005"));
        assert!(Money::parse("10.00", usd(), max).is_ok());
        assert!(Money::parse("10.01", usd(), max).is_err());
    }

    // ---- conversions ----

    #[test]
    fn round_trips_minor_and_decimal() {
        for (minor, code, text) in [
            (10050, "USD", "100.50"),
            (1, "USD", "0.01"),
            (100, "USD", "1.00"),
            (5000, "UGX", "5000"),
            (1234, "BHD", "1.234"),
            (12345, "CLF", "1.2345"),
            (i64::MAX, "USD", "92233720368547758.07"),
        ] {
            let c = cur(code);
            let m = Money::from_minor(minor, c);
            assert_eq!(m.minor(), minor);
            assert_eq!(m.currency(), c);
            let d = m.to_decimal();
            assert_eq!(d.to_string(), text);
            assert_eq!(d.scale(), c.minor_units());
            assert_eq!(Money::from_decimal(d, c, None).unwrap(), m);
            assert_eq!(Money::parse(text, c, None).unwrap(), m);
            assert_eq!(to_minor_units(d, c.minor_units()).unwrap(), minor);
            assert_eq!(from_minor_units(minor, c.minor_units()), d);
        }
    }

    #[test]
    fn parse_agrees_with_from_decimal() {
        for text in ["0.01", "1", "100.5", "100.50", "123456.78", "0.10"] {
            let a = Money::parse(text, usd(), None).unwrap();
            let b = Money::from_decimal(Decimal::from_str(text).unwrap(), usd(), None).unwrap();
            assert_eq!(a, b, "{text}");
        }
    }

    #[test]
    fn sums_are_exact() {
        let a = parse("0.10", "USD").unwrap();
        let b = parse("0.20", "USD").unwrap();
        let c = parse("0.30", "USD").unwrap();
        assert_eq!(a.minor() + b.minor(), c.minor());
        assert_eq!(Money::from_minor(a.minor() + b.minor(), usd()), c);
        assert_eq!(a.to_decimal() + b.to_decimal(), c.to_decimal());
    }

    #[test]
    fn display() {
        assert_eq!(Money::from_minor(10050, usd()).to_string(), "100.50 USD");
        assert_eq!(Money::from_minor(100, usd()).to_string(), "1.00 USD");
        assert_eq!(Money::from_minor(5, usd()).to_string(), "0.05 USD");
        assert_eq!(Money::from_minor(5000, cur("UGX")).to_string(), "5000 UGX");
        assert_eq!(Money::from_minor(1, cur("BHD")).to_string(), "0.001 BHD");
        assert_eq!(Money::from_minor(-150, usd()).to_string(), "-1.50 USD");
    }

    #[test]
    fn money_equality_includes_currency() {
        assert_ne!(
            Money::from_minor(100, usd()),
            Money::from_minor(100, cur("EUR"))
        );
    }

    // ---- helpers ----

    #[test]
    fn format_fixed_pads_exactly() {
        for (amount, scale, expected) in [
            ("100", 2, "100.00"),
            ("100.5", 2, "100.50"),
            ("100.50", 2, "100.50"),
            ("100.500", 2, "100.50"),
            ("0.1", 2, "0.10"),
            ("0", 2, "0.00"),
            ("-0", 2, "0.00"),
            ("-1.5", 2, "-1.50"),
            ("100", 0, "100"),
            ("100.000", 0, "100"),
            ("1.005", 3, "1.005"),
            ("1.005", 4, "1.0050"),
            (
                "0.0000000000000000000000000001",
                28,
                "0.0000000000000000000000000001",
            ),
            (
                "79228162514264337593543950335",
                2,
                "79228162514264337593543950335.00",
            ),
        ] {
            assert_eq!(
                format_fixed(dec(amount), scale).unwrap(),
                expected,
                "{amount}"
            );
        }
    }

    #[test]
    fn format_fixed_never_rounds() {
        let err = format_fixed(dec("1.005"), 2).unwrap_err();
        assert_eq!(
            err,
            MoneyError::ScaleExceeded {
                amount: "1.005".to_string(),
                scale: 2
            }
        );
        assert_eq!(err.reason_code(), "amount.scale");
        assert!(format_fixed(dec("0.5"), 0).is_err());
        assert!(format_fixed(dec("100.001"), 2).is_err());
        let err = format_fixed(dec("1"), 29).unwrap_err();
        assert_eq!(err, MoneyError::UnsupportedScale(29));
        assert_eq!(err.reason_code(), "amount.scale");
        assert!(format_fixed(dec("1"), u32::MAX).is_err());
    }

    #[test]
    fn format_canonical_strips_zeros() {
        for (amount, expected) in [
            ("100.00", "100"),
            ("100.50", "100.5"),
            ("0.10", "0.1"),
            ("100", "100"),
            ("1000", "1000"),
            ("0", "0"),
            ("0.000", "0"),
            ("-0.00", "0"),
            ("-1.50", "-1.5"),
            (
                "0.0000000000000000000000000001",
                "0.0000000000000000000000000001",
            ),
            (
                "79228162514264337593543950335",
                "79228162514264337593543950335",
            ),
        ] {
            assert_eq!(format_canonical(dec(amount)), expected, "{amount}");
        }
    }

    #[test]
    fn to_minor_units_exact_or_error() {
        assert_eq!(to_minor_units(dec("100.50"), 2).unwrap(), 10050);
        assert_eq!(to_minor_units(dec("100.5"), 2).unwrap(), 10050);
        assert_eq!(to_minor_units(dec("100.500"), 2).unwrap(), 10050);
        assert_eq!(to_minor_units(dec("100"), 0).unwrap(), 100);
        assert_eq!(to_minor_units(dec("0"), 2).unwrap(), 0);
        assert_eq!(to_minor_units(dec("0"), u32::MAX).unwrap(), 0);
        assert_eq!(to_minor_units(dec("-1.25"), 2).unwrap(), -125);
        assert_eq!(to_minor_units(dec("1.234"), 3).unwrap(), 1234);
        assert_eq!(
            to_minor_units(dec("-92233720368547758.08"), 2).unwrap(),
            i64::MIN
        );
        let err = to_minor_units(dec("100.505"), 2).unwrap_err();
        assert_eq!(err.reason_code(), "amount.scale");
        let err = to_minor_units(dec("92233720368547758.08"), 2).unwrap_err();
        assert_eq!(
            err,
            MoneyError::Overflow("92233720368547758.08".to_string())
        );
        assert_eq!(
            to_minor_units(Decimal::MAX, 0).unwrap_err().reason_code(),
            "amount.overflow"
        );
        assert_eq!(
            to_minor_units(dec("1"), 40).unwrap_err().reason_code(),
            "amount.overflow"
        );
        assert_eq!(
            to_minor_units(dec("1"), u32::MAX)
                .unwrap_err()
                .reason_code(),
            "amount.overflow"
        );
    }

    #[test]
    fn from_minor_units_keeps_scale() {
        assert_eq!(from_minor_units(10050, 2).to_string(), "100.50");
        assert_eq!(from_minor_units(0, 2).to_string(), "0.00");
        assert_eq!(from_minor_units(7, 0).to_string(), "7");
        assert_eq!(from_minor_units(-5, 3).to_string(), "-0.005");
        assert_eq!(
            from_minor_units(1, 28),
            dec("0.0000000000000000000000000001")
        );
        assert_eq!(
            from_minor_units(i64::MIN, 2).to_string(),
            "-92233720368547758.08"
        );
    }

    #[test]
    #[should_panic(expected = "scale 29")]
    fn from_minor_units_panics_above_max_scale() {
        let _ = from_minor_units(1, 29);
    }

    #[test]
    fn reason_codes() {
        let cases = [
            (
                MoneyError::UnknownCurrency("X".into()),
                "currency_code.invalid",
            ),
            (MoneyError::InvalidAmount("X".into()), "amount.invalid"),
            (
                MoneyError::TooManyDecimals {
                    amount: "1.001".into(),
                    currency: "USD",
                    allowed: 2,
                },
                "amount.scale",
            ),
            (MoneyError::NotPositive, "amount.not_positive"),
            (MoneyError::Overflow("X".into()), "amount.overflow"),
            (
                MoneyError::AboveMaximum {
                    amount: "2".into(),
                    max: "1".into(),
                },
                "amount.above_maximum",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.reason_code(), code);
        }
    }

    #[test]
    fn echo_cuts_long_input() {
        assert_eq!(echo("abc"), "abc");
        let long = "é".repeat(100);
        let cut = echo(&long);
        assert_eq!(cut, format!("{}...", "é".repeat(ECHO_LIMIT)));
    }
}

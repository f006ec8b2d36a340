//! The one sandboxed Rhai engine set-up and the helper functions scripts may call.
//!
//! Limits: a deterministic operation budget, expression depth, call depth, string/array/map
//! sizes, no modules, no `eval`, strict variables, errors on unknown map properties, and a
//! wall-clock deadline per call (checked from `on_progress`). Helpers never do I/O and never
//! use floats: amounts are `Decimal` (the engine is built with `decimal` + `no_float`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rhai::{Dynamic, Engine, EvalAltResult, INT};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::money;

/// Operation budget per call: generous for mapping a payment, fatal for a runaway loop.
pub const MAX_OPERATIONS: u64 = 200_000;
/// Wall-clock limit per call, a backstop behind the operation budget.
pub const CALL_DEADLINE: Duration = Duration::from_millis(250);

/// This thread's script call: `Some(None)` while a call runs and has not yet read the clock,
/// `Some(Some(deadline))` once it has, `None` outside calls.
type CallClock = Option<Option<Instant>>;

thread_local! {
    static DEADLINE: Cell<CallClock> = const { Cell::new(None) };
}

/// Runs `f` with this thread's script deadline armed, so a slow script is stopped. The clock
/// is first read at the first progress check (after 1,024 operations), not here: most calls
/// end long before that, and reading the clock at every call was a tenth of a short call's
/// cost. The deadline thus counts from that check, a few microseconds into the call.
pub fn with_deadline<T>(f: impl FnOnce() -> T) -> T {
    let previous = DEADLINE.with(|d| d.replace(Some(None)));
    let out = f();
    DEADLINE.with(|d| d.set(previous));
    out
}

/// Called every 1,024 operations of a call: starts the call's deadline, then checks it.
fn past_deadline() -> bool {
    DEADLINE.with(|d| match d.get() {
        Some(Some(at)) => Instant::now() > at,
        Some(None) => {
            d.set(Some(Some(Instant::now() + CALL_DEADLINE)));
            false
        }
        None => false,
    })
}

type HelperResult<T> = Result<T, Box<EvalAltResult>>;

fn helper_err(message: impl Into<String>) -> Box<EvalAltResult> {
    message.into().into()
}

fn scale_of(scale: INT) -> HelperResult<u32> {
    u32::try_from(scale)
        .ok()
        .filter(|s| *s <= 18)
        .ok_or_else(|| helper_err(format!("scale {scale} out of range 0..=18")))
}

/// Builds the hardened engine. Build it once and share it (`Engine` is `Send + Sync`).
pub fn build() -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(MAX_OPERATIONS)
        .set_max_expr_depths(64, 32)
        .set_max_call_levels(32)
        .set_max_string_size(256 * 1024)
        .set_max_array_size(20_000)
        .set_max_map_size(10_000)
        .set_max_variables(1_000)
        .set_max_functions(1_000)
        .set_max_modules(0)
        .set_max_strings_interned(0)
        .set_strict_variables(true)
        .set_fail_on_invalid_map_property(true);
    // Scripts are self-contained: no eval, no modules from anywhere (an `import` inside a
    // function would otherwise read `<name>.rhai` from the working directory).
    e.disable_symbol("eval");
    e.disable_symbol("import");
    e.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    e.on_print(|_| {});
    e.on_debug(|_, _, _| {});
    e.on_progress(|ops| {
        if ops % 1024 != 0 {
            return None;
        }
        past_deadline().then(|| Dynamic::from("script exceeded its time limit"))
    });
    register_helpers(&mut e);
    e
}

fn register_helpers(e: &mut Engine) {
    // Amounts in the DFSP's own style.
    e.register_fn(
        "fmt_fixed",
        |amount: Decimal, scale: INT| -> HelperResult<String> {
            money::format_fixed(amount, scale_of(scale)?).map_err(|err| helper_err(err.to_string()))
        },
    );
    e.register_fn("fmt_canonical", money::format_canonical);
    e.register_fn(
        "to_minor",
        |amount: Decimal, scale: INT| -> HelperResult<INT> {
            money::to_minor_units(amount, scale_of(scale)?)
                .map_err(|err| helper_err(err.to_string()))
        },
    );
    e.register_fn(
        "from_minor",
        |minor: INT, scale: INT| -> HelperResult<Decimal> {
            Ok(money::from_minor_units(minor, scale_of(scale)?))
        },
    );
    e.register_fn("is_whole", |amount: Decimal| amount.fract().is_zero());

    // Identifiers, encodings and signatures.
    e.register_fn("uuid_v4", || uuid::Uuid::new_v4().to_string());
    e.register_fn("base64_encode", |s: &str| {
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    });
    e.register_fn("base64_decode", |s: &str| -> HelperResult<String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|err| helper_err(format!("base64_decode: {err}")))?;
        String::from_utf8(bytes).map_err(|_| helper_err("base64_decode: not UTF-8 text"))
    });
    e.register_fn("sha256_hex", |s: &str| {
        hex::encode(Sha256::digest(s.as_bytes()))
    });
    e.register_fn(
        "hmac_sha256_hex",
        |key: &str, msg: &str| -> HelperResult<String> { Ok(hex::encode(hmac(key, msg)?)) },
    );
    e.register_fn(
        "hmac_sha256_base64",
        |key: &str, msg: &str| -> HelperResult<String> {
            Ok(base64::engine::general_purpose::STANDARD.encode(hmac(key, msg)?))
        },
    );

    // Time: scripts get `ctx.now` (unix ms) and format it; they never read the clock.
    e.register_fn(
        "format_time",
        |ms: INT, fmt: &str| -> HelperResult<String> {
            let t = chrono::DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| helper_err(format!("format_time: {ms} is not a valid time")))?;
            let mut out = String::new();
            use std::fmt::Write;
            write!(out, "{}", t.format(fmt))
                .map_err(|_| helper_err(format!("format_time: bad format '{fmt}'")))?;
            Ok(out)
        },
    );
    e.register_fn("rfc3339", |ms: INT| -> HelperResult<String> {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .ok_or_else(|| helper_err(format!("rfc3339: {ms} is not a valid time")))
    });

    e.register_fn("xml_escape", |s: &str| xml_escape(s));
    e.register_fn("xml_parse", |s: &str| -> HelperResult<Dynamic> {
        super::xml::parse(s).map_err(helper_err)
    });
    e.register_fn("xml_list", super::xml::list);
    e.register_fn("url_encode", |s: &str| url_encode(s));
    // Reads in place (its first argument by reference): a script helper doing the same walk
    // took the value by copy at every step, copying a whole DFSP response several times.
    e.register_fn("dig", |value: &mut Dynamic, path: &str| dig(value, path));
}

/// `dig(value, "a.b.0.c")`: what lies at that path of map keys and array indexes, or `()` if a
/// step is missing or leads into something that is neither.
fn dig(value: &Dynamic, path: &str) -> Dynamic {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let step = |child: &Dynamic| match rest {
        Some(rest) => dig(child, rest),
        None => child.clone(),
    };
    if let Some(map) = value.read_lock::<rhai::Map>() {
        return map.get(head).map_or(Dynamic::UNIT, step);
    }
    if let Some(list) = value.read_lock::<rhai::Array>() {
        return head
            .parse::<usize>()
            .ok()
            .and_then(|i| list.get(i))
            .map_or(Dynamic::UNIT, step);
    }
    Dynamic::UNIT
}

fn hmac(key: &str, msg: &str) -> HelperResult<Vec<u8>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
        .map_err(|_| helper_err("hmac: invalid key"))?;
    mac.update(msg.as_bytes());
    Ok(mac.finalize().into_bytes().to_vec())
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(script: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let engine = build();
        with_deadline(|| engine.eval::<Dynamic>(script))
    }

    #[test]
    fn dig_walks_maps_and_arrays_and_gives_unit_for_what_is_not_there() {
        let body = r#"let b = #{ a: #{ list: [#{ x: "deep" }, 2] }, s: "text" }; "#;
        let dig = |path: &str| {
            eval(&format!("{body} dig(b, \"{path}\")"))
                .expect("eval")
                .to_string()
        };
        assert_eq!(dig("a.list.0.x"), "deep");
        assert_eq!(dig("a.list.1"), "2");
        for missing in ["a.nope", "a.list.2", "a.list.x", "s.more", "", "a..list"] {
            assert_eq!(dig(missing), "", "{missing}");
        }
        // Also through a value shared with PIL (the payment map is).
        let engine = build();
        let ast = engine
            .compile("fn f(p) { dig(p, \"fa.id\") }")
            .expect("compile");
        let mut fa = rhai::Map::new();
        fa.insert("id".into(), "2567".into());
        let mut p = rhai::Map::new();
        p.insert("fa".into(), Dynamic::from_map(fa));
        let got: String = engine
            .call_fn(
                &mut rhai::Scope::new(),
                &ast,
                "f",
                (crate::script::convert::shared(p),),
            )
            .expect("call");
        assert_eq!(got, "2567");
    }

    #[test]
    fn literals_are_decimals_and_exact() {
        let r = eval("0.1 + 0.2 == 0.3").expect("eval");
        assert!(r.as_bool().expect("bool"));
        let r = eval("let a = 100.10; a * 3").expect("eval");
        assert_eq!(r.as_decimal().expect("decimal").to_string(), "300.30");
    }

    #[test]
    fn amount_comparison_with_integer_literal_is_exact() {
        let engine = build();
        let ast = engine
            .compile("fn big(a) { a > 100000 } fn eq(a) { a == 0.10 }")
            .expect("compile");
        let big: bool = engine
            .call_fn(
                &mut rhai::Scope::new(),
                &ast,
                "big",
                (Dynamic::from_decimal(Decimal::new(10000001, 2)),),
            )
            .expect("call");
        assert!(big, "100000.01 > 100000");
        let eq: bool = engine
            .call_fn(
                &mut rhai::Scope::new(),
                &ast,
                "eq",
                (Dynamic::from_decimal(Decimal::new(1, 1)),),
            )
            .expect("call");
        assert!(eq, "0.1 == 0.10");
    }

    #[test]
    fn helpers_format_amounts_without_rounding() {
        assert_eq!(
            eval("fmt_fixed(100.5, 2)").expect("eval").to_string(),
            "100.50"
        );
        assert_eq!(
            eval("fmt_canonical(100.50)").expect("eval").to_string(),
            "100.5"
        );
        assert_eq!(
            eval("to_minor(12.34, 2)")
                .expect("eval")
                .as_int()
                .expect("int"),
            1234
        );
        assert!(
            eval("fmt_fixed(1.005, 2)").is_err(),
            "must not round away digits"
        );
        assert_eq!(
            eval("from_minor(1234, 2)").expect("eval").to_string(),
            "12.34"
        );
    }

    #[test]
    fn helpers_encode_and_sign() {
        assert_eq!(
            eval(r#"base64_encode("u:p")"#).expect("eval").to_string(),
            "dTpw"
        );
        assert_eq!(
            eval(r#"sha256_hex("abc")"#).expect("eval").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            eval(r#"hmac_sha256_hex("Jefe", "what do ya want for nothing?")"#)
                .expect("eval")
                .to_string(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            eval(r#"let d = xml_parse("<r><t><s>ACSC</s></t><t><s>RJCT</s></t></r>"); xml_list(d.r.t)[1].s"#)
                .expect("eval")
                .to_string(),
            "RJCT"
        );
        assert!(eval(r#"xml_parse("<r>")"#).is_err());
        assert_eq!(
            eval(r#"xml_escape("a<b & 'c'")"#)
                .expect("eval")
                .to_string(),
            "a&lt;b &amp; &apos;c&apos;"
        );
        assert_eq!(
            eval(r#"format_time(0, "%Y-%m-%dT%H:%M:%S")"#)
                .expect("eval")
                .to_string(),
            "1970-01-01T00:00:00"
        );
        assert_eq!(
            eval("uuid_v4().len()").expect("eval").as_int().ok(),
            Some(36)
        );
    }

    #[test]
    fn a_slow_script_is_stopped_by_the_wall_clock_before_its_operation_budget() {
        // Every operation hashes 128 KiB: the operation budget would allow many seconds.
        let err = eval(
            r#"let s = "x"; for i in 0..17 { s += s; } let n = 0; loop { sha256_hex(s); n += 1; }"#,
        )
        .unwrap_err();
        match *err {
            EvalAltResult::ErrorTerminated(ref why, _) => {
                assert!(why.to_string().contains("time limit"), "{why}")
            }
            ref other => panic!("expected the deadline to stop it, got {other}"),
        }
        // Outside a call nothing is armed: the next call starts afresh.
        assert_eq!(eval("40 + 2").expect("eval").as_int().ok(), Some(42));
    }

    #[test]
    fn sandbox_stops_runaway_scripts() {
        let err = eval("loop {}").unwrap_err();
        assert!(err.to_string().contains("Too many operations"), "{err}");
        let err = eval(r#"let s = "x"; loop { s += s; }"#).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("length"), "{err}");
        let engine = build();
        let err = engine.compile("eval(\"1\")").unwrap_err();
        assert!(err.to_string().contains("eval"), "{err}");
        let err = engine
            .compile("fn f() { import \"x\" as y; 1 }")
            .unwrap_err();
        assert!(err.to_string().contains("import"), "{err}");
        let err = eval("fn f(n) { f(n + 1) } f(0)").unwrap_err();
        assert!(
            err.to_string().contains("Stack overflow") || err.to_string().contains("call"),
            "{err}"
        );
        let err = engine.compile("fn f() { undefined_var }").unwrap_err();
        assert!(err.to_string().contains("undefined_var"), "{err}");
        let err = eval("let m = #{a: 1}; m.b").unwrap_err();
        assert!(err.to_string().contains('b'), "{err}");
    }
}

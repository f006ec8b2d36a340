//! Exact conversions between Rust values and Rhai values. Amounts cross as `Decimal` through
//! `Dynamic::from_decimal` / `as_decimal`, never through Rhai's serde bridge (which turns a
//! Decimal into a string or an f64). JSON numbers keep their exact text (serde_json's
//! `arbitrary_precision`): integers become `INT`, the rest `Decimal`.

use std::str::FromStr;
use std::sync::OnceLock;

use rhai::{Array, Dynamic, ImmutableString, Map};
use rust_decimal::Decimal;

use crate::address::FinancialAddress;
use crate::payment::Payment;

pub fn str_or_unit(s: Option<&str>) -> Dynamic {
    s.map_or(Dynamic::UNIT, |s| Dynamic::from(ImmutableString::from(s)))
}

/// A map handed to scripts by reference: script functions receive their arguments by value,
/// so an unshared map would be deep-copied at every call a script makes with it.
pub fn shared(map: Map) -> Dynamic {
    Dynamic::from_map(map).into_shared()
}

/// A deep copy with no shared value left inside. Rhai's size checks refuse (by panicking) to
/// measure an array that holds shared values, so the payments handed to bulk functions as one
/// array are copied this way first.
pub fn unshared(value: &Dynamic) -> Dynamic {
    let value = value.flatten_clone();
    if value.is_map() {
        let map = value.cast::<Map>();
        return Dynamic::from_map(map.iter().map(|(k, v)| (k.clone(), unshared(v))).collect());
    }
    if value.is_array() {
        let list = value.cast::<rhai::Array>();
        return Dynamic::from_array(list.iter().map(unshared).collect());
    }
    value
}

/// The payment as scripts see it, shared (see [`shared`]). Scripts treat it as read-only.
pub fn payment_dynamic(p: &Payment) -> Dynamic {
    shared(payment_map(p))
}

/// Clones the map `template` holds (made from the keys of `fields` on first use, with `()`
/// values) and sets its values: cloning a prepared map costs a fraction of building one key
/// by key, as no key is made, compared or sorted again. `fields` lists its keys sorted, as the
/// map keeps them, so values fill their slots in order; that is checked when the template is
/// made, and every key at every call in debug builds (the tests).
fn filled<const N: usize>(template: &OnceLock<Map>, fields: [(&str, Dynamic); N]) -> Map {
    let template = template.get_or_init(|| {
        assert!(
            fields.windows(2).all(|w| w[0].0 < w[1].0),
            "template keys must be listed sorted and without repeats"
        );
        fields
            .iter()
            .map(|(k, _)| ((*k).into(), Dynamic::UNIT))
            .collect()
    });
    let mut map = template.clone();
    for ((key, slot), (name, value)) in map.iter_mut().zip(fields) {
        debug_assert_eq!(key.as_str(), name);
        *slot = value;
    }
    map
}

/// The payment as scripts see it (DESIGN.md "Script contracts").
///
/// This runs for every payment, so it fills a copy of a prepared map rather than building
/// one key by key. The nested `fa` map is shared with the payment's copies; scripts read it
/// with `p.fa?.provider` (which gives `()` when the payee has no financial address).
pub fn payment_map(p: &Payment) -> Map {
    let text = |s: &str| Dynamic::from(ImmutableString::from(s));
    let fa = p
        .payee_fa
        .as_deref()
        .and_then(|s| FinancialAddress::parse(s).ok())
        .map_or(Dynamic::UNIT, |fa| {
            static FA: OnceLock<Map> = OnceLock::new();
            shared(filled(
                &FA,
                [
                    ("id", text(&fa.id)),
                    ("provider", text(&fa.provider)),
                    ("scheme", text(&fa.scheme)),
                ],
            ))
        });
    let sender = text(&p.sender_id);
    let currency = p.amount.currency();
    static PAYMENT: OnceLock<Map> = OnceLock::new();
    filled(
        &PAYMENT,
        [
            ("amount", Dynamic::from_decimal(p.amount.to_decimal())),
            ("amount_minor", Dynamic::from_int(p.amount.minor())),
            ("attempts", Dynamic::from_int(p.attempts)),
            (
                "attributes",
                p.attributes
                    .as_ref()
                    .map_or_else(|| Dynamic::from_map(Map::new()), json_to_dynamic),
            ),
            ("batch_id", text(&p.batch_id)),
            ("currency", text(currency.code())),
            ("dfsp", str_or_unit(p.dfsp.as_deref())),
            ("dfsp_ref", str_or_unit(p.dfsp_ref.as_deref())),
            ("fa", fa),
            ("id", text(&p.id)),
            ("idempotency_key", str_or_unit(p.idempotency_key.as_deref())),
            (
                "meta",
                p.meta.as_ref().map_or(Dynamic::UNIT, json_to_dynamic),
            ),
            (
                "minor_units",
                Dynamic::from_int(i64::from(currency.minor_units())),
            ),
            ("note", str_or_unit(p.note.as_deref())),
            ("payee_fa", str_or_unit(p.payee_fa.as_deref())),
            ("payee_id_type", str_or_unit(p.payee_id_type.as_deref())),
            ("payee_id_value", str_or_unit(p.payee_id_value.as_deref())),
            ("payee_name", str_or_unit(p.payee_name.as_deref())),
            ("program", sender.clone()),
            ("reference_id", text(&p.reference_id)),
            ("sender_id", sender),
        ],
    )
}

pub fn json_to_dynamic(v: &serde_json::Value) -> Dynamic {
    use serde_json::Value;
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Dynamic::from_int(i);
            }
            let text = n.to_string();
            Decimal::from_str(&text)
                .or_else(|_| Decimal::from_scientific(&text))
                .map_or_else(|_| Dynamic::from(text), Dynamic::from_decimal)
        }
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect::<Array>()),
        Value::Object(o) => Dynamic::from_map(
            o.iter()
                .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
                .collect::<Map>(),
        ),
    }
}

/// Writes a script value as JSON text, without building an intermediate `serde_json::Value`
/// (this is on every payment's path). Decimals keep their exact digits.
pub fn write_json(d: &Dynamic, out: &mut String) -> Result<(), String> {
    use std::fmt::Write;
    if d.is_shared() {
        // Read through the lock: flattening would copy the whole value first.
        return match d.read_lock::<Dynamic>() {
            Some(inner) => write_json(&inner, out),
            None => Err("a shared value is locked".into()),
        };
    }
    if d.is_unit() {
        out.push_str("null");
    } else if let Ok(b) = d.as_bool() {
        out.push_str(if b { "true" } else { "false" });
    } else if let Ok(i) = d.as_int() {
        let _ = write!(out, "{i}");
    } else if let Ok(dec) = d.as_decimal() {
        let _ = write!(out, "{dec}");
    } else if let Some(s) = d.read_lock::<ImmutableString>() {
        write_json_str(s.as_str(), out);
    } else if let Some(arr) = d.read_lock::<Array>() {
        out.push('[');
        for (i, v) in arr.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json(v, out)?;
        }
        out.push(']');
    } else if let Some(map) = d.read_lock::<Map>() {
        out.push('{');
        for (i, (k, v)) in map.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_str(k.as_str(), out);
            out.push(':');
            write_json(v, out)?;
        }
        out.push('}');
    } else {
        return Err(format!("a {} cannot be sent as JSON", d.type_name()));
    }
    Ok(())
}

/// Which bytes JSON strings must escape: `"`, `\\` and the control characters.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

fn write_json_str(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.reserve(s.len() + 2);
    out.push('"');
    // Copy the runs that need no escaping in one go; only ASCII bytes ever need it, so every
    // cut below falls on a character boundary.
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.push_str(&s[run..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_keep_exact_digits() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a": 12345678901234.5678, "b": 0.10, "c": 7}"#).expect("json");
        let d = json_to_dynamic(&v);
        let m = d.read_lock::<Map>().expect("map").clone();
        assert_eq!(
            m["a"].as_decimal().expect("decimal").to_string(),
            "12345678901234.5678"
        );
        assert_eq!(m["b"].as_decimal().expect("decimal").to_string(), "0.10");
        assert_eq!(m["c"].as_int().expect("int"), 7);
        let mut back = String::new();
        write_json(&d, &mut back).expect("json");
        assert_eq!(back, r#"{"a":12345678901234.5678,"b":0.10,"c":7}"#);
    }

    #[test]
    fn written_json_is_valid_and_exact() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"a": 12345678901234.5678, "s": "q\"uo\\te\nline\u0001", "l": [1, true, null], "m": {}}"#,
        )
        .expect("json");
        let mut out = String::new();
        write_json(&json_to_dynamic(&v), &mut out).expect("write");
        let back: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(back, v);
        assert!(out.contains("12345678901234.5678"), "{out}");
    }

    #[test]
    fn payment_map_has_the_contracts_keys() {
        let row = crate::store::NewPayment {
            id: "p-1".into(),
            reference_id: "ref-1".into(),
            amount_minor: 1,
            currency: "KES".into(),
            ..Default::default()
        };
        let p = crate::ingest::received_payment(&row, "b", "s", 0).expect("payment");
        let keys: Vec<String> = payment_map(&p).keys().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            [
                "amount",
                "amount_minor",
                "attempts",
                "attributes",
                "batch_id",
                "currency",
                "dfsp",
                "dfsp_ref",
                "fa",
                "id",
                "idempotency_key",
                "meta",
                "minor_units",
                "note",
                "payee_fa",
                "payee_id_type",
                "payee_id_value",
                "payee_name",
                "program",
                "reference_id",
                "sender_id",
            ]
        );
    }

    #[test]
    fn payment_map_puts_each_value_under_its_key() {
        let row = crate::store::NewPayment {
            id: "p-1".into(),
            reference_id: "ref-1".into(),
            payee_fa: Some("mobile:256700000001@mtn".into()),
            amount_minor: 12_345,
            currency: "KES".into(),
            payee_name: Some("Jane".into()),
            ..Default::default()
        };
        let p = crate::ingest::received_payment(&row, "batch-1", "sender-1", 0).expect("payment");
        let m = payment_map(&p);
        let s = |k: &str| m[k].to_string();
        assert_eq!(
            m["amount"].as_decimal().expect("decimal").to_string(),
            "123.45"
        );
        assert_eq!(m["amount_minor"].as_int().expect("int"), 12_345);
        assert_eq!(m["minor_units"].as_int().expect("int"), 2);
        assert_eq!(
            (s("id"), s("reference_id"), s("batch_id"), s("currency")),
            ("p-1".into(), "ref-1".into(), "batch-1".into(), "KES".into())
        );
        assert_eq!(
            (s("sender_id"), s("program")),
            ("sender-1".into(), "sender-1".into())
        );
        assert_eq!(s("payee_name"), "Jane");
        assert!(m["note"].is_unit() && m["dfsp"].is_unit() && m["meta"].is_unit());
        let fa = m["fa"].read_lock::<Map>().expect("fa map").clone();
        assert_eq!(
            (
                fa["scheme"].to_string(),
                fa["id"].to_string(),
                fa["provider"].to_string()
            ),
            ("mobile".into(), "256700000001".into(), "mtn".into())
        );
    }

    #[test]
    fn functions_cannot_become_json() {
        let f = Dynamic::from(rhai::FnPtr::new("x").expect("fn ptr"));
        assert!(write_json(&f, &mut String::new()).is_err());
    }
}

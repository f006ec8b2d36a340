//! Ingest: validates a submitted batch item by item (money, currency, financial address,
//! duplicates) and turns it into rows to store. All-or-nothing: one bad item rejects the batch
//! with every problem listed. It stores nothing itself and knows no HTTP.

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::address::FinancialAddress;
use crate::money::{Currency, Money};
use crate::store::{NewBatch, NewPayment};

pub const MAX_REFERENCE_LEN: usize = 128;
pub const MAX_TEXT_LEN: usize = 512;

/// One payment as submitted, before validation. Fields stay loosely typed so that a wrong
/// type becomes a per-item error, not a rejection of the whole body.
#[derive(Debug, Clone, Default)]
pub struct Item {
    pub reference_id: Option<serde_json::Value>,
    pub payee_fa: Option<serde_json::Value>,
    pub payee_id_type: Option<serde_json::Value>,
    pub payee_id_value: Option<serde_json::Value>,
    pub amount: Option<serde_json::Value>,
    pub currency: Option<serde_json::Value>,
    pub payee_name: Option<serde_json::Value>,
    pub note: Option<serde_json::Value>,
    pub meta: Option<serde_json::Value>,
}

/// A problem with one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ItemError {
    pub index: usize,
    pub field: String,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_amount: Option<Decimal>,
    pub max_payments: usize,
}

fn err(index: usize, field: &str, code: &str, message: impl Into<String>) -> ItemError {
    ItemError {
        index,
        field: field.into(),
        code: code.into(),
        message: message.into(),
    }
}

/// A string field: absent/null → None; a non-string → error.
fn text(
    index: usize,
    field: &str,
    v: &Option<serde_json::Value>,
    max: usize,
    errors: &mut Vec<ItemError>,
) -> Option<String> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.chars().count() > max => {
            errors.push(err(
                index,
                field,
                &format!("{field}.too_long"),
                format!("{field} has more than {max} characters"),
            ));
            None
        }
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(err(
                index,
                field,
                &format!("{field}.invalid"),
                format!("{field} must be a string"),
            ));
            None
        }
    }
}

/// Validates all items; returns the payments to store or every error found.
pub fn validate(items: &[Item], limits: &Limits) -> Result<Vec<NewPayment>, Vec<ItemError>> {
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(items.len());
    let mut seen: HashSet<&str> = HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let before = errors.len();
        let reference_id = text(
            i,
            "reference_id",
            &item.reference_id,
            MAX_REFERENCE_LEN,
            &mut errors,
        );
        match reference_id.as_deref() {
            None if errors.len() == before => errors.push(err(
                i,
                "reference_id",
                "reference_id.missing",
                "reference_id is required: the sender's own unique id for this payment",
            )),
            Some("") => errors.push(err(
                i,
                "reference_id",
                "reference_id.missing",
                "reference_id must not be empty",
            )),
            Some(_) => {
                if let Some(serde_json::Value::String(r)) = &item.reference_id
                    && !seen.insert(r.as_str())
                {
                    errors.push(err(
                        i,
                        "reference_id",
                        "reference_id.duplicate",
                        format!("reference_id '{r}' appears more than once in this batch"),
                    ));
                }
            }
            None => {}
        }

        let payee_fa = text(i, "payee_fa", &item.payee_fa, 256, &mut errors);
        let id_type = text(i, "payee_id_type", &item.payee_id_type, 64, &mut errors);
        let id_value = text(i, "payee_id_value", &item.payee_id_value, 256, &mut errors);
        match (&payee_fa, &id_type, &id_value) {
            (Some(fa), _, _) => {
                if let Err(e) = FinancialAddress::parse(fa) {
                    errors.push(err(i, "payee_fa", e.reason_code(), e.to_string()));
                }
            }
            (None, Some(t), Some(v)) if !t.is_empty() && !v.is_empty() => {}
            (None, Some(_), None) | (None, Some(_), Some(_)) => errors.push(err(
                i,
                "payee_id_value",
                "payee_id_value.missing",
                "payee_id_type needs a non-empty payee_id_value",
            )),
            (None, None, Some(_)) => errors.push(err(
                i,
                "payee_id_type",
                "payee_id_type.missing",
                "payee_id_value needs a payee_id_type such as MSISDN or ACCOUNT_ID",
            )),
            (None, None, None) => errors.push(err(
                i,
                "payee_fa",
                "payee_fa.missing",
                "give payee_fa (scheme:id@provider) or payee_id_type + payee_id_value",
            )),
        }

        let currency = match &item.currency {
            Some(serde_json::Value::String(c)) => match Currency::from_code(c) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(err(i, "currency", e.reason_code(), e.to_string()));
                    None
                }
            },
            None | Some(serde_json::Value::Null) => {
                errors.push(err(
                    i,
                    "currency",
                    "currency_code.missing",
                    "currency is required (ISO 4217, e.g. KES)",
                ));
                None
            }
            Some(_) => {
                errors.push(err(
                    i,
                    "currency",
                    "currency_code.invalid",
                    "currency must be a string such as \"KES\"",
                ));
                None
            }
        };
        let amount_text = match &item.amount {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // Numbers keep their exact text (serde_json arbitrary_precision): no float rounding.
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            None | Some(serde_json::Value::Null) => {
                errors.push(err(
                    i,
                    "amount",
                    "amount.missing",
                    "amount is required, e.g. \"100.50\"",
                ));
                None
            }
            Some(_) => {
                errors.push(err(
                    i,
                    "amount",
                    "amount.invalid",
                    "amount must be a decimal string such as \"100.50\"",
                ));
                None
            }
        };
        let money = match (amount_text, currency) {
            (Some(t), Some(c)) => match Money::parse(&t, c, limits.max_amount) {
                Ok(m) => Some(m),
                Err(e) => {
                    errors.push(err(i, "amount", e.reason_code(), e.to_string()));
                    None
                }
            },
            _ => None,
        };
        let payee_name = text(i, "payee_name", &item.payee_name, MAX_TEXT_LEN, &mut errors);
        let note = text(i, "note", &item.note, MAX_TEXT_LEN, &mut errors);
        let meta = match &item.meta {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                errors.push(err(i, "meta", "meta.invalid", "meta must be a JSON object"));
                None
            }
        };
        if errors.len() == before
            && let (Some(reference_id), Some(money)) = (reference_id, money)
        {
            out.push(NewPayment {
                id: uuid::Uuid::now_v7().to_string(),
                reference_id,
                payee_fa,
                payee_id_type: id_type,
                payee_id_value: id_value,
                amount_minor: money.minor(),
                currency: money.currency().code().to_string(),
                payee_name,
                note,
                meta,
                ..NewPayment::default()
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The content hash that makes a re-submission idempotent: same sender, batch id and the same
/// payments (amounts compared as exact minor units) → the same hash.
pub fn request_hash(sender_id: &str, batch_id: &str, payments: &[NewPayment]) -> String {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    field(sender_id);
    field(batch_id);
    for p in payments {
        field(&p.reference_id);
        field(p.payee_fa.as_deref().unwrap_or("\u{0}"));
        field(p.payee_id_type.as_deref().unwrap_or("\u{0}"));
        field(p.payee_id_value.as_deref().unwrap_or("\u{0}"));
        field(&p.amount_minor.to_string());
        field(&p.currency);
        field(p.payee_name.as_deref().unwrap_or("\u{0}"));
        field(p.note.as_deref().unwrap_or("\u{0}"));
        field(&p.meta.as_ref().map(|m| m.to_string()).unwrap_or_default());
    }
    hex::encode(h.finalize())
}

/// The payment a validated row becomes once stored: `received`, nothing decided yet. Used where
/// a payment is needed without storing it (dry runs, benchmarks).
pub fn received_payment(
    row: &NewPayment,
    batch_id: &str,
    sender_id: &str,
    now: i64,
) -> Result<crate::payment::Payment, crate::money::MoneyError> {
    Ok(crate::payment::Payment {
        id: row.id.clone(),
        batch_id: batch_id.to_string(),
        seq: 0,
        sender_id: sender_id.to_string(),
        reference_id: row.reference_id.clone(),
        payee_fa: row.payee_fa.clone(),
        payee_id_type: row.payee_id_type.clone(),
        payee_id_value: row.payee_id_value.clone(),
        amount: Money::from_minor(row.amount_minor, Currency::from_stored(&row.currency)?),
        payee_name: row.payee_name.clone(),
        note: row.note.clone(),
        meta: row.meta.clone(),
        attributes: row.attributes.clone(),
        status: crate::payment::Status::Received,
        dfsp: None,
        fallbacks: Vec::new(),
        dfsp_ref: None,
        idempotency_key: None,
        attempts: 0,
        polls: 0,
        reason_code: None,
        reason: None,
        route_version: None,
        adapter_version: None,
        next_at: now,
        created_at: now,
        updated_at: now,
    })
}

pub fn new_batch(sender_id: &str, batch_id: &str, payments: &[NewPayment], now: i64) -> NewBatch {
    NewBatch {
        id: uuid::Uuid::now_v7().to_string(),
        sender_id: sender_id.to_string(),
        batch_id: batch_id.to_string(),
        request_hash: request_hash(sender_id, batch_id, payments),
        created_at: now,
        channel: "native".into(),
        callback_url: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(v: serde_json::Value) -> Item {
        let g = |k: &str| v.get(k).cloned();
        Item {
            reference_id: g("reference_id"),
            payee_fa: g("payee_fa"),
            payee_id_type: g("payee_id_type"),
            payee_id_value: g("payee_id_value"),
            amount: g("amount"),
            currency: g("currency"),
            payee_name: g("payee_name"),
            note: g("note"),
            meta: g("meta"),
        }
    }

    #[test]
    fn every_bad_item_is_listed() {
        let items = vec![
            item(
                json!({"reference_id": "a", "payee_fa": "mobile:1@mtn", "amount": "1.00", "currency": "KES"}),
            ),
            item(
                json!({"reference_id": "a", "payee_fa": "nonsense", "amount": "1.001", "currency": "KES"}),
            ),
            item(json!({"payee_id_type": "MSISDN", "amount": 5, "currency": "XYZ"})),
        ];
        let errs = validate(&items, &Limits::default()).unwrap_err();
        let codes: Vec<(usize, &str)> = errs.iter().map(|e| (e.index, e.code.as_str())).collect();
        assert!(codes.contains(&(1, "reference_id.duplicate")), "{codes:?}");
        assert!(codes.contains(&(1, "payee_fa.invalid")), "{codes:?}");
        assert!(codes.contains(&(1, "amount.scale")), "{codes:?}");
        assert!(codes.contains(&(2, "reference_id.missing")), "{codes:?}");
        assert!(codes.contains(&(2, "payee_id_value.missing")), "{codes:?}");
        assert!(codes.contains(&(2, "currency_code.invalid")), "{codes:?}");
        assert!(!codes.iter().any(|(i, _)| *i == 0), "{codes:?}");
    }

    #[test]
    fn json_number_amounts_are_exact() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"reference_id":"r","payee_fa":"mobile:1@mtn","amount":100.10,"currency":"USD"}"#,
        )
        .expect("json");
        let ok = validate(&[item(v)], &Limits::default()).expect("valid");
        assert_eq!(ok[0].amount_minor, 10010);
    }

    #[test]
    fn hash_changes_with_content() {
        let a = validate(
            &[item(json!({"reference_id": "r", "payee_fa": "mobile:1@mtn", "amount": "1.00", "currency": "KES"}))],
            &Limits::default(),
        )
        .expect("valid");
        let mut b = a.clone();
        b[0].amount_minor += 1;
        assert_eq!(request_hash("s", "b", &a), request_hash("s", "b", &a));
        assert_ne!(request_hash("s", "b", &a), request_hash("s", "b", &b));
        assert_ne!(request_hash("s", "b", &a), request_hash("s", "c", &a));
    }
}

//! Adapter fixtures (`pil test`): small files in `adapters/<id>/tests/` (`.json` or `.toml`)
//! pinning what an adapter script does, run against the real script engine:
//!
//! - a payment (+ optional `ctx`) in → `expect_request` out (`build_request`), or
//!   `expect_status_request` out (`build_status_request`, `null` when it cannot look up);
//! - a payment + `response` in → `expect` out (`parse_response`), or `status_response` in
//!   (`parse_status_response`);
//! - a `callback` in → `expect` out (`parse_callback`; `null` when it should be ignored, a
//!   list when it reports on several payments);
//! - `payments` (a list) in → `expect_batch_request` out (`build_batch_request`), or with a
//!   `batch_response` in → `expect` out (`parse_batch_response`: the outcome for all, and
//!   `items` listing the payments it names on their own, in the order of `payments`).
//!   Payments without an `id` get `…000000000001`, `…000000000002`, ... by position.
//!
//! Expected values are compared exactly, except the string `"<any>"`, which matches anything
//! present (for generated ids and times). Only the keys a fixture names are checked in
//! headers and outcomes; bodies are compared whole. This module runs scripts; it sends
//! nothing and stores nothing.

use std::path::{Path, PathBuf};

use rhai::{Dynamic, Map};
use serde_json::{Value, json};

use crate::executor::{Body, DfspRequest, DfspResponse};
use crate::ingest::{self, Item};
use crate::map::{CallbackMatch, Outcome, Reported};
use crate::script::convert::{json_to_dynamic, payment_map, shared};
use crate::script::{Adapter, Bundle};

/// Matches any value that is present.
pub const ANY: &str = "<any>";
const FIXTURE_PAYMENT_ID: &str = "0190d6a2-0000-7000-8000-000000000001";
const FIXTURE_KEY: &str = "5f0c6c2e-5b9d-4d41-9b1e-6f5d2b1f0a11";
const FIXTURE_NOW: i64 = 1_795_000_000_000;

/// One fixture's result: empty `problems` means it passed.
#[derive(Debug, Clone)]
pub struct FixtureResult {
    pub adapter: String,
    pub file: PathBuf,
    pub name: String,
    pub problems: Vec<String>,
}

impl FixtureResult {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the fixtures of every adapter (or only `only`) found in `adapters_dir`.
pub fn run_all(bundle: &Bundle, adapters_dir: &Path, only: Option<&str>) -> Vec<FixtureResult> {
    let mut results = Vec::new();
    for (id, adapter) in &bundle.adapters {
        if only.is_some_and(|o| o != id) {
            continue;
        }
        results.extend(run_adapter(
            bundle,
            id,
            adapter,
            &adapters_dir.join(id).join("tests"),
        ));
    }
    results
}

/// Runs one adapter's fixtures, in file name order.
pub fn run_adapter(bundle: &Bundle, id: &str, adapter: &Adapter, dir: &Path) -> Vec<FixtureResult> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "toml")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let (name, problems) = match load(&file) {
                Ok(fixture) => {
                    let name = fixture
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or(stem, str::to_string);
                    (name, run_one(bundle, adapter, &fixture))
                }
                Err(e) => (stem, vec![e]),
            };
            FixtureResult {
                adapter: id.to_string(),
                file,
                name,
                problems,
            }
        })
        .collect()
}

fn load(file: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let value: Value = if file.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| format!("invalid TOML: {e}"))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err("a fixture must be an object".into())
    }
}

/// The script view of the fixture's payment: validated like a submitted payment, then given
/// the fixture's (or a fixed) id, idempotency key, DFSP reference and attributes.
fn payment(fixture: &Value, adapter_id: &str) -> Result<Dynamic, String> {
    let p = fixture.get("payment").cloned().unwrap_or_else(|| json!({}));
    payment_of(&p, FIXTURE_PAYMENT_ID, adapter_id)
}

/// The fixture's `payments` list, each as [`payment`] makes it.
fn payments(fixture: &Value, adapter_id: &str) -> Result<rhai::Array, String> {
    let list = fixture
        .get("payments")
        .and_then(Value::as_array)
        .ok_or("'payments' must be a list of payments")?;
    let prefix = &FIXTURE_PAYMENT_ID[..FIXTURE_PAYMENT_ID.len() - 12];
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            payment_of(p, &format!("{prefix}{:012}", i + 1), adapter_id)
                .map(|p| crate::script::convert::unshared(&p))
                .map_err(|e| format!("payments[{i}]: {e}"))
        })
        .collect()
}

fn payment_of(p: &Value, default_id: &str, adapter_id: &str) -> Result<Dynamic, String> {
    let g = |k: &str| p.get(k).cloned();
    let item = Item {
        reference_id: g("reference_id").or(Some(json!("fixture-1"))),
        payee_fa: g("payee_fa"),
        payee_id_type: g("payee_id_type"),
        payee_id_value: g("payee_id_value"),
        amount: g("amount").or(Some(json!("100"))),
        currency: g("currency").or(Some(json!("KES"))),
        payee_name: g("payee_name"),
        note: g("note"),
        meta: g("meta"),
    };
    let rows = ingest::validate(&[item], &ingest::Limits::default()).map_err(|errs| {
        errs.iter()
            .map(|e| format!("payment.{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let mut row = rows
        .into_iter()
        .next()
        .ok_or("payment: nothing validated")?;
    row.id = p
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(default_id)
        .to_string();
    row.attributes = g("attributes");
    let mut payment = ingest::received_payment(&row, "fixture-batch", "fixture", FIXTURE_NOW)
        .map_err(|e| format!("payment: {e}"))?;
    payment.dfsp = Some(adapter_id.to_string());
    payment.idempotency_key = Some(
        p.get("idempotency_key")
            .and_then(Value::as_str)
            .unwrap_or(FIXTURE_KEY)
            .to_string(),
    );
    payment.dfsp_ref = p
        .get("dfsp_ref")
        .and_then(Value::as_str)
        .map(str::to_string);
    payment.attempts = p.get("attempts").and_then(Value::as_i64).unwrap_or(0);
    Ok(shared(payment_map(&payment)))
}

fn ctx(adapter: &Adapter, fixture: &Value) -> Dynamic {
    let c = fixture.get("ctx").cloned().unwrap_or_else(|| json!({}));
    adapter.request_ctx(
        c.get("now").and_then(Value::as_i64).unwrap_or(FIXTURE_NOW),
        c.get("attempt").and_then(Value::as_i64).unwrap_or(1),
        Some(
            c.get("idempotency_key")
                .and_then(Value::as_str)
                .unwrap_or(FIXTURE_KEY),
        ),
        Some(
            c.get("callback_url")
                .and_then(Value::as_str)
                .unwrap_or("http://pil.test/callbacks/fixture")
                .to_string(),
        ),
    )
}

fn response(v: &Value) -> Result<DfspResponse, String> {
    let body = match v.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let status = match v.get("status") {
        None => 200,
        Some(s) => s
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (100..600).contains(s))
            .ok_or_else(|| format!("status must be an HTTP status code, got {s}"))?,
    };
    Ok(DfspResponse {
        status,
        headers: v
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        body,
    })
}

fn request_json(r: &DfspRequest) -> Value {
    let body = match &r.body {
        None => Value::Null,
        Some(Body::Json(text)) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        Some(Body::Text { text, .. }) => json!(text),
    };
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), json!(v)))
        .collect();
    json!({"method": r.method.as_str(), "path": r.path, "headers": headers, "body": body,
           "idempotency_key": r.idempotency_key})
}

fn outcome_json(o: &Outcome) -> Value {
    let status = match o.status {
        Reported::Accepted => "accepted",
        Reported::Succeeded => "succeeded",
        Reported::Failed => "failed",
        Reported::Pending => "pending",
        Reported::Unknown => "unknown",
    };
    json!({"status": status, "dfsp_ref": o.dfsp_ref, "reason_code": o.reason_code,
           "reason": o.reason, "not_executed": o.not_executed, "retry": o.retry,
           "next": o.next.as_ref().map(request_json)})
}

fn run_one(bundle: &Bundle, adapter: &Adapter, f: &Value) -> Vec<String> {
    let engine = &bundle.engine;
    let id = adapter.config.id.as_str();
    let mut problems = Vec::new();
    let payment = || payment(f, id);
    let result: Result<(), String> = (|| {
        if let Some(expected) = f.get("expect_batch_request") {
            let req = adapter
                .build_batch_request(engine, payments(f, id)?, ctx(adapter, f))
                .map_err(|e| e.to_string())?;
            compare_request(expected, &request_json(&req), &mut problems);
        } else if let Some(r) = f.get("batch_response") {
            let expected = f
                .get("expect")
                .ok_or("a batch_response fixture needs 'expect'")?;
            let list = payments(f, id)?;
            let ids: Vec<String> = list
                .iter()
                .filter_map(|p| {
                    p.read_lock::<Map>()
                        .and_then(|m| crate::script::map_str(&m, "id"))
                })
                .collect();
            let out = adapter
                .parse_batch_response(engine, list, &response(r)?)
                .map_err(|e| e.to_string())?;
            let mut actual = outcome_json(&out.all);
            actual["items"] = ids
                .iter()
                .filter_map(|pid| {
                    out.items.get(pid).map(|o| {
                        let mut v = outcome_json(o);
                        v["payment_id"] = json!(pid);
                        v
                    })
                })
                .collect();
            compare_subset("", expected, &actual, &mut problems);
        } else if let Some(expected) = f.get("expect_request") {
            let req = adapter
                .build_request(engine, payment()?, ctx(adapter, f))
                .map_err(|e| e.to_string())?;
            compare_request(expected, &request_json(&req), &mut problems);
        } else if let Some(expected) = f.get("expect_status_request") {
            let req = adapter
                .build_status_request(engine, payment()?, ctx(adapter, f))
                .map_err(|e| e.to_string())?;
            match (expected, req) {
                (Value::Null, None) => {}
                (Value::Null, Some(r)) => problems.push(format!(
                    "expected no status request (the payment cannot be looked up), got {}",
                    request_json(&r)
                )),
                (_, None) => problems.push("expected a status request, got none".into()),
                (e, Some(r)) => compare_request(e, &request_json(&r), &mut problems),
            }
        } else if let Some(r) = f.get("response").or_else(|| f.get("status_response")) {
            let expected = f.get("expect").ok_or("a response fixture needs 'expect'")?;
            let out = if f.get("response").is_some() {
                adapter.parse_response(engine, payment()?, &response(r)?)
            } else {
                adapter.parse_status_response(engine, payment()?, &response(r)?)
            }
            .map_err(|e| e.to_string())?;
            compare_subset("", expected, &outcome_json(&out), &mut problems);
        } else if let Some(c) = f.get("callback") {
            let expected = f.get("expect").ok_or("a callback fixture needs 'expect'")?;
            let mut req = Map::new();
            req.insert(
                "method".into(),
                c.get("method")
                    .and_then(Value::as_str)
                    .unwrap_or("POST")
                    .into(),
            );
            req.insert(
                "path".into(),
                c.get("path").and_then(Value::as_str).unwrap_or("").into(),
            );
            req.insert(
                "headers".into(),
                json_to_dynamic(c.get("headers").unwrap_or(&json!({}))),
            );
            let body = response(c)?.body;
            req.insert("body".into(), crate::map::body_dynamic(&body));
            let got = adapter
                .parse_callback(engine, Dynamic::from_map(req))
                .map_err(|e| e.to_string())?;
            let mut reports: Vec<Value> = got
                .into_iter()
                .map(|(m, o)| {
                    let mut v = outcome_json(&o);
                    v["match"] = match m {
                        CallbackMatch::PaymentId(x) => json!({"payment_id": x}),
                        CallbackMatch::DfspRef(x) => json!({"dfsp_ref": x}),
                        CallbackMatch::ReferenceId(x) => json!({"reference_id": x}),
                    };
                    v
                })
                .collect();
            let actual = match (expected, reports.len()) {
                (_, 0) => Value::Null,
                (Value::Array(_), _) => Value::Array(reports),
                (_, 1) => reports.remove(0),
                _ => Value::Array(reports),
            };
            if expected.is_null() || actual.is_null() {
                if expected != &actual {
                    problems.push(format!("expected {expected}, got {actual}"));
                }
            } else {
                compare_subset("", expected, &actual, &mut problems);
            }
        } else {
            return Err("a fixture needs expect_request, expect_status_request, response, status_response, callback, expect_batch_request or batch_response".into());
        }
        Ok(())
    })();
    if let Err(e) = result {
        problems.push(e);
    }
    problems
}

fn compare_request(expected: &Value, actual: &Value, problems: &mut Vec<String>) {
    for key in ["method", "path", "idempotency_key"] {
        if let Some(e) = expected.get(key) {
            compare_exact(key, e, &actual[key], problems);
        }
    }
    if let Some(Value::Object(headers)) = expected.get("headers") {
        for (name, e) in headers {
            let a = &actual["headers"][name.to_ascii_lowercase()];
            compare_exact(&format!("headers.{name}"), e, a, problems);
        }
    }
    if let Some(e) = expected.get("body") {
        compare_exact("body", e, &actual["body"], problems);
    }
}

/// Every key of `expected` must match; other keys of `actual` are not checked.
fn compare_subset(path: &str, expected: &Value, actual: &Value, problems: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                compare_subset(&p, ev, a.get(k).unwrap_or(&Value::Null), problems);
            }
        }
        // Lists of outcomes (callback reports, batch items): each element as a subset.
        (Value::Array(e), Value::Array(a)) if e.iter().all(Value::is_object) => {
            if e.len() != a.len() {
                problems.push(format!(
                    "{path}: expected {} entries, got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare_subset(&format!("{path}[{i}]"), ev, av, problems);
            }
        }
        _ => compare_exact(path, expected, actual, problems),
    }
}

/// Equal, with `"<any>"` matching anything present; on a mismatch, every differing path.
fn compare_exact(path: &str, expected: &Value, actual: &Value, problems: &mut Vec<String>) {
    match (expected, actual) {
        (Value::String(s), Value::Null) if s == ANY => {
            problems.push(format!("{path}: expected a value, got nothing"));
        }
        (Value::String(s), _) if s == ANY => {}
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                compare_exact(
                    &format!("{path}.{k}"),
                    ev,
                    a.get(k).unwrap_or(&Value::Null),
                    problems,
                );
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                problems.push(format!("{path}.{k}: not expected, got {}", a[k]));
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare_exact(&format!("{path}[{i}]"), ev, av, problems);
            }
        }
        (e, a) if numbers_equal(e, a) => {}
        (e, a) if e != a => problems.push(format!("{path}: expected {e}, got {a}")),
        _ => {}
    }
}

/// JSON numbers compare by value (`1.50` = `1.5`), as money should.
fn numbers_equal(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => {
            let parse =
                |n: &serde_json::Number| rust_decimal::Decimal::from_str_exact(&n.to_string()).ok();
            matches!((parse(x), parse(y)), (Some(p), Some(q)) if p == q)
        }
        _ => false,
    }
}

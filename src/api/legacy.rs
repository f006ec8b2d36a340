//! The legacy PIL API (`pil-disbursement-api-v0.1.0`), as the OpenG2P Odoo module
//! `g2p_payment_interop_layer` calls it: `POST /disbursement`, `GET /disbursement/{id}`,
//! `POST /disbursementCheck`, `GET /health`.
//!
//! That module matches results by position, sends amounts as JSON numbers, waits about 20 s
//! and never polls. So every payee gets a result in request order (a bad payee is stored
//! `rejected` rather than failing the whole disbursement), and `POST` waits for final
//! statuses up to a deadline. Payees are named by id type + value and resolved to a financial
//! address through the payee directory. This module translates; ingest, routing and dispatch
//! do the work.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use crate::clock::now_ms;
use crate::directory;
use crate::ingest::{self, Item};
use crate::money::format_canonical;
use crate::payment::Payment;
use crate::store::{BatchInsert, BatchRecord, NewBatch, NewPayment, Rejection};

/// The spec's limit on payees per request.
pub const MAX_PAYEES: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisbursementRequest {
    pub disbursement_id: Option<Value>,
    pub note: Option<Value>,
    /// `[{payeeIdType, payeeIdValue, amount, currency}]`; `amount` as a string or a JSON number.
    #[schema(value_type = Vec<Object>)]
    pub payee_list: Option<Vec<Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayeeResult {
    pub payee_id_type: String,
    pub payee_id_value: String,
    pub amount: String,
    pub currency: String,
    /// RECEIVED, PENDING, COMPLETED, REJECTED or ABORTED.
    pub status: &'static str,
    pub amount_debited: String,
    pub amount_credited: String,
    /// `%Y-%m-%dT%H:%M:%S.%fZ` (UTC) of the payment's last change.
    pub timestamp: String,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisbursementResponse {
    pub disbursement_id: String,
    pub payee_results: Vec<PayeeResult>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

fn text_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// The `(payeeIdType, payeeIdValue)` pairs to look up in the directory.
fn directory_keys(payees: &[Value]) -> Vec<(String, String)> {
    payees
        .iter()
        .filter_map(|p| {
            Some((
                text_of(p.get("payeeIdType"))?,
                text_of(p.get("payeeIdValue"))?,
            ))
        })
        .collect()
}

/// The content a replay must match: payees as sent (amounts compared exactly) and the note.
fn request_hash(id: &str, note: Option<&str>, payees: &[Value]) -> String {
    let mut h = Sha256::new();
    let canonical: Vec<Value> = payees
        .iter()
        .map(|p| {
            let amount = match p.get("amount") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                other => other.map(Value::to_string).unwrap_or_default(),
            };
            // 100, 100.0 and "100.00" are the same amount.
            let amount = rust_decimal::Decimal::from_str_exact(&amount)
                .map(|d| d.normalize().to_string())
                .unwrap_or(amount);
            serde_json::json!([
                p.get("payeeIdType"),
                p.get("payeeIdValue"),
                amount,
                p.get("currency")
            ])
        })
        .collect();
    h.update(id.as_bytes());
    h.update([0]);
    h.update(note.unwrap_or("\u{0}").as_bytes());
    h.update([0]);
    h.update(Value::Array(canonical).to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Turns the payee list into rows: each payee validated on its own and resolved through the
/// directory; a bad or unresolvable payee becomes a `rejected` row with its reason.
async fn rows(
    state: &AppState,
    id: &str,
    note: Option<&str>,
    payees: &[Value],
) -> Result<Vec<NewPayment>, ApiError> {
    let limits = ingest::Limits {
        max_amount: state.settings.max_amount,
        max_payments: MAX_PAYEES,
    };
    let found = directory::resolve(state.store.as_ref(), &directory_keys(payees)).await?;
    let mut out = Vec::with_capacity(payees.len());
    for (i, p) in payees.iter().enumerate() {
        let item = Item {
            reference_id: Some(Value::String(format!("{id}#{i}"))),
            payee_id_type: p.get("payeeIdType").cloned(),
            payee_id_value: p.get("payeeIdValue").cloned(),
            amount: p.get("amount").cloned(),
            currency: p.get("currency").cloned(),
            note: note.map(|n| Value::String(n.to_string())),
            ..Item::default()
        };
        let mut row = match ingest::validate(std::slice::from_ref(&item), &limits) {
            Ok(mut rows) => rows.remove(0),
            Err(errors) => {
                let currency = text_of(p.get("currency"))
                    .filter(|c| crate::money::Currency::from_code(c).is_ok())
                    .unwrap_or_else(|| crate::money::Currency::NONE.code().into());
                NewPayment {
                    id: uuid::Uuid::now_v7().to_string(),
                    reference_id: format!("{id}#{i}"),
                    payee_id_type: text_of(p.get("payeeIdType")),
                    payee_id_value: text_of(p.get("payeeIdValue")),
                    currency,
                    note: note.map(str::to_string),
                    rejected: Some(Rejection {
                        code: errors[0].code.clone(),
                        message: errors
                            .iter()
                            .map(|e| format!("{}: {}", e.field, e.message))
                            .collect::<Vec<_>>()
                            .join("; "),
                    }),
                    ..NewPayment::default()
                }
            }
        };
        if row.rejected.is_none() {
            let key = (
                directory::normalize_type(row.payee_id_type.as_deref().unwrap_or_default()),
                row.payee_id_value.clone().unwrap_or_default(),
            );
            match found.get(&key) {
                Some(entry) => {
                    row.payee_fa = Some(entry.fa.clone());
                    row.attributes = Some(Value::Object(entry.attributes.clone()));
                }
                None => {
                    row.rejected = Some(Rejection {
                        code: "payee.unresolvable".into(),
                        message: format!("payee {} {} is not in the payee directory", key.0, key.1),
                    });
                }
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// `%Y-%m-%dT%H:%M:%S.%fZ`, as the Odoo module parses it.
fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn result_of(p: &Payment) -> PayeeResult {
    let amount = format_canonical(p.amount.to_decimal());
    let paid = if p.status == crate::payment::Status::Succeeded {
        amount.clone()
    } else {
        "0".to_string()
    };
    let errors = if p.status.is_final() && p.status != crate::payment::Status::Succeeded {
        vec![format!(
            "{}: {}",
            p.reason_code.as_deref().unwrap_or(p.status.as_str()),
            p.reason.as_deref().unwrap_or("no reason given")
        )]
    } else {
        Vec::new()
    };
    PayeeResult {
        payee_id_type: p.payee_id_type.clone().unwrap_or_default(),
        payee_id_value: p.payee_id_value.clone().unwrap_or_default(),
        amount,
        currency: p.amount.currency().code().to_string(),
        status: p.status.legacy_pil(),
        amount_debited: paid.clone(),
        amount_credited: paid,
        timestamp: timestamp(p.updated_at),
        errors,
    }
}

async fn view(state: &AppState, batch: &BatchRecord) -> Result<DisbursementResponse, ApiError> {
    let payments = state.store.batch_payments_in_order(&batch.id).await?;
    Ok(DisbursementResponse {
        disbursement_id: batch.batch_id.clone(),
        payee_results: payments.iter().map(result_of).collect(),
    })
}

/// Submit a disbursement. Answers with one result per payee, in request order, once all are
/// final or after the configured deadline (PENDING for the rest). Replaying the same body
/// returns the current view and sends nothing again.
#[utoipa::path(
    post, path = "/disbursement", tag = "legacy",
    request_body = DisbursementRequest,
    responses(
        (status = 200, description = "One result per payee, in request order", body = DisbursementResponse),
        (status = 400, description = "Malformed request (no disbursementId, 0 or more than 1000 payees)", body = super::error::ErrorBody),
        (status = 409, description = "The disbursementId was used with a different body", body = super::error::ErrorBody),
    )
)]
pub async fn disburse(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DisbursementResponse>, ApiError> {
    let body = body.map_err(|_| ApiError::TooLarge {
        limit: state.settings.max_body_bytes,
    })?;
    let req: DisbursementRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(
            "invalid_json",
            format!("body is not a disbursement request: {e}"),
        )
    })?;
    let id = match &req.disbursement_id {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= ingest::MAX_REFERENCE_LEN => {
            s.trim().to_string()
        }
        _ => {
            return Err(bad(
                "disbursementId.invalid",
                "disbursementId is required: a string of 1-128 characters",
            ));
        }
    };
    let note = match &req.note {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("note.invalid", "note must be a string")),
    };
    let payees = req.payee_list.unwrap_or_default();
    if payees.is_empty() || payees.len() > MAX_PAYEES {
        return Err(bad(
            "payeeList.count",
            format!(
                "payeeList must hold 1 to {MAX_PAYEES} payees, this one has {}",
                payees.len()
            ),
        ));
    }
    let sender = state.settings.legacy_sender_id.clone();
    let hash = request_hash(&id, note.as_deref(), &payees);
    if let Some(existing) = state.store.find_batch(&sender, &id).await? {
        return replay(&state, existing, &hash).await;
    }
    let rows = rows(&state, &id, note.as_deref(), &payees).await?;
    let now = now_ms();
    let batch = NewBatch {
        id: uuid::Uuid::now_v7().to_string(),
        sender_id: sender,
        batch_id: id,
        request_hash: hash.clone(),
        created_at: now,
        channel: "legacy".into(),
        callback_url: None,
    };
    let created = match state.store.insert_batch(&batch, &rows).await? {
        BatchInsert::Created(b) => b,
        BatchInsert::Replayed(b) | BatchInsert::Conflict(b) => {
            return replay(&state, b, &hash).await;
        }
        BatchInsert::DuplicateReferences(refs) => {
            return Err(ApiError::Conflict {
                code: "reference_id.duplicate",
                message: "payments of this disbursement already exist".into(),
                details: serde_json::json!({ "references": refs }),
            });
        }
    };
    state.wake.notify_waiters();
    let deadline = Duration::from_millis(state.settings.legacy_deadline_ms);
    super::wait_final(state.store.as_ref(), &created.id, deadline).await?;
    Ok(Json(view(&state, &created).await?))
}

async fn replay(
    state: &AppState,
    existing: BatchRecord,
    hash: &str,
) -> Result<Json<DisbursementResponse>, ApiError> {
    if existing.request_hash != hash {
        return Err(ApiError::Conflict {
            code: "disbursement_conflict",
            message: format!(
                "disbursementId '{}' was already submitted with a different body",
                existing.batch_id
            ),
            details: Value::Null,
        });
    }
    Ok(Json(view(state, &existing).await?))
}

/// The current view of a disbursement.
#[utoipa::path(
    get, path = "/disbursement/{disbursementId}", tag = "legacy",
    params(("disbursementId" = String, Path, description = "The id the disbursement was submitted with")),
    responses(
        (status = 200, description = "One result per payee, in request order", body = DisbursementResponse),
        (status = 404, description = "No such disbursement", body = super::error::ErrorBody),
    )
)]
pub async fn get_disbursement(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DisbursementResponse>, ApiError> {
    let batch = state
        .store
        .find_batch(&state.settings.legacy_sender_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            message: format!("no disbursement '{id}'"),
        })?;
    Ok(Json(view(&state, &batch).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckRequest {
    pub request_id: Option<Value>,
    /// `[{payeeIdType, payeeIdValue}]`, optionally with `amount` and `currency` to check the
    /// DFSPs' currency and amount limits too.
    #[schema(value_type = Vec<Object>)]
    pub payee_list: Option<Vec<Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    pub payee_id_type: String,
    pub payee_id_value: String,
    pub is_payable: bool,
    pub timestamp: String,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResponse {
    pub request_id: String,
    pub payee_results: Vec<CheckResult>,
}

/// Whether each payee could be paid now: in the directory, routed by the rules to a loaded
/// DFSP whose circuit is not open. Pays nothing and stores nothing.
#[utoipa::path(
    post, path = "/disbursementCheck", tag = "legacy",
    request_body = CheckRequest,
    responses(
        (status = 200, description = "One result per payee, in request order", body = CheckResponse),
        (status = 400, description = "Malformed request", body = super::error::ErrorBody),
    )
)]
pub async fn check(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CheckResponse>, ApiError> {
    let body = body.map_err(|_| ApiError::TooLarge {
        limit: state.settings.max_body_bytes,
    })?;
    let req: CheckRequest = serde_json::from_slice(&body)
        .map_err(|e| bad("invalid_json", format!("body is not a check request: {e}")))?;
    let request_id = match &req.request_id {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(bad("requestId.invalid", "requestId is required (a string)")),
    };
    let payees = req.payee_list.unwrap_or_default();
    if payees.is_empty() || payees.len() > MAX_PAYEES {
        return Err(bad(
            "payeeList.count",
            format!("payeeList must hold 1 to {MAX_PAYEES} payees"),
        ));
    }
    let found = directory::resolve(state.store.as_ref(), &directory_keys(&payees)).await?;
    let live = state.live.load_full();
    let now = now_ms();
    let route_ctx = live.routing_ctx(now);
    let mut results = Vec::with_capacity(payees.len());
    for p in &payees {
        let id_type = text_of(p.get("payeeIdType")).unwrap_or_default();
        let id_value = text_of(p.get("payeeIdValue")).unwrap_or_default();
        let errors = payability(
            &live,
            &route_ctx,
            &found,
            p,
            (&id_type, &id_value),
            now,
            state.settings.max_amount,
        );
        results.push(CheckResult {
            payee_id_type: id_type,
            payee_id_value: id_value,
            is_payable: errors.is_empty(),
            timestamp: timestamp(now),
            errors,
        });
    }
    Ok(Json(CheckResponse {
        request_id,
        payee_results: results,
    }))
}

/// The reasons a payee cannot be paid now (empty: payable).
fn payability(
    live: &crate::route::Live,
    route_ctx: &rhai::Dynamic,
    found: &HashMap<(String, String), crate::store::DirectoryEntry>,
    p: &Value,
    (id_type, id_value): (&str, &str),
    now: i64,
    max_amount: Option<rust_decimal::Decimal>,
) -> Vec<String> {
    if id_type.is_empty() || id_value.is_empty() {
        return vec!["payee.invalid: payeeIdType and payeeIdValue are required strings".into()];
    }
    let Some(entry) = found.get(&(directory::normalize_type(id_type), id_value.to_string())) else {
        return vec![format!(
            "payee.unresolvable: payee {id_type} {id_value} is not in the payee directory"
        )];
    };
    // Without an amount the DFSPs' currency and amount limits are not checked.
    let given = p.get("amount").is_some() || p.get("currency").is_some();
    let item = Item {
        reference_id: Some(Value::String("check".into())),
        payee_fa: Some(Value::String(entry.fa.clone())),
        payee_id_type: Some(Value::String(id_type.to_string())),
        payee_id_value: Some(Value::String(id_value.to_string())),
        amount: p.get("amount").cloned(),
        currency: p.get("currency").cloned(),
        ..Item::default()
    };
    let limits = ingest::Limits {
        max_amount,
        max_payments: 1,
    };
    let row = if given {
        match ingest::validate(std::slice::from_ref(&item), &limits) {
            Ok(mut rows) => rows.remove(0),
            Err(errors) => {
                return errors
                    .iter()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .collect();
            }
        }
    } else {
        NewPayment {
            id: "check".into(),
            reference_id: "check".into(),
            payee_fa: Some(entry.fa.clone()),
            payee_id_type: Some(id_type.to_string()),
            payee_id_value: Some(id_value.to_string()),
            currency: crate::money::Currency::NONE.code().into(),
            ..NewPayment::default()
        }
    };
    let mut row = row;
    row.attributes = Some(Value::Object(entry.attributes.clone()));
    let payment = match ingest::received_payment(&row, "check", "check", now) {
        Ok(p) => p,
        Err(e) => return vec![format!("{}: {e}", e.reason_code())],
    };
    let map = crate::script::convert::payment_dynamic(&payment);
    let decision = crate::route::route(
        &live.bundle,
        map,
        route_ctx.clone(),
        given.then_some(&payment.amount),
    );
    match decision {
        Ok(crate::route::Decision::Dfsps(ids)) => {
            if live.available(&ids, now).is_empty() {
                vec![format!(
                    "dfsp.unavailable: every DFSP for this payee is down ({})",
                    ids.join(", ")
                )]
            } else {
                Vec::new()
            }
        }
        Ok(crate::route::Decision::Reject { code, message }) => vec![format!("{code}: {message}")],
        Err(e) => vec![format!("script_error: {e}")],
    }
}

/// Health, as the legacy spec names it.
#[utoipa::path(get, path = "/health", tag = "legacy", responses((status = 200, description = "Up")))]
pub async fn health() -> Json<Value> {
    Json(serde_json::json!({"status": "UP"}))
}

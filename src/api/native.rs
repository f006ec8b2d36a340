//! PIL's own REST API (`/api/v1`): submit batches, read batches and payments with their
//! history, cancel a payment before it is sent. Amounts are decimal strings.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::clock::{now_ms, rfc3339};
use crate::ingest::{self, Item};
use crate::payment::{Change, Payment, Status};
use crate::store::{Applied, BatchInsert, BatchRecord, PaymentFilter};

/// A batch of payments to make.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// The sender's id for this batch; with `sender_id`, the idempotency key.
    pub batch_id: String,
    /// Who sends it (a programme system). Defaults to `default`.
    pub sender_id: Option<String>,
    pub payments: Vec<PaymentItem>,
}

/// One payment. Give `payee_fa`, or `payee_id_type` + `payee_id_value`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PaymentItem {
    /// The sender's unique id for this payment.
    #[schema(value_type = String)]
    pub reference_id: Option<serde_json::Value>,
    /// Financial address `scheme:id@provider`, e.g. `mobile:256772123456@mtn`.
    #[schema(value_type = Option<String>)]
    pub payee_fa: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub payee_id_type: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub payee_id_value: Option<serde_json::Value>,
    /// Decimal string in major units, e.g. "100.50"; no more decimals than the currency has.
    #[schema(value_type = String, example = "100.50")]
    pub amount: Option<serde_json::Value>,
    /// ISO 4217 code.
    #[schema(value_type = String, example = "KES")]
    pub currency: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub payee_name: Option<serde_json::Value>,
    #[schema(value_type = Option<String>)]
    pub note: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
}

impl From<PaymentItem> for Item {
    fn from(p: PaymentItem) -> Item {
        Item {
            reference_id: p.reference_id,
            payee_fa: p.payee_fa,
            payee_id_type: p.payee_id_type,
            payee_id_value: p.payee_id_value,
            amount: p.amount,
            currency: p.currency,
            payee_name: p.payee_name,
            note: p.note,
            meta: p.meta,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    /// PIL's id for the batch (use it in `/api/v1/batches/{id}`).
    pub id: String,
    pub batch_id: String,
    pub sender_id: String,
    pub payment_count: i64,
    pub status_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusTotalView {
    pub status: Status,
    pub currency: String,
    pub count: i64,
    /// Sum of amounts, decimal string.
    pub amount: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    pub id: String,
    pub batch_id: String,
    pub sender_id: String,
    pub created_at: String,
    pub payment_count: i64,
    /// Payments in a final status.
    pub final_count: i64,
    /// Percentage of payments in a final status, 0-100.
    pub progress_percent: i64,
    pub totals: Vec<StatusTotalView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub at: String,
    pub from: Option<Status>,
    pub to: Status,
    pub reason_code: Option<String>,
    pub detail: Option<String>,
    pub route_version: Option<String>,
    pub adapter_version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub kind: String,
    pub dfsp: String,
    pub method: String,
    pub url: String,
    pub idempotency_key: Option<String>,
    pub started_at: String,
    pub duration_ms: i64,
    pub http_status: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub batch_id: String,
    pub sender_id: String,
    pub reference_id: String,
    pub payee_fa: Option<String>,
    pub payee_id_type: Option<String>,
    pub payee_id_value: Option<String>,
    /// Decimal string with the currency's scale.
    pub amount: String,
    pub currency: String,
    pub payee_name: Option<String>,
    pub note: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<serde_json::Value>,
    pub status: Status,
    pub dfsp: Option<String>,
    pub dfsp_ref: Option<String>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub attempts: i64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<EventView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_attempts: Option<Vec<AttemptView>>,
}

impl PaymentView {
    pub fn of(p: &Payment) -> PaymentView {
        PaymentView {
            id: p.id.clone(),
            batch_id: p.batch_id.clone(),
            sender_id: p.sender_id.clone(),
            reference_id: p.reference_id.clone(),
            payee_fa: p.payee_fa.clone(),
            payee_id_type: p.payee_id_type.clone(),
            payee_id_value: p.payee_id_value.clone(),
            amount: p.amount.to_decimal().to_string(),
            currency: p.amount.currency().code().to_string(),
            payee_name: p.payee_name.clone(),
            note: p.note.clone(),
            meta: p.meta.clone(),
            status: p.status,
            dfsp: p.dfsp.clone(),
            dfsp_ref: p.dfsp_ref.clone(),
            reason_code: p.reason_code.clone(),
            reason: p.reason.clone(),
            attempts: p.attempts,
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
            history: None,
            dispatch_attempts: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentPage {
    pub payments: Vec<PaymentView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// Only payments in this status.
    pub status: Option<String>,
    /// Only payments routed to this DFSP (adapter id).
    pub dfsp: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<i64>,
}

async fn payment_or_404(state: &AppState, id: &str) -> Result<Payment, ApiError> {
    state
        .store
        .get_payment(id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            message: format!("no payment '{id}'"),
        })
}

async fn batch_or_404(state: &AppState, id: &str) -> Result<BatchRecord, ApiError> {
    state
        .store
        .get_batch(id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            message: format!("no batch '{id}'"),
        })
}

fn accepted_body(b: &BatchRecord) -> BatchAccepted {
    BatchAccepted {
        id: b.id.clone(),
        batch_id: b.batch_id.clone(),
        sender_id: b.sender_id.clone(),
        payment_count: b.payment_count,
        status_url: format!("/api/v1/batches/{}", b.id),
    }
}

/// Submit a batch of payments.
#[utoipa::path(
    post, path = "/api/v1/batches", request_body = BatchRequest, tag = "batches",
    responses(
        (status = 202, description = "Stored; payments will be sent", body = BatchAccepted),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 409, description = "Same batch id with different content", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid payments; nothing stored", body = ErrorBody),
    )
)]
pub async fn submit_batch(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let body = body.map_err(|_| ApiError::TooLarge {
        limit: state.settings.max_body_bytes,
    })?;
    let req: BatchRequest = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        code: "invalid_json",
        message: format!("body is not a valid batch: {e}"),
    })?;
    let batch_id = req.batch_id.trim();
    if batch_id.is_empty() || batch_id.len() > ingest::MAX_REFERENCE_LEN {
        return Err(ApiError::Unprocessable {
            code: "validation_failed",
            message: "batch_id must be 1-128 characters".into(),
            details: serde_json::json!({"items": [{"index": null, "field": "batch_id", "code": "batch_id.invalid", "message": "batch_id must be 1-128 characters"}]}),
        });
    }
    let sender_id = req.sender_id.clone().unwrap_or_else(|| "default".into());
    if req.payments.is_empty() || req.payments.len() > state.settings.max_batch_payments {
        return Err(ApiError::Unprocessable {
            code: "validation_failed",
            message: format!(
                "a batch holds 1 to {} payments, this one has {}",
                state.settings.max_batch_payments,
                req.payments.len()
            ),
            details: serde_json::json!({"items": [{"index": null, "field": "payments", "code": "payments.count", "message": "wrong number of payments"}]}),
        });
    }
    let items: Vec<Item> = req.payments.into_iter().map(Item::from).collect();
    let limits = ingest::Limits {
        max_amount: state.settings.max_amount,
        max_payments: state.settings.max_batch_payments,
    };
    let payments = ingest::validate(&items, &limits).map_err(|errors| ApiError::Unprocessable {
        code: "validation_failed",
        message: format!(
            "{} problem(s) in {} payment(s); nothing was stored",
            errors.len(),
            errors
                .iter()
                .map(|e| e.index)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        ),
        details: serde_json::json!({ "items": errors }),
    })?;
    let batch = ingest::new_batch(&sender_id, batch_id, &payments, now_ms());
    match state.store.insert_batch(&batch, &payments).await? {
        BatchInsert::Created(b) => {
            state.wake.notify_waiters();
            Ok((StatusCode::ACCEPTED, Json(accepted_body(&b))))
        }
        BatchInsert::Replayed(b) => Ok((StatusCode::ACCEPTED, Json(accepted_body(&b)))),
        BatchInsert::Conflict(b) => Err(ApiError::Conflict {
            code: "batch_conflict",
            message: format!(
                "batch '{}' of sender '{}' was already submitted with different content",
                b.batch_id, b.sender_id
            ),
            details: serde_json::json!({ "id": b.id }),
        }),
        BatchInsert::DuplicateReferences(refs) => {
            let index_of = |r: &str| {
                items
                    .iter()
                    .position(|i| i.reference_id.as_ref().and_then(|v| v.as_str()) == Some(r))
            };
            let details: Vec<_> = refs
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "index": index_of(r),
                        "field": "reference_id",
                        "code": "reference_id.duplicate",
                        "message": format!("reference_id '{r}' was already used by sender '{sender_id}'"),
                    })
                })
                .collect();
            Err(ApiError::Unprocessable {
                code: "validation_failed",
                message: format!(
                    "{} reference id(s) were already used by this sender; nothing was stored",
                    refs.len()
                ),
                details: serde_json::json!({ "items": details }),
            })
        }
    }
}

/// A batch's progress: counts and amounts per status.
#[utoipa::path(
    get, path = "/api/v1/batches/{id}", tag = "batches",
    params(("id" = String, Path, description = "PIL batch id")),
    responses((status = 200, body = BatchView), (status = 404, body = ErrorBody))
)]
pub async fn get_batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let b = batch_or_404(&state, &id).await?;
    let totals = state.store.batch_totals(&id).await?;
    let final_count: i64 = totals
        .iter()
        .filter(|t| t.status.is_final())
        .map(|t| t.count)
        .sum();
    let totals = totals
        .into_iter()
        .map(|t| StatusTotalView {
            status: t.status,
            amount: crate::money::Currency::from_code(&t.currency)
                .map(|c| {
                    crate::money::Money::from_minor(t.amount_minor, c)
                        .to_decimal()
                        .to_string()
                })
                .unwrap_or_else(|_| t.amount_minor.to_string()),
            currency: t.currency,
            count: t.count,
        })
        .collect();
    Ok(Json(BatchView {
        progress_percent: if b.payment_count == 0 {
            100
        } else {
            final_count * 100 / b.payment_count
        },
        id: b.id,
        batch_id: b.batch_id,
        sender_id: b.sender_id,
        created_at: rfc3339(b.created_at),
        payment_count: b.payment_count,
        final_count,
        totals,
    }))
}

/// A batch's payments, paged.
#[utoipa::path(
    get, path = "/api/v1/batches/{id}/payments", tag = "batches",
    params(("id" = String, Path, description = "PIL batch id"), PageQuery),
    responses((status = 200, body = PaymentPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn list_batch_payments(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<PaymentPage>, ApiError> {
    batch_or_404(&state, &id).await?;
    page(&state, Some(id), q).await
}

/// Payments across batches, e.g. every `unknown` payment waiting for an operator or
/// reconciliation (`?status=unknown`), optionally of one DFSP (`&dfsp=`).
#[utoipa::path(
    get, path = "/api/v1/payments", tag = "payments",
    params(PageQuery),
    responses((status = 200, body = PaymentPage), (status = 400, body = ErrorBody))
)]
pub async fn list_payments(
    State(state): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<PaymentPage>, ApiError> {
    page(&state, None, q).await
}

async fn page(
    state: &AppState,
    batch_id: Option<String>,
    q: PageQuery,
) -> Result<Json<PaymentPage>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| ApiError::BadRequest {
            code: "invalid_status",
            message: format!(
                "status '{s}' is not one of {}",
                Status::ALL.map(Status::as_str).join(", ")
            ),
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = PaymentFilter {
        batch_id,
        status,
        dfsp: q.dfsp.filter(|d| !d.is_empty()),
    };
    let payments = state
        .store
        .list_payments(&filter, q.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (payments.len() as i64 == limit)
        .then(|| payments.last().map(|p| p.id.clone()))
        .flatten();
    Ok(Json(PaymentPage {
        payments: payments.iter().map(PaymentView::of).collect(),
        next_cursor,
    }))
}

/// A payment with its full history and dispatch attempts.
#[utoipa::path(
    get, path = "/api/v1/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "PIL payment id")),
    responses((status = 200, body = PaymentView), (status = 404, body = ErrorBody))
)]
pub async fn get_payment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let p = payment_or_404(&state, &id).await?;
    let mut view = PaymentView::of(&p);
    view.history = Some(
        state
            .store
            .payment_events(&id)
            .await?
            .into_iter()
            .map(|e| EventView {
                at: rfc3339(e.at),
                from: e.event.from,
                to: e.event.to,
                reason_code: e.event.reason_code,
                detail: e.event.detail,
                route_version: e.event.route_version,
                adapter_version: e.event.adapter_version,
            })
            .collect(),
    );
    view.dispatch_attempts = Some(
        state
            .store
            .payment_attempts(&id)
            .await?
            .into_iter()
            .map(|a| AttemptView {
                kind: a.attempt.kind.to_string(),
                dfsp: a.attempt.dfsp,
                method: a.attempt.method,
                url: a.attempt.url,
                idempotency_key: a.attempt.idempotency_key,
                started_at: rfc3339(a.attempt.started_at),
                duration_ms: a.attempt.finished_at - a.attempt.started_at,
                http_status: a.attempt.http_status,
                outcome: a.attempt.outcome,
                error: a.attempt.error,
            })
            .collect(),
    );
    Ok(Json(view))
}

/// Cancel a payment that has not been sent yet.
#[utoipa::path(
    post, path = "/api/v1/payments/{id}/cancel", tag = "payments",
    params(("id" = String, Path, description = "PIL payment id")),
    responses(
        (status = 200, description = "Cancelled", body = PaymentView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already sent or final", body = ErrorBody),
    )
)]
pub async fn cancel_payment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    cancel(&state, &id, "cancelled through the API")
        .await
        .map(Json)
}

/// Cancels a payment that cannot have reached a DFSP; `409 not_cancellable` otherwise.
pub async fn cancel(state: &AppState, id: &str, why: &str) -> Result<PaymentView, ApiError> {
    let p = payment_or_404(state, id).await?;
    let not_cancellable = |status: Status| ApiError::Conflict {
        code: "not_cancellable",
        message: if status.may_have_reached_dfsp() {
            format!("payment is {status}: it may have reached the DFSP and cannot be cancelled")
        } else {
            format!("payment is already {status}")
        },
        details: serde_json::json!({ "status": status }),
    };
    let change = Change::from(&p)
        .with(|f| {
            f.reason_code = Some("cancelled".into());
            f.reason = Some(why.into());
        })
        .step(Status::Cancelled, Some("cancelled"), Some(why.into()))
        .map_err(|_| not_cancellable(p.status))?;
    let applied = state
        .writer
        .apply(vec![change])
        .await
        .map_err(ApiError::Internal)?;
    let now = payment_or_404(state, id).await?;
    if applied.first() != Some(&Applied::Done) {
        // The dispatcher moved it first.
        return Err(not_cancellable(now.status));
    }
    Ok(PaymentView::of(&now))
}

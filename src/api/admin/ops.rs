//! Operators' actions under `/admin` (role `operator`; reading them needs any role): DFSPs
//! with their health, pausing and resuming a DFSP or a batch, cancelling a payment that cannot
//! have reached a DFSP, retrying failed payments (as new payments). Each change appends an audit row. A pause or hold stops new sends
//! only: what is already sent is still followed.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;

use super::{audit, authorize};
use crate::api::AppState;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::native::PaymentView;
use crate::clock::now_ms;
use crate::config::Role;
use crate::executor::Health;

/// A DFSP as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DfspView {
    pub id: String,
    pub name: String,
    /// Content hash of its adapter script in force.
    pub version: String,
    pub paused: bool,
    /// Its folder was removed: nothing is sent to it, its payments are still followed.
    pub retired: bool,
    /// closed | open | half_open
    pub circuit: String,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// Requests marked `sending` and waiting for an in-flight slot.
    pub staged: usize,
    pub max_staged: usize,
    pub rate_per_second: Option<u32>,
    pub health: Health,
}

fn views(state: &AppState) -> Vec<DfspView> {
    let live = state.live.load();
    let now = now_ms();
    let current = live
        .bundle
        .adapters
        .iter()
        .filter_map(|(id, a)| live.clients.get(id).map(|c| (id, a, c, false)));
    let retired = live.retired.iter().map(|(id, (a, c))| (id, a, c, true));
    current
        .chain(retired)
        .map(|(id, a, c, retired)| DfspView {
            id: id.clone(),
            name: a.config.name.clone(),
            version: a.script.version.clone(),
            paused: live.paused.contains(id),
            retired,
            circuit: c.circuit(now).as_str().into(),
            in_flight: c.in_flight(),
            max_in_flight: a.config.max_in_flight,
            staged: c.staged(),
            max_staged: a.config.max_staged,
            rate_per_second: a.config.rate_per_second,
            health: c.health(),
        })
        .collect()
}

/// Every DFSP with its state and recent health.
#[utoipa::path(
    get, path = "/admin/dfsps", tag = "admin",
    responses((status = 200, body = [DfspView]), (status = 401, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn list_dfsps(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<DfspView>>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(views(&state)))
}

async fn set_paused(
    state: AppState,
    headers: HeaderMap,
    id: String,
    paused: bool,
) -> Result<Json<DfspView>, ApiError> {
    let actor = authorize(&state, &headers, Role::Operator)?;
    let known = {
        let live = state.live.load();
        live.bundle.adapter(&id).is_some() || live.retired.contains_key(&id)
    };
    if !known {
        return Err(ApiError::NotFound {
            message: format!("no DFSP '{id}'"),
        });
    }
    state
        .store
        .set_dfsp_paused(&id, paused, &actor.name, now_ms())
        .await?;
    let changed = state.live.load().paused.set(&id, paused);
    let action = if paused { "dfsp.pause" } else { "dfsp.resume" };
    audit(
        &state,
        &actor,
        action,
        &id,
        None,
        None,
        serde_json::json!({ "changed": changed }),
    )
    .await?;
    if !paused {
        state.wake.notify_waiters();
    }
    views(&state)
        .into_iter()
        .find(|v| v.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound {
            message: format!("no DFSP '{id}'"),
        })
}

/// Keeps a DFSP out of routing: its payments take a fallback or wait. Survives reloads and
/// restarts until resumed.
#[utoipa::path(
    post, path = "/admin/dfsps/{id}/pause", tag = "admin",
    params(("id" = String, Path, description = "adapter id")),
    responses((status = 200, body = DfspView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn pause_dfsp(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DfspView>, ApiError> {
    set_paused(state, headers, id, true).await
}

#[utoipa::path(
    post, path = "/admin/dfsps/{id}/resume", tag = "admin",
    params(("id" = String, Path, description = "adapter id")),
    responses((status = 200, body = DfspView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn resume_dfsp(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DfspView>, ApiError> {
    set_paused(state, headers, id, false).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchHold {
    pub batch: String,
    pub held: bool,
    /// Unsent payments that now wait (or go again).
    pub payments: u64,
}

async fn hold(
    state: AppState,
    headers: HeaderMap,
    id: String,
    held: bool,
) -> Result<Json<BatchHold>, ApiError> {
    let actor = authorize(&state, &headers, Role::Operator)?;
    let moved = state
        .store
        .hold_batch(&id, held, now_ms())
        .await?
        .ok_or_else(|| ApiError::NotFound {
            message: format!("no batch '{id}'"),
        })?;
    let action = if held { "batch.pause" } else { "batch.resume" };
    audit(
        &state,
        &actor,
        action,
        &id,
        None,
        None,
        serde_json::json!({ "payments": moved }),
    )
    .await?;
    if !held {
        state.wake.notify_waiters();
    }
    Ok(Json(BatchHold {
        batch: id,
        held,
        payments: moved,
    }))
}

/// Holds a batch: its payments not yet sent wait until it is resumed.
#[utoipa::path(
    post, path = "/admin/batches/{id}/pause", tag = "admin",
    params(("id" = String, Path, description = "PIL batch id")),
    responses((status = 200, body = BatchHold), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn pause_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BatchHold>, ApiError> {
    hold(state, headers, id, true).await
}

#[utoipa::path(
    post, path = "/admin/batches/{id}/resume", tag = "admin",
    params(("id" = String, Path, description = "PIL batch id")),
    responses((status = 200, body = BatchHold), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn resume_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<BatchHold>, ApiError> {
    hold(state, headers, id, false).await
}

/// Cancels a payment that cannot have reached a DFSP (`409 not_cancellable` otherwise).
#[utoipa::path(
    post, path = "/admin/payments/{id}/cancel", tag = "admin",
    params(("id" = String, Path, description = "PIL payment id")),
    responses((status = 200, body = PaymentView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn cancel_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let actor = authorize(&state, &headers, Role::Operator)?;
    let view = crate::api::native::cancel(
        &state,
        &id,
        &format!("cancelled by operator {}", actor.name),
    )
    .await?;
    audit(
        &state,
        &actor,
        "payment.cancel",
        &id,
        None,
        None,
        serde_json::json!({}),
    )
    .await?;
    Ok(Json(view))
}

/// Failed payments sent again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    /// The new batch (PIL id) holding the retries.
    pub batch: String,
    pub payments: Vec<RetriedPayment>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetriedPayment {
    pub id: String,
    pub reference_id: String,
    /// The failed payment it retries.
    pub retry_of: String,
}

/// Most retries of one payment.
const MAX_RETRIES: usize = 20;

/// A final status never changes, so a retry is a new payment: a new id, the reference
/// `<reference>#retry<n>`, `meta.retry_of` naming the failed one, in one new batch of the same
/// sender. A payment whose earlier retry is still on its way or paid is refused
/// (`409 already_retried`), and two retries racing for the same reference are refused by the
/// store: a double click never pays twice.
async fn retry(
    state: &AppState,
    actor: &super::Actor,
    failed: Vec<crate::payment::Payment>,
) -> Result<Retried, ApiError> {
    use crate::payment::Status;
    use crate::store::{BatchInsert, NewPayment};
    let Some(sender) = failed.first().map(|p| p.sender_id.clone()) else {
        return Err(ApiError::Conflict {
            code: "nothing_to_retry",
            message: "no failed payment to retry".into(),
            details: serde_json::json!({}),
        });
    };
    // Every earlier retry of these payments, in one lookup (they share their sender).
    let all_refs: Vec<String> = failed
        .iter()
        .flat_map(|p| (1..=MAX_RETRIES).map(move |n| format!("{}#retry{n}", p.reference_id)))
        .collect();
    let mut earlier_of: std::collections::HashMap<String, Vec<crate::payment::Payment>> =
        std::collections::HashMap::new();
    for e in state
        .store
        .payments_by_references(&sender, &all_refs)
        .await?
    {
        if let Some((base, _)) = e.reference_id.rsplit_once("#retry") {
            earlier_of.entry(base.to_string()).or_default().push(e);
        }
    }
    let mut new = Vec::with_capacity(failed.len());
    let mut links = Vec::with_capacity(failed.len());
    for p in &failed {
        let earlier = earlier_of.remove(&p.reference_id).unwrap_or_default();
        if let Some(live) = earlier.iter().find(|e| {
            !matches!(
                e.status,
                Status::Failed | Status::Rejected | Status::Cancelled
            )
        }) {
            return Err(ApiError::Conflict {
                code: "already_retried",
                message: format!(
                    "payment {} was already retried as {} ({})",
                    p.id, live.id, live.status
                ),
                details: serde_json::json!({ "payment": p.id, "retry": live.id }),
            });
        }
        if earlier.len() >= MAX_RETRIES {
            return Err(ApiError::Conflict {
                code: "too_many_retries",
                message: format!("payment {} was retried {MAX_RETRIES} times", p.id),
                details: serde_json::json!({ "payment": p.id }),
            });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let reference_id = format!("{}#retry{}", p.reference_id, earlier.len() + 1);
        let mut meta = serde_json::Map::new();
        meta.insert("retry_of".into(), serde_json::json!(p.id));
        if let Some(original) = &p.meta {
            meta.insert("original_meta".into(), original.clone());
        }
        links.push(RetriedPayment {
            id: id.clone(),
            reference_id: reference_id.clone(),
            retry_of: p.id.clone(),
        });
        new.push(NewPayment {
            id,
            reference_id,
            payee_fa: p.payee_fa.clone(),
            payee_id_type: p.payee_id_type.clone(),
            payee_id_value: p.payee_id_value.clone(),
            amount_minor: p.amount.minor(),
            currency: p.amount.currency().code().to_string(),
            payee_name: p.payee_name.clone(),
            note: p.note.clone(),
            meta: Some(serde_json::Value::Object(meta)),
            attributes: p.attributes.clone(),
            not_before: None,
            rejected: None,
        });
    }
    let batch_id = format!("retry-{}", uuid::Uuid::now_v7());
    let batch = crate::ingest::new_batch(&sender, &batch_id, &new, now_ms());
    let created = match state.store.insert_batch(&batch, &new).await? {
        BatchInsert::Created(b) => b,
        BatchInsert::DuplicateReferences(refs) => {
            return Err(ApiError::Conflict {
                code: "already_retried",
                message: "another retry of these payments was made at the same time".into(),
                details: serde_json::json!({ "references": refs }),
            });
        }
        BatchInsert::Replayed(b) | BatchInsert::Conflict(b) => {
            return Err(ApiError::Internal(format!(
                "retry batch id {} collided with batch {}",
                batch_id, b.id
            )));
        }
    };
    state.wake.notify_waiters();
    for link in &links {
        audit(
            state,
            actor,
            "payment.retry",
            &link.retry_of,
            None,
            None,
            serde_json::json!({ "retry": link.id, "reference_id": link.reference_id, "batch": created.id }),
        )
        .await?;
    }
    Ok(Retried {
        batch: created.id,
        payments: links,
    })
}

/// Sends a failed payment again, as a new payment (see the README): `409 not_retryable` unless
/// it failed.
#[utoipa::path(
    post, path = "/admin/payments/{id}/retry", tag = "admin",
    params(("id" = String, Path, description = "PIL payment id")),
    responses((status = 201, body = Retried), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn retry_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(axum::http::StatusCode, Json<Retried>), ApiError> {
    let actor = authorize(&state, &headers, Role::Operator)?;
    let p = state
        .store
        .get_payment(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            message: format!("no payment '{id}'"),
        })?;
    if p.status != crate::payment::Status::Failed {
        return Err(ApiError::Conflict {
            code: "not_retryable",
            message: format!("payment is {}: only failed payments are retried", p.status),
            details: serde_json::json!({ "status": p.status }),
        });
    }
    let done = retry(&state, &actor, vec![p]).await?;
    Ok((axum::http::StatusCode::CREATED, Json(done)))
}

/// Sends every failed payment of a batch again, as new payments in one new batch.
#[utoipa::path(
    post, path = "/admin/batches/{id}/retry-failed", tag = "admin",
    params(("id" = String, Path, description = "PIL batch id")),
    responses((status = 201, body = Retried), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn retry_failed(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(axum::http::StatusCode, Json<Retried>), ApiError> {
    let actor = authorize(&state, &headers, Role::Operator)?;
    if state.store.get_batch(&id).await?.is_none() {
        return Err(ApiError::NotFound {
            message: format!("no batch '{id}'"),
        });
    }
    let failed: Vec<_> = state
        .store
        .batch_payments_in_order(&id)
        .await?
        .into_iter()
        .filter(|p| p.status == crate::payment::Status::Failed)
        .collect();
    let done = retry(&state, &actor, failed).await?;
    Ok((axum::http::StatusCode::CREATED, Json(done)))
}

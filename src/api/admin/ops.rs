//! Operators' actions under `/admin` (role `operator`; reading them needs any role): DFSPs
//! with their health, pausing and resuming a DFSP or a batch, cancelling a payment that cannot
//! have reached a DFSP. Each change appends an audit row. A pause or hold stops new sends
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

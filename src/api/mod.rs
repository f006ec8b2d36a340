//! HTTP interfaces: the native REST API, DFSP callbacks, health and the OpenAPI document. The
//! handlers validate and translate; the flow itself lives in `ingest`, `dispatch`, `follow`.

pub mod admin;
pub mod error;
pub mod g2p;
pub mod legacy;
pub mod native;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::Notify;
use utoipa::OpenApi;

use crate::clock::now_ms;
use crate::config::Settings;
use crate::follow::{CallbackError, CallbackOutcome, handle_callback};
use crate::route::Live;
use crate::store::{RawCallback, Store, Writer};
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub live: Arc<ArcSwap<Live>>,
    pub settings: Arc<Settings>,
    pub wake: Arc<Notify>,
    /// PIL's key for the envelopes it sends to G2P Connect senders.
    pub signer: Arc<crate::report::Signer>,
    /// G2P Connect senders, secrets resolved.
    pub senders: Arc<Vec<g2p::Sender>>,
    /// Hot reload of the scripts; its status is shown by the admin API.
    pub reloader: Arc<crate::reload::Reloader>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// One script change through the admin API at a time (check, write, record, reload).
    pub scripts_lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "PIL — payment interoperability layer", description = "Native REST API, the OpenG2P legacy PIL API, the G2P Connect disbursement API, DFSP callbacks and operations endpoints."),
    modifiers(&BearerSchemes),
    paths(
        native::submit_batch,
        native::get_batch,
        native::list_batch_payments,
        native::list_payments,
        native::get_payment,
        native::cancel_payment,
        legacy::disburse,
        legacy::get_disbursement,
        legacy::check,
        legacy::health,
        admin::import_directory,
        admin::audit_log,
        admin::scripts::list,
        admin::scripts::status,
        admin::scripts::read,
        admin::scripts::write,
        admin::scripts::validate,
        admin::scripts::history,
        admin::scripts::rollback,
        admin::scripts::reload,
        admin::dry_run::dry_run,
        admin::ops::list_dfsps,
        admin::ops::pause_dfsp,
        admin::ops::resume_dfsp,
        admin::ops::pause_batch,
        admin::ops::resume_batch,
        admin::ops::cancel_payment,
        admin::ops::retry_payment,
        admin::ops::retry_failed,
        g2p::disburse,
        g2p::sync_disburse,
        g2p::txn_status,
        g2p::sync_txn_status,
        g2p::signing_key,
        dfsp_callback,
        healthz,
        readyz,
    ),
    tags(
        (name = "batches", description = "Submit and follow batches of payments"),
        (name = "payments", description = "One payment, its history, cancel"),
        (name = "legacy", description = "The OpenG2P legacy PIL API (pil-disbursement-api v0.1.0)"),
        (name = "g2p-connect", description = "G2P Connect disbursement API v1.0.0 (bearer token per sender; signed envelopes)"),
        (name = "admin", description = "The admin API (bearer token with roles: viewer reads, operator operates, editor changes scripts; every change is in the audit log)"),
        (name = "callbacks", description = "DFSP callbacks, handled by the adapter's parse_callback"),
        (name = "ops", description = "Health"),
    )
)]
pub struct ApiDoc;

/// The bearer schemes the paths refer to.
struct BearerSchemes;

impl utoipa::Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["sender_token", "admin_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/api/v1/batches", post(native::submit_batch))
        .route("/api/v1/batches/{id}", get(native::get_batch))
        .route(
            "/api/v1/batches/{id}/payments",
            get(native::list_batch_payments),
        )
        .route("/api/v1/payments", get(native::list_payments))
        .route("/api/v1/payments/{id}", get(native::get_payment))
        .route("/api/v1/payments/{id}/cancel", post(native::cancel_payment))
        .route("/disbursement", post(legacy::disburse))
        .route("/disbursement/{id}", get(legacy::get_disbursement))
        .route("/disbursementCheck", post(legacy::check))
        .route("/health", get(legacy::health))
        .route("/admin/directory", post(admin::import_directory))
        .route("/admin/audit", get(admin::audit_log))
        .route("/admin/scripts", get(admin::scripts::list))
        .route("/admin/scripts/status", get(admin::scripts::status))
        .route(
            "/admin/scripts/file/{*path}",
            get(admin::scripts::read).put(admin::scripts::write),
        )
        .route("/admin/scripts/validate", post(admin::scripts::validate))
        .route(
            "/admin/scripts/history/{*path}",
            get(admin::scripts::history),
        )
        .route(
            "/admin/scripts/rollback/{*path}",
            post(admin::scripts::rollback),
        )
        .route("/admin/scripts/reload", post(admin::scripts::reload))
        .route("/admin/dry-run", post(admin::dry_run::dry_run))
        .route("/admin/dfsps", get(admin::ops::list_dfsps))
        .route("/admin/dfsps/{id}/pause", post(admin::ops::pause_dfsp))
        .route("/admin/dfsps/{id}/resume", post(admin::ops::resume_dfsp))
        .route("/admin/batches/{id}/pause", post(admin::ops::pause_batch))
        .route("/admin/batches/{id}/resume", post(admin::ops::resume_batch))
        .route(
            "/admin/batches/{id}/retry-failed",
            post(admin::ops::retry_failed),
        )
        .route(
            "/admin/payments/{id}/retry",
            post(admin::ops::retry_payment),
        )
        .route(
            "/admin/payments/{id}/cancel",
            post(admin::ops::cancel_payment),
        )
        .route("/disburse", post(g2p::disburse))
        .route("/disburse/sync/disburse", post(g2p::sync_disburse))
        .route("/disburse/txn/status", post(g2p::txn_status))
        .route("/disburse/sync/txn/status", post(g2p::sync_txn_status))
        .route("/signing-key.pem", get(g2p::signing_key))
        .route(
            "/callbacks/{dfsp}",
            post(dfsp_callback_root).put(dfsp_callback_root),
        )
        .route(
            "/callbacks/{dfsp}/{*rest}",
            post(dfsp_callback).put(dfsp_callback),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Waits until every payment of a batch is final or `wait` has passed (the synchronous APIs
/// answer with whatever the batch holds then).
pub(crate) async fn wait_final(
    store: &dyn Store,
    batch_id: &str,
    wait: std::time::Duration,
) -> Result<(), crate::store::StoreError> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let totals = store.batch_totals(batch_id).await?;
        if totals.iter().all(|t| t.count == 0 || t.status.is_final())
            || tokio::time::Instant::now() >= until
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Prometheus metrics (OpenMetrics text).
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let live = state.live.load_full();
    let text = state.metrics.render(state.store.as_ref(), &live).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the database answers and scripts are loaded.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready"), (status = 503, description = "Not ready")))]
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    let live = state.live.load();
    Ok(Json(serde_json::json!({
        "status": "ready",
        "routing_version": live.bundle.routing.version,
        "adapters": live.bundle.adapters.iter().map(|(id, a)| (id.clone(), a.script.version.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    })))
}

async fn dfsp_callback_root(
    state: State<AppState>,
    method: Method,
    Path(dfsp): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    callback(state, method, dfsp, String::new(), headers, body).await
}

/// A DFSP's callback. Stored raw first, then applied through the adapter's `parse_callback`.
#[utoipa::path(
    post, path = "/callbacks/{dfsp}/{rest}", tag = "callbacks",
    params(("dfsp" = String, Path, description = "Adapter id"), ("rest" = String, Path, description = "Any path the adapter put in its callback URL")),
    request_body(content = Object, description = "Whatever the DFSP sends"),
    responses((status = 200, description = "Stored (and applied when it matched a payment)"), (status = 404, description = "No such adapter"))
)]
pub async fn dfsp_callback(
    state: State<AppState>,
    method: Method,
    Path((dfsp, rest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    callback(state, method, dfsp, rest, headers, body).await
}

async fn callback(
    State(state): State<AppState>,
    method: Method,
    dfsp: String,
    rest: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let headers_json: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_string(), v.into())))
        .collect();
    let dfsp_id = dfsp.clone();
    let raw = RawCallback {
        dfsp,
        method: method.to_string(),
        path: format!("/{rest}"),
        headers: serde_json::Value::Object(headers_json),
        body: body.to_vec(),
        received_at: now_ms(),
    };
    let live = state.live.load_full();
    match handle_callback(&state.store, &state.writer, &live, raw).await {
        Ok(outcome) => {
            let (status, label) = match &outcome {
                CallbackOutcome::Applied(_) => (StatusCode::OK, "applied"),
                CallbackOutcome::NoChange(_) => (StatusCode::OK, "no_change"),
                CallbackOutcome::UnknownPayment => (StatusCode::OK, "unknown_payment"),
                CallbackOutcome::Ignored => (StatusCode::OK, "ignored"),
                CallbackOutcome::ScriptError(_) => (StatusCode::OK, "stored"),
                CallbackOutcome::Many(_) => (StatusCode::OK, "applied"),
            };
            if let CallbackOutcome::ScriptError(e) = &outcome {
                tracing::warn!(error = %e, "callback stored but not understood");
            }
            state.metrics.callback(&dfsp_id, label);
            Ok((status, Json(serde_json::json!({"result": label}))))
        }
        Err(CallbackError::UnknownDfsp(d)) => Err(ApiError::NotFound {
            message: format!("no adapter '{d}'"),
        }),
        Err(CallbackError::Store(e)) => Err(ApiError::Store(e)),
        Err(CallbackError::Write(e)) => Err(ApiError::Internal(e)),
    }
}

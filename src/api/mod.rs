//! HTTP interfaces: the native REST API, DFSP callbacks, health and the OpenAPI document. The
//! handlers validate and translate; the flow itself lives in `ingest`, `dispatch`, `follow`.

pub mod error;
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
}

#[derive(OpenApi)]
#[openapi(
    info(title = "PIL — payment interoperability layer", description = "Native REST API, DFSP callbacks and operations endpoints."),
    paths(
        native::submit_batch,
        native::get_batch,
        native::list_batch_payments,
        native::get_payment,
        native::cancel_payment,
        dfsp_callback,
        healthz,
        readyz,
    ),
    tags(
        (name = "batches", description = "Submit and follow batches of payments"),
        (name = "payments", description = "One payment, its history, cancel"),
        (name = "callbacks", description = "DFSP callbacks, handled by the adapter's parse_callback"),
        (name = "ops", description = "Health"),
    )
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/api/v1/batches", post(native::submit_batch))
        .route("/api/v1/batches/{id}", get(native::get_batch))
        .route(
            "/api/v1/batches/{id}/payments",
            get(native::list_batch_payments),
        )
        .route("/api/v1/payments/{id}", get(native::get_payment))
        .route("/api/v1/payments/{id}/cancel", post(native::cancel_payment))
        .route(
            "/callbacks/{dfsp}",
            post(dfsp_callback_root).put(dfsp_callback_root),
        )
        .route(
            "/callbacks/{dfsp}/{*rest}",
            post(dfsp_callback).put(dfsp_callback),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
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
            };
            if let CallbackOutcome::ScriptError(e) = &outcome {
                tracing::warn!(error = %e, "callback stored but not understood");
            }
            Ok((status, Json(serde_json::json!({"result": label}))))
        }
        Err(CallbackError::UnknownDfsp(d)) => Err(ApiError::NotFound {
            message: format!("no adapter '{d}'"),
        }),
        Err(CallbackError::Store(e)) => Err(ApiError::Store(e)),
        Err(CallbackError::Write(e)) => Err(ApiError::Internal(e)),
    }
}

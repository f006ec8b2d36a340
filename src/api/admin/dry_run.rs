//! `POST /admin/dry-run`: what the scripts in force would do with a payment (a new one, or a
//! stored one as it was when received): the routing decision and the exact request each
//! candidate adapter would send, through [`crate::tools::dry_run_payment`]. Every resolved
//! secret of every adapter is replaced by `***`. Nothing is stored or sent.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::ToSchema;

use super::super::AppState;
use super::super::error::{ApiError, ErrorBody};
use super::{authorize, secrets_in_force};
use crate::config::Role;
use crate::payment::{Payment, Status};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// A payment with the native API's fields (`reference_id` optional here), plus an optional
    /// `sender_id`.
    #[schema(value_type = Option<Object>)]
    pub payment: Option<serde_json::Value>,
    /// A stored payment, run as it was when received (with its payee directory attributes).
    pub payment_id: Option<String>,
}

/// A stored payment as routing saw it: received, nothing decided or sent yet.
fn as_received(mut p: Payment) -> Payment {
    p.status = Status::Received;
    p.dfsp = None;
    p.fallbacks = Vec::new();
    p.dfsp_ref = None;
    p.idempotency_key = None;
    p.attempts = 0;
    p.polls = 0;
    p.reason_code = None;
    p.reason = None;
    p.route_version = None;
    p.adapter_version = None;
    p
}

/// Dry run of one payment through the scripts in force (give `payment` or `payment_id`).
#[utoipa::path(
    post, path = "/admin/dry-run", tag = "admin",
    request_body = DryRunRequest,
    responses(
        (status = 200, description = "routing_version, decision ({dfsps} or {reject, message}) and candidates ({dfsp, adapter_version, request: {method, url, headers, body}} or {dfsp, error})", body = Object),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such payment", body = ErrorBody),
        (status = 422, description = "validation_failed (the payment) or dry_run_failed (a script error)", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn dry_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let body = body.map_err(|_| ApiError::TooLarge {
        limit: state.settings.max_body_bytes,
    })?;
    let req: DryRunRequest = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        code: "invalid_json",
        message: format!("body is not a dry run request: {e}"),
    })?;
    let payment =
        match (req.payment, req.payment_id) {
            (Some(input), None) => {
                let limits = crate::ingest::Limits {
                    max_amount: state.settings.max_amount,
                    max_payments: 1,
                };
                crate::tools::payment_from_input(&input, &limits).map_err(|errors| {
                    ApiError::Unprocessable {
                        code: "validation_failed",
                        message: "the payment is not valid".into(),
                        details: serde_json::json!({ "errors": errors }),
                    }
                })?
            }
            (None, Some(id)) => {
                as_received(state.store.get_payment(&id).await?.ok_or_else(|| {
                    ApiError::NotFound {
                        message: format!("no payment '{id}'"),
                    }
                })?)
            }
            _ => {
                return Err(ApiError::BadRequest {
                    code: "invalid_request",
                    message: "give either payment or payment_id".into(),
                });
            }
        };
    let live = state.live.load_full();
    // Scripts are CPU work with their own deadline: off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        crate::tools::dry_run_payment(&live.bundle, &live.clients, &payment)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the dry run stopped: {e}")))?;
    // The bundle's own secrets are gone already; retired adapters' too.
    let secrets = secrets_in_force(&state);
    match result {
        Ok(mut out) => {
            crate::tools::redact(&mut out, &secrets);
            Ok(Json(out))
        }
        Err(message) => Err(ApiError::Unprocessable {
            code: "dry_run_failed",
            message: crate::tools::redact_text(&message, &secrets),
            details: serde_json::Value::Null,
        }),
    }
}

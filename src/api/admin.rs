//! Operator endpoints under `/admin`, behind a bearer token (`admin_token`). For now: the
//! payee directory import. They change configuration data, never payments.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use crate::clock::now_ms;
use crate::directory::{self, ImportError};

/// Refuses unless the request carries the configured admin bearer token. Tokens are compared
/// as SHA-256 digests so the comparison takes the same time whatever the guess.
pub fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.settings.admin_token.as_deref() else {
        return Err(ApiError::Forbidden {
            message: "the admin API is disabled: set admin_token (PIL_ADMIN_TOKEN)".into(),
        });
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized {
            message: "an admin bearer token is required (Authorization: Bearer ...)".into(),
        })?;
    if Sha256::digest(given.as_bytes()) != Sha256::digest(expected.as_bytes()) {
        return Err(ApiError::Unauthorized {
            message: "the admin bearer token is not valid".into(),
        });
    }
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DirectoryImported {
    /// Rows written (inserted or replaced).
    pub imported: u64,
}

/// Import payee directory rows from CSV (`id_type,id_value,fa`, then attribute columns). All
/// or nothing: any bad row → 422 listing every bad row (line, field, code, message).
#[utoipa::path(
    post, path = "/admin/directory", tag = "admin",
    request_body(content = String, content_type = "text/csv", description = "id_type,id_value,fa[,attribute...]"),
    responses(
        (status = 200, description = "Imported", body = DirectoryImported),
        (status = 401, description = "No or wrong token", body = super::error::ErrorBody),
        (status = 422, description = "Bad rows; nothing imported", body = super::error::ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn import_directory(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DirectoryImported>, ApiError> {
    authorize(&state, &headers)?;
    let body = body.map_err(|_| ApiError::TooLarge {
        limit: state.settings.max_body_bytes,
    })?;
    match directory::import(state.store.as_ref(), &body, now_ms()).await {
        Ok(imported) => Ok(Json(DirectoryImported { imported })),
        Err(ImportError::Rows(rows)) => Err(ApiError::Unprocessable {
            code: "validation_failed",
            message: format!("{} bad row(s); nothing was imported", rows.len()),
            details: serde_json::json!({ "rows": rows }),
        }),
        Err(ImportError::Store(e)) => Err(e.into()),
    }
}

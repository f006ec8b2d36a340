//! The admin API under `/admin`: its tokens and roles, the audit log, the payee directory
//! import, script management ([`scripts`]), dry runs ([`dry_run`]) and operators' actions
//! ([`ops`]).
//!
//! Tokens are configured as SHA-256 digests with roles (`[admin_tokens.<name>]`); a token's
//! name is the actor every audit row records. Every change made here appends an audit row.
//! Nothing here returns a secret: responses derived from scripts or adapter configs are
//! redacted with every resolved secret in force. It changes configuration data (scripts, the
//! directory), never payments.

pub mod dry_run;
pub mod ops;
pub mod scripts;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::clock::now_ms;
use crate::config::Role;
use crate::directory::{self, ImportError};
use crate::store::NewAudit;

/// The actor name of the plaintext `admin_token` (the old way).
pub const LEGACY_ACTOR: &str = "admin_token";

/// Who is calling: a configured token's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The plaintext `admin_token`, accepted only by the directory import.
    legacy: bool,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Finds the caller's token. Tokens are compared as SHA-256 digests, in constant time and
/// against every configured one, so neither the time taken nor which comparison ended the
/// search tells anything about a guess.
fn identify(state: &AppState, headers: &HeaderMap) -> Result<(Actor, Vec<Role>), ApiError> {
    let given = bearer(headers).ok_or_else(|| ApiError::Unauthorized {
        message: "an admin bearer token is required (Authorization: Bearer ...)".into(),
    })?;
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut found = None;
    for (name, token) in &state.settings.admin_tokens {
        let Some(expected) = token.digest() else {
            continue;
        };
        if bool::from(expected.ct_eq(&digest)) && found.is_none() {
            found = Some((name.clone(), token.roles.clone()));
        }
    }
    let legacy = state.settings.admin_token.as_deref().is_some_and(|t| {
        let expected: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        bool::from(expected.ct_eq(&digest))
    });
    match (found, legacy) {
        (Some((name, roles)), _) => Ok((
            Actor {
                name,
                legacy: false,
            },
            roles,
        )),
        (None, true) => Ok((
            Actor {
                name: LEGACY_ACTOR.into(),
                legacy: true,
            },
            vec![Role::Operator],
        )),
        (None, false)
            if state.settings.admin_tokens.is_empty() && state.settings.admin_token.is_none() =>
        {
            Err(ApiError::Unauthorized {
                message: "no admin token is configured: add [admin_tokens.<name>] with sha256 \
                      (pil hash-token) and roles"
                    .into(),
            })
        }
        (None, false) => Err(ApiError::Unauthorized {
            message: "the admin bearer token is not valid".into(),
        }),
    }
}

fn require(actor: &Actor, roles: &[Role], need: Role) -> Result<(), ApiError> {
    if need == Role::Viewer || roles.contains(&need) {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        message: format!(
            "this needs the {} role; token '{}' has {}",
            need.as_str(),
            actor.name,
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The caller, if its token has `need` (every role can read: `Role::Viewer`). 401 without a
/// token or with an unknown one; 403 when the token lacks the role. The plaintext
/// `admin_token` is refused here: it only opens the directory import.
pub fn authorize(state: &AppState, headers: &HeaderMap, need: Role) -> Result<Actor, ApiError> {
    let (actor, roles) = identify(state, headers)?;
    if actor.legacy {
        return Err(ApiError::Forbidden {
            message: "the plaintext admin_token only opens POST /admin/directory; configure \
                      [admin_tokens.<name>] with sha256 (pil hash-token) and roles"
                .into(),
        });
    }
    require(&actor, &roles, need)?;
    Ok(actor)
}

/// Appends an audit row for a change made by `actor`.
pub(crate) async fn audit(
    state: &AppState,
    actor: &Actor,
    action: &str,
    target: &str,
    before_hash: Option<String>,
    after_hash: Option<String>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    state
        .store
        .audit_append(&NewAudit {
            at: now_ms(),
            actor: actor.name.clone(),
            action: action.into(),
            target: target.into(),
            before_hash,
            after_hash,
            detail,
        })
        .await?;
    Ok(())
}

/// Every resolved secret in force (adapters live and retired), to keep out of responses.
pub(crate) fn secrets_in_force(state: &AppState) -> Vec<String> {
    let live = state.live.load();
    let mut out = crate::tools::bundle_secrets(&live.bundle);
    for (adapter, _) in live.retired.values() {
        out.extend(
            adapter
                .config
                .secrets()
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

/// A page size from `?limit=` (default 100, 1 to 1000) and a cursor (an id) from `?cursor=`.
fn paging(cursor: Option<&str>, limit: Option<&str>) -> Result<(Option<i64>, i64), ApiError> {
    let bad = |what: &str| ApiError::BadRequest {
        code: "invalid_query",
        message: format!("{what} must be a whole number"),
    };
    let cursor = match cursor.filter(|c| !c.is_empty()) {
        Some(c) => Some(c.parse::<i64>().map_err(|_| bad("cursor"))?),
        None => None,
    };
    let limit = match limit.filter(|l| !l.is_empty()) {
        Some(l) => l.parse::<i64>().map_err(|_| bad("limit"))?,
        None => 100,
    };
    Ok((cursor, limit.clamp(1, 1000)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DirectoryImported {
    /// Rows written (inserted or replaced).
    pub imported: u64,
}

/// Import payee directory rows from CSV (`id_type,id_value,fa`, then attribute columns). All
/// or nothing: any bad row → 422 listing every bad row (line, field, code, message). Needs the
/// operator role (or the plaintext `admin_token`, the old way).
#[utoipa::path(
    post, path = "/admin/directory", tag = "admin",
    request_body(content = String, content_type = "text/csv", description = "id_type,id_value,fa[,attribute...]"),
    responses(
        (status = 200, description = "Imported", body = DirectoryImported),
        (status = 401, description = "No or wrong token", body = ErrorBody),
        (status = 403, description = "The token lacks the operator role", body = ErrorBody),
        (status = 422, description = "Bad rows; nothing imported", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn import_directory(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DirectoryImported>, ApiError> {
    let (actor, roles) = identify(&state, &headers)?;
    require(&actor, &roles, Role::Operator)?;
    let body = body.map_err(|_| ApiError::TooLarge {
        limit: state.settings.max_body_bytes,
    })?;
    match directory::import(state.store.as_ref(), &body, now_ms()).await {
        Ok(imported) => {
            audit(
                &state,
                &actor,
                "directory.import",
                "directory",
                None,
                Some(crate::script_files::sha256_hex(&body)),
                serde_json::json!({ "rows": imported }),
            )
            .await?;
            Ok(Json(DirectoryImported { imported }))
        }
        Err(ImportError::Rows(rows)) => Err(ApiError::Unprocessable {
            code: "validation_failed",
            message: format!("{} bad row(s); nothing was imported", rows.len()),
            details: serde_json::json!({ "rows": rows }),
        }),
        Err(ImportError::Store(e)) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<String>,
}

/// One change made through the admin API.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// The admin token's name.
    pub actor: String,
    /// `script.write`, `script.rollback`, `scripts.reload` or `directory.import`.
    pub action: String,
    /// What changed, e.g. `rules/routing.rhai`.
    pub target: String,
    /// SHA-256 of the content before (none for a new file); for a reload, the scripts'
    /// fingerprint.
    pub before_hash: Option<String>,
    pub after_hash: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditView>,
    /// Pass as `cursor` for older entries; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The audit log, newest first: who changed what through the admin API, when, with the
/// content hashes before and after.
#[utoipa::path(
    get, path = "/admin/audit", tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let (cursor, limit) = paging(q.cursor.as_deref(), q.limit.as_deref())?;
    let rows = state.store.audit_page(cursor, limit).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(AuditPage {
        entries: rows
            .into_iter()
            .map(|r| AuditView {
                id: r.id,
                at: r.entry.at,
                actor: r.entry.actor,
                action: r.entry.action,
                target: r.entry.target,
                before_hash: r.entry.before_hash,
                after_hash: r.entry.after_hash,
                detail: r.entry.detail,
            })
            .collect(),
        next_cursor,
    }))
}

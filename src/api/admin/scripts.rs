//! Script management through the admin API: list, read, validate, write, history, rollback
//! and reload of the files under `rules/` and `adapters/`.
//!
//! A change is first checked on a copy of the whole tree with the live engine
//! ([`reload::check`], exactly what a reload runs); only a change that passes is written
//! (atomically), recorded (a version with its exact bytes, and an audit row) and put in force by
//! the reloader before the call returns. Writes are serialized in this process; another
//! instance sharing the folders is caught by `base_hash`. Problems name files relative to the
//! folders and never hold a secret value. File contents are returned as written: secrets belong
//! in `${ENV}` / `file:` references, never in these files.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::super::AppState;
use super::super::error::{ApiError, ErrorBody};
use super::{Actor, audit, authorize, paging, secrets_in_force};
use crate::clock::now_ms;
use crate::config::Role;
use crate::reload::{self, Outcome, Problem};
use crate::script_files::{FileError, FileInfo, Folders, Resolved, sha256_hex};
use crate::store::{NewAudit, NewScriptVersion, ScriptChange};

/// The actor of a version that records bytes found on disk before an admin change (written
/// by someone outside the admin API). Token names cannot contain parentheses.
pub const DISK_ACTOR: &str = "(disk)";

fn folders(state: &AppState) -> Folders {
    Folders::new(&state.settings.rules_dir, &state.settings.adapters_dir)
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> ApiError {
        match e {
            FileError::InvalidPath(message) => ApiError::BadRequest {
                code: "invalid_path",
                message,
            },
            FileError::NotFound(path) => ApiError::NotFound {
                message: format!("no file '{path}'"),
            },
            FileError::Io { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|_| ApiError::TooLarge {
        limit: state.settings.max_body_bytes,
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        code: "invalid_json",
        message: format!("body is not valid: {e}"),
    })
}

fn redact_problems(problems: Vec<Problem>, secrets: &[String]) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|p| Problem {
            file: crate::tools::redact_text(&p.file, secrets),
            message: crate::tools::redact_text(&p.message, secrets),
            ..p
        })
        .collect()
}

/// What the reloader reports, for clients.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusView {
    /// Digest of the script folders in force.
    pub fingerprint: String,
    /// Digest of the folders as they are on disk now.
    pub disk_fingerprint: String,
    /// The folders' content on disk is what runs.
    pub in_force: bool,
    /// When the folders were last checked after a change (unix ms).
    pub last_attempt_at: Option<i64>,
    /// Problems of the last refused version (paths relative to the folders); empty when the
    /// last check passed.
    pub problems: Vec<Problem>,
    pub applied: u64,
    pub refused: u64,
}

fn status_view(state: &AppState) -> StatusView {
    let status = state.reloader.status();
    let disk_fingerprint =
        reload::fingerprint(&[state.reloader.rules_dir(), state.reloader.adapters_dir()]);
    let problems = redact_problems(
        folders(state).relative(status.problems),
        &secrets_in_force(state),
    );
    StatusView {
        in_force: status.fingerprint == disk_fingerprint,
        fingerprint: status.fingerprint,
        disk_fingerprint,
        last_attempt_at: status.last_attempt_at,
        problems,
        applied: status.applied,
        refused: status.refused,
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReloadView {
    /// `applied`, `unchanged` (nothing changed since the last check, e.g. the file watcher
    /// got there first) or `refused`.
    pub outcome: String,
    pub status: StatusView,
}

fn reload_view(state: &AppState, outcome: &Outcome) -> ReloadView {
    ReloadView {
        outcome: match outcome {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused(_) => "refused",
        }
        .into(),
        status: status_view(state),
    }
}

/// Checks the tree as it would be with `changes` (relative path, bytes): a copy of both folders
/// with the changes applied, loaded by the live engine with every fixture run. Returns the
/// problems, relative and redacted; empty means valid.
async fn check_proposal(
    state: &AppState,
    changes: Vec<(String, Vec<u8>)>,
) -> Result<Vec<Problem>, ApiError> {
    let folders = folders(state);
    let engine = state.live.load().bundle.engine.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<Vec<Problem>, FileError> {
        let proposal = folders.proposal(&changes)?;
        Ok(
            match reload::check(engine, &proposal.rules, &proposal.adapters) {
                Ok(_) => Vec::new(),
                Err(problems) => proposal.relative(problems),
            },
        )
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the check stopped: {e}")))??;
    Ok(redact_problems(checked, &secrets_in_force(state)))
}

fn text_of(path: &str, bytes: Vec<u8>) -> Result<String, ApiError> {
    String::from_utf8(bytes).map_err(|_| ApiError::Unprocessable {
        code: "not_text",
        message: format!("'{path}' is not UTF-8 text"),
        details: serde_json::Value::Null,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    /// Every script, adapter config and fixture (`.rhai`, `.toml`, `.json`), by path.
    pub files: Vec<FileInfo>,
}

/// Every file under `rules/` and `adapters/` with its size and SHA-256.
#[utoipa::path(
    get, path = "/admin/scripts", tag = "admin",
    responses((status = 200, body = FileList), (status = 401, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<FileList>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(FileList {
        files: folders(&state).list()?,
    }))
}

/// The reloader's status: fingerprint in force, the last refused version's problems,
/// applied and refused counts.
#[utoipa::path(
    get, path = "/admin/scripts/status", tag = "admin",
    responses((status = 200, body = StatusView), (status = 401, body = ErrorBody)),
    security(("admin_token" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<StatusView>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    Ok(Json(status_view(&state)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileContent {
    pub path: String,
    /// SHA-256 of the content: pass it as `base_hash` when writing.
    pub hash: String,
    pub content: String,
}

/// One file's content and hash.
#[utoipa::path(
    get, path = "/admin/scripts/file/{path}", tag = "admin",
    params(("path" = String, Path, description = "e.g. rules/routing.rhai or adapters/mtn-momo/adapter.toml")),
    responses(
        (status = 200, body = FileContent),
        (status = 400, description = "invalid_path", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Json<FileContent>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let folders = folders(&state);
    let resolved = folders.resolve(&path)?;
    let bytes = folders
        .read(&resolved)?
        .ok_or(FileError::NotFound(path.clone()))?;
    Ok(Json(FileContent {
        hash: sha256_hex(&bytes),
        content: text_of(&path, bytes)?,
        path,
    }))
}

/// Another file changed in the same step.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlsoFile {
    pub path: String,
    pub content: String,
    /// The hash this change was based on; refused with 409 if the file changed since.
    pub base_hash: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// e.g. `rules/routing.rhai`.
    pub path: String,
    pub content: String,
    /// Other files changed together (a new adapter needs its adapter.toml and adapter.rhai
    /// at once: neither is valid alone).
    #[serde(default)]
    pub also: Vec<AlsoFile>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Validation {
    pub valid: bool,
    /// File (relative), line, column and message of each problem.
    pub problems: Vec<Problem>,
}

/// Checks proposed content as a reload would (compile, required functions, adapter.toml,
/// secrets resolve, every adapter's fixtures) on a copy of the scripts; writes nothing.
#[utoipa::path(
    post, path = "/admin/scripts/validate", tag = "admin",
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "The verdict (valid or not)", body = Validation),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Needs the editor role", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn validate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Validation>, ApiError> {
    authorize(&state, &headers, Role::Editor)?;
    let req: ValidateRequest = json_body(&state, body)?;
    let folders = folders(&state);
    let mut changes = Vec::new();
    for (path, content) in std::iter::once((req.path, req.content))
        .chain(req.also.into_iter().map(|a| (a.path, a.content)))
    {
        folders.resolve(&path)?;
        changes.push((path, content.into_bytes()));
    }
    let problems = check_proposal(&state, changes).await?;
    Ok(Json(Validation {
        valid: problems.is_empty(),
        problems,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    pub content: String,
    /// The hash the edit was based on (from a read); refused with 409 `script_changed` if the
    /// file changed since. Absent: write whatever is there now.
    pub base_hash: Option<String>,
    /// Other files changed together, validated and written in the same step.
    #[serde(default)]
    pub also: Vec<AlsoFile>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenFile {
    pub path: String,
    /// SHA-256 of the content now on disk.
    pub hash: String,
    /// The version recorded; none when the content was already there.
    pub version_id: Option<i64>,
    pub changed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WriteOutcome {
    pub path: String,
    pub hash: String,
    pub version_id: Option<i64>,
    /// Every file of the step, the path first.
    pub files: Vec<WrittenFile>,
    /// The reload run before answering: with `applied` (or `unchanged` and `in_force`) the
    /// change is what runs.
    pub reload: ReloadView,
}

/// One file of a change, as found before writing.
struct Planned {
    resolved: Resolved,
    bytes: Vec<u8>,
    hash: String,
    before: Option<Vec<u8>>,
    before_hash: Option<String>,
}

/// Validates, writes, records and reloads a change of one or more files. Nothing is written
/// unless the whole change passes the check; a failure while writing or recording puts the
/// previous bytes back.
async fn apply(
    state: &AppState,
    actor: &Actor,
    action: &str,
    files: Vec<(String, Vec<u8>, Option<String>)>,
    detail: serde_json::Value,
) -> Result<Json<WriteOutcome>, ApiError> {
    let folders = folders(state);
    // One change at a time: the base hash check, the check and the write must see the same
    // files.
    let _one = state.scripts_lock.lock().await;
    let mut planned: Vec<Planned> = Vec::with_capacity(files.len());
    for (path, bytes, base_hash) in files {
        if planned.iter().any(|p| p.resolved.rel == path) {
            return Err(ApiError::BadRequest {
                code: "invalid_path",
                message: format!("'{path}' is named twice"),
            });
        }
        let resolved = folders.resolve(&path)?;
        let before = folders.read(&resolved)?;
        let before_hash = before.as_deref().map(sha256_hex);
        if let Some(base) = base_hash
            && Some(base.trim().to_ascii_lowercase()) != before_hash
        {
            return Err(ApiError::Conflict {
                code: "script_changed",
                message: format!(
                    "'{path}' changed since the version this edit was based on; read it again"
                ),
                details: serde_json::json!({ "path": path, "current_hash": before_hash }),
            });
        }
        planned.push(Planned {
            hash: sha256_hex(&bytes),
            resolved,
            bytes,
            before,
            before_hash,
        });
    }
    let changed: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].before.as_deref() != Some(planned[i].bytes.as_slice()))
        .collect();
    let mut version_ids = vec![None; planned.len()];
    let outcome = if changed.is_empty() {
        state.reloader.reload(false).await
    } else {
        let proposal = changed
            .iter()
            .map(|&i| (planned[i].resolved.rel.clone(), planned[i].bytes.clone()))
            .collect();
        let problems = check_proposal(state, proposal).await?;
        if !problems.is_empty() {
            return Err(ApiError::Unprocessable {
                code: "script_invalid",
                message: format!(
                    "the change does not pass the check ({} problem(s)); nothing was written",
                    problems.len()
                ),
                details: serde_json::json!({ "problems": problems }),
            });
        }
        let mut records = Vec::with_capacity(changed.len());
        for &i in &changed {
            records.push(record(state, actor, action, &planned[i], &detail).await?);
        }
        for (n, &i) in changed.iter().enumerate() {
            if let Err(e) = folders.write_atomic(&planned[i].resolved, &planned[i].bytes) {
                restore(&folders, changed[..n].iter().map(|&j| &planned[j]));
                return Err(e.into());
            }
        }
        match state.store.record_script_changes(&records).await {
            Ok(ids) => {
                for (&i, id) in changed.iter().zip(ids) {
                    version_ids[i] = Some(id);
                }
            }
            Err(e) => {
                restore(&folders, changed.iter().map(|&j| &planned[j]));
                return Err(e.into());
            }
        }
        state.reloader.reload(false).await
    };
    let files: Vec<WrittenFile> = planned
        .iter()
        .zip(version_ids)
        .enumerate()
        .map(|(i, (p, version_id))| WrittenFile {
            path: p.resolved.rel.clone(),
            hash: p.hash.clone(),
            version_id,
            changed: changed.contains(&i),
        })
        .collect();
    Ok(Json(WriteOutcome {
        path: files[0].path.clone(),
        hash: files[0].hash.clone(),
        version_id: files[0].version_id,
        reload: reload_view(state, &outcome),
        files,
    }))
}

/// The version and audit row of one written file, plus the bytes it replaces when history
/// does not hold them yet (edited outside the admin API), so a rollback can restore them.
async fn record(
    state: &AppState,
    actor: &Actor,
    action: &str,
    p: &Planned,
    detail: &serde_json::Value,
) -> Result<ScriptChange, ApiError> {
    let at = now_ms();
    let baseline = match (&p.before, &p.before_hash) {
        (Some(before), Some(before_hash)) => {
            let latest = state
                .store
                .script_versions(&p.resolved.rel, None, 1)
                .await?;
            (latest.first().map(|v| &v.version.hash) != Some(before_hash)).then(|| {
                NewScriptVersion {
                    path: p.resolved.rel.clone(),
                    hash: before_hash.clone(),
                    content: before.clone(),
                    actor: DISK_ACTOR.into(),
                    at,
                }
            })
        }
        _ => None,
    };
    Ok(ScriptChange {
        baseline,
        version: NewScriptVersion {
            path: p.resolved.rel.clone(),
            hash: p.hash.clone(),
            content: p.bytes.clone(),
            actor: actor.name.clone(),
            at,
        },
        audit: NewAudit {
            at,
            actor: actor.name.clone(),
            action: action.into(),
            target: p.resolved.rel.clone(),
            before_hash: p.before_hash.clone(),
            after_hash: Some(p.hash.clone()),
            detail: detail.clone(),
        },
    })
}

/// Puts back what was there before a write that could not be completed.
fn restore<'a>(folders: &Folders, written: impl Iterator<Item = &'a Planned>) {
    for p in written {
        let undone = match &p.before {
            Some(before) => folders.write_atomic(&p.resolved, before),
            None => folders.remove(&p.resolved),
        };
        if let Err(e) = undone {
            tracing::error!(file = %p.resolved.rel, error = %e, "cannot restore a script after a failed admin write");
        }
    }
}

/// Writes a file (new or existing) once the whole tree with it passes the check; records the
/// version and an audit row; reloads, so the change is in force when this answers.
#[utoipa::path(
    put, path = "/admin/scripts/file/{path}", tag = "admin",
    params(("path" = String, Path, description = "e.g. rules/routing.rhai")),
    request_body = WriteRequest,
    responses(
        (status = 200, description = "Written (or already there) and reloaded", body = WriteOutcome),
        (status = 400, description = "invalid_path or invalid_json", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Needs the editor role", body = ErrorBody),
        (status = 409, description = "script_changed: the file is not at base_hash", body = ErrorBody),
        (status = 422, description = "script_invalid: problems listed, nothing written", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn write(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteOutcome>, ApiError> {
    let actor = authorize(&state, &headers, Role::Editor)?;
    let req: WriteRequest = json_body(&state, body)?;
    let files = std::iter::once((path, req.content.into_bytes(), req.base_hash))
        .chain(
            req.also
                .into_iter()
                .map(|a| (a.path, a.content.into_bytes(), a.base_hash)),
        )
        .collect();
    apply(&state, &actor, "script.write", files, serde_json::json!({})).await
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    pub id: i64,
    pub hash: String,
    /// The token that wrote it; `(disk)` for bytes found on disk before an admin change.
    pub actor: String,
    /// Unix milliseconds.
    pub at: i64,
    /// Unified diff against the previous version (the first: against nothing).
    pub diff: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    pub path: String,
    /// SHA-256 of the file on disk now; none when there is no file.
    pub current_hash: Option<String>,
    /// Newest first.
    pub versions: Vec<VersionView>,
    pub next_cursor: Option<String>,
}

fn unified_diff(path: &str, old: &[u8], old_name: &str, new: &[u8], new_name: &str) -> String {
    let old = String::from_utf8_lossy(old);
    let new = String::from_utf8_lossy(new);
    similar::TextDiff::from_lines(old.as_ref(), new.as_ref())
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path}@{old_name}"), &format!("{path}@{new_name}"))
        .to_string()
}

/// The versions of a file written through the admin API, newest first, each with a unified
/// diff against the one before.
#[utoipa::path(
    get, path = "/admin/scripts/history/{path}", tag = "admin",
    params(("path" = String, Path, description = "e.g. rules/routing.rhai"), HistoryQuery),
    responses(
        (status = 200, body = History),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    authorize(&state, &headers, Role::Viewer)?;
    let folders = folders(&state);
    let resolved = folders.resolve(&path)?;
    let current_hash = folders.read(&resolved)?.as_deref().map(sha256_hex);
    let (cursor, limit) = paging(q.cursor.as_deref(), q.limit.as_deref())?;
    // One more than the page, for the diff of its oldest version.
    let rows = state
        .store
        .script_versions(&path, cursor, limit + 1)
        .await?;
    let shown = rows.len().min(limit as usize);
    let versions = (0..shown)
        .map(|i| {
            let v = &rows[i];
            let (old, old_name) = match rows.get(i + 1) {
                Some(prev) => (prev.version.content.as_slice(), prev.id.to_string()),
                None => (&[][..], "none".to_string()),
            };
            VersionView {
                id: v.id,
                hash: v.version.hash.clone(),
                actor: v.version.actor.clone(),
                at: v.version.at,
                diff: unified_diff(&path, old, &old_name, &v.version.content, &v.id.to_string()),
            }
        })
        .collect();
    let next_cursor = (rows.len() > shown).then(|| rows[shown - 1].id.to_string());
    Ok(Json(History {
        path,
        current_hash,
        versions,
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A version of this file (from its history).
    pub version_id: i64,
}

/// Writes back exactly the bytes of an earlier version, checked, recorded and reloaded like a
/// write (a rollback is a new version with the old bytes).
#[utoipa::path(
    post, path = "/admin/scripts/rollback/{path}", tag = "admin",
    params(("path" = String, Path, description = "e.g. rules/routing.rhai")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "Restored and reloaded", body = WriteOutcome),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Needs the editor role", body = ErrorBody),
        (status = 404, description = "No such version of this file", body = ErrorBody),
        (status = 422, description = "script_invalid: the old version does not pass the check with today's other files", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WriteOutcome>, ApiError> {
    let actor = authorize(&state, &headers, Role::Editor)?;
    let req: RollbackRequest = json_body(&state, body)?;
    folders(&state).resolve(&path)?;
    let version = state
        .store
        .script_version(req.version_id)
        .await?
        .filter(|v| v.version.path == path)
        .ok_or_else(|| ApiError::NotFound {
            message: format!("no version {} of '{path}'", req.version_id),
        })?;
    apply(
        &state,
        &actor,
        "script.rollback",
        vec![(path, version.version.content, None)],
        serde_json::json!({ "restored_version": version.id }),
    )
    .await
}

/// Checks and loads the scripts again even if no file changed, re-reading the secrets their
/// adapter.toml files reference (after a rotation).
#[utoipa::path(
    post, path = "/admin/scripts/reload", tag = "admin",
    responses(
        (status = 200, description = "The outcome (applied or refused, with problems)", body = ReloadView),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Needs the editor role", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub async fn reload(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ReloadView>, ApiError> {
    let actor = authorize(&state, &headers, Role::Editor)?;
    let _one = state.scripts_lock.lock().await;
    let before = state.reloader.status().fingerprint;
    let outcome = state.reloader.reload(true).await;
    let view = reload_view(&state, &outcome);
    audit(
        &state,
        &actor,
        "scripts.reload",
        "scripts",
        Some(before),
        Some(view.status.fingerprint.clone()),
        serde_json::json!({
            "outcome": view.outcome,
            "problems": view.status.problems.len(),
        }),
    )
    .await?;
    Ok(Json(view))
}

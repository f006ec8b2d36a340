//! The G2P Connect disbursement API (`disburse_core_api_v1.0.0`): `POST /disburse` (async,
//! acknowledged at once, results pushed to `{sender_uri}/on-disburse`), `/disburse/txn/status`
//! (answered via `{sender_uri}/disburse/txn/on-status`) and the sync variants
//! `/disburse/sync/disburse` and `/disburse/sync/txn/status`.
//!
//! Senders are configured (`[senders.<id>]`): a bearer token each and, optionally, a public key
//! that every message's `signature` must verify against (a detached JWS over the exact
//! `header` text followed by the exact `message` text). A message that fails any envelope
//! check is refused with the spec's error code and stores nothing. Items are checked one by
//! one: a bad item is reported `rjct` with the spec's reason code, the others go ahead.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::address::FinancialAddress;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::ingest::{self, Item};
use crate::jws;
use crate::payment::Payment;
use crate::report::{self, rejected_item};
use crate::store::{BatchInsert, BatchRecord, NewBatch, NewOutbox, NewPayment, Rejection};

/// A configured sender, its secrets resolved once at start.
pub struct Sender {
    pub id: String,
    token_digest: [u8; 32],
    key: Option<jws::VerifyingKey>,
    callback_url: Option<String>,
}

/// Resolves every `[senders.<id>]` (tokens, keys); any error stops PIL from starting.
pub fn resolve_senders(settings: &Settings) -> Result<Vec<Sender>, String> {
    settings
        .senders
        .iter()
        .map(|(id, s)| {
            let token = crate::adapter::resolve_references(&s.token)
                .map_err(|e| format!("senders.{id}.token: {e}"))?;
            if token.is_empty() {
                return Err(format!("senders.{id}.token is empty"));
            }
            let key = match &s.public_key {
                None => None,
                Some(k) => {
                    let pem = crate::adapter::resolve_references(k)
                        .map_err(|e| format!("senders.{id}.public_key: {e}"))?;
                    Some(
                        jws::VerifyingKey::from_pem(&pem)
                            .map_err(|e| format!("senders.{id}.public_key: {e}"))?,
                    )
                }
            };
            Ok(Sender {
                id: id.clone(),
                token_digest: Sha256::digest(token.as_bytes()).into(),
                key,
                callback_url: s.callback_url.clone(),
            })
        })
        .collect()
}

/// A refused message: the spec's transport error code, as an `ERR` acknowledgement (or, for
/// authentication, the spec's `HttpErrorResponse`).
#[derive(Debug)]
pub struct G2pError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> G2pError {
    G2pError {
        status,
        code,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> G2pError {
    refuse(StatusCode::BAD_REQUEST, "err.request.bad", message)
}

impl IntoResponse for G2pError {
    fn into_response(self) -> Response {
        let body = if matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::INTERNAL_SERVER_ERROR
        ) {
            json!({"errors": [{"code": self.code, "message": self.message}]})
        } else {
            json!({"message": {
                "ack_status": "ERR",
                "timestamp": report::rfc3339(now_ms()),
                "error": {"code": self.code, "message": self.message},
                "correlation_id": uuid::Uuid::now_v7().to_string(),
            }})
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::store::StoreError> for G2pError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "err.service.unavailable",
            "internal error; see the server log",
        )
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    signature: Option<String>,
    #[serde(borrow)]
    header: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct Header {
    version: Option<String>,
    message_id: Option<String>,
    message_ts: Option<String>,
    action: Option<String>,
    sender_id: Option<String>,
    sender_uri: Option<String>,
    total_count: Option<Value>,
    is_msg_encrypted: Option<bool>,
}

/// A message that passed the envelope checks.
struct Incoming<'s> {
    sender: &'s Sender,
    header: Header,
    message: Value,
}

/// Authenticates the sender, checks the envelope and the signature.
fn open<'s>(
    senders: &'s [Sender],
    headers: &HeaderMap,
    body: &[u8],
    actions: &[&str],
) -> Result<Incoming<'s>, G2pError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "err.request.unauthorized",
                "a bearer token is required (Authorization: Bearer ...)",
            )
        })?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let sender = senders
        .iter()
        .find(|s| s.token_digest == digest)
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "err.request.unauthorized",
                "the bearer token is not valid",
            )
        })?;
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| bad(format!("body is not a G2P Connect envelope: {e}")))?;
    let (Some(raw_header), Some(raw_message)) = (envelope.header, envelope.message) else {
        return Err(bad("the envelope needs a header and a message"));
    };
    let header: Header =
        serde_json::from_str(raw_header.get()).map_err(|e| bad(format!("header: {e}")))?;
    let missing: Vec<&str> = [
        ("message_id", header.message_id.is_none()),
        ("message_ts", header.message_ts.is_none()),
        ("action", header.action.is_none()),
        ("sender_id", header.sender_id.is_none()),
        ("total_count", header.total_count.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, absent)| absent.then_some(name))
    .collect();
    if !missing.is_empty() {
        return Err(bad(format!("header: missing {}", missing.join(", "))));
    }
    if let Some(v) = header.version.as_deref()
        && v != "1.0.0"
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "err.version.not_supported",
            format!("header.version {v} is not supported (1.0.0 is)"),
        ));
    }
    if header.sender_id.as_deref() != Some(sender.id.as_str()) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "err.sender_id.invalid",
            "header.sender_id is not the sender the bearer token belongs to",
        ));
    }
    if let Some(ts) = header.message_ts.as_deref()
        && chrono::DateTime::parse_from_rfc3339(ts).is_err()
    {
        return Err(bad(format!(
            "header.message_ts '{ts}' is not an ISO 8601 date-time with a zone"
        )));
    }
    let action = header.action.as_deref().unwrap_or_default();
    if !actions.contains(&action) {
        return Err(bad(format!(
            "header.action '{action}' is not valid here (expected {})",
            actions.join(" or ")
        )));
    }
    if let Some(key) = &sender.key {
        let signature = envelope
            .signature
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "err.signature.missing",
                    "this sender's messages must be signed",
                )
            })?;
        let payload = [raw_header.get().as_bytes(), raw_message.get().as_bytes()].concat();
        jws::verify_detached(signature, &payload, key).map_err(|e| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "err.signature.invalid",
                format!("the message signature does not verify: {e}"),
            )
        })?;
    }
    if header.is_msg_encrypted == Some(true) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "err.encryption.invalid",
            "encrypted messages are not supported; send is_msg_encrypted false over TLS",
        ));
    }
    let message: Value =
        serde_json::from_str(raw_message.get()).map_err(|e| bad(format!("message: {e}")))?;
    Ok(Incoming {
        sender,
        header,
        message,
    })
}

fn ack(correlation_id: &str) -> Json<Value> {
    Json(json!({"message": {
        "ack_status": "ACK",
        "timestamp": report::rfc3339(now_ms()),
        "correlation_id": correlation_id,
    }}))
}

/// What a disburse message became.
struct Accepted {
    batch: BatchRecord,
    /// Items that could not be stored (no usable or an already used reference id), reported
    /// `rjct` in the answer or callback.
    not_stored: Vec<Value>,
    replay: bool,
}

fn str_field(item: &Value, key: &str) -> Option<String> {
    item.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Validates one disbursement item into a row (possibly stored already `rejected`).
fn row_of(item: &Value, reference_id: String, limits: &ingest::Limits) -> NewPayment {
    let reject = |code: &str, message: String| NewPayment {
        id: uuid::Uuid::now_v7().to_string(),
        reference_id: reference_id.clone(),
        payee_fa: str_field(item, "payee_fa"),
        payee_name: str_field(item, "payee_name"),
        currency: crate::money::Currency::NONE.code().into(),
        rejected: Some(Rejection {
            code: code.into(),
            message,
        }),
        ..NewPayment::default()
    };
    if !item.is_object() {
        return reject(
            "disbursement.invalid",
            "a disbursement must be an object".into(),
        );
    }
    let candidate = Item {
        reference_id: Some(Value::String(reference_id.clone())),
        payee_fa: Some(item.get("payee_fa").cloned().unwrap_or(Value::Null)),
        amount: item.get("amount").cloned(),
        currency: item.get("currency_code").cloned(),
        payee_name: item.get("payee_name").cloned(),
        note: item.get("note").cloned(),
        ..Item::default()
    };
    let mut row = match ingest::validate(std::slice::from_ref(&candidate), limits) {
        Ok(mut rows) => rows.remove(0),
        Err(errors) => {
            let first = &errors[0];
            // PIL's own code is stored; reports show the spec's code where the spec has one.
            let code = first.code.as_str();
            let message = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let mut row = reject(code, message);
            if let Ok(c) = crate::money::Currency::from_code(
                item.get("currency_code")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ) {
                row.currency = c.code().into();
            }
            return row;
        }
    };
    if let Some(payer) = str_field(item, "payer_fa").filter(|s| !s.is_empty())
        && let Err(e) = FinancialAddress::parse(&payer)
    {
        return reject("rjct.payer_fa.invalid", format!("payer_fa: {e}"));
    }
    if let Some(note) = str_field(item, "note")
        && note.chars().count() > 99
    {
        return reject("note.too_long", "note: more than 99 characters".into());
    }
    match item.get("scheduled_timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(ts)) if ts.is_empty() => {}
        Some(Value::String(ts)) => match chrono::DateTime::parse_from_rfc3339(ts) {
            Ok(at) => row.not_before = Some(at.timestamp_millis()),
            Err(e) => {
                return reject(
                    "rjct.schedule_ts.invalid",
                    format!(
                        "scheduled_timestamp '{ts}' is not an ISO 8601 date-time with a zone: {e}"
                    ),
                );
            }
        },
        Some(_) => {
            return reject(
                "rjct.schedule_ts.invalid",
                "scheduled_timestamp must be a date-time string".into(),
            );
        }
    }
    // The envelope fields PIL does not act on travel with the payment (scripts see them in
    // payment.meta._g2p) and come back in status reports.
    let mut meta = match item.get("meta") {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let extra: serde_json::Map<String, Value> =
        ["payer_fa", "payer_name", "purpose", "instruction", "locale"]
            .into_iter()
            .filter_map(|k| {
                item.get(k)
                    .filter(|v| v.is_string())
                    .map(|v| (k.to_string(), v.clone()))
            })
            .collect();
    if !extra.is_empty() {
        meta.insert("_g2p".into(), Value::Object(extra));
    }
    row.meta = (!meta.is_empty()).then_some(Value::Object(meta));
    row
}

async fn accept_disburse(
    state: &AppState,
    incoming: &Incoming<'_>,
    callback_base: Option<String>,
) -> Result<Accepted, G2pError> {
    let sender_id = incoming.sender.id.as_str();
    let msg = &incoming.message;
    let transaction_id = match msg.get("transaction_id") {
        Some(Value::String(t)) if !t.is_empty() && t.chars().count() <= 99 => t.clone(),
        _ => {
            return Err(bad(
                "message.transaction_id is required: a string of 1-99 characters",
            ));
        }
    };
    let Some(items) = msg.get("disbursements").and_then(Value::as_array) else {
        return Err(bad("message.disbursements is required: an array"));
    };
    if items.is_empty() || items.len() > state.settings.max_batch_payments {
        return Err(bad(format!(
            "message.disbursements must hold 1 to {} items",
            state.settings.max_batch_payments
        )));
    }
    let total = incoming.header.total_count.as_ref().and_then(Value::as_u64);
    if total != Some(items.len() as u64) {
        return Err(bad(format!(
            "header.total_count ({}) is not the number of disbursements ({})",
            incoming
                .header
                .total_count
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default(),
            items.len()
        )));
    }
    let hash = hex::encode(Sha256::digest(msg.to_string().as_bytes()));
    if let Some(existing) = state.store.find_batch(sender_id, &transaction_id).await? {
        if existing.request_hash != hash {
            return Err(refuse(
                StatusCode::CONFLICT,
                "err.request.bad",
                format!(
                    "transaction_id '{transaction_id}' was already used with different content"
                ),
            ));
        }
        return Ok(Accepted {
            batch: existing,
            not_stored: Vec::new(),
            replay: true,
        });
    }
    let now = now_ms();
    let limits = ingest::Limits {
        max_amount: state.settings.max_amount,
        max_payments: state.settings.max_batch_payments,
    };
    let references: Vec<String> = items
        .iter()
        .filter_map(|i| {
            i.get("reference_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    let used: HashSet<String> = state
        .store
        .existing_references(sender_id, &references)
        .await?
        .into_iter()
        .collect();
    let mut seen = HashSet::new();
    let mut rows = Vec::with_capacity(items.len());
    let mut not_stored = Vec::new();
    for item in items {
        let reference = match item.get("reference_id") {
            Some(Value::String(r))
                if !r.is_empty() && r.chars().count() <= ingest::MAX_REFERENCE_LEN =>
            {
                r.clone()
            }
            other => {
                let shown = other.and_then(Value::as_str).unwrap_or_default();
                not_stored.push(rejected_item(
                    shown,
                    "rjct.reference_id.invalid",
                    "reference_id is required: a string of 1-128 characters",
                    now,
                ));
                continue;
            }
        };
        if used.contains(&reference) || !seen.insert(reference.clone()) {
            not_stored.push(rejected_item(
                &reference,
                "rjct.reference_id.duplicate",
                &format!("reference_id '{reference}' was already used by sender '{sender_id}'"),
                now,
            ));
            continue;
        }
        rows.push(row_of(item, reference, &limits));
    }
    let batch = NewBatch {
        id: uuid::Uuid::now_v7().to_string(),
        sender_id: sender_id.to_string(),
        batch_id: transaction_id.clone(),
        request_hash: hash,
        created_at: now,
        channel: "g2p".into(),
        callback_url: callback_base,
    };
    match state.store.insert_batch(&batch, &rows).await? {
        BatchInsert::Created(b) => {
            state.wake.notify_waiters();
            Ok(Accepted {
                batch: b,
                not_stored,
                replay: false,
            })
        }
        BatchInsert::Replayed(b) => Ok(Accepted {
            batch: b,
            not_stored: Vec::new(),
            replay: true,
        }),
        BatchInsert::Conflict(_) => Err(refuse(
            StatusCode::CONFLICT,
            "err.request.bad",
            format!("transaction_id '{transaction_id}' was already used with different content"),
        )),
        BatchInsert::DuplicateReferences(refs) => Err(refuse(
            StatusCode::CONFLICT,
            "err.request.bad",
            format!(
                "reference ids were used concurrently by another message: {}",
                refs.join(", ")
            ),
        )),
    }
}

fn callback_base(incoming: &Incoming<'_>) -> Option<String> {
    incoming
        .header
        .sender_uri
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| incoming.sender.callback_url.clone())
}

fn body_bytes(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, G2pError> {
    body.map_err(|_| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "err.request.bad",
            format!(
                "the body is larger than {} bytes",
                state.settings.max_body_bytes
            ),
        )
    })
}

fn valid_base(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// The callback base an asynchronous request needs.
fn required_base(incoming: &Incoming<'_>, callback: &str) -> Result<String, G2pError> {
    callback_base(incoming)
        .filter(|u| valid_base(u))
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "err.sender_uri.invalid",
                format!("header.sender_uri must be an http(s) URL to send {callback} to"),
            )
        })
}

/// Disburse, asynchronously: `ACK` at once; per-item results go to `{sender_uri}/on-disburse`
/// (and every later status change too).
#[utoipa::path(
    post, path = "/disburse", tag = "g2p-connect",
    request_body(content = Object, description = "{signature, header, message} envelope (G2P Connect disburse core API v1.0.0)"),
    responses(
        (status = 200, description = "ACK; results follow at {sender_uri}/on-disburse", body = Object),
        (status = 400, description = "ERR acknowledgement: err.request.bad, err.version.not_supported, err.encryption.invalid, err.sender_uri.invalid", body = Object),
        (status = 401, description = "err.request.unauthorized, err.signature.missing, err.signature.invalid", body = Object),
        (status = 403, description = "err.sender_id.invalid", body = Object),
        (status = 409, description = "transaction_id reused with other content", body = Object),
    ),
    security(("sender_token" = []))
)]
pub async fn disburse(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, G2pError> {
    let body = body_bytes(&state, body)?;
    let incoming = open(&state.senders, &headers, &body, &["disburse"])?;
    let base = required_base(&incoming, "on-disburse")?;
    let accepted = accept_disburse(&state, &incoming, Some(base.clone())).await?;
    let now = now_ms();
    let mut rows: Vec<NewOutbox> = Vec::new();
    let sender_id = &incoming.sender.id;
    if accepted.replay {
        // The sender may have missed callbacks: report the whole transaction again.
        let payments = state
            .store
            .batch_payments_in_order(&accepted.batch.id)
            .await?;
        let items = payments.iter().map(report::item_status).collect();
        rows.extend(report::on_disburse(
            &state.signer,
            sender_id,
            &base,
            &accepted.batch.batch_id,
            items,
            now,
        ));
    } else if !accepted.not_stored.is_empty() {
        rows.extend(report::on_disburse(
            &state.signer,
            sender_id,
            &base,
            &accepted.batch.batch_id,
            accepted.not_stored,
            now,
        ));
    }
    if !rows.is_empty() {
        state.store.outbox_enqueue(&rows, None, now).await?;
    }
    Ok(ack(&accepted.batch.id))
}

/// A signed envelope answer.
fn signed(state: &AppState, sender_id: &str, message: Value, items_of: &[Value]) -> Response {
    let header = report::callback_header("on-disburse", sender_id, items_of, now_ms());
    let text = state.signer.envelope(&header, &message);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// Disburse, synchronously: answers with per-item statuses once all are final or after
/// `g2p_sync_wait_ms`. The request's `action` may be `disburse` or, as the spec's enum
/// (mis)states, `search`.
#[utoipa::path(
    post, path = "/disburse/sync/disburse", tag = "g2p-connect",
    request_body(content = Object, description = "{signature, header, message} envelope (G2P Connect disburse core API v1.0.0)"),
    responses(
        (status = 200, description = "Signed envelope with per-item statuses (DisburseResponse)", body = Object),
        (status = 400, description = "ERR acknowledgement: err.request.bad, err.version.not_supported, err.encryption.invalid, err.sender_uri.invalid", body = Object),
        (status = 401, description = "err.request.unauthorized, err.signature.missing, err.signature.invalid", body = Object),
        (status = 403, description = "err.sender_id.invalid", body = Object),
        (status = 409, description = "transaction_id reused with other content", body = Object),
    ),
    security(("sender_token" = []))
)]
pub async fn sync_disburse(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, G2pError> {
    let body = body_bytes(&state, body)?;
    let incoming = open(&state.senders, &headers, &body, &["disburse", "search"])?;
    let base = callback_base(&incoming).filter(|u| valid_base(u));
    let accepted = accept_disburse(&state, &incoming, base).await?;
    super::wait_final(
        state.store.as_ref(),
        &accepted.batch.id,
        Duration::from_millis(state.settings.g2p_sync_wait_ms),
    )
    .await?;
    let payments = state
        .store
        .batch_payments_in_order(&accepted.batch.id)
        .await?;
    let mut items: Vec<Value> = payments.iter().map(report::item_status).collect();
    items.extend(accepted.not_stored);
    let message = report::disburse_response(&accepted.batch.batch_id, items.clone());
    Ok(signed(&state, &incoming.sender.id, message, &items))
}

/// The payments a status request names, and the `transaction_id` they belong to.
async fn status_items(
    state: &AppState,
    incoming: &Incoming<'_>,
) -> Result<(String, String, Vec<Value>), G2pError> {
    let sender_id = incoming.sender.id.as_str();
    let msg = &incoming.message;
    let Some(request) = msg.get("txnstatus_request").filter(|r| r.is_object()) else {
        return Err(bad("message.txnstatus_request is required"));
    };
    let txn_type = request
        .get("txn_type")
        .and_then(Value::as_str)
        .unwrap_or("disburse");
    if txn_type != "disburse" {
        return Err(bad(format!(
            "txn_type '{txn_type}' is not supported (disburse is)"
        )));
    }
    let value = request.get("attribute_value");
    let now = now_ms();
    let (batch, payments, unknown): (Option<BatchRecord>, Vec<Payment>, Vec<String>) = match request
        .get("attribute_type")
        .and_then(Value::as_str)
    {
        Some("transaction_id") | Some("correlation_id") => {
            let Some(id) = value.and_then(Value::as_str) else {
                return Err(bad("attribute_value must be a string here"));
            };
            let batch = if request["attribute_type"] == "transaction_id" {
                state.store.find_batch(sender_id, id).await?
            } else {
                state
                    .store
                    .get_batch(id)
                    .await?
                    .filter(|b| b.sender_id == sender_id)
            };
            let Some(batch) = batch else {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    "err.request.not_found",
                    format!("no disbursement '{id}' from sender '{sender_id}'"),
                ));
            };
            let payments = state.store.batch_payments_in_order(&batch.id).await?;
            (Some(batch), payments, Vec::new())
        }
        Some("reference_id_list") => {
            let Some(list) = value.and_then(Value::as_array) else {
                return Err(bad("attribute_value must be a list of reference ids here"));
            };
            let refs: Vec<String> = list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let mut found = state.store.payments_by_references(sender_id, &refs).await?;
            let known: HashSet<&str> = found.iter().map(|p| p.reference_id.as_str()).collect();
            let unknown = refs
                .iter()
                .filter(|r| !known.contains(r.as_str()))
                .cloned()
                .collect();
            found.sort_by(|a, b| (&a.batch_id, a.seq).cmp(&(&b.batch_id, b.seq)));
            (None, found, unknown)
        }
        other => {
            return Err(bad(format!(
                "attribute_type {} is not supported (transaction_id, reference_id_list, correlation_id are)",
                other.unwrap_or("(missing)")
            )));
        }
    };
    let transaction_id = match &batch {
        Some(b) => b.batch_id.clone(),
        None => msg
            .get("transaction_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    };
    let correlation_id = batch
        .as_ref()
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), |b| b.id.clone());
    let mut items: Vec<Value> = payments.iter().map(report::item_status).collect();
    items.extend(unknown.iter().map(|r| {
        rejected_item(
            r,
            "rjct.reference_id.invalid",
            "no payment with this reference_id",
            now,
        )
    }));
    Ok((transaction_id, correlation_id, items))
}

/// `TxnStatusResponse`: the request's own `transaction_id` outside, the disbursement's inside.
fn status_message(
    incoming: &Incoming<'_>,
    transaction_id: &str,
    correlation_id: &str,
    items: &[Value],
) -> Value {
    let request_txn = incoming
        .message
        .get("transaction_id")
        .and_then(Value::as_str)
        .unwrap_or(transaction_id);
    let mut message = report::txn_status_response(request_txn, correlation_id, items.to_vec());
    message["txnstatus_response"]["txn_status"]["transaction_id"] =
        Value::String(transaction_id.into());
    message
}

const STATUS_ACTIONS: &[&str] = &[
    "txn/status",
    "status",
    "search",
    "on-disburse",
    "on-search",
    "subscribe",
];

/// Status of earlier disbursements, asynchronously: `ACK`, then
/// `{sender_uri}/disburse/txn/on-status`.
#[utoipa::path(
    post, path = "/disburse/txn/status", tag = "g2p-connect",
    request_body(content = Object, description = "{signature, header, message} envelope (G2P Connect disburse core API v1.0.0)"),
    responses(
        (status = 200, description = "ACK; the answer follows at {sender_uri}/disburse/txn/on-status", body = Object),
        (status = 400, description = "ERR acknowledgement: err.request.bad, err.version.not_supported, err.encryption.invalid, err.sender_uri.invalid", body = Object),
        (status = 401, description = "err.request.unauthorized, err.signature.missing, err.signature.invalid", body = Object),
        (status = 403, description = "err.sender_id.invalid", body = Object),
        (status = 404, description = "err.request.not_found", body = Object),
    ),
    security(("sender_token" = []))
)]
pub async fn txn_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, G2pError> {
    let body = body_bytes(&state, body)?;
    let incoming = open(&state.senders, &headers, &body, STATUS_ACTIONS)?;
    let base = required_base(&incoming, "on-status")?;
    let (transaction_id, correlation_id, items) = status_items(&state, &incoming).await?;
    let now = now_ms();
    let message = status_message(&incoming, &transaction_id, &correlation_id, &items);
    let header = report::callback_header("on-disburse", &incoming.sender.id, &items, now);
    let row = NewOutbox {
        sender_id: incoming.sender.id.clone(),
        url: report::callback_url(&base, "disburse/txn/on-status"),
        body: state.signer.envelope(&header, &message),
    };
    state.store.outbox_enqueue(&[row], None, now).await?;
    Ok(ack(&correlation_id))
}

/// Status of earlier disbursements, answered inline.
#[utoipa::path(
    post, path = "/disburse/sync/txn/status", tag = "g2p-connect",
    request_body(content = Object, description = "{signature, header, message} envelope (G2P Connect disburse core API v1.0.0)"),
    responses(
        (status = 200, description = "Signed envelope with TxnStatusResponse", body = Object),
        (status = 400, description = "ERR acknowledgement: err.request.bad, err.version.not_supported, err.encryption.invalid, err.sender_uri.invalid", body = Object),
        (status = 401, description = "err.request.unauthorized, err.signature.missing, err.signature.invalid", body = Object),
        (status = 403, description = "err.sender_id.invalid", body = Object),
        (status = 404, description = "err.request.not_found", body = Object),
    ),
    security(("sender_token" = []))
)]
pub async fn sync_txn_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, G2pError> {
    let body = body_bytes(&state, body)?;
    let incoming = open(&state.senders, &headers, &body, STATUS_ACTIONS)?;
    let (transaction_id, correlation_id, items) = status_items(&state, &incoming).await?;
    let message = status_message(&incoming, &transaction_id, &correlation_id, &items);
    Ok(signed(&state, &incoming.sender.id, message, &items))
}

/// PIL's public key (SPKI PEM) for checking the signatures of its callbacks and answers.
#[utoipa::path(get, path = "/signing-key.pem", tag = "g2p-connect", responses((status = 200, description = "SPKI PEM", content_type = "application/x-pem-file", body = String)))]
pub async fn signing_key(State(state): State<AppState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        state.signer.public_pem(),
    )
        .into_response()
}

//! Report: tells G2P Connect senders what happened to their payments. It owns the
//! `on-disburse` / `on-status` envelopes (signed with PIL's key), the notifier that turns new
//! history entries into queued callbacks, and the delivery loop that posts queued callbacks
//! until the sender takes them. It reads payments; it never changes them.
//!
//! Durability: the notifier follows the append-only history with a cursor that moves in the
//! same transaction as the callbacks it queued, and delivery marks a callback delivered only
//! after the sender answered 2xx. A crash or a sender outage loses nothing; at worst a
//! callback is delivered twice (senders key on `reference_id`, and statuses only move on).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::config::Settings;
use crate::jws;
use crate::money::{Money, format_canonical, format_fixed};
use crate::payment::Payment;
use crate::store::{NewOutbox, Store, StoreError};

/// Items per callback message: large batches report in several messages.
pub const ITEMS_PER_CALLBACK: usize = 1_000;
const CURSOR: &str = "g2p-notifier";
/// History entries looked at per notifier pass.
const SCAN_WINDOW: i64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("signing key {path}: {message}")]
    Key { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// PIL's signing key for the envelopes it sends.
pub struct Signer {
    key: jws::SigningKey,
    kid: String,
}

impl Signer {
    /// Loads the PKCS#8 PEM key at `path`, or creates an Ed25519 key there (mode 0600) when
    /// the file does not exist, so callbacks stay verifiable across restarts.
    pub fn load_or_create(path: &Path) -> Result<Signer, ReportError> {
        let fail = |message: String| ReportError::Key {
            path: path.display().to_string(),
            message,
        };
        let key = if path.exists() {
            let pem = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            jws::SigningKey::from_pem(&pem).map_err(|e| fail(e.to_string()))?
        } else {
            let key = jws::SigningKey::generate_ed25519();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
            write_private(path, &key.to_pkcs8_pem()).map_err(|e| fail(e.to_string()))?;
            key
        };
        Ok(Signer {
            kid: "pil".into(),
            key,
        })
    }

    pub fn public_pem(&self) -> String {
        self.key.public_pem()
    }

    /// `{signature, header, message}` where the signature is a detached JWS over the exact
    /// header text followed by the exact message text (see README, "Signatures").
    pub fn envelope(&self, header: &Value, message: &Value) -> String {
        let h = header.to_string();
        let m = message.to_string();
        let payload = [h.as_bytes(), m.as_bytes()].concat();
        let signature = jws::sign_detached(&payload, &self.key, Some(&self.kid));
        format!(
            "{{\"signature\":{},\"header\":{h},\"message\":{m}}}",
            Value::String(signature)
        )
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// RFC 3339 in UTC, as G2P Connect timestamps are.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The spec's amount shape (`^\d{1,13}\.\d{1,2}$`): two decimals, or the exact canonical
/// form when a 3-decimal currency's amount needs the third.
pub fn g2p_amount(m: &Money) -> String {
    let d = m.to_decimal();
    match format_fixed(d, 2) {
        Ok(s) => s,
        Err(_) => format_canonical(d),
    }
}

/// The spec's item reason code for one of PIL's, when the spec has one.
pub fn g2p_reason(code: &str) -> Option<&'static str> {
    let code = code.strip_prefix("rjct.").unwrap_or(code);
    Some(match code.split('.').next().unwrap_or_default() {
        "reference_id" if code.ends_with("duplicate") => "rjct.reference_id.duplicate",
        "reference_id" => "rjct.reference_id.invalid",
        "payee_fa" | "payee_id_type" | "payee_id_value" | "payee" => "rjct.payee_fa.invalid",
        "payer_fa" => "rjct.payer_fa.invalid",
        "amount" => "rjct.amount.invalid",
        "currency_code" | "currency" => "rjct.currency_code.invalid",
        "schedule_ts" | "scheduled_timestamp" => "rjct.schedule_ts.invalid",
        "timestamp" => "rjct.timestamp.invalid",
        _ => return None,
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// One `disbursements_status` item for a stored payment.
pub fn item_status(p: &Payment) -> Value {
    let mut item = serde_json::Map::new();
    item.insert("reference_id".into(), p.reference_id.clone().into());
    item.insert("timestamp".into(), rfc3339(p.updated_at).into());
    item.insert("status".into(), p.status.g2p_connect().into());
    if p.status.g2p_connect() == "rjct" {
        if let Some(code) = p.reason_code.as_deref().and_then(g2p_reason) {
            item.insert("status_reason_code".into(), code.into());
        }
        let message = match (&p.reason_code, &p.reason) {
            (Some(c), Some(r)) => format!("{c}: {r}"),
            (Some(c), None) => c.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => p.status.as_str().to_string(),
        };
        item.insert(
            "status_reason_message".into(),
            truncate(&message, 999).into(),
        );
    }
    if p.amount.currency() != crate::money::Currency::NONE {
        item.insert("amount".into(), g2p_amount(&p.amount).into());
        item.insert("currency_code".into(), p.amount.currency().code().into());
    }
    if let Some(fa) = &p.payee_fa {
        item.insert("payee_fa".into(), fa.clone().into());
    }
    if let Some(name) = &p.payee_name {
        item.insert("payee_name".into(), name.clone().into());
    }
    // Envelope fields kept from the request (see api::g2p).
    if let Some(Value::Object(extra)) = p.meta.as_ref().and_then(|m| m.get("_g2p")) {
        for key in ["payer_fa", "payer_name", "instruction", "locale"] {
            if let Some(v @ Value::String(_)) = extra.get(key) {
                item.insert(key.into(), v.clone());
            }
        }
    }
    Value::Object(item)
}

/// A rejection of an item that was not stored (a reference id the sender already used).
pub fn rejected_item(reference_id: &str, code: &str, message: &str, now: i64) -> Value {
    json!({
        "reference_id": reference_id,
        "timestamp": rfc3339(now),
        "status": "rjct",
        "status_reason_code": code,
        "status_reason_message": truncate(message, 999),
    })
}

/// The callback header (`MsgCallbackHeader_V1.0.0`).
pub fn callback_header(action: &str, receiver_id: &str, items: &[Value], now: i64) -> Value {
    let completed = items
        .iter()
        .filter(|i| matches!(i["status"].as_str(), Some("succ" | "rjct")))
        .count();
    json!({
        "version": "1.0.0",
        "message_id": uuid::Uuid::now_v7().to_string(),
        "message_ts": rfc3339(now),
        "action": action,
        "status": "succ",
        "total_count": items.len(),
        "completed_count": completed,
        "sender_id": "pil",
        "receiver_id": receiver_id,
        "is_msg_encrypted": false,
    })
}

pub fn disburse_response(transaction_id: &str, items: Vec<Value>) -> Value {
    json!({"transaction_id": transaction_id, "disbursements_status": items})
}

pub fn txn_status_response(transaction_id: &str, correlation_id: &str, items: Vec<Value>) -> Value {
    json!({
        "transaction_id": transaction_id,
        "correlation_id": correlation_id,
        "txnstatus_response": {
            "txn_type": "on-disburse",
            "txn_status": disburse_response(transaction_id, items),
        },
    })
}

/// `{base}/{path}` without a doubled slash.
pub fn callback_url(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// Queued `on-disburse` callbacks (one per [`ITEMS_PER_CALLBACK`] items) for a batch.
pub fn on_disburse(
    signer: &Signer,
    sender_id: &str,
    base_url: &str,
    transaction_id: &str,
    items: Vec<Value>,
    now: i64,
) -> Vec<NewOutbox> {
    let mut out = Vec::new();
    let mut items = items;
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(ITEMS_PER_CALLBACK));
        let header = callback_header("on-disburse", sender_id, &items, now);
        let message = disburse_response(transaction_id, items);
        out.push(NewOutbox {
            sender_id: sender_id.to_string(),
            url: callback_url(base_url, "on-disburse"),
            body: signer.envelope(&header, &message),
        });
        items = rest;
    }
    out
}

/// One notifier pass: new history entries of G2P Connect payments become `on-disburse`
/// callbacks carrying each changed payment's current status. Returns how many payments were
/// reported.
pub async fn notify_once(store: &dyn Store, signer: &Signer) -> Result<usize, ReportError> {
    let after = store.cursor(CURSOR).await?;
    // A window of history ids, not a number of matching rows: the cursor then moves past
    // other channels' entries too, and a scan never re-reads them.
    let upto = store.last_event_id().await?.min(after + SCAN_WINDOW);
    if upto <= after {
        return Ok(0);
    }
    let events = store.channel_events("g2p", after, upto).await?;
    let mut ids: Vec<String> = events.iter().map(|e| e.payment_id.clone()).collect();
    ids.sort();
    ids.dedup();
    let payments = store.payments_by_ids(&ids).await?;
    let mut by_batch: BTreeMap<String, Vec<Payment>> = BTreeMap::new();
    for p in payments {
        by_batch.entry(p.batch_id.clone()).or_default().push(p);
    }
    let now = now_ms();
    let mut rows = Vec::new();
    let mut batches: HashMap<String, crate::store::BatchRecord> = HashMap::new();
    for (batch_id, mut payments) in by_batch {
        if !batches.contains_key(&batch_id)
            && let Some(b) = store.get_batch(&batch_id).await?
        {
            batches.insert(batch_id.clone(), b);
        }
        let Some(batch) = batches.get(&batch_id) else {
            continue;
        };
        let Some(url) = batch.callback_url.as_deref() else {
            continue;
        };
        payments.sort_by_key(|p| p.seq);
        let items = payments.iter().map(item_status).collect();
        rows.extend(on_disburse(
            signer,
            &batch.sender_id,
            url,
            &batch.batch_id,
            items,
            now,
        ));
    }
    store
        .outbox_enqueue(&rows, Some((CURSOR, upto)), now)
        .await?;
    Ok(ids.len())
}

/// Posts due callbacks; each sender's callbacks go one at a time, in order.
pub async fn deliver_once(
    store: &dyn Store,
    http: &reqwest::Client,
    settings: &Settings,
) -> Result<usize, ReportError> {
    let now = now_ms();
    let due = store.outbox_due(now, 64).await?;
    let sends = due.into_iter().map(|row| async move {
        let mut req = http
            .post(&row.url)
            .header("content-type", "application/json")
            .body(row.body.clone());
        if let Some(token) = settings
            .senders
            .get(&row.sender_id)
            .and_then(|s| s.callback_token.as_deref())
            .and_then(|t| crate::adapter::resolve_references(t).ok())
        {
            req = req.bearer_auth(token);
        }
        let result = match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Err(format!("not delivered: {e}")),
        };
        (row, result)
    });
    let results = futures::future::join_all(sends).await;
    let count = results.len();
    for (row, result) in results {
        match result {
            Ok(()) => store.outbox_delivered(row.id, now_ms()).await?,
            Err(error) => {
                let attempts = row.attempts + 1;
                let give_up = settings.callback_max_attempts > 0
                    && attempts >= settings.callback_max_attempts;
                let shift = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
                let delay = settings
                    .callback_backoff_ms
                    .saturating_mul(1_i64 << shift.min(20))
                    .min(300_000);
                if give_up {
                    tracing::error!(callback = row.id, sender = %row.sender_id, %error, "callback given up");
                } else {
                    tracing::warn!(callback = row.id, sender = %row.sender_id, %error, "callback failed; will retry");
                }
                store
                    .outbox_failed(row.id, (!give_up).then_some(now_ms() + delay), &error)
                    .await?;
            }
        }
    }
    Ok(count)
}

/// Runs the notifier and the delivery loop until the runtime stops.
pub fn spawn(
    store: Arc<dyn Store>,
    signer: Arc<Signer>,
    settings: Arc<Settings>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let interval = Duration::from_millis(settings.notify_interval_ms.max(10));
    let notifier = {
        let (store, signer) = (store.clone(), signer.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = notify_once(store.as_ref(), &signer).await {
                    tracing::error!(error = %e, "sender notifier failed; retrying");
                }
                tokio::time::sleep(interval).await;
            }
        })
    };
    let delivery = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        loop {
            match deliver_once(store.as_ref(), &http, &settings).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "callback delivery failed; retrying"),
            }
            tokio::time::sleep(interval).await;
        }
    });
    vec![notifier, delivery]
}

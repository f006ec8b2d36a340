//! Fake MTN MoMo Disbursement API (asynchronous: 202 then status via GET and callback).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{
    Chaos, SimConfig, Simulator, Trigger, bump, header_str, json_response, lock, sleep_ms,
    strip_scheme, trigger,
};

#[derive(Default)]
pub(super) struct MtnState {
    /// Access token -> expiry.
    tokens: HashMap<String, Instant>,
    /// X-Reference-Id -> transfer.
    transfers: HashMap<String, Transfer>,
    /// X-Reference-Ids already answered 429 by the 474 trigger.
    throttled: HashSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Successful,
    Failed(&'static str),
}

struct Transfer {
    amount: String,
    currency: String,
    external_id: String,
    party_id_type: String,
    party_id: String,
    payer_message: String,
    payee_note: String,
    status: Status,
    financial_transaction_id: Option<String>,
}

impl Transfer {
    /// The TransferResult JSON (GET body and callback body).
    fn to_json(&self) -> Value {
        let mut v = json!({
            "amount": self.amount,
            "currency": self.currency,
            "externalId": self.external_id,
            "payee": {"partyIdType": self.party_id_type, "partyId": self.party_id},
            "payerMessage": self.payer_message,
            "payeeNote": self.payee_note,
            "status": match self.status {
                Status::Pending => "PENDING",
                Status::Successful => "SUCCESSFUL",
                Status::Failed(_) => "FAILED",
            },
        });
        if let Some(id) = &self.financial_transaction_id {
            v["financialTransactionId"] = json!(id);
        }
        if let Status::Failed(code) = self.status {
            v["reason"] = json!({"code": code, "message": reason_message(code)});
        }
        v
    }
}

fn reason_message(code: &str) -> &'static str {
    match code {
        "INTERNAL_PROCESSING_ERROR" => "An internal error occurred while processing.",
        "APPROVAL_REJECTED" => "The transaction was rejected.",
        "EXPIRED" => "The transaction has expired.",
        "PAYER_NOT_FOUND" => "The payer could not be found.",
        "PAYEE_NOT_ALLOWED_TO_RECEIVE" => "The payee is not allowed to receive funds.",
        "PAYEE_NOT_FOUND" => "The payee could not be found.",
        "NOT_ENOUGH_FUNDS" => "The payer does not have enough funds.",
        "NOT_ALLOWED" => "Authorization failed. User does not have permission.",
        "INVALID_CURRENCY" => "Currency not supported.",
        _ => "Transfer failed.",
    }
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/disbursement/token/", post(token))
        .route("/disbursement/token", post(token))
        .route("/disbursement/v1_0/transfer", post(submit))
        .route("/disbursement/v1_0/transfer/{reference_id}", get(status))
}

/// An error answer (kept small so `Result<_, Fail>` stays cheap).
struct Fail {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, self.body);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

fn err(status: StatusCode, code: &str, message: &str) -> Fail {
    Fail {
        status,
        body: json!({"code": code, "message": message}),
    }
}

async fn token(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    let resp = issue_token(&sim, &headers);
    sim.latency().await;
    resp
}

fn issue_token(sim: &Simulator, headers: &HeaderMap) -> Response {
    let cfg = sim.config();
    let unauthorized = |msg: &str| json_response(StatusCode::UNAUTHORIZED, json!({"error": msg}));
    if header_str(headers, "ocp-apim-subscription-key") != Some(cfg.mtn_subscription_key.as_str()) {
        return unauthorized("Access denied due to invalid subscription key.");
    }
    let credentials = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| strip_scheme(v, "Basic"))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok());
    let expected = format!("{}:{}", cfg.mtn_api_user, cfg.mtn_api_key);
    if credentials.as_deref() != Some(expected.as_bytes()) {
        return unauthorized("login_failed");
    }
    let token = uuid::Uuid::new_v4().to_string();
    sim.with_stats(|s| s.tokens_issued += 1);
    let now = Instant::now();
    {
        let mut st = lock(&sim.inner.mtn);
        st.tokens.retain(|_, exp| *exp > now);
        st.tokens
            .insert(token.clone(), now + Duration::from_secs(cfg.token_ttl_s));
    }
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "access_token", "expires_in": cfg.token_ttl_s}),
    )
}

/// Check the Bearer token and subscription key.
fn check_access(sim: &Simulator, headers: &HeaderMap, cfg: &SimConfig) -> Result<(), Fail> {
    let token = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| strip_scheme(v, "Bearer"))
        .unwrap_or("");
    let valid = lock(&sim.inner.mtn)
        .tokens
        .get(token)
        .is_some_and(|exp| *exp > Instant::now());
    if !valid {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "ACCESS_DENIED",
            "Access denied: missing, unknown or expired access token.",
        ));
    }
    if header_str(headers, "ocp-apim-subscription-key") != Some(cfg.mtn_subscription_key.as_str()) {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "ACCESS_DENIED",
            "Access denied due to invalid subscription key.",
        ));
    }
    Ok(())
}

fn valid_amount(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && Decimal::from_str(s).is_ok_and(|d| d > Decimal::ZERO)
}

/// Parse a transfer body into a (PENDING) transfer.
fn parse_body(body: &[u8]) -> Result<Transfer, Fail> {
    let bad = |msg: &str| err(StatusCode::BAD_REQUEST, "BAD_REQUEST", msg);
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("Body is not valid JSON."))?;
    if !v.is_object() {
        return Err(bad("Body must be a JSON object."));
    }
    let amount = match v.get("amount") {
        Some(Value::String(s)) if valid_amount(s) => s.clone(),
        _ => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "INVALID_AMOUNT",
                "amount must be a string holding a positive decimal.",
            ));
        }
    };
    let string = |obj: &Value, key: &str| obj.get(key).and_then(Value::as_str).map(str::to_owned);
    let currency = string(&v, "currency")
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        .ok_or_else(|| bad("currency must be a 3-letter ISO 4217 code."))?;
    let external_id = string(&v, "externalId").ok_or_else(|| bad("externalId is required."))?;
    let payee = v.get("payee").ok_or_else(|| bad("payee is required."))?;
    let party_id_type = string(payee, "partyIdType")
        .filter(|t| matches!(t.as_str(), "MSISDN" | "EMAIL" | "PARTY_CODE"))
        .ok_or_else(|| bad("payee.partyIdType must be MSISDN, EMAIL or PARTY_CODE."))?;
    let party_id = string(payee, "partyId")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("payee.partyId is required."))?;
    Ok(Transfer {
        amount,
        currency,
        external_id,
        party_id_type,
        party_id,
        payer_message: string(&v, "payerMessage").unwrap_or_default(),
        payee_note: string(&v, "payeeNote").unwrap_or_default(),
        status: Status::Pending,
        financial_transaction_id: None,
    })
}

async fn submit(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = match handle_submit(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    sim.latency().await;
    resp
}

async fn handle_submit(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Fail> {
    let cfg = sim.config();
    check_access(sim, headers, &cfg)?;
    let reference = header_str(headers, "x-reference-id")
        .and_then(|r| uuid::Uuid::parse_str(r.trim()).ok())
        .map(|u| u.to_string())
        .ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "INVALID_REFERENCE_ID",
                "X-Reference-Id must be a UUID.",
            )
        })?;
    if header_str(headers, "x-target-environment").is_none_or(|e| e.trim().is_empty()) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "INVALID_TARGET_ENVIRONMENT",
            "X-Target-Environment header is required.",
        ));
    }
    let callback = header_str(headers, "x-callback-url")
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    let transfer = parse_body(body)?;
    let external_id = transfer.external_id.clone();
    sim.with_stats(|s| bump(&mut s.submissions, &external_id));

    let trig = trigger(&transfer.party_id);
    let chaos = sim.chaos(trig, &cfg);
    {
        let mut st = lock(&sim.inner.mtn);
        if st.transfers.contains_key(&reference) {
            return Err(err(
                StatusCode::CONFLICT,
                "RESOURCE_ALREADY_EXIST",
                "Duplicated reference id.",
            ));
        }
        if let Some(code) = trig.and_then(Trigger::mtn_rejection) {
            return Err(err(
                StatusCode::INTERNAL_SERVER_ERROR,
                code,
                reason_message(code),
            ));
        }
        let throttle_once =
            trig == Some(Trigger::RateLimitedOnce) && st.throttled.insert(reference.clone());
        if throttle_once || chaos == Chaos::Throttle429 {
            return Err(Fail {
                status: StatusCode::TOO_MANY_REQUESTS,
                body: json!({"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."}),
            });
        }
        if chaos == Chaos::Fail500 {
            return Err(err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_PROCESSING_ERROR",
                "An internal error occurred while processing.",
            ));
        }
        st.transfers.insert(reference.clone(), transfer);
    }

    let generation = sim.generation();
    let delay = cfg.latency_ms + cfg.callback_delay_ms;
    let accepted = StatusCode::ACCEPTED.into_response();
    if trig == Some(Trigger::Timeout) || chaos == Chaos::Timeout {
        // Executed now; callback later; the response hangs.
        settle(sim, &reference, trig);
        tokio::spawn(outcome(
            sim.clone(),
            reference,
            trig,
            callback,
            delay,
            generation,
            false,
        ));
        sleep_ms(cfg.hang_ms).await;
    } else if trig == Some(Trigger::CallbackBeforeResponse) {
        // Spawned so a client disconnect cannot stop it; awaited so the callback precedes the 202.
        let task = outcome(
            sim.clone(),
            reference,
            trig,
            callback,
            cfg.callback_delay_ms,
            generation,
            true,
        );
        if let Err(e) = tokio::spawn(task).await {
            tracing::warn!(error = %e, "simulator outcome task failed");
        }
    } else {
        let delay = if trig == Some(Trigger::SlowSuccess) {
            delay + 1000
        } else {
            delay
        };
        tokio::spawn(outcome(
            sim.clone(),
            reference,
            trig,
            callback,
            delay,
            generation,
            true,
        ));
    }
    Ok(accepted)
}

/// Decide the final status of a PENDING transfer. Returns the TransferResult body.
fn settle(sim: &Simulator, reference: &str, trig: Option<Trigger>) -> Option<Value> {
    let (body, executed) = {
        let mut st = lock(&sim.inner.mtn);
        let t = st.transfers.get_mut(reference)?;
        let mut executed = None;
        if t.status == Status::Pending {
            match trig.and_then(Trigger::mtn_failure) {
                Some(code) => t.status = Status::Failed(code),
                None => {
                    t.status = Status::Successful;
                    t.financial_transaction_id =
                        Some(fastrand::u64(100_000_000..1_000_000_000).to_string());
                    executed = Some(t.external_id.clone());
                }
            }
        }
        (t.to_json(), executed)
    };
    if let Some(ext) = executed {
        sim.with_stats(|s| bump(&mut s.executed, &ext));
    }
    Some(body)
}

/// Background outcome: after `delay_ms`, settle (if asked) and deliver the callback.
async fn outcome(
    sim: Simulator,
    reference: String,
    trig: Option<Trigger>,
    callback: Option<String>,
    delay_ms: u64,
    generation: u64,
    do_settle: bool,
) {
    sleep_ms(delay_ms).await;
    if sim.generation() != generation || trig == Some(Trigger::PendingForever) {
        return;
    }
    let body = if do_settle {
        settle(&sim, &reference, trig)
    } else {
        lock(&sim.inner.mtn)
            .transfers
            .get(&reference)
            .map(Transfer::to_json)
    };
    let (Some(body), Some(url)) = (body, callback) else {
        return;
    };
    let copies = sim.callback_copies(trig);
    if copies == 0 {
        return;
    }
    for _ in 0..copies {
        sim.with_stats(|s| s.callbacks_sent += 1);
        match sim.inner.client.put(&url).json(&body).send().await {
            Ok(r) if !r.status().is_success() => {
                tracing::warn!(%url, status = %r.status(), "MTN callback rejected by receiver");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%url, error = %e, "MTN callback delivery failed"),
        }
    }
}

async fn status(
    State(sim): State<Simulator>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Response {
    sim.with_stats(|s| s.status_queries += 1);
    let cfg = sim.config();
    let resp = match check_access(&sim, &headers, &cfg) {
        Err(f) => f.into_response(),
        Ok(()) => {
            let key = uuid::Uuid::parse_str(reference.trim()).map_or(reference, |u| u.to_string());
            match lock(&sim.inner.mtn).transfers.get(&key) {
                Some(t) => json_response(StatusCode::OK, t.to_json()),
                None => err(
                    StatusCode::NOT_FOUND,
                    "RESOURCE_NOT_FOUND",
                    "Requested resource was not found.",
                )
                .into_response(),
            }
        }
    };
    sim.latency().await;
    resp
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{serve, start};
    use super::*;
    use tokio::sync::mpsc;

    const BASIC_OK: &str = "pil-sim-user:pil-sim-key";
    const SUB: &str = "pil-sim-subscription";

    /// A callback receiver: returns its URL and the received bodies.
    async fn receiver() -> (
        String,
        mpsc::UnboundedReceiver<Value>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            "/cb",
            axum::routing::put(move |axum::Json(v): axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(v);
                    StatusCode::OK
                }
            }),
        );
        let (base, task) = serve(app).await;
        (format!("{base}/cb"), rx, task)
    }

    async fn get_token(http: &reqwest::Client, base: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(BASIC_OK);
        let r = http
            .post(format!("{base}/disbursement/token/"))
            .header("Authorization", format!("Basic {b64}"))
            .header("Ocp-Apim-Subscription-Key", SUB)
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["token_type"], "access_token");
        v["access_token"].as_str().expect("token").to_owned()
    }

    fn body(ext: &str, payee: &str) -> Value {
        json!({"amount": "12.50", "currency": "EUR", "externalId": ext,
               "payee": {"partyIdType": "MSISDN", "partyId": payee},
               "payerMessage": "G2P", "payeeNote": "cash transfer"})
    }

    async fn post(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        reference: &str,
        callback: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut req = http
            .post(format!("{base}/disbursement/v1_0/transfer"))
            .bearer_auth(token)
            .header("Ocp-Apim-Subscription-Key", SUB)
            .header("X-Reference-Id", reference)
            .header("X-Target-Environment", "sandbox")
            .json(body);
        if let Some(cb) = callback {
            req = req.header("X-Callback-Url", cb);
        }
        req.send().await.expect("send")
    }

    async fn get_status(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        reference: &str,
    ) -> (u16, Value) {
        let r = http
            .get(format!("{base}/disbursement/v1_0/transfer/{reference}"))
            .bearer_auth(token)
            .header("Ocp-Apim-Subscription-Key", SUB)
            .header("X-Target-Environment", "sandbox")
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("callback in time")
            .expect("callback")
    }

    fn new_ref() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    #[tokio::test]
    async fn success_callback_and_duplicate_reference() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let reference = new_ref();
        let b = body("ext-1", "46733123000");
        let r = post(&http, &base, &token, &reference, Some(&cb), &b).await;
        assert_eq!(r.status(), 202);
        assert!(r.bytes().await.expect("body").is_empty());
        let v = next(&mut rx).await;
        assert_eq!(v["status"], "SUCCESSFUL");
        assert_eq!(v["externalId"], "ext-1");
        assert_eq!(v["amount"], "12.50");
        assert!(v["financialTransactionId"].is_string());
        assert!(v.get("reason").is_none());
        assert_eq!(sim.simulator.stats().executed.get("ext-1"), Some(&1));

        let r = post(&http, &base, &token, &reference, Some(&cb), &b).await;
        assert_eq!(r.status(), 409);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["code"], "RESOURCE_ALREADY_EXIST");
        let (code, v) = get_status(&http, &base, &token, &reference).await;
        assert_eq!((code, v["status"].as_str()), (200, Some("SUCCESSFUL")));
        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("ext-1"), Some(&1));
        assert_eq!(stats.submissions.get("ext-1"), Some(&2));
        assert_eq!(stats.callbacks_sent, 1);
        assert_eq!(stats.status_queries, 1);
        let (code, v) = get_status(&http, &base, &token, &new_ref()).await;
        assert_eq!(
            (code, v["code"].as_str()),
            (404, Some("RESOURCE_NOT_FOUND"))
        );
    }

    #[tokio::test]
    async fn auth_and_validation_errors() {
        let cfg = SimConfig {
            token_ttl_s: 0,
            ..SimConfig::default()
        };
        let (sim, http) = start(cfg).await;
        let base = sim.base_url();
        let r = http
            .post(format!("{base}/disbursement/token/"))
            .basic_auth("pil-sim-user", Some("wrong"))
            .header("Ocp-Apim-Subscription-Key", SUB)
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 401);
        assert!(r.json::<Value>().await.expect("json")["error"].is_string());

        let expired = get_token(&http, &base).await;
        let r = post(
            &http,
            &base,
            &expired,
            &new_ref(),
            None,
            &body("e", "46733123000"),
        )
        .await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.json::<Value>().await.expect("json")["code"],
            "ACCESS_DENIED"
        );

        let mut cfg = SimConfig::default();
        sim.simulator.set_config(cfg.clone());
        let token = get_token(&http, &base).await;
        let r = post(
            &http,
            &base,
            &token,
            "not-a-uuid",
            None,
            &body("e", "46733123000"),
        )
        .await;
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.expect("json")["code"],
            "INVALID_REFERENCE_ID"
        );
        let mut b = body("e", "46733123000");
        b["amount"] = json!(12.5);
        let r = post(&http, &base, &token, &new_ref(), None, &b).await;
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.expect("json")["code"],
            "INVALID_AMOUNT"
        );
        b["amount"] = json!("-1");
        let r = post(&http, &base, &token, &new_ref(), None, &b).await;
        assert_eq!(r.status(), 400);
        assert!(sim.simulator.stats().submissions.is_empty());

        // Random 500s: answered without executing.
        cfg.failure_rate = 1.0;
        sim.simulator.set_config(cfg);
        let r = post(
            &http,
            &base,
            &token,
            &new_ref(),
            None,
            &body("f", "46733123000"),
        )
        .await;
        assert_eq!(r.status(), 500);
        let stats = sim.simulator.stats();
        assert_eq!(stats.submissions.get("f"), Some(&1));
        assert!(stats.executed.is_empty());
    }

    #[tokio::test]
    async fn failure_trigger_and_rejections() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let token = get_token(&http, &base).await;
        let reference = new_ref();
        let r = post(
            &http,
            &base,
            &token,
            &reference,
            None,
            &body("x451", "46733123451"),
        )
        .await;
        assert_eq!(r.status(), 202);
        let pending = new_ref();
        let r = post(
            &http,
            &base,
            &token,
            &pending,
            None,
            &body("x453", "46733123453"),
        )
        .await;
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, v) = get_status(&http, &base, &token, &pending).await;
        assert_eq!(v["status"], "PENDING");
        assert!(v.get("reason").is_none());
        let (_, v) = get_status(&http, &base, &token, &reference).await;
        assert_eq!(v["status"], "FAILED");
        assert_eq!(v["reason"]["code"], "APPROVAL_REJECTED");
        assert!(v["reason"]["message"].is_string());
        assert!(v.get("financialTransactionId").is_none());

        let reference = new_ref();
        let r = post(
            &http,
            &base,
            &token,
            &reference,
            None,
            &body("x457", "46733123457"),
        )
        .await;
        assert_eq!(r.status(), 500);
        assert_eq!(
            r.json::<Value>().await.expect("json")["code"],
            "NOT_ALLOWED"
        );
        let (code, _) = get_status(&http, &base, &token, &reference).await;
        assert_eq!(code, 404);

        // 474: first submission 429 (not stored), same reference accepted next.
        let reference = new_ref();
        let b = body("x474", "46733123474");
        let r = post(&http, &base, &token, &reference, None, &b).await;
        assert_eq!(r.status(), 429);
        let r = post(&http, &base, &token, &reference, None, &b).await;
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("x451"), None);
        assert_eq!(stats.executed.get("x457"), None);
        assert_eq!(stats.submissions.get("x457"), Some(&1));
        assert_eq!(stats.submissions.get("x474"), Some(&2));
        assert_eq!(stats.executed.get("x474"), Some(&1));
    }

    #[tokio::test]
    async fn callback_triggers() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;

        let r = post(
            &http,
            &base,
            &token,
            &new_ref(),
            Some(&cb),
            &body("x472", "46733123472"),
        )
        .await;
        assert_eq!(r.status(), 202);
        assert_eq!(next(&mut rx).await["status"], "SUCCESSFUL");
        assert_eq!(next(&mut rx).await["externalId"], "x472");

        let r = post(
            &http,
            &base,
            &token,
            &new_ref(),
            Some(&cb),
            &body("x471", "46733123471"),
        )
        .await;
        assert_eq!(r.status(), 202);
        // 473: the callback is already delivered when the 202 arrives.
        let r = post(
            &http,
            &base,
            &token,
            &new_ref(),
            Some(&cb),
            &body("x473", "46733123473"),
        )
        .await;
        assert_eq!(r.status(), 202);
        let v = rx.try_recv().expect("callback before 202");
        assert_eq!(v["externalId"], "x473");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err());
        let stats = sim.simulator.stats();
        assert_eq!(stats.callbacks_sent, 3);
        assert_eq!(stats.callbacks_lost, 1);
        assert_eq!(stats.executed.get("x471"), Some(&1));
        assert_eq!(stats.executed.get("x472"), Some(&1));
    }

    #[tokio::test]
    async fn timeout_trigger_executes_before_response() {
        let cfg = SimConfig {
            hang_ms: 600,
            ..SimConfig::default()
        };
        let (sim, http) = start(cfg).await;
        let base = sim.base_url();
        let token = get_token(&http, &base).await;
        let reference = new_ref();
        let req = {
            let (http, base, token, reference) =
                (http.clone(), base.clone(), token.clone(), reference.clone());
            tokio::spawn(async move {
                post(
                    &http,
                    &base,
                    &token,
                    &reference,
                    None,
                    &body("x470", "46733123470"),
                )
                .await
                .status()
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!req.is_finished());
        let (_, v) = get_status(&http, &base, &token, &reference).await;
        assert_eq!(v["status"], "SUCCESSFUL");
        assert_eq!(sim.simulator.stats().executed.get("x470"), Some(&1));
        assert_eq!(req.await.expect("join"), 202);
    }
}

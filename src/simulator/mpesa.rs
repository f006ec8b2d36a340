//! Fake Safaricom M-Pesa Daraja: OAuth token (GET, Basic), B2C payment request (v3) answered by a
//! Result callback to `ResultURL` (or `QueueTimeOutURL`), and the Transaction Status API, which
//! also answers by callback.
//!
//! Faithful to what adapters must survive (shared/reference/dfsp-apis.md §2): one valid token at
//! a time (a new one invalidates the previous) that really expires; a reused
//! OriginatorConversationID refused with `500.002.1001` and never executed twice; whole
//! shillings only; business failures only in the asynchronous Result. Submissions and
//! executions are counted per payment reference: the request's `Occassion` (where PIL puts its
//! payment id), else its OriginatorConversationID.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::{
    Chaos, Expected, Simulator, Trigger, bump, header_str, json_response, lock, sleep_ms, trigger,
};

/// Daraja's per-transaction limits (FAQ): a Result with code 2 or 3 outside them.
const MIN_AMOUNT: u64 = 10;
const MAX_AMOUNT: u64 = 250_000;

#[derive(Default)]
pub(super) struct MpesaState {
    /// The one valid access token and its expiry: issuing a token invalidates the previous one.
    token: Option<(String, Instant)>,
    tokens_issued: u64,
    token_refusals: u64,
    /// OriginatorConversationID → payment request.
    payments: HashMap<String, Payment>,
    /// Receipt (TransactionID) → OriginatorConversationID, for status queries by receipt.
    receipts: HashMap<String, String>,
    /// OriginatorConversationIDs already refused once by the 474 trigger.
    throttled: HashSet<String>,
}

/// M-Pesa token counters, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpesaTokenStats {
    /// Tokens issued by `GET /oauth/v1/generate`.
    pub issued: u64,
    /// Requests refused because their token was missing, unknown, superseded or expired.
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Queued,
    Paid,
    Failed {
        code: &'static str,
        desc: &'static str,
    },
    /// Expired in the queue (QueueTimeOut sent); never processed.
    TimedOut,
}

struct Payment {
    /// The stats key: `Occassion`, else the OriginatorConversationID.
    reference: String,
    request: Map<String, Value>,
    conversation_id: String,
    receipt: String,
    amount: u64,
    party_a: String,
    party_b: String,
    result_url: String,
    queue_timeout_url: String,
    occasion: Option<String>,
    state: Stage,
    initiated: chrono::DateTime<chrono::FixedOffset>,
    finalised: Option<chrono::DateTime<chrono::FixedOffset>>,
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/oauth/v1/generate", get(token))
        .route("/mpesa/b2c/v3/paymentrequest", post(payment_request))
        .route("/mpesa/transactionstatus/v1/query", post(status_query))
}

impl Simulator {
    /// M-Pesa token counters.
    pub fn mpesa_tokens(&self) -> MpesaTokenStats {
        let st = lock(&self.inner.mpesa);
        MpesaTokenStats {
            issued: st.tokens_issued,
            refused: st.token_refusals,
        }
    }
}

/// What PIL should end with for a payee at M-Pesa (amounts within Daraja's limits).
pub(super) fn expected(t: Trigger) -> Expected {
    match t {
        // Refused with 500.003.1001: nothing queued, and no lookup can tell PIL so.
        Trigger::InternalError => Expected::Unknown,
        // QueueTimeOut, then never processed; or queued forever.
        Trigger::Expired | Trigger::PendingForever => Expected::Pending,
        t => result_failure(t).map_or(Expected::Succeeded, |(code, _)| Expected::Failed(code)),
    }
}

/// The failing Result (ResultCode, ResultDesc) a trigger selects.
fn result_failure(t: Trigger) -> Option<(&'static str, &'static str)> {
    Some(match t {
        Trigger::ApprovalRejected => ("2001", "The initiator information is invalid."),
        Trigger::PayerNotFound => ("11", "The DebitParty is in an invalid state."),
        Trigger::PayeeNotAllowed => (
            "2040",
            "Credit Party customer type (Unregistered or Registered Customer) can't be supported by the service.",
        ),
        Trigger::NotAllowed => (
            "21",
            "The initiator is not allowed to initiate this request.",
        ),
        Trigger::InvalidCurrency => (
            "2028",
            "The request is not permitted according to product assignment.",
        ),
        Trigger::ProcessingError => (
            "4",
            "Declined due to limit rule: would exceed the daily transfer limit.",
        ),
        Trigger::PayeeNotFound => ("SFC_IC0003", "The operator does not exist."),
        Trigger::NotEnoughFunds => ("1", "The balance is insufficient for the transaction."),
        _ => return None,
    })
}

/// A Daraja gateway error answer `{requestId, errorCode, errorMessage}` (kept small so that
/// `Result<_, Fail>` stays cheap).
struct Fail {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        json_response(self.status, self.body)
    }
}

fn gateway_error(status: StatusCode, code: &str, message: &str) -> Fail {
    Fail {
        status,
        body: json!({"requestId": request_id(), "errorCode": code, "errorMessage": message}),
    }
}

fn invalid(what: &str) -> Fail {
    gateway_error(
        StatusCode::BAD_REQUEST,
        "400.002.05",
        &format!("Invalid Request Payload - {what}"),
    )
}

fn alphanumeric(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..n)
        .map(|_| char::from(CHARS[fastrand::usize(..CHARS.len())]))
        .collect()
}

fn request_id() -> String {
    format!("{}-{}", fastrand::u32(10_000..99_999), fastrand::u64(..))
}

/// Nairobi time (UTC+3), as M-Pesa stamps its results.
fn nairobi_now() -> chrono::DateTime<chrono::FixedOffset> {
    let now = chrono::Utc::now();
    chrono::FixedOffset::east_opt(3 * 3600)
        .map_or_else(|| now.fixed_offset(), |eat| now.with_timezone(&eat))
}

fn conversation_id() -> String {
    format!(
        "AG_{}_{}",
        nairobi_now().format("%Y%m%d"),
        alphanumeric(20).to_ascii_lowercase()
    )
}

/// A ResultCode as Daraja writes it: a number when numeric (`SFC_IC0003` stays a string).
fn result_code(code: &str) -> Value {
    code.parse::<u64>()
        .map_or_else(|_| json!(code), |n| json!(n))
}

fn credentials(headers: &HeaderMap, scheme: &str) -> Option<String> {
    let value = header_str(headers, header::AUTHORIZATION.as_str())?;
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim().to_owned())
}

async fn token(
    State(sim): State<Simulator>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let resp = issue_token(&sim, &query, &headers);
    sim.latency().await;
    resp
}

fn issue_token(sim: &Simulator, query: &HashMap<String, String>, headers: &HeaderMap) -> Response {
    if query.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return gateway_error(
            StatusCode::BAD_REQUEST,
            "400.008.02",
            "Invalid grant type passed",
        )
        .into_response();
    }
    let cfg = sim.config();
    let expected = format!("{}:{}", cfg.mpesa_consumer_key, cfg.mpesa_consumer_secret);
    let given = credentials(headers, "Basic")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok());
    if given.as_deref() != Some(expected.as_bytes()) {
        return gateway_error(
            StatusCode::BAD_REQUEST,
            "400.008.01",
            "Invalid Authentication passed",
        )
        .into_response();
    }
    let token = alphanumeric(28);
    {
        let mut st = lock(&sim.inner.mpesa);
        st.token = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(cfg.token_ttl_s),
        ));
        st.tokens_issued += 1;
    }
    // Daraja's own sample writes expires_in as a string.
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": cfg.token_ttl_s.to_string()}),
    )
}

/// Checks the Bearer token: only the latest one, before it expires.
fn check_token(sim: &Simulator, headers: &HeaderMap) -> Result<(), Fail> {
    let Some(given) = credentials(headers, "Bearer") else {
        lock(&sim.inner.mpesa).token_refusals += 1;
        return Err(gateway_error(
            StatusCode::BAD_REQUEST,
            "404.001.04",
            "Invalid Authentication Header",
        ));
    };
    let mut st = lock(&sim.inner.mpesa);
    let valid = st
        .token
        .as_ref()
        .is_some_and(|(t, exp)| *t == given && *exp > Instant::now());
    if valid {
        return Ok(());
    }
    st.token_refusals += 1;
    Err(gateway_error(
        StatusCode::UNAUTHORIZED,
        "401.002.01",
        "Error Occurred - Invalid Access Token",
    ))
}

fn string<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn digits(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

fn url(body: &Map<String, Value>, key: &str) -> Option<String> {
    string(body, key)
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(str::to_owned)
}

/// Whole shillings: a JSON integer or a string of digits. "10.50", 10.5 and "10.00" are refused.
fn whole_amount(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if digits(s, 1..=12) => s.parse().ok(),
        _ => None,
    }
    .filter(|a| *a > 0)
}

/// A validated B2C request: (OriginatorConversationID, the payment).
fn parse_payment(body: &[u8]) -> Result<(String, Payment), Fail> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("body is not a JSON object"));
    };
    let ocid = string(&req, "OriginatorConversationID")
        .filter(|s| s.len() <= 100)
        .ok_or_else(|| invalid("OriginatorConversationID"))?
        .to_owned();
    for key in ["InitiatorName", "SecurityCredential"] {
        string(&req, key).ok_or_else(|| invalid(key))?;
    }
    if !matches!(
        string(&req, "CommandID"),
        Some("SalaryPayment" | "BusinessPayment" | "PromotionPayment")
    ) {
        return Err(invalid("CommandID"));
    }
    let amount = whole_amount(req.get("Amount")).ok_or_else(|| invalid("Amount"))?;
    let party_a = string(&req, "PartyA")
        .filter(|s| digits(s, 5..=9))
        .ok_or_else(|| invalid("PartyA"))?
        .to_owned();
    let party_b = string(&req, "PartyB")
        .filter(|s| digits(s, 9..=15))
        .ok_or_else(|| invalid("PartyB"))?
        .to_owned();
    let remarks = req.get("Remarks").and_then(Value::as_str).unwrap_or("");
    if !(2..=100).contains(&remarks.chars().count()) {
        return Err(invalid("Remarks"));
    }
    let result_url = url(&req, "ResultURL").ok_or_else(|| invalid("ResultURL"))?;
    let queue_timeout_url =
        url(&req, "QueueTimeOutURL").ok_or_else(|| invalid("QueueTimeOutURL"))?;
    // Safaricom spells it "Occassion" in B2C; accept the dictionary spelling too.
    let occasion = string(&req, "Occassion")
        .or_else(|| string(&req, "Occasion"))
        .map(str::to_owned);
    if occasion.as_ref().is_some_and(|o| o.chars().count() > 100) {
        return Err(invalid("Occassion"));
    }
    let payment = Payment {
        reference: occasion.clone().unwrap_or_else(|| ocid.clone()),
        request: req,
        conversation_id: conversation_id(),
        receipt: format!("S{}", alphanumeric(9)),
        amount,
        party_a,
        party_b,
        result_url,
        queue_timeout_url,
        occasion,
        state: Stage::Queued,
        initiated: nairobi_now(),
        finalised: None,
    };
    Ok((ocid, payment))
}

async fn payment_request(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = match handle_payment(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    sim.latency().await;
    resp
}

async fn handle_payment(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Fail> {
    check_token(sim, headers)?;
    let (ocid, payment) = parse_payment(body)?;
    sim.with_stats(|s| bump(&mut s.submissions, &payment.reference));
    let cfg = sim.config();
    let trig = trigger(&payment.party_b);
    let chaos = sim.chaos(trig, &cfg);
    let ack = json!({
        "ConversationID": payment.conversation_id,
        "OriginatorConversationID": ocid,
        "ResponseCode": "0",
        "ResponseDescription": "Accept the service request successfully.",
    });
    {
        let mut st = lock(&sim.inner.mpesa);
        // Spike arrest and quota checks come first, at the gateway, before anything is queued.
        let throttle_once =
            trig == Some(Trigger::RateLimitedOnce) && st.throttled.insert(ocid.clone());
        if throttle_once {
            return Err(gateway_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500.003.02",
                "Spike Arrest Violation",
            ));
        }
        if chaos == Chaos::Throttle429 {
            return Err(gateway_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500.003.03",
                "Quota Violation",
            ));
        }
        if st.payments.contains_key(&ocid) {
            return Err(gateway_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500.002.1001",
                "Duplicate OriginatorConversationID.",
            ));
        }
        if trig == Some(Trigger::InternalError) || chaos == Chaos::Fail500 {
            return Err(gateway_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500.003.1001",
                "Internal Server Error",
            ));
        }
        st.receipts.insert(payment.receipt.clone(), ocid.clone());
        st.payments.insert(ocid.clone(), payment);
    }

    let generation = sim.generation();
    let delay = cfg.latency_ms + cfg.callback_delay_ms;
    let ok = json_response(StatusCode::OK, ack);
    if trig == Some(Trigger::Timeout) || chaos == Chaos::Timeout {
        // Executed now, Result later, the acknowledgement only after `hang_ms`.
        settle(sim, &ocid, trig);
        tokio::spawn(deliver_result(sim.clone(), ocid, trig, delay, generation));
        sleep_ms(cfg.hang_ms).await;
        return Ok(ok);
    }
    match trig {
        Some(Trigger::CallbackBeforeResponse) => {
            // Spawned so a client disconnect cannot stop it; awaited so the Result precedes
            // the acknowledgement.
            let task = deliver_result(sim.clone(), ocid, trig, cfg.callback_delay_ms, generation);
            if let Err(e) = tokio::spawn(task).await {
                tracing::warn!(error = %e, "simulator result task failed");
            }
        }
        Some(Trigger::Expired) => {
            tokio::spawn(queue_timeout(sim.clone(), ocid, delay, generation));
        }
        Some(Trigger::PendingForever) => {}
        Some(Trigger::SlowSuccess) => {
            tokio::spawn(deliver_result(
                sim.clone(),
                ocid,
                trig,
                delay + 1000,
                generation,
            ));
        }
        _ => {
            tokio::spawn(deliver_result(sim.clone(), ocid, trig, delay, generation));
        }
    }
    Ok(ok)
}

/// Processes a queued payment (once) and returns its Result callback body and URL.
fn settle(sim: &Simulator, ocid: &str, trig: Option<Trigger>) -> Option<(String, Value)> {
    let (url, body, executed) = {
        let mut st = lock(&sim.inner.mpesa);
        let p = st.payments.get_mut(ocid)?;
        let mut executed = None;
        if p.state == Stage::Queued {
            let failure = trig.and_then(result_failure).or(if p.amount < MIN_AMOUNT {
                Some((
                    "2",
                    "Declined due to limit rule: less than the smallest transaction value.",
                ))
            } else if p.amount > MAX_AMOUNT {
                Some((
                    "3",
                    "Declined due to limit rule: greater than the maximum transaction amount.",
                ))
            } else {
                None
            });
            p.state = match failure {
                Some((code, desc)) => Stage::Failed { code, desc },
                None => {
                    executed = Some(p.reference.clone());
                    Stage::Paid
                }
            };
            p.finalised = Some(nairobi_now());
        }
        (p.result_url.clone(), result_body(ocid, p), executed)
    };
    if let Some(reference) = executed {
        sim.with_stats(|s| bump(&mut s.executed, &reference));
    }
    Some((url, body))
}

/// The B2C Result callback body.
fn result_body(ocid: &str, p: &Payment) -> Value {
    let (code, desc) = match &p.state {
        Stage::Failed { code, desc } => (*code, *desc),
        _ => ("0", "The service request is processed successfully."),
    };
    let mut result = json!({
        "ResultType": 0,
        "ResultCode": result_code(code),
        "ResultDesc": desc,
        "OriginatorConversationID": ocid,
        "ConversationID": p.conversation_id,
        "TransactionID": p.receipt,
        "ReferenceData": {"ReferenceItem": {"Key": "QueueTimeoutURL",
            "Value": "https://internalsandbox.safaricom.co.ke/mpesa/b2cresults/v1/submit"}},
    });
    if p.state == Stage::Paid {
        let completed = p
            .finalised
            .unwrap_or(p.initiated)
            .format("%d.%m.%Y %H:%M:%S")
            .to_string();
        result["ResultParameters"] = json!({"ResultParameter": [
            {"Key": "TransactionAmount", "Value": p.amount},
            {"Key": "TransactionReceipt", "Value": p.receipt},
            {"Key": "ReceiverPartyPublicName", "Value": format!("{} - SIMULATED RECIPIENT", p.party_b)},
            {"Key": "TransactionCompletedDateTime", "Value": completed},
            {"Key": "B2CRecipientIsRegisteredCustomer", "Value": "Y"},
        ]});
    }
    json!({"Result": result})
}

/// After `delay_ms`: process the payment and POST its Result (0, 1 or 2 copies).
async fn deliver_result(
    sim: Simulator,
    ocid: String,
    trig: Option<Trigger>,
    delay_ms: u64,
    generation: u64,
) {
    sleep_ms(delay_ms).await;
    if sim.generation() != generation {
        return;
    }
    let Some((url, body)) = settle(&sim, &ocid, trig) else {
        return;
    };
    let copies = sim.callback_copies(trig);
    if copies == 0 {
        return;
    }
    for _ in 0..copies {
        send_callback(&sim, &url, &body).await;
    }
}

/// After `delay_ms`: the request expires in the queue; POST the QueueTimeOut notice (121 models
/// it as an echo of the request, the exact shape is unconfirmed) and never process it.
async fn queue_timeout(sim: Simulator, ocid: String, delay_ms: u64, generation: u64) {
    sleep_ms(delay_ms).await;
    if sim.generation() != generation {
        return;
    }
    let notice = {
        let mut st = lock(&sim.inner.mpesa);
        let Some(p) = st.payments.get_mut(&ocid) else {
            return;
        };
        p.state = Stage::TimedOut;
        let mut echo = p.request.clone();
        echo.remove("SecurityCredential");
        (p.queue_timeout_url.clone(), Value::Object(echo))
    };
    send_callback(&sim, &notice.0, &notice.1).await;
}

async fn send_callback(sim: &Simulator, url: &str, body: &Value) {
    sim.with_stats(|s| s.callbacks_sent += 1);
    match sim.inner.client.post(url).json(body).send().await {
        Ok(r) if !r.status().is_success() => {
            tracing::warn!(%url, status = %r.status(), "M-Pesa callback rejected by receiver");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%url, error = %e, "M-Pesa callback delivery failed"),
    }
}

async fn status_query(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = match handle_status_query(&sim, &headers, &body) {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    sim.latency().await;
    resp
}

fn handle_status_query(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Fail> {
    check_token(sim, headers)?;
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return Err(invalid("body is not a JSON object"));
    };
    if string(&req, "CommandID") != Some("TransactionStatusQuery") {
        return Err(invalid("CommandID"));
    }
    for key in ["Initiator", "SecurityCredential", "Remarks"] {
        string(&req, key).ok_or_else(|| invalid(key))?;
    }
    string(&req, "PartyA")
        .filter(|s| digits(s, 5..=12))
        .ok_or_else(|| invalid("PartyA"))?;
    let identifier = match req.get("IdentifierType") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if !matches!(identifier.as_str(), "1" | "2" | "4") {
        return Err(invalid("IdentifierType"));
    }
    let result_url = url(&req, "ResultURL").ok_or_else(|| invalid("ResultURL"))?;
    url(&req, "QueueTimeOutURL").ok_or_else(|| invalid("QueueTimeOutURL"))?;
    let original = string(&req, "OriginalConversationID").map(str::to_owned);
    let receipt = string(&req, "TransactionID").map(str::to_owned);
    if original.is_none() && receipt.is_none() {
        return Err(invalid("TransactionID or OriginalConversationID"));
    }
    sim.with_stats(|s| s.status_queries += 1);
    let ocid = format!(
        "{}-{}",
        fastrand::u32(1000..9999),
        alphanumeric(16).to_ascii_lowercase()
    );
    let conversation = conversation_id();
    let cfg = sim.config();
    let generation = sim.generation();
    let (sim2, ocid2, conversation2) = (sim.clone(), ocid.clone(), conversation.clone());
    tokio::spawn(async move {
        sleep_ms(cfg.latency_ms + cfg.callback_delay_ms).await;
        if sim2.generation() != generation {
            return;
        }
        let body = status_result(&sim2, &ocid2, &conversation2, original, receipt);
        // Status results are always delivered: the loss knobs apply to payment Results, which
        // these queries exist to recover.
        send_callback(&sim2, &result_url, &body).await;
    });
    Ok(json_response(
        StatusCode::OK,
        json!({
            "OriginatorConversationID": ocid,
            "ConversationID": conversation,
            "ResponseCode": "0",
            "ResponseDescription": "Accept the service request successfully.",
        }),
    ))
}

/// The Transaction Status Result: about the query (ResultCode) and, when the payment is known,
/// its state (`TransactionStatus`).
fn status_result(
    sim: &Simulator,
    ocid: &str,
    conversation: &str,
    original: Option<String>,
    receipt: Option<String>,
) -> Value {
    let st = lock(&sim.inner.mpesa);
    let key = original.or_else(|| receipt.and_then(|r| st.receipts.get(&r).cloned()));
    let found = key
        .as_ref()
        .and_then(|k| st.payments.get(k).map(|p| (k, p)))
        .filter(|(_, p)| p.state != Stage::TimedOut);
    let Some((original, p)) = found else {
        // Daraja documents no answer for a transaction it never processed; this code is the
        // simulator's own.
        return json!({"Result": {
            "ResultType": 0, "ResultCode": "SIM_TXN_NOT_FOUND",
            "ResultDesc": "No transaction found for this query (simulator).",
            "OriginatorConversationID": ocid, "ConversationID": conversation,
            "TransactionID": "", "ReferenceData": {"ReferenceItem": {"Key": "Occasion", "Value": ""}}}});
    };
    let (status, reason) = match &p.state {
        Stage::Paid => ("Completed", None),
        Stage::Failed { desc, .. } => ("Failed", Some(*desc)),
        Stage::Queued | Stage::TimedOut => ("Pending", None),
    };
    let stamp = |t: chrono::DateTime<chrono::FixedOffset>| {
        t.format("%Y%m%d%H%M%S")
            .to_string()
            .parse::<u64>()
            .unwrap_or_default()
    };
    let mut params = vec![
        json!({"Key": "DebitPartyName", "Value": format!("{} - PIL SIMULATED ORGANISATION", p.party_a)}),
        json!({"Key": "CreditPartyName", "Value": format!("{} - SIMULATED RECIPIENT", p.party_b)}),
        json!({"Key": "OriginatorConversationID", "Value": original}),
        json!({"Key": "InitiatedTime", "Value": stamp(p.initiated)}),
        json!({"Key": "DebitAccountType", "Value": "Utility Account"}),
        json!({"Key": "DebitPartyCharges", "Value": "Fee For B2C Payment|KES|22.40"}),
        json!({"Key": "ReasonType", "Value": "Business Payment to Customer via API"}),
        json!({"Key": "TransactionStatus", "Value": status}),
        json!({"Key": "Amount", "Value": p.amount}),
        json!({"Key": "ConversationID", "Value": p.conversation_id}),
    ];
    if let Some(reason) = reason {
        params.push(json!({"Key": "TransactionReason", "Value": reason}));
    }
    if let Some(done) = p.finalised {
        params.push(json!({"Key": "FinalisedTime", "Value": stamp(done)}));
    }
    if p.state == Stage::Paid {
        params.push(json!({"Key": "ReceiptNo", "Value": p.receipt}));
    }
    json!({"Result": {
        "ResultType": 0, "ResultCode": 0,
        "ResultDesc": "The service request has been accepted successfully.",
        "OriginatorConversationID": ocid, "ConversationID": conversation,
        "TransactionID": p.receipt,
        "ResultParameters": {"ResultParameter": params},
        "ReferenceData": {"ReferenceItem": {"Key": "Occasion", "Value": p.occasion.clone().unwrap_or_default()}}}})
}

#[cfg(test)]
mod tests {
    use super::super::{
        SimConfig,
        test_support::{serve, start},
    };
    use super::*;
    use tokio::sync::mpsc;

    /// A callback receiver: its base URL and the (path, body) of every POST it gets.
    async fn receiver() -> (
        String,
        mpsc::UnboundedReceiver<(String, Value)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let tx = tx.clone();
            async move {
                let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let _ = tx.send((uri.path().to_owned(), v));
                StatusCode::OK
            }
        });
        let (base, task) = serve(app).await;
        (base, rx, task)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("callback in time")
            .expect("callback")
    }

    async fn get_token(http: &reqwest::Client, base: &str) -> String {
        let r = http
            .get(format!(
                "{base}/oauth/v1/generate?grant_type=client_credentials"
            ))
            .basic_auth("pil-sim-consumer-key", Some("pil-sim-consumer-secret"))
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert!(v["expires_in"].is_string(), "{v}");
        v["access_token"].as_str().expect("token").to_owned()
    }

    fn body(ocid: &str, payee: &str, amount: Value, cb: &str) -> Value {
        json!({"OriginatorConversationID": ocid, "InitiatorName": "pil", "SecurityCredential": "c2VjcmV0",
               "CommandID": "BusinessPayment", "Amount": amount, "PartyA": "600992", "PartyB": payee,
               "Remarks": "cash transfer", "QueueTimeOutURL": format!("{cb}/timeout/{ocid}"),
               "ResultURL": format!("{cb}/result/{ocid}"), "Occassion": format!("pay-{ocid}")})
    }

    async fn pay(http: &reqwest::Client, base: &str, token: &str, body: &Value) -> (u16, Value) {
        let r = http
            .post(format!("{base}/mpesa/b2c/v3/paymentrequest"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn query(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        ocid: &str,
        cb: &str,
    ) -> (u16, Value) {
        let r = http
            .post(format!("{base}/mpesa/transactionstatus/v1/query"))
            .bearer_auth(token)
            .json(&json!({"Initiator": "pil", "SecurityCredential": "c2VjcmV0", "CommandID": "TransactionStatusQuery",
                          "OriginalConversationID": ocid, "PartyA": "600992", "IdentifierType": "4",
                          "ResultURL": format!("{cb}/status/{ocid}"), "QueueTimeOutURL": format!("{cb}/status-timeout/{ocid}"),
                          "Remarks": "check", "Occasion": "x"}))
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    fn param<'a>(result: &'a Value, key: &str) -> &'a Value {
        result["ResultParameters"]["ResultParameter"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["Key"] == key))
            .map_or(&Value::Null, |p| &p["Value"])
    }

    #[tokio::test]
    async fn tokens_are_checked_superseded_and_expire() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let r = http
            .get(format!("{base}/oauth/v1/generate"))
            .basic_auth("pil-sim-consumer-key", Some("pil-sim-consumer-secret"))
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.expect("json")["errorCode"],
            "400.008.02"
        );
        let r = http
            .get(format!(
                "{base}/oauth/v1/generate?grant_type=client_credentials"
            ))
            .basic_auth("pil-sim-consumer-key", Some("wrong"))
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.json::<Value>().await.expect("json")["errorCode"],
            "400.008.01"
        );

        let (cb, _rx, _t) = receiver().await;
        let first = get_token(&http, &base).await;
        let second = get_token(&http, &base).await;
        let b = body("t-1", "254700000001", json!(100), &cb);
        // Issuing the second token invalidated the first.
        let (status, v) = pay(&http, &base, &first, &b).await;
        assert_eq!((status, v["errorCode"].as_str()), (401, Some("401.002.01")));
        let (status, v) = pay(&http, &base, &second, &b).await;
        assert_eq!(
            (status, v["ResponseCode"].as_str()),
            (200, Some("0")),
            "{v}"
        );
        assert_eq!(v["OriginatorConversationID"], "t-1");

        sim.simulator.set_config(SimConfig {
            token_ttl_s: 0,
            ..SimConfig::default()
        });
        let expired = get_token(&http, &base).await;
        let (status, _) = pay(
            &http,
            &base,
            &expired,
            &body("t-2", "254700000001", json!(100), &cb),
        )
        .await;
        assert_eq!(status, 401);
        let r = http
            .post(format!("{base}/mpesa/b2c/v3/paymentrequest"))
            .json(&b)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400);
        let tokens = sim.simulator.mpesa_tokens();
        assert_eq!(
            tokens,
            MpesaTokenStats {
                issued: 3,
                refused: 3
            }
        );
        let stats = sim.simulator.stats();
        assert_eq!(stats.submissions.get("pay-t-1"), Some(&1));
        assert!(!stats.submissions.contains_key("pay-t-2"));
    }

    #[tokio::test]
    async fn a_payment_is_paid_once_and_a_reused_id_is_refused() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _t) = receiver().await;
        let token = get_token(&http, &base).await;
        let b = body("ok-1", "254700000001", json!(150), &cb);
        let (status, ack) = pay(&http, &base, &token, &b).await;
        assert_eq!(status, 200);
        assert!(
            ack["ConversationID"]
                .as_str()
                .is_some_and(|c| c.starts_with("AG_")),
            "{ack}"
        );
        let (path, v) = next(&mut rx).await;
        assert_eq!(path, "/result/ok-1");
        let result = &v["Result"];
        assert_eq!(result["ResultCode"], 0);
        assert_eq!(result["OriginatorConversationID"], "ok-1");
        assert_eq!(result["ConversationID"], ack["ConversationID"]);
        assert_eq!(param(result, "TransactionAmount"), 150);
        assert_eq!(
            param(result, "TransactionReceipt"),
            &result["TransactionID"]
        );

        let (status, v) = pay(&http, &base, &token, &b).await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (500, Some("500.002.1001"))
        );
        assert_eq!(v["errorMessage"], "Duplicate OriginatorConversationID.");
        let stats = sim.simulator.stats();
        assert_eq!(stats.submissions.get("pay-ok-1"), Some(&2));
        assert_eq!(stats.executed.get("pay-ok-1"), Some(&1));

        // Whole shillings only: refused at the gateway, never queued.
        for amount in [
            json!("10.50"),
            json!(10.5),
            json!("10.00"),
            json!(0),
            json!("ten"),
        ] {
            let (status, v) = pay(
                &http,
                &base,
                &token,
                &body("frac", "254700000001", amount.clone(), &cb),
            )
            .await;
            assert_eq!(
                (status, v["errorCode"].as_str()),
                (400, Some("400.002.05")),
                "{amount}"
            );
        }
        assert!(!sim.simulator.stats().submissions.contains_key("pay-frac"));
        // A whole amount given as a string of digits is accepted; below KES 10 fails by Result.
        let (status, _) = pay(
            &http,
            &base,
            &token,
            &body("small", "254700000001", json!("5"), &cb),
        )
        .await;
        assert_eq!(status, 200);
        let (_, v) = next(&mut rx).await;
        assert_eq!(v["Result"]["ResultCode"], 2);
        assert!(v["Result"].get("ResultParameters").is_none());
        assert!(!sim.simulator.stats().executed.contains_key("pay-small"));
    }

    #[tokio::test]
    async fn failures_come_by_result_and_status_queries_answer_by_callback() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _t) = receiver().await;
        let token = get_token(&http, &base).await;
        let (status, _) = pay(
            &http,
            &base,
            &token,
            &body("poor", "46733123476", json!(100), &cb),
        )
        .await;
        assert_eq!(status, 200);
        let (_, v) = next(&mut rx).await;
        assert_eq!(v["Result"]["ResultCode"], 1);
        let (_, _) = pay(
            &http,
            &base,
            &token,
            &body("nobody", "46733123475", json!(100), &cb),
        )
        .await;
        let (_, v) = next(&mut rx).await;
        assert_eq!(v["Result"]["ResultCode"], "SFC_IC0003");
        let (_, _) = pay(
            &http,
            &base,
            &token,
            &body("paid", "254700000009", json!(100), &cb),
        )
        .await;
        let _ = next(&mut rx).await;

        for (ocid, want) in [("poor", "Failed"), ("paid", "Completed")] {
            let (status, ack) = query(&http, &base, &token, ocid, &cb).await;
            assert_eq!(
                (status, ack["ResponseCode"].as_str()),
                (200, Some("0")),
                "{ack}"
            );
            let (path, v) = next(&mut rx).await;
            assert_eq!(path, format!("/status/{ocid}"));
            let result = &v["Result"];
            assert_eq!(result["ResultCode"], 0);
            assert_eq!(
                result["OriginatorConversationID"],
                ack["OriginatorConversationID"]
            );
            assert_eq!(param(result, "OriginatorConversationID"), ocid);
            assert_eq!(param(result, "TransactionStatus"), want);
        }
        let (_, _) = query(&http, &base, &token, "never-sent", &cb).await;
        let (_, v) = next(&mut rx).await;
        assert_ne!(v["Result"]["ResultCode"], 0);
        assert!(v["Result"].get("ResultParameters").is_none());
        let stats = sim.simulator.stats();
        assert_eq!(stats.status_queries, 3);
        assert_eq!(stats.executed.get("pay-paid"), Some(&1));
        assert!(!stats.executed.contains_key("pay-poor"));
    }

    #[tokio::test]
    async fn queue_timeouts_throttling_and_callback_triggers() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _t) = receiver().await;
        let token = get_token(&http, &base).await;

        let (status, _) = pay(
            &http,
            &base,
            &token,
            &body("late", "46733123452", json!(100), &cb),
        )
        .await;
        assert_eq!(status, 200);
        let (path, v) = next(&mut rx).await;
        assert_eq!(path, "/timeout/late");
        assert_eq!(v["OriginatorConversationID"], "late");
        assert!(v.get("SecurityCredential").is_none(), "{v}");

        let b = body("busy", "46733123474", json!(100), &cb);
        let (status, v) = pay(&http, &base, &token, &b).await;
        assert_eq!((status, v["errorCode"].as_str()), (500, Some("500.003.02")));
        let (status, _) = pay(&http, &base, &token, &b).await;
        assert_eq!(status, 200);
        assert_eq!(next(&mut rx).await.0, "/result/busy");

        let (status, _) = pay(
            &http,
            &base,
            &token,
            &body("twice", "46733123472", json!(100), &cb),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(next(&mut rx).await.0, "/result/twice");
        assert_eq!(next(&mut rx).await.0, "/result/twice");

        // 473: the Result is already delivered when the acknowledgement arrives.
        let (status, _) = pay(
            &http,
            &base,
            &token,
            &body("early", "46733123473", json!(100), &cb),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(rx.try_recv().expect("result before ack").0, "/result/early");

        let (status, _) = pay(
            &http,
            &base,
            &token,
            &body("lost", "46733123471", json!(100), &cb),
        )
        .await;
        assert_eq!(status, 200);
        let (status, v) = pay(
            &http,
            &base,
            &token,
            &body("broken", "46733123450", json!(100), &cb),
        )
        .await;
        assert_eq!(
            (status, v["errorCode"].as_str()),
            (500, Some("500.003.1001"))
        );
        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("pay-busy"), Some(&1));
        assert_eq!(stats.submissions.get("pay-busy"), Some(&2));
        assert_eq!(stats.executed.get("pay-twice"), Some(&1));
        assert!(!stats.executed.contains_key("pay-late"));
        assert!(!stats.executed.contains_key("pay-broken"));
        // The lost Result: paid, nothing delivered (the deadline is the status query below).
        let (_, _) = query(&http, &base, &token, "lost", &cb).await;
        let (path, v) = next(&mut rx).await;
        assert_eq!(path, "/status/lost");
        assert_eq!(param(&v["Result"], "TransactionStatus"), "Completed");
        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("pay-lost"), Some(&1));
        assert_eq!(stats.callbacks_lost, 1);
    }

    #[test]
    fn expected_outcomes() {
        use super::super::{Dfsp, expected_outcome};
        let m = |p: &str| expected_outcome(Dfsp::MpesaB2c, p);
        assert_eq!(m("254700000001"), Expected::Succeeded);
        assert_eq!(m("46733123476"), Expected::Failed("1"));
        assert_eq!(m("46733123475"), Expected::Failed("SFC_IC0003"));
        assert_eq!(m("46733123456"), Expected::Failed("2040"));
        assert_eq!(m("46733123461"), Expected::Failed("4"));
        assert_eq!(m("46733123450"), Expected::Unknown);
        assert_eq!(m("46733123452"), Expected::Pending);
        assert_eq!(m("46733123453"), Expected::Pending);
        for s in ["454", "470", "471", "472", "473", "474"] {
            assert_eq!(m(&format!("46733123{s}")), Expected::Succeeded, "{s}");
        }
    }
}

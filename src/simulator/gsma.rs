//! Fake GSMA Mobile Money API 1.2 disbursements (`specs/gsma-mmapi-1.2.0-disbursements.yaml`),
//! single and bulk.
//!
//! Single: `POST /transactions/type/disbursement` answered `202` with a request-state object, the
//! outcome later by `PUT {X-Callback-URL}` (the transaction object, or an error object), and the
//! lookups `GET /requeststates/{serverCorrelationId}`, `GET /transactions/{transactionReference}`
//! and `GET /responses/{clientCorrelationId}`.
//!
//! Auth as in GSMA's sandbox: an OAuth2 client-credentials token from `POST /v1/oauth/accesstoken`
//! (Basic consumer key:secret, lifetime `token_ttl_s`) plus `X-API-Key` on every call; tokens can
//! be revoked mid-run through `POST /_sim/gsma/tokens/revoke`. A reused `X-CorrelationID` (by a
//! single request or a batch) is refused with `businessRule/duplicateRequest` and never executed
//! again. Submissions and executions are counted per `requestingOrganisationTransactionReference`
//! (PIL's payment id), or per `X-CorrelationID` when a request has none.
//!
//! Payee triggers (see [`super::trigger`]), by the credit party's MSISDN:
//! - refused at once, nothing stored: 455 payer / 475 payee not found (404
//!   `identification/identifierError`), 457 limit reached (400
//!   `businessRule/dailyValueLimitExceeded`), 460 (400 `validation/currencyNotSupported`), 474
//!   (400 `businessRule/rateLimitError` once per X-CorrelationID), 450 (500, not executed);
//! - accepted, then failed with an error-object callback: 451/452 `requestDeclined`, 456
//!   `maxBalanceExceeded`, 476 `insufficientFunds`;
//! - 453 pending forever; 454 completed a second late; 471 callback lost; 472 callback sent twice;
//!   473 callback sent before the 202;
//! - 470 executed at once, but the answer comes only after `hang_ms` and no callback is sent;
//!   461 executed at once, answered 500 and no callback (the spec's "Missing Response Retrieval"
//!   example: a proxy error after the provider completed the request).
//!
//! Bulk: `POST /batchtransactions` (`requestBatchTransaction`: `transactions`, 1 to 999999
//! `requestTransaction` items each validated as a single request and also requiring `type`
//! "disbursement" or "transfer" and `debitParty`; optional `batchTitle`, `batchdescription` (or
//! the docs' `batchDescription`), `batchStatus` (ignored), `scheduledStartDate` (echoed, not
//! waited for), `requestingOrganisation`, `customData`; body up to 64 MiB). One invalid item
//! refuses the whole batch with 400 `validation` naming `transactions[i].<field>`, nothing
//! stored. Otherwise every item counts as a submission (by its reference, else
//! `<X-CorrelationID>#<index>`) and the answer is `202` `{status: "pending", objectReference:
//! <batchId>}`; `GET /requeststates/{serverCorrelationId}` then says `completed` with the batch
//! id. After `callback_delay_ms` each item ends as the single API would finally end it by its
//! trigger: refused (455/475/457/460/450) or failed later (451/452/456/476) items become
//! rejections whose `rejectionReason` is that errorCode; 453 items stay pending for ever (the
//! batch then stays `created`); the others complete, executed once (454 a second late). When
//! no item is pending the batch is `completed` and `PUT {X-Callback-URL}` carries the
//! `responseBatchTransaction`. Batch-wide triggers, when any item carries them: 470 processed at
//! once, answered after `hang_ms`, no callback; 471 callback lost; 472 sent twice; 473 sent
//! before the 202. The random knobs (failure, 429, timeout, loss, duplicate rates) apply only
//! to batches without any trigger, drawn once per batch. Lookups: `GET
//! /batchtransactions/{batchId}` (`responseBatchTransaction`; batches are approved on receipt, so
//! `approvalDate` = `creationDate`, and `completionDate` appears once completed), `GET
//! /batchtransactions/{batchId}/completions` and `.../rejections` (item order; `limit` default
//! 50, at most 1000, `offset` default 0; headers `X-Records-Available-Count` and
//! `X-Records-Returned-Count`), `GET /transactions/{transactionReference}` for completed items
//! and `GET /responses/{clientCorrelationId}` (a link to the batch).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{
    Chaos, Simulator, Trigger, bearer, bump, header_str, issue_bearer, json_response, lock,
    refuse_client_credentials, sleep_ms, trigger,
};

/// Credentials the simulator accepts: the defaults of `adapters/gsma-mmapi/adapter.toml`.
const CONSUMER_KEY: &str = "pil-sim-gsma-client";
const CONSUMER_SECRET: &str = "pil-sim-gsma-secret";
const API_KEY: &str = "pil-sim-gsma-api-key";

/// Most items a batch may hold (`requestBatchTransaction.transactions`, maxItems).
const MAX_BATCH_ITEMS: usize = 999_999;
/// Largest `POST /batchtransactions` body accepted (axum's default limit is 2 MiB).
const BATCH_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Records per page of batch completions / rejections: `limit` defaults to 50 (as the spec
/// says) and is capped at 1000.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// How much later a 454 (slow success) request or batch item completes.
const SLOW_MS: u64 = 1000;

/// The account debited when a request names no debit party.
const DEFAULT_DEBIT_ACCOUNT: &str = "sim-disbursement-account";

#[derive(Default)]
pub(super) struct GsmaState {
    /// Access token -> expiry.
    tokens: HashMap<String, Instant>,
    tokens_issued: u64,
    /// Business calls refused for missing, unknown, expired or revoked credentials.
    auth_refused: u64,
    /// X-CorrelationID -> request.
    requests: HashMap<String, Request>,
    /// X-CorrelationID -> batch (`POST /batchtransactions`).
    batches: HashMap<String, Batch>,
    /// serverCorrelationId -> X-CorrelationID (of a request or a batch).
    by_server_id: HashMap<String, String>,
    /// batchId -> X-CorrelationID.
    by_batch_id: HashMap<String, String>,
    /// transactionReference -> the request or batch item it completed.
    by_transaction: HashMap<String, Owner>,
    /// X-CorrelationIDs already refused once by the 474 trigger.
    throttled: HashSet<String>,
}

/// What a `transactionReference` belongs to.
enum Owner {
    /// The request with this X-CorrelationID.
    Request(String),
    /// Item `index` of the batch with this X-CorrelationID.
    BatchItem(String, usize),
}

impl GsmaState {
    /// Whether a request or a batch was already received with this X-CorrelationID.
    fn seen(&self, correlation_id: &str) -> bool {
        self.requests.contains_key(correlation_id) || self.batches.contains_key(correlation_id)
    }

    /// The completed request or batch item behind a `transactionReference`.
    fn transaction(&self, reference: &str) -> Option<&Request> {
        match self.by_transaction.get(reference)? {
            Owner::Request(c) => self.requests.get(c),
            Owner::BatchItem(c, i) => self.batches.get(c)?.items.get(*i),
        }
    }

    fn batch(&self, batch_id: &str) -> Option<&Batch> {
        self.batches.get(self.by_batch_id.get(batch_id)?)
    }
}

/// A GSMA error: the HTTP status it is answered with, `errorCategory`, `errorCode`, text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GsmaError {
    status: StatusCode,
    category: &'static str,
    code: &'static str,
    description: &'static str,
}

const fn gsma_error(
    status: StatusCode,
    category: &'static str,
    code: &'static str,
    description: &'static str,
) -> GsmaError {
    GsmaError {
        status,
        category,
        code,
        description,
    }
}

const INTERNAL: GsmaError = gsma_error(
    StatusCode::INTERNAL_SERVER_ERROR,
    "internal",
    "genericError",
    "An internal error occurred.",
);
const DUPLICATE: GsmaError = gsma_error(
    StatusCode::BAD_REQUEST,
    "businessRule",
    "duplicateRequest",
    "A request with this X-CorrelationID was already received.",
);
const RATE_LIMITED: GsmaError = gsma_error(
    StatusCode::BAD_REQUEST,
    "businessRule",
    "rateLimitError",
    "Too many requests; try again later.",
);

/// Triggers refused at submission: nothing is stored or executed.
fn refusal(t: Trigger) -> Option<GsmaError> {
    use StatusCode as S;
    match t {
        Trigger::PayerNotFound => Some(gsma_error(
            S::NOT_FOUND,
            "identification",
            "identifierError",
            "The debit party could not be identified.",
        )),
        Trigger::PayeeNotFound => Some(gsma_error(
            S::NOT_FOUND,
            "identification",
            "identifierError",
            "The credit party could not be identified.",
        )),
        Trigger::NotAllowed => Some(gsma_error(
            S::BAD_REQUEST,
            "businessRule",
            "dailyValueLimitExceeded",
            "The daily value limit has been reached.",
        )),
        Trigger::InvalidCurrency => Some(gsma_error(
            S::BAD_REQUEST,
            "validation",
            "currencyNotSupported",
            "The currency is not supported.",
        )),
        Trigger::InternalError => Some(INTERNAL),
        _ => None,
    }
}

/// Triggers accepted (202) and failed later, with this error as the callback body.
fn later_failure(t: Trigger) -> Option<GsmaError> {
    let failed =
        |code, description| gsma_error(StatusCode::BAD_REQUEST, "businessRule", code, description);
    match t {
        Trigger::ApprovalRejected => Some(failed("requestDeclined", "The request was declined.")),
        Trigger::Expired => Some(failed(
            "requestDeclined",
            "The request expired before it was approved.",
        )),
        Trigger::PayeeNotAllowed => Some(failed(
            "maxBalanceExceeded",
            "The credit party's account would exceed its maximum balance.",
        )),
        Trigger::NotEnoughFunds => Some(failed(
            "insufficientFunds",
            "The debit party has insufficient funds.",
        )),
        _ => None,
    }
}

/// How the single API finally decides a request with this trigger, as a failure: refused at
/// once or failed later (`None`: completed, or for 453 never decided).
fn final_failure(t: Option<Trigger>) -> Option<GsmaError> {
    t.and_then(|t| refusal(t).or_else(|| later_failure(t)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Pending,
    Completed,
    Failed(GsmaError),
}

struct Request {
    server_id: String,
    /// What submissions and executions are counted by.
    reference: String,
    trigger: Option<Trigger>,
    /// The validated request fields the transaction object echoes.
    echo: Map<String, Value>,
    callback: Option<String>,
    state: Progress,
    transaction_reference: Option<String>,
    created: String,
    modified: String,
}

impl Request {
    /// `requestStateObject`.
    fn state_json(&self) -> Value {
        let mut v = json!({
            "serverCorrelationId": self.server_id,
            "status": match self.state {
                Progress::Pending => "pending",
                Progress::Completed => "completed",
                Progress::Failed(_) => "failed",
            },
            "notificationMethod": if self.callback.is_some() { "callback" } else { "polling" },
            "pollLimit": 100,
        });
        if let Some(r) = &self.transaction_reference {
            v["objectReference"] = json!(r);
        }
        if let Progress::Failed(e) = self.state {
            v["error"] = error_json(&e, None);
        }
        v
    }

    /// `responseTransaction`: the request's fields plus what the provider adds.
    fn transaction_json(&self) -> Value {
        let mut v = Value::Object(self.echo.clone());
        if !self.echo.contains_key("type") {
            v["type"] = json!("disbursement");
        }
        v["transactionStatus"] = json!(match self.state {
            Progress::Completed => "completed",
            Progress::Failed(_) => "failed",
            Progress::Pending => "pending",
        });
        if let Some(r) = &self.transaction_reference {
            v["transactionReference"] = json!(r);
            v["transactionReceipt"] = json!(format!("RCPT-{}", &r[..8.min(r.len())]));
        }
        v["creationDate"] = json!(self.created);
        v["modificationDate"] = json!(self.modified);
        v
    }

    /// Decides a pending request (once): failed with `failure`, or completed under a new
    /// `transactionReference`, which is returned (the money moved).
    fn decide(&mut self, failure: Option<GsmaError>) -> Option<String> {
        if self.state != Progress::Pending {
            return None;
        }
        self.modified = now_rfc3339();
        if let Some(e) = failure {
            self.state = Progress::Failed(e);
            return None;
        }
        let transaction = uuid::Uuid::new_v4().to_string();
        self.transaction_reference = Some(transaction.clone());
        self.state = Progress::Completed;
        Some(transaction)
    }

    /// The body of the final callback.
    fn callback_json(&self) -> Value {
        match self.state {
            Progress::Failed(e) => error_json(&e, None),
            _ => self.transaction_json(),
        }
    }
}

/// A `POST /batchtransactions`: its items are requests without a callback of their own; the
/// batch as a whole is reported by one callback.
struct Batch {
    server_id: String,
    batch_id: String,
    callback: Option<String>,
    /// What decides how many copies of the batch callback are sent: 471 or 472 when an item
    /// carries it, else the first item trigger, else none (the loss/duplicate knobs).
    callback_trigger: Option<Trigger>,
    /// The validated batch fields `responseBatchTransaction` echoes.
    echo: Map<String, Value>,
    items: Vec<Request>,
    created: String,
    modified: String,
    /// Set once no item is pending any more.
    completed: Option<String>,
}

impl Batch {
    /// `requestStateObject` of the batch request: `objectReference` is the batch id.
    fn state_json(&self, status: &str) -> Value {
        json!({
            "serverCorrelationId": self.server_id,
            "status": status,
            "notificationMethod": if self.callback.is_some() { "callback" } else { "polling" },
            "objectReference": self.batch_id,
            "pollLimit": 100,
        })
    }

    fn count(&self, f: impl Fn(&Progress) -> bool) -> usize {
        self.items.iter().filter(|r| f(&r.state)).count()
    }

    /// `responseBatchTransaction`. Batches are approved on receipt (no maker/checker step), so
    /// `approvalDate` is the creation date; `completionDate` only exists once completed.
    fn batch_json(&self) -> Value {
        let mut v = Value::Object(self.echo.clone());
        v["batchId"] = json!(self.batch_id);
        v["batchStatus"] = json!(if self.completed.is_some() {
            "completed"
        } else {
            "created"
        });
        v["approvalDate"] = json!(self.created);
        if let Some(c) = &self.completed {
            v["completionDate"] = json!(c);
        }
        v["creationDate"] = json!(self.created);
        v["modificationDate"] = json!(self.modified);
        v["processingFlag"] = json!(self.completed.is_none());
        v["parsingSuccessCount"] = json!(self.items.len());
        v["completedCount"] = json!(self.count(|p| *p == Progress::Completed));
        v["rejectionCount"] = json!(self.count(|p| matches!(p, Progress::Failed(_))));
        v
    }
}

/// The members a `responseBatchTransactionCompletion` / `...Rejection` shares with the item.
fn item_record(item: &Request) -> Value {
    let mut v = json!({
        "creditParty": item.echo.get("creditParty"),
        "debitParty": item.echo.get("debitParty"),
    });
    if let Some(r) = item.echo.get("requestingOrganisationTransactionReference") {
        v["requestingOrganisationTransactionReference"] = r.clone();
    }
    v
}

/// `responseBatchTransactionCompletion` of a completed item.
fn completion_json(item: &Request) -> Option<Value> {
    let reference = item.transaction_reference.as_ref()?;
    let mut v = item_record(item);
    v["transactionReference"] = json!(reference);
    v["completionDate"] = json!(item.modified);
    v["link"] = json!(format!("/transactions/{reference}"));
    Some(v)
}

/// `responseBatchTransactionRejection` of a failed item: `rejectionReason` is the errorCode
/// the single API would have answered (refused at once or failed later).
fn rejection_json(item: &Request) -> Option<Value> {
    let Progress::Failed(e) = item.state else {
        return None;
    };
    let mut v = item_record(item);
    v["rejectionReason"] = json!(e.code);
    v["rejectionDate"] = json!(item.modified);
    Some(v)
}

pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/v1/oauth/accesstoken", post(token))
        .route("/transactions/type/{transaction_type}", post(submit))
        .route(
            "/transactions/{transaction_reference}",
            get(view_transaction),
        )
        .route(
            "/requeststates/{server_correlation_id}",
            get(view_request_state),
        )
        .route("/responses/{client_correlation_id}", get(view_response))
        .route(
            "/batchtransactions",
            post(submit_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/batchtransactions/{batch_id}", get(view_batch))
        .route(
            "/batchtransactions/{batch_id}/completions",
            get(view_completions),
        )
        .route(
            "/batchtransactions/{batch_id}/rejections",
            get(view_rejections),
        )
        .route("/_sim/gsma/tokens", get(token_stats))
        .route("/_sim/gsma/tokens/revoke", post(revoke_tokens))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every answer carries `X-Date`, as the spec's response headers say.
fn dated(mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&now_rfc3339()) {
        resp.headers_mut().insert("x-date", v);
    }
    resp
}

/// `errorObject`; `parameter` becomes `errorParameters` (the field at fault).
fn error_json(e: &GsmaError, parameter: Option<(&str, &str)>) -> Value {
    let mut v = json!({
        "errorCategory": e.category,
        "errorCode": e.code,
        "errordescription": e.description,
        "errorDateTime": now_rfc3339(),
    });
    if let Some((key, value)) = parameter {
        v["errorParameters"] = json!([{"key": key, "value": value}]);
    }
    v
}

/// An error answer (kept small so `Result<_, Fail>` stays cheap).
struct Fail(Box<(StatusCode, Value)>);

impl Fail {
    fn of(e: GsmaError) -> Fail {
        Fail(Box::new((e.status, error_json(&e, None))))
    }

    fn with_parameter(e: GsmaError, key: &str, value: &str) -> Fail {
        Fail(Box::new((e.status, error_json(&e, Some((key, value))))))
    }

    /// The same error about item `index` of a batch: errorParameters keys become
    /// `transactions[index].<key>`.
    fn in_item(mut self, index: usize) -> Fail {
        let params = self
            .0
            .1
            .get_mut("errorParameters")
            .and_then(Value::as_array_mut);
        for p in params.into_iter().flatten() {
            let key = p.get("key").and_then(Value::as_str);
            if let Some(key) = key.map(|k| format!("transactions[{index}].{k}")) {
                p["key"] = json!(key);
            }
        }
        self
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let (status, body) = *self.0;
        json_response(status, body)
    }
}

fn invalid(code: &'static str, key: &str, value: &str) -> Fail {
    let description = match code {
        "mandatoryValueNotSupplied" => "A mandatory value was not supplied.",
        "lengthError" => "A value has an invalid length.",
        _ => "A value has an invalid format.",
    };
    Fail::with_parameter(
        gsma_error(StatusCode::BAD_REQUEST, "validation", code, description),
        key,
        value,
    )
}

async fn token(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = issue_token(&sim, &headers, &body);
    sim.latency().await;
    resp
}

/// OAuth2 client credentials (RFC 6749 §4.4): its own error shape, not GSMA's error object.
fn issue_token(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(refused) = refuse_client_credentials(headers, body, CONSUMER_KEY, CONSUMER_SECRET) {
        return refused;
    }
    let ttl = sim.config().token_ttl_s;
    let mut st = lock(&sim.inner.gsma);
    st.tokens_issued += 1;
    issue_bearer(&mut st.tokens, ttl)
}

/// A valid, unexpired Bearer token and the right X-API-Key, or 401 `authorisation`.
fn check_access(sim: &Simulator, headers: &HeaderMap) -> Result<(), Fail> {
    let token = bearer(headers);
    let mut st = lock(&sim.inner.gsma);
    let token_ok = st
        .tokens
        .get(token)
        .is_some_and(|exp| *exp > Instant::now());
    if token_ok && header_str(headers, "x-api-key") == Some(API_KEY) {
        return Ok(());
    }
    st.auth_refused += 1;
    Err(Fail::of(gsma_error(
        StatusCode::UNAUTHORIZED,
        "authorisation",
        "clientAuthorisationError",
        "Missing, unknown, expired or revoked credentials.",
    )))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// The disbursement spec's amount pattern `^([0]|([1-9][0-9]{0,17}))([.][0-9]{0,3}[1-9])?$`:
/// no leading zeros, at most four decimals, no trailing zero after the point ("200.00" fails).
fn spec_amount(s: &str) -> bool {
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let int_ok =
        int == "0" || (!int.is_empty() && int.len() <= 18 && !int.starts_with('0') && digits(int));
    let frac_ok = frac.is_none_or(|f| (1..=4).contains(&f.len()) && digits(f) && !f.ends_with('0'));
    int_ok && frac_ok
}

/// GSMA's MSISDN format: an optional '+' then 7 to 16 digits.
fn valid_msisdn(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    (7..=16).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `creditPartyArray` / `debitPartyArray`: 1 to 10 `{key, value}` strings of 1 to 256 chars.
fn parties(v: Option<&Value>, name: &str) -> Result<Option<Vec<(String, String)>>, Fail> {
    let Some(v) = v else {
        return Ok(None);
    };
    let items = v
        .as_array()
        .filter(|a| (1..=10).contains(&a.len()))
        .ok_or_else(|| invalid("formatError", name, "1 to 10 key/value identifiers"))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let text = |k: &str| {
            item.get(k)
                .and_then(Value::as_str)
                .filter(|s| (1..=256).contains(&s.chars().count()))
                .map(str::to_owned)
        };
        let (Some(key), Some(value)) = (text("key"), text("value")) else {
            return Err(invalid(
                "formatError",
                name,
                "key and value must be strings",
            ));
        };
        if key == "msisdn" && !valid_msisdn(&value) {
            return Err(invalid("formatError", name, "msisdn"));
        }
        out.push((key, value));
    }
    Ok(Some(out))
}

fn parties_json(parties: &[(String, String)]) -> Value {
    Value::Array(
        parties
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

/// A validated `requestTransactionType` body.
struct Submission {
    payee: String,
    reference: Option<String>,
    echo: Map<String, Value>,
}

/// The body as a JSON object, or 400 `formatError` naming `body`.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, Fail> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(invalid("formatError", "body", "not an object")),
        Err(_) => Err(invalid("formatError", "body", "not JSON")),
    }
}

/// An optional string member of at most `max` characters.
fn optional_text(obj: &Map<String, Value>, key: &str, max: usize) -> Result<Option<String>, Fail> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(_) => Err(invalid("lengthError", key, "too long or not a string")),
    }
}

/// An optional RFC 3339 date-time member.
fn optional_date(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Fail> {
    let date = optional_text(obj, key, 64)?;
    if let Some(d) = &date
        && chrono::DateTime::parse_from_rfc3339(d).is_err()
    {
        return Err(invalid("formatError", key, "date-time"));
    }
    Ok(date)
}

/// An optional `requestingOrganisation` object.
fn organisation(v: Option<&Value>) -> Result<Option<Value>, Fail> {
    let Some(o) = v else {
        return Ok(None);
    };
    let kind = o
        .get("requestingOrganisationIdentifierType")
        .and_then(Value::as_str);
    let id = o
        .get("requestingOrganisationIdentifier")
        .and_then(Value::as_str);
    match (kind, id) {
        (Some("lei" | "swiftbic" | "organisationid"), Some(id))
            if (1..=256).contains(&id.chars().count()) =>
        {
            Ok(Some(o.clone()))
        }
        _ => Err(invalid(
            "formatError",
            "requestingOrganisation",
            "identifier type and identifier",
        )),
    }
}

fn parse_body(body: &[u8]) -> Result<Submission, Fail> {
    parse_transaction(&json_object(body)?)
}

/// Validates the transaction fields a disbursement request is made of.
fn parse_transaction(obj: &Map<String, Value>) -> Result<Submission, Fail> {
    let amount = match obj.get("amount") {
        None => return Err(invalid("mandatoryValueNotSupplied", "amount", "missing")),
        Some(Value::String(s))
            if spec_amount(s) && Decimal::from_str(s).is_ok_and(|d| d > Decimal::ZERO) =>
        {
            s.clone()
        }
        Some(_) => {
            return Err(invalid(
                "formatError",
                "amount",
                "a string such as \"15.2\"",
            ));
        }
    };
    let currency = match obj.get("currency") {
        None => return Err(invalid("mandatoryValueNotSupplied", "currency", "missing")),
        Some(Value::String(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => {
            c.clone()
        }
        Some(_) => return Err(invalid("formatError", "currency", "ISO 4217 code")),
    };
    let credit = parties(obj.get("creditParty"), "creditParty")?
        .ok_or_else(|| invalid("mandatoryValueNotSupplied", "creditParty", "missing"))?;
    let debit = parties(obj.get("debitParty"), "debitParty")?
        .unwrap_or_else(|| vec![("accountid".into(), DEFAULT_DEBIT_ACCOUNT.into())]);
    let reference = optional_text(obj, "requestingOrganisationTransactionReference", 256)?;
    let description = optional_text(obj, "descriptionText", 160)?;
    let sub_type = optional_text(obj, "subType", 256)?;
    let request_date = optional_date(obj, "requestDate")?;
    let organisation = organisation(obj.get("requestingOrganisation"))?;
    let payee = credit
        .iter()
        .find(|(k, _)| k == "msisdn")
        .or(credit.first())
        .map(|(_, v)| v.trim_start_matches('+').to_owned())
        .unwrap_or_default();
    let mut echo = Map::new();
    echo.insert("amount".into(), json!(amount));
    echo.insert("currency".into(), json!(currency));
    echo.insert("creditParty".into(), parties_json(&credit));
    echo.insert("debitParty".into(), parties_json(&debit));
    for (key, value) in [
        ("requestingOrganisationTransactionReference", &reference),
        ("descriptionText", &description),
        ("subType", &sub_type),
        ("requestDate", &request_date),
    ] {
        if let Some(v) = value {
            echo.insert(key.into(), json!(v));
        }
    }
    if let Some(o) = organisation {
        echo.insert("requestingOrganisation".into(), o);
    }
    Ok(Submission {
        payee,
        reference,
        echo,
    })
}

/// A validated `requestBatchTransaction`.
struct BatchSubmission {
    /// The batch fields `responseBatchTransaction` echoes.
    echo: Map<String, Value>,
    items: Vec<Submission>,
}

/// `requestBatchTransaction`: 1 to 999999 items, each validated as a disbursement request (an
/// error names `transactions[i].<field>`), plus the optional batch fields. `batchdescription`
/// is the spec's spelling; GSMA's docs write `batchDescription`, also accepted.
fn parse_batch(body: &[u8]) -> Result<BatchSubmission, Fail> {
    let obj = json_object(body)?;
    let transactions = match obj.get("transactions") {
        None => {
            return Err(invalid(
                "mandatoryValueNotSupplied",
                "transactions",
                "missing",
            ));
        }
        Some(Value::Array(a)) if (1..=MAX_BATCH_ITEMS).contains(&a.len()) => a,
        Some(_) => {
            return Err(invalid(
                "formatError",
                "transactions",
                "an array of 1 to 999999 transactions",
            ));
        }
    };
    let items = transactions
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(o) => parse_item(o).map_err(|f| f.in_item(i)),
            _ => Err(invalid(
                "formatError",
                &format!("transactions[{i}]"),
                "not an object",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(status) = obj.get("batchStatus")
        && !matches!(status.as_str(), Some("created" | "approved" | "completed"))
    {
        return Err(invalid(
            "formatError",
            "batchStatus",
            "created, approved or completed",
        ));
    }
    let description = match optional_text(&obj, "batchdescription", 256)? {
        Some(d) => Some(d),
        None => optional_text(&obj, "batchDescription", 256)?,
    };
    let mut echo = Map::new();
    for (key, value) in [
        ("batchTitle", optional_text(&obj, "batchTitle", 256)?),
        ("batchdescription", description),
        (
            "scheduledStartDate",
            optional_date(&obj, "scheduledStartDate")?,
        ),
    ] {
        if let Some(v) = value {
            echo.insert(key.into(), json!(v));
        }
    }
    if let Some(o) = organisation(obj.get("requestingOrganisation"))? {
        echo.insert("requestingOrganisation".into(), o);
    }
    if let Some(c) = custom_data(obj.get("customData"))? {
        echo.insert("customData".into(), c);
    }
    Ok(BatchSubmission { echo, items })
}

/// A batch item (`requestTransaction`): a disbursement request that must also name its `type`
/// ("disbursement" or "transfer") and its debit party.
fn parse_item(obj: &Map<String, Value>) -> Result<Submission, Fail> {
    let mut submission = parse_transaction(obj)?;
    if !obj.contains_key("debitParty") {
        return Err(invalid(
            "mandatoryValueNotSupplied",
            "debitParty",
            "missing",
        ));
    }
    let kind = match obj.get("type") {
        None => return Err(invalid("mandatoryValueNotSupplied", "type", "missing")),
        Some(Value::String(t)) if t == "disbursement" || t == "transfer" => t.clone(),
        Some(_) => return Err(invalid("formatError", "type", "disbursement or transfer")),
    };
    submission.echo.insert("type".into(), json!(kind));
    Ok(submission)
}

/// An optional `customData` array: at most 20 `{key, value}` strings (key 1 to 256 chars).
fn custom_data(v: Option<&Value>) -> Result<Option<Value>, Fail> {
    let Some(v) = v else {
        return Ok(None);
    };
    let pair_ok = |kv: &Value| {
        kv.get("key")
            .and_then(Value::as_str)
            .is_some_and(|k| (1..=256).contains(&k.chars().count()))
            && kv.get("value").is_some_and(Value::is_string)
    };
    if !v
        .as_array()
        .is_some_and(|a| a.len() <= 20 && a.iter().all(pair_ok))
    {
        return Err(invalid(
            "formatError",
            "customData",
            "at most 20 key/value strings",
        ));
    }
    Ok(Some(v.clone()))
}

/// Headers of a creation request: the X-CorrelationID and, when sent, a valid callback URL.
fn request_headers(headers: &HeaderMap) -> Result<(String, Option<String>), Fail> {
    let correlation_id = header_str(headers, "x-correlationid")
        .map(str::trim)
        .ok_or_else(|| invalid("mandatoryValueNotSupplied", "X-CorrelationID", "missing"))?;
    if !is_uuid(correlation_id) {
        return Err(invalid("formatError", "X-CorrelationID", "must be a UUID"));
    }
    if let Some(date) = header_str(headers, "x-date")
        && chrono::DateTime::parse_from_rfc3339(date).is_err()
        && chrono::DateTime::parse_from_rfc2822(date).is_err()
    {
        return Err(invalid("formatError", "X-Date", "date-time"));
    }
    let callback = match header_str(headers, "x-callback-url").map(str::trim) {
        None | Some("") => None,
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url.to_owned())
        }
        Some(_) => return Err(invalid("formatError", "X-Callback-URL", "an http(s) URL")),
    };
    Ok((correlation_id.to_ascii_lowercase(), callback))
}

async fn submit(
    State(sim): State<Simulator>,
    Path(transaction_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = match handle_submit(&sim, &transaction_type, &headers, &body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    sim.latency().await;
    dated(resp)
}

async fn handle_submit(
    sim: &Simulator,
    transaction_type: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Fail> {
    let cfg = sim.config();
    check_access(sim, headers)?;
    let (correlation_id, callback) = request_headers(headers)?;
    if transaction_type != "disbursement" {
        return Err(Fail::of(gsma_error(
            StatusCode::BAD_REQUEST,
            "businessRule",
            "transactionTypeError",
            "Only disbursements are served here.",
        )));
    }
    let submission = parse_body(body)?;
    let reference = submission
        .reference
        .clone()
        .unwrap_or_else(|| correlation_id.clone());
    sim.with_stats(|s| bump(&mut s.submissions, &reference));

    let trig = trigger(&submission.payee);
    let chaos = sim.chaos(trig, &cfg);
    let accepted = {
        let mut st = lock(&sim.inner.gsma);
        if st.seen(&correlation_id) {
            return Err(Fail::of(DUPLICATE));
        }
        if let Some(e) = trig.and_then(refusal) {
            return Err(Fail::of(e));
        }
        let throttle_once =
            trig == Some(Trigger::RateLimitedOnce) && st.throttled.insert(correlation_id.clone());
        if throttle_once || chaos == Chaos::Throttle429 {
            return Err(Fail::of(RATE_LIMITED));
        }
        if chaos == Chaos::Fail500 {
            return Err(Fail::of(INTERNAL));
        }
        let server_id = uuid::Uuid::new_v4().to_string();
        let now = now_rfc3339();
        st.by_server_id
            .insert(server_id.clone(), correlation_id.clone());
        let request = Request {
            server_id,
            reference,
            trigger: trig,
            echo: submission.echo,
            callback,
            state: Progress::Pending,
            transaction_reference: None,
            created: now.clone(),
            modified: now,
        };
        let body = request.state_json();
        st.requests.insert(correlation_id.clone(), request);
        body
    };

    let generation = sim.generation();
    let delay = cfg.latency_ms + cfg.callback_delay_ms;
    let answered_late = trig == Some(Trigger::Timeout) || chaos == Chaos::Timeout;
    if answered_late || trig == Some(Trigger::ProcessingError) {
        // Executed now; the answer is lost (late or a 500) and so is the callback.
        settle(sim, &correlation_id);
        if !answered_late {
            return Err(Fail::of(INTERNAL));
        }
        sleep_ms(cfg.hang_ms).await;
        return Ok(json_response(
            StatusCode::ACCEPTED,
            current_state(sim, &correlation_id).unwrap_or(accepted),
        ));
    }
    if trig == Some(Trigger::CallbackBeforeResponse) {
        // Spawned so a client disconnect cannot stop it; awaited so the callback precedes the 202.
        let task = outcome(
            sim.clone(),
            correlation_id.clone(),
            cfg.callback_delay_ms,
            generation,
        );
        if let Err(e) = tokio::spawn(task).await {
            tracing::warn!(error = %e, "simulator outcome task failed");
        }
        return Ok(json_response(
            StatusCode::ACCEPTED,
            current_state(sim, &correlation_id).unwrap_or(accepted),
        ));
    }
    let delay = if trig == Some(Trigger::SlowSuccess) {
        delay + SLOW_MS
    } else {
        delay
    };
    tokio::spawn(outcome(sim.clone(), correlation_id, delay, generation));
    Ok(json_response(StatusCode::ACCEPTED, accepted))
}

async fn submit_batch(State(sim): State<Simulator>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = match handle_batch(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    sim.latency().await;
    dated(resp)
}

/// `POST /batchtransactions`: validated whole (one bad item refuses the batch), counted per
/// item, then stored and answered `202` with the batch id as `objectReference`.
async fn handle_batch(sim: &Simulator, headers: &HeaderMap, body: &[u8]) -> Result<Response, Fail> {
    let cfg = sim.config();
    check_access(sim, headers)?;
    let (correlation_id, callback) = request_headers(headers)?;
    let batch = parse_batch(body)?;
    let references: Vec<String> = batch
        .items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.reference
                .clone()
                .unwrap_or_else(|| format!("{correlation_id}#{i}"))
        })
        .collect();
    sim.with_stats(|s| {
        for r in &references {
            bump(&mut s.submissions, r);
        }
    });

    let triggers: Vec<Option<Trigger>> = batch.items.iter().map(|s| trigger(&s.payee)).collect();
    let has = |t: Trigger| triggers.contains(&Some(t));
    // Random misbehaviour only for batches without any trigger, as for single requests.
    let batch_trigger = [Trigger::CallbackLost, Trigger::CallbackDuplicated]
        .into_iter()
        .find(|t| has(*t))
        .or_else(|| triggers.iter().flatten().next().copied());
    let chaos = sim.chaos(batch_trigger, &cfg);
    let accepted = {
        let mut guard = lock(&sim.inner.gsma);
        let st = &mut *guard;
        if st.seen(&correlation_id) {
            return Err(Fail::of(DUPLICATE));
        }
        match chaos {
            Chaos::Throttle429 => return Err(Fail::of(RATE_LIMITED)),
            Chaos::Fail500 => return Err(Fail::of(INTERNAL)),
            Chaos::None | Chaos::Timeout => {}
        }
        let server_id = uuid::Uuid::new_v4().to_string();
        let batch_id = uuid::Uuid::new_v4().to_string();
        let now = now_rfc3339();
        let items = batch
            .items
            .into_iter()
            .zip(references)
            .zip(&triggers)
            .map(|((s, reference), t)| Request {
                server_id: server_id.clone(),
                reference,
                trigger: *t,
                echo: s.echo,
                callback: None,
                state: Progress::Pending,
                transaction_reference: None,
                created: now.clone(),
                modified: now.clone(),
            })
            .collect();
        let b = Batch {
            server_id: server_id.clone(),
            batch_id: batch_id.clone(),
            callback,
            callback_trigger: batch_trigger,
            echo: batch.echo,
            items,
            created: now.clone(),
            modified: now,
            completed: None,
        };
        let body = b.state_json("pending");
        st.by_server_id.insert(server_id, correlation_id.clone());
        st.by_batch_id.insert(batch_id, correlation_id.clone());
        st.batches.insert(correlation_id.clone(), b);
        body
    };

    let generation = sim.generation();
    let answer = |sim: &Simulator, accepted: Value| {
        let state = lock(&sim.inner.gsma)
            .batches
            .get(&correlation_id)
            .map(|b| b.state_json("completed"));
        json_response(StatusCode::ACCEPTED, state.unwrap_or(accepted))
    };
    if has(Trigger::Timeout) || chaos == Chaos::Timeout {
        // Processed now; the answer comes late and no callback is sent, as for a single 470.
        let task = process_batch(sim.clone(), correlation_id.clone(), 0, generation, false);
        tokio::spawn(task);
        sleep_ms(cfg.hang_ms).await;
        return Ok(answer(sim, accepted));
    }
    if has(Trigger::CallbackBeforeResponse) {
        // Spawned so a client disconnect cannot stop it; awaited so the callback precedes the 202.
        let task = process_batch(
            sim.clone(),
            correlation_id.clone(),
            cfg.callback_delay_ms,
            generation,
            true,
        );
        if let Err(e) = tokio::spawn(task).await {
            tracing::warn!(error = %e, "simulator batch task failed");
        }
        return Ok(answer(sim, accepted));
    }
    let delay = cfg.latency_ms + cfg.callback_delay_ms;
    tokio::spawn(process_batch(
        sim.clone(),
        correlation_id.clone(),
        delay,
        generation,
        true,
    ));
    Ok(json_response(StatusCode::ACCEPTED, accepted))
}

/// Processes a batch after `delay_ms`: every item decided as the single API finally decides
/// it (454 a second later, 453 never). Once no item is pending the batch is completed and, when
/// `notify` and an X-Callback-URL was given, reported by one callback (471 lost, 472 twice).
async fn process_batch(
    sim: Simulator,
    correlation_id: String,
    delay_ms: u64,
    generation: u64,
    notify: bool,
) {
    sleep_ms(delay_ms).await;
    if sim.generation() != generation {
        return;
    }
    if settle_batch(&sim, &correlation_id, false) {
        sleep_ms(SLOW_MS).await;
        if sim.generation() != generation {
            return;
        }
        settle_batch(&sim, &correlation_id, true);
    }
    let (body, url, trig) = {
        let mut st = lock(&sim.inner.gsma);
        let Some(b) = st.batches.get_mut(&correlation_id) else {
            return;
        };
        if b.items.iter().any(|r| r.state == Progress::Pending) {
            return; // a 453 item: the batch never completes
        }
        let now = now_rfc3339();
        b.completed = Some(now.clone());
        b.modified = now;
        (b.batch_json(), b.callback.clone(), b.callback_trigger)
    };
    let Some(url) = url.filter(|_| notify) else {
        return;
    };
    let copies = sim.callback_copies(trig);
    deliver(&sim, &url, &correlation_id, &body, copies).await;
}

/// Decides the batch's pending items (454 ones only when `slow`, 453 ones never): each
/// completed item is executed (counted) once. Returns whether 454 items are left for later.
fn settle_batch(sim: &Simulator, correlation_id: &str, slow: bool) -> bool {
    let (executed, slow_left) = {
        let mut guard = lock(&sim.inner.gsma);
        let st = &mut *guard;
        let Some(b) = st.batches.get_mut(correlation_id) else {
            return false;
        };
        let mut executed = Vec::new();
        let mut slow_left = false;
        for (i, item) in b.items.iter_mut().enumerate() {
            match item.trigger {
                Some(Trigger::PendingForever) => continue,
                Some(Trigger::SlowSuccess) if !slow => {
                    slow_left = true;
                    continue;
                }
                _ => {}
            }
            if let Some(t) = item.decide(final_failure(item.trigger)) {
                st.by_transaction
                    .insert(t, Owner::BatchItem(correlation_id.to_owned(), i));
                executed.push(item.reference.clone());
            }
        }
        b.modified = now_rfc3339();
        (executed, slow_left)
    };
    sim.with_stats(|s| {
        for r in &executed {
            bump(&mut s.executed, r);
        }
    });
    slow_left
}

fn current_state(sim: &Simulator, correlation_id: &str) -> Option<Value> {
    lock(&sim.inner.gsma)
        .requests
        .get(correlation_id)
        .map(Request::state_json)
}

/// Decides a pending request (once): completed (money moves, counted) or failed.
fn settle(sim: &Simulator, correlation_id: &str) {
    let executed = {
        let mut guard = lock(&sim.inner.gsma);
        let st = &mut *guard;
        let Some(r) = st.requests.get_mut(correlation_id) else {
            return;
        };
        let Some(transaction) = r.decide(r.trigger.and_then(later_failure)) else {
            return;
        };
        st.by_transaction
            .insert(transaction, Owner::Request(correlation_id.to_owned()));
        r.reference.clone()
    };
    sim.with_stats(|s| bump(&mut s.executed, &executed));
}

/// Background outcome: after `delay_ms`, settle and deliver the callback (if a URL was given).
async fn outcome(sim: Simulator, correlation_id: String, delay_ms: u64, generation: u64) {
    sleep_ms(delay_ms).await;
    if sim.generation() != generation {
        return;
    }
    let trig = lock(&sim.inner.gsma)
        .requests
        .get(&correlation_id)
        .and_then(|r| r.trigger);
    if trig == Some(Trigger::PendingForever) {
        return;
    }
    settle(&sim, &correlation_id);
    let (body, url) = {
        let st = lock(&sim.inner.gsma);
        let Some(r) = st.requests.get(&correlation_id) else {
            return;
        };
        (r.callback_json(), r.callback.clone())
    };
    let Some(url) = url else {
        return; // polling: the client asked for no callback
    };
    let copies = sim.callback_copies(trig);
    deliver(&sim, &url, &correlation_id, &body, copies).await;
}

/// `PUT {url}` `copies` times (counted), with the client's X-CorrelationID, X-Date and
/// X-Content-Hash; the receiver's answer is only logged (a callback is never retried).
async fn deliver(sim: &Simulator, url: &str, correlation_id: &str, body: &Value, copies: usize) {
    if copies == 0 {
        return;
    }
    let bytes = body.to_string().into_bytes();
    let hash = hex::encode(Sha256::digest(&bytes));
    for _ in 0..copies {
        sim.with_stats(|s| s.callbacks_sent += 1);
        let sent = sim
            .inner
            .client
            .put(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-CorrelationID", correlation_id)
            .header("X-Date", now_rfc3339())
            .header("X-Content-Hash", &hash)
            .body(bytes.clone())
            .send()
            .await;
        match sent {
            Ok(r) if !r.status().is_success() => {
                tracing::warn!(%url, status = %r.status(), "GSMA callback rejected by receiver");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%url, error = %e, "GSMA callback delivery failed"),
        }
    }
}

fn not_found(what: &str) -> Fail {
    Fail::with_parameter(
        gsma_error(
            StatusCode::NOT_FOUND,
            "identification",
            "identifierError",
            "The resource could not be found.",
        ),
        what,
        "not found",
    )
}

/// A lookup: counted, access-checked, answered `200` with the object found in the state.
async fn lookup(
    sim: &Simulator,
    headers: &HeaderMap,
    find: impl FnOnce(&GsmaState) -> Result<Value, Fail>,
) -> Response {
    lookup_with(sim, headers, |st| {
        find(st).map(|v| json_response(StatusCode::OK, v))
    })
    .await
}

/// A lookup answering whatever `answer` builds from the state.
async fn lookup_with(
    sim: &Simulator,
    headers: &HeaderMap,
    answer: impl FnOnce(&GsmaState) -> Result<Response, Fail>,
) -> Response {
    sim.with_stats(|s| s.status_queries += 1);
    let resp = match check_access(sim, headers).and_then(|()| answer(&lock(&sim.inner.gsma))) {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    sim.latency().await;
    dated(resp)
}

async fn view_request_state(
    State(sim): State<Simulator>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    lookup(&sim, &headers, |st| {
        let correlation_id = st.by_server_id.get(&server_id);
        let request = correlation_id.and_then(|c| st.requests.get(c));
        let batch = correlation_id.and_then(|c| st.batches.get(c));
        request
            .map(Request::state_json)
            .or_else(|| batch.map(|b| b.state_json("completed")))
            .ok_or_else(|| not_found("serverCorrelationId"))
    })
    .await
}

async fn view_transaction(
    State(sim): State<Simulator>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Response {
    lookup(&sim, &headers, |st| {
        st.transaction(&reference)
            .map(Request::transaction_json)
            .ok_or_else(|| not_found("transactionReference"))
    })
    .await
}

/// `GET /responses/{clientCorrelationId}`: a link to the transaction once it exists, to the
/// request state before (or when the request failed), to the batch for a batch request; 404
/// when the id was never received.
async fn view_response(
    State(sim): State<Simulator>,
    Path(correlation_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = correlation_id.trim().to_ascii_lowercase();
    lookup(&sim, &headers, |st| {
        if let Some(b) = st.batches.get(&key) {
            return Ok(json!({"link": format!("/batchtransactions/{}", b.batch_id)}));
        }
        let r = st
            .requests
            .get(&key)
            .ok_or_else(|| not_found("clientCorrelationId"))?;
        let link = match &r.transaction_reference {
            Some(t) => format!("/transactions/{t}"),
            None => format!("/requeststates/{}", r.server_id),
        };
        Ok(json!({"link": link}))
    })
    .await
}

async fn view_batch(
    State(sim): State<Simulator>,
    Path(batch_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    lookup(&sim, &headers, |st| {
        st.batch(&batch_id)
            .map(Batch::batch_json)
            .ok_or_else(|| not_found("batchId"))
    })
    .await
}

async fn view_completions(
    State(sim): State<Simulator>,
    Path(batch_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let completed = |p: &Progress| *p == Progress::Completed;
    view_records(&sim, &headers, &batch_id, query, completed, completion_json).await
}

async fn view_rejections(
    State(sim): State<Simulator>,
    Path(batch_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let rejected = |p: &Progress| matches!(p, Progress::Failed(_));
    view_records(&sim, &headers, &batch_id, query, rejected, rejection_json).await
}

/// One page of the batch items in state `wanted`, in item order, as `record` shows them, with
/// `X-Records-Available-Count` (all such items) and `X-Records-Returned-Count`.
async fn view_records(
    sim: &Simulator,
    headers: &HeaderMap,
    batch_id: &str,
    query: Option<String>,
    wanted: fn(&Progress) -> bool,
    record: fn(&Request) -> Option<Value>,
) -> Response {
    lookup_with(sim, headers, |st| {
        let (limit, offset) = paging(query.as_deref())?;
        let batch = st.batch(batch_id).ok_or_else(|| not_found("batchId"))?;
        let mut available = 0usize;
        let mut page = Vec::new();
        for item in batch.items.iter().filter(|r| wanted(&r.state)) {
            if available >= offset && page.len() < limit {
                page.extend(record(item));
            }
            available += 1;
        }
        let returned = page.len();
        let mut resp = json_response(StatusCode::OK, Value::Array(page));
        let h = resp.headers_mut();
        h.insert("x-records-available-count", HeaderValue::from(available));
        h.insert("x-records-returned-count", HeaderValue::from(returned));
        Ok(resp)
    })
    .await
}

/// The `limit` (a positive integer, default 50, capped at 1000) and `offset` (default 0)
/// query parameters; others (`fromDateTime`, `toDateTime`) are ignored.
fn paging(query: Option<&str>) -> Result<(usize, usize), Fail> {
    let (mut limit, mut offset) = (DEFAULT_PAGE, 0);
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid("formatError", "limit", "a positive integer"))?
                    .min(MAX_PAGE);
            }
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| invalid("invalidOffset", "offset", "a non-negative integer"))?;
            }
            _ => {}
        }
    }
    Ok((limit, offset))
}

async fn token_stats(State(sim): State<Simulator>) -> Response {
    let st = lock(&sim.inner.gsma);
    json_response(
        StatusCode::OK,
        json!({"issued": st.tokens_issued, "live": st.tokens.len(), "refused": st.auth_refused}),
    )
}

/// Revokes every token issued so far, as a provider rotating its keys would: the next business
/// call with one of them is refused with 401.
async fn revoke_tokens(State(sim): State<Simulator>) -> StatusCode {
    lock(&sim.inner.gsma).tokens.clear();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{
        SimConfig,
        test_support::{serve, start},
    };
    use super::*;
    use tokio::sync::mpsc;

    /// A callback receiver: its URL and the (X-CorrelationID, body) pairs it got.
    async fn receiver() -> (
        String,
        mpsc::UnboundedReceiver<(String, Value)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            "/cb",
            axum::routing::put(
                move |headers: HeaderMap, axum::Json(v): axum::Json<Value>| {
                    let tx = tx.clone();
                    async move {
                        let id = header_str(&headers, "x-correlationid")
                            .unwrap_or_default()
                            .to_owned();
                        let _ = tx.send((id, v));
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        );
        let (base, task) = serve(app).await;
        (format!("{base}/cb"), rx, task)
    }

    async fn get_token(http: &reqwest::Client, base: &str) -> String {
        let r = http
            .post(format!("{base}/v1/oauth/accesstoken"))
            .basic_auth(CONSUMER_KEY, Some(CONSUMER_SECRET))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["token_type"], "Bearer");
        v["access_token"].as_str().expect("token").to_owned()
    }

    fn body(reference: &str, msisdn: &str) -> Value {
        json!({"amount": "12.5", "currency": "KES",
               "creditParty": [{"key": "msisdn", "value": msisdn}],
               "debitParty": [{"key": "accountid", "value": "2999"}],
               "requestingOrganisationTransactionReference": reference,
               "descriptionText": "G2P"})
    }

    async fn post(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        correlation_id: &str,
        callback: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let path = "/transactions/type/disbursement";
        post_at(http, base, path, token, correlation_id, callback, body).await
    }

    async fn post_at(
        http: &reqwest::Client,
        base: &str,
        path: &str,
        token: &str,
        correlation_id: &str,
        callback: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut req = http
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("X-API-Key", API_KEY)
            .header("X-CorrelationID", correlation_id)
            .json(body);
        if let Some(cb) = callback {
            req = req.header("X-Callback-URL", cb);
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> (u16, Value) {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("callback in time")
            .expect("callback")
    }

    fn new_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// A batch item: a disbursement request naming its type.
    fn item(reference: &str, msisdn: &str) -> Value {
        let mut v = body(reference, msisdn);
        v["type"] = json!("disbursement");
        v
    }

    async fn post_batch(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        correlation_id: &str,
        callback: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        post_at(
            http,
            base,
            "/batchtransactions",
            token,
            correlation_id,
            callback,
            body,
        )
        .await
    }

    /// A GET of a paginated list: status, body, X-Records-Available-Count and
    /// X-Records-Returned-Count.
    async fn get_page(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        path: &str,
    ) -> (u16, Value, Option<usize>, Option<usize>) {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .expect("get");
        let count =
            |name: &str| header_str(r.headers(), name).and_then(|v| v.parse::<usize>().ok());
        let (available, returned) = (
            count("x-records-available-count"),
            count("x-records-returned-count"),
        );
        (
            r.status().as_u16(),
            r.json().await.expect("json"),
            available,
            returned,
        )
    }

    /// The `requestingOrganisationTransactionReference`s of a list of records.
    fn references(records: &Value) -> Vec<&str> {
        records
            .as_array()
            .expect("array")
            .iter()
            .map(|r| {
                r["requestingOrganisationTransactionReference"]
                    .as_str()
                    .unwrap_or("-")
            })
            .collect()
    }

    #[tokio::test]
    async fn batch_items_complete_or_are_rejected_as_single_requests_would_end() {
        let (sim, http) = start(SimConfig {
            callback_delay_ms: 300,
            ..SimConfig::default()
        })
        .await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let cases = [
            ("b-ok1", "+256700000001", None),
            ("b-451", "46733123451", Some("requestDeclined")),
            ("b-452", "46733123452", Some("requestDeclined")),
            ("b-455", "46733123455", Some("identifierError")),
            ("b-475", "+46733123475", Some("identifierError")),
            ("b-456", "46733123456", Some("maxBalanceExceeded")),
            ("b-457", "46733123457", Some("dailyValueLimitExceeded")),
            ("b-460", "46733123460", Some("currencyNotSupported")),
            ("b-450", "46733123450", Some("genericError")),
            ("b-476", "46733123476", Some("insufficientFunds")),
            ("b-454", "46733123454", None),
            ("b-474", "46733123474", None),
            ("b-461", "46733123461", None),
            ("b-ok2", "256700000002", None),
        ];
        let mut items: Vec<Value> = cases.iter().map(|(r, m, _)| item(r, m)).collect();
        let mut unreferenced = item("", "256700000003");
        if let Some(o) = unreferenced.as_object_mut() {
            o.remove("requestingOrganisationTransactionReference");
        }
        items.push(unreferenced);
        let batch = json!({"batchTitle": "June", "batchDescription": "G2P June",
                           "transactions": items});
        let id = new_id();
        let (code, state) = post_batch(&http, &base, &token, &id, Some(&cb), &batch).await;
        assert_eq!((code, state["status"].as_str()), (202, Some("pending")));
        assert_eq!(state["notificationMethod"], "callback");
        let batch_id = state["objectReference"]
            .as_str()
            .expect("batch id")
            .to_owned();
        let server_id = state["serverCorrelationId"]
            .as_str()
            .expect("id")
            .to_owned();

        // The batch exists at once; it is completed once every item is decided.
        let (code, s) = get(&http, &base, &token, &format!("/requeststates/{server_id}")).await;
        assert_eq!((code, s["status"].as_str()), (200, Some("completed")));
        assert_eq!(s["objectReference"], batch_id.as_str());
        let (code, b) = get(
            &http,
            &base,
            &token,
            &format!("/batchtransactions/{batch_id}"),
        )
        .await;
        assert_eq!((code, b["batchStatus"].as_str()), (200, Some("created")));
        assert_eq!(b["processingFlag"], true);
        assert_eq!(b["parsingSuccessCount"], 15);
        assert!(b.get("completionDate").is_none(), "{b}");

        let (cid, v) = next(&mut rx).await;
        assert_eq!(cid, id);
        assert_eq!(v["batchId"], batch_id.as_str());
        assert_eq!(v["batchStatus"], "completed");
        assert_eq!(v["processingFlag"], false);
        assert_eq!(
            (
                &v["completedCount"],
                &v["rejectionCount"],
                &v["parsingSuccessCount"]
            ),
            (&json!(6), &json!(9), &json!(15))
        );
        assert_eq!(v["batchTitle"], "June");
        assert_eq!(v["batchdescription"], "G2P June");
        for date in ["approvalDate", "completionDate", "creationDate"] {
            assert!(
                v[date].as_str().is_some_and(|d| d.ends_with('Z')),
                "{date}: {v}"
            );
        }
        let (_, b) = get(
            &http,
            &base,
            &token,
            &format!("/batchtransactions/{batch_id}"),
        )
        .await;
        assert_eq!(b["batchStatus"], "completed");
        assert_eq!(b["completionDate"], v["completionDate"]);

        let path = format!("/batchtransactions/{batch_id}");
        let (code, done, available, returned) =
            get_page(&http, &base, &token, &format!("{path}/completions")).await;
        assert_eq!((code, available, returned), (200, Some(6), Some(6)));
        assert_eq!(
            references(&done),
            ["b-ok1", "b-454", "b-474", "b-461", "b-ok2", "-"]
        );
        for c in done.as_array().expect("array") {
            let t = c["transactionReference"].as_str().expect("ref");
            assert_eq!(c["link"], format!("/transactions/{t}"));
            assert!(c["completionDate"].is_string() && c["debitParty"].is_array());
        }
        let first = done[0]["transactionReference"].as_str().expect("ref");
        let (code, t) = get(&http, &base, &token, &format!("/transactions/{first}")).await;
        assert_eq!(
            (code, t["transactionStatus"].as_str()),
            (200, Some("completed"))
        );
        assert_eq!(t["type"], "disbursement");
        assert_eq!(t["requestingOrganisationTransactionReference"], "b-ok1");
        assert_eq!(t["creditParty"], done[0]["creditParty"]);

        let (code, rejected, available, returned) =
            get_page(&http, &base, &token, &format!("{path}/rejections")).await;
        assert_eq!((code, available, returned), (200, Some(9), Some(9)));
        let reasons: HashMap<&str, &str> = rejected
            .as_array()
            .expect("array")
            .iter()
            .map(|r| {
                assert!(r["rejectionDate"].is_string() && r["creditParty"].is_array());
                (
                    r["requestingOrganisationTransactionReference"]
                        .as_str()
                        .expect("ref"),
                    r["rejectionReason"].as_str().expect("reason"),
                )
            })
            .collect();
        for (reference, _, reason) in cases {
            assert_eq!(reasons.get(reference).copied(), reason, "{reference}");
        }

        // Pages: limit and offset, counted in the headers.
        let (_, p, available, returned) =
            get_page(&http, &base, &token, &format!("{path}/completions?limit=4")).await;
        assert_eq!(
            (p.as_array().map(Vec::len), available, returned),
            (Some(4), Some(6), Some(4))
        );
        let (_, p, available, returned) = get_page(
            &http,
            &base,
            &token,
            &format!("{path}/completions?offset=4&limit=4"),
        )
        .await;
        assert_eq!(
            (references(&p), available, returned),
            (vec!["b-ok2", "-"], Some(6), Some(2))
        );
        let (code, p, available, returned) = get_page(
            &http,
            &base,
            &token,
            &format!("{path}/rejections?offset=100"),
        )
        .await;
        assert_eq!(
            (code, p, available, returned),
            (200, json!([]), Some(9), Some(0))
        );
        let (code, p, _, returned) = get_page(
            &http,
            &base,
            &token,
            &format!("{path}/rejections?limit=5000"),
        )
        .await;
        assert_eq!(
            (code, p.as_array().map(Vec::len), returned),
            (200, Some(9), Some(9))
        );
        for (query, code) in [
            ("limit=0", "formatError"),
            ("limit=x", "formatError"),
            ("offset=-1", "invalidOffset"),
        ] {
            let (status, e) =
                get(&http, &base, &token, &format!("{path}/completions?{query}")).await;
            assert_eq!(
                (status, e["errorCode"].as_str()),
                (400, Some(code)),
                "{query}"
            );
        }
        for suffix in ["", "/completions", "/rejections"] {
            let (status, e) = get(
                &http,
                &base,
                &token,
                &format!("/batchtransactions/{}{suffix}", new_id()),
            )
            .await;
            assert_eq!(
                (status, e["errorCategory"].as_str()),
                (404, Some("identification"))
            );
        }

        // The X-CorrelationID again, as a batch or a single request: refused, nothing executed.
        let (code, e) = post_batch(&http, &base, &token, &id, Some(&cb), &batch).await;
        assert_eq!(
            (code, e["errorCode"].as_str()),
            (400, Some("duplicateRequest"))
        );
        let (code, e) = post(
            &http,
            &base,
            &token,
            &id,
            Some(&cb),
            &body("b-ok1", "256700000001"),
        )
        .await;
        assert_eq!(
            (code, e["errorCode"].as_str()),
            (400, Some("duplicateRequest"))
        );
        let (_, l) = get(&http, &base, &token, &format!("/responses/{id}")).await;
        assert_eq!(l["link"], format!("/batchtransactions/{batch_id}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rx.try_recv().is_err(), "one callback only");

        let stats = sim.simulator.stats();
        for (reference, _, reason) in cases {
            let executed = stats.executed.get(reference).copied();
            assert_eq!(executed, reason.is_none().then_some(1), "{reference}");
        }
        assert_eq!(stats.executed.get(&format!("{id}#14")), Some(&1));
        assert_eq!(stats.executed.values().sum::<u64>(), 6);
        assert_eq!(stats.submissions.get("b-ok1"), Some(&3));
        assert_eq!(stats.submissions.get("b-476"), Some(&2));
        assert_eq!(stats.callbacks_sent, 1);
    }

    #[tokio::test]
    async fn invalid_or_unauthorised_batches_are_refused_whole() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let token = get_token(&http, &base).await;
        let good =
            json!({"transactions": [item("v-1", "256700000001"), item("v-2", "256700000002")]});
        type Edit = fn(&mut Value);
        let cases: [(Edit, &str, &str); 8] = [
            (
                |b| b["transactions"][1]["amount"] = json!("12.50"),
                "transactions[1].amount",
                "formatError",
            ),
            (
                |b| {
                    if let Some(o) = b["transactions"][0].as_object_mut() {
                        o.remove("type");
                    }
                },
                "transactions[0].type",
                "mandatoryValueNotSupplied",
            ),
            (
                |b| b["transactions"][1]["type"] = json!("billpay"),
                "transactions[1].type",
                "formatError",
            ),
            (
                |b| {
                    if let Some(o) = b["transactions"][0].as_object_mut() {
                        o.remove("debitParty");
                    }
                },
                "transactions[0].debitParty",
                "mandatoryValueNotSupplied",
            ),
            (
                |b| b["transactions"][1]["creditParty"] = json!([{"key": "msisdn", "value": "12"}]),
                "transactions[1].creditParty",
                "formatError",
            ),
            (
                |b| b["transactions"][1] = json!("x"),
                "transactions[1]",
                "formatError",
            ),
            (
                |b| b["transactions"] = json!([]),
                "transactions",
                "formatError",
            ),
            (|b| b["batchTitle"] = json!(5), "batchTitle", "lengthError"),
        ];
        // One X-CorrelationID throughout: a refused batch is not stored, so it stays unused.
        let id = new_id();
        for (edit, key, code) in cases {
            let mut bad = good.clone();
            edit(&mut bad);
            let (status, e) = post_batch(&http, &base, &token, &id, None, &bad).await;
            assert_eq!(status, 400, "{key}: {e}");
            assert_eq!(e["errorCategory"], "validation", "{key}");
            assert_eq!(e["errorCode"], code, "{key}");
            assert_eq!(e["errorParameters"][0]["key"], key, "{e}");
        }
        let r = http
            .post(format!("{base}/batchtransactions"))
            .bearer_auth(&token)
            .header("X-API-Key", API_KEY)
            .header("X-CorrelationID", &id)
            .body("nope")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400);
        // Credentials are required: a token and the X-API-Key.
        let r = http
            .post(format!("{base}/batchtransactions"))
            .header("X-API-Key", API_KEY)
            .header("X-CorrelationID", &id)
            .json(&good)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        let r = http
            .post(format!("{base}/batchtransactions"))
            .bearer_auth(&token)
            .header("X-CorrelationID", &id)
            .json(&good)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        let stats = sim.simulator.stats();
        assert!(stats.submissions.is_empty() && stats.executed.is_empty());

        let (code, state) = post_batch(&http, &base, &token, &id, None, &good).await;
        assert_eq!(
            (code, state["notificationMethod"].as_str()),
            (202, Some("polling"))
        );
        let batch_id = state["objectReference"].as_str().expect("batch id");
        for suffix in ["", "/completions", "/rejections"] {
            let r = http
                .get(format!("{base}/batchtransactions/{batch_id}{suffix}"))
                .header("X-API-Key", API_KEY)
                .send()
                .await
                .expect("get");
            assert_eq!(r.status(), 401, "{suffix}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, b) = get(
            &http,
            &base,
            &token,
            &format!("/batchtransactions/{batch_id}"),
        )
        .await;
        assert_eq!(b["batchStatus"], "completed");
        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("v-1"), Some(&1));
        assert_eq!(stats.executed.get("v-2"), Some(&1));
        assert_eq!(stats.callbacks_sent, 0);
    }

    #[tokio::test]
    async fn an_item_pending_forever_keeps_the_batch_from_completing() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let batch =
            json!({"transactions": [item("p-ok", "256700000001"), item("p-453", "46733123453")]});
        let (code, state) = post_batch(&http, &base, &token, &new_id(), Some(&cb), &batch).await;
        assert_eq!(code, 202);
        let path = format!(
            "/batchtransactions/{}",
            state["objectReference"].as_str().expect("batch id")
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (_, b) = get(&http, &base, &token, &path).await;
        assert_eq!(b["batchStatus"], "created");
        assert_eq!(b["processingFlag"], true);
        assert_eq!(
            (&b["completedCount"], &b["rejectionCount"]),
            (&json!(1), &json!(0))
        );
        assert!(b.get("completionDate").is_none());
        let (_, done, _, _) = get_page(&http, &base, &token, &format!("{path}/completions")).await;
        assert_eq!(references(&done), ["p-ok"]);
        let (_, rejected, _, _) =
            get_page(&http, &base, &token, &format!("{path}/rejections")).await;
        assert_eq!(rejected, json!([]));
        assert!(
            rx.try_recv().is_err(),
            "no callback for an incomplete batch"
        );
        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("p-ok"), Some(&1));
        assert_eq!(stats.executed.get("p-453"), None);
    }

    #[tokio::test]
    async fn batch_callback_lost_duplicated_early_or_answer_late() {
        let (sim, http) = start(SimConfig {
            hang_ms: 600,
            ..SimConfig::default()
        })
        .await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let batch = |suffix: &str| {
            json!({"transactions": [item(&format!("c-{suffix}"), &format!("46733123{suffix}")),
                                    item(&format!("c-ok-{suffix}"), "256700000001")]})
        };

        // 471: processed, but the callback is lost.
        let (code, state) =
            post_batch(&http, &base, &token, &new_id(), Some(&cb), &batch("471")).await;
        assert_eq!(code, 202);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = format!(
            "/batchtransactions/{}",
            state["objectReference"].as_str().expect("id")
        );
        let (_, b) = get(&http, &base, &token, &path).await;
        assert_eq!(b["batchStatus"], "completed");
        assert!(rx.try_recv().is_err(), "471: no callback");
        assert_eq!(sim.simulator.stats().callbacks_lost, 1);

        // 472: the same callback twice.
        let id = new_id();
        let (code, _) = post_batch(&http, &base, &token, &id, Some(&cb), &batch("472")).await;
        assert_eq!(code, 202);
        let (first, second) = (next(&mut rx).await, next(&mut rx).await);
        assert_eq!(first, second);
        assert_eq!(
            (first.0.as_str(), first.1["batchStatus"].as_str()),
            (id.as_str(), Some("completed"))
        );

        // 473: the callback arrives before the 202.
        let id = new_id();
        let (code, state) = post_batch(&http, &base, &token, &id, Some(&cb), &batch("473")).await;
        assert_eq!((code, state["status"].as_str()), (202, Some("completed")));
        let (cid, v) = rx.try_recv().expect("callback before the answer");
        assert_eq!((cid, &v["batchId"]), (id, &state["objectReference"]));

        // 470: processed at once, answered after hang_ms, no callback; /responses finds it.
        let id = new_id();
        let req = {
            let (http, base, token, id, cb) = (
                http.clone(),
                base.clone(),
                token.clone(),
                id.clone(),
                cb.clone(),
            );
            tokio::spawn(async move {
                post_batch(&http, &base, &token, &id, Some(&cb), &batch("470")).await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!req.is_finished());
        let (code, l) = get(&http, &base, &token, &format!("/responses/{id}")).await;
        assert_eq!(code, 200);
        let link = l["link"].as_str().expect("link").to_owned();
        let (_, b) = get(&http, &base, &token, &link).await;
        assert_eq!(b["batchStatus"], "completed");
        assert_eq!(sim.simulator.stats().executed.get("c-470"), Some(&1));
        let (code, state) = req.await.expect("join");
        assert_eq!((code, state["status"].as_str()), (202, Some("completed")));
        assert_eq!(
            link,
            format!(
                "/batchtransactions/{}",
                state["objectReference"].as_str().expect("id")
            )
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "470: no callback");

        let stats = sim.simulator.stats();
        assert_eq!((stats.callbacks_sent, stats.callbacks_lost), (3, 1));
        for s in ["471", "472", "473", "470"] {
            assert_eq!(stats.executed.get(&format!("c-{s}")), Some(&1), "{s}");
            assert_eq!(stats.executed.get(&format!("c-ok-{s}")), Some(&1), "{s}");
        }
    }

    #[test]
    fn amounts_follow_the_disbursement_spec_pattern() {
        for ok in ["0", "1", "12.5", "200", "0.0001", "999999999999999999.9999"] {
            assert!(spec_amount(ok), "{ok}");
        }
        for bad in [
            "200.00", "5.", ".5", "00.5", "01", "1.23456", "-1", "1e3", "",
        ] {
            assert!(!spec_amount(bad), "{bad}");
        }
        assert!(valid_msisdn("+46733123450") && valid_msisdn("256700000001"));
        assert!(!valid_msisdn("+12345") && !valid_msisdn("2567-00"));
    }

    #[tokio::test]
    async fn success_callback_lookups_and_duplicate_correlation_id() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;
        let id = new_id();
        let b = body("pay-1", "+256700000001");
        let (code, state) = post(&http, &base, &token, &id, Some(&cb), &b).await;
        assert_eq!(code, 202);
        assert_eq!(state["status"], "pending");
        assert_eq!(state["notificationMethod"], "callback");
        let server_id = state["serverCorrelationId"]
            .as_str()
            .expect("id")
            .to_owned();
        let (cid, v) = next(&mut rx).await;
        assert_eq!(cid, id);
        assert_eq!(v["transactionStatus"], "completed");
        assert_eq!(v["amount"], "12.5");
        assert_eq!(v["requestingOrganisationTransactionReference"], "pay-1");
        let reference = v["transactionReference"].as_str().expect("ref").to_owned();
        assert_eq!(sim.simulator.stats().executed.get("pay-1"), Some(&1));

        // The same X-CorrelationID again: refused, not executed again.
        let (code, e) = post(&http, &base, &token, &id, Some(&cb), &b).await;
        assert_eq!(
            (code, e["errorCode"].as_str()),
            (400, Some("duplicateRequest"))
        );
        assert_eq!(e["errorCategory"], "businessRule");

        let (code, s) = get(&http, &base, &token, &format!("/requeststates/{server_id}")).await;
        assert_eq!((code, s["status"].as_str()), (200, Some("completed")));
        assert_eq!(s["objectReference"], reference.as_str());
        let (code, l) = get(&http, &base, &token, &format!("/responses/{id}")).await;
        assert_eq!(code, 200);
        assert_eq!(l["link"], format!("/transactions/{reference}"));
        let (code, t) = get(&http, &base, &token, &format!("/transactions/{reference}")).await;
        assert_eq!(
            (code, t["transactionStatus"].as_str()),
            (200, Some("completed"))
        );
        let (code, e) = get(&http, &base, &token, &format!("/responses/{}", new_id())).await;
        assert_eq!(
            (code, e["errorCategory"].as_str()),
            (404, Some("identification"))
        );

        let stats = sim.simulator.stats();
        assert_eq!(stats.executed.get("pay-1"), Some(&1));
        assert_eq!(stats.submissions.get("pay-1"), Some(&2));
        assert_eq!(stats.callbacks_sent, 1);
        assert_eq!(stats.status_queries, 4);
    }

    #[tokio::test]
    async fn credentials_headers_and_amounts_are_checked() {
        let (sim, http) = start(SimConfig {
            token_ttl_s: 0,
            ..SimConfig::default()
        })
        .await;
        let base = sim.base_url();
        let r = http
            .post(format!("{base}/v1/oauth/accesstoken"))
            .basic_auth(CONSUMER_KEY, Some("wrong"))
            .body("grant_type=client_credentials")
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 401);
        // A token past its lifetime is refused.
        let expired = get_token(&http, &base).await;
        let b = body("e", "46733123000");
        let (code, e) = post(&http, &base, &expired, &new_id(), None, &b).await;
        assert_eq!(
            (code, e["errorCode"].as_str()),
            (401, Some("clientAuthorisationError"))
        );

        sim.simulator.set_config(SimConfig::default());
        let token = get_token(&http, &base).await;
        // X-API-Key is required besides the token.
        let r = http
            .post(format!("{base}/transactions/type/disbursement"))
            .bearer_auth(&token)
            .header("X-CorrelationID", new_id())
            .json(&b)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        // Revoked tokens are refused too.
        let r = http
            .post(format!("{base}/_sim/gsma/tokens/revoke"))
            .send()
            .await
            .expect("revoke");
        assert_eq!(r.status(), 204);
        let (code, _) = post(&http, &base, &token, &new_id(), None, &b).await;
        assert_eq!(code, 401);
        let token = get_token(&http, &base).await;

        let r = http
            .post(format!("{base}/transactions/type/disbursement"))
            .bearer_auth(&token)
            .header("X-API-Key", API_KEY)
            .json(&b)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.expect("json");
        assert_eq!(e["errorCode"], "mandatoryValueNotSupplied");
        assert_eq!(e["errorParameters"][0]["key"], "X-CorrelationID");
        let (code, e) = post(&http, &base, &token, "not-a-uuid", None, &b).await;
        assert_eq!((code, e["errorCode"].as_str()), (400, Some("formatError")));
        for amount in [json!("12.50"), json!(12.5), json!("0")] {
            let mut bad = b.clone();
            bad["amount"] = amount;
            let (code, e) = post(&http, &base, &token, &new_id(), None, &bad).await;
            assert_eq!(
                (code, e["errorParameters"][0]["key"].as_str()),
                (400, Some("amount"))
            );
        }
        let tokens: Value = http
            .get(format!("{base}/_sim/gsma/tokens"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        assert_eq!(tokens["issued"], 3);
        assert_eq!(tokens["refused"], 3);
        let stats = sim.simulator.stats();
        assert!(stats.submissions.is_empty() && stats.executed.is_empty());
    }

    #[tokio::test]
    async fn triggers_refuse_fail_later_or_stay_pending() {
        let (sim, http) = start(SimConfig::default()).await;
        let base = sim.base_url();
        let (cb, mut rx, _rt) = receiver().await;
        let token = get_token(&http, &base).await;

        let (code, e) = post(
            &http,
            &base,
            &token,
            &new_id(),
            Some(&cb),
            &body("x475", "+46733123475"),
        )
        .await;
        assert_eq!(
            (code, e["errorCode"].as_str()),
            (404, Some("identifierError"))
        );
        let (code, e) = post(
            &http,
            &base,
            &token,
            &new_id(),
            Some(&cb),
            &body("x450", "46733123450"),
        )
        .await;
        assert_eq!((code, e["errorCategory"].as_str()), (500, Some("internal")));

        let (code, _) = post(
            &http,
            &base,
            &token,
            &new_id(),
            Some(&cb),
            &body("x476", "46733123476"),
        )
        .await;
        assert_eq!(code, 202);
        let (_, v) = next(&mut rx).await;
        assert_eq!(v["errorCode"], "insufficientFunds");
        assert_eq!(v["errorCategory"], "businessRule");

        // Pending forever, polled without a callback URL.
        let pending = new_id();
        let (code, state) = post(
            &http,
            &base,
            &token,
            &pending,
            None,
            &body("x453", "46733123453"),
        )
        .await;
        assert_eq!(
            (code, state["notificationMethod"].as_str()),
            (202, Some("polling"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, l) = get(&http, &base, &token, &format!("/responses/{pending}")).await;
        let link = l["link"].as_str().expect("link");
        assert_eq!(
            link,
            format!(
                "/requeststates/{}",
                state["serverCorrelationId"].as_str().expect("id")
            )
        );
        let (_, s) = get(&http, &base, &token, link).await;
        assert_eq!(s["status"], "pending");

        // 474: throttled once per X-CorrelationID, then accepted.
        let id = new_id();
        let b = body("x474", "46733123474");
        let (code, e) = post(&http, &base, &token, &id, None, &b).await;
        assert_eq!(
            (code, e["errorCode"].as_str()),
            (400, Some("rateLimitError"))
        );
        let (code, _) = post(&http, &base, &token, &id, None, &b).await;
        assert_eq!(code, 202);

        // 461: executed, yet answered 500 and no callback; /responses finds it.
        let id = new_id();
        let (code, _) = post(
            &http,
            &base,
            &token,
            &id,
            Some(&cb),
            &body("x461", "46733123461"),
        )
        .await;
        assert_eq!(code, 500);
        let (_, l) = get(&http, &base, &token, &format!("/responses/{id}")).await;
        assert!(
            l["link"]
                .as_str()
                .is_some_and(|l| l.starts_with("/transactions/")),
            "{l}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "no callback after a 500");

        let stats = sim.simulator.stats();
        for r in ["x475", "x450", "x476", "x453"] {
            assert_eq!(stats.executed.get(r), None, "{r}");
        }
        assert_eq!(stats.executed.get("x474"), Some(&1));
        assert_eq!(stats.executed.get("x461"), Some(&1));
        assert_eq!(stats.submissions.get("x474"), Some(&2));
    }

    #[tokio::test]
    async fn timeout_executes_before_the_late_answer() {
        let (sim, http) = start(SimConfig {
            hang_ms: 600,
            ..SimConfig::default()
        })
        .await;
        let base = sim.base_url();
        let token = get_token(&http, &base).await;
        let id = new_id();
        let req = {
            let (http, base, token, id) = (http.clone(), base.clone(), token.clone(), id.clone());
            tokio::spawn(async move {
                post(
                    &http,
                    &base,
                    &token,
                    &id,
                    None,
                    &body("x470", "46733123470"),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!req.is_finished());
        let (code, l) = get(&http, &base, &token, &format!("/responses/{id}")).await;
        assert_eq!(code, 200);
        let (_, t) = get(&http, &base, &token, l["link"].as_str().expect("link")).await;
        assert_eq!(t["transactionStatus"], "completed");
        assert_eq!(sim.simulator.stats().executed.get("x470"), Some(&1));
        let (code, state) = req.await.expect("join");
        assert_eq!((code, state["status"].as_str()), (202, Some("completed")));
    }
}

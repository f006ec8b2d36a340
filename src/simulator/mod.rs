//! Built-in fake of real DFSP APIs (MTN MoMo Disbursement, the Mojaloop SDK scheme adapter
//! outbound API, GSMA Mobile Money API 1.2 disbursements, Safaricom M-Pesa Daraja B2C, a
//! sponsor bank taking ISO 20022 pain.001 payment files and answering pain.002 reports),
//! served over loopback HTTP for tests, demos and benchmarks.
//!
//! Behaviour is deterministic by payee id (see [`trigger`]) and every submission and real
//! execution is counted per payment reference so tests can prove nothing was paid twice.

mod gsma;
mod iso20022;
mod mojaloop;
mod mpesa;
mod mtn;

pub use mpesa::MpesaTokenStats;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Runtime knobs of the simulator. Missing fields take their default when deserialized.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Added before answering each business request.
    pub latency_ms: u64,
    /// Fraction of submissions answered HTTP 500 without executing.
    pub failure_rate: f64,
    /// Fraction of submissions answered HTTP 429 without executing.
    pub rate_429: f64,
    /// Fraction of submissions executed but answered only after `hang_ms`.
    pub timeout_rate: f64,
    pub hang_ms: u64,
    /// Fraction of callbacks silently not sent.
    pub callback_loss_rate: f64,
    /// Fraction of callbacks sent twice.
    pub callback_dup_rate: f64,
    /// Delay before an asynchronous outcome / callback.
    pub callback_delay_ms: u64,
    /// Seed of the random generator behind the probability knobs.
    pub seed: u64,
    /// Access token lifetime in seconds (MTN, GSMA, M-Pesa).
    pub token_ttl_s: u64,
    pub mtn_api_user: String,
    pub mtn_api_key: String,
    pub mtn_subscription_key: String,
    /// Mojaloop SDK `AUTO_ACCEPT_PARTY`: when false, `POST /transfers` stops at
    /// `WAITING_FOR_PARTY_ACCEPTANCE` until `PUT /transfers/{id}` `{"acceptParty": true}`.
    pub mojaloop_auto_accept_party: bool,
    /// Mojaloop SDK `AUTO_ACCEPT_QUOTES`: when false, the transfer then stops at
    /// `WAITING_FOR_QUOTE_ACCEPTANCE` until `{"acceptQuote": true}`.
    pub mojaloop_auto_accept_quotes: bool,
    pub mpesa_consumer_key: String,
    pub mpesa_consumer_secret: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            failure_rate: 0.0,
            rate_429: 0.0,
            timeout_rate: 0.0,
            hang_ms: 30_000,
            callback_loss_rate: 0.0,
            callback_dup_rate: 0.0,
            callback_delay_ms: 20,
            seed: 42,
            token_ttl_s: 3600,
            mtn_api_user: "pil-sim-user".to_owned(),
            mtn_api_key: "pil-sim-key".to_owned(),
            mtn_subscription_key: "pil-sim-subscription".to_owned(),
            mojaloop_auto_accept_party: true,
            mojaloop_auto_accept_quotes: true,
            mpesa_consumer_key: "pil-sim-consumer-key".to_owned(),
            mpesa_consumer_secret: "pil-sim-consumer-secret".to_owned(),
        }
    }
}

/// Counters, keyed by the payment's own reference (MTN `externalId`, Mojaloop
/// `homeTransactionId`, M-Pesa `Occassion`, ISO 20022 `EndToEndId`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimStats {
    /// Submission requests received (including deduplicated resends, 429s and 500s).
    pub submissions: BTreeMap<String, u64>,
    /// Transfers really made (money moved).
    pub executed: BTreeMap<String, u64>,
    /// All HTTP requests received.
    pub requests: u64,
    pub callbacks_sent: u64,
    pub callbacks_lost: u64,
    pub status_queries: u64,
    /// Access tokens handed out (a client whose token expired fetches another).
    pub tokens_issued: u64,
}

/// The DFSP whose behaviour [`expected_outcome`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dfsp {
    MtnMomo,
    MojaloopSdk,
    MpesaB2c,
    /// The ISO 20022 sponsor bank (pain.001 / pain.002).
    Iso20022Bank,
}

/// What PIL should end with for a payee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Succeeded,
    /// Failed with this DFSP reason code.
    Failed(&'static str),
    /// Never final.
    Pending,
    /// PIL cannot learn the outcome.
    Unknown,
}

/// Deterministic behaviour selected by the payee id suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// 450
    InternalError,
    /// 451
    ApprovalRejected,
    /// 452
    Expired,
    /// 453
    PendingForever,
    /// 454
    SlowSuccess,
    /// 455
    PayerNotFound,
    /// 456
    PayeeNotAllowed,
    /// 457
    NotAllowed,
    /// 460
    InvalidCurrency,
    /// 461
    ProcessingError,
    /// 470
    Timeout,
    /// 471
    CallbackLost,
    /// 472
    CallbackDuplicated,
    /// 473
    CallbackBeforeResponse,
    /// 474
    RateLimitedOnce,
    /// 475
    PayeeNotFound,
    /// 476
    NotEnoughFunds,
}

const TRIGGERS: [(&str, Trigger); 17] = [
    ("450", Trigger::InternalError),
    ("451", Trigger::ApprovalRejected),
    ("452", Trigger::Expired),
    ("453", Trigger::PendingForever),
    ("454", Trigger::SlowSuccess),
    ("455", Trigger::PayerNotFound),
    ("456", Trigger::PayeeNotAllowed),
    ("457", Trigger::NotAllowed),
    ("460", Trigger::InvalidCurrency),
    ("461", Trigger::ProcessingError),
    ("470", Trigger::Timeout),
    ("471", Trigger::CallbackLost),
    ("472", Trigger::CallbackDuplicated),
    ("473", Trigger::CallbackBeforeResponse),
    ("474", Trigger::RateLimitedOnce),
    ("475", Trigger::PayeeNotFound),
    ("476", Trigger::NotEnoughFunds),
];

impl Trigger {
    /// The three-digit payee suffix selecting this trigger.
    pub fn suffix(self) -> &'static str {
        TRIGGERS
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("", |(s, _)| s)
    }

    /// MTN: reason code of the asynchronous FAILED outcome.
    pub fn mtn_failure(self) -> Option<&'static str> {
        match self {
            Self::InternalError | Self::ProcessingError => Some("INTERNAL_PROCESSING_ERROR"),
            Self::ApprovalRejected => Some("APPROVAL_REJECTED"),
            Self::Expired => Some("EXPIRED"),
            Self::PayerNotFound => Some("PAYER_NOT_FOUND"),
            Self::PayeeNotAllowed => Some("PAYEE_NOT_ALLOWED_TO_RECEIVE"),
            Self::PayeeNotFound => Some("PAYEE_NOT_FOUND"),
            Self::NotEnoughFunds => Some("NOT_ENOUGH_FUNDS"),
            _ => None,
        }
    }

    /// MTN: error code of the synchronous HTTP 500 rejection at submission.
    pub fn mtn_rejection(self) -> Option<&'static str> {
        match self {
            Self::NotAllowed => Some("NOT_ALLOWED"),
            Self::InvalidCurrency => Some("INVALID_CURRENCY"),
            _ => None,
        }
    }

    /// Mojaloop: `errorCode` of the HTTP 500 errorTransferResponse.
    pub fn mojaloop_error(self) -> Option<&'static str> {
        match self {
            Self::InternalError | Self::ProcessingError => Some("2001"),
            Self::ApprovalRejected => Some("5104"),
            Self::Expired => Some("3303"),
            Self::PayerNotFound => Some("4000"),
            Self::PayeeNotAllowed => Some("5100"),
            Self::PayeeNotFound => Some("3204"),
            Self::NotEnoughFunds => Some("4001"),
            _ => None,
        }
    }
}

/// The trigger for a payee id: only ids of exactly 11 digits starting with "46733123".
pub fn trigger(payee_id: &str) -> Option<Trigger> {
    if payee_id.len() != 11
        || !payee_id.bytes().all(|b| b.is_ascii_digit())
        || !payee_id.starts_with("46733123")
    {
        return None;
    }
    let suffix = &payee_id[8..];
    TRIGGERS.iter().find(|(s, _)| *s == suffix).map(|(_, t)| *t)
}

/// What PIL should end with for a payee at a DFSP.
pub fn expected_outcome(dfsp: Dfsp, payee_id: &str) -> Expected {
    let Some(t) = trigger(payee_id) else {
        return Expected::Succeeded;
    };
    match dfsp {
        Dfsp::MtnMomo if t == Trigger::PendingForever => Expected::Pending,
        Dfsp::MtnMomo => t
            .mtn_failure()
            .or(t.mtn_rejection())
            .map_or(Expected::Succeeded, Expected::Failed),
        Dfsp::MojaloopSdk if t == Trigger::Timeout => Expected::Unknown,
        Dfsp::MojaloopSdk if t.mtn_rejection().is_some() => Expected::Failed("3100"),
        Dfsp::MojaloopSdk => t
            .mojaloop_error()
            .map_or(Expected::Succeeded, Expected::Failed),
        Dfsp::MpesaB2c => mpesa::expected(t),
        Dfsp::Iso20022Bank => iso20022::expected(t),
    }
}

/// Random misbehaviour drawn for a submission whose payee has no trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chaos {
    None,
    Fail500,
    Throttle429,
    Timeout,
}

struct Inner {
    config: Mutex<SimConfig>,
    rng: Mutex<fastrand::Rng>,
    stats: Mutex<SimStats>,
    /// Bumped on reset so that background tasks of a previous run do nothing.
    generation: AtomicU64,
    mtn: Mutex<mtn::MtnState>,
    mojaloop: Mutex<mojaloop::MojaState>,
    gsma: Mutex<gsma::GsmaState>,
    mpesa: Mutex<mpesa::MpesaState>,
    bank: Mutex<iso20022::BankState>,
    client: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn header_str<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Some(rest)` when `value` starts with `scheme ` (scheme case-insensitive).
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// The request's Bearer token, or "".
fn bearer(headers: &axum::http::HeaderMap) -> &str {
    header_str(headers, axum::http::header::AUTHORIZATION.as_str())
        .and_then(|v| strip_scheme(v, "Bearer"))
        .unwrap_or("")
}

/// OAuth2 client credentials (RFC 6749 §4.4) as the GSMA and bank fakes take them: HTTP Basic
/// `id:secret` and a form body with `grant_type=client_credentials`. `Some(refusal)`
/// (`invalid_client`, `unsupported_grant_type`) when the request is not that.
fn refuse_client_credentials(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    id: &str,
    secret: &str,
) -> Option<Response> {
    use base64::Engine;
    let credentials = header_str(headers, axum::http::header::AUTHORIZATION.as_str())
        .and_then(|v| strip_scheme(v, "Basic"))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok());
    if credentials.as_deref() != Some(format!("{id}:{secret}").as_bytes()) {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client"}),
        ));
    }
    let form = String::from_utf8_lossy(body);
    if !form
        .split('&')
        .any(|kv| kv.trim() == "grant_type=client_credentials")
    {
        return Some(json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type"}),
        ));
    }
    None
}

/// A new Bearer token valid for `ttl_s`, added to `tokens` (expired ones are dropped), and
/// the token answer.
fn issue_bearer(
    tokens: &mut std::collections::HashMap<String, std::time::Instant>,
    ttl_s: u64,
) -> Response {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let now = std::time::Instant::now();
    tokens.retain(|_, exp| *exp > now);
    tokens.insert(token.clone(), now + Duration::from_secs(ttl_s));
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl_s}),
    )
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

/// The simulator: cheap to clone, all clones share state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            inner: Arc::new(Inner {
                rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
                config: Mutex::new(config),
                stats: Mutex::new(SimStats::default()),
                generation: AtomicU64::new(0),
                mtn: Mutex::new(mtn::MtnState::default()),
                mojaloop: Mutex::new(mojaloop::MojaState::default()),
                gsma: Mutex::new(gsma::GsmaState::default()),
                mpesa: Mutex::new(mpesa::MpesaState::default()),
                bank: Mutex::new(iso20022::BankState::default()),
                client,
            }),
        }
    }

    /// All routes (every fake DFSP and `/_sim/*`), state applied.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/_sim/stats", get(get_stats))
            .route("/_sim/config", get(get_config).put(put_config))
            .route("/_sim/reset", post(reset))
            .merge(mtn::routes())
            .merge(mojaloop::routes())
            .merge(gsma::routes())
            .merge(mpesa::routes())
            .merge(iso20022::routes())
            .layer(middleware::from_fn_with_state(self.clone(), count_request))
            .with_state(self.clone())
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        lock(&self.inner.stats).clone()
    }

    /// Replace the configuration; the random generator is reseeded from `config.seed`.
    pub fn set_config(&self, config: SimConfig) {
        *lock(&self.inner.rng) = fastrand::Rng::with_seed(config.seed);
        *lock(&self.inner.config) = config;
    }

    /// Clear counters, transfers, tokens; reseed the random generator.
    pub fn reset(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        *lock(&self.inner.mtn) = mtn::MtnState::default();
        *lock(&self.inner.mojaloop) = mojaloop::MojaState::default();
        *lock(&self.inner.gsma) = gsma::GsmaState::default();
        *lock(&self.inner.mpesa) = mpesa::MpesaState::default();
        *lock(&self.inner.bank) = iso20022::BankState::default();
        *lock(&self.inner.stats) = SimStats::default();
        let seed = self.config().seed;
        *lock(&self.inner.rng) = fastrand::Rng::with_seed(seed);
    }

    fn config(&self) -> SimConfig {
        lock(&self.inner.config).clone()
    }

    /// How many copies of a callback to send: the payee's trigger decides (471 lost, 472 sent
    /// twice), otherwise the loss and duplicate knobs. A lost callback is counted here.
    fn callback_copies(&self, trig: Option<Trigger>) -> usize {
        let copies = match trig {
            Some(Trigger::CallbackLost) => 0,
            Some(Trigger::CallbackDuplicated) => 2,
            Some(_) => 1,
            None => {
                let cfg = self.config();
                if self.roll() < cfg.callback_loss_rate {
                    0
                } else if self.roll() < cfg.callback_dup_rate {
                    2
                } else {
                    1
                }
            }
        };
        if copies == 0 {
            self.with_stats(|s| s.callbacks_lost += 1);
        }
        copies
    }

    fn with_stats(&self, f: impl FnOnce(&mut SimStats)) {
        f(&mut lock(&self.inner.stats));
    }

    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    fn roll(&self) -> f64 {
        lock(&self.inner.rng).f64()
    }

    /// Draw the random misbehaviour for a submission (only for payees without a trigger).
    fn chaos(&self, trig: Option<Trigger>, cfg: &SimConfig) -> Chaos {
        if trig.is_some() {
            return Chaos::None;
        }
        let r = self.roll();
        let mut edge = cfg.failure_rate;
        if r < edge {
            return Chaos::Fail500;
        }
        edge += cfg.rate_429;
        if r < edge {
            return Chaos::Throttle429;
        }
        edge += cfg.timeout_rate;
        if r < edge {
            return Chaos::Timeout;
        }
        Chaos::None
    }

    async fn latency(&self) {
        let ms = lock(&self.inner.config).latency_ms;
        sleep_ms(ms).await;
    }
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn count_request(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    sim.with_stats(|s| s.requests += 1);
    next.run(req).await
}

async fn get_stats(State(sim): State<Simulator>) -> Json<SimStats> {
    Json(sim.stats())
}

async fn get_config(State(sim): State<Simulator>) -> Json<SimConfig> {
    Json(sim.config())
}

async fn put_config(State(sim): State<Simulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<SimConfig>(&body) {
        Ok(cfg) => {
            sim.set_config(cfg);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("invalid config: {e}")}),
        ),
    }
}

async fn reset(State(sim): State<Simulator>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

/// A simulator serving on a socket; the server task is aborted on drop.
pub struct RunningSimulator {
    pub addr: SocketAddr,
    pub simulator: Simulator,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSimulator {
    /// `http://127.0.0.1:PORT` (loopback when bound to an unspecified address).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `addr` (port 0 allowed) and serve the simulator in a tokio task.
pub async fn spawn(config: SimConfig, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let simulator = Simulator::new(config);
    let app = simulator.router();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "simulator server stopped");
        }
    });
    tracing::info!(%addr, "DFSP simulator listening");
    Ok(RunningSimulator {
        addr,
        simulator,
        task,
    })
}

/// What the simulator's own unit tests share.
#[cfg(test)]
mod test_support {
    use super::{RunningSimulator, SimConfig, spawn};

    /// A simulator on a free loopback port and a client that ignores proxies.
    pub(super) async fn start(cfg: SimConfig) -> (RunningSimulator, reqwest::Client) {
        let sim = spawn(cfg, "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("spawn");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        (sim, http)
    }

    /// Serves `app` (a test's callback receiver) on a free loopback port; its base URL and
    /// the server task.
    pub(super) async fn serve(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_parsing() {
        assert_eq!(trigger("46733123451"), Some(Trigger::ApprovalRejected));
        assert_eq!(trigger("46733123476"), Some(Trigger::NotEnoughFunds));
        assert_eq!(trigger("46733123400"), None);
        assert_eq!(trigger("4673312345"), None);
        assert_eq!(trigger("467331234510"), None);
        assert_eq!(trigger("46733124451"), None);
        assert_eq!(trigger("4673312345a"), None);
        for (suffix, t) in TRIGGERS {
            assert_eq!(t.suffix(), suffix);
            assert_eq!(trigger(&format!("46733123{suffix}")), Some(t));
        }
    }

    #[test]
    fn expected_outcome_table() {
        use Dfsp::*;
        use Expected::*;
        assert_eq!(expected_outcome(MtnMomo, "46733123000"), Succeeded);
        assert_eq!(expected_outcome(MtnMomo, "250788000001"), Succeeded);
        assert_eq!(
            expected_outcome(MtnMomo, "46733123450"),
            Failed("INTERNAL_PROCESSING_ERROR")
        );
        assert_eq!(expected_outcome(MtnMomo, "46733123453"), Pending);
        for s in ["454", "470", "471", "472", "473", "474"] {
            assert_eq!(
                expected_outcome(MtnMomo, &format!("46733123{s}")),
                Succeeded
            );
        }
        assert_eq!(
            expected_outcome(MtnMomo, "46733123457"),
            Failed("NOT_ALLOWED")
        );
        assert_eq!(
            expected_outcome(MtnMomo, "46733123460"),
            Failed("INVALID_CURRENCY")
        );
        assert_eq!(
            expected_outcome(MtnMomo, "46733123456"),
            Failed("PAYEE_NOT_ALLOWED_TO_RECEIVE")
        );
        assert_eq!(expected_outcome(MojaloopSdk, "46733123451"), Failed("5104"));
        assert_eq!(expected_outcome(MojaloopSdk, "46733123457"), Failed("3100"));
        assert_eq!(expected_outcome(MojaloopSdk, "46733123460"), Failed("3100"));
        assert_eq!(expected_outcome(MojaloopSdk, "46733123470"), Unknown);
        assert_eq!(expected_outcome(MojaloopSdk, "46733123453"), Succeeded);
        assert_eq!(expected_outcome(MojaloopSdk, "46733123476"), Failed("4001"));
        assert_eq!(expected_outcome(MojaloopSdk, "46733123000"), Succeeded);
    }

    #[tokio::test]
    async fn control_endpoints_and_stats_shape() {
        let sim = spawn(SimConfig::default(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("spawn");
        let base = sim.base_url();
        assert!(base.starts_with("http://127.0.0.1:"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");

        let stats: Value = http
            .get(format!("{base}/_sim/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        let mut keys: Vec<&str> = stats
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "callbacks_lost",
                "callbacks_sent",
                "executed",
                "requests",
                "status_queries",
                "submissions",
                "tokens_issued"
            ]
        );
        assert!(stats["submissions"].is_object() && stats["executed"].is_object());
        assert_eq!(stats["requests"], json!(1));

        let r = http
            .put(format!("{base}/_sim/config"))
            .json(&json!({"latency_ms": 5, "failure_rate": 0.25}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 204);
        let cfg: SimConfig = http
            .get(format!("{base}/_sim/config"))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(cfg.latency_ms, 5);
        assert_eq!(cfg.failure_rate, 0.25);
        assert_eq!(cfg.hang_ms, 30_000);
        assert_eq!(cfg.mtn_api_user, "pil-sim-user");
        let r = http
            .put(format!("{base}/_sim/config"))
            .body("not json")
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 400);

        let r = http
            .post(format!("{base}/_sim/reset"))
            .send()
            .await
            .expect("reset");
        assert_eq!(r.status(), 204);
        assert_eq!(sim.simulator.stats().requests, 0);
    }
}

//! The one generic HTTP executor: sends a request that an adapter script built to its DFSP,
//! with the DFSP's auth (from `adapter.toml`), timeouts, a pooled client and a cap on requests
//! in flight. It classifies failures by what they prove: [`Sent::NotSent`] only when the
//! request surely never reached the DFSP (refused connection, no token), [`Sent::Unknown`]
//! otherwise (timeouts, resets). It never retries a request that may have been received and
//! never logs secrets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Mutex, Semaphore};

use crate::adapter::{AdapterConfig, Auth, TokenMethod};

/// What an adapter script asks to send.
#[derive(Debug, Clone)]
pub struct DfspRequest {
    pub method: reqwest::Method,
    /// A path under the adapter's base URL, or an absolute `http(s)://` URL.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Body>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Body {
    /// JSON text.
    Json(String),
    Text {
        content_type: String,
        text: String,
    },
}

#[derive(Debug, Clone)]
pub struct DfspResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// The outcome of one send, classified by what it proves about execution.
#[derive(Debug, Clone)]
pub enum Sent {
    Response(DfspResponse),
    /// The request surely did not reach the DFSP.
    NotSent(String),
    /// The request may have reached the DFSP; its effect is unknown.
    Unknown(String),
}

impl Sent {
    /// For metrics: the HTTP status class (`2xx`, `4xx`, ...), `not_sent` or `no_response`.
    pub fn outcome_class(&self) -> String {
        match self {
            Sent::Response(r) => format!("{}xx", r.status / 100),
            Sent::NotSent(_) => "not_sent".into(),
            Sent::Unknown(_) => "no_response".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("dfsp {dfsp}: cannot build HTTP client: {message}")]
    Client { dfsp: String, message: String },
}

struct CachedToken {
    value: String,
    expires_at: Instant,
}

/// Consecutive transport failures (no connection, no answer, 5xx, 429) that open the circuit.
const CIRCUIT_THRESHOLD: u32 = 5;
/// How long an open circuit keeps the DFSP out of routing before it is tried again.
const CIRCUIT_COOL_DOWN_MS: i64 = 10_000;

/// A pooled client for one DFSP.
pub struct DfspClient {
    config: AdapterConfig,
    http: reqwest::Client,
    in_flight: Arc<Semaphore>,
    /// Requests marked `sending` that wait for a slot in `in_flight` (see [`DfspClient::stage`]).
    staged: Arc<Semaphore>,
    token: Mutex<Option<CachedToken>>,
    failures: std::sync::atomic::AtomicU32,
    open_until: std::sync::atomic::AtomicI64,
    /// The last [`RECENT`] exchanges (healthy?, milliseconds), for the admin view of a DFSP.
    recent: std::sync::Mutex<std::collections::VecDeque<(bool, i64)>>,
    /// With `rate_per_second`: the earliest time the next request may start.
    next_start: std::sync::Mutex<tokio::time::Instant>,
}

/// Exchanges kept for [`DfspClient::health`].
const RECENT: usize = 200;

/// A DFSP's recent health, from its last exchanges.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Exchanges counted (at most 200).
    pub recent_requests: usize,
    /// Share of them that failed (transport errors, no answer, 429, 5xx), 0 to 1.
    pub recent_error_rate: f64,
    pub latency_p50_ms: i64,
    pub latency_p95_ms: i64,
}

/// Circuit-breaker state, as routing rules see it in `ctx.dfsps.<id>.circuit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    /// Too many consecutive failures: kept out of routing until the cool-down ends.
    Open,
    /// Cool-down over: the next answer closes or reopens it.
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Debug for DfspClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DfspClient")
            .field("dfsp", &self.config.id)
            .finish_non_exhaustive()
    }
}

impl DfspClient {
    pub fn new(config: AdapterConfig) -> Result<DfspClient, ExecutorError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_max_idle_per_host(config.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ExecutorError::Client {
                dfsp: config.id.clone(),
                message: e.to_string(),
            })?;
        Ok(DfspClient {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            staged: Arc::new(Semaphore::new(config.max_staged)),
            config,
            http,
            token: Mutex::new(None),
            failures: std::sync::atomic::AtomicU32::new(0),
            open_until: std::sync::atomic::AtomicI64::new(0),
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(RECENT)),
            next_start: std::sync::Mutex::new(tokio::time::Instant::now()),
        })
    }

    pub fn circuit(&self, now: i64) -> Circuit {
        use std::sync::atomic::Ordering::Relaxed;
        if self.failures.load(Relaxed) < CIRCUIT_THRESHOLD {
            Circuit::Closed
        } else if now < self.open_until.load(Relaxed) {
            Circuit::Open
        } else {
            Circuit::HalfOpen
        }
    }

    /// Whether routing should send to this DFSP now.
    pub fn available(&self, now: i64) -> bool {
        self.circuit(now) != Circuit::Open
    }

    fn record(&self, sent: &Sent, millis: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        let healthy = match sent {
            Sent::Response(r) => r.status < 500 && r.status != 429,
            Sent::NotSent(_) | Sent::Unknown(_) => false,
        };
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back((healthy, millis));
        }
        if healthy {
            self.failures.store(0, Relaxed);
        } else if self.failures.fetch_add(1, Relaxed) + 1 >= CIRCUIT_THRESHOLD {
            self.open_until
                .store(crate::clock::now_ms() + CIRCUIT_COOL_DOWN_MS, Relaxed);
        }
    }

    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    pub fn health(&self) -> Health {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = recent.len();
        let failed = recent.iter().filter(|(ok, _)| !ok).count();
        let mut millis: Vec<i64> = recent.iter().map(|(_, ms)| *ms).collect();
        millis.sort_unstable();
        let at = |q: usize| {
            millis
                .get((n.saturating_sub(1)) * q / 100)
                .copied()
                .unwrap_or(0)
        };
        Health {
            recent_requests: n,
            recent_error_rate: if n == 0 {
                0.0
            } else {
                failed as f64 / n as f64
            },
            latency_p50_ms: at(50),
            latency_p95_ms: at(95),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.config.max_in_flight - self.in_flight.available_permits()
    }

    /// Requests holding a place from [`DfspClient::stage`]: marked or being marked `sending`,
    /// not yet holding a slot.
    pub fn staged(&self) -> usize {
        self.config.max_staged - self.staged.available_permits()
    }

    pub fn url_for(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{}", self.config.base_url, path)
        } else {
            format!("{}/{}", self.config.base_url, path)
        }
    }

    /// Sends one request; with OAuth2, a 401 refreshes the token and retries once (a 401 means
    /// the DFSP refused the request, so resending it cannot execute it twice).
    pub async fn send(&self, req: &DfspRequest) -> Sent {
        let Some(_permit) = self.acquire().await else {
            return Sent::NotSent("executor is shutting down".into());
        };
        self.send_permitted(req).await
    }

    /// A place among the requests about to leave for this DFSP, taken before `sending` is
    /// committed and held until the request has its slot from [`DfspClient::acquire`]. This
    /// lets the next requests' `sending` commit overlap the requests in flight (a slot is then
    /// held for the HTTP exchange only, not for a database commit too), while bounding what a
    /// crash can strand: at most `max_staged` requests per DFSP are marked `sending` and not
    /// yet on the wire, and like the ones in flight they become `unknown` and are looked up,
    /// never resent blindly.
    pub async fn stage(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.staged.clone().acquire_owned().await.ok()
    }

    /// A slot among this DFSP's requests in flight. With `rate_per_second`, it also waits for
    /// the request's turn: starts are spaced evenly.
    pub async fn acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.in_flight.clone().acquire_owned().await.ok()?;
        if let Some(rate) = self.config.rate_per_second {
            let turn = {
                let mut next = self
                    .next_start
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let turn = (*next).max(tokio::time::Instant::now());
                *next = turn + Duration::from_secs(1) / rate.max(1);
                turn
            };
            tokio::time::sleep_until(turn).await;
        }
        Some(permit)
    }

    /// [`DfspClient::send`] for a caller that already holds a slot from [`DfspClient::acquire`].
    pub async fn send_permitted(&self, req: &DfspRequest) -> Sent {
        let started = std::time::Instant::now();
        let (first, token) = self.send_once(req, None).await;
        let sent = match (first, token) {
            (Sent::Response(r), Some(rejected)) if r.status == 401 => {
                self.send_once(req, Some(&rejected)).await.0
            }
            (other, _) => other,
        };
        let millis = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.record(&sent, millis);
        sent
    }

    /// One request. With OAuth2 it also returns the token it presented, so that a 401 renews
    /// that token only (`rejected`): when many requests fail with the same stale token, the
    /// first renews it and the rest reuse the new one. Renewing again for each of them would
    /// churn tokens, and a DFSP that invalidates the previous token on every issue (Daraja)
    /// would then refuse the requests still carrying it.
    async fn send_once(&self, req: &DfspRequest, rejected: Option<&str>) -> (Sent, Option<String>) {
        let (auth, token) = match self.auth_header(rejected).await {
            Ok(a) => a,
            Err(e) => return (Sent::NotSent(e), None),
        };
        (self.send_with(req, auth).await, token)
    }

    async fn send_with(&self, req: &DfspRequest, auth: Option<(HeaderName, HeaderValue)>) -> Sent {
        let mut headers = HeaderMap::new();
        for (name, value) in self
            .config
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose()))
            .chain(req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                _ => return Sent::NotSent(format!("invalid header '{name}'")),
            }
        }
        if let Some((name, value)) = auth {
            headers.insert(name, value);
        }
        let mut builder = self
            .http
            .request(req.method.clone(), self.url_for(&req.path))
            .headers(headers);
        builder = match &req.body {
            Some(Body::Json(text)) => builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(text.clone()),
            Some(Body::Text { content_type, text }) => builder
                .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
                .body(text.clone()),
            None => builder,
        };
        match builder.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| {
                        v.to_str()
                            .ok()
                            .map(|v| (k.as_str().to_ascii_lowercase(), v.to_string()))
                    })
                    .collect();
                match resp.bytes().await {
                    Ok(body) => Sent::Response(DfspResponse {
                        status,
                        headers,
                        body: body.to_vec(),
                    }),
                    Err(e) => Sent::Unknown(format!("reading the response failed: {e}")),
                }
            }
            Err(e) if e.is_connect() => Sent::NotSent(format!("connection failed: {e}")),
            Err(e) if e.is_builder() => Sent::NotSent(format!("invalid request: {e}")),
            Err(e) if e.is_timeout() => {
                Sent::Unknown(format!("no answer within {} ms", self.config.timeout_ms))
            }
            Err(e) => Sent::Unknown(format!("request failed: {e}")),
        }
    }

    /// The auth header to present, and the OAuth2 token in it (if that is the scheme).
    async fn auth_header(
        &self,
        rejected: Option<&str>,
    ) -> Result<(Option<(HeaderName, HeaderValue)>, Option<String>), String> {
        let mut token = None;
        let value = match &self.config.auth {
            Auth::None => return Ok((None, None)),
            Auth::Basic { username, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    username.expose(),
                    password.expose()
                ))
            ),
            Auth::Bearer(token) => format!("Bearer {}", token.expose()),
            Auth::ApiKey { header, key } => {
                let name = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| format!("invalid api key header name '{header}'"))?;
                let value = HeaderValue::from_str(key.expose())
                    .map_err(|_| "api key is not a valid header value".to_string())?;
                return Ok((Some((name, value)), None));
            }
            Auth::OAuth2ClientCredentials { .. } => {
                let t = self.oauth_token(rejected).await?;
                let value = format!("Bearer {t}");
                token = Some(t);
                value
            }
        };
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| "credentials are not a valid header value".to_string())?;
        value.set_sensitive(true);
        Ok((Some((reqwest::header::AUTHORIZATION, value)), token))
    }

    /// The cached token, fetched once for all concurrent senders and refreshed before expiry,
    /// or when the DFSP refused it (`rejected`, if it is still the cached one).
    async fn oauth_token(&self, rejected: Option<&str>) -> Result<String, String> {
        let Auth::OAuth2ClientCredentials {
            token_url,
            token_method,
            client_id,
            client_secret,
            scope,
        } = &self.config.auth
        else {
            return Err("not an oauth2 adapter".into());
        };
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && rejected != Some(t.value.as_str())
            && t.expires_at > Instant::now()
        {
            return Ok(t.value.clone());
        }
        let mut params = String::from("grant_type=client_credentials");
        if let Some(scope) = scope {
            params.push_str("&scope=");
            params.push_str(scope);
        }
        let url = self.url_for(token_url);
        let req = match token_method {
            TokenMethod::Post => self
                .http
                .post(url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(params),
            TokenMethod::Get => {
                let sep = if url.contains('?') { '&' } else { '?' };
                self.http.get(format!("{url}{sep}{params}"))
            }
        };
        let mut req = req.basic_auth(client_id.expose(), Some(client_secret.expose()));
        for (name, value) in &self.config.headers {
            req = req.header(name.as_str(), value.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("token request failed: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("token request refused with HTTP {status}"));
        }
        let json: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("token response is not JSON: {e}"))?;
        let value = json
            .get("access_token")
            .and_then(|v| v.as_str())
            .ok_or("token response has no access_token")?
            .to_string();
        let ttl = json
            .get("expires_in")
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(300)
            .max(0) as u64;
        // Refresh a little early so a token does not expire between check and use.
        let expires_at = Instant::now() + Duration::from_secs(ttl.saturating_sub(ttl / 10 + 1));
        *cached = Some(CachedToken {
            value: value.clone(),
            expires_at,
        });
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> DfspClient {
        let cfg = AdapterConfig::parse("a.toml", "id = \"x\"\nbase_url = \"http://127.0.0.1:9\"\n")
            .expect("config");
        DfspClient::new(cfg).expect("client")
    }

    #[tokio::test]
    async fn starts_are_spaced_by_the_rate_limit() {
        let cfg = AdapterConfig::parse(
            "a.toml",
            "id = \"x\"\nbase_url = \"http://127.0.0.1:9\"\nrate_per_second = 20\n",
        )
        .expect("config");
        let c = DfspClient::new(cfg).expect("client");
        let t0 = tokio::time::Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            let slot = c.acquire().await.expect("slot");
            starts.push(tokio::time::Instant::now() - t0);
            drop(slot);
        }
        // The i-th start is never sooner than i/20 s (a timer may fire late, never early).
        for (i, at) in starts.iter().enumerate() {
            assert!(*at >= Duration::from_millis(50) * i as u32, "{starts:?}");
        }
        assert!(
            AdapterConfig::parse(
                "a.toml",
                "id = \"x\"\nbase_url = \"http://127.0.0.1:9\"\nrate_per_second = 0\n"
            )
            .is_err()
        );
    }

    fn answer(status: u16) -> Sent {
        Sent::Response(DfspResponse {
            status,
            headers: BTreeMap::new(),
            body: Vec::new(),
        })
    }

    /// A token server (GET with the grant in the query string, like Daraja) that accepts only
    /// the latest token it issued, and the client pointed at it.
    async fn oauth_server() -> (DfspClient, Arc<std::sync::Mutex<(u32, Option<String>)>>) {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        type Shared = Arc<std::sync::Mutex<(u32, Option<String>)>>;
        let state: Shared = Arc::default();
        let app = axum::Router::new()
            .route(
                "/oauth/v1/generate",
                get(
                    |State(st): State<Shared>,
                     Query(q): Query<BTreeMap<String, String>>,
                     headers: HeaderMap| async move {
                        let basic = headers.get("authorization").and_then(|v| v.to_str().ok());
                        if q.get("grant_type").map(String::as_str) != Some("client_credentials")
                            || basic != Some("Basic aWQ6c2VjcmV0")
                        {
                            return (StatusCode::BAD_REQUEST, String::new());
                        }
                        let mut st = st.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        st.0 += 1;
                        let token = format!("tok-{}", st.0);
                        st.1 = Some(token.clone());
                        (
                            StatusCode::OK,
                            format!(r#"{{"access_token":"{token}","expires_in":"3599"}}"#),
                        )
                    },
                ),
            )
            .route(
                "/pay",
                post(|State(st): State<Shared>, headers: HeaderMap| async move {
                    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
                    let st = st.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let valid = st.1.as_ref().map(|t| format!("Bearer {t}"));
                    if given.is_some() && given == valid.as_deref() {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let cfg = AdapterConfig::parse(
            "a.toml",
            &format!(
                "id = \"x\"\nbase_url = \"http://{addr}\"\n[auth]\ntype = \"oauth2_client_credentials\"\n\
                 token_url = \"/oauth/v1/generate\"\ntoken_method = \"GET\"\nclient_id = \"id\"\nclient_secret = \"secret\"\n"
            ),
        )
        .expect("config");
        (DfspClient::new(cfg).expect("client"), state)
    }

    #[tokio::test]
    async fn a_refused_token_is_renewed_once_for_all_requests_refused_with_it() {
        let (client, state) = oauth_server().await;
        let pay = DfspRequest {
            method: reqwest::Method::POST,
            path: "/pay".into(),
            headers: Vec::new(),
            body: None,
            idempotency_key: None,
        };
        let status = |sent: Sent| match sent {
            Sent::Response(r) => r.status,
            other => panic!("no answer: {other:?}"),
        };
        assert_eq!(status(client.send(&pay).await), 200);
        assert_eq!(status(client.send(&pay).await), 200);
        assert_eq!(state.lock().expect("lock").0, 1, "the token is cached");
        // The DFSP stops accepting it (another client took a token, say): every request
        // refused with it retries once, and only one new token is fetched for all of them.
        state.lock().expect("lock").1 = None;
        let sends = (0..8).map(|_| client.send(&pay));
        for sent in futures::future::join_all(sends).await {
            assert_eq!(status(sent), 200);
        }
        assert_eq!(state.lock().expect("lock").0, 2);
    }

    #[test]
    fn circuit_opens_after_consecutive_failures_and_half_opens_after_cool_down() {
        let c = client();
        let now = crate::clock::now_ms();
        for _ in 0..CIRCUIT_THRESHOLD - 1 {
            c.record(&Sent::NotSent("refused".into()), 10);
        }
        assert_eq!(c.circuit(now), Circuit::Closed);
        // A 4xx answer proves the DFSP is reachable: the count starts again.
        c.record(&answer(400), 10);
        for _ in 0..CIRCUIT_THRESHOLD - 1 {
            c.record(&answer(503), 10);
        }
        assert!(c.available(now));
        c.record(&Sent::Unknown("timeout".into()), 10);
        assert_eq!(c.circuit(crate::clock::now_ms()), Circuit::Open);
        assert!(!c.available(crate::clock::now_ms()));
        let later = crate::clock::now_ms() + CIRCUIT_COOL_DOWN_MS + 1;
        assert_eq!(c.circuit(later), Circuit::HalfOpen);
        c.record(&answer(202), 30);
        assert_eq!(c.circuit(later), Circuit::Closed);
        // The admin view: 9 of the 11 exchanges failed (429 and 5xx count, 4xx does not).
        let h = c.health();
        assert_eq!(h.recent_requests, 2 * CIRCUIT_THRESHOLD as usize + 1);
        assert_eq!(h.latency_p50_ms, 10);
        assert_eq!(h.latency_p95_ms, 10);
        let failed = 2 * (CIRCUIT_THRESHOLD as usize - 1) + 1;
        assert!((h.recent_error_rate - failed as f64 / h.recent_requests as f64).abs() < 1e-9);
    }
}

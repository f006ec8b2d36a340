use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};

use pil::config::Settings;
use pil::simulator::{self, RunningSimulator, SimConfig};
use pil::startup::Application;
use serde_json::{Value, json};

pub struct TestApp {
    pub app: Application,
    pub url: String,
    pub sim: RunningSimulator,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Copies the shipped scripts into `dir`, pointing the adapters at `sim_url` with short
/// polling and timeouts so tests run fast.
pub fn install_scripts(dir: &Path, sim_url: &str) {
    copy_dir(&repo().join("rules"), &dir.join("rules"));
    copy_dir(&repo().join("adapters"), &dir.join("adapters"));
    for entry in std::fs::read_dir(dir.join("adapters")).expect("adapters folder") {
        let path = entry.expect("adapter folder").path().join("adapter.toml");
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read toml");
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("base_url") {
                    format!("base_url = \"{sim_url}\"")
                } else if l.starts_with("first_after_ms") {
                    "first_after_ms = 300".into()
                } else if l.starts_with("every_ms") {
                    "every_ms = 300".into()
                } else if l.starts_with("timeout_ms") {
                    "timeout_ms = 1500".into()
                } else if l.starts_with("backoff_ms") {
                    "backoff_ms = 100".into()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, text).expect("write toml");
    }
}

pub fn test_settings(dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite:{}", dir.join("pil.db").display()),
        rules_dir: dir.join("rules"),
        adapters_dir: dir.join("adapters"),
        signing_key_file: dir.join("signing-key.pem"),
        notify_interval_ms: 50,
        callback_backoff_ms: 100,
        idle_ms: 20,
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(SimConfig::default(), |_, _| {}).await
}

pub async fn spawn_with(sim: SimConfig, tweak: impl FnOnce(&mut Settings, &Path)) -> TestApp {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let sim = simulator::spawn(
        SimConfig {
            hang_ms: 3_000,
            ..sim
        },
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    install_scripts(dir.path(), &sim.base_url());
    let mut settings = test_settings(dir.path());
    tweak(&mut settings, dir.path());
    let app = Application::build(settings).await.expect("app");
    TestApp {
        url: app.url(),
        app,
        sim,
        http: reqwest::Client::new(),
        dir,
    }
}

pub fn payment(reference: &str, fa: &str, amount: &str) -> Value {
    json!({"reference_id": reference, "payee_fa": fa, "amount": amount, "currency": "KES"})
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Submits a batch and returns PIL's batch id.
    pub async fn submit(&self, batch_id: &str, payments: Vec<Value>) -> String {
        let (status, body) = self
            .post(
                "/api/v1/batches",
                &json!({"batch_id": batch_id, "payments": payments}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().expect("id").to_string()
    }

    /// All payments of a batch, keyed by reference id.
    pub async fn payments(&self, batch: &str) -> std::collections::BTreeMap<String, Value> {
        let mut out = std::collections::BTreeMap::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(&format!(
                    "/api/v1/batches/{batch}/payments?limit=500{cursor}"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            for p in page["payments"].as_array().expect("payments") {
                out.insert(
                    p["reference_id"].as_str().expect("ref").to_string(),
                    p.clone(),
                );
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => return out,
            }
        }
    }

    /// Waits until `done` holds for every payment of the batch.
    pub async fn wait_until(
        &self,
        batch: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> std::collections::BTreeMap<String, Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.payments(batch).await;
            if all.values().all(&done) {
                return all;
            }
            if Instant::now() > deadline {
                let stuck: Vec<_> = all
                    .iter()
                    .filter(|(_, p)| !done(p))
                    .map(|(r, p)| format!("{r}={}", p["status"]))
                    .collect();
                panic!("timed out; not done: {stuck:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_final(&self, batch: &str) -> std::collections::BTreeMap<String, Value> {
        self.wait_until(batch, Duration::from_secs(30), |p| {
            matches!(
                p["status"].as_str(),
                Some("succeeded" | "failed" | "rejected" | "cancelled")
            )
        })
        .await
    }
}

pub fn status(p: &Value) -> &str {
    p["status"].as_str().unwrap_or_default()
}

/// One exchange seen by [`Recorder`].
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    /// The request body, parsed when it is JSON (else null), and as text.
    pub body: Value,
    pub text: String,
    pub status: u16,
    pub response: Value,
    pub response_text: String,
}

/// A recording HTTP proxy between PIL and the simulator (and between the simulator's callbacks
/// and PIL), so that the real traffic can be checked against the spec.
#[derive(Clone, Default)]
pub struct Recorder {
    pub sim: Arc<Mutex<String>>,
    pub pil: Arc<Mutex<String>>,
    pub seen: Arc<Mutex<Vec<Exchange>>>,
}

fn parse_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

async fn forward(
    State(rec): State<Recorder>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or(uri.path().to_string(), |p| p.to_string());
    let target = if path.starts_with("/callbacks/") {
        rec.pil.lock().expect("lock").clone()
    } else {
        rec.sim.lock().expect("lock").clone()
    };
    let mut req = reqwest::Client::new().request(method.clone(), format!("{target}{path}"));
    for (k, v) in &headers {
        if !matches!(k.as_str(), "host" | "content-length" | "connection") {
            req = req.header(k, v);
        }
    }
    let Ok(resp) = req.body(body.clone()).send().await else {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    };
    let status = resp.status();
    let content_type = resp.headers().get("content-type").cloned();
    let answer = resp.bytes().await.unwrap_or_default();
    rec.seen.lock().expect("lock").push(Exchange {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: parse_json(&body),
        text: String::from_utf8_lossy(&body).to_string(),
        status: status.as_u16(),
        response: parse_json(&answer),
        response_text: String::from_utf8_lossy(&answer).to_string(),
    });
    let mut out = (status, answer).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert("content-type", ct);
    }
    out
}

pub async fn recorder() -> (Recorder, String) {
    let rec = Recorder::default();
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(rec.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (rec, url)
}

/// An app whose adapter `adapter` talks to the simulator through a [`Recorder`], and whose
/// callback URLs point at the recorder too. `line` may replace lines of the adapter.toml.
pub async fn recorded_app(
    sim: SimConfig,
    adapter: &str,
    line: impl Fn(&str) -> Option<String> + Send + 'static,
) -> (TestApp, Recorder, String) {
    let (rec, proxy) = recorder().await;
    let app = {
        let (rec, proxy) = (rec.clone(), proxy.clone());
        let adapter = adapter.to_string();
        spawn_with(sim, move |s, dir| {
            let path = dir.join(format!("adapters/{adapter}/adapter.toml"));
            let text = std::fs::read_to_string(&path).expect("read");
            let mut lines = Vec::new();
            for l in text.lines() {
                if let Some(url) = l.strip_prefix("base_url = ") {
                    *rec.sim.lock().expect("lock") = url.trim_matches('"').to_string();
                    lines.push(format!("base_url = \"{proxy}\""));
                } else {
                    lines.push(line(l).unwrap_or_else(|| l.to_string()));
                }
            }
            std::fs::write(&path, lines.join("\n")).expect("write");
            s.public_url = Some(proxy);
        })
        .await
    };
    *rec.pil.lock().expect("lock") = app.url.clone();
    (app, rec, proxy)
}

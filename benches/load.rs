//! End-to-end load against the built-in simulator over loopback, all in one process:
//! the raw HTTP ceiling (the same client settings firing the simulator's `POST /transfers`
//! directly), a 100,000-payment batch accepted and stored, and a synchronous-DFSP batch sent
//! end to end (payments/s, p50/p99 accepted→final, peak RSS). Run: `cargo bench --bench load`.
//! `PIL_BENCH_PAYMENTS` sets the end-to-end batch size (default 20,000), `PIL_BENCH_IN_FLIGHT`
//! the DFSPs' `max_in_flight` (default: the shipped adapter.toml's 32).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use pil::config::Settings;
use pil::payment::Status;
use pil::simulator::{self, SimConfig};
use pil::startup::Application;
use serde_json::{Value, json};

// The allocator of the `pil` binary (src/main.rs), so the figures are those of what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn transfer_body(i: usize) -> Value {
    json!({"homeTransactionId": format!("raw-{i}"), "from": {"idType": "BUSINESS", "idValue": "g2p"},
           "to": {"idType": "MSISDN", "idValue": format!("2567{i:08}")}, "amountType": "SEND",
           "currency": "KES", "amount": "10", "transactionType": "TRANSFER"})
}

fn batch(n: usize, prefix: &str) -> Value {
    let payments: Vec<Value> = (0..n)
        .map(|i| json!({"reference_id": format!("{prefix}-{i}"), "payee_fa": format!("mobile:2567{i:08}@mojaloop"),
                        "amount": "10.00", "currency": "KES"}))
        .collect();
    json!({"batch_id": prefix, "sender_id": "bench", "payments": payments})
}

async fn app(dir: &std::path::Path, sim_url: &str, dispatch: bool) -> Application {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if !dir.join("rules").exists() {
        copy_dir(&root.join("rules"), &dir.join("rules"));
        copy_dir(&root.join("adapters"), &dir.join("adapters"));
        for id in ["mtn-momo", "mojaloop-sdk"] {
            let p = dir.join("adapters").join(id).join("adapter.toml");
            let text = std::fs::read_to_string(&p).expect("read");
            let text: Vec<String> = text
                .lines()
                .map(|l| {
                    if l.starts_with("base_url") {
                        format!("base_url = \"{sim_url}\"")
                    } else if l.starts_with("max_in_flight")
                        && let Some(n) = std::env::var("PIL_BENCH_IN_FLIGHT")
                            .ok()
                            .filter(|n| !n.trim().is_empty())
                    {
                        format!("max_in_flight = {n}")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            std::fs::write(&p, text.join("\n")).expect("write");
        }
    }
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        database_url: format!(
            "sqlite:{}",
            dir.join(if dispatch { "e2e.db" } else { "accept.db" })
                .display()
        ),
        rules_dir: dir.join("rules"),
        adapters_dir: dir.join("adapters"),
        max_body_bytes: 64 * 1024 * 1024,
        dispatch,
        ..Settings::load(None).expect("PIL_* settings")
    };
    Application::build(settings).await.expect("app")
}

fn main() {
    pil::startup::disable_transparent_huge_pages();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let n: usize = std::env::var("PIL_BENCH_PAYMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let sim = simulator::spawn(SimConfig::default(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("sim");
    let dir = tempfile::tempdir().expect("tmp");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .tcp_nodelay(true)
        .build()
        .expect("client");

    // 1. Raw ceiling: one HTTP exchange per transfer, 128 in flight, like the executor.
    let url = format!("{}/transfers", sim.base_url());
    let t = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(128, |i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client
                    .post(&url)
                    .json(&transfer_body(i))
                    .send()
                    .await
                    .expect("raw send");
                assert!(r.status().is_success());
                let _ = r.bytes().await;
            }
        })
        .await;
    let raw = n as f64 / t.elapsed().as_secs_f64();
    println!("raw HTTP ceiling (POST /transfers, 128 in flight): {raw:.0} requests/s");
    sim.simulator.reset();

    // 2. End to end through the synchronous DFSP.
    let e2e = app(dir.path(), &sim.base_url(), true).await;
    let store = e2e.state.store.clone();
    let cpu_before = cpu_seconds();
    let t = Instant::now();
    let r = client
        .post(format!("{}/api/v1/batches", e2e.url()))
        .json(&batch(n, "e2e"))
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 202);
    let batch_id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    loop {
        let totals = store.batch_totals(&batch_id).await.expect("totals");
        let done: i64 = totals
            .iter()
            .filter(|t| t.status.is_final())
            .map(|t| t.count)
            .sum();
        if done as usize >= n {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            panic!("end-to-end batch did not finish: {totals:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let mut latencies = Vec::with_capacity(n);
    let mut cursor: Option<String> = None;
    let mut succeeded = 0;
    let filter = pil::store::PaymentFilter {
        batch_id: Some(batch_id.clone()),
        ..Default::default()
    };
    loop {
        let page = store
            .list_payments(&filter, cursor.as_deref(), 1000)
            .await
            .expect("page");
        for p in &page {
            latencies.push(p.updated_at - p.created_at);
            succeeded += usize::from(p.status == Status::Succeeded);
        }
        match page.last() {
            Some(p) if page.len() == 1000 => cursor = Some(p.id.clone()),
            _ => break,
        }
    }
    latencies.sort_unstable();
    let pct = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    let rate = n as f64 / elapsed;
    let stats = sim.simulator.stats();
    let twice = stats.executed.values().filter(|v| **v > 1).count();
    println!(
        "end to end, synchronous DFSP (mojaloop-sdk): {n} payments in {elapsed:.2} s, {succeeded} succeeded, {twice} paid twice"
    );
    println!(
        "  throughput: {rate:.0} payments/s  ({:.2} of the raw ceiling)",
        rate / raw
    );
    println!(
        "  accepted→final: p50 {} ms, p99 {} ms",
        pct(0.5),
        pct(0.99)
    );
    println!(
        "  CPU: {cpu:.1} s for {elapsed:.1} s ({:.0}% of one core; simulator included), {:.0} µs per payment",
        cpu / elapsed * 100.0,
        cpu / n as f64 * 1e6
    );
    println!(
        "  peak RSS so far: {:.0} MB (PIL, the simulator and the bench client in one process)",
        peak_rss_mb()
    );
    drop(e2e);

    let _ = Arc::new(());
    // 3. Accepting a 100,000-payment batch (validated and stored, nothing sent).
    let accept_app = app(dir.path(), &sim.base_url(), false).await;
    // The body is written as text: building it as a JSON value would inflate this process's
    // memory with the client's copy.
    let mut body = String::with_capacity(12 << 20);
    body.push_str(r#"{"batch_id":"accept","sender_id":"bench","payments":["#);
    for i in 0..100_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"reference_id":"accept-{i}","payee_fa":"mobile:2567{i:08}@mojaloop","amount":"10.00","currency":"KES"}}"#
        ));
    }
    body.push_str("]}");
    let t = Instant::now();
    let r = client
        .post(format!("{}/api/v1/batches", accept_app.url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 202);
    println!(
        "100,000-payment batch accepted (stored) in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    println!("  peak RSS after accepting it: {:.0} MB", peak_rss_mb());
    // Where the time goes: parse, validate, store (a second batch, same store).
    let raw_body = serde_json::to_vec(&batch(100_000, "phases")).expect("json");
    let t = Instant::now();
    let req: Value = serde_json::from_slice(&raw_body).expect("parse");
    let parsed = t.elapsed().as_secs_f64();
    let items: Vec<pil::ingest::Item> = req["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| pil::ingest::Item {
            reference_id: p.get("reference_id").cloned(),
            payee_fa: p.get("payee_fa").cloned(),
            amount: p.get("amount").cloned(),
            currency: p.get("currency").cloned(),
            ..Default::default()
        })
        .collect();
    let t = Instant::now();
    let rows = pil::ingest::validate(&items, &Default::default()).expect("valid");
    let validated = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let nb = pil::ingest::new_batch("bench", "phases", &rows, pil::clock::now_ms());
    accept_app
        .state
        .store
        .insert_batch(&nb, &rows)
        .await
        .expect("insert");
    let stored = t.elapsed().as_secs_f64();
    println!("  phases: parse {parsed:.2} s, validate {validated:.2} s, store {stored:.2} s");
    drop(accept_app);
}

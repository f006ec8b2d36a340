//! `pil demo`: PIL and the DFSP simulator in one process, a sample disbursement across both
//! sample DFSPs submitted over real HTTP, progress, a summary, and a check of every final
//! status against what the simulator's deterministic outcomes predict.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::config::Settings;
use crate::simulator::{self, Dfsp, Expected, SimConfig};
use crate::startup::Application;

pub struct DemoOptions {
    pub payments: usize,
    pub exit: bool,
    pub simulator_listen: SocketAddr,
}

/// Triggers that end in a final status the demo can predict (see `simulator::trigger`).
const MTN_TRIGGERS: &[&str] = &[
    "450", "451", "455", "461", "471", "472", "473", "475", "476",
];
const MOJALOOP_TRIGGERS: &[&str] = &["450", "451", "452", "455", "456", "461", "475", "476"];

struct Planned {
    reference_id: String,
    dfsp: Dfsp,
    payee: String,
}

fn plan(n: usize) -> Vec<(Planned, serde_json::Value)> {
    (0..n)
        .map(|i| {
            let mtn = i.is_multiple_of(2);
            let triggers = if mtn { MTN_TRIGGERS } else { MOJALOOP_TRIGGERS };
            // One payment in 40 hits a failure or fault trigger.
            let payee = if i % 40 == 7 {
                format!("46733123{}", triggers[(i / 40) % triggers.len()])
            } else {
                format!("2567{:08}", i)
            };
            let (dfsp, fa) = if mtn {
                (Dfsp::MtnMomo, format!("mobile:{payee}@mtn"))
            } else {
                (Dfsp::MojaloopSdk, format!("mobile:{payee}@mojaloop"))
            };
            let reference_id = format!("demo-{i:06}");
            let amount = format!("{}.{:02}", 10 + i % 90, i % 100);
            let item = json!({
                "reference_id": reference_id,
                "payee_fa": fa,
                "amount": amount,
                "currency": "KES",
                "payee_name": format!("Beneficiary {i}"),
                "note": "Demo cash transfer",
            });
            (
                Planned {
                    reference_id,
                    dfsp,
                    payee,
                },
                item,
            )
        })
        .collect()
}

fn expected_status(dfsp: Dfsp, payee: &str) -> &'static str {
    match simulator::expected_outcome(dfsp, payee) {
        Expected::Succeeded => "succeeded",
        Expected::Failed(_) => "failed",
        Expected::Pending => "accepted",
        Expected::Unknown => "unknown",
    }
}

/// Runs the demo; returns whether every payment ended as predicted.
pub async fn run(mut settings: Settings, opts: DemoOptions) -> anyhow::Result<bool> {
    let sim = simulator::spawn(SimConfig::default(), opts.simulator_listen)
        .await
        .with_context(|| format!("starting the simulator on {}", opts.simulator_listen))?;
    if std::env::var("PIL_DATABASE_URL").is_err() {
        settings.database_url = format!("sqlite:data/demo-{}.db", crate::clock::now_ms());
    }
    let app = Application::build(settings).await?;
    let base = app.url();
    println!("PIL       {base}  (API: {base}/api/v1/batches, OpenAPI: {base}/openapi.json)");
    println!(
        "simulator {}  (stats: {}/_sim/stats)",
        sim.base_url(),
        sim.base_url()
    );

    let planned = plan(opts.payments);
    let body = json!({
        "batch_id": format!("demo-{}", crate::clock::now_ms()),
        "sender_id": "demo",
        "payments": planned.iter().map(|(_, item)| item.clone()).collect::<Vec<_>>(),
    });
    let http = reqwest::Client::new();
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/api/v1/batches"))
        .json(&body)
        .send()
        .await
        .context("submitting the demo batch")?;
    let status = resp.status();
    let accepted: serde_json::Value = resp.json().await?;
    if status.as_u16() != 202 {
        bail!("batch refused with {status}: {accepted}");
    }
    let stored_in = started.elapsed();
    let batch = accepted["id"].as_str().context("no batch id")?.to_string();
    println!(
        "submitted {} payments as batch {batch} (stored in {:.2} s)",
        opts.payments,
        stored_in.as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(120 + opts.payments as u64 / 50);
    let mut view;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        view = http
            .get(format!("{base}/api/v1/batches/{batch}"))
            .send()
            .await?
            .json::<serde_json::Value>()
            .await?;
        let done = view["final_count"].as_i64().unwrap_or(0);
        println!(
            "progress: {done}/{} final ({}%)",
            opts.payments, view["progress_percent"]
        );
        if done as usize >= opts.payments || Instant::now() > deadline {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Compare every payment with the prediction.
    let mut actual: BTreeMap<String, String> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/batches/{batch}/payments?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = http.get(url).send().await?.json().await?;
        for p in page["payments"].as_array().into_iter().flatten() {
            actual.insert(
                p["reference_id"].as_str().unwrap_or_default().to_string(),
                p["status"].as_str().unwrap_or_default().to_string(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut mismatches = 0;
    for (p, _) in &planned {
        let want = expected_status(p.dfsp, &p.payee);
        let got = actual
            .get(&p.reference_id)
            .map(String::as_str)
            .unwrap_or("missing");
        if want != got {
            mismatches += 1;
            if mismatches <= 10 {
                println!("MISMATCH {}: expected {want}, got {got}", p.reference_id);
            }
        }
    }
    let stats = sim.simulator.stats();
    let paid_twice = stats.executed.values().filter(|n| **n > 1).count();

    println!();
    println!("summary for batch {batch}:");
    for t in view["totals"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {:>7} payments  {:>14} {}",
            t["status"].as_str().unwrap_or_default(),
            t["count"],
            t["amount"].as_str().unwrap_or_default(),
            t["currency"].as_str().unwrap_or_default()
        );
    }
    println!(
        "  as predicted by the simulator: {}/{}",
        opts.payments - mismatches,
        opts.payments
    );
    println!("  paid more than once: {paid_twice}");
    println!("  elapsed: {elapsed:.2} s");
    let ok = mismatches == 0 && paid_twice == 0;
    println!(
        "throughput: {:.0} payments/s",
        opts.payments as f64 / elapsed
    );

    if !opts.exit {
        println!();
        println!(
            "still serving: PIL at {base}, simulator at {}; Ctrl-C to stop",
            sim.base_url()
        );
        tokio::signal::ctrl_c().await?;
    }
    drop(sim);
    Ok(ok)
}

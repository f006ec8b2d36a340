//! Routing + mapping + JSON encoding of one payment: through the shipped Rhai scripts vs the
//! same logic hand-written in Rust. Prints per-payment cost and rate on one core.
//! Run: `cargo bench --bench script`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use pil::payment::Payment;
use pil::route::{Decision, Live, route};
use pil::script::convert::payment_dynamic;
use pil::script::{Bundle, engine};
use serde_json::json;

fn sample(i: usize) -> Payment {
    let fa = if i.is_multiple_of(2) {
        format!("mobile:2567{i:08}@mtn")
    } else {
        format!("mobile:2567{i:08}@mojaloop")
    };
    let row = pil::store::NewPayment {
        id: format!("0190d6a2-0000-7000-8000-{i:012}"),
        reference_id: format!("ref-{i}"),
        payee_fa: Some(fa),
        payee_id_type: None,
        payee_id_value: None,
        amount_minor: 12_345 + i as i64,
        currency: "KES".into(),
        payee_name: Some("Jane Doe".into()),
        note: None,
        meta: None,
        ..Default::default()
    };
    let mut p = pil::ingest::received_payment(&row, "b", "bench", 0).expect("payment");
    p.idempotency_key = Some("5f0c6c2e-5b9d-4d41-9b1e-6f5d2b1f0a11".into());
    p
}

fn scripted(live: &Live, payments: &[Payment]) -> usize {
    let bundle = &live.bundle;
    let route_ctx = live.routing_ctx(0);
    let mut bytes = 0;
    for p in payments {
        let map = payment_dynamic(p);
        let Ok(Decision::Dfsps(ids)) =
            route(bundle, map.clone(), route_ctx.clone(), Some(&p.amount))
        else {
            panic!("routing failed")
        };
        let adapter = bundle.adapter(&ids[0]).expect("adapter");
        let ctx = adapter.request_ctx(
            0,
            1,
            p.idempotency_key.as_deref(),
            Some("http://127.0.0.1:8080/callbacks/x".into()),
        );
        let req = adapter
            .build_request(&bundle.engine, map, ctx)
            .expect("build");
        if let Some(pil::executor::Body::Json(text)) = &req.body {
            bytes += text.len();
        }
    }
    bytes
}

fn route_only(live: &Live, payments: &[Payment]) -> usize {
    let route_ctx = live.routing_ctx(0);
    let mut n = 0;
    for p in payments {
        if let Ok(Decision::Dfsps(ids)) = route(
            &live.bundle,
            payment_dynamic(p),
            route_ctx.clone(),
            Some(&p.amount),
        ) {
            n += ids.len();
        }
    }
    n
}

/// The same decisions and the same request (method, path, headers, JSON text) in plain Rust.
fn hand_written(payments: &[Payment]) -> usize {
    let mut bytes = 0;
    for p in payments {
        let fa = pil::address::FinancialAddress::parse(p.payee_fa.as_deref().unwrap_or_default())
            .expect("fa");
        let amount = pil::money::format_canonical(p.amount.to_decimal());
        let note = format!("G2P payment {}", p.reference_id);
        let key = p.idempotency_key.clone().unwrap_or_default();
        let (path, headers, body) = if fa.provider == "mtn" {
            (
                "/disbursement/v1_0/transfer",
                vec![
                    ("X-Reference-Id".to_string(), key.clone()),
                    ("X-Target-Environment".to_string(), "sandbox".to_string()),
                    (
                        "X-Callback-Url".to_string(),
                        format!("http://127.0.0.1:8080/callbacks/x/transfer/{}", p.id),
                    ),
                ],
                json!({"amount": amount, "currency": p.amount.currency().code(), "externalId": p.id,
                       "payee": {"partyIdType": "MSISDN", "partyId": fa.id}, "payerMessage": note, "payeeNote": note}),
            )
        } else {
            (
                "/transfers",
                vec![],
                json!({"homeTransactionId": p.id, "from": {"idType": "BUSINESS", "idValue": "g2p-programme", "displayName": "G2P Programme"},
                       "to": {"idType": "MSISDN", "idValue": fa.id, "displayName": p.payee_name}, "amountType": "SEND",
                       "currency": p.amount.currency().code(), "amount": amount, "transactionType": "TRANSFER",
                       "subScenario": "DISBURSEMENT", "note": note}),
            )
        };
        let req = pil::executor::DfspRequest {
            method: reqwest::Method::POST,
            path: path.to_string(),
            headers,
            body: Some(pil::executor::Body::Json(body.to_string())),
            idempotency_key: Some(key),
        };
        if let Some(pil::executor::Body::Json(text)) = &req.body {
            bytes += text.len() + req.headers.len();
        }
    }
    bytes
}

fn measure(name: &str, n: usize, f: impl Fn() -> usize) -> f64 {
    black_box(f()); // warm up
    let runs = 5;
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    let per = best / n as f64 * 1e6;
    println!(
        "{name:<14} {per:>7.2} µs/payment  {:>9.0} payments/s (one core, best of {runs})",
        1e6 / per
    );
    per
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = Bundle::load(
        Arc::new(engine::build()),
        &root.join("rules"),
        &root.join("adapters"),
    )
    .expect("scripts load");
    let live = Live::new(bundle).expect("live");
    let n = 20_000;
    let payments: Vec<Payment> = (0..n).map(sample).collect();
    assert_eq!(
        scripted(&live, &payments[..2]) > 0,
        hand_written(&payments[..2]) > 0
    );
    println!("route + map + JSON encode, {n} payments (half MTN MoMo, half Mojaloop)");
    // For profiling: `PIL_BENCH_ONLY=scripted perf record ...` runs just that loop, longer.
    if std::env::var("PIL_BENCH_ONLY").as_deref() == Ok("scripted") {
        for _ in 0..10 {
            measure("scripted", n, || scripted(&live, &payments));
        }
        return;
    }
    let s = measure("scripted", n, || scripted(&live, &payments));
    measure("  route only", n, || route_only(&live, &payments));
    measure("  payment map", n, || {
        payments
            .iter()
            .map(|p| payment_dynamic(p).is_shared() as usize)
            .sum()
    });
    let h = measure("hand-written", n, || hand_written(&payments));
    println!("ratio scripted/hand-written: {:.2}x", s / h);
}

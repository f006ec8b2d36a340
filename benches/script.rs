//! Routing + mapping + JSON encoding of one payment: through the shipped Rhai scripts vs the
//! same logic hand-written in Rust. Prints per-payment cost and rate on one core.
//! Run: `cargo bench --bench script` (`PIL_BENCH_N` payments, default 20,000).
//!
//! The hand-written path is a faithful translation of `rules/routing.rhai` and the
//! `build_request` of `adapters/mtn-momo` and `adapters/mojaloop-sdk`: the same rules, the same
//! capability filter (`route::capable`) and the same request. Before timing, every sample
//! payment's two requests are compared (method, path, headers, key and JSON body), so the
//! baseline cannot drift from what the scripts do.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use pil::address::FinancialAddress;
use pil::executor::{Body, DfspRequest};
use pil::payment::Payment;
use pil::route::{Decision, Live, capable, route};
use pil::script::convert::payment_dynamic;
use pil::script::{Bundle, engine};
use rust_decimal::Decimal;
use serde_json::{Value, json};

// The allocator of the `pil` binary (src/main.rs), so the figures are those of what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CALLBACK_BASE: &str = "http://127.0.0.1:8080/callbacks";

fn sample(i: usize) -> Payment {
    // Half MTN, half Mojaloop; some with a note (one with an apostrophe), some without a name.
    let fa = if i.is_multiple_of(2) {
        format!("mobile:2567{i:08}@mtn")
    } else if i % 7 == 1 {
        format!("account:{i:010}@mojaloop")
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
        payee_name: (!i.is_multiple_of(5)).then(|| "Jane Doe".into()),
        note: match i % 10 {
            3 => Some("May's transfer".into()),
            7 => Some("Cash transfer, second round".into()),
            _ => None,
        },
        meta: None,
        ..Default::default()
    };
    let mut p = pil::ingest::received_payment(&row, "b", "bench", 0).expect("payment");
    p.idempotency_key = Some("5f0c6c2e-5b9d-4d41-9b1e-6f5d2b1f0a11".into());
    p
}

fn scripted_one(live: &Live, route_ctx: &rhai::Dynamic, p: &Payment) -> DfspRequest {
    let bundle = &live.bundle;
    let map = payment_dynamic(p);
    let Ok(Decision::Dfsps(ids)) = route(bundle, map.clone(), route_ctx.clone(), Some(&p.amount))
    else {
        panic!("routing failed")
    };
    let adapter = bundle.adapter(&ids[0]).expect("adapter");
    let ctx = adapter.request_ctx(
        0,
        1,
        p.idempotency_key.as_deref(),
        Some(format!("{CALLBACK_BASE}/{}", ids[0])),
    );
    adapter
        .build_request(&bundle.engine, map, ctx)
        .expect("build")
}

fn scripted(live: &Live, payments: &[Payment]) -> usize {
    let route_ctx = live.routing_ctx(0);
    payments
        .iter()
        .map(|p| body_len(&scripted_one(live, &route_ctx, p)))
        .sum()
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

fn body_len(r: &DfspRequest) -> usize {
    match &r.body {
        Some(Body::Json(text)) => text.len() + r.headers.len(),
        _ => r.headers.len(),
    }
}

/// What a Rust adapter would read from `adapter.toml` `[settings]` once, at load.
struct Settings {
    target_environment: String,
    payer_id_type: String,
    payer_id_value: String,
    payer_name: String,
}

impl Settings {
    fn from(live: &Live) -> Settings {
        let setting = |dfsp: &str, key: &str| {
            live.bundle.adapter(dfsp).expect("adapter").config.settings[key]
                .as_str()
                .expect("setting")
                .to_string()
        };
        Settings {
            target_environment: setting("mtn-momo", "target_environment"),
            payer_id_type: setting("mojaloop-sdk", "payer_id_type"),
            payer_id_value: setting("mojaloop-sdk", "payer_id_value"),
            payer_name: setting("mojaloop-sdk", "payer_name"),
        }
    }
}

fn ids(list: &[&str]) -> Decision {
    Decision::Dfsps(list.iter().map(|s| s.to_string()).collect())
}

/// `rules/routing.rhai` in Rust.
fn hand_route(live: &Live, p: &Payment, fa: Option<&FinancialAddress>) -> Decision {
    if let Some(preferred) = p
        .attributes
        .as_ref()
        .and_then(|a| a.get("preferred_dfsp"))
        .and_then(Value::as_str)
        && live.bundle.adapters.contains_key(preferred)
    {
        return ids(&[preferred]);
    }
    let Some(fa) = fa else {
        return match p.payee_id_type.as_deref().unwrap_or_default() {
            "MSISDN" | "PHONE" => ids(&["mtn-momo", "mojaloop-sdk"]),
            "IBAN" => ids(&["iso20022-bank"]),
            "ACCOUNT_ID" => ids(&["mojaloop-sdk"]),
            t => Decision::Reject {
                code: "payee.unroutable".into(),
                message: format!("no DFSP takes payee id type '{t}'"),
            },
        };
    };
    let provider = fa.provider.as_str();
    let is = |name: &str| {
        provider == name
            || provider
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with('.'))
    };
    if is("mtn") {
        if p.amount.to_decimal() > Decimal::new(100_000_000, 2) {
            return ids(&["mojaloop-sdk"]);
        }
        return ids(&["mtn-momo", "mojaloop-sdk"]);
    }
    if is("mojaloop") {
        return ids(&["mojaloop-sdk"]);
    }
    if is("gsma") {
        return ids(&["gsma-mmapi"]);
    }
    if (provider == "mpesa" || provider == "safaricom") && fa.scheme == "mobile" {
        return ids(&["mpesa-b2c"]);
    }
    if fa.scheme == "iban" {
        return ids(&["iso20022-bank"]);
    }
    if is("bank") {
        return ids(&["iso20022-bank", "mojaloop-sdk"]);
    }
    Decision::Reject {
        code: "payee_fa.unroutable".into(),
        message: format!("no DFSP serves provider '{provider}'"),
    }
}

/// Rhai's `truncate`: at most `n` characters.
fn truncate_chars(s: &mut String, n: usize) {
    if let Some((at, _)) = s.char_indices().nth(n) {
        s.truncate(at);
    }
}

fn default_note(p: &Payment) -> String {
    p.note
        .clone()
        .unwrap_or_else(|| format!("G2P payment {}", p.reference_id))
}

/// `adapters/mtn-momo` `build_request` in Rust.
fn hand_mtn(p: &Payment, fa: Option<&FinancialAddress>, key: &str, s: &Settings) -> DfspRequest {
    let (party_type, party_id) = match fa {
        None => (
            if p.payee_id_type.as_deref() == Some("EMAIL") {
                "EMAIL"
            } else {
                "MSISDN"
            },
            p.payee_id_value.clone().unwrap_or_default(),
        ),
        Some(fa) => (
            match fa.scheme.as_str() {
                "mobile" => "MSISDN",
                "email" => "EMAIL",
                _ => "PARTY_CODE",
            },
            fa.id.clone(),
        ),
    };
    let mut message = default_note(p);
    if message.contains('\'') {
        message = message.replace('\'', " ");
    }
    truncate_chars(&mut message, 160);
    let body = json!({
        "amount": pil::money::format_canonical(p.amount.to_decimal()),
        "currency": p.amount.currency().code(),
        "externalId": p.id,
        "payee": {"partyIdType": party_type, "partyId": party_id},
        "payerMessage": message,
        "payeeNote": message,
    });
    DfspRequest {
        method: reqwest::Method::POST,
        path: "/disbursement/v1_0/transfer".into(),
        headers: vec![
            (
                "X-Callback-Url".into(),
                format!("{CALLBACK_BASE}/mtn-momo/transfer/{}", p.id),
            ),
            ("X-Reference-Id".into(), key.to_string()),
            ("X-Target-Environment".into(), s.target_environment.clone()),
        ],
        body: Some(Body::Json(body.to_string())),
        idempotency_key: Some(key.to_string()),
    }
}

/// `adapters/mojaloop-sdk` `build_request` in Rust.
fn hand_mojaloop(p: &Payment, fa: Option<&FinancialAddress>, s: &Settings) -> DfspRequest {
    let mut to = match fa {
        None => json!({
            "idType": match p.payee_id_type.as_deref() {
                Some("PHONE") => "MSISDN",
                other => other.unwrap_or_default(),
            },
            "idValue": p.payee_id_value,
        }),
        Some(fa) => json!({
            "idType": match fa.scheme.as_str() {
                "account" => "ACCOUNT_ID",
                "email" => "EMAIL",
                _ => "MSISDN",
            },
            "idValue": fa.id,
        }),
    };
    if let Some(name) = &p.payee_name {
        to["displayName"] = json!(name);
    }
    let mut note = default_note(p);
    truncate_chars(&mut note, 128);
    let body = json!({
        "homeTransactionId": p.id,
        "from": {"idType": s.payer_id_type, "idValue": s.payer_id_value, "displayName": s.payer_name},
        "to": to,
        "amountType": "SEND",
        "currency": p.amount.currency().code(),
        "amount": pil::money::format_canonical(p.amount.to_decimal()),
        "transactionType": "TRANSFER",
        "subScenario": "DISBURSEMENT",
        "note": note,
    });
    DfspRequest {
        method: reqwest::Method::POST,
        path: "/transfers".into(),
        headers: Vec::new(),
        body: Some(Body::Json(body.to_string())),
        idempotency_key: None,
    }
}

fn hand_one(live: &Live, s: &Settings, p: &Payment) -> DfspRequest {
    let fa = p
        .payee_fa
        .as_deref()
        .and_then(|t| FinancialAddress::parse(t).ok());
    let decision = match hand_route(live, p, fa.as_ref()) {
        Decision::Dfsps(ids) => capable(&live.bundle, ids, &p.amount),
        reject => reject,
    };
    let Decision::Dfsps(ids) = decision else {
        panic!("routing failed")
    };
    let key = p.idempotency_key.as_deref().unwrap_or_default();
    match ids[0].as_str() {
        "mtn-momo" => hand_mtn(p, fa.as_ref(), key, s),
        "mojaloop-sdk" => hand_mojaloop(p, fa.as_ref(), s),
        other => panic!("no hand-written adapter for {other}"),
    }
}

fn hand_written(live: &Live, s: &Settings, payments: &[Payment]) -> usize {
    payments
        .iter()
        .map(|p| body_len(&hand_one(live, s, p)))
        .sum()
}

/// Both paths must build the same request for every payment.
fn assert_same(live: &Live, s: &Settings, payments: &[Payment]) {
    let route_ctx = live.routing_ctx(0);
    for p in payments {
        let a = scripted_one(live, &route_ctx, p);
        let b = hand_one(live, s, p);
        let mut ha = a.headers.clone();
        let mut hb = b.headers.clone();
        ha.sort();
        hb.sort();
        let json = |r: &DfspRequest| match &r.body {
            Some(Body::Json(t)) => serde_json::from_str::<Value>(t).expect("JSON body"),
            _ => Value::Null,
        };
        assert_eq!(
            (&a.method, &a.path, ha, &a.idempotency_key, json(&a)),
            (&b.method, &b.path, hb, &b.idempotency_key, json(&b)),
            "scripted and hand-written requests differ for {}",
            p.reference_id
        );
    }
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
    pil::startup::disable_transparent_huge_pages();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = Bundle::load(
        Arc::new(engine::build()),
        &root.join("rules"),
        &root.join("adapters"),
    )
    .expect("scripts load");
    let live = Live::new(bundle).expect("live");
    let settings = Settings::from(&live);
    let n = std::env::var("PIL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let payments: Vec<Payment> = (0..n).map(sample).collect();
    assert_same(&live, &settings, &payments[..n.min(200)]);
    println!(
        "route + map + JSON encode, {n} payments (half MTN MoMo, half Mojaloop); \
         both paths checked to build the same requests"
    );
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
    let h = measure("hand-written", n, || {
        hand_written(&live, &settings, &payments)
    });
    println!("ratio scripted/hand-written: {:.2}x", s / h);
}

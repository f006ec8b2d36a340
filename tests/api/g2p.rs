//! The G2P Connect disbursement API end to end: envelopes, per-item reason codes, signed
//! callbacks to a real test sender over loopback (including while it is down), status queries,
//! scheduling and idempotency. Bodies are checked against the spec file itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pil::config::SenderSettings;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_with};
use crate::spec::Spec;

const TOKEN: &str = "sender-token-for-tests";
const SIGNED_TOKEN: &str = "signed-sender-token";

fn g2p_spec() -> Spec {
    Spec::load(&crate::helpers::repo().join("specs/g2p-connect-disburse-core-api-v1.0.0.yaml"))
}

/// A programme system receiving callbacks; answers 503 while `down`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    down: Arc<AtomicBool>,
}

async fn receiver() -> Receiver {
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let down = Arc::new(AtomicBool::new(false));
    let (g, d) = (got.clone(), down.clone());
    let app = axum::Router::new().route(
        "/{*path}",
        axum::routing::post(
            move |axum::extract::Path(path): axum::extract::Path<String>, body: String| {
                let (g, d) = (g.clone(), d.clone());
                async move {
                    if d.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let path = path.trim_start_matches("g2p/").to_string();
                    g.lock().expect("lock").push((path, v));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/g2p", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, got, down }
}

struct Setup {
    app: TestApp,
    rx: Receiver,
    key: pil::jws::SigningKey,
}

async fn setup() -> Setup {
    let rx = receiver().await;
    let key = pil::jws::SigningKey::generate_ed25519();
    let public = key.public_pem();
    let app = spawn_with(Default::default(), move |s, _| {
        s.g2p_sync_wait_ms = 10_000;
        s.senders.insert(
            "spp.example.org".into(),
            SenderSettings {
                token: TOKEN.into(),
                public_key: None,
                callback_token: Some("cb-token".into()),
                callback_url: None,
            },
        );
        s.senders.insert(
            "signed.example.org".into(),
            SenderSettings {
                token: SIGNED_TOKEN.into(),
                public_key: Some(public),
                callback_token: None,
                callback_url: None,
            },
        );
    })
    .await;
    Setup { app, rx, key }
}

fn header(action: &str, sender: &str, sender_uri: &str, count: usize) -> Value {
    json!({
        "version": "1.0.0",
        "message_id": uuid::Uuid::new_v4().to_string(),
        "message_ts": "2026-11-27T10:00:00+03:00",
        "action": action,
        "sender_id": sender,
        "sender_uri": sender_uri,
        "receiver_id": "pil",
        "total_count": count,
        "is_msg_encrypted": false,
    })
}

fn item(reference: &str, payee_fa: &str, amount: &str) -> Value {
    json!({
        "reference_id": reference, "payer_fa": "account:treasury@central-bank",
        "payee_fa": payee_fa, "amount": amount, "currency_code": "KES",
        "payee_name": "Jane Doe", "note": "relief", "purpose": "Drought relief 2026",
        "locale": "eng",
    })
}

fn disburse_body(s: &Setup, txn: &str, items: Vec<Value>) -> Value {
    json!({
        "signature": "",
        "header": header("disburse", "spp.example.org", &s.rx.url, items.len()),
        "message": {"transaction_id": txn, "disbursements": items},
    })
}

async fn post_as(app: &TestApp, path: &str, token: Option<&str>, body: String) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}{path}", app.url))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(s: &Setup, path: &str, body: &Value) -> (u16, Value) {
    post_as(&s.app, path, Some(TOKEN), body.to_string()).await
}

/// The spec's ack: `components/responses/Response`.
fn check_ack(spec: &Spec, ack: &Value) {
    spec.validate_at(
        "/components/responses/Response/content/application~1json/schema",
        ack,
        &[],
    )
    .unwrap_or_else(|e| panic!("ack {ack}: {e:?}"));
}

/// A callback or sync answer: schema-valid header and message, and PIL's signature verifies.
fn check_envelope(spec: &Spec, public_pem: &str, body: &Value, message_schema: &str) {
    spec.validate("MsgCallbackHeader_V1.0.0", &body["header"])
        .unwrap_or_else(|e| panic!("header {}: {e:?}", body["header"]));
    spec.validate(message_schema, &body["message"])
        .unwrap_or_else(|e| panic!("message {}: {e:?}", body["message"]));
    let payload = format!("{}{}", body["header"], body["message"]);
    let key = pil::jws::VerifyingKey::from_pem(public_pem).expect("PIL key");
    pil::jws::verify_detached(
        body["signature"].as_str().expect("signature"),
        payload.as_bytes(),
        &key,
    )
    .expect("PIL's signature verifies");
}

/// A callback PIL sent: the whole body against the spec's request schema for that callback
/// path, plus the envelope checks.
fn check_callback(spec: &Spec, public_pem: &str, path: &str, body: &Value, message_schema: &str) {
    let pointer = format!(
        "/paths/~1{}/post/requestBody/content/application~1json/schema",
        path.replace('/', "~1")
    );
    spec.validate_at(&pointer, body, &[])
        .unwrap_or_else(|e| panic!("callback to /{path} {body}: {e:?}"));
    check_envelope(spec, public_pem, body, message_schema);
}

/// Latest status per reference id from the on-disburse callbacks received so far.
fn latest(rx: &Receiver) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    for (path, body) in rx.got.lock().expect("lock").iter() {
        if path.ends_with("on-disburse") {
            for i in body["message"]["disbursements_status"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out.insert(
                    i["reference_id"].as_str().unwrap_or_default().to_string(),
                    i.clone(),
                );
            }
        }
    }
    out
}

async fn wait_callbacks(rx: &Receiver, refs: &[&str]) -> std::collections::BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = latest(rx);
        if refs.iter().all(|r| {
            l.get(*r)
                .is_some_and(|i| matches!(i["status"].as_str(), Some("succ" | "rjct")))
        }) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "callbacks not final in time: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn public_pem(app: &TestApp) -> String {
    app.http
        .get(format!("{}/signing-key.pem", app.url))
        .send()
        .await
        .expect("key")
        .text()
        .await
        .expect("pem")
}

#[tokio::test]
async fn disburse_is_acked_and_results_are_pushed_signed_and_spec_valid() {
    let s = setup().await;
    let spec = g2p_spec();
    let items = vec![
        item("r-1", "mobile:256700000001@mtn", "100.00"),
        item("r-2", "mobile:256700000002@mojaloop", "25.50"),
        item("r-3", "mobile:46733123451@mojaloop", "10.00"), // the DFSP rejects it
        item("r-4", "mobile:256700000004@mtn", "12.345"),    // KES has 2 decimals
        item("r-1", "mobile:256700000005@mtn", "1.00"),      // reference used twice
    ];
    let good = disburse_body(&s, "txn-1", items[..3].to_vec());
    spec.validate_at(
        "/paths/~1disburse/post/requestBody/content/application~1json/schema",
        &good,
        &["disburemsents"],
    )
    .expect("the test's own request is spec-valid");
    let body = disburse_body(&s, "txn-1", items);
    let (status, ack) = post(&s, "/disburse", &body).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["message"]["ack_status"], "ACK");
    check_ack(&spec, &ack);

    let l = wait_callbacks(&s.rx, &["r-1", "r-2", "r-3", "r-4"]).await;
    assert_eq!(l["r-1"]["status"], "succ", "{:?}", l["r-1"]);
    assert_eq!(l["r-1"]["amount"], "100.00");
    assert_eq!(l["r-1"]["payer_fa"], "account:treasury@central-bank");
    assert_eq!(l["r-2"]["status"], "succ");
    assert_eq!(l["r-3"]["status"], "rjct");
    assert_eq!(l["r-4"]["status"], "rjct");
    assert_eq!(l["r-4"]["status_reason_code"], "rjct.amount.invalid");
    let pem = public_pem(&s.app).await;
    let got = s.rx.got.lock().expect("lock").clone();
    let dup = got
        .iter()
        .flat_map(|(_, b)| {
            b["message"]["disbursements_status"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|i| i["status_reason_code"] == "rjct.reference_id.duplicate");
    assert!(dup.is_some(), "the repeated reference is reported: {got:?}");
    for (path, body) in &got {
        assert_eq!(path, "on-disburse");
        check_callback(&spec, &pem, path, body, "DisburseResponse");
        assert_eq!(body["message"]["transaction_id"], "txn-1");
    }
    let stats = s.app.sim.simulator.stats();
    assert_eq!(
        stats.submissions.len(),
        3,
        "only the three valid items were sent"
    );
}

#[tokio::test]
async fn callbacks_queued_while_the_sender_is_down_arrive_once_it_is_back() {
    let s = setup().await;
    s.rx.down.store(true, Ordering::SeqCst);
    let body = disburse_body(
        &s,
        "txn-outage",
        vec![item("o-1", "mobile:256700000011@mojaloop", "5.00")],
    );
    let (status, ack) = post(&s, "/disburse", &body).await;
    assert_eq!(status, 200, "{ack}");
    // The payment is paid while nobody listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outbox = s
            .app
            .app
            .state
            .store
            .outbox_of("spp.example.org")
            .await
            .expect("outbox");
        if outbox.iter().any(|o| o.attempts >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "no retries seen: {outbox:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.rx.got.lock().expect("lock").is_empty());
    s.rx.down.store(false, Ordering::SeqCst);
    let l = wait_callbacks(&s.rx, &["o-1"]).await;
    assert_eq!(l["o-1"]["status"], "succ");
    let outbox = s
        .app
        .app
        .state
        .store
        .outbox_of("spp.example.org")
        .await
        .expect("outbox");
    assert!(
        outbox.iter().all(|o| o.delivered_at.is_some()),
        "{outbox:?}"
    );
    // In order: the statuses a sender saw for o-1 never go backwards.
    let seen: Vec<String> =
        s.rx.got
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|(_, b)| {
                b["message"]["disbursements_status"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|i| i["status"].as_str().unwrap_or_default().to_string())
            .collect();
    let rank = |s: &str| match s {
        "rcvd" => 0,
        "pdng" => 1,
        _ => 2,
    };
    assert!(
        seen.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{seen:?}"
    );
}

#[tokio::test]
async fn every_item_reason_code_comes_from_real_bad_input() {
    let s = setup().await;
    let spec = g2p_spec();
    let first = disburse_body(
        &s,
        "txn-a",
        vec![item("used-before", "mobile:256700000021@mojaloop", "1.00")],
    );
    let (status, _) = post(&s, "/disburse/sync/disburse", &first).await;
    assert_eq!(status, 200);
    let mut no_payer = item("payer", "mobile:256700000022@mtn", "1.00");
    no_payer["payer_fa"] = json!("not an address");
    let mut late = item("sched", "mobile:256700000023@mtn", "1.00");
    late["scheduled_timestamp"] = json!("tomorrow morning");
    let mut currency = item("cur", "mobile:256700000024@mtn", "1.00");
    currency["currency_code"] = json!("ZZZ");
    let items = vec![
        item("", "mobile:256700000025@mtn", "1.00"),
        item("used-before", "mobile:256700000026@mtn", "1.00"),
        item("fa", "nonsense", "1.00"),
        item("amt", "mobile:256700000027@mtn", "-5.00"),
        currency,
        late,
        no_payer,
    ];
    let mut body = disburse_body(&s, "txn-b", items);
    body["header"]["action"] = json!("search"); // the spec's enum says so for sync disburse
    let (status, answer) = post(&s, "/disburse/sync/disburse", &body).await;
    assert_eq!(status, 200, "{answer}");
    check_envelope(
        &spec,
        &public_pem(&s.app).await,
        &answer,
        "DisburseResponse",
    );
    let codes: std::collections::BTreeMap<String, String> =
        answer["message"]["disbursements_status"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["reference_id"].as_str().unwrap_or_default().to_string(),
                    i["status_reason_code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
    let expect = [
        ("", "rjct.reference_id.invalid"),
        ("used-before", "rjct.reference_id.duplicate"),
        ("fa", "rjct.payee_fa.invalid"),
        ("amt", "rjct.amount.invalid"),
        ("cur", "rjct.currency_code.invalid"),
        ("sched", "rjct.schedule_ts.invalid"),
        ("payer", "rjct.payer_fa.invalid"),
    ];
    for (reference, code) in expect {
        assert_eq!(
            codes.get(reference).map(String::as_str),
            Some(code),
            "{reference}: {codes:?}"
        );
    }
    assert_eq!(
        s.app.sim.simulator.stats().submissions.len(),
        1,
        "only txn-a's item was sent"
    );
}

#[tokio::test]
async fn bad_envelopes_are_refused_with_the_spec_codes_and_store_nothing() {
    let s = setup().await;
    let spec = g2p_spec();
    let good = disburse_body(
        &s,
        "txn-bad",
        vec![item("b-1", "mobile:256700000031@mtn", "1.00")],
    );
    let (status, _) = post_as(&s.app, "/disburse", None, good.to_string()).await;
    assert_eq!(status, 401);
    let (status, err) = post_as(&s.app, "/disburse", Some("nope"), good.to_string()).await;
    assert_eq!(
        (status, err["errors"][0]["code"].as_str()),
        (401, Some("err.request.unauthorized"))
    );

    let mut cases: Vec<(Value, u16, &str)> = Vec::new();
    let mut b = good.clone();
    b["header"]["sender_id"] = json!("someone.else");
    cases.push((b, 403, "err.sender_id.invalid"));
    let mut b = good.clone();
    b["header"]
        .as_object_mut()
        .expect("header")
        .remove("message_id");
    cases.push((b, 400, "err.request.bad"));
    let mut b = good.clone();
    b["header"]["total_count"] = json!(7);
    cases.push((b, 400, "err.request.bad"));
    let mut b = good.clone();
    b["header"]["version"] = json!("2.0.0");
    cases.push((b, 400, "err.version.not_supported"));
    let mut b = good.clone();
    b["header"]["is_msg_encrypted"] = json!(true);
    cases.push((b, 400, "err.encryption.invalid"));
    let mut b = good.clone();
    b["header"]["action"] = json!("unlink");
    cases.push((b, 400, "err.request.bad"));
    let mut b = good.clone();
    b["header"]["sender_uri"] = json!("not a url");
    cases.push((b, 400, "err.sender_uri.invalid"));
    let mut b = good.clone();
    b["message"]
        .as_object_mut()
        .expect("message")
        .remove("transaction_id");
    cases.push((b, 400, "err.request.bad"));
    for (body, want_status, code) in cases {
        let (status, err) = post(&s, "/disburse", &body).await;
        assert_eq!(status, want_status, "{body} → {err}");
        let got = err["message"]["error"]["code"]
            .as_str()
            .or(err["errors"][0]["code"].as_str());
        assert_eq!(got, Some(code), "{err}");
        if status == 400 {
            assert_eq!(err["message"]["ack_status"], "ERR");
            check_ack(&spec, &err);
        }
    }
    // Signatures: required for this sender; missing or wrong → refused.
    let mut signed = good.clone();
    signed["header"]["sender_id"] = json!("signed.example.org");
    let (status, err) = post_as(&s.app, "/disburse", Some(SIGNED_TOKEN), signed.to_string()).await;
    assert_eq!(
        (status, err["errors"][0]["code"].as_str()),
        (401, Some("err.signature.missing")),
        "{err}"
    );
    let other_key = pil::jws::SigningKey::generate_ed25519();
    let text = envelope_text(&other_key, &signed["header"], &signed["message"]);
    let (status, err) = post_as(&s.app, "/disburse", Some(SIGNED_TOKEN), text).await;
    assert_eq!(
        (status, err["errors"][0]["code"].as_str()),
        (401, Some("err.signature.invalid")),
        "{err}"
    );
    // Tampering after signing is caught too.
    let text = envelope_text(&s.key, &signed["header"], &signed["message"]).replace("1.00", "9.00");
    let (status, _) = post_as(&s.app, "/disburse", Some(SIGNED_TOKEN), text).await;
    assert_eq!(status, 401);
    // Nothing was stored by any of them.
    let status_req = |sender: &str, txn: &str| {
        json!({"header": header("search", sender, &s.rx.url, 1), "message": {"transaction_id": "q",
            "txnstatus_request": {"reference_id": "q1", "txn_type": "disburse", "attribute_type": "transaction_id", "attribute_value": txn}}})
    };
    let (status, _) = post(
        &s,
        "/disburse/sync/txn/status",
        &status_req("spp.example.org", "txn-bad"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(s.app.sim.simulator.stats().submissions.len(), 0);

    // A correctly signed message is taken.
    let text = envelope_text(&s.key, &signed["header"], &signed["message"]);
    let (status, ack) = post_as(&s.app, "/disburse", Some(SIGNED_TOKEN), text).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["message"]["ack_status"], "ACK");
}

/// Builds a signed envelope the way a sender does: signature over header text + message text.
fn envelope_text(key: &pil::jws::SigningKey, header: &Value, message: &Value) -> String {
    let (h, m) = (header.to_string(), message.to_string());
    let sig = pil::jws::sign_detached(format!("{h}{m}").as_bytes(), key, Some("spp-key-1"));
    format!(
        "{{\"signature\":{},\"header\":{h},\"message\":{m}}}",
        Value::String(sig)
    )
}

#[tokio::test]
async fn a_replayed_transaction_sends_nothing_again_and_a_changed_one_is_refused() {
    let s = setup().await;
    let body = disburse_body(
        &s,
        "txn-r",
        vec![item("rr-1", "mobile:256700000041@mojaloop", "3.00")],
    );
    let (_, first) = post(&s, "/disburse", &body).await;
    wait_callbacks(&s.rx, &["rr-1"]).await;
    let mut again = body.clone();
    again["header"]["message_id"] = json!("another-message");
    let (status, second) = post(&s, "/disburse", &again).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        first["message"]["correlation_id"],
        second["message"]["correlation_id"]
    );
    let stats = s.app.sim.simulator.stats();
    assert!(
        stats.submissions.values().all(|n| *n == 1),
        "{:?}",
        stats.submissions
    );
    let mut changed = body.clone();
    changed["message"]["disbursements"][0]["amount"] = json!("4.00");
    let (status, err) = post(&s, "/disburse", &changed).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["message"]["ack_status"], "ERR");
}

#[tokio::test]
async fn a_scheduled_payment_waits_for_its_time() {
    let s = setup().await;
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let mut it = item("later-1", "mobile:256700000051@mojaloop", "2.00");
    it["scheduled_timestamp"] = json!(at.to_rfc3339());
    let (status, _) = post(&s, "/disburse", &disburse_body(&s, "txn-s", vec![it])).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        s.app.sim.simulator.stats().submissions.len(),
        0,
        "not sent before its time"
    );
    let l = wait_callbacks(&s.rx, &["later-1"]).await;
    assert_eq!(l["later-1"]["status"], "succ");
    assert!(chrono::Utc::now() >= at);
}

#[tokio::test]
async fn status_is_answered_by_transaction_reference_list_and_correlation_id() {
    let s = setup().await;
    let spec = g2p_spec();
    let pem = public_pem(&s.app).await;
    let body = disburse_body(
        &s,
        "txn-st",
        vec![
            item("st-1", "mobile:256700000061@mojaloop", "1.00"),
            item("st-2", "mobile:256700000062@mtn", "2.00"),
        ],
    );
    let (_, ack) = post(&s, "/disburse", &body).await;
    let correlation = ack["message"]["correlation_id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_callbacks(&s.rx, &["st-1", "st-2"]).await;
    let query = |attribute_type: &str, value: Value| {
        json!({"header": header("search", "spp.example.org", &s.rx.url, 1), "message": {"transaction_id": "q-1",
            "txnstatus_request": {"reference_id": "q-ref", "txn_type": "disburse", "attribute_type": attribute_type, "attribute_value": value}}})
    };
    for q in [
        query("transaction_id", json!("txn-st")),
        query("correlation_id", json!(correlation)),
        query("reference_id_list", json!(["st-1", "st-2", "nobody"])),
    ] {
        // The spec's attribute_value is a oneOf in which any string matches two branches, so
        // only a reference_id_list query can be spec-valid.
        if q["message"]["txnstatus_request"]["attribute_type"] == "reference_id_list" {
            spec.validate("TxnStatusRequest", &q["message"])
                .expect("the test's query is spec-valid");
        }
        let (status, answer) = post(&s, "/disburse/sync/txn/status", &q).await;
        assert_eq!(status, 200, "{answer}");
        check_envelope(&spec, &pem, &answer, "TxnStatusResponse");
        let items = answer["message"]["txnstatus_response"]["txn_status"]["disbursements_status"]
            .as_array()
            .expect("items")
            .clone();
        assert_eq!(items[0]["reference_id"], "st-1");
        assert_eq!(items[0]["status"], "succ");
        assert_eq!(items[1]["status"], "succ");
        if items.len() == 3 {
            assert_eq!(items[2]["status_reason_code"], "rjct.reference_id.invalid");
        }
    }
    // The async form answers through /disburse/txn/on-status.
    let (status, ack) = post(
        &s,
        "/disburse/txn/status",
        &query("transaction_id", json!("txn-st")),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    check_ack(&spec, &ack);
    let deadline = Instant::now() + Duration::from_secs(10);
    let on_status = loop {
        let found =
            s.rx.got
                .lock()
                .expect("lock")
                .iter()
                .find(|(p, _)| p == "disburse/txn/on-status")
                .cloned();
        if let Some((_, b)) = found {
            break b;
        }
        assert!(Instant::now() < deadline, "no on-status callback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    check_callback(
        &spec,
        &pem,
        "disburse/txn/on-status",
        &on_status,
        "TxnStatusResponse",
    );
    assert_eq!(
        on_status["message"]["txnstatus_response"]["txn_status"]["transaction_id"],
        "txn-st"
    );
}

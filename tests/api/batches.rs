//! Ingest: validation errors, idempotency, cancel rules.

use serde_json::{Value, json};

use crate::helpers::{TestApp, payment, spawn_with, status};

async fn api_only() -> TestApp {
    spawn_with(Default::default(), |s, _| {
        s.dispatch = false;
        s.max_body_bytes = 64 * 1024;
    })
    .await
}

async fn nothing_stored(app: &TestApp) {
    let counts = app.app.state.store.status_counts().await.expect("counts");
    assert!(counts.is_empty(), "stored: {counts:?}");
}

fn codes(body: &Value) -> Vec<(i64, String, String)> {
    body["error"]["details"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["index"].as_i64().unwrap_or(-1),
                i["field"].as_str().unwrap_or_default().to_string(),
                i["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_bad_item_is_reported_and_nothing_is_stored() {
    let app = api_only().await;
    let good = payment("ok-1", "mobile:256700000001@mtn", "10.00");
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"reference_id": "a", "payee_fa": "mobile:1@mtn", "currency": "KES"}),
            "amount",
            "amount.missing",
        ),
        (
            payment("b", "mobile:1@mtn", "10.001"),
            "amount",
            "amount.scale",
        ),
        (
            payment("c", "mobile:1@mtn", "0"),
            "amount",
            "amount.not_positive",
        ),
        (
            payment("d", "mobile:1@mtn", "-5"),
            "amount",
            "amount.not_positive",
        ),
        (
            payment("e", "mobile:1@mtn", "1e3"),
            "amount",
            "amount.invalid",
        ),
        (
            payment("f", "mobile:1@mtn", "99999999999999999999999999999"),
            "amount",
            "amount.overflow",
        ),
        (
            json!({"reference_id": "g", "payee_fa": "mobile:1@mtn", "amount": "1", "currency": "XYZ"}),
            "currency",
            "currency_code.invalid",
        ),
        (
            payment("h", "not-an-address", "1.00"),
            "payee_fa",
            "payee_fa.invalid",
        ),
        (
            json!({"reference_id": "i", "amount": "1", "currency": "KES"}),
            "payee_fa",
            "payee_fa.missing",
        ),
        (
            json!({"payee_fa": "mobile:1@mtn", "amount": "1", "currency": "KES"}),
            "reference_id",
            "reference_id.missing",
        ),
        (
            payment("ok-1", "mobile:256700000002@mtn", "1.00"),
            "reference_id",
            "reference_id.duplicate",
        ),
    ];
    for (bad, field, code) in &cases {
        let (st, body) = app
            .post(
                "/api/v1/batches",
                &json!({"batch_id": "b1", "payments": [good.clone(), bad.clone()]}),
            )
            .await;
        assert_eq!(st, 422, "{code}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{body}");
        let found = codes(&body);
        assert!(
            found.contains(&(1, field.to_string(), code.to_string())),
            "expected index 1 {field} {code}, got {found:?}"
        );
        assert!(
            !found.iter().any(|(i, _, _)| *i == 0),
            "good item flagged: {found:?}"
        );
    }
    // All bad items of one batch are listed together.
    let all: Vec<Value> = cases.iter().map(|(v, _, _)| v.clone()).collect();
    let (st, body) = app
        .post(
            "/api/v1/batches",
            &json!({"batch_id": "b2", "payments": all}),
        )
        .await;
    assert_eq!(st, 422);
    assert!(codes(&body).len() >= cases.len() - 1, "{body}");
    nothing_stored(&app).await;

    // Malformed JSON and a body over the limit.
    let r = app
        .http
        .post(format!("{}/api/v1/batches", app.url))
        .header("content-type", "application/json")
        .body("{\"batch_id\": ")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_json");
    let many: Vec<Value> = (0..2000)
        .map(|i| payment(&format!("r{i}"), "mobile:256700000001@mtn", "1.00"))
        .collect();
    let (st, body) = app
        .post(
            "/api/v1/batches",
            &json!({"batch_id": "big", "payments": many}),
        )
        .await;
    assert_eq!(st, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    nothing_stored(&app).await;
}

#[tokio::test]
async fn resubmission_is_idempotent_and_conflicts_are_refused() {
    let app = api_only().await;
    let body = json!({"batch_id": "same", "sender_id": "prog-a", "payments": [
        payment("p1", "mobile:256700000001@mtn", "10.00"),
        payment("p2", "mobile:256700000002@mojaloop", "20.50"),
    ]});
    let (s1, first) = app.post("/api/v1/batches", &body).await;
    let (s2, second) = app.post("/api/v1/batches", &body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first, second);
    // 10.0 and 10.00 are the same amount: still the same batch.
    let mut same_amounts = body.clone();
    same_amounts["payments"][0]["amount"] = json!("10.0");
    let (s3, third) = app.post("/api/v1/batches", &same_amounts).await;
    assert_eq!((s3, &third), (202, &first));

    let mut changed = body.clone();
    changed["payments"][1]["amount"] = json!("20.51");
    let (st, err) = app.post("/api/v1/batches", &changed).await;
    assert_eq!(st, 409, "{err}");
    assert_eq!(err["error"]["code"], "batch_conflict");

    // A reference id reused by the same sender in another batch is refused...
    let (st, err) = app
        .post("/api/v1/batches", &json!({"batch_id": "other", "sender_id": "prog-a", "payments": [payment("p1", "mobile:256700000009@mtn", "1.00")]}))
        .await;
    assert_eq!(st, 422, "{err}");
    assert_eq!(
        err["error"]["details"]["items"][0]["code"],
        "reference_id.duplicate"
    );
    // ...but another sender may use it.
    let (st, _) = app
        .post("/api/v1/batches", &json!({"batch_id": "other", "sender_id": "prog-b", "payments": [payment("p1", "mobile:256700000009@mtn", "1.00")]}))
        .await;
    assert_eq!(st, 202);
    let counts = app.app.state.store.status_counts().await.expect("counts");
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 3);

    let id = first["id"].as_str().expect("id");
    let (st, view) = app.get(&format!("/api/v1/batches/{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(view["payment_count"], 2);
    assert_eq!(view["totals"][0]["status"], "received");
    assert_eq!(view["totals"][0]["amount"], "30.50");
}

#[tokio::test]
async fn cancel_only_before_sending() {
    let app = api_only().await;
    let batch = app
        .submit("c1", vec![payment("x1", "mobile:256700000001@mtn", "5.00")])
        .await;
    let p = app.payments(&batch).await.remove("x1").expect("x1");
    let id = p["id"].as_str().expect("id");
    let (st, body) = app
        .post(&format!("/api/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!((st, status(&body)), (200, "cancelled"), "{body}");
    let (st, body) = app
        .post(&format!("/api/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_cancellable");
    let (_, full) = app.get(&format!("/api/v1/payments/{id}")).await;
    let history: Vec<&str> = full["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["to"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(history, ["received", "cancelled"]);
    let (st, _) = app.post("/api/v1/payments/nope/cancel", &json!({})).await;
    assert_eq!(st, 404);
}

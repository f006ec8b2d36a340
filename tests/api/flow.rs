//! End to end through the dispatcher, the simulator, callbacks and polling.

use std::time::Duration;

use pil::simulator::SimConfig;
use serde_json::{Value, json};

use crate::helpers::{payment, spawn_app, spawn_with, status};

fn mtn(n: &str) -> String {
    format!("mobile:{n}@mtn")
}
fn ml(n: &str) -> String {
    format!("mobile:{n}@mojaloop")
}

#[tokio::test]
async fn mixed_batch_reaches_the_expected_final_states() {
    let app = spawn_app().await;
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        ("mtn-ok", mtn("256700000001"), "succeeded", None),
        ("mtn-ok-2", mtn("256700000002"), "succeeded", None),
        (
            "mtn-failed",
            mtn("46733123450"),
            "failed",
            Some("INTERNAL_PROCESSING_ERROR"),
        ),
        (
            "mtn-payee-not-found",
            mtn("46733123475"),
            "failed",
            Some("PAYEE_NOT_FOUND"),
        ),
        ("mtn-callback-lost", mtn("46733123471"), "succeeded", None),
        ("mtn-callback-twice", mtn("46733123472"), "succeeded", None),
        ("mtn-callback-early", mtn("46733123473"), "succeeded", None),
        ("mtn-429-then-ok", mtn("46733123474"), "succeeded", None),
        ("mtn-delayed", mtn("46733123454"), "succeeded", None),
        ("ml-ok", ml("256700000003"), "succeeded", None),
        ("ml-rejected", ml("46733123451"), "failed", Some("5104")),
        ("ml-no-funds", ml("46733123476"), "failed", Some("4001")),
        (
            "account-ok",
            "account:12345@mojaloop".to_string(),
            "succeeded",
            None,
        ),
        (
            "unroutable",
            "mobile:256700000004@nobank".to_string(),
            "rejected",
            Some("payee_fa.unroutable"),
        ),
    ];
    let batch = app
        .submit(
            "mixed",
            cases
                .iter()
                .map(|(r, fa, _, _)| payment(r, fa, "12.50"))
                .collect(),
        )
        .await;
    let all = app.wait_final(&batch).await;
    let stats = app.sim.simulator.stats();
    for (reference, _, want, code) in &cases {
        let p = &all[*reference];
        assert_eq!(status(p), *want, "{reference}: {p}");
        if let Some(code) = code {
            assert_eq!(p["reason_code"], *code, "{reference}: {p}");
        }
        let id = p["id"].as_str().expect("id");
        let executed = stats.executed.get(id).copied().unwrap_or(0);
        let expected_executions = u64::from(*want == "succeeded");
        assert_eq!(
            executed, expected_executions,
            "{reference} executed {executed} times"
        );
    }
    // 429 was retried (two submissions, one execution); nothing else was submitted twice.
    let retried = all["mtn-429-then-ok"]["id"].as_str().expect("id");
    assert_eq!(stats.submissions.get(retried), Some(&2));
    for (reference, _, _, _) in cases
        .iter()
        .filter(|c| c.0 != "mtn-429-then-ok" && c.0 != "unroutable")
    {
        let id = all[*reference]["id"].as_str().expect("id");
        assert_eq!(stats.submissions.get(id), Some(&1), "{reference}");
    }

    // History: every step recorded with the script versions that routed and mapped it.
    let id = all["mtn-ok"]["id"].as_str().expect("id");
    let (_, full) = app.get(&format!("/api/v1/payments/{id}")).await;
    let steps: Vec<&str> = full["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["to"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        steps,
        ["received", "routed", "sending", "accepted", "succeeded"],
        "{full}"
    );
    let routed = &full["history"][1];
    assert!(
        routed["route_version"]
            .as_str()
            .is_some_and(|v| v.len() == 12),
        "{routed}"
    );
    assert!(
        full["history"][2]["adapter_version"].as_str().is_some(),
        "{full}"
    );
    assert_eq!(full["dfsp"], "mtn-momo");
    assert_eq!(full["dispatch_attempts"][0]["http_status"], 202);

    let (_, view) = app.get(&format!("/api/v1/batches/{batch}")).await;
    assert_eq!(view["progress_percent"], 100);
    assert_eq!(view["final_count"], cases.len());
}

#[tokio::test]
async fn a_timeout_is_resolved_by_status_query_never_by_resending() {
    let app = spawn_app().await;
    let batch = app
        .submit(
            "timeouts",
            vec![
                payment("mtn-timeout", &mtn("46733123470"), "3.00"),
                payment("ml-timeout", &ml("46733123470"), "3.00"),
            ],
        )
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(30), |p| {
            matches!(status(p), "succeeded" | "unknown") && p["attempts"] == 1
        })
        .await;
    // MTN can be asked: the status query finds the executed transfer.
    let mtn_p = &all["mtn-timeout"];
    let all = if status(mtn_p) != "succeeded" {
        app.wait_until(&batch, Duration::from_secs(30), |p| {
            p["reference_id"] != "mtn-timeout" || status(p) == "succeeded"
        })
        .await
    } else {
        all
    };
    assert_eq!(status(&all["mtn-timeout"]), "succeeded");
    // The Mojaloop SDK has no lookup without the transferId: it waits for an operator.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = app.payments(&batch).await;
    assert_eq!(
        status(&all["ml-timeout"]),
        "unknown",
        "{}",
        all["ml-timeout"]
    );
    // Operators find it among the payments waiting in `unknown`, across batches.
    let (code, waiting) = app
        .get("/api/v1/payments?status=unknown&dfsp=mojaloop-sdk")
        .await;
    assert_eq!(code, 200, "{waiting}");
    let listed: Vec<&str> = waiting["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| p["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(listed, [all["ml-timeout"]["id"].as_str().expect("id")]);
    let (_, none) = app
        .get("/api/v1/payments?status=unknown&dfsp=mtn-momo")
        .await;
    assert_eq!(none["payments"], json!([]), "{none}");
    let (code, bad) = app.get("/api/v1/payments?status=lost").await;
    assert_eq!(code, 400, "{bad}");
    let stats = app.sim.simulator.stats();
    for r in ["mtn-timeout", "ml-timeout"] {
        let id = all[r]["id"].as_str().expect("id");
        assert_eq!(stats.submissions.get(id), Some(&1), "{r} was sent again");
        assert_eq!(stats.executed.get(id), Some(&1), "{r}");
    }
}

#[tokio::test]
async fn duplicate_and_out_of_order_callbacks_are_harmless() {
    let app = spawn_app().await;
    // 453 stays PENDING at the simulator: PIL holds it in `accepted`.
    let batch = app
        .submit("cb", vec![payment("pending", &mtn("46733123453"), "7.00")])
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(20), |p| status(p) == "accepted")
        .await;
    let id = all["pending"]["id"].as_str().expect("id").to_string();
    let path = format!("/callbacks/mtn-momo/transfer/{id}");
    let success = json!({"amount": "7", "currency": "KES", "externalId": id, "financialTransactionId": "F1", "status": "SUCCESSFUL",
        "payee": {"partyIdType": "MSISDN", "partyId": "46733123453"}});
    let pending = json!({"amount": "7", "currency": "KES", "externalId": id, "status": "PENDING"});
    let failed = json!({"amount": "7", "currency": "KES", "externalId": id, "status": "FAILED", "reason": "PAYER_NOT_FOUND"});

    let put = |body: Value| {
        let url = format!("{}{path}", app.url);
        let http = app.http.clone();
        async move {
            let r = http.put(url).json(&body).send().await.expect("put");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    assert_eq!(
        put(pending.clone()).await,
        (200, json!({"result": "no_change"}))
    );
    assert_eq!(
        put(success.clone()).await,
        (200, json!({"result": "applied"}))
    );
    assert_eq!(
        put(success.clone()).await,
        (200, json!({"result": "no_change"}))
    );
    assert_eq!(put(pending).await, (200, json!({"result": "no_change"})));
    assert_eq!(put(failed).await, (200, json!({"result": "no_change"})));
    let (_, full) = app.get(&format!("/api/v1/payments/{id}")).await;
    assert_eq!(status(&full), "succeeded");
    let succeeded_events = full["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["to"] == "succeeded")
        .count();
    assert_eq!(succeeded_events, 1);
    // Callbacks for unknown DFSPs and payments are refused or recorded, never applied.
    let r = app
        .http
        .post(format!("{}/callbacks/nobank/x", app.url))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 404);
    let r = app
        .http
        .post(format!("{}/callbacks/mtn-momo/transfer/nope", app.url))
        .json(&success)
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"result": "unknown_payment"})
    );
}

#[tokio::test]
async fn a_script_error_fails_only_its_payment() {
    let app = spawn_with(SimConfig::default(), |_, dir| {
        let path = dir.join("rules/routing.rhai");
        let text = std::fs::read_to_string(&path).expect("read");
        let text = text.replace(
            "fn route(p, ctx) {\n",
            "fn route(p, ctx) {\n    if p.reference_id == \"boom\" { return p.no_such_field; }\n",
        );
        std::fs::write(&path, text).expect("write");
    })
    .await;
    let batch = app
        .submit(
            "script-error",
            vec![
                payment("before", &mtn("256700000011"), "1.00"),
                payment("boom", &mtn("256700000012"), "1.00"),
                payment("after", &ml("256700000013"), "1.00"),
            ],
        )
        .await;
    let all = app.wait_final(&batch).await;
    assert_eq!(status(&all["before"]), "succeeded");
    assert_eq!(status(&all["after"]), "succeeded");
    let boom = &all["boom"];
    assert_eq!(status(boom), "failed");
    assert_eq!(boom["reason_code"], "script_error");
    let reason = boom["reason"].as_str().expect("reason");
    let text = std::fs::read_to_string(app.dir.path().join("rules/routing.rhai")).expect("read");
    let line = text
        .lines()
        .position(|l| l.contains("no_such_field"))
        .expect("line")
        + 1;
    assert!(
        reason.contains(&format!("routing.rhai:{line}:")),
        "{reason}"
    );
    assert!(reason.contains("no_such_field"), "{reason}");
    assert!(
        !app.sim
            .simulator
            .stats()
            .submissions
            .contains_key(boom["id"].as_str().expect("id"))
    );
}

#[tokio::test]
async fn openapi_and_health_are_served() {
    let app = spawn_app().await;
    let (st, doc) = app.get("/openapi.json").await;
    assert_eq!(st, 200);
    for path in [
        "/api/v1/batches",
        "/api/v1/batches/{id}",
        "/api/v1/batches/{id}/payments",
        "/api/v1/payments",
        "/api/v1/payments/{id}",
        "/api/v1/payments/{id}/cancel",
        "/disbursement",
        "/disbursement/{disbursementId}",
        "/disbursementCheck",
        "/health",
        "/disburse",
        "/disburse/sync/disburse",
        "/disburse/txn/status",
        "/disburse/sync/txn/status",
        "/admin/directory",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert!(doc["components"]["securitySchemes"]["sender_token"].is_object());
    assert_eq!(app.get("/healthz").await.0, 200);
    let (st, ready) = app.get("/readyz").await;
    assert_eq!(st, 200);
    assert!(ready["adapters"]["mtn-momo"].is_string(), "{ready}");
}

#[tokio::test]
async fn cancel_after_sending_is_refused() {
    let app = spawn_app().await;
    let batch = app
        .submit(
            "late-cancel",
            vec![payment("sent", &mtn("256700000021"), "2.00")],
        )
        .await;
    let all = app.wait_final(&batch).await;
    let id = all["sent"]["id"].as_str().expect("id");
    let (st, body) = app
        .post(&format!("/api/v1/payments/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(st, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_cancellable");
}

#[tokio::test]
async fn an_unreachable_dfsp_falls_back_only_after_proving_nothing_was_sent() {
    let app = spawn_with(SimConfig::default(), |_, dir| {
        // Nothing listens on port 9: connections are refused, so nothing can have executed.
        let path = dir.join("adapters/mtn-momo/adapter.toml");
        let text = std::fs::read_to_string(&path).expect("read");
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("base_url") {
                    "base_url = \"http://127.0.0.1:9\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&path, text.join("\n")).expect("write");
    })
    .await;
    let refs = ["down-1", "down-2", "down-3", "down-4", "down-5", "down-6"];
    let batch = app
        .submit(
            "mtn-down",
            refs.iter()
                .enumerate()
                .map(|(i, r)| payment(r, &mtn(&format!("25670000004{i}")), "4.00"))
                .collect(),
        )
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(40), |p| {
            status(p) == "succeeded"
        })
        .await;
    let stats = app.sim.simulator.stats();
    for r in refs {
        let p = &all[r];
        assert_eq!(p["dfsp"], "mojaloop-sdk", "{p}");
        let id = p["id"].as_str().expect("id");
        assert_eq!(stats.executed.get(id), Some(&1), "{r}");
        let (_, full) = app.get(&format!("/api/v1/payments/{id}")).await;
        let history = full["history"].as_array().expect("history");
        // Every MTN attempt failed before reaching MTN (no HTTP answer); Mojaloop paid.
        let attempts = full["dispatch_attempts"].as_array().expect("attempts");
        assert!(
            attempts
                .iter()
                .filter(|a| a["dfsp"] == "mtn-momo")
                .all(|a| a["http_status"].is_null() && a["error"].is_string()),
            "{full}"
        );
        assert!(
            history
                .iter()
                .any(|e| e["reason_code"] == "retry" || e["reason_code"] == "fallback"),
            "{full}"
        );
        assert_eq!(attempts.last().expect("last")["dfsp"], "mojaloop-sdk");
        assert_eq!(history.last().expect("last")["to"], "succeeded");
    }
}

#[tokio::test]
async fn a_planned_stop_leaves_nothing_in_flight() {
    let app = spawn_with(
        SimConfig {
            latency_ms: 200,
            ..SimConfig::default()
        },
        |s, _| {
            s.claim_size = 10;
            s.max_outstanding = 10;
        },
    )
    .await;
    let batch = app
        .submit(
            "drain",
            (0..60)
                .map(|i| payment(&format!("d{i}"), &ml(&format!("2567001{i:05}")), "1.00"))
                .collect(),
        )
        .await;
    app.wait_until(&batch, Duration::from_secs(20), |_| true)
        .await;
    // Wait until some are on the wire, then stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !app
        .payments(&batch)
        .await
        .values()
        .any(|p| status(p) == "sending")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was ever sending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        app.app.dispatcher.drain(Duration::from_secs(15)).await,
        "drain timed out"
    );
    let all = app.payments(&batch).await;
    assert!(
        all.values().all(|p| status(p) != "sending"),
        "still sending after drain"
    );
    assert!(all.values().any(|p| status(p) == "succeeded"));
    // What was not claimed before the stop stays untouched for the next start.
    let waiting = all.values().filter(|p| status(p) == "received").count();
    assert!(
        waiting > 0,
        "the stop came too late to leave anything waiting"
    );
    let sent = app.sim.simulator.stats().submissions.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sim.simulator.stats().submissions.len(), sent);
    let after = app.payments(&batch).await;
    assert_eq!(
        after.values().filter(|p| status(p) == "received").count(),
        waiting
    );
}

#[tokio::test]
async fn an_access_token_expiring_mid_batch_is_fetched_again_and_nothing_is_paid_twice() {
    let app = spawn_with(
        SimConfig {
            token_ttl_s: 1,
            latency_ms: 60,
            ..SimConfig::default()
        },
        |_, dir| {
            // Few requests in flight, so the batch outlives several tokens.
            let toml = dir.join("adapters/mtn-momo/adapter.toml");
            let text = std::fs::read_to_string(&toml).expect("read");
            let text = text.replace("max_in_flight = 32", "max_in_flight = 2");
            std::fs::write(&toml, text).expect("write");
        },
    )
    .await;
    let payments: Vec<Value> = (0..50)
        .map(|i| payment(&format!("tok-{i}"), &mtn(&format!("2567000003{i:02}")), "2"))
        .collect();
    let batch = app.submit("token-expiry", payments).await;
    let done = app.wait_final(&batch).await;
    assert!(done.values().all(|p| status(p) == "succeeded"), "{done:?}");
    let stats = app.sim.simulator.stats();
    assert!(
        stats.tokens_issued >= 2,
        "the token expired during the batch: {stats:?}"
    );
    for p in done.values() {
        let id = p["id"].as_str().expect("id");
        assert_eq!(stats.executed.get(id), Some(&1), "{p}");
    }
}

#[tokio::test]
async fn every_business_failure_ends_as_the_simulator_predicts_for_mtn_and_mojaloop() {
    use pil::simulator::{Dfsp, Expected, expected_outcome};
    let app = spawn_app().await;
    let suffixes = [
        "450", "451", "452", "455", "456", "457", "460", "461", "475", "476",
    ];
    let mut cases = Vec::new();
    for s in suffixes {
        let payee = format!("46733123{s}");
        cases.push((
            format!("mtn-{s}"),
            mtn(&payee),
            Dfsp::MtnMomo,
            payee.clone(),
        ));
        cases.push((format!("ml-{s}"), ml(&payee), Dfsp::MojaloopSdk, payee));
    }
    let batch = app
        .submit(
            "every-failure",
            cases
                .iter()
                .map(|(r, fa, _, _)| payment(r, fa, "4.00"))
                .collect(),
        )
        .await;
    let all = app.wait_final(&batch).await;
    let stats = app.sim.simulator.stats();
    for (reference, _, dfsp, payee) in &cases {
        let p = &all[reference.as_str()];
        let id = p["id"].as_str().expect("id");
        // MTN refuses some payees at submission (HTTP 500 NOT_ALLOWED, INVALID_CURRENCY), which
        // proves it did not execute them: routing's fallback, the Mojaloop switch, gets them.
        let refused_by_mtn = *dfsp == Dfsp::MtnMomo
            && pil::simulator::trigger(payee).is_some_and(|t| t.mtn_rejection().is_some());
        let (dfsp, sends) = if refused_by_mtn {
            (Dfsp::MojaloopSdk, 2)
        } else {
            (*dfsp, 1)
        };
        let want_dfsp = if dfsp == Dfsp::MtnMomo {
            "mtn-momo"
        } else {
            "mojaloop-sdk"
        };
        assert_eq!(p["dfsp"], want_dfsp, "{reference}: {p}");
        match expected_outcome(dfsp, payee) {
            Expected::Failed(code) => {
                assert_eq!(status(p), "failed", "{reference}: {p}");
                assert_eq!(p["reason_code"], code, "{reference}: {p}");
                assert_eq!(stats.executed.get(id), None, "{reference} was executed");
            }
            Expected::Succeeded => {
                assert_eq!(status(p), "succeeded", "{reference}: {p}");
                assert_eq!(stats.executed.get(id), Some(&1), "{reference}");
            }
            other => panic!("{reference}: the simulator predicts {other:?}, not a final state"),
        }
        assert_eq!(stats.submissions.get(id), Some(&sends), "{reference}");
    }
}

//! Safaricom M-Pesa B2C end to end: the real app, the `mpesa-b2c` adapter and the simulator's
//! Daraja API over loopback HTTP. Every test also proves that no payment was executed twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pil::simulator::SimConfig;
use serde_json::{Value, json};

use crate::helpers::{TestApp, payment, repo, spawn_with, status};

fn mp(n: &str) -> String {
    format!("mobile:{n}@mpesa")
}

fn id(p: &Value) -> &str {
    p["id"].as_str().expect("id")
}

/// Every payment of `all` was executed at most once; those that succeeded exactly once.
fn assert_paid_at_most_once(app: &TestApp, all: &BTreeMap<String, Value>) {
    let stats = app.sim.simulator.stats();
    for (reference, p) in all {
        let executed = stats.executed.get(id(p)).copied().unwrap_or(0);
        let want = u64::from(status(p) == "succeeded");
        assert_eq!(executed, want, "{reference} executed {executed} times: {p}");
    }
}

/// Waits (up to a deadline) until the simulator has answered `n` status queries.
async fn wait_for_status_queries(app: &TestApp, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.sim.simulator.stats().status_queries < n {
        assert!(Instant::now() < deadline, "fewer than {n} status queries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sets `key = value` in the installed mpesa-b2c adapter.toml.
fn set_adapter_line(dir: &std::path::Path, key: &str, value: &str) {
    let path = dir.join("adapters/mpesa-b2c/adapter.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} ")) {
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, text.join("\n")).expect("write");
}

#[tokio::test]
async fn mpesa_payments_reach_their_final_states() {
    let app = spawn_with(SimConfig::default(), |_, _| {}).await;
    let cases: Vec<(&str, String, &str, &str, Option<&str>)> = vec![
        ("ok", mp("254700000001"), "150", "succeeded", None),
        (
            "ok-cents-zero",
            mp("254700000002"),
            "150.00",
            "succeeded",
            None,
        ),
        (
            "ok-safaricom",
            "mobile:+254700000003@safaricom".into(),
            "99",
            "succeeded",
            None,
        ),
        ("ok-national", mp("0700000004"), "10", "succeeded", None),
        (
            "initiator-invalid",
            mp("46733123451"),
            "100",
            "failed",
            Some("2001"),
        ),
        (
            "debit-party-state",
            mp("46733123455"),
            "100",
            "failed",
            Some("11"),
        ),
        (
            "unregistered",
            mp("46733123456"),
            "100",
            "failed",
            Some("2040"),
        ),
        (
            "initiator-not-allowed",
            mp("46733123457"),
            "100",
            "failed",
            Some("21"),
        ),
        ("product", mp("46733123460"), "100", "failed", Some("2028")),
        ("daily-limit", mp("46733123461"), "100", "failed", Some("4")),
        (
            "no-such-operator",
            mp("46733123475"),
            "100",
            "failed",
            Some("SFC_IC0003"),
        ),
        (
            "insufficient",
            mp("46733123476"),
            "100",
            "failed",
            Some("1"),
        ),
        (
            "below-minimum",
            mp("254700000005"),
            "5",
            "failed",
            Some("2"),
        ),
        ("slow", mp("46733123454"), "100", "succeeded", None),
        ("result-twice", mp("46733123472"), "100", "succeeded", None),
        (
            "result-before-ack",
            mp("46733123473"),
            "100",
            "succeeded",
            None,
        ),
        (
            "spike-arrest-once",
            mp("46733123474"),
            "100",
            "succeeded",
            None,
        ),
        (
            "fractional",
            mp("254700000006"),
            "100.50",
            "rejected",
            Some("amount.not_whole"),
        ),
        (
            "not-mobile",
            "account:12345@mpesa".into(),
            "100",
            "rejected",
            Some("payee_fa.unroutable"),
        ),
    ];
    let batch = app
        .submit(
            "mpesa-mixed",
            cases
                .iter()
                .map(|(r, fa, amount, _, _)| payment(r, fa, amount))
                .collect(),
        )
        .await;
    let all = app.wait_final(&batch).await;
    let stats = app.sim.simulator.stats();
    for (reference, _, _, want, code) in &cases {
        let p = &all[*reference];
        assert_eq!(status(p), *want, "{reference}: {p}");
        if let Some(code) = code {
            assert_eq!(p["reason_code"], *code, "{reference}: {p}");
        }
        let submissions = stats.submissions.get(id(p)).copied().unwrap_or(0);
        let expected = match *reference {
            "fractional" | "not-mobile" => 0,
            "spike-arrest-once" => 2,
            _ => 1,
        };
        assert_eq!(
            submissions, expected,
            "{reference} submitted {submissions} times"
        );
        if *want != "rejected" {
            assert_eq!(p["dfsp"], "mpesa-b2c", "{reference}: {p}");
        }
    }
    assert_paid_at_most_once(&app, &all);
    let fractional = &all["fractional"];
    assert!(
        fractional["reason"]
            .as_str()
            .is_some_and(|r| r.contains("mpesa-b2c: takes whole amounts of KES only")),
        "{fractional}"
    );

    // The full story of one payment: the OriginatorConversationID is the idempotency key and
    // the dfsp_ref; the receipt is kept as the reason.
    let (_, full) = app
        .get(&format!("/api/v1/payments/{}", id(&all["ok"])))
        .await;
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
    let attempt = &full["dispatch_attempts"][0];
    assert_eq!(attempt["http_status"], 200);
    assert!(
        attempt["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/mpesa/b2c/v3/paymentrequest"))
    );
    assert_eq!(full["dfsp_ref"], attempt["idempotency_key"], "{full}");
    assert!(
        full["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("M-Pesa receipt S")),
        "{full}"
    );
    assert!(
        full["history"][3]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("ConversationID AG_")),
        "{full}"
    );
    // The 474 payment was refused once (spike arrest, surely not queued) and resent with the
    // same OriginatorConversationID.
    let (_, spiked) = app
        .get(&format!(
            "/api/v1/payments/{}",
            id(&all["spike-arrest-once"])
        ))
        .await;
    let attempts = spiked["dispatch_attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{spiked}");
    assert_eq!(attempts[0]["http_status"], 500);
    assert_eq!(
        attempts[0]["idempotency_key"],
        attempts[1]["idempotency_key"]
    );
}

#[tokio::test]
async fn a_timeout_is_resolved_by_the_transaction_status_api_never_by_resending() {
    // Every submission is executed but answered late (PIL times out), and its Result is lost:
    // only the Transaction Status API (answering by callback) can tell PIL what happened.
    let app = spawn_with(
        SimConfig {
            timeout_rate: 1.0,
            callback_loss_rate: 1.0,
            ..SimConfig::default()
        },
        |_, _| {},
    )
    .await;
    let batch = app
        .submit(
            "mpesa-timeouts",
            vec![
                payment("t-1", &mp("254700000011"), "20"),
                payment("t-2", &mp("254700000012"), "30"),
            ],
        )
        .await;
    let all = app.wait_final(&batch).await;
    let stats = app.sim.simulator.stats();
    for (reference, p) in &all {
        assert_eq!(status(p), "succeeded", "{reference}: {p}");
        assert_eq!(
            stats.submissions.get(id(p)),
            Some(&1),
            "{reference} was resent"
        );
        let (_, full) = app.get(&format!("/api/v1/payments/{}", id(p))).await;
        let history = full["history"].as_array().expect("history");
        let unknown = history
            .iter()
            .position(|e| e["to"] == "unknown")
            .expect("went unknown");
        assert_eq!(history[unknown]["reason_code"], "no_response", "{full}");
        assert_eq!(history.last().expect("last")["to"], "succeeded");
        let kinds: Vec<&str> = full["dispatch_attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .map(|a| a["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "submit").count(),
            1,
            "{full}"
        );
        assert!(kinds.contains(&"status"), "{full}");
    }
    assert!(stats.callbacks_lost >= 2);
    assert!(stats.status_queries >= 2);
    assert_paid_at_most_once(&app, &all);
}

#[tokio::test]
async fn lost_results_are_recovered_by_polling() {
    let app = spawn_with(
        SimConfig {
            callback_loss_rate: 1.0,
            ..SimConfig::default()
        },
        |_, _| {},
    )
    .await;
    let batch = app
        .submit(
            "mpesa-lost",
            vec![
                payment("paid", &mp("254700000021"), "250"),
                payment("paid-2", &mp("254700000022"), "300"),
                payment("trigger-lost", &mp("46733123471"), "40"),
                // Below KES 10: fails, and only the status query says so.
                payment("too-small", &mp("254700000023"), "9"),
            ],
        )
        .await;
    let all = app.wait_final(&batch).await;
    for r in ["paid", "paid-2", "trigger-lost"] {
        assert_eq!(status(&all[r]), "succeeded", "{r}: {}", all[r]);
        assert!(
            all[r]["reason"]
                .as_str()
                .is_some_and(|x| x.starts_with("M-Pesa receipt")),
            "{}",
            all[r]
        );
    }
    let small = &all["too-small"];
    assert_eq!(status(small), "failed", "{small}");
    assert_eq!(small["reason_code"], "Failed", "{small}");
    assert!(
        small["reason"]
            .as_str()
            .is_some_and(|r| r.contains("smallest transaction value")),
        "{small}"
    );
    let stats = app.sim.simulator.stats();
    assert_eq!(stats.callbacks_lost, 4);
    assert!(stats.status_queries >= 4);
    for p in all.values() {
        assert_eq!(stats.submissions.get(id(p)), Some(&1));
    }
    assert_paid_at_most_once(&app, &all);
}

#[tokio::test]
async fn duplicate_late_and_queue_timeout_callbacks_are_harmless() {
    let app = spawn_with(SimConfig::default(), |_, _| {}).await;
    let batch = app
        .submit(
            "mpesa-callbacks",
            vec![
                payment("twice", &mp("46733123472"), "100"),
                payment("queue-timeout", &mp("46733123452"), "100"),
                payment("pending", &mp("46733123453"), "100"),
                payment("gateway-500", &mp("46733123450"), "100"),
            ],
        )
        .await;
    let all = app
        .wait_until(
            &batch,
            Duration::from_secs(20),
            |p| match p["reference_id"].as_str() {
                Some("twice") => status(p) == "succeeded",
                Some("gateway-500") => status(p) == "unknown",
                _ => status(p) == "accepted",
            },
        )
        .await;
    // Let the poller query every open payment a few times: the queue timeout and the gateway
    // 500 stay open (nothing proves they will not run), and nothing is ever resent.
    wait_for_status_queries(&app, 9).await;
    let all_after = app.payments(&batch).await;
    let stats = app.sim.simulator.stats();
    for (reference, p) in &all_after {
        assert_eq!(
            stats.submissions.get(id(p)),
            Some(&1),
            "{reference} was resent"
        );
    }
    assert_eq!(status(&all_after["queue-timeout"]), "accepted");
    assert_eq!(status(&all_after["pending"]), "accepted");
    assert_eq!(status(&all_after["gateway-500"]), "unknown");
    let (_, broken) = app
        .get(&format!(
            "/api/v1/payments/{}",
            id(&all_after["gateway-500"])
        ))
        .await;
    let went_unknown = broken["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|e| e["to"] == "unknown")
        .cloned()
        .unwrap_or_default();
    assert_eq!(went_unknown["reason_code"], "500.003.1001", "{broken}");
    assert_paid_at_most_once(&app, &all_after);

    // The duplicated Result was applied once.
    let twice = id(&all["twice"]);
    let (_, full) = app.get(&format!("/api/v1/payments/{twice}")).await;
    let succeeded = full["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["to"] == "succeeded")
        .count();
    assert_eq!(succeeded, 1, "{full}");

    // Replayed and contradicting Results change nothing once final.
    let post = |path: String, body: Value| {
        let url = format!("{}/callbacks/mpesa-b2c{path}", app.url);
        let http = app.http.clone();
        async move {
            let r = http.post(url).json(&body).send().await.expect("post");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let failure = |ocid: &Value| {
        json!({"Result": {"ResultType": 0, "ResultCode": 2001, "ResultDesc": "The initiator information is invalid.",
                          "OriginatorConversationID": ocid, "ConversationID": "AG_x", "TransactionID": "SXX"}})
    };
    assert_eq!(
        post(format!("/result/{twice}"), failure(&full["dfsp_ref"])).await,
        (200, json!({"result": "no_change"}))
    );
    // A status query that timed out in Daraja's queue says nothing about the payment.
    let broken_id = id(&all_after["gateway-500"]).to_string();
    assert_eq!(
        post(
            format!("/status-timeout/{broken_id}"),
            json!({"OriginatorConversationID": "ts-1"})
        )
        .await,
        (200, json!({"result": "no_change"}))
    );
    let (_, broken) = app.get(&format!("/api/v1/payments/{broken_id}")).await;
    assert_eq!(status(&broken), "unknown", "{broken}");

    // A Result without our path suffix is matched on its OriginatorConversationID (dfsp_ref).
    let pending = &all_after["pending"];
    let ocid = pending["dfsp_ref"].clone();
    assert!(ocid.is_string(), "{pending}");
    let success = json!({"Result": {"ResultType": 0, "ResultCode": 0,
        "ResultDesc": "The service request is processed successfully.",
        "OriginatorConversationID": ocid, "ConversationID": "AG_y", "TransactionID": "SABCDEFGHI"}});
    assert_eq!(
        post("/results".into(), success.clone()).await,
        (200, json!({"result": "applied"}))
    );
    assert_eq!(
        post("/results".into(), success).await,
        (200, json!({"result": "no_change"}))
    );
    let (_, p) = app.get(&format!("/api/v1/payments/{}", id(pending))).await;
    assert_eq!(status(&p), "succeeded");
    assert_eq!(p["reason"], "M-Pesa receipt SABCDEFGHI");
    // A Result for an OriginatorConversationID PIL never used matches nothing.
    let stranger =
        json!({"Result": {"ResultType": 0, "ResultCode": 0, "OriginatorConversationID": "nope"}});
    assert_eq!(
        post("/results".into(), stranger).await,
        (200, json!({"result": "unknown_payment"}))
    );
}

#[tokio::test]
async fn tokens_expire_mid_batch_and_are_renewed() {
    // A two-second token and one request at a time with 100 ms latency: the batch outlives
    // several tokens.
    let app = spawn_with(
        SimConfig {
            token_ttl_s: 2,
            latency_ms: 100,
            ..SimConfig::default()
        },
        |_, dir| set_adapter_line(dir, "max_in_flight", "1"),
    )
    .await;
    let batch = app
        .submit(
            "mpesa-token-expiry",
            (0..30)
                .map(|i| payment(&format!("e{i:02}"), &mp(&format!("2547001000{i:02}")), "50"))
                .collect(),
        )
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(60), |p| {
            status(p) == "succeeded"
        })
        .await;
    let stats = app.sim.simulator.stats();
    for (reference, p) in &all {
        assert_eq!(stats.submissions.get(id(p)), Some(&1), "{reference}");
    }
    assert_paid_at_most_once(&app, &all);
    let tokens = app.sim.simulator.mpesa_tokens();
    assert!(tokens.issued >= 2, "{tokens:?}");
}

#[tokio::test]
async fn a_superseded_token_is_renewed_once_for_all_requests() {
    let app = spawn_with(SimConfig::default(), |_, _| {}).await;
    let first = app
        .submit(
            "mpesa-token-1",
            (0..10)
                .map(|i| payment(&format!("a{i}"), &mp(&format!("25470020000{i}")), "50"))
                .collect(),
        )
        .await;
    app.wait_until(&first, Duration::from_secs(20), |p| {
        status(p) == "succeeded"
    })
    .await;
    assert_eq!(app.sim.simulator.mpesa_tokens().issued, 1);
    // Another client of the same Daraja app takes a token: PIL's is no longer valid.
    let r = app
        .http
        .get(format!(
            "{}/oauth/v1/generate?grant_type=client_credentials",
            app.sim.base_url()
        ))
        .basic_auth("pil-sim-consumer-key", Some("pil-sim-consumer-secret"))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 200);
    let second = app
        .submit(
            "mpesa-token-2",
            (0..20)
                .map(|i| payment(&format!("b{i}"), &mp(&format!("2547003000{i:02}")), "50"))
                .collect(),
        )
        .await;
    let all = app
        .wait_until(&second, Duration::from_secs(20), |p| {
            status(p) == "succeeded"
        })
        .await;
    let tokens = app.sim.simulator.mpesa_tokens();
    // PIL's first token, the other client's, and one renewal by PIL however many of its
    // requests were refused together.
    assert_eq!(tokens.issued, 3, "{tokens:?}");
    assert!(tokens.refused >= 1, "{tokens:?}");
    let stats = app.sim.simulator.stats();
    for (reference, p) in &all {
        assert_eq!(stats.submissions.get(id(p)), Some(&1), "{reference}");
        assert_eq!(p["attempts"], 1, "{reference}: {p}");
    }
    assert_paid_at_most_once(&app, &all);
}

#[test]
fn route_dry_run_shows_the_daraja_request_without_the_security_credential() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("payment.json");
    std::fs::write(
        &file,
        r#"{"reference_id": "r1", "payee_fa": "mobile:254712345678@mpesa", "amount": "1500.00", "currency": "KES", "note": "Cash transfer, cycle 3"}"#,
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pil"))
        .arg("route")
        .arg(&file)
        .env("PIL_RULES_DIR", repo().join("rules"))
        .env("PIL_ADAPTERS_DIR", repo().join("adapters"))
        .env_remove("MPESA_SECURITY_CREDENTIAL")
        .output()
        .expect("run pil route");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).expect("JSON output");
    assert_eq!(v["decision"]["dfsps"], json!(["mpesa-b2c"]));
    let req = &v["candidates"][0]["request"];
    let body = &req["body"];
    assert!(
        req["url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/mpesa/b2c/v3/paymentrequest"))
    );
    // Whole shillings as a JSON number.
    assert_eq!(body["Amount"], json!(1500));
    assert_eq!(body["PartyB"], "254712345678");
    assert_eq!(body["CommandID"], "BusinessPayment");
    assert_eq!(body["Remarks"], "Cash transfer, cycle 3");
    assert_eq!(
        body["OriginatorConversationID"],
        "00000000-0000-4000-8000-000000000000"
    );
    assert!(
        body["ResultURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://<public_url>/callbacks/mpesa-b2c/result/"))
    );
    assert_eq!(body["SecurityCredential"], "***");
    assert_eq!(req["headers"]["Authorization"], "***");
    for secret in [
        "pil-sim-security-credential",
        "pil-sim-consumer-key",
        "pil-sim-consumer-secret",
    ] {
        assert!(!stdout.contains(secret), "{secret} leaked: {stdout}");
    }

    // A fraction of a shilling is refused at routing, with its own reason code.
    std::fs::write(
        &file,
        r#"{"payee_fa": "mobile:254712345678@mpesa", "amount": "10.50", "currency": "KES"}"#,
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pil"))
        .arg("route")
        .arg(&file)
        .env("PIL_RULES_DIR", repo().join("rules"))
        .env("PIL_ADAPTERS_DIR", repo().join("adapters"))
        .output()
        .expect("run pil route");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["decision"]["reject"], "amount.not_whole", "{v}");
}

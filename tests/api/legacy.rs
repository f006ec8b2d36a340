//! The legacy PIL API as the OpenG2P Odoo module calls it, end to end against the simulator.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_with};
use crate::spec::Spec;

const TOKEN: &str = "admin-secret-for-tests";

fn pil_spec() -> Spec {
    Spec::load(&crate::helpers::repo().join("specs/pil-disbursement-api-v0.1.0.yaml"))
}

async fn app_with_deadline(deadline_ms: u64) -> TestApp {
    spawn_with(Default::default(), move |s, _| {
        s.legacy_deadline_ms = deadline_ms;
        s.admin_token = Some(TOKEN.into());
    })
    .await
}

async fn import(app: &TestApp, csv: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/admin/directory", app.url))
        .header("content-type", "text/csv")
        .body(csv.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("import");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Posts a body exactly as given (the Odoo module's JSON numbers stay numbers).
async fn post_raw(app: &TestApp, path: &str, body: String) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}{path}", app.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Phone numbers 2567000000NN: even NN through MTN, odd through the Mojaloop switch.
fn phone(i: usize) -> String {
    format!("2567{i:08}")
}

fn directory_csv(n: usize) -> String {
    let mut csv = String::from("id_type,id_value,fa,region\n");
    for i in 0..n {
        let provider = if i % 2 == 0 { "mtn" } else { "mojaloop" };
        csv.push_str(&format!(
            "PHONE,{},mobile:{}@{provider},r{}\n",
            phone(i),
            phone(i),
            i % 3
        ));
    }
    // Simulator trigger 451: the DFSP rejects the transfer.
    csv.push_str("PHONE,46733123451,mobile:46733123451@mojaloop,r0\n");
    csv
}

/// The Odoo module's request: `amount` a JSON number such as 100.0, no reference per payee.
fn odoo_body(id: &str, payees: &[(String, &str)]) -> String {
    let list: Vec<String> = payees
        .iter()
        .map(|(value, amount)| {
            format!(
                r#"{{"payeeIdType": "PHONE", "payeeIdValue": "{value}", "amount": {amount}, "currency": "KES"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"note": "Program: Cash. Cycle ID - C1", "disbursementId": "{id}", "payeeList": [{}]}}"#,
        list.join(", ")
    )
}

fn statuses(body: &Value) -> Vec<String> {
    body["payeeResults"]
        .as_array()
        .expect("payeeResults")
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn odoo_shaped_disbursement_gets_final_results_by_position() {
    let app = app_with_deadline(20_000).await;
    let (status, body) = import(&app, &directory_csv(500), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["imported"], 501);

    let mut payees: Vec<(String, &str)> = (0..497).map(|i| (phone(i), "100.0")).collect();
    payees.insert(3, ("46733123451".into(), "250.5"));
    payees.insert(7, ("999000111".into(), "100.0")); // not in the directory
    payees.insert(9, (phone(497), "12.345")); // KES has 2 decimals
    assert_eq!(payees.len(), 500);
    let started = Instant::now();
    let (status, body) = post_raw(&app, "/disbursement", odoo_body("odoo-batch-1", &payees)).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(body["disbursementId"], "odoo-batch-1");
    let results = body["payeeResults"].as_array().expect("results");
    assert_eq!(results.len(), 500);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r["payeeIdValue"],
            payees[i].0.as_str(),
            "result {i} is out of order"
        );
    }
    let spec = pil_spec();
    spec.validate_tolerant("DisbursementResponse", &body, &["payeeList"])
        .unwrap_or_else(|e| panic!("response does not match the spec: {e:?}"));
    for r in results {
        spec.validate("IndividualPayeeResult", r)
            .unwrap_or_else(|e| panic!("{r} does not match the spec: {e:?}"));
    }
    let s = statuses(&body);
    assert_eq!(s[3], "REJECTED", "{}", results[3]);
    assert_eq!(s[7], "REJECTED");
    assert!(
        results[7]["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("payee.unresolvable"),
        "{}",
        results[7]
    );
    assert_eq!(s[9], "REJECTED");
    assert!(
        results[9]["errors"][0]
            .as_str()
            .unwrap_or_default()
            .contains("amount"),
        "{}",
        results[9]
    );
    let completed: Vec<_> = results
        .iter()
        .filter(|r| r["status"] == "COMPLETED")
        .collect();
    assert_eq!(completed.len(), 497);
    for r in completed {
        assert_eq!(r["amount"], "100");
        assert_eq!(r["amountCredited"], "100");
        assert_eq!(r["amountDebited"], "100");
        let ts = r["timestamp"].as_str().expect("timestamp");
        chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.6fZ")
            .unwrap_or_else(|e| panic!("timestamp {ts}: {e}"));
    }
    // Never sent: the unresolvable payee and the bad amount.
    let stats = app.sim.simulator.stats();
    let executed: u64 = stats.executed.values().sum();
    assert_eq!(executed, 497, "only the 497 good payees moved money");
}

#[tokio::test]
async fn a_deadline_answer_is_pending_and_get_shows_the_final_states_later() {
    let app = app_with_deadline(700).await;
    // Simulator trigger 454 through MTN: accepted at once, successful only after a second.
    let csv = format!(
        "{}PHONE,46733123454,mobile:46733123454@mtn,r1\n",
        directory_csv(10)
    );
    let (status, _) = import(&app, &csv, Some(TOKEN)).await;
    assert_eq!(status, 200);
    let mut payees: Vec<(String, &str)> = (0..10).map(|i| (phone(i), "5")).collect();
    payees.push(("46733123454".into(), "5"));
    let started = Instant::now();
    let (status, body) = post_raw(&app, "/disbursement", odoo_body("late-1", &payees)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "it waited for the deadline"
    );
    let first = statuses(&body);
    assert_eq!(first.len(), 11);
    assert_eq!(first[10], "PENDING", "{body}");
    pil_spec()
        .validate_tolerant("DisbursementResponse", &body, &["payeeList"])
        .unwrap_or_else(|e| panic!("{e:?}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, view) = app.get("/disbursement/late-1").await;
        assert_eq!(status, 200, "{view}");
        if statuses(&view).iter().all(|s| s == "COMPLETED") {
            pil_spec()
                .validate_tolerant("DisbursementResponse", &view, &["payeeList"])
                .unwrap_or_else(|e| panic!("{e:?}"));
            break;
        }
        assert!(Instant::now() < deadline, "not final in time: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = app.get("/disbursement/no-such-id").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_replay_sends_nothing_again_and_a_changed_body_is_a_conflict() {
    let app = app_with_deadline(20_000).await;
    import(&app, &directory_csv(10), Some(TOKEN)).await;
    let payees: Vec<(String, &str)> = (0..10).map(|i| (phone(i), "100.0")).collect();
    let body = odoo_body("replay-1", &payees);
    let (status, first) = post_raw(&app, "/disbursement", body.clone()).await;
    assert_eq!(status, 200);
    assert!(statuses(&first).iter().all(|s| s == "COMPLETED"), "{first}");
    // The same amounts written differently are the same request.
    let same = body.replace("100.0", "\"100.00\"");
    let (status, again) = post_raw(&app, "/disbursement", same).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(statuses(&again), statuses(&first));
    let stats = app.sim.simulator.stats();
    assert_eq!(stats.submissions.len(), 10);
    assert!(
        stats.submissions.values().all(|n| *n == 1),
        "{:?}",
        stats.submissions
    );

    let changed = body.replacen("100.0", "101.0", 1);
    let (status, err) = post_raw(&app, "/disbursement", changed).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "disbursement_conflict");
}

#[tokio::test]
async fn malformed_disbursements_are_refused_and_store_nothing() {
    let app = app_with_deadline(1_000).await;
    let cases = [
        (
            json!({"payeeList": [{"payeeIdType": "PHONE", "payeeIdValue": "1", "amount": 1, "currency": "KES"}]}),
            "disbursementId.invalid",
        ),
        (
            json!({"disbursementId": "", "payeeList": []}),
            "disbursementId.invalid",
        ),
        (
            json!({"disbursementId": "d1", "payeeList": []}),
            "payeeList.count",
        ),
        (json!({"disbursementId": "d1"}), "payeeList.count"),
        (
            json!({"disbursementId": "d1", "note": 5, "payeeList": [{}]}),
            "note.invalid",
        ),
    ];
    for (body, code) in cases {
        let (status, err) = app.post("/disbursement", &body).await;
        assert_eq!(status, 400, "{body} → {err}");
        assert_eq!(err["error"]["code"], code, "{body}");
    }
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"payeeIdType": "PHONE", "payeeIdValue": i.to_string(), "amount": 1, "currency": "KES"}))
        .collect();
    let (status, err) = app
        .post(
            "/disbursement",
            &json!({"disbursementId": "big", "payeeList": too_many}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "payeeList.count");
    let (status, _) = app.get("/disbursement/d1").await;
    assert_eq!(status, 404, "nothing was stored");
    let (status, _) = app.get("/disbursement/big").await;
    assert_eq!(status, 404, "nothing was stored");

    // Per-payee problems reject only that payee, each with its reason.
    import(&app, &directory_csv(3), Some(TOKEN)).await;
    let body = json!({"disbursementId": "mixed", "payeeList": [
        {"payeeIdType": "PHONE", "payeeIdValue": phone(0), "amount": "abc", "currency": "KES"},
        {"payeeIdType": "PHONE", "payeeIdValue": phone(1), "amount": 5, "currency": "ZZZ"},
        {"payeeIdType": "PHONE", "payeeIdValue": phone(2), "amount": -5, "currency": "KES"},
        {"payeeIdType": "PHONE", "amount": 5, "currency": "KES"},
    ]});
    let (status, view) = app.post("/disbursement", &body).await;
    assert_eq!(status, 200, "{view}");
    assert!(statuses(&view).iter().all(|s| s == "REJECTED"), "{view}");
    let errors: Vec<String> = view["payeeResults"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["errors"][0].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(errors[0].starts_with("amount.invalid"), "{errors:?}");
    assert!(errors[1].starts_with("currency_code.invalid"), "{errors:?}");
    assert!(errors[2].starts_with("amount.not_positive"), "{errors:?}");
    assert!(
        errors[3].starts_with("payee_id_value.missing"),
        "{errors:?}"
    );
    assert_eq!(app.sim.simulator.stats().submissions.len(), 0);
}

#[tokio::test]
async fn disbursement_check_says_who_is_payable_without_paying() {
    let app = app_with_deadline(1_000).await;
    let csv = format!(
        "{}PHONE,555,mobile:555@unknown-provider,r1\n",
        directory_csv(2)
    );
    let (status, _) = import(&app, &csv, Some(TOKEN)).await;
    assert_eq!(status, 200);
    let body = json!({"requestId": "chk-1", "payeeList": [
        {"payeeIdType": "PHONE", "payeeIdValue": phone(0)},
        {"payeeIdType": "phone", "payeeIdValue": phone(1)},
        {"payeeIdType": "PHONE", "payeeIdValue": "404404"},
        {"payeeIdType": "PHONE", "payeeIdValue": "555"},
        {"payeeIdType": "PHONE", "payeeIdValue": phone(0), "amount": "200000000", "currency": "KES"},
    ]});
    let (status, out) = app.post("/disbursementCheck", &body).await;
    assert_eq!(status, 200, "{out}");
    let spec = pil_spec();
    let results = out["payeeResults"].as_array().expect("results");
    for r in results {
        spec.validate("IndividualPayeeCheckResult", r)
            .unwrap_or_else(|e| panic!("{r}: {e:?}"));
    }
    let payable: Vec<bool> = results
        .iter()
        .map(|r| r["isPayable"].as_bool().expect("isPayable"))
        .collect();
    assert_eq!(payable, [true, true, false, false, false], "{out}");
    assert!(
        results[2]["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("payee.unresolvable")
    );
    assert!(
        results[3]["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("payee_fa.unroutable")
    );
    assert!(
        results[4]["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("dfsp.unavailable"),
        "{}",
        results[4]
    );
    assert_eq!(app.sim.simulator.stats().submissions.len(), 0);
    let (status, health) = app.get("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("UP")));
}

#[tokio::test]
async fn the_directory_import_needs_the_admin_token_and_rejects_bad_rows_whole() {
    let app = app_with_deadline(1_000).await;
    let (status, _) = import(&app, &directory_csv(2), None).await;
    assert_eq!(status, 401);
    let (status, _) = import(&app, &directory_csv(2), Some("wrong")).await;
    assert_eq!(status, 401);
    let bad = "id_type,id_value,fa\nPHONE,1,mobile:1@mtn\nPHONE,2,nonsense\n";
    let (status, err) = import(&app, bad, Some(TOKEN)).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["details"]["rows"][0]["line"], 3);
    let check =
        json!({"requestId": "c", "payeeList": [{"payeeIdType": "PHONE", "payeeIdValue": "1"}]});
    let (_, out) = app.post("/disbursementCheck", &check).await;
    assert_eq!(
        out["payeeResults"][0]["isPayable"], false,
        "the good row was not imported either"
    );
}

#[test]
fn pil_directory_import_reports_bad_rows_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pil"))
            .args(["directory", "import"])
            .arg(file)
            .env(
                "PIL_DATABASE_URL",
                format!("sqlite:{}", dir.path().join("d.db").display()),
            )
            .output()
            .expect("run pil")
    };
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "id_type,id_value,fa\nPHONE,1,mobile:1@mtn\n,2,mobile:2@mtn\n",
    )
    .expect("write");
    let out = run(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv:3: id_type (id_type.missing)"),
        "{err}"
    );
    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "id_type,id_value,fa,region\nPHONE,1,mobile:1@mtn,north\n",
    )
    .expect("write");
    let out = run(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 1 directory row(s)"));
}

#[tokio::test]
async fn routing_rules_read_the_directory_attributes() {
    let app = app_with_deadline(20_000).await;
    let csv = "id_type,id_value,fa,region,preferred_dfsp\n\
               PHONE,256700000101,mobile:256700000101@mtn,north,mojaloop-sdk\n\
               PHONE,256700000102,mobile:256700000102@mtn,north,\n";
    let (status, _) = import(&app, csv, Some(TOKEN)).await;
    assert_eq!(status, 200);
    let payees = vec![
        ("256700000101".to_string(), "5"),
        ("256700000102".to_string(), "5"),
    ];
    let (status, body) = post_raw(&app, "/disbursement", odoo_body("attr-1", &payees)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&body), ["COMPLETED", "COMPLETED"]);
    let store = &app.app.state.store;
    let batch = store
        .find_batch("openg2p", "attr-1")
        .await
        .expect("store")
        .expect("batch");
    let payments = store
        .batch_payments_in_order(&batch.id)
        .await
        .expect("payments");
    let dfsps: Vec<_> = payments
        .iter()
        .map(|p| p.dfsp.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        dfsps,
        ["mojaloop-sdk", "mtn-momo"],
        "the preferred DFSP wins only where set"
    );
    assert_eq!(
        payments[0].attributes.as_ref().expect("attributes")["region"],
        "north"
    );
}

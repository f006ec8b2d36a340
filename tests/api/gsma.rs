//! The GSMA Mobile Money API adapter end to end: the real app and the simulator over loopback,
//! every business outcome, a lost answer resolved by looking the request up by its
//! X-CorrelationID, lost and duplicate callbacks, tokens revoked mid-batch; and the traffic
//! itself (requests, answers, lookups, callbacks) checked against the GSMA spec file.
//! Throughout, the simulator's count of executions per payment proves nothing was paid twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pil::simulator::SimConfig;
use serde_json::{Value, json};

use crate::helpers::{TestApp, payment, recorded_app, spawn_app, spawn_with, status};
use crate::spec::Spec;

const SPEC_FILE: &str = "specs/gsma-mmapi-1.2.0-disbursements.yaml";
const CREATE: &str = "/paths/~1transactions~1type~1{transactionType}/post";

fn gsma(n: &str) -> String {
    format!("mobile:{n}@gsma")
}

fn spec_doc() -> Value {
    let text = std::fs::read_to_string(crate::helpers::repo().join(SPEC_FILE)).expect("spec");
    serde_yaml_ng::from_str(&text).expect("spec YAML")
}

/// The JSON pointer of the JSON schema of a request body or response at `pointer`, following
/// the spec's `$ref`s into `components/requestBodies` first.
fn body_schema(doc: &Value, pointer: &str) -> String {
    let mut p = pointer.to_string();
    while let Some(r) = doc
        .pointer(&p)
        .and_then(|v| v.get("$ref"))
        .and_then(Value::as_str)
    {
        p = r.trim_start_matches('#').to_string();
    }
    assert!(doc.pointer(&p).is_some(), "nothing at {p}");
    format!("{p}/content/application~1json/schema")
}

fn executed(app: &TestApp, id: &str) -> u64 {
    app.sim
        .simulator
        .stats()
        .executed
        .get(id)
        .copied()
        .unwrap_or(0)
}

fn submissions(app: &TestApp, id: &str) -> u64 {
    app.sim
        .simulator
        .stats()
        .submissions
        .get(id)
        .copied()
        .unwrap_or(0)
}

fn id_of(p: &Value) -> &str {
    p["id"].as_str().expect("payment id")
}

async fn full(app: &TestApp, id: &str) -> Value {
    let (st, v) = app.get(&format!("/api/v1/payments/{id}")).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// The URLs PIL called for a payment, by attempt kind ("submit" / "status").
fn attempt_urls(full: &Value, kind: &str) -> Vec<String> {
    full["dispatch_attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter(|a| a["kind"] == kind)
        .map(|a| a["url"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn gsma_batch_reaches_the_expected_final_states() {
    let app = spawn_app().await;
    // (reference, payee, final status, reason code)
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        ("ok-1", "256700001001", "succeeded", None),
        ("ok-2", "+256700001002", "succeeded", None),
        (
            "payee-not-found",
            "46733123475",
            "failed",
            Some("identifierError"),
        ),
        (
            "limit-reached",
            "46733123457",
            "failed",
            Some("dailyValueLimitExceeded"),
        ),
        (
            "currency",
            "46733123460",
            "failed",
            Some("currencyNotSupported"),
        ),
        (
            "no-funds",
            "46733123476",
            "failed",
            Some("insufficientFunds"),
        ),
        ("declined", "46733123451", "failed", Some("requestDeclined")),
        (
            "max-balance",
            "46733123456",
            "failed",
            Some("maxBalanceExceeded"),
        ),
        ("callback-lost", "46733123471", "succeeded", None),
        ("callback-twice", "46733123472", "succeeded", None),
        ("callback-early", "46733123473", "succeeded", None),
        ("throttled-once", "46733123474", "succeeded", None),
        ("slow", "46733123454", "succeeded", None),
    ];
    let batch = app
        .submit(
            "gsma-mixed",
            cases
                .iter()
                .map(|(r, n, _, _)| payment(r, &gsma(n), "12.50"))
                .collect(),
        )
        .await;
    let all = app.wait_final(&batch).await;
    for (reference, _, want, code) in cases {
        let p = &all[*reference];
        assert_eq!(p["dfsp"], "gsma-mmapi", "{reference}: {p}");
        assert_eq!(status(p), *want, "{reference}: {p}");
        if let Some(code) = code {
            assert_eq!(p["reason_code"], *code, "{reference}: {p}");
        }
        let id = id_of(p);
        let runs = executed(&app, id);
        assert!(runs <= 1, "{reference} executed {runs} times");
        assert_eq!(runs, u64::from(*want == "succeeded"), "{reference}");
        let sent = if *reference == "throttled-once" { 2 } else { 1 };
        assert_eq!(submissions(&app, id), sent, "{reference}");
        if *want == "succeeded" {
            // The provider's transactionReference, from the callback or the request state.
            let r = p["dfsp_ref"].as_str().expect("dfsp_ref");
            assert!(uuid::Uuid::parse_str(r).is_ok(), "{reference}: {p}");
        }
    }
    // Refused at submission: the DFSP surely did not execute them.
    let refused = full(&app, id_of(&all["payee-not-found"])).await;
    assert_eq!(refused["dispatch_attempts"][0]["http_status"], 404);
    assert_eq!(
        refused["reason"],
        "The credit party could not be identified."
    );

    // The lost callback was made up for by polling the request state.
    let lost = full(&app, id_of(&all["callback-lost"])).await;
    let polls = attempt_urls(&lost, "status");
    assert!(
        polls.iter().any(|u| u.contains("/requeststates/")),
        "{lost}"
    );
    let steps: Vec<&str> = lost["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["to"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        steps,
        ["received", "routed", "sending", "accepted", "succeeded"]
    );
    // Throttling (businessRule/rateLimitError) was retried with the same X-CorrelationID.
    let throttled = full(&app, id_of(&all["throttled-once"])).await;
    let keys: Vec<&Value> = throttled["dispatch_attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter(|a| a["kind"] == "submit")
        .map(|a| &a["idempotency_key"])
        .collect();
    assert_eq!(keys.len(), 2, "{throttled}");
    assert_eq!(keys[0], keys[1]);
}

#[tokio::test]
async fn gsma_lost_answers_are_looked_up_by_correlation_id_never_resent() {
    let app = spawn_app().await;
    let batch = app
        .submit(
            "gsma-lost",
            vec![
                // Executed, answered only after PIL gave up waiting, no callback.
                payment("timeout", &gsma("46733123470"), "3.00"),
                // Executed, answered 500, no callback.
                payment("500-executed", &gsma("46733123461"), "3.00"),
                // Answered 500 and never executed: nothing to find.
                payment("500-nothing", &gsma("46733123450"), "3.00"),
            ],
        )
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(30), |p| {
            let r = p["reference_id"].as_str().unwrap_or_default();
            if r == "500-nothing" {
                status(p) == "unknown"
            } else {
                status(p) == "succeeded"
            }
        })
        .await;
    for r in ["timeout", "500-executed"] {
        let id = id_of(&all[r]);
        assert_eq!(executed(&app, id), 1, "{r}");
        assert_eq!(submissions(&app, id), 1, "{r} was sent again");
        let f = full(&app, id).await;
        let polls = attempt_urls(&f, "status");
        // GET /responses/{X-CorrelationID} → link → GET /transactions/{ref}.
        let key = f["dispatch_attempts"][0]["idempotency_key"]
            .as_str()
            .expect("key");
        assert!(
            polls
                .iter()
                .any(|u| u.ends_with(&format!("/responses/{key}"))),
            "{f}"
        );
        assert!(polls.iter().any(|u| u.contains("/transactions/")), "{f}");
        let history: Vec<&str> = f["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|e| e["to"].as_str().unwrap_or_default())
            .collect();
        assert!(history.contains(&"unknown"), "{f}");
        assert_eq!(history.last(), Some(&"succeeded"));
    }
    // Nothing was found for the other one: it stays unknown, for an operator, and is never resent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let nothing = &app.payments(&batch).await["500-nothing"];
    assert_eq!(status(nothing), "unknown", "{nothing}");
    let id = id_of(nothing);
    assert_eq!(executed(&app, id), 0);
    assert_eq!(submissions(&app, id), 1);
    let f = full(&app, id).await;
    let unknown = f["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|e| e["to"] == "unknown")
        .expect("unknown step");
    assert_eq!(unknown["reason_code"], "HTTP_500", "{f}");
    assert_eq!(attempt_urls(&f, "submit").len(), 1, "{f}");
    assert!(
        attempt_urls(&f, "status")
            .iter()
            .all(|u| u.contains("/responses/")),
        "{f}"
    );
}

#[tokio::test]
async fn gsma_duplicate_and_late_callbacks_are_harmless() {
    let app = spawn_app().await;
    let batch = app
        .submit(
            "gsma-callbacks",
            vec![payment("pending", &gsma("46733123453"), "7.00")],
        )
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(20), |p| status(p) == "accepted")
        .await;
    let id = id_of(&all["pending"]).to_string();
    // While the request is pending, PIL follows its request state.
    let server_id = all["pending"]["dfsp_ref"]
        .as_str()
        .expect("serverCorrelationId");
    assert!(
        uuid::Uuid::parse_str(server_id).is_ok(),
        "{}",
        all["pending"]
    );

    let transaction = json!({
        "amount": "7", "currency": "KES", "type": "disbursement",
        "transactionReference": "TX-1", "transactionStatus": "completed",
        "requestingOrganisationTransactionReference": id,
        "creditParty": [{"key": "msisdn", "value": "+46733123453"}],
        "debitParty": [{"key": "accountid", "value": "g2p-programme"}],
    });
    let mut still_pending = transaction.clone();
    still_pending["transactionStatus"] = json!("pending");
    let duplicate = json!({"errorCategory": "businessRule", "errorCode": "duplicateRequest",
        "errordescription": "A request with this X-CorrelationID was already received."});
    let failed = json!({"errorCategory": "businessRule", "errorCode": "insufficientFunds"});
    let put = |path: String, body: Value| {
        let url = format!("{}{path}", app.url);
        let http = app.http.clone();
        async move {
            let r = http.put(url).json(&body).send().await.expect("put");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let path = format!("/callbacks/gsma-mmapi/transactions/{id}");
    let no_change = (200, json!({"result": "no_change"}));
    assert_eq!(put(path.clone(), still_pending.clone()).await, no_change);
    // A refusal of some resend says nothing about the request that carries the payment.
    assert_eq!(put(path.clone(), duplicate).await, no_change);
    // Matched by the body's requestingOrganisationTransactionReference when the URL has no id.
    assert_eq!(
        put(
            "/callbacks/gsma-mmapi/transactions/".into(),
            transaction.clone()
        )
        .await,
        (200, json!({"result": "applied"}))
    );
    assert_eq!(put(path.clone(), transaction).await, no_change);
    assert_eq!(put(path.clone(), still_pending).await, no_change);
    assert_eq!(put(path, failed).await, no_change);
    let f = full(&app, &id).await;
    assert_eq!(status(&f), "succeeded");
    assert_eq!(f["dfsp_ref"], "TX-1");
    let succeeded = f["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["to"] == "succeeded")
        .count();
    assert_eq!(succeeded, 1);
    assert_eq!(submissions(&app, &id), 1);
    let r = app
        .http
        .put(format!(
            "{}/callbacks/gsma-mmapi/transactions/nope",
            app.url
        ))
        .json(&json!({"errorCategory": "internal", "errorCode": "genericError"}))
        .send()
        .await
        .expect("put");
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"result": "unknown_payment"})
    );
}

#[tokio::test]
async fn gsma_tokens_revoked_mid_batch_are_renewed_without_paying_twice() {
    // Two payments in flight at a time, each answered after 60 ms: the batch takes a while.
    let app = spawn_with(
        SimConfig {
            latency_ms: 60,
            ..SimConfig::default()
        },
        |s, _| {
            s.claim_size = 2;
            s.max_outstanding = 2;
        },
    )
    .await;
    let refs: Vec<String> = (0..16).map(|i| format!("t{i:02}")).collect();
    let batch = app
        .submit(
            "gsma-tokens",
            refs.iter()
                .enumerate()
                .map(|(i, r)| payment(r, &gsma(&format!("2567002{i:05}")), "5.00"))
                .collect(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = app.payments(&batch).await;
        if all.values().any(|p| status(p) == "succeeded") {
            assert!(
                all.values().any(|p| status(p) == "received"),
                "the batch finished before the tokens could be revoked"
            );
            break;
        }
        assert!(Instant::now() < deadline, "nothing succeeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sim = app.sim.base_url();
    let r = app
        .http
        .post(format!("{sim}/_sim/gsma/tokens/revoke"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    let all = app.wait_final(&batch).await;
    for r in &refs {
        let p = &all[r];
        assert_eq!(status(p), "succeeded", "{r}: {p}");
        let id = id_of(p);
        assert_eq!(executed(&app, id), 1, "{r}");
        // A request refused for its token never counts as a submission: auth comes first.
        assert_eq!(submissions(&app, id), 1, "{r}");
    }
    let tokens: Value = app
        .http
        .get(format!("{sim}/_sim/gsma/tokens"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert!(tokens["refused"].as_u64() >= Some(1), "{tokens}");
    assert!(tokens["issued"].as_u64() >= Some(2), "{tokens}");
}

fn check(spec: &Spec, pointer: &str, what: &str, v: &Value) {
    spec.validate_at(pointer, v, &[])
        .unwrap_or_else(|e| panic!("{what} {v}: {e:#?}"));
}

#[tokio::test]
async fn gsma_traffic_validates_against_the_spec() {
    let (app, rec, proxy) = recorded_app(SimConfig::default(), "gsma-mmapi", |l| {
        l.starts_with("sub_type")
            .then(|| "sub_type = \"g2p-cash\"".to_string())
    })
    .await;
    let batch = app
        .submit(
            "gsma-spec",
            vec![
                payment("ok", &gsma("256700003001"), "12.50"),
                payment("whole", &gsma("256700003002"), "200.00"),
                payment("cents", &gsma("256700003003"), "0.05"),
                payment("no-funds", &gsma("46733123476"), "1.00"),
                payment("not-found", &gsma("46733123475"), "1.00"),
                payment("lost-callback", &gsma("46733123471"), "1.00"),
                payment("executed-500", &gsma("46733123461"), "1.00"),
                payment("twice", &gsma("46733123472"), "1.00"),
            ],
        )
        .await;
    let all = app.wait_final(&batch).await;
    assert_eq!(status(&all["ok"]), "succeeded");
    assert_eq!(status(&all["executed-500"]), "succeeded");
    assert_eq!(status(&all["no-funds"]), "failed");
    for p in all.values() {
        assert!(executed(&app, id_of(p)) <= 1, "{p}");
    }
    // Let the second copy of the duplicated callback land too.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let spec = Spec::load(&crate::helpers::repo().join(SPEC_FILE));
    let doc = spec_doc();
    let request_body = body_schema(&doc, &format!("{CREATE}/requestBody"));
    let response = |path: &str, method: &str, code: u16| {
        body_schema(
            &doc,
            &format!(
                "/paths/{}/{method}/responses/{code}",
                path.replace('/', "~1")
            ),
        )
    };
    let callback = |event: &str| {
        body_schema(
            &doc,
            &format!(
                "{CREATE}/callbacks/{event}/{{$request.header.X-Callback-URL}}/put/requestBody"
            ),
        )
    };
    let param = |name: &str| format!("/components/parameters/{name}/schema");
    let seen = rec.seen.lock().expect("lock").clone();
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut amounts = Vec::new();
    for x in &seen {
        let kind = if x.path == "/transactions/type/disbursement" {
            check(&spec, &request_body, "request body", &x.body);
            for h in ["x-correlationid", "x-date", "x-callback-url"] {
                let name = match h {
                    "x-correlationid" => "X-CorrelationID",
                    "x-date" => "X-Date",
                    _ => "X-Callback-URL",
                };
                check(&spec, &param(name), h, &json!(x.headers[h]));
            }
            assert!(
                x.headers["x-callback-url"]
                    .starts_with(&format!("{proxy}/callbacks/gsma-mmapi/transactions/"))
            );
            assert!(
                x.headers.contains_key("x-api-key")
                    && x.headers["authorization"].starts_with("Bearer ")
            );
            amounts.push(x.body["amount"].clone());
            let schema = response("/transactions/type/{transactionType}", "post", x.status);
            check(&spec, &schema, "answer", &x.response);
            format!("create {}", x.status)
        } else if let Some(rest) = x.path.strip_prefix("/callbacks/gsma-mmapi/") {
            assert!(rest.starts_with("transactions/"), "{x:?}");
            check(
                &spec,
                &param("X-CorrelationID"),
                "callback X-CorrelationID",
                &json!(x.headers["x-correlationid"]),
            );
            if x.body.get("errorCategory").is_some() {
                check(
                    &spec,
                    &callback("transactionsFailureEvent"),
                    "failure callback",
                    &x.body,
                );
                "callback error".to_string()
            } else {
                check(
                    &spec,
                    &callback("transactionsSuccessEvent"),
                    "success callback",
                    &x.body,
                );
                "callback transaction".to_string()
            }
        } else if x.path.starts_with("/callbacks/") || x.path == "/v1/oauth/accesstoken" {
            continue; // other DFSPs; the token endpoint is not part of the spec
        } else {
            let (template, kind) = if x.path.starts_with("/requeststates/") {
                ("/requeststates/{serverCorrelationId}", "requeststate")
            } else if x.path.starts_with("/responses/") {
                ("/responses/{clientCorrelationId}", "responses")
            } else if x.path.starts_with("/transactions/") {
                ("/transactions/{transactionReference}", "transaction")
            } else {
                panic!("unexpected call {x:?}");
            };
            assert_eq!(x.method, "GET");
            check(
                &spec,
                &response(template, "get", x.status),
                kind,
                &x.response,
            );
            format!("{kind} {}", x.status)
        };
        *kinds.entry(kind).or_default() += 1;
    }

    for kind in [
        "create 202",
        "create 404",
        "create 500",
        "requeststate 200",
        "responses 200",
        "transaction 200",
        "callback transaction",
        "callback error",
    ] {
        assert!(kinds.contains_key(kind), "no {kind} among {kinds:?}");
    }
    // The spec's amount pattern refuses trailing zeros: 12.50 → "12.5", 200.00 → "200".
    for a in ["12.5", "200", "0.05"] {
        assert!(amounts.contains(&json!(a)), "{a} not among {amounts:?}");
    }
    // The validator really applies the spec: GSMA's own example amount "200.00" fails it.
    let mut bad = seen
        .iter()
        .find(|x| x.path == "/transactions/type/disbursement")
        .expect("a request")
        .body
        .clone();
    bad["amount"] = json!("200.00");
    assert!(spec.validate_at(&request_body, &bad, &[]).is_err());
    bad["amount"] = json!(200);
    assert!(spec.validate_at(&request_body, &bad, &[]).is_err());
}

/// The adapter script against answer shapes the simulator never sends: the docs' PascalCase
/// and `errorReference`, synchronous 201s, links to other hosts, unexpected statuses.
#[test]
fn gsma_adapter_reads_every_answer_shape() {
    use pil::executor::DfspResponse;
    use pil::map::{Outcome, Reported};
    use rhai::{Dynamic, Map};

    let repo = crate::helpers::repo();
    let bundle = pil::script::Bundle::load(
        std::sync::Arc::new(pil::script::engine::build()),
        &repo.join("rules"),
        &repo.join("adapters"),
    )
    .expect("shipped scripts load");
    let adapter = bundle.adapter("gsma-mmapi").expect("adapter");
    let engine = &bundle.engine;
    let payment = |dfsp_ref: Option<&str>, key: Option<&str>| {
        let mut m = Map::new();
        let text = |v: Option<&str>| v.map_or(Dynamic::UNIT, |s| Dynamic::from(s.to_string()));
        m.insert("dfsp_ref".into(), text(dfsp_ref));
        m.insert("idempotency_key".into(), text(key));
        Dynamic::from_map(m)
    };
    let answer = |status: u16, body: Value| DfspResponse {
        status,
        headers: BTreeMap::new(),
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
    };
    let sent = |status: u16, body: Value| -> Outcome {
        adapter
            .parse_response(engine, payment(None, Some("k")), &answer(status, body))
            .expect("parse_response")
    };
    let is = |o: &Outcome, status: Reported, dfsp_ref: Option<&str>, code: Option<&str>| {
        assert_eq!(o.status, status, "{o:?}");
        assert_eq!(o.dfsp_ref.as_deref(), dfsp_ref, "{o:?}");
        assert_eq!(o.reason_code.as_deref(), code, "{o:?}");
    };
    let server_id = "7b2c3d4e-0000-4000-8000-000000000001";

    is(
        &sent(
            202,
            json!({"serverCorrelationId": server_id, "status": "pending", "notificationMethod": "callback"}),
        ),
        Reported::Accepted,
        Some(server_id),
        None,
    );
    is(
        &sent(
            202,
            json!({"serverCorrelationId": server_id, "status": "completed", "objectReference": "T1", "notificationMethod": "polling"}),
        ),
        Reported::Succeeded,
        Some("T1"),
        None,
    );
    let failed = sent(
        202,
        json!({"serverCorrelationId": server_id, "status": "failed", "notificationMethod": "callback",
               "errorReference": {"ErrorCategory": "BusinessRule", "ErrorCode": "InsufficientFunds", "ErrorDescription": "no money"}}),
    );
    is(
        &failed,
        Reported::Failed,
        Some(server_id),
        Some("InsufficientFunds"),
    );
    assert_eq!(failed.reason.as_deref(), Some("no money"));
    assert!(
        !failed.not_executed,
        "an asynchronous failure is not a refusal"
    );
    // No request state at all: accepted, and found later by its X-CorrelationID.
    is(&sent(202, Value::Null), Reported::Accepted, None, None);
    is(
        &sent(
            201,
            json!({"transactionReference": "T2", "transactionStatus": "completed"}),
        ),
        Reported::Succeeded,
        Some("T2"),
        None,
    );
    is(
        &sent(
            201,
            json!({"transactionReference": "T3", "transactionStatus": "pending"}),
        ),
        Reported::Accepted,
        Some("/transactions/T3"),
        None,
    );
    // A refused resend says nothing about the first request: follow it, never fail.
    let dup = sent(
        400,
        json!({"errorCategory": "businessRule", "errorCode": "duplicateRequest"}),
    );
    is(&dup, Reported::Unknown, None, Some("duplicateRequest"));
    assert!(!dup.not_executed);
    let throttled = sent(
        400,
        json!({"errorCategory": "businessRule", "errorCode": "rateLimitError"}),
    );
    assert!(throttled.not_executed && throttled.retry, "{throttled:?}");
    let refused = sent(
        404,
        json!({"errorCategory": "identification", "errorCode": "identifierError", "errordescription": "who?"}),
    );
    is(&refused, Reported::Failed, None, Some("identifierError"));
    assert!(refused.not_executed && !refused.retry);
    assert_eq!(refused.reason.as_deref(), Some("who?"));
    let unauthorised = sent(401, Value::Null);
    is(&unauthorised, Reported::Failed, None, Some("HTTP_401"));
    assert!(unauthorised.not_executed);
    for status in [408, 500, 502, 503, 504] {
        let o = sent(
            status,
            json!({"errorCategory": "serviceUnavailable", "errorCode": "genericError"}),
        );
        is(&o, Reported::Unknown, None, Some(&format!("HTTP_{status}")));
        assert!(!o.not_executed, "{status} may hide an executed request");
    }

    // Which lookup each state of knowledge leads to.
    let lookup = |dfsp_ref: Option<&str>, key: Option<&str>| {
        adapter
            .build_status_request(
                engine,
                payment(dfsp_ref, key),
                adapter.request_ctx(0, 1, None, None),
            )
            .expect("build_status_request")
            .map(|r| (r.method.to_string(), r.path))
    };
    let get = |p: &str| Some(("GET".to_string(), p.to_string()));
    assert_eq!(lookup(None, Some("k-1")), get("/responses/k-1"));
    assert_eq!(lookup(None, None), None, "nothing to look it up by");
    assert_eq!(
        lookup(Some(server_id), Some("k-1")),
        get(&format!("/requeststates/{server_id}"))
    );
    assert_eq!(
        lookup(Some("/transactions/T 4"), Some("k-1")),
        get("/transactions/T%204")
    );

    let polled = |dfsp_ref: Option<&str>, status: u16, body: Value| -> Outcome {
        adapter
            .parse_status_response(engine, payment(dfsp_ref, Some("k")), &answer(status, body))
            .expect("parse_status_response")
    };
    // A link is reduced to its id: PIL never follows it to another host with its credentials.
    is(
        &polled(
            None,
            200,
            json!({"link": format!("https://elsewhere.example/mm/requeststates/{server_id}")}),
        ),
        Reported::Pending,
        Some(server_id),
        None,
    );
    is(
        &polled(None, 200, json!({"link": "/transactions/T5?x=1"})),
        Reported::Pending,
        Some("/transactions/T5"),
        None,
    );
    // Not found (yet) proves nothing: the request may still be on its way or in processing.
    let missing = polled(
        None,
        404,
        json!({"errorCategory": "identification", "errorCode": "identifierError"}),
    );
    is(&missing, Reported::Unknown, None, Some("HTTP_404"));
    assert!(!missing.not_executed);
    is(
        &polled(
            Some(server_id),
            200,
            json!({"serverCorrelationId": server_id, "status": "pending", "notificationMethod": "polling"}),
        ),
        Reported::Pending,
        Some(server_id),
        None,
    );
    is(
        &polled(
            Some("/transactions/T6"),
            200,
            json!({"transactionReference": "T6", "transactionStatus": "Completed"}),
        ),
        Reported::Succeeded,
        Some("T6"),
        None,
    );

    // An error-object callback in the docs' casing.
    let callback = |path: &str, body: Value| {
        let mut req = Map::new();
        req.insert("method".into(), "PUT".into());
        req.insert("path".into(), path.into());
        req.insert("headers".into(), Dynamic::from_map(Map::new()));
        req.insert(
            "body".into(),
            pil::map::body_dynamic(body.to_string().as_bytes()),
        );
        adapter
            .parse_callback(engine, Dynamic::from_map(req))
            .expect("parse_callback")
    };
    let (matched, o) = callback(
        "/transactions/P1",
        json!({"ErrorCategory": "BusinessRule", "ErrorCode": "MaxBalanceExceeded"}),
    )
    .pop()
    .expect("matched");
    assert_eq!(matched, pil::map::CallbackMatch::PaymentId("P1".into()));
    is(&o, Reported::Failed, None, Some("MaxBalanceExceeded"));
    assert!(callback("/transactions/", json!({"transactionStatus": "completed"})).is_empty());

    // A payee the API has no identifier type for fails before anything is sent.
    let dry = pil::tools::dry_run(
        &bundle,
        &json!({"payee_fa": "token:123@gsma", "amount": "1", "currency": "KES"}),
    )
    .expect("dry run");
    let error = dry["candidates"][0]["error"].as_str().expect("error");
    assert!(error.contains("no party identifier"), "{dry}");
}

/// Installs the GSMA adapter with bulk sending on (`capabilities.bulk_size`).
fn bulk(line: &str) -> Option<String> {
    line.starts_with("bulk_size")
        .then(|| "bulk_size = 50".to_string())
}

#[tokio::test]
async fn gsma_bulk_batches_reach_their_final_states_and_match_the_spec() {
    let (app, rec, proxy) = recorded_app(SimConfig::default(), "gsma-mmapi", bulk).await;
    // (reference, payee, final status, reason code)
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        ("ok-1", "256700005001", "succeeded", None),
        ("ok-2", "256700005002", "succeeded", None),
        ("ok-3", "256700005003", "succeeded", None),
        (
            "no-funds",
            "46733123476",
            "failed",
            Some("insufficientFunds"),
        ),
        (
            "not-found",
            "46733123475",
            "failed",
            Some("identifierError"),
        ),
        (
            "limit",
            "46733123457",
            "failed",
            Some("dailyValueLimitExceeded"),
        ),
        (
            "max-balance",
            "46733123456",
            "failed",
            Some("maxBalanceExceeded"),
        ),
        ("declined", "46733123451", "failed", Some("requestDeclined")),
        ("slow", "46733123454", "succeeded", None),
        // Batch-wide: the batch callback is sent twice; PIL needs none of them anyway.
        ("callback-twice", "46733123472", "succeeded", None),
    ];
    let batch = app
        .submit(
            "gsma-bulk",
            cases
                .iter()
                .map(|(r, n, _, _)| payment(r, &gsma(n), "3.50"))
                .collect(),
        )
        .await;
    let all = app.wait_final(&batch).await;
    for (reference, _, want, code) in cases {
        let p = &all[*reference];
        assert_eq!(status(p), *want, "{reference}: {p}");
        if let Some(code) = code {
            assert_eq!(p["reason_code"], *code, "{reference}: {p}");
        }
        assert_eq!(submissions(&app, id_of(p)), 1, "{reference}");
        assert_eq!(
            executed(&app, id_of(p)),
            u64::from(*want == "succeeded"),
            "{reference}"
        );
    }
    // One bulk request carried them all; each payment was settled from the batch's lists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = rec.seen.lock().expect("lock").clone();
    let posts: Vec<_> = seen
        .iter()
        .filter(|x| x.method == "POST" && x.path == "/batchtransactions")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert!(
        !seen
            .iter()
            .any(|x| x.path == "/transactions/type/disbursement")
    );
    let ok = full(&app, id_of(&all["ok-1"])).await;
    assert!(
        attempt_urls(&ok, "submit")[0].ends_with("/batchtransactions"),
        "{ok}"
    );
    assert!(
        attempt_urls(&ok, "status")
            .iter()
            .any(|u| u.contains("/completions")),
        "{ok}"
    );
    assert!(
        ok["dfsp_ref"]
            .as_str()
            .is_some_and(|r| r.starts_with("/transactions/")),
        "{ok}"
    );

    // The traffic against the spec: the bulk request, its 202, the batch callback, the lists.
    let spec = Spec::load(&crate::helpers::repo().join(SPEC_FILE));
    let doc = spec_doc();
    let create = "/paths/~1batchtransactions/post";
    let response = |path: &str, code: u16| {
        body_schema(
            &doc,
            &format!("/paths/{}/get/responses/{code}", path.replace('/', "~1")),
        )
    };
    let post = posts[0];
    check(
        &spec,
        &body_schema(&doc, &format!("{create}/requestBody")),
        "bulk request",
        &post.body,
    );
    check(
        &spec,
        &body_schema(&doc, &format!("{create}/responses/202")),
        "bulk 202",
        &post.response,
    );
    check(
        &spec,
        "/components/parameters/X-CorrelationID/schema",
        "X-CorrelationID",
        &json!(post.headers["x-correlationid"]),
    );
    assert_eq!(
        post.headers["x-callback-url"],
        format!("{proxy}/callbacks/gsma-mmapi/batchtransactions")
    );
    let items = post.body["transactions"].as_array().expect("transactions");
    assert_eq!(items.len(), cases.len());
    let mut lists = 0;
    for x in &seen {
        if x.path
            .starts_with("/callbacks/gsma-mmapi/batchtransactions")
        {
            check(
                &spec,
                &body_schema(
                    &doc,
                    &format!(
                        "{create}/callbacks/batchTransactionsSuccessEvent/{{$request.header.X-Callback-URL}}/put/requestBody"
                    ),
                ),
                "batch callback",
                &x.body,
            );
        } else if x.path.ends_with("/completions") || x.path.ends_with("/rejections") {
            let template = if x.path.ends_with("/completions") {
                "/batchtransactions/{batchId}/completions"
            } else {
                "/batchtransactions/{batchId}/rejections"
            };
            check(&spec, &response(template, 200), template, &x.response);
            lists += 1;
        }
    }
    assert!(lists >= 2, "completions and rejections were read");
}

#[tokio::test]
async fn a_lost_bulk_answer_is_found_through_its_correlation_id_never_resent() {
    let app = spawn_with(SimConfig::default(), |_, dir| {
        let path = dir.join("adapters/gsma-mmapi/adapter.toml");
        let text = std::fs::read_to_string(&path).expect("read");
        let text: Vec<String> = text
            .lines()
            .map(|l| bulk(l).unwrap_or_else(|| l.to_string()))
            .collect();
        std::fs::write(&path, text.join("\n")).expect("write");
    })
    .await;
    let batch = app
        .submit(
            "gsma-bulk-timeout",
            vec![
                payment("hangs", &gsma("46733123470"), "1.00"),
                payment("peer-ok", &gsma("256700006001"), "2.00"),
                payment("peer-no-funds", &gsma("46733123476"), "3.00"),
            ],
        )
        .await;
    let all = app.wait_final(&batch).await;
    assert_eq!(status(&all["hangs"]), "succeeded", "{}", all["hangs"]);
    assert_eq!(status(&all["peer-ok"]), "succeeded");
    assert_eq!(status(&all["peer-no-funds"]), "failed");
    for p in all.values() {
        assert_eq!(submissions(&app, id_of(p)), 1, "{p}");
        assert_eq!(
            executed(&app, id_of(p)),
            u64::from(status(p) == "succeeded"),
            "{p}"
        );
        let story = full(&app, id_of(p)).await;
        let urls = attempt_urls(&story, "status");
        assert!(
            urls.iter().any(|u| u.contains("/responses/")),
            "looked up by X-CorrelationID: {story}"
        );
    }
}

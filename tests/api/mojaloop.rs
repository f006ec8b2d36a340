//! The Mojaloop SDK without auto-accept: transfers stop at party and quote acceptance and PIL
//! continues the same transfer (`PUT /transfers/{id}`), never posting it again.

use pil::simulator::SimConfig;

use crate::helpers::{payment, spawn_with, status};

#[tokio::test]
async fn transfers_waiting_for_acceptance_are_continued_not_reposted() {
    let app = spawn_with(
        SimConfig {
            mojaloop_auto_accept_party: false,
            mojaloop_auto_accept_quotes: false,
            ..SimConfig::default()
        },
        |_, _| {},
    )
    .await;
    let mut payments: Vec<_> = (0..6)
        .map(|i| {
            payment(
                &format!("ml-{i}"),
                &format!("mobile:2567000002{i:02}@mojaloop"),
                "12.5",
            )
        })
        .collect();
    // Trigger 451: the payee FSP rejects the transfer once it is accepted.
    payments.push(payment("ml-rejected", "mobile:46733123451@mojaloop", "3"));
    let batch = app.submit("ml-continue", payments).await;
    let done = app.wait_final(&batch).await;
    for i in 0..6 {
        assert_eq!(
            status(&done[&format!("ml-{i}")]),
            "succeeded",
            "{}",
            done[&format!("ml-{i}")]
        );
    }
    let rejected = &done["ml-rejected"];
    assert_eq!(status(rejected), "failed");
    assert_eq!(rejected["reason_code"], "5104", "{rejected}");

    let stats = app.sim.simulator.stats();
    for p in done.values() {
        let id = p["id"].as_str().expect("id");
        assert_eq!(stats.submissions.get(id), Some(&1), "posted once: {p}");
        let executed = stats.executed.get(id).copied().unwrap_or(0);
        let expected = u64::from(status(p) == "succeeded");
        assert_eq!(executed, expected, "{p}");
    }
    // The history shows the continuations.
    let id = done["ml-0"]["id"].as_str().expect("id");
    let (code, view) = app.get(&format!("/api/v1/payments/{id}")).await;
    assert_eq!(code, 200);
    let kinds: Vec<&str> = view["dispatch_attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"submit") && kinds.contains(&"continue"),
        "{kinds:?}"
    );
}

/// Every request body the adapter builds, for each kind of payee, is valid under the SDK's own
/// OpenAPI schema for `POST /transfers`; so are the continuation bodies.
#[test]
fn requests_validate_against_the_sdk_spec() {
    let spec = crate::spec::Spec::load(
        &crate::helpers::repo().join("specs/mojaloop-sdk-outbound-v2_1_0.yaml"),
    );
    let bundle = pil::tools::check(
        &crate::helpers::repo().join("rules"),
        &crate::helpers::repo().join("adapters"),
    )
    .expect("shipped scripts load");
    let post = "/paths/~1transfers/post/requestBody/content/application~1json/schema";
    let payees = [
        serde_json::json!({"payee_fa": "mobile:256700000001@mojaloop", "amount": "5000", "currency": "UGX", "payee_name": "Jane Doe"}),
        serde_json::json!({"payee_fa": "account:ACC-0042@mojaloop", "amount": "12.50", "currency": "KES", "note": "Relief May"}),
        serde_json::json!({"payee_fa": "email:jane@example.org@mojaloop", "amount": "0.5", "currency": "USD"}),
        serde_json::json!({"payee_id_type": "ACCOUNT_ID", "payee_id_value": "ACC-1", "amount": "1", "currency": "XOF"}),
    ];
    for p in payees {
        let out = pil::tools::dry_run(&bundle, &p).expect("dry run");
        let request = out["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .find(|c| c["dfsp"] == "mojaloop-sdk")
            .unwrap_or_else(|| panic!("not routed to mojaloop-sdk: {out}"))["request"]
            .clone();
        assert!(
            request["url"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/transfers")
        );
        spec.validate_at(post, &request["body"], &[])
            .unwrap_or_else(|e| panic!("{}: {e:?}", request["body"]));
    }
    let put = "/paths/~1transfers~1{transferId}/put/requestBody/content/application~1json/schema";
    for body in [
        serde_json::json!({"acceptParty": true}),
        serde_json::json!({"acceptQuote": true}),
    ] {
        spec.validate_at(put, &body, &[])
            .unwrap_or_else(|e| panic!("{body}: {e:?}"));
    }
    // The validator is real: the amount shape the SDK refuses is refused here too.
    let mut bad = pil::tools::dry_run(
        &bundle,
        &serde_json::json!({"payee_fa": "mobile:1@mojaloop", "amount": "5", "currency": "KES"}),
    )
    .expect("dry run")["candidates"][0]["request"]["body"]
        .clone();
    bad["amount"] = serde_json::json!("5.00");
    assert!(spec.validate_at(post, &bad, &[]).is_err());
}

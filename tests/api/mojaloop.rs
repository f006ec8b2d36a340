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

//! Operators' holds, below the admin API: a paused DFSP gets nothing routed to it (payments
//! take the fallback or wait) and the pause survives a reload and a restart's reading of the
//! store; a held batch's unsent payments wait until it is released.

use std::time::Duration;

use pil::clock::now_ms;

use crate::helpers::{payment, spawn_app, status};

#[tokio::test]
async fn a_paused_dfsp_gets_nothing_until_resumed() {
    let app = spawn_app().await;
    let state = &app.app.state;
    state.live.load().paused.set("mtn-momo", true);
    state
        .store
        .set_dfsp_paused("mtn-momo", true, "test", now_ms())
        .await
        .expect("pause");
    // MTN payees have the switch as a fallback; M-Pesa payees have none and wait.
    let batch = app
        .submit(
            "paused",
            vec![
                payment("mtn", "mobile:256700000001@mtn", "5"),
                payment("mpesa", "mobile:254700000001@mpesa", "50"),
            ],
        )
        .await;
    let all = app
        .wait_until(&batch, Duration::from_secs(10), |p| {
            p["reference_id"] != "mtn" || status(p) == "succeeded"
        })
        .await;
    assert_eq!(all["mtn"]["dfsp"], "mojaloop-sdk", "{}", all["mtn"]);
    assert_eq!(status(&all["mpesa"]), "succeeded");

    state.live.load().paused.set("mpesa-b2c", true);
    let waiting = app
        .submit(
            "waits",
            vec![payment("w", "mobile:254700000002@mpesa", "50")],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let now = app.payments(&waiting).await;
    assert_eq!(status(&now["w"]), "received", "{}", now["w"]);
    assert_eq!(
        app.sim
            .simulator
            .stats()
            .submissions
            .get(now["w"]["id"].as_str().expect("id")),
        None
    );
    // Resumed: it goes (deferred payments are looked at again within 5 s).
    state.live.load().paused.set("mpesa-b2c", false);
    let done = app.wait_final(&waiting).await;
    assert_eq!(status(&done["w"]), "succeeded");
    assert_eq!(
        state.store.paused_dfsps().await.expect("paused"),
        vec!["mtn-momo".to_string()]
    );
}

#[tokio::test]
async fn a_held_batch_waits_until_released() {
    let app = spawn_app().await;
    let state = &app.app.state;
    // Nothing can leave while M-Pesa is paused, so the hold is taken before any send.
    state.live.load().paused.set("mpesa-b2c", true);
    let batch = app
        .submit(
            "held",
            (0..5)
                .map(|i| {
                    payment(
                        &format!("h{i}"),
                        &format!("mobile:25470000010{i}@mpesa"),
                        "50",
                    )
                })
                .collect(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let moved = state
        .store
        .hold_batch(&batch, true, now_ms())
        .await
        .expect("hold")
        .expect("batch");
    assert!(moved <= 5);
    state.live.load().paused.set("mpesa-b2c", false);
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    let now = app.payments(&batch).await;
    assert!(now.values().all(|p| status(p) == "received"), "{now:?}");
    assert_eq!(
        state
            .store
            .hold_batch("no-such-batch", false, now_ms())
            .await
            .expect("release"),
        None
    );
    state
        .store
        .hold_batch(&batch, false, now_ms())
        .await
        .expect("release");
    let done = app.wait_final(&batch).await;
    assert!(done.values().all(|p| status(p) == "succeeded"), "{done:?}");
}

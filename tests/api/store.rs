//! The group writer: jobs merged into one transaction each get their own results back.

use pil::payment::{Change, Status};
use pil::store::{self, BatchInsert, NewPayment, RawCallback, Writer};

fn row(i: usize) -> NewPayment {
    NewPayment {
        id: format!("p{i}"),
        reference_id: format!("r{i}"),
        payee_fa: Some("mobile:1@mtn".into()),
        payee_id_type: None,
        payee_id_value: None,
        amount_minor: 100,
        currency: "KES".into(),
        payee_name: None,
        note: None,
        meta: None,
        ..Default::default()
    }
}

/// A store in `dir` holding one batch of payments p0..p{n-1}, all `received`.
async fn store_with(dir: &std::path::Path, n: usize) -> std::sync::Arc<dyn store::Store> {
    let store = store::open(&format!("sqlite:{}", dir.join("s.db").display()))
        .await
        .expect("store");
    let rows: Vec<NewPayment> = (0..n).map(row).collect();
    let batch = pil::ingest::new_batch("s", "b", &rows, 0);
    store.insert_batch(&batch, &rows).await.expect("insert");
    store
}

fn attempt(key: &str, http_status: i64, outcome: &str) -> pil::payment::Attempt {
    pil::payment::Attempt {
        dfsp: "mtn-momo".into(),
        kind: "submit",
        idempotency_key: Some(key.into()),
        method: "POST".into(),
        url: "http://dfsp/transfer".into(),
        started_at: 1,
        finished_at: 2,
        http_status: Some(http_status),
        outcome: outcome.into(),
        error: None,
    }
}

fn cancel(id: &str) -> Change {
    Change::at(id, Status::Received)
        .step(Status::Cancelled, Some("cancelled"), None)
        .expect("legal")
}

#[tokio::test]
async fn merged_jobs_get_their_own_results() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = store::open(&format!("sqlite:{}", dir.path().join("w.db").display()))
        .await
        .expect("store");
    let rows: Vec<NewPayment> = (0..3).map(row).collect();
    let batch = pil::ingest::new_batch("s", "b", &rows, 0);
    assert!(matches!(
        store.insert_batch(&batch, &rows).await.expect("insert"),
        BatchInsert::Created(_)
    ));
    let writer = Writer::start(store.clone());
    let callback = RawCallback {
        dfsp: "mtn-momo".into(),
        method: "PUT".into(),
        path: "/x".into(),
        headers: serde_json::json!({}),
        body: b"{}".to_vec(),
        received_at: 0,
    };
    // Enqueued in this order (join! polls left to right), possibly merged into one commit.
    let (a, b, c) = tokio::join!(
        writer.apply(vec![cancel("p0")]),
        writer.insert_callback(callback),
        writer.apply(vec![cancel("p0"), cancel("p1"), cancel("nope")]),
    );
    use pil::store::Applied::{Done, Stale};
    assert_eq!(a.expect("a"), vec![Done]);
    assert!(b.expect("b") > 0);
    assert_eq!(c.expect("c"), vec![Stale, Done, Stale]);
    let p2 = store.get_payment("p2").await.expect("get").expect("p2");
    assert_eq!(p2.status, Status::Received);
    let events = store.payment_events("p0").await.expect("events");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.to == Status::Cancelled)
            .count(),
        1
    );
}

#[tokio::test]
async fn an_answer_that_lost_the_race_still_leaves_its_http_exchange_in_the_record() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = store_with(dir.path(), 1).await;
    let writer = Writer::start(store.clone());
    let attempt = attempt("k", 202, "accepted");
    // Expects `sending`, but the payment is still `received`: the change is stale.
    let late = Change::at("p0", Status::Sending)
        .step(Status::Accepted, Some("accepted"), None)
        .expect("legal")
        .with_attempt(attempt);
    assert_eq!(
        writer.apply(vec![late]).await.expect("apply"),
        vec![pil::store::Applied::Stale]
    );
    let p0 = store.get_payment("p0").await.expect("get").expect("p0");
    assert_eq!(p0.status, Status::Received, "a stale change moves nothing");
    let attempts = store.payment_attempts("p0").await.expect("attempts");
    assert_eq!(attempts.len(), 1, "but the exchange is on record");
    assert_eq!(attempts[0].attempt.http_status, Some(202));
}

/// Claims hand each due payment to one claimer at a time, go on where the last one stopped,
/// find again what a written change released or what a lapsed lease gave back.
#[tokio::test]
async fn claims_never_hand_out_a_held_payment() {
    use pil::store::Claim;
    let dir = tempfile::tempdir().expect("tmp");
    let store = store_with(dir.path(), 5).await;
    let now = pil::clock::now_ms();
    let claim = |limit: i64, at: i64| {
        let store = store.clone();
        async move {
            let got = store
                .claim(Claim::Dispatch, at, limit, at + 60_000, "me")
                .await
                .expect("claim");
            got.into_iter().map(|p| p.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(claim(2, now).await, ["p0", "p1"]);
    assert_eq!(claim(2, now).await, ["p2", "p3"]);
    // Past the end, the second pass from the start skips the four still held.
    assert_eq!(claim(5, now).await, ["p4"]);
    assert!(claim(5, now).await.is_empty(), "every payment is held");
    // A written change ends its payment's lease (here it stays due, as a deferral would).
    let writer = Writer::start(store.clone());
    let keep = Change::at("p1", Status::Received).with(|f| f.lease_until = Some(0));
    assert_eq!(
        writer.apply(vec![keep]).await.expect("apply"),
        [pil::store::Applied::Done]
    );
    assert_eq!(claim(5, now).await, ["p1"]);
    // Once the leases lapse, the rest is due again.
    assert_eq!(claim(5, now + 61_000).await, ["p0", "p1", "p2", "p3", "p4"]);
}

/// Grouped statements are padded to a few shapes: a group of any size writes exactly its own
/// rows (no padding row lands anywhere), and a group with one stale change is written again
/// carefully without doubling anything of the first try.
#[tokio::test]
async fn odd_sized_groups_write_exactly_their_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = store_with(dir.path(), 7).await;
    let writer = Writer::start(store.clone());
    let attempt = |i: usize| attempt(&format!("k{i}"), 400, "failed");
    // Five changes, three with an exchange on record: no statement has a power-of-two rows.
    let changes: Vec<Change> = (0..5)
        .map(|i| {
            let c = cancel(&format!("p{i}"));
            if i < 3 { c.with_attempt(attempt(i)) } else { c }
        })
        .collect();
    use pil::store::Applied::{Done, Stale};
    assert_eq!(writer.apply(changes).await.expect("apply"), vec![Done; 5]);
    // Then three more, the middle one stale (p4 is cancelled already).
    let again = vec![
        cancel("p5"),
        cancel("p4"),
        cancel("p6").with_attempt(attempt(6)),
    ];
    assert_eq!(
        writer.apply(again).await.expect("apply"),
        vec![Done, Stale, Done]
    );
    for i in 0..7 {
        let id = format!("p{i}");
        let p = store.get_payment(&id).await.expect("get").expect("payment");
        assert_eq!(p.status, Status::Cancelled, "{id}");
        let events = store.payment_events(&id).await.expect("events");
        let cancels = events
            .iter()
            .filter(|e| e.event.to == Status::Cancelled)
            .count();
        assert_eq!(cancels, 1, "{id}: one cancel event");
        let attempts = store.payment_attempts(&id).await.expect("attempts");
        let expected = usize::from(i < 3 || i == 6);
        assert_eq!(attempts.len(), expected, "{id}: its exchanges only");
    }
}

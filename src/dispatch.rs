//! Dispatch: background workers claim due payments in small groups and drive them
//! received → routed → sending → accepted | succeeded | failed | unknown.
//!
//! The order is what keeps money safe: routing and mapping run first (script errors fail only
//! their payment); then each payment waits for a place among its DFSP's staged requests (at
//! most `max_staged` of them), and `sending` (with the routing decision) is committed for
//! the staged payments, grouped; only payments whose `sending` mark committed are sent, each as
//! soon as one of its DFSP's in-flight slots frees up, so a slot is never held during a
//! database commit; each answer is parsed and committed as it arrives (grouped with whatever
//! else finished). A send that may have reached the DFSP and got no answer becomes `unknown`,
//! never a resend. This module does not poll or take callbacks.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rhai::{Dynamic, Map};
use sha2::Digest;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::clock::now_ms;
use crate::executor::{DfspClient, DfspRequest, Sent};
use crate::follow::{self, report_change};
use crate::map::{Outcome, Reported};
use crate::payment::{Attempt, Change, IllegalTransition, Payment, Status};
use crate::route::{Decision, Live, route};
use crate::script::Adapter;
use crate::script::convert::{payment_dynamic, unshared};
use crate::store::{Applied, Claim, Store, Writer};

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub workers: usize,
    pub claim_size: i64,
    /// Payments claimed and not yet settled, across all workers.
    pub max_outstanding: usize,
    pub idle_ms: u64,
    pub claim_lease_ms: i64,
    pub sending_lease_ms: i64,
    /// Base of the callback URLs handed to adapters: `{public_url}/callbacks/{dfsp}`.
    pub public_url: String,
    pub instance_id: String,
}

pub struct Dispatcher {
    metrics: Arc<crate::metrics::Metrics>,
    store: Arc<dyn Store>,
    writer: Writer,
    live: Arc<ArcSwap<Live>>,
    settings: DispatchSettings,
    wake: Arc<Notify>,
    outstanding: Arc<Semaphore>,
    stopping: std::sync::atomic::AtomicBool,
}

/// One request to send: a single payment, or several in one bulk request.
struct ToSend {
    /// The payments it carries, each with the map its scripts see.
    payments: Vec<(Payment, Dynamic)>,
    adapter: Arc<Adapter>,
    client: Arc<DfspClient>,
    request: DfspRequest,
    key: String,
    /// `Some` (the `ctx` it was built with) for a bulk request, which is rebuilt if some of its
    /// payments cannot be marked `sending` (cancelled meanwhile).
    bulk_ctx: Option<Dynamic>,
    permit: Option<OwnedSemaphorePermit>,
}

/// A payment whose DFSP is chosen, waiting to be mapped into a request.
struct Mapped {
    payment: Payment,
    script_map: Dynamic,
    dfsp: String,
    fallbacks: Vec<String>,
    route_version: Option<String>,
    adapter: Arc<Adapter>,
    client: Arc<DfspClient>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        writer: Writer,
        live: Arc<ArcSwap<Live>>,
        settings: DispatchSettings,
        wake: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            metrics,
            outstanding: Arc::new(Semaphore::new(settings.max_outstanding.max(1))),
            store,
            writer,
            live,
            settings,
            wake,
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts the worker and poller tasks; they run until the runtime stops.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        for _ in 0..self.settings.workers.max(1) {
            let me = self.clone();
            handles.push(tokio::spawn(async move { me.work_loop().await }));
        }
        let me = self.clone();
        handles.push(tokio::spawn(async move { me.poll_loop().await }));
        handles
    }

    /// Stops claiming new payments and waits (up to `grace`) until every payment already
    /// claimed has its answer recorded, so a planned stop leaves nothing `sending`.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let all = u32::try_from(self.settings.max_outstanding.max(1)).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.outstanding.acquire_many(all))
            .await
            .is_ok_and(|permits| permits.is_ok())
    }

    async fn work_loop(self: Arc<Self>) {
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            match self.dispatch_once().await {
                Ok(0) => {
                    let idle = Duration::from_millis(self.settings.idle_ms);
                    let _ = tokio::time::timeout(idle, self.wake.notified()).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "dispatch failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn poll_loop(self: Arc<Self>) {
        let mut last_recovery = 0;
        loop {
            let now = now_ms();
            if now - last_recovery > 10_000 {
                last_recovery = now;
                match self.store.recover_sending(now, None).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(count = n, "sends with expired leases are now unknown"),
                    Err(e) => tracing::error!(error = %e, "recovery failed"),
                }
            }
            match follow::poll_once(
                &self.store,
                &self.writer,
                &self.live,
                &self.settings.instance_id,
                200,
                &self.settings.public_url,
                &self.metrics,
            )
            .await
            {
                Ok(0) => tokio::time::sleep(Duration::from_millis(self.settings.idle_ms)).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Claims one group of due payments, routes and maps them, settles those that will not
    /// be sent, and hands the rest to a sending task. Returns how many payments it claimed.
    pub async fn dispatch_once(&self) -> Result<usize, String> {
        let size = self.settings.claim_size.max(1) as usize;
        let mut permits = self
            .outstanding
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|e| e.to_string())?;
        let now = now_ms();
        let claimed = self
            .store
            .claim(
                Claim::Dispatch,
                now,
                size as i64,
                now + self.settings.claim_lease_ms,
                &self.settings.instance_id,
            )
            .await
            .map_err(|e| e.to_string())?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let count = claimed.len();
        let live = self.live.load_full();
        let (settled, mut sends) = self.prepare(&live, claimed, now);
        self.writer.apply(settled).await?;
        for s in &mut sends {
            s.permit = permits.split(s.payments.len());
        }
        drop(permits);
        if !sends.is_empty() {
            let writer = self.writer.clone();
            let engine = live.bundle.engine.clone();
            let lease_ms = self.settings.sending_lease_ms;
            let owner = self.settings.instance_id.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(
                async move { send_all(writer, engine, sends, lease_ms, owner, metrics).await },
            );
        }
        Ok(count)
    }

    /// Routes and maps each payment. Returns the changes that settle a payment without
    /// sending (rejections, script errors) and the requests to send.
    fn prepare(&self, live: &Live, claimed: Vec<Payment>, now: i64) -> (Vec<Change>, Vec<ToSend>) {
        let bundle = &live.bundle;
        let engine = &bundle.engine;
        let route_ctx = live.routing_ctx(now);
        let mut settled = Vec::new();
        let mut sends = Vec::new();
        let mut bulk: std::collections::BTreeMap<String, Vec<Mapped>> = Default::default();
        for p in claimed {
            let mut script_map = payment_dynamic(&p);
            let (dfsp, fallbacks, route_version) = if p.status == Status::Received {
                match route(
                    bundle,
                    script_map.clone(),
                    route_ctx.clone(),
                    Some(&p.amount),
                ) {
                    Ok(Decision::Dfsps(ids)) => {
                        let mut up = live.available(&ids, now);
                        if up.is_empty() {
                            settled.push(defer(&p, now));
                            continue;
                        }
                        let first = up.remove(0);
                        (first, up, Some(bundle.routing.version.clone()))
                    }
                    Ok(Decision::Reject { code, message }) => {
                        settled.extend(settle(
                            &p,
                            Status::Rejected,
                            &code,
                            message,
                            Some(&bundle.routing.version),
                        ));
                        continue;
                    }
                    Err(e) => {
                        settled.extend(settle(
                            &p,
                            Status::Failed,
                            "script_error",
                            e.to_string(),
                            Some(&bundle.routing.version),
                        ));
                        continue;
                    }
                }
            } else {
                // A routed payment's last send surely did not execute, so when its DFSP is
                // down it may move on to the next fallback that is up.
                let mut chain: Vec<String> = p.dfsp.iter().chain(&p.fallbacks).cloned().collect();
                let up = live.available(&chain, now);
                if let Some(first_up) = up.first() {
                    let skip = chain.iter().position(|d| d == first_up).unwrap_or(0);
                    chain.drain(..skip);
                } else if !chain.is_empty() {
                    settled.push(defer(&p, now));
                    continue;
                }
                let mut chain = chain.into_iter();
                match chain.next() {
                    Some(d) => (d, chain.collect(), None),
                    None => {
                        settled.extend(settle(
                            &p,
                            Status::Failed,
                            "no_dfsp",
                            "routed without a DFSP".into(),
                            None,
                        ));
                        continue;
                    }
                }
            };
            let (Some(adapter), Some(client)) = (bundle.adapter(&dfsp), live.clients.get(&dfsp))
            else {
                settled.extend(settle(
                    &p,
                    Status::Failed,
                    "dfsp_unavailable",
                    format!("no adapter '{dfsp}' is loaded"),
                    route_version.as_deref(),
                ));
                continue;
            };
            if let Some(mut m) = script_map.write_lock::<Map>() {
                m.insert("dfsp".into(), dfsp.clone().into());
            }
            let mapped = Mapped {
                payment: p,
                script_map,
                dfsp: dfsp.clone(),
                fallbacks,
                route_version,
                adapter: adapter.clone(),
                client: client.clone(),
            };
            if adapter.can_batch() {
                bulk.entry(dfsp).or_default().push(mapped);
            } else {
                self.map_one(engine, mapped, now, &mut settled, &mut sends);
            }
        }
        for (_, group) in bulk {
            let size = group
                .first()
                .map_or(1, |m| m.adapter.config.capabilities.bulk_size.max(1));
            let mut group = group.into_iter().peekable();
            while group.peek().is_some() {
                let chunk: Vec<Mapped> = group.by_ref().take(size).collect();
                if chunk.len() == 1 {
                    for m in chunk {
                        self.map_one(engine, m, now, &mut settled, &mut sends);
                    }
                } else {
                    self.map_bulk(engine, chunk, now, &mut settled, &mut sends);
                }
            }
        }
        (settled, sends)
    }

    fn callback_url(&self, dfsp: &str) -> String {
        format!(
            "{}/callbacks/{dfsp}",
            self.settings.public_url.trim_end_matches('/')
        )
    }

    /// `build_request` for one payment.
    fn map_one(
        &self,
        engine: &rhai::Engine,
        mut m: Mapped,
        now: i64,
        settled: &mut Vec<Change>,
        sends: &mut Vec<ToSend>,
    ) {
        let p = &m.payment;
        let key = match (&p.dfsp, &p.idempotency_key) {
            (Some(d), Some(k)) if *d == m.dfsp => k.clone(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        let ctx = m.adapter.request_ctx(
            now,
            p.attempts + 1,
            Some(&key),
            Some(self.callback_url(&m.dfsp)),
        );
        // The adapter's parse_response sees the key this send uses.
        if let Some(mut map) = m.script_map.write_lock::<Map>() {
            map.insert("idempotency_key".into(), key.clone().into());
        }
        match m.adapter.build_request(engine, m.script_map.clone(), ctx) {
            Ok(request) => {
                let key = request.idempotency_key.clone().unwrap_or(key);
                sends.push(ToSend {
                    payments: vec![(m.chosen(), m.script_map)],
                    adapter: m.adapter,
                    client: m.client,
                    request,
                    key,
                    bulk_ctx: None,
                    permit: None,
                });
            }
            Err(e) => settled.extend(script_failure(&m, &e.to_string())),
        }
    }

    /// `build_batch_request` for payments going to the same DFSP. Their shared idempotency
    /// key is derived from their ids, so the same group always has the same key.
    fn map_bulk(
        &self,
        engine: &rhai::Engine,
        mut chunk: Vec<Mapped>,
        now: i64,
        settled: &mut Vec<Change>,
        sends: &mut Vec<ToSend>,
    ) {
        let mut ids: Vec<&str> = chunk.iter().map(|m| m.payment.id.as_str()).collect();
        ids.sort_unstable();
        // 32 hex characters: within the 35 that ISO 20022 allows a MsgId.
        let key = hex::encode(&sha2::Sha256::digest(ids.join(",").as_bytes())[..16]);
        for m in &mut chunk {
            if let Some(mut map) = m.script_map.write_lock::<Map>() {
                map.insert("idempotency_key".into(), key.clone().into());
            }
        }
        let first = &chunk[0];
        let attempt = chunk.iter().map(|m| m.payment.attempts).max().unwrap_or(0) + 1;
        let ctx = first.adapter.request_ctx(
            now,
            attempt,
            Some(&key),
            Some(self.callback_url(&first.dfsp)),
        );
        let maps: rhai::Array = chunk.iter().map(|m| unshared(&m.script_map)).collect();
        match first.adapter.build_batch_request(engine, maps, ctx.clone()) {
            Ok(request) => {
                let adapter = first.adapter.clone();
                let client = first.client.clone();
                let key = request.idempotency_key.clone().unwrap_or(key);
                sends.push(ToSend {
                    payments: chunk
                        .into_iter()
                        .map(|m| (m.chosen(), m.script_map))
                        .collect(),
                    adapter,
                    client,
                    request,
                    key,
                    bulk_ctx: Some(ctx),
                    permit: None,
                });
            }
            Err(e) => {
                for m in &chunk {
                    settled.extend(script_failure(m, &e.to_string()));
                }
            }
        }
    }
}

impl Mapped {
    /// The payment with its routing decision and the adapter version that maps it.
    fn chosen(&self) -> Payment {
        let mut payment = self.payment.clone();
        payment.dfsp = Some(self.dfsp.clone());
        payment.fallbacks = self.fallbacks.clone();
        payment.route_version = self.route_version.clone().or(payment.route_version);
        payment.adapter_version = Some(self.adapter.script.version.clone());
        payment
    }
}

/// A mapping script failed: the payment fails with its error; nothing was sent.
fn script_failure(m: &Mapped, error: &str) -> Option<Change> {
    let p = &m.payment;
    let change = Change::from(p).with(|f| {
        f.dfsp = Some(Some(m.dfsp.clone()));
        f.route_version = m.route_version.clone();
        f.adapter_version = Some(m.adapter.script.version.clone());
        f.reason_code = Some("script_error".into());
        f.reason = Some(error.to_string());
        f.lease_until = Some(0);
    });
    let change = if p.status == Status::Received {
        change.step(Status::Routed, Some("routed"), Some(m.dfsp.clone()))
    } else {
        Ok(change)
    }
    .and_then(|c| {
        c.step(
            Status::Failed,
            Some("script_error"),
            Some(error.to_string()),
        )
    });
    change
        .map_err(|illegal| tracing::error!(payment = %p.id, %illegal, "cannot fail payment"))
        .ok()
}

/// Leaves a payment where it is for a few seconds: every DFSP it could go to is down.
fn defer(p: &Payment, now: i64) -> Change {
    Change::at(&p.id, p.status).with(|f| {
        f.next_at = Some(now + 5_000);
        f.lease_until = Some(0);
    })
}

/// received|routed → sending, committed before the request leaves.
fn sending_change(
    p: &Payment,
    key: &str,
    lease_until: i64,
    owner: &str,
) -> Result<Change, IllegalTransition> {
    let at = Change::at(&p.id, p.status).with(|f| {
        f.lease_owner = Some(owner.to_string());
        f.dfsp = Some(p.dfsp.clone());
        f.fallbacks = Some(p.fallbacks.clone());
        f.idempotency_key = Some(Some(key.to_string()));
        f.route_version = p.route_version.clone();
        f.adapter_version = p.adapter_version.clone();
        f.lease_until = Some(lease_until);
        f.add_attempt = true;
    });
    let detail = p.dfsp.clone();
    let at = if p.status == Status::Received {
        at.step(Status::Routed, Some("routed"), detail.clone())?
    } else {
        at
    };
    at.step(Status::Sending, Some("sending"), detail)
}

fn settle(
    p: &Payment,
    to: Status,
    code: &str,
    message: String,
    route_version: Option<&str>,
) -> Option<Change> {
    let change = Change::from(p).with(|f| {
        f.reason_code = Some(code.to_string());
        f.reason = Some(message.clone());
        f.route_version = route_version.map(str::to_string);
        f.lease_until = Some(0);
    });
    change
        .step(to, Some(code), Some(message))
        .map_err(|illegal| tracing::error!(payment = %p.id, %illegal, "cannot settle payment"))
        .ok()
}

/// Sends a group: each request waits for a place among its DFSP's staged requests, then
/// `sending` is committed for the payments of the requests that got one (grouped), then each
/// request waits for a slot among its DFSP's requests in flight and leaves in its own task;
/// answers are committed as they arrive, grouped with whatever else finished. A bulk request
/// counts as one request.
async fn send_all(
    writer: Writer,
    engine: Arc<rhai::Engine>,
    group: Vec<ToSend>,
    lease_ms: i64,
    owner: String,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    for s in group {
        let tx = ready_tx.clone();
        tokio::spawn(async move {
            if let Some(staged) = s.client.stage().await {
                let _ = tx.send((s, staged));
            }
        });
    }
    drop(ready_tx);
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_answers(
        writer.clone(),
        engine.clone(),
        done_rx,
        metrics,
    ));
    while let Some(first) = ready_rx.recv().await {
        let ready = gather(first, &mut ready_rx).await;
        let now = now_ms();
        let mut changes = Vec::new();
        let mut going = Vec::with_capacity(ready.len());
        for (mut s, staged) in ready {
            let key = s.key.clone();
            s.payments.retain(
                |(p, _)| match sending_change(p, &key, now + lease_ms, &owner) {
                    Ok(change) => {
                        changes.push(change);
                        true
                    }
                    Err(illegal) => {
                        tracing::error!(payment = %p.id, %illegal, "unexpected status at dispatch");
                        false
                    }
                },
            );
            going.push((s, staged));
        }
        let mut applied = match writer.apply_urgent(changes).await {
            Ok(applied) => applied.into_iter(),
            Err(e) => {
                // Nothing was marked `sending`, so nothing leaves; the claim lease brings the
                // payments back.
                tracing::error!(error = %e, "could not mark payments as sending");
                continue;
            }
        };
        for (mut s, staged) in going {
            let before = s.payments.len();
            // Cancelled or taken by someone else meanwhile: not sent.
            s.payments
                .retain(|_| applied.next().is_some_and(|a| a == Applied::Done));
            if s.payments.is_empty() {
                continue;
            }
            if s.payments.len() < before
                && let Some(ctx) = s.bulk_ctx.clone()
            {
                // The bulk request must carry exactly the payments marked `sending`.
                let maps = s.payments.iter().map(|(_, m)| unshared(m)).collect();
                match s.adapter.build_batch_request(&engine, maps, ctx) {
                    Ok(request) => s.request = request,
                    Err(e) => {
                        let reason = format!("rebuilding the bulk request failed: {e}");
                        let _ = done_tx.send((s, Sent::NotSent(reason), now, now_ms()));
                        continue;
                    }
                }
            }
            let tx = done_tx.clone();
            tokio::spawn(async move {
                let Some(slot) = s.client.acquire().await else {
                    let sent = Sent::NotSent("executor is shutting down".into());
                    let _ = tx.send((s, sent, now, now_ms()));
                    return;
                };
                drop(staged);
                let started = now_ms();
                let sent = s.client.send_permitted(&s.request).await;
                drop(slot);
                let _ = tx.send((s, sent, started, now_ms()));
            });
        }
    }
    drop(done_tx);
    let _ = recorder.await;
}

/// Waits briefly for more items after `first`, so that one commit covers them all.
async fn gather<T>(first: T, rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut items = vec![first];
    let linger = tokio::time::sleep(Duration::from_millis(2));
    tokio::pin!(linger);
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(item) => items.push(item),
                None => break,
            },
            _ = &mut linger => break,
        }
    }
    items
}

async fn record_answers(
    writer: Writer,
    engine: Arc<rhai::Engine>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(ToSend, Sent, i64, i64)>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let done = gather(first, &mut rx).await;
        let changes: Vec<Change> = done
            .iter()
            .flat_map(|(s, sent, started, finished)| {
                after_send(&engine, &metrics, s, sent, *started, *finished)
            })
            .collect();
        if let Err(e) = writer.apply(changes).await {
            // The payments stay in `sending`; lease expiry turns them into `unknown`.
            tracing::error!(error = %e, "could not record DFSP answers");
        }
        // Dropping the sends releases their outstanding permits, now that the answers are stored.
        drop(done);
    }
}

/// What a send proves when the DFSP gave no answer a script could read.
fn unanswered(sent: &Sent) -> Option<Outcome> {
    let blank = |status, code: &str, reason: &str, not_executed| Outcome {
        status,
        dfsp_ref: None,
        reason_code: Some(code.into()),
        reason: Some(reason.to_string()),
        not_executed,
        retry: not_executed,
        next: None,
    };
    match sent {
        Sent::Response(_) => None,
        Sent::NotSent(reason) => Some(blank(Reported::Failed, "not_sent", reason, true)),
        Sent::Unknown(reason) => Some(blank(Reported::Unknown, "no_response", reason, false)),
    }
}

fn script_unknown(e: &crate::script::ScriptError) -> Outcome {
    Outcome {
        status: Reported::Unknown,
        dfsp_ref: None,
        reason_code: Some("script_error".into()),
        reason: Some(e.to_string()),
        not_executed: false,
        retry: false,
        next: None,
    }
}

/// The changes that one send's result causes, from `sending`: one per payment it carried.
fn after_send(
    engine: &rhai::Engine,
    metrics: &crate::metrics::Metrics,
    s: &ToSend,
    sent: &Sent,
    started: i64,
    finished: i64,
) -> Vec<Change> {
    let cfg = &s.adapter.config;
    let attempt = Attempt {
        dfsp: cfg.id.clone(),
        kind: "submit",
        idempotency_key: Some(s.key.clone()),
        method: s.request.method.to_string(),
        url: s.client.url_for(&s.request.path),
        started_at: started,
        finished_at: finished,
        http_status: None,
        outcome: String::new(),
        error: None,
    };
    let mut error = None;
    let outcomes: Vec<Outcome> = match (sent, unanswered(sent)) {
        (_, Some(o)) => {
            error = o.reason.clone();
            vec![o; s.payments.len()]
        }
        (Sent::Response(resp), None) if s.bulk_ctx.is_some() => {
            let maps = s.payments.iter().map(|(_, m)| unshared(m)).collect();
            match s.adapter.parse_batch_response(engine, maps, resp) {
                Ok(b) => s
                    .payments
                    .iter()
                    .map(|(p, _)| b.for_payment(&p.id).clone())
                    .collect(),
                Err(e) => {
                    error = Some(e.to_string());
                    vec![script_unknown(&e); s.payments.len()]
                }
            }
        }
        (Sent::Response(resp), None) => s
            .payments
            .iter()
            .map(|(_, m)| {
                s.adapter
                    .parse_response(engine, m.clone(), resp)
                    .unwrap_or_else(|e| {
                        error = Some(e.to_string());
                        script_unknown(&e)
                    })
            })
            .collect(),
        _ => Vec::new(),
    };
    let http_status = match sent {
        Sent::Response(resp) => Some(i64::from(resp.status)),
        _ => None,
    };
    metrics.request(&cfg.id, "submit", sent, finished - started);
    let now = now_ms();
    s.payments
        .iter()
        .zip(outcomes)
        .filter_map(|((p, _), outcome)| {
            if outcome.status == Reported::Unknown {
                tracing::warn!(
                    payment = %p.id,
                    dfsp = %cfg.id,
                    payee = %p.masked_payee(),
                    reason = outcome.reason.as_deref().unwrap_or(""),
                    "outcome unknown; it will be looked up, never resent blindly"
                );
            } else {
                tracing::debug!(
                    payment = %p.id,
                    dfsp = %cfg.id,
                    payee = %p.masked_payee(),
                    status = ?outcome.status,
                    "DFSP answered"
                );
            }
            let mut p = p.clone();
            p.attempts += 1;
            let attempt = Attempt {
                http_status,
                outcome: format!("{:?}", outcome.status).to_lowercase(),
                error: error.clone(),
                ..attempt.clone()
            };
            report_change(&p, Status::Sending, cfg, &outcome, now, false)
                .map(|c| c.with_attempt(attempt))
        })
        .collect()
}

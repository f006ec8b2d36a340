//! Dispatch: background workers claim due payments in small groups and drive them
//! received → routed → sending → accepted | succeeded | failed | unknown.
//!
//! The order is what keeps money safe: routing and mapping run first (script errors fail only
//! their payment); then each payment waits for one of its DFSP's in-flight slots, and
//! `sending` (with the routing decision) is committed for the payments holding a slot, grouped;
//! only payments whose `sending` mark committed are sent; each answer is parsed and committed
//! as it arrives (grouped with whatever else finished). A send that may have reached the DFSP
//! and got no answer becomes `unknown`, never a resend. This module does not poll or take
//! callbacks.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rhai::{Dynamic, Map};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::clock::now_ms;
use crate::executor::{DfspClient, DfspRequest, Sent};
use crate::follow::{self, report_change};
use crate::map::{Outcome, Reported};
use crate::payment::{Attempt, Change, IllegalTransition, Payment, Status};
use crate::route::{Decision, Live, route};
use crate::script::Adapter;
use crate::script::convert::payment_dynamic;
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
    store: Arc<dyn Store>,
    writer: Writer,
    live: Arc<ArcSwap<Live>>,
    settings: DispatchSettings,
    wake: Arc<Notify>,
    outstanding: Arc<Semaphore>,
    stopping: std::sync::atomic::AtomicBool,
}

struct ToSend {
    payment: Payment,
    adapter: Arc<Adapter>,
    client: Arc<DfspClient>,
    request: DfspRequest,
    key: String,
    script_map: Dynamic,
    permit: Option<OwnedSemaphorePermit>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        writer: Writer,
        live: Arc<ArcSwap<Live>>,
        settings: DispatchSettings,
        wake: Arc<Notify>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
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
            s.permit = permits.split(1);
        }
        drop(permits);
        if !sends.is_empty() {
            let writer = self.writer.clone();
            let engine = live.bundle.engine.clone();
            let lease_ms = self.settings.sending_lease_ms;
            tokio::spawn(async move { send_all(writer, engine, sends, lease_ms).await });
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
            let key = match (&p.dfsp, &p.idempotency_key) {
                (Some(d), Some(k)) if *d == dfsp => k.clone(),
                _ => uuid::Uuid::new_v4().to_string(),
            };
            let ctx = adapter.request_ctx(
                now,
                p.attempts + 1,
                Some(&key),
                Some(format!(
                    "{}/callbacks/{dfsp}",
                    self.settings.public_url.trim_end_matches('/')
                )),
            );
            // The adapter's parse_response sees the key and DFSP this send uses.
            if let Some(mut m) = script_map.write_lock::<Map>() {
                m.insert("idempotency_key".into(), key.clone().into());
                m.insert("dfsp".into(), dfsp.clone().into());
            }
            match adapter.build_request(engine, script_map.clone(), ctx) {
                Ok(request) => {
                    let key = request.idempotency_key.clone().unwrap_or(key);
                    let mut payment = p;
                    payment.dfsp = Some(dfsp);
                    payment.fallbacks = fallbacks;
                    payment.route_version = route_version.or(payment.route_version);
                    payment.adapter_version = Some(adapter.script.version.clone());
                    sends.push(ToSend {
                        payment,
                        adapter: adapter.clone(),
                        client: client.clone(),
                        request,
                        key,
                        script_map,
                        permit: None,
                    });
                }
                Err(e) => {
                    let change = Change::from(&p).with(|f| {
                        f.dfsp = Some(Some(dfsp.clone()));
                        f.route_version = route_version.clone();
                        f.adapter_version = Some(adapter.script.version.clone());
                        f.reason_code = Some("script_error".into());
                        f.reason = Some(e.to_string());
                        f.lease_until = Some(0);
                    });
                    let change = if p.status == Status::Received {
                        change.step(Status::Routed, Some("routed"), Some(dfsp.clone()))
                    } else {
                        Ok(change)
                    }
                    .and_then(|c| {
                        c.step(Status::Failed, Some("script_error"), Some(e.to_string()))
                    });
                    match change {
                        Ok(c) => settled.push(c),
                        Err(illegal) => {
                            tracing::error!(payment = %p.id, %illegal, "cannot fail payment")
                        }
                    }
                }
            }
        }
        (settled, sends)
    }
}

/// Leaves a payment where it is for a few seconds: every DFSP it could go to is down.
fn defer(p: &Payment, now: i64) -> Change {
    Change::at(&p.id, p.status).with(|f| {
        f.next_at = Some(now + 5_000);
        f.lease_until = Some(0);
    })
}

/// received|routed → sending, committed before the request leaves.
fn sending_change(s: &ToSend, lease_until: i64) -> Result<Change, IllegalTransition> {
    let p = &s.payment;
    let at = Change::at(&p.id, p.status).with(|f| {
        f.dfsp = Some(p.dfsp.clone());
        f.fallbacks = Some(p.fallbacks.clone());
        f.idempotency_key = Some(Some(s.key.clone()));
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

/// Sends every request of a group concurrently and commits each outcome as it arrives,
/// grouping outcomes that arrive together.
/// Sends a group: each payment waits for a slot among its DFSP's requests in flight, then
/// `sending` is committed for the payments that got one (grouped), then each request leaves in
/// its own task; answers are committed as they arrive, grouped with whatever else finished.
async fn send_all(writer: Writer, engine: Arc<rhai::Engine>, group: Vec<ToSend>, lease_ms: i64) {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    for s in group {
        let tx = ready_tx.clone();
        tokio::spawn(async move {
            if let Some(slot) = s.client.acquire().await {
                let _ = tx.send((s, slot));
            }
        });
    }
    drop(ready_tx);
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_answers(writer.clone(), engine, done_rx));
    while let Some(first) = ready_rx.recv().await {
        let ready = gather(first, &mut ready_rx).await;
        let now = now_ms();
        let mut changes = Vec::with_capacity(ready.len());
        let mut going = Vec::with_capacity(ready.len());
        for (s, slot) in ready {
            match sending_change(&s, now + lease_ms) {
                Ok(change) => {
                    changes.push(change);
                    going.push((s, slot));
                }
                Err(illegal) => {
                    tracing::error!(payment = %s.payment.id, %illegal, "unexpected status at dispatch")
                }
            }
        }
        let applied = match writer.apply(changes).await {
            Ok(applied) => applied,
            Err(e) => {
                // Nothing was marked `sending`, so nothing leaves; the claim lease brings the
                // payments back.
                tracing::error!(error = %e, "could not mark payments as sending");
                continue;
            }
        };
        for ((s, slot), applied) in going.into_iter().zip(applied) {
            if applied != Applied::Done {
                continue; // cancelled or taken by someone else meanwhile: not sent
            }
            let tx = done_tx.clone();
            tokio::spawn(async move {
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
) {
    while let Some(first) = rx.recv().await {
        let done = gather(first, &mut rx).await;
        let changes: Vec<Change> = done
            .iter()
            .filter_map(|(s, sent, started, finished)| {
                after_send(&engine, s, sent, *started, *finished)
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

/// The change that one send's result causes, from `sending`.
fn after_send(
    engine: &rhai::Engine,
    s: &ToSend,
    sent: &Sent,
    started: i64,
    finished: i64,
) -> Option<Change> {
    let cfg = &s.adapter.config;
    let mut p = s.payment.clone();
    p.attempts += 1;
    let mut attempt = Attempt {
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
    let outcome = match sent {
        Sent::Response(resp) => {
            attempt.http_status = Some(i64::from(resp.status));
            match s.adapter.parse_response(engine, s.script_map.clone(), resp) {
                Ok(o) => o,
                Err(e) => {
                    attempt.error = Some(e.to_string());
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
            }
        }
        Sent::NotSent(reason) => {
            attempt.error = Some(reason.clone());
            Outcome {
                status: Reported::Failed,
                dfsp_ref: None,
                reason_code: Some("not_sent".into()),
                reason: Some(reason.clone()),
                not_executed: true,
                retry: true,
                next: None,
            }
        }
        Sent::Unknown(reason) => {
            attempt.error = Some(reason.clone());
            Outcome {
                status: Reported::Unknown,
                dfsp_ref: None,
                reason_code: Some("no_response".into()),
                reason: Some(reason.clone()),
                not_executed: false,
                retry: false,
                next: None,
            }
        }
    };
    attempt.outcome = format!("{:?}", outcome.status).to_lowercase();
    report_change(&p, Status::Sending, cfg, &outcome, now_ms(), false)
        .map(|c| c.with_attempt(attempt))
}

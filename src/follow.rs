//! Following payments to a final status: what a DFSP report (response, status query answer or
//! callback) means for a payment ([`report_change`]), DFSP callbacks (stored raw first, then
//! parsed by the adapter), and the poller that queries `accepted` and `unknown` payments on the
//! adapter's schedule. Duplicate and late reports are harmless: a report never moves a final
//! payment and never repeats a move already made. It never sends a payment.

use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::stream::{FuturesUnordered, StreamExt};
use rhai::{Dynamic, Map};

use crate::adapter::AdapterConfig;
use crate::clock::now_ms;
use crate::executor::Sent;
use crate::map::{CallbackMatch, Outcome, Reported, body_dynamic};
use crate::payment::{Attempt, Change, NotExecuted, Payment, Status};
use crate::route::Live;
use crate::script::convert::{json_to_dynamic, payment_dynamic};
use crate::store::{Claim, FinishedCallback, Lookup, RawCallback, Store, StoreError, Writer};

/// A parked payment is not looked at again until an operator acts.
pub const PARKED: i64 = i64::MAX;

/// The change a DFSP report causes for a payment currently in `current`, or `None` when it
/// changes nothing (duplicate, late, or about a final payment).
pub fn report_change(
    p: &Payment,
    current: Status,
    cfg: &AdapterConfig,
    o: &Outcome,
    now: i64,
    from_poll: bool,
) -> Option<Change> {
    if current.is_final() {
        return None;
    }
    let base = Change::at(&p.id, current).with(|f| {
        f.dfsp_ref = o.dfsp_ref.clone();
        f.lease_until = Some(0);
        f.add_poll = from_poll;
    });
    let detail = o.reason.clone();
    let code = o.reason_code.as_deref();
    let wait = |c: Change, after: i64| {
        let polls = p.polls + i64::from(from_poll);
        let next = if polls >= cfg.poll.max_polls {
            PARKED
        } else {
            now.saturating_add(after)
        };
        c.with(|f| f.next_at = Some(next))
    };
    let result = match o.status {
        Reported::Succeeded => base
            .with(|f| {
                f.reason_code = o.reason_code.clone();
                f.reason = o.reason.clone();
            })
            .step(Status::Succeeded, code, detail),
        Reported::Failed
            if o.not_executed && matches!(current, Status::Sending | Status::Unknown) =>
        {
            if o.retry && p.attempts < cfg.retry.max_attempts {
                let shift = u32::try_from(p.attempts.clamp(0, 10)).unwrap_or(10);
                let backoff = cfg.retry.backoff_ms.saturating_mul(1 << shift).min(60_000);
                base.with(|f| f.next_at = Some(now + backoff))
                    .back_to_routed(NotExecuted, "retry", detail)
            } else if let Some((next, rest)) = p.fallbacks.split_first() {
                base.with(|f| {
                    f.dfsp = Some(Some(next.clone()));
                    f.fallbacks = Some(rest.to_vec());
                    f.idempotency_key = Some(None);
                    f.next_at = Some(now);
                })
                .back_to_routed(
                    NotExecuted,
                    "fallback",
                    Some(format!(
                        "{} did not execute it ({}); trying {next}",
                        cfg.id,
                        o.reason_code.as_deref().unwrap_or("no reason")
                    )),
                )
            } else {
                failed(base, o)
            }
        }
        Reported::Failed => failed(base, o),
        Reported::Accepted | Reported::Pending => match current {
            Status::Sending | Status::Unknown => {
                // A pending continuation is for the poller to send, at once.
                let first = if o.next.is_some() {
                    0
                } else {
                    cfg.poll.first_after_ms
                };
                wait(base, first).step(Status::Accepted, Some("accepted"), detail)
            }
            _ if from_poll => {
                let after = if o.next.is_some() {
                    0
                } else {
                    cfg.poll.every_ms
                };
                Ok(wait(base, after))
            }
            _ => return None,
        },
        Reported::Unknown => match current {
            Status::Sending => wait(base, cfg.poll.first_after_ms).step(
                Status::Unknown,
                Some(code.unwrap_or("outcome_unknown")),
                detail,
            ),
            _ if from_poll => Ok(wait(base, cfg.poll.every_ms)),
            _ => return None,
        },
    };
    match result {
        Ok(change) => Some(change),
        Err(illegal) => {
            tracing::warn!(payment = %p.id, %illegal, "report ignored");
            None
        }
    }
}

fn failed(base: Change, o: &Outcome) -> Result<Change, crate::payment::IllegalTransition> {
    base.with(|f| {
        f.reason_code = Some(
            o.reason_code
                .clone()
                .unwrap_or_else(|| "dfsp_failed".into()),
        );
        f.reason = o.reason.clone();
    })
    .step(
        Status::Failed,
        Some(o.reason_code.as_deref().unwrap_or("dfsp_failed")),
        o.reason.clone(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("no adapter '{0}'")]
    UnknownDfsp(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("write failed: {0}")]
    Write(String),
}

/// What became of a callback, as recorded next to its raw copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    Applied(String),
    NoChange(String),
    UnknownPayment,
    Ignored,
    ScriptError(String),
    /// A report on several payments (e.g. a bank's status report for a whole file).
    Many(Vec<CallbackOutcome>),
}

impl CallbackOutcome {
    fn label(&self) -> String {
        match self {
            CallbackOutcome::Applied(_) => "applied".into(),
            CallbackOutcome::NoChange(_) => "no_change".into(),
            CallbackOutcome::UnknownPayment => "unknown_payment".into(),
            CallbackOutcome::Ignored => "ignored".into(),
            CallbackOutcome::ScriptError(e) => format!("script_error: {e}"),
            CallbackOutcome::Many(all) => {
                let count = |f: fn(&CallbackOutcome) -> bool| all.iter().filter(|o| f(o)).count();
                format!(
                    "applied {}, no_change {}, unknown_payment {}",
                    count(|o| matches!(o, CallbackOutcome::Applied(_))),
                    count(|o| matches!(o, CallbackOutcome::NoChange(_))),
                    count(|o| matches!(o, CallbackOutcome::UnknownPayment)),
                )
            }
        }
    }
}

/// Stores a DFSP callback, then applies what the adapter's `parse_callback` makes of it.
pub async fn handle_callback(
    store: &Arc<dyn Store>,
    writer: &Writer,
    live: &Live,
    raw: RawCallback,
) -> Result<CallbackOutcome, CallbackError> {
    let adapter = live
        .follower(&raw.dfsp)
        .map(|(a, _)| a.clone())
        .ok_or_else(|| CallbackError::UnknownDfsp(raw.dfsp.clone()))?;
    // The script's view is built first so the raw callback can move into the writer.
    // Header names arrive lower-cased (axum's HeaderMap), values as strings.
    let mut req = Map::new();
    req.insert("method".into(), raw.method.clone().into());
    req.insert("path".into(), raw.path.clone().into());
    req.insert("headers".into(), json_to_dynamic(&raw.headers));
    req.insert("body".into(), body_dynamic(&raw.body));
    let dfsp = raw.dfsp.clone();
    let id = writer
        .insert_callback(raw)
        .await
        .map_err(CallbackError::Write)?;
    let outcome = if !adapter.can_parse_callbacks() {
        CallbackOutcome::Ignored
    } else {
        match adapter.parse_callback(&live.bundle.engine, Dynamic::from_map(req)) {
            Err(e) => CallbackOutcome::ScriptError(e.to_string()),
            Ok(reports) if reports.is_empty() => CallbackOutcome::Ignored,
            Ok(reports) if reports.len() == 1 => {
                let (matcher, report) = &reports[0];
                let lookup = lookup_of(matcher, &dfsp);
                apply_report(store, writer, &adapter.config, &dfsp, &lookup, report).await?
            }
            Ok(reports) => CallbackOutcome::Many(
                apply_reports(store, writer, &adapter.config, &dfsp, reports).await?,
            ),
        }
    };
    let payment_id = match &outcome {
        CallbackOutcome::Applied(id) | CallbackOutcome::NoChange(id) => Some(id.as_str()),
        _ => None,
    };
    writer
        .finish_callback(FinishedCallback {
            id,
            payment_id: payment_id.map(str::to_string),
            outcome: outcome.label(),
        })
        .await
        .map_err(CallbackError::Write)?;
    Ok(outcome)
}

fn lookup_of(matcher: &CallbackMatch, dfsp: &str) -> Lookup {
    match matcher {
        CallbackMatch::PaymentId(id) => Lookup::Id(id.clone()),
        CallbackMatch::DfspRef(r) => Lookup::DfspRef {
            dfsp: dfsp.to_string(),
            dfsp_ref: r.clone(),
        },
        CallbackMatch::ReferenceId(r) => Lookup::Reference {
            sender_id: None,
            reference_id: r.clone(),
        },
    }
}

/// Applies a report on many payments (a bank's status report for a whole file): the payments
/// named by id are read in one query and their changes written in one group; a report that
/// lost a race, or names its payment another way, goes through [`apply_report`] on its own.
async fn apply_reports(
    store: &Arc<dyn Store>,
    writer: &Writer,
    cfg: &AdapterConfig,
    dfsp: &str,
    reports: Vec<(CallbackMatch, Outcome)>,
) -> Result<Vec<CallbackOutcome>, CallbackError> {
    let ids: Vec<String> = reports
        .iter()
        .filter_map(|(m, _)| match m {
            CallbackMatch::PaymentId(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let found: std::collections::HashMap<String, Payment> = store
        .payments_by_ids(&ids)
        .await?
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect();
    let mut outcomes: Vec<Option<CallbackOutcome>> = vec![None; reports.len()];
    let mut grouped = Vec::new();
    let mut changes = Vec::new();
    let now = now_ms();
    for (i, (m, report)) in reports.iter().enumerate() {
        let CallbackMatch::PaymentId(id) = m else {
            continue;
        };
        match found.get(id) {
            Some(p) if p.dfsp.as_deref() == Some(dfsp) => {
                match report_change(p, p.status, cfg, report, now, false) {
                    Some(change) => {
                        grouped.push((i, p.id.clone()));
                        changes.push(change);
                    }
                    None => outcomes[i] = Some(CallbackOutcome::NoChange(p.id.clone())),
                }
            }
            _ => outcomes[i] = Some(CallbackOutcome::UnknownPayment),
        }
    }
    let applied = writer.apply(changes).await.map_err(CallbackError::Write)?;
    for ((i, id), a) in grouped.into_iter().zip(applied) {
        if a == crate::store::Applied::Done {
            outcomes[i] = Some(CallbackOutcome::Applied(id));
        }
    }
    let mut out = Vec::with_capacity(reports.len());
    for ((m, report), done) in reports.iter().zip(outcomes) {
        out.push(match done {
            Some(o) => o,
            None => apply_report(store, writer, cfg, dfsp, &lookup_of(m, dfsp), report).await?,
        });
    }
    Ok(out)
}

/// Applies a callback's report to the payment it names. A report that lost a race (the
/// payment moved between reading and writing, e.g. the DFSP's answer to the send was committed
/// first) is recomputed against the payment's new status rather than dropped.
async fn apply_report(
    store: &Arc<dyn Store>,
    writer: &Writer,
    cfg: &AdapterConfig,
    dfsp: &str,
    lookup: &Lookup,
    report: &Outcome,
) -> Result<CallbackOutcome, CallbackError> {
    let mut last_seen = None;
    for _ in 0..5 {
        let Some(p) = store.find_payment(lookup).await? else {
            return Ok(CallbackOutcome::UnknownPayment);
        };
        if p.dfsp.as_deref() != Some(dfsp) {
            return Ok(CallbackOutcome::UnknownPayment);
        }
        let Some(change) = report_change(&p, p.status, cfg, report, now_ms(), false) else {
            return Ok(CallbackOutcome::NoChange(p.id));
        };
        let applied = writer
            .apply(vec![change])
            .await
            .map_err(CallbackError::Write)?;
        if applied.first() == Some(&crate::store::Applied::Done) {
            return Ok(CallbackOutcome::Applied(p.id));
        }
        last_seen = Some(p.id);
    }
    tracing::warn!(dfsp, "callback kept losing races; stored for review");
    Ok(last_seen.map_or(CallbackOutcome::UnknownPayment, CallbackOutcome::NoChange))
}

/// Continuation requests sent per payment in one poll.
const MAX_CONTINUATIONS: usize = 3;

/// Queries the status of due `accepted` and `unknown` payments; returns how many it looked at.
/// `public_url` is the base of the callback URLs handed to status requests: some DFSPs answer a
/// status query by callback only (M-Pesa's Transaction Status API).
pub async fn poll_once(
    store: &Arc<dyn Store>,
    writer: &Writer,
    live: &ArcSwap<Live>,
    owner: &str,
    limit: i64,
    public_url: &str,
    metrics: &crate::metrics::Metrics,
) -> Result<usize, CallbackError> {
    let now = now_ms();
    let claimed = store
        .claim(Claim::Poll, now, limit, now + 120_000, owner)
        .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let live = live.load_full();
    let engine = live.bundle.engine.clone();
    let mut parked = Vec::new();
    let mut queries = FuturesUnordered::new();
    let shared_reads = SharedReads::default();
    for p in &claimed {
        let dfsp = p.dfsp.clone().unwrap_or_default();
        let Some((adapter, client)) = live.follower(&dfsp) else {
            parked.push(park(p, "no adapter to query"));
            continue;
        };
        if !adapter.can_query_status() {
            parked.push(park(p, "the adapter has no status query"));
            continue;
        }
        let pmap = payment_dynamic(p);
        let ctx = adapter.request_ctx(
            now,
            p.attempts,
            None,
            Some(format!(
                "{}/callbacks/{dfsp}",
                public_url.trim_end_matches('/')
            )),
        );
        let req = match adapter.build_status_request(&engine, pmap.clone(), ctx) {
            Ok(Some(req)) => req,
            Ok(None) => {
                parked.push(park(p, "the DFSP offers no way to look this payment up"));
                continue;
            }
            Err(e) => {
                parked.push(park(p, &e.to_string()));
                continue;
            }
        };
        let adapter = adapter.clone();
        let client = client.clone();
        let engine = engine.clone();
        let shared_reads = shared_reads.clone();
        queries.push(async move {
            let started = now_ms();
            let sent = shared_reads
                .send(&dfsp, &client, &req, "status", metrics)
                .await;
            let finished = now_ms();
            let mut attempt = Attempt {
                dfsp: adapter.config.id.clone(),
                kind: "status",
                idempotency_key: None,
                method: req.method.to_string(),
                url: client.url_for(&req.path),
                started_at: started,
                finished_at: finished,
                http_status: None,
                outcome: String::new(),
                error: None,
            };
            let mut report = read_status(&adapter, &engine, &pmap, sent, &mut attempt);
            // Continuations (accept the party, then the quote, ...) move the same transfer on;
            // a few steps at most per poll, the rest at the next one.
            for _ in 0..MAX_CONTINUATIONS {
                let Some(next) = report.as_mut().and_then(|o| o.next.take()) else {
                    break;
                };
                let started = now_ms();
                let sent = shared_reads
                    .send(&dfsp, &client, &next, "continue", metrics)
                    .await;
                attempt = Attempt {
                    kind: "continue",
                    method: next.method.to_string(),
                    url: client.url_for(&next.path),
                    started_at: started,
                    finished_at: now_ms(),
                    http_status: None,
                    error: None,
                    ..attempt
                };
                report = read_status(&adapter, &engine, &pmap, sent, &mut attempt);
            }
            (p.id.clone(), adapter, attempt, report)
        });
    }
    let mut changes = parked;
    while let Some((id, adapter, mut attempt, report)) = queries.next().await {
        let Some(p) = claimed.iter().find(|p| p.id == id) else {
            continue;
        };
        let report = report.unwrap_or(Outcome {
            status: Reported::Unknown,
            dfsp_ref: None,
            reason_code: None,
            reason: None,
            not_executed: false,
            retry: false,
            next: None,
        });
        attempt.outcome = format!("{:?}", report.status).to_lowercase();
        if let Some(change) = report_change(p, p.status, &adapter.config, &report, now_ms(), true) {
            changes.push(change.with_attempt(attempt));
        }
    }
    writer.apply(changes).await.map_err(CallbackError::Write)?;
    Ok(claimed.len())
}

/// Within one poll, identical `GET`s to the same DFSP are sent once and their answer read by
/// every payment that asked: the payments of one bulk request usually look up the same file
/// or batch. Only reads are shared; anything else is sent as asked.
#[derive(Clone, Default)]
struct SharedReads(
    Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<Sent>>>>>,
);

impl SharedReads {
    /// Sends `req` (or, for a `GET` already sent this round, reuses its answer). Only requests
    /// that really leave are counted in the metrics.
    async fn send(
        &self,
        dfsp: &str,
        client: &crate::executor::DfspClient,
        req: &crate::executor::DfspRequest,
        kind: &str,
        metrics: &crate::metrics::Metrics,
    ) -> Sent {
        let measured = || async {
            let started = now_ms();
            let sent = client.send(req).await;
            metrics.request(dfsp, kind, &sent, now_ms() - started);
            sent
        };
        if req.method != reqwest::Method::GET || req.body.is_some() {
            return measured().await;
        }
        let mut key = format!("{dfsp} {}", req.path);
        for (k, v) in &req.headers {
            key.push_str(&format!("\n{k}: {v}"));
        }
        let cell = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_init(measured).await.clone()
    }
}

/// What a status query (or continuation) answer says, noting the exchange in `attempt`.
fn read_status(
    adapter: &crate::script::Adapter,
    engine: &rhai::Engine,
    pmap: &Dynamic,
    sent: Sent,
    attempt: &mut Attempt,
) -> Option<Outcome> {
    match sent {
        Sent::Response(resp) => {
            attempt.http_status = Some(i64::from(resp.status));
            adapter
                .parse_status_response(engine, pmap.clone(), &resp)
                .map_err(|e| attempt.error = Some(e.to_string()))
                .ok()
        }
        Sent::NotSent(e) | Sent::Unknown(e) => {
            attempt.error = Some(e);
            None
        }
    }
}

fn park(p: &Payment, why: &str) -> Change {
    tracing::info!(payment = %p.id, reason = why, "payment waits for an operator");
    Change::at(&p.id, p.status).with(|f| {
        f.next_at = Some(PARKED);
        f.lease_until = Some(0);
        f.reason = Some(why.to_string());
    })
}

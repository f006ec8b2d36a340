//! Durable storage: one interface ([`Store`]) for batches, payments, their append-only history,
//! dispatch attempts and raw DFSP callbacks, and for the admin API's audit log and script
//! versions, with one implementation per database. Callers
//! never see SQL or database-specific behaviour. The store applies [`Change`]s built by the
//! state machine; it never decides a status itself.

pub mod sqlite;

use async_trait::async_trait;

use crate::payment::{Attempt, Change, Event, Payment, Status};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("unsupported database url '{0}': expected sqlite:...")]
    UnsupportedUrl(String),
    #[error("store invariant broken: {0}")]
    Invariant(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A batch to insert, with its payments, as validated by ingest.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: String,
    pub sender_id: String,
    pub batch_id: String,
    pub request_hash: String,
    pub created_at: i64,
    /// Which API it came through: `native`, `legacy` (OpenG2P PIL API) or `g2p` (G2P Connect).
    pub channel: String,
    /// Where the sender wants status callbacks (G2P Connect `sender_uri`).
    pub callback_url: Option<String>,
}

/// Why a payment is stored already `rejected` (an APIs that answers per item, such as the
/// legacy PIL API, keeps bad items in the batch rather than refusing the whole batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct NewPayment {
    pub id: String,
    pub reference_id: String,
    pub payee_fa: Option<String>,
    pub payee_id_type: Option<String>,
    pub payee_id_value: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub payee_name: Option<String>,
    pub note: Option<String>,
    pub meta: Option<serde_json::Value>,
    /// From the payee directory; routing rules read them as `payment.attributes`.
    pub attributes: Option<serde_json::Value>,
    /// Not sent before this time (unix ms): a scheduled payment.
    pub not_before: Option<i64>,
    pub rejected: Option<Rejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub id: String,
    pub sender_id: String,
    pub batch_id: String,
    pub request_hash: String,
    pub payment_count: i64,
    pub created_at: i64,
    pub channel: String,
    pub callback_url: Option<String>,
}

/// One payee directory row: `(id_type, id_value)` → financial address + attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryEntry {
    pub id_type: String,
    pub id_value: String,
    pub fa: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// What inserting a batch did. Nothing is written unless it is `Created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchInsert {
    Created(BatchRecord),
    /// The same `(sender_id, batch_id)` with the same content: an idempotent replay.
    Replayed(BatchRecord),
    /// The same `(sender_id, batch_id)` with different content.
    Conflict(BatchRecord),
    /// These reference ids already exist for the sender.
    DuplicateReferences(Vec<String>),
}

/// Count and total per status and currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTotal {
    pub status: Status,
    pub currency: String,
    pub count: i64,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub at: i64,
    pub event: Event,
}

#[derive(Debug, Clone)]
pub struct StoredAttempt {
    pub at: i64,
    pub attempt: Attempt,
}

/// A callback to a sender, to be delivered by the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutbox {
    pub sender_id: String,
    pub url: String,
    pub body: String,
}

/// A queued callback as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub sender_id: String,
    pub url: String,
    pub body: String,
    pub attempts: i64,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub last_error: Option<String>,
}

/// A history entry of a payment in a batch of some channel, for followers of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEvent {
    pub event_id: i64,
    pub payment_id: String,
    pub batch_id: String,
}

/// Which payments a worker claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `received` and `routed` payments due to be (re)sent.
    Dispatch,
    /// `accepted` and `unknown` payments due for a status query.
    Poll,
}

/// How a callback names its payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Id(String),
    DfspRef {
        dfsp: String,
        dfsp_ref: String,
    },
    Reference {
        sender_id: Option<String>,
        reference_id: String,
    },
}

#[derive(Debug, Clone)]
pub struct RawCallback {
    pub dfsp: String,
    pub method: String,
    pub path: String,
    pub headers: serde_json::Value,
    pub body: Vec<u8>,
    pub received_at: i64,
}

/// Which payments [`Store::list_payments`] returns; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    pub batch_id: Option<String>,
    pub status: Option<Status>,
    pub dfsp: Option<String>,
}

/// What one group write contains.
#[derive(Debug, Clone, Default)]
pub struct WriteGroup {
    pub callbacks: Vec<RawCallback>,
    pub changes: Vec<Change>,
    pub finished: Vec<FinishedCallback>,
}

/// The outcome recorded next to a stored raw callback.
#[derive(Debug, Clone)]
pub struct FinishedCallback {
    pub id: i64,
    pub payment_id: Option<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, Default)]
pub struct WriteResult {
    /// Ids of the inserted callbacks, in order.
    pub callback_ids: Vec<i64>,
    /// One per change, in order.
    pub applied: Vec<Applied>,
}

/// What happened to each change of a group write, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// The payment was no longer in the expected status: someone else moved it first.
    Stale,
}

/// One change made through the admin API, to append to the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    pub at: i64,
    /// The admin token's name.
    pub actor: String,
    /// e.g. `script.write`, `script.rollback`, `scripts.reload`, `directory.import`.
    pub action: String,
    /// What changed, e.g. `rules/routing.rhai`.
    pub target: String,
    /// SHA-256 (hex) of the content before and after; `None` where there is none.
    pub before_hash: Option<String>,
    pub after_hash: Option<String>,
    /// A JSON object with whatever else explains the change.
    pub detail: serde_json::Value,
}

/// An audit log row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub entry: NewAudit,
}

/// One version of a script file (its exact bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewScriptVersion {
    /// Relative to the scripts folders: `rules/...` or `adapters/...`.
    pub path: String,
    /// SHA-256 (hex) of `content`.
    pub hash: String,
    pub content: Vec<u8>,
    pub actor: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptVersion {
    pub id: i64,
    pub version: NewScriptVersion,
}

/// One file written through the admin API: its new version, optionally the bytes found on
/// disk before (when they were never recorded, so history can restore them), and the audit
/// row (its `detail` gets the new version's id).
#[derive(Debug, Clone)]
pub struct ScriptChange {
    pub baseline: Option<NewScriptVersion>,
    pub version: NewScriptVersion,
    pub audit: NewAudit,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a batch and all its payments in one transaction, or nothing.
    async fn insert_batch(
        &self,
        batch: &NewBatch,
        payments: &[NewPayment],
    ) -> StoreResult<BatchInsert>;
    async fn get_batch(&self, id: &str) -> StoreResult<Option<BatchRecord>>;
    /// A batch by the sender's own id for it.
    async fn find_batch(&self, sender_id: &str, batch_id: &str)
    -> StoreResult<Option<BatchRecord>>;
    /// All payments of a batch in submission order.
    async fn batch_payments_in_order(&self, batch_id: &str) -> StoreResult<Vec<Payment>>;
    /// Which of these reference ids the sender has already used.
    async fn existing_references(
        &self,
        sender_id: &str,
        references: &[String],
    ) -> StoreResult<Vec<String>>;
    /// The sender's payments with these reference ids (unknown ones are absent).
    async fn payments_by_references(
        &self,
        sender_id: &str,
        references: &[String],
    ) -> StoreResult<Vec<Payment>>;
    async fn payments_by_ids(&self, ids: &[String]) -> StoreResult<Vec<Payment>>;
    /// The id of the newest history entry (0 when there is none). Every entry up to it is
    /// committed: history is written by one writer at a time.
    async fn last_event_id(&self) -> StoreResult<i64>;
    /// History entries with `after < id <= upto` of payments in batches of `channel`,
    /// oldest first.
    async fn channel_events(
        &self,
        channel: &str,
        after: i64,
        upto: i64,
    ) -> StoreResult<Vec<ChannelEvent>>;
    async fn cursor(&self, name: &str) -> StoreResult<i64>;
    /// Queues callbacks and, in the same transaction, moves a history cursor: a crash never
    /// loses a callback nor queues one twice.
    async fn outbox_enqueue(
        &self,
        rows: &[NewOutbox],
        cursor: Option<(&str, i64)>,
        now: i64,
    ) -> StoreResult<()>;
    /// For each sender, its oldest undelivered callback if it is due: callbacks to a sender
    /// leave in the order they were queued, so a later status never overtakes an earlier one.
    async fn outbox_due(&self, now: i64, limit: i64) -> StoreResult<Vec<OutboxRow>>;
    async fn outbox_delivered(&self, id: i64, now: i64) -> StoreResult<()>;
    /// A failed attempt: retried at `next_at`, or given up when `next_at` is `None`.
    async fn outbox_failed(&self, id: i64, next_at: Option<i64>, error: &str) -> StoreResult<()>;
    /// Every queued callback of a sender, oldest first (for operators and tests).
    async fn outbox_of(&self, sender_id: &str) -> StoreResult<Vec<OutboxRow>>;
    /// Inserts or replaces directory rows in one transaction; returns how many were written.
    async fn directory_upsert(&self, entries: &[DirectoryEntry], now: i64) -> StoreResult<u64>;
    /// The directory rows for these `(id_type, id_value)` keys (missing keys are absent).
    async fn directory_lookup(&self, keys: &[(String, String)])
    -> StoreResult<Vec<DirectoryEntry>>;
    async fn batch_totals(&self, batch_id: &str) -> StoreResult<Vec<StatusTotal>>;
    /// Payments ordered by id, after `cursor` (an id), narrowed by the filter.
    async fn list_payments(
        &self,
        filter: &PaymentFilter,
        cursor: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Payment>>;
    async fn get_payment(&self, id: &str) -> StoreResult<Option<Payment>>;
    async fn find_payment(&self, lookup: &Lookup) -> StoreResult<Option<Payment>>;
    async fn payment_events(&self, payment_id: &str) -> StoreResult<Vec<StoredEvent>>;
    async fn payment_attempts(&self, payment_id: &str) -> StoreResult<Vec<StoredAttempt>>;
    /// Leases up to `limit` due payments until `lease_until`; a payment leased by someone
    /// else is not returned until its lease expires. A lease ends early when a change to the
    /// payment is written. Leases only spare duplicate work: what keeps money safe is that
    /// `sending` is committed only if the payment is still in the status it was claimed in.
    /// An embedded store, which one process owns, may keep its leases in memory.
    async fn claim(
        &self,
        kind: Claim,
        now: i64,
        limit: i64,
        lease_until: i64,
        owner: &str,
    ) -> StoreResult<Vec<Payment>>;
    /// Writes a group in one transaction: raw callbacks first, then the changes (each only if
    /// its payment is still in `expect`), then callback outcomes.
    async fn write(&self, group: &WriteGroup, now: i64) -> StoreResult<WriteResult>;
    /// Payments left in `sending` whose outcome nobody will learn from the request: those
    /// whose lease expired, and, when `restarted_owner` is given (an instance starting up),
    /// those that instance held before it stopped. They move to `unknown` (to be looked up,
    /// never resent blindly); other leases of a restarted owner are released. Returns how
    /// many payments moved to `unknown`.
    async fn recover_sending(&self, now: i64, restarted_owner: Option<&str>) -> StoreResult<u64>;
    /// Appends one audit log row; returns its id.
    async fn audit_append(&self, entry: &NewAudit) -> StoreResult<i64>;
    /// Audit rows newest first, with `id < before` when given.
    async fn audit_page(&self, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditEntry>>;
    /// Records script versions with their audit rows, all in one transaction. Returns the new
    /// versions' ids, in order.
    async fn record_script_changes(&self, changes: &[ScriptChange]) -> StoreResult<Vec<i64>>;
    /// Versions of one file newest first, with `id < before` when given.
    async fn script_versions(
        &self,
        path: &str,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<ScriptVersion>>;
    async fn script_version(&self, id: i64) -> StoreResult<Option<ScriptVersion>>;
    /// Counts per status across all payments (for the demo and readiness).
    async fn status_counts(&self) -> StoreResult<Vec<(Status, i64)>>;
    /// Holds (or releases) a batch: its payments not yet sent wait until it is released.
    /// Returns how many payments it moved; false `found` when there is no such batch.
    async fn hold_batch(&self, batch_id: &str, hold: bool, now: i64) -> StoreResult<Option<u64>>;
    /// Records that an operator paused (or resumed) a DFSP.
    async fn set_dfsp_paused(
        &self,
        dfsp: &str,
        paused: bool,
        actor: &str,
        now: i64,
    ) -> StoreResult<()>;
    /// The DFSPs paused, as recorded.
    async fn paused_dfsps(&self) -> StoreResult<Vec<String>>;
    /// Payments per status and DFSP (`None`: not routed yet).
    async fn status_counts_by_dfsp(&self) -> StoreResult<Vec<(Status, Option<String>, i64)>>;
    async fn ping(&self) -> StoreResult<()>;
}

/// Opens the store named by a database URL and applies its migrations.
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// Group commit: every `apply` from dispatch workers, the poller and callback handlers goes
/// through one task that merges whatever is waiting into a single transaction. With
/// `synchronous=FULL` each commit costs an fsync, so this turns many small commits into few
/// large ones without weakening durability: a caller's `apply` returns only after its
/// changes are committed. `sending` marks jump the queue ([`Writer::apply_urgent`]): requests
/// wait for them, while everything else only records what already happened.
#[derive(Clone)]
pub struct Writer {
    tx: tokio::sync::mpsc::Sender<WriteJob>,
}

struct WriteJob {
    group: WriteGroup,
    reply: tokio::sync::oneshot::Sender<Result<WriteResult, String>>,
    urgent: bool,
}

/// Items merged into one transaction of non-urgent jobs (an urgent job can arrive at any time
/// and waits for the transaction under way: with about 40 µs of the writer's time per item
/// under load, this bounds that wait near 20 ms).
const MAX_GROUP: usize = 512;

fn group_size(g: &WriteGroup) -> usize {
    g.callbacks.len() + g.changes.len() + g.finished.len()
}

impl Writer {
    pub fn start(store: std::sync::Arc<dyn Store>) -> Writer {
        // The writer's task runs on a thread of its own: on the shared runtime each of its
        // statements' answers waited for a worker busy with HTTP and scripts, and the single
        // writer is what bounds throughput (the load bench moved about 10 % more this way).
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteJob>(1_024);
        let own_thread = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| {
                let store = store.clone();
                std::thread::Builder::new()
                    .name("pil-writer".into())
                    .spawn(move || rt.block_on(Self::run(store, rx)))
            });
        match own_thread {
            Ok(_) => Writer { tx },
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the writer; it shares the runtime");
                let (tx, rx) = tokio::sync::mpsc::channel::<WriteJob>(1_024);
                tokio::spawn(Self::run(store, rx));
                Writer { tx }
            }
        }
    }

    /// Merges waiting jobs into groups and writes each group in one transaction, until every
    /// `Writer` is dropped. Urgent jobs (`sending` marks, which requests wait for) go first, in
    /// a transaction of their own, alternating with the others, which go in groups of at most
    /// [`MAX_GROUP`] items so that an urgent job never waits long behind them.
    async fn run(store: std::sync::Arc<dyn Store>, mut rx: tokio::sync::mpsc::Receiver<WriteJob>) {
        let mut backlog: std::collections::VecDeque<WriteJob> = Default::default();
        let mut urgent: Vec<WriteJob> = Vec::new();
        let mut urgent_last = false;
        let mut open = true;
        loop {
            if backlog.is_empty() && urgent.is_empty() && open {
                match rx.recv().await {
                    Some(job) => Self::sort(job, &mut urgent, &mut backlog),
                    None => open = false,
                }
            }
            while open {
                match rx.try_recv() {
                    Ok(job) => Self::sort(job, &mut urgent, &mut backlog),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            // Urgent first, but never twice in a row while other work waits: callbacks, polls
            // and answers must not starve behind a steady stream of sends.
            if !urgent.is_empty() && (!urgent_last || backlog.is_empty()) {
                Self::write_jobs(&store, std::mem::take(&mut urgent)).await;
                urgent_last = true;
                continue;
            }
            urgent_last = false;
            if backlog.is_empty() {
                if open {
                    continue;
                }
                return;
            }
            let mut jobs = Vec::new();
            let mut size = 0;
            while let Some(job) = backlog.pop_front() {
                size += group_size(&job.group);
                jobs.push(job);
                if size >= MAX_GROUP {
                    break;
                }
            }
            Self::write_jobs(&store, jobs).await;
        }
    }

    fn sort(
        job: WriteJob,
        urgent: &mut Vec<WriteJob>,
        backlog: &mut std::collections::VecDeque<WriteJob>,
    ) {
        if job.urgent {
            urgent.push(job);
        } else {
            backlog.push_back(job);
        }
    }

    /// Writes `jobs` in one transaction and hands each job its own results.
    async fn write_jobs(store: &std::sync::Arc<dyn Store>, mut jobs: Vec<WriteJob>) {
        // Move every job's items into one group (no copies), keeping each job's counts to hand
        // its results back.
        let mut all = WriteGroup::default();
        let mut counts = Vec::with_capacity(jobs.len());
        for j in &mut jobs {
            counts.push((j.group.callbacks.len(), j.group.changes.len()));
            all.callbacks.append(&mut j.group.callbacks);
            all.changes.append(&mut j.group.changes);
            all.finished.append(&mut j.group.finished);
        }
        match store.write(&all, crate::clock::now_ms()).await {
            Ok(result) => {
                let mut ids = result.callback_ids.into_iter();
                let mut applied = result.applied.into_iter();
                for (job, (n_callbacks, n_changes)) in jobs.into_iter().zip(counts) {
                    let mine = WriteResult {
                        callback_ids: ids.by_ref().take(n_callbacks).collect(),
                        applied: applied.by_ref().take(n_changes).collect(),
                    };
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group write failed");
                for job in jobs {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }

    /// Writes a group durably; returns once committed.
    pub async fn write(&self, group: WriteGroup) -> Result<WriteResult, String> {
        self.send(group, false).await
    }

    /// Applies `sending` marks durably, ahead of other waiting writes.
    pub async fn apply_urgent(&self, changes: Vec<Change>) -> Result<Vec<Applied>, String> {
        self.apply_as(changes, true).await
    }

    async fn send(&self, group: WriteGroup, urgent: bool) -> Result<WriteResult, String> {
        if group_size(&group) == 0 {
            return Ok(WriteResult::default());
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(WriteJob {
                group,
                reply,
                urgent,
            })
            .await
            .map_err(|_| "writer stopped".to_string())?;
        rx.await.map_err(|_| "writer stopped".to_string())?
    }

    /// Applies changes durably, each only if its payment is still in `expect`.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<Vec<Applied>, String> {
        self.apply_as(changes, false).await
    }

    async fn apply_as(&self, changes: Vec<Change>, urgent: bool) -> Result<Vec<Applied>, String> {
        let group = WriteGroup {
            changes,
            ..WriteGroup::default()
        };
        self.send(group, urgent).await.map(|r| r.applied)
    }

    /// Stores a raw callback durably and returns its id.
    pub async fn insert_callback(&self, callback: RawCallback) -> Result<i64, String> {
        self.write(WriteGroup {
            callbacks: vec![callback],
            ..WriteGroup::default()
        })
        .await?
        .callback_ids
        .first()
        .copied()
        .ok_or_else(|| "callback was not stored".to_string())
    }

    pub async fn finish_callback(&self, finished: FinishedCallback) -> Result<(), String> {
        self.write(WriteGroup {
            finished: vec![finished],
            ..WriteGroup::default()
        })
        .await
        .map(|_| ())
    }
}

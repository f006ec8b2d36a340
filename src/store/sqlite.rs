//! The embedded store: SQLite in WAL mode with `synchronous=FULL` (a lost `sending` mark after a
//! power cut would mean a second payment). All writes go through one connection, so there is
//! no lock-upgrade contention; throughput comes from grouping each claimed group's writes in
//! one transaction. Reads use a separate pool and never wait for writers; claims are reads,
//! with their leases kept in this process (see [`Leases`]).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};

use super::{
    Applied, BatchInsert, BatchRecord, Claim, Lookup, NewBatch, NewPayment, StatusTotal, Store,
    StoreError, StoreResult, StoredAttempt, StoredEvent, WriteGroup, WriteResult,
};
use crate::money::{Currency, Money};
use crate::payment::{Attempt, Change, Event, Payment, Status};
use crate::store::{
    AuditEntry, ChannelEvent, DirectoryEntry, NewAudit, NewOutbox, NewScriptVersion, OutboxRow,
    PaymentFilter, ScriptChange, ScriptVersion,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const PAYMENT_COLUMNS: &str = "id, batch_id, seq, sender_id, reference_id, payee_fa, \
    payee_id_type, payee_id_value, amount_minor, currency, payee_name, note, meta, status, dfsp, \
    fallbacks, dfsp_ref, idempotency_key, attempts, polls, reason_code, reason, route_version, \
    adapter_version, next_at, created_at, updated_at, attributes";
const BATCH_COLUMNS: &str =
    "id, sender_id, batch_id, request_hash, payment_count, created_at, channel, callback_url";

/// Rows per multi-row INSERT when storing a batch (17 parameters each, well under SQLite's limit).
const INSERT_CHUNK: usize = 256;
/// Changes per UPDATE … FROM (VALUES …) statement (19 parameters each).
const UPDATE_CHUNK: usize = 256;

/// Splits `items` into chunks of `max` (a power of two) and then falling powers of two, so a
/// multi-row statement only ever has one of a few shapes and stays in the statement cache
/// instead of being parsed again for every group size.
fn shaped_chunks<T>(items: &[T], max: usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let mut size = max;
        while size > rest.len() {
            size /= 2;
        }
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
    }
    out
}

pub struct SqliteStore {
    /// The one connection that writes, held here rather than in a pool: a pooled connection
    /// goes back to its pool in a spawned task after each transaction, and the next group's
    /// `BEGIN` waited for that task.
    writer: tokio::sync::Mutex<SqliteConnection>,
    reader: SqlitePool,
    leases: std::sync::Mutex<Leases>,
}

/// Claims of this process. An embedded database belongs to one PIL process, so leases live
/// here rather than in the rows: a claim is a read on a reader connection and costs the single
/// writer nothing (claim writes were a quarter of its time under load). Money stays safe
/// without them: `sending` is committed only if the payment is still in the status it was
/// claimed in, and carries this instance as `lease_owner` for crash recovery.
#[derive(Default)]
struct Leases {
    /// Payment id → lease end, for the payments claimed and not yet written back.
    held: std::collections::HashMap<String, i64>,
    /// Where the last claim of each kind stopped, so the next one goes on from there rather
    /// than reading again the payments still held: (status index, next_at, rowid).
    cursors: [Option<(usize, i64, i64)>; 2],
    /// Size of `held` at which expired leases are next dropped.
    prune_at: usize,
}

impl Leases {
    fn is_held(&self, id: &str, now: i64) -> bool {
        self.held.get(id).is_some_and(|until| *until > now)
    }

    /// Drops expired leases once the map has grown, so a payment nobody wrote back (its
    /// worker failed) costs memory only until its lease ends.
    fn prune(&mut self, now: i64) {
        if self.held.len() >= self.prune_at {
            self.held.retain(|_, until| *until > now);
            // Twice what is left: pruning stays rare however many leases are live.
            self.prune_at = (self.held.len() * 2).max(1024);
        }
    }
}

impl SqliteStore {
    fn leases_lock(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // A large batch touches many index pages in one transaction; the default 2 MB
            // page cache would spill them to disk mid-transaction.
            .pragma("cache_size", "-32768")
            .pragma("temp_store", "memory")
            // Rows cross from the connection's thread to the async side through a bounded
            // channel; with sqlx's default of 50 the thread stalls mid-statement until each
            // batch is drained (a grouped UPDATE returns hundreds of ids, a claim hundreds of
            // payments).
            .row_buffer_size(1024)
            // Checkpoints run in a background task (below), not inside the writer's commits.
            .pragma("wal_autocheckpoint", "0");
        if let Some(parent) = Path::new(options.get_filename()).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Database(e.into()))?;
        }
        let mut writer = SqliteConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                // PASSIVE never blocks the writer; a failure is retried at the next tick.
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&checkpointer)
                    .await
                {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        });
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            // Readers share the OS page cache; a large private cache per reader only multiplies
            // memory (the writer keeps the 32 MiB one).
            .connect_with(options.read_only(true).pragma("cache_size", "-8192"))
            .await?;
        Ok(SqliteStore {
            writer: tokio::sync::Mutex::new(writer),
            reader,
            leases: Default::default(),
        })
    }
}

fn status_of(text: &str) -> StoreResult<Status> {
    Status::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown status '{text}'")))
}

fn payment_from_row(row: &SqliteRow) -> StoreResult<Payment> {
    let currency: String = row.try_get("currency")?;
    let currency = Currency::from_stored(&currency)
        .map_err(|e| StoreError::Corrupt(format!("payment currency: {e}")))?;
    let meta: Option<String> = row.try_get("meta")?;
    let meta = match meta {
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("payment meta: {e}")))?,
        ),
        None => None,
    };
    let attributes: Option<String> = row.try_get("attributes")?;
    let attributes = match attributes {
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("payment attributes: {e}")))?,
        ),
        None => None,
    };
    let fallbacks: String = row.try_get("fallbacks")?;
    let fallbacks = serde_json::from_str(&fallbacks)
        .map_err(|e| StoreError::Corrupt(format!("payment fallbacks: {e}")))?;
    let status: String = row.try_get("status")?;
    Ok(Payment {
        id: row.try_get("id")?,
        batch_id: row.try_get("batch_id")?,
        seq: row.try_get("seq")?,
        sender_id: row.try_get("sender_id")?,
        reference_id: row.try_get("reference_id")?,
        payee_fa: row.try_get("payee_fa")?,
        payee_id_type: row.try_get("payee_id_type")?,
        payee_id_value: row.try_get("payee_id_value")?,
        amount: Money::from_minor(row.try_get("amount_minor")?, currency),
        payee_name: row.try_get("payee_name")?,
        note: row.try_get("note")?,
        meta,
        attributes,
        status: status_of(&status)?,
        dfsp: row.try_get("dfsp")?,
        fallbacks,
        dfsp_ref: row.try_get("dfsp_ref")?,
        idempotency_key: row.try_get("idempotency_key")?,
        attempts: row.try_get("attempts")?,
        polls: row.try_get("polls")?,
        reason_code: row.try_get("reason_code")?,
        reason: row.try_get("reason")?,
        route_version: row.try_get("route_version")?,
        adapter_version: row.try_get("adapter_version")?,
        next_at: row.try_get("next_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn batch_from_row(row: &SqliteRow) -> StoreResult<BatchRecord> {
    Ok(BatchRecord {
        id: row.try_get("id")?,
        sender_id: row.try_get("sender_id")?,
        batch_id: row.try_get("batch_id")?,
        request_hash: row.try_get("request_hash")?,
        payment_count: row.try_get("payment_count")?,
        created_at: row.try_get("created_at")?,
        channel: row.try_get("channel")?,
        callback_url: row.try_get("callback_url")?,
    })
}

fn outbox_from_row(row: &SqliteRow) -> StoreResult<OutboxRow> {
    Ok(OutboxRow {
        id: row.try_get("id")?,
        sender_id: row.try_get("sender_id")?,
        url: row.try_get("url")?,
        body: row.try_get("body")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        last_error: row.try_get("last_error")?,
    })
}

fn audit_from_row(row: &SqliteRow) -> StoreResult<AuditEntry> {
    let detail: Option<String> = row.try_get("detail")?;
    let detail = match detail {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("audit detail: {e}")))?,
        None => serde_json::Value::Null,
    };
    Ok(AuditEntry {
        id: row.try_get("id")?,
        entry: NewAudit {
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            before_hash: row.try_get("before_hash")?,
            after_hash: row.try_get("after_hash")?,
            detail,
        },
    })
}

fn script_version_from_row(row: &SqliteRow) -> StoreResult<ScriptVersion> {
    Ok(ScriptVersion {
        id: row.try_get("id")?,
        version: NewScriptVersion {
            path: row.try_get("path")?,
            hash: row.try_get("hash")?,
            content: row.try_get("content")?,
            actor: row.try_get("actor")?,
            at: row.try_get("at")?,
        },
    })
}

async fn insert_audit(conn: &mut sqlx::SqliteConnection, e: &NewAudit) -> StoreResult<i64> {
    let id = sqlx::query_scalar(
        "INSERT INTO audit_log (at, actor, action, target, before_hash, after_hash, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(e.at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.target)
    .bind(e.before_hash.as_deref())
    .bind(e.after_hash.as_deref())
    .bind((!e.detail.is_null()).then(|| e.detail.to_string()))
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

async fn insert_script_version(
    conn: &mut sqlx::SqliteConnection,
    v: &NewScriptVersion,
) -> StoreResult<i64> {
    let id = sqlx::query_scalar(
        "INSERT INTO script_versions (path, hash, content, actor, at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(&v.path)
    .bind(&v.hash)
    .bind(&v.content)
    .bind(&v.actor)
    .bind(v.at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// `(?,?,..),(?,?,..)` for a multi-row INSERT. Anonymous `?` rather than `$N`: SQLite resolves
/// each named parameter with a linear search at prepare time, which is quadratic for the
/// thousands of parameters a multi-row INSERT has.
fn placeholders(rows: usize, cols: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(","));
    vec![row; rows].join(",")
}

/// The text of a grouped statement with `rows` rows (a power of two, see [`padded`]), built
/// once per shape and handed to sqlx as `&'static str` (which it keeps without copying): the
/// group writes are on the single writer's path, and building a 20 KB text for every chunk was
/// a part of it.
fn grouped_sql(
    shapes: &'static Shapes,
    rows: usize,
    build: impl FnOnce(usize) -> String,
) -> &'static str {
    debug_assert!(rows.is_power_of_two());
    shapes[rows.trailing_zeros() as usize].get_or_init(|| build(rows))
}

impl SqliteStore {
    async fn find_batch_in(
        conn: &mut sqlx::SqliteConnection,
        sender_id: &str,
        batch_id: &str,
    ) -> StoreResult<Option<BatchRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE sender_id = $1 AND batch_id = $2"
        )))
        .bind(sender_id)
        .bind(batch_id)
        .fetch_optional(&mut *conn)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    /// Payments whose `column` is one of `values` (optionally of one sender), in chunks.
    async fn payments_where_in(
        &self,
        column: &'static str,
        values: &[String],
        sender_id: Option<&str>,
    ) -> StoreResult<Vec<Payment>> {
        let mut found = Vec::new();
        for chunk in values.chunks(500) {
            let sql = format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE {column} IN ({}){}",
                vec!["?"; chunk.len()].join(","),
                if sender_id.is_some() {
                    " AND sender_id = ?"
                } else {
                    ""
                }
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for v in chunk {
                q = q.bind(v);
            }
            if let Some(sender) = sender_id {
                q = q.bind(sender);
            }
            for row in q.fetch_all(&self.reader).await? {
                found.push(payment_from_row(&row)?);
            }
        }
        Ok(found)
    }

    async fn existing_references_of(
        &self,
        sender_id: &str,
        references: &[&str],
    ) -> StoreResult<Vec<String>> {
        let mut found = Vec::new();
        for chunk in references.chunks(500) {
            let sql = format!(
                "SELECT reference_id FROM payments WHERE sender_id = ? AND reference_id IN ({})",
                vec!["?"; chunk.len()].join(",")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(sender_id);
            for r in chunk {
                q = q.bind(*r);
            }
            for row in q.fetch_all(&self.reader).await? {
                found.push(row.try_get("reference_id")?);
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_batch(
        &self,
        batch: &NewBatch,
        payments: &[NewPayment],
    ) -> StoreResult<BatchInsert> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        if let Some(existing) =
            Self::find_batch_in(&mut tx, &batch.sender_id, &batch.batch_id).await?
        {
            return Ok(if existing.request_hash == batch.request_hash {
                BatchInsert::Replayed(existing)
            } else {
                BatchInsert::Conflict(existing)
            });
        }
        let now = batch.created_at;
        sqlx::query(
            "INSERT INTO batches (id, sender_id, batch_id, request_hash, payment_count, created_at, \
             channel, callback_url) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&batch.id)
        .bind(&batch.sender_id)
        .bind(&batch.batch_id)
        .bind(&batch.request_hash)
        .bind(payments.len() as i64)
        .bind(now)
        .bind(&batch.channel)
        .bind(&batch.callback_url)
        .execute(&mut *tx)
        .await?;

        let mut seq = 0i64;
        let mut duplicate = false;
        for chunk in shaped_chunks(payments, INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO payments (id, batch_id, seq, sender_id, reference_id, payee_fa, \
                 payee_id_type, payee_id_value, amount_minor, currency, payee_name, note, meta, \
                 status, next_at, created_at, updated_at, attributes, reason_code, reason) \
                 VALUES {}",
                placeholders(chunk.len(), 20)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for p in chunk {
                let status = if p.rejected.is_some() {
                    Status::Rejected
                } else {
                    Status::Received
                };
                q = q
                    .bind(&p.id)
                    .bind(&batch.id)
                    .bind(seq)
                    .bind(&batch.sender_id)
                    .bind(&p.reference_id)
                    .bind(&p.payee_fa)
                    .bind(&p.payee_id_type)
                    .bind(&p.payee_id_value)
                    .bind(p.amount_minor)
                    .bind(&p.currency)
                    .bind(&p.payee_name)
                    .bind(&p.note)
                    .bind(p.meta.as_ref().map(|m| m.to_string()))
                    .bind(status.as_str())
                    .bind(p.not_before.unwrap_or(now).max(now))
                    .bind(now)
                    .bind(now)
                    .bind(p.attributes.as_ref().map(|m| m.to_string()))
                    .bind(p.rejected.as_ref().map(|r| r.code.as_str()))
                    .bind(p.rejected.as_ref().map(|r| r.message.as_str()));
                seq += 1;
            }
            match q.execute(&mut *tx).await {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    duplicate = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
            // Every payment's history starts with `received`; one rejected on arrival
            // (per-item answers of the legacy API) has its rejection right after.
            let events: Vec<(&NewPayment, Option<&crate::store::Rejection>)> = chunk
                .iter()
                .map(|p| (p, None))
                .chain(
                    chunk
                        .iter()
                        .filter_map(|p| p.rejected.as_ref().map(|r| (p, Some(r)))),
                )
                .collect();
            for part in shaped_chunks(&events, INSERT_CHUNK) {
                let sql = format!(
                    "INSERT INTO payment_events (payment_id, at, from_status, to_status, \
                     reason_code, detail) VALUES {}",
                    placeholders(part.len(), 6)
                );
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for (p, rejected) in part {
                    q = match rejected {
                        None => q
                            .bind(&p.id)
                            .bind(now)
                            .bind(None::<&str>)
                            .bind(Status::Received.as_str())
                            .bind("received")
                            .bind(None::<&str>),
                        Some(r) => q
                            .bind(&p.id)
                            .bind(now)
                            .bind(Some(Status::Received.as_str()))
                            .bind(Status::Rejected.as_str())
                            .bind(r.code.as_str())
                            .bind(Some(r.message.as_str())),
                    };
                }
                q.execute(&mut *tx).await?;
            }
        }
        if duplicate {
            tx.rollback().await?;
            let refs: Vec<&str> = payments.iter().map(|p| p.reference_id.as_str()).collect();
            let dups = self.existing_references_of(&batch.sender_id, &refs).await?;
            return Ok(BatchInsert::DuplicateReferences(dups));
        }
        tx.commit().await?;
        Ok(BatchInsert::Created(BatchRecord {
            id: batch.id.clone(),
            sender_id: batch.sender_id.clone(),
            batch_id: batch.batch_id.clone(),
            request_hash: batch.request_hash.clone(),
            payment_count: payments.len() as i64,
            created_at: now,
            channel: batch.channel.clone(),
            callback_url: batch.callback_url.clone(),
        }))
    }

    async fn get_batch(&self, id: &str) -> StoreResult<Option<BatchRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn find_batch(
        &self,
        sender_id: &str,
        batch_id: &str,
    ) -> StoreResult<Option<BatchRecord>> {
        let mut conn = self.reader.acquire().await?;
        Self::find_batch_in(&mut conn, sender_id, batch_id).await
    }

    async fn batch_payments_in_order(&self, batch_id: &str) -> StoreResult<Vec<Payment>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE batch_id = $1 ORDER BY seq"
        )))
        .bind(batch_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(payment_from_row).collect()
    }

    async fn existing_references(
        &self,
        sender_id: &str,
        references: &[String],
    ) -> StoreResult<Vec<String>> {
        let refs: Vec<&str> = references.iter().map(String::as_str).collect();
        self.existing_references_of(sender_id, &refs).await
    }

    async fn payments_by_references(
        &self,
        sender_id: &str,
        references: &[String],
    ) -> StoreResult<Vec<Payment>> {
        self.payments_where_in("reference_id", references, Some(sender_id))
            .await
    }

    async fn payments_by_ids(&self, ids: &[String]) -> StoreResult<Vec<Payment>> {
        self.payments_where_in("id", ids, None).await
    }

    async fn last_event_id(&self) -> StoreResult<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM payment_events")
            .fetch_one(&self.reader)
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn channel_events(
        &self,
        channel: &str,
        after: i64,
        upto: i64,
    ) -> StoreResult<Vec<ChannelEvent>> {
        let rows = sqlx::query(
            "SELECT e.id AS event_id, e.payment_id, p.batch_id FROM payment_events e \
             JOIN payments p ON p.id = e.payment_id JOIN batches b ON b.id = p.batch_id \
             WHERE e.id > $1 AND e.id <= $3 AND b.channel = $2 ORDER BY e.id",
        )
        .bind(after)
        .bind(channel)
        .bind(upto)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChannelEvent {
                    event_id: r.try_get("event_id")?,
                    payment_id: r.try_get("payment_id")?,
                    batch_id: r.try_get("batch_id")?,
                })
            })
            .collect()
    }

    async fn cursor(&self, name: &str) -> StoreResult<i64> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?;
        Ok(position.unwrap_or(0))
    }

    async fn outbox_enqueue(
        &self,
        rows: &[NewOutbox],
        cursor: Option<(&str, i64)>,
        now: i64,
    ) -> StoreResult<()> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO outbox (sender_id, url, body, created_at, next_at) \
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(&r.sender_id)
            .bind(&r.url)
            .bind(&r.body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some((name, position)) = cursor {
            sqlx::query(
                "INSERT INTO cursors (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            )
            .bind(name)
            .bind(position)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_due(&self, now: i64, limit: i64) -> StoreResult<Vec<OutboxRow>> {
        let rows = sqlx::query(
            "SELECT o.id, o.sender_id, o.url, o.body, o.attempts, o.created_at, o.delivered_at, \
             o.last_error FROM outbox o \
             JOIN (SELECT sender_id, MIN(id) AS id FROM outbox WHERE delivered_at IS NULL \
                   AND next_at < 9223372036854775807 GROUP BY sender_id) f ON f.id = o.id \
             WHERE o.next_at <= $1 ORDER BY o.id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn outbox_delivered(&self, id: i64, now: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE outbox SET delivered_at = $2, attempts = attempts + 1, last_error = NULL \
             WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(())
    }

    async fn outbox_failed(&self, id: i64, next_at: Option<i64>, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_at = $2, last_error = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(next_at.unwrap_or(i64::MAX))
        .bind(error)
        .execute(&mut *self.writer.lock().await)
        .await?;
        Ok(())
    }

    async fn outbox_of(&self, sender_id: &str) -> StoreResult<Vec<OutboxRow>> {
        let rows = sqlx::query(
            "SELECT id, sender_id, url, body, attempts, created_at, delivered_at, last_error \
             FROM outbox WHERE sender_id = $1 ORDER BY id",
        )
        .bind(sender_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    async fn directory_upsert(&self, entries: &[DirectoryEntry], now: i64) -> StoreResult<u64> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let mut written = 0;
        for chunk in shaped_chunks(entries, INSERT_CHUNK) {
            let sql = format!(
                "INSERT OR REPLACE INTO directory (id_type, id_value, fa, attributes, updated_at) \
                 VALUES {}",
                placeholders(chunk.len(), 5)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(&e.id_type)
                    .bind(&e.id_value)
                    .bind(&e.fa)
                    .bind(serde_json::Value::Object(e.attributes.clone()).to_string())
                    .bind(now);
            }
            written += q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn directory_lookup(
        &self,
        keys: &[(String, String)],
    ) -> StoreResult<Vec<DirectoryEntry>> {
        let mut found = Vec::new();
        for chunk in keys.chunks(INSERT_CHUNK) {
            let sql = format!(
                "SELECT id_type, id_value, fa, attributes FROM directory \
                 WHERE (id_type, id_value) IN (VALUES {})",
                placeholders(chunk.len(), 2)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (t, v) in chunk {
                q = q.bind(t).bind(v);
            }
            for row in q.fetch_all(&self.reader).await? {
                let attributes: String = row.try_get("attributes")?;
                let attributes = match serde_json::from_str(&attributes) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => return Err(StoreError::Corrupt("directory attributes".into())),
                };
                found.push(DirectoryEntry {
                    id_type: row.try_get("id_type")?,
                    id_value: row.try_get("id_value")?,
                    fa: row.try_get("fa")?,
                    attributes,
                });
            }
        }
        Ok(found)
    }

    async fn batch_totals(&self, batch_id: &str) -> StoreResult<Vec<StatusTotal>> {
        let rows = sqlx::query(
            "SELECT status, currency, COUNT(*) AS n, SUM(amount_minor) AS total \
             FROM payments WHERE batch_id = $1 GROUP BY status, currency ORDER BY status, currency",
        )
        .bind(batch_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(StatusTotal {
                    status: status_of(&status)?,
                    currency: row.try_get("currency")?,
                    count: row.try_get("n")?,
                    amount_minor: row.try_get("total")?,
                })
            })
            .collect()
    }

    async fn list_payments(
        &self,
        filter: &PaymentFilter,
        cursor: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Payment>> {
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE ($1 IS NULL OR batch_id = $1) \
             AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR dfsp = $3) \
             AND ($4 IS NULL OR id > $4) ORDER BY id LIMIT $5"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(filter.batch_id.as_deref())
            .bind(filter.status.map(Status::as_str))
            .bind(filter.dfsp.as_deref())
            .bind(cursor)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(payment_from_row).collect()
    }

    async fn get_payment(&self, id: &str) -> StoreResult<Option<Payment>> {
        self.find_payment(&Lookup::Id(id.to_string())).await
    }

    async fn find_payment(&self, lookup: &Lookup) -> StoreResult<Option<Payment>> {
        let row = match lookup {
            Lookup::Id(id) => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.reader)
                .await?
            }
            Lookup::DfspRef { dfsp, dfsp_ref } => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE dfsp = $1 AND dfsp_ref = $2 \
                     ORDER BY created_at DESC LIMIT 1"
                )))
                .bind(dfsp)
                .bind(dfsp_ref)
                .fetch_optional(&self.reader)
                .await?
            }
            Lookup::Reference {
                sender_id,
                reference_id,
            } => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE reference_id = $1 \
                     AND ($2 IS NULL OR sender_id = $2) ORDER BY created_at DESC LIMIT 1"
                )))
                .bind(reference_id)
                .bind(sender_id)
                .fetch_optional(&self.reader)
                .await?
            }
        };
        row.as_ref().map(payment_from_row).transpose()
    }

    async fn payment_events(&self, payment_id: &str) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT at, from_status, to_status, reason_code, detail, route_version, adapter_version \
             FROM payment_events WHERE payment_id = $1 ORDER BY id",
        )
        .bind(payment_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let from: Option<String> = row.try_get("from_status")?;
                let to: String = row.try_get("to_status")?;
                Ok(StoredEvent {
                    at: row.try_get("at")?,
                    event: Event {
                        from: from.as_deref().map(status_of).transpose()?,
                        to: status_of(&to)?,
                        reason_code: row.try_get("reason_code")?,
                        detail: row.try_get("detail")?,
                        route_version: row.try_get("route_version")?,
                        adapter_version: row.try_get("adapter_version")?,
                    },
                })
            })
            .collect()
    }

    async fn payment_attempts(&self, payment_id: &str) -> StoreResult<Vec<StoredAttempt>> {
        let rows = sqlx::query(
            "SELECT dfsp, kind, idempotency_key, method, url, started_at, finished_at, \
             http_status, outcome, error FROM dispatch_attempts WHERE payment_id = $1 ORDER BY id",
        )
        .bind(payment_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(StoredAttempt {
                    at: row.try_get("started_at")?,
                    attempt: Attempt {
                        dfsp: row.try_get("dfsp")?,
                        kind: match kind.as_str() {
                            "status" => "status",
                            "continue" => "continue",
                            _ => "submit",
                        },
                        idempotency_key: row.try_get("idempotency_key")?,
                        method: row.try_get("method")?,
                        url: row.try_get("url")?,
                        started_at: row.try_get("started_at")?,
                        finished_at: row.try_get("finished_at")?,
                        http_status: row.try_get("http_status")?,
                        outcome: row.try_get("outcome")?,
                        error: row.try_get("error")?,
                    },
                })
            })
            .collect()
    }

    async fn claim(
        &self,
        kind: Claim,
        now: i64,
        limit: i64,
        lease_until: i64,
        _owner: &str,
    ) -> StoreResult<Vec<Payment>> {
        let statuses = match kind {
            Claim::Dispatch => [Status::Received, Status::Routed],
            Claim::Poll => [Status::Accepted, Status::Unknown],
        };
        let which = usize::from(kind == Claim::Poll);
        let limit = usize::try_from(limit.max(1)).unwrap_or(1);
        let start = self.leases_lock().cursors[which];
        // Due payments in index order (status, next_at, rowid), from where the last claim
        // stopped to the end, then once more from the beginning: payments that fell due behind
        // the cursor (a retry's backoff ended, a lease lapsed) are found on that second pass.
        let mut cursor = start.unwrap_or((0, i64::MIN, i64::MIN));
        let mut wrapped = start.is_none();
        let mut claimed = Vec::new();
        while claimed.len() < limit {
            let (index, after_next_at, after_rowid) = cursor;
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT rowid AS claim_rowid, {PAYMENT_COLUMNS} FROM payments \
                 WHERE status = $1 AND next_at <= $2 AND (next_at, rowid) > ($3, $4) \
                 ORDER BY next_at, rowid LIMIT $5"
            )))
            .bind(statuses[index].as_str())
            .bind(now)
            .bind(after_next_at)
            .bind(after_rowid)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await?;
            let exhausted = rows.len() < limit;
            {
                let mut leases = self.leases_lock();
                for row in &rows {
                    if claimed.len() == limit {
                        break;
                    }
                    cursor = (index, row.try_get("next_at")?, row.try_get("claim_rowid")?);
                    if leases.is_held(row.try_get("id")?, now) {
                        continue;
                    }
                    let payment = payment_from_row(row)?;
                    leases.held.insert(payment.id.clone(), lease_until);
                    claimed.push(payment);
                }
                leases.prune(now);
            }
            // Full, or a full page read: go on from the cursor (next claim or next page). Only a
            // page read to its end moves on to the next status or the second pass; a claim that
            // filled up mid-page leaves the rest of that page to the next claim.
            if claimed.len() == limit || !exhausted {
                continue;
            }
            if index + 1 < statuses.len() {
                cursor = (index + 1, i64::MIN, i64::MIN);
            } else if !wrapped {
                wrapped = true;
                cursor = (0, i64::MIN, i64::MIN);
            } else {
                break;
            }
        }
        self.leases_lock().cursors[which] = Some(cursor);
        claimed.sort_by(|x, y| x.batch_id.cmp(&y.batch_id).then(x.seq.cmp(&y.seq)));
        Ok(claimed)
    }

    async fn write(&self, group: &WriteGroup, now: i64) -> StoreResult<WriteResult> {
        let mut conn = self.writer.lock().await;
        // First optimistically, expecting every change to apply (the common case), which lets
        // the UPDATEs skip returning the ids they moved. If one did not apply (it lost a race
        // to a callback or a cancel), the transaction is rolled back and the group written
        // again, learning which changes applied.
        let result = match write_group(&mut conn, group, now, false).await? {
            Some(result) => result,
            None => write_group(&mut conn, group, now, true)
                .await?
                .ok_or_else(|| StoreError::Invariant("a careful group write gave up".into()))?,
        };
        // Whatever a change says, the worker that claimed the payment is done with this step.
        let mut leases = self.leases_lock();
        for change in &group.changes {
            leases.held.remove(&change.payment_id);
        }
        drop(leases);
        Ok(result)
    }

    async fn recover_sending(&self, now: i64, restarted_owner: Option<&str>) -> StoreResult<u64> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        // Set-based: the history rows first (while the payments still read `sending`), then
        // the payments themselves; both select the same rows inside this transaction.
        sqlx::query(
            "INSERT INTO payment_events (payment_id, at, from_status, to_status, reason_code, detail) \
             SELECT id, $1, 'sending', 'unknown', 'send_interrupted', \
             'the send was interrupted; the outcome will be looked up, never resent blindly' \
             FROM payments WHERE status = 'sending' AND (lease_until <= $1 OR lease_owner = $2)",
        )
        .bind(now)
        .bind(restarted_owner)
        .execute(&mut *tx)
        .await?;
        let moved = sqlx::query(
            "UPDATE payments SET status = 'unknown', reason_code = 'send_interrupted', \
             reason = 'PIL stopped while the request was in flight', next_at = $1, \
             lease_until = 0, lease_owner = NULL, updated_at = $1 \
             WHERE status = 'sending' AND (lease_until <= $1 OR lease_owner = $2)",
        )
        .bind(now)
        .bind(restarted_owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if let Some(owner) = restarted_owner {
            sqlx::query(
                // Leases written by versions that kept them in the rows (a claim moved
                // next_at to the lease's end); this version's leases are in memory.
                "UPDATE payments SET lease_until = 0, lease_owner = NULL, \
                 next_at = MIN(next_at, $2) \
                 WHERE lease_owner = $1 AND status <> 'sending'",
            )
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn audit_append(&self, entry: &NewAudit) -> StoreResult<i64> {
        insert_audit(&mut *self.writer.lock().await, entry).await
    }

    async fn audit_page(&self, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, before_hash, after_hash, detail FROM audit_log \
             WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn record_script_changes(&self, changes: &[ScriptChange]) -> StoreResult<Vec<i64>> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let mut ids = Vec::with_capacity(changes.len());
        for c in changes {
            if let Some(baseline) = &c.baseline {
                insert_script_version(&mut tx, baseline).await?;
            }
            let id = insert_script_version(&mut tx, &c.version).await?;
            let mut audit = c.audit.clone();
            match &mut audit.detail {
                serde_json::Value::Object(m) => {
                    m.insert("version_id".into(), id.into());
                }
                other => *other = serde_json::json!({ "version_id": id }),
            }
            insert_audit(&mut tx, &audit).await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn script_versions(
        &self,
        path: &str,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<ScriptVersion>> {
        let rows = sqlx::query(
            "SELECT id, path, hash, content, actor, at FROM script_versions \
             WHERE path = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(path)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(script_version_from_row).collect()
    }

    async fn script_version(&self, id: i64) -> StoreResult<Option<ScriptVersion>> {
        let row = sqlx::query(
            "SELECT id, path, hash, content, actor, at FROM script_versions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(script_version_from_row).transpose()
    }

    async fn status_counts(&self) -> StoreResult<Vec<(Status, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM payments GROUP BY status")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                let s: String = row.try_get("status")?;
                Ok((status_of(&s)?, row.try_get("n")?))
            })
            .collect()
    }

    async fn hold_batch(&self, batch_id: &str, hold: bool, now: i64) -> StoreResult<Option<u64>> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin().await?;
        let found = sqlx::query("UPDATE batches SET held = $2 WHERE id = $1")
            .bind(batch_id)
            .bind(hold)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if found == 0 {
            return Ok(None);
        }
        // Payments a worker holds right now finish their step; the rest wait.
        let moved = sqlx::query(
            "UPDATE payments SET next_at = $2 WHERE batch_id = $1 \
             AND status IN ('received', 'routed') AND lease_until <= $3",
        )
        .bind(batch_id)
        .bind(if hold { i64::MAX } else { now })
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Some(moved))
    }

    async fn set_dfsp_paused(
        &self,
        dfsp: &str,
        paused: bool,
        actor: &str,
        now: i64,
    ) -> StoreResult<()> {
        let q = if paused {
            sqlx::query(
                "INSERT OR REPLACE INTO dfsp_pauses (dfsp, paused_at, actor) VALUES ($1, $2, $3)",
            )
            .bind(dfsp)
            .bind(now)
            .bind(actor)
        } else {
            sqlx::query("DELETE FROM dfsp_pauses WHERE dfsp = $1").bind(dfsp)
        };
        q.execute(&mut *self.writer.lock().await).await?;
        Ok(())
    }

    async fn paused_dfsps(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT dfsp FROM dfsp_pauses ORDER BY dfsp")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| r.try_get("dfsp").map_err(Into::into))
            .collect()
    }

    async fn status_counts_by_dfsp(&self) -> StoreResult<Vec<(Status, Option<String>, i64)>> {
        let rows =
            sqlx::query("SELECT status, dfsp, COUNT(*) AS n FROM payments GROUP BY status, dfsp")
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|row| {
                let s: String = row.try_get("status")?;
                Ok((status_of(&s)?, row.try_get("dfsp")?, row.try_get("n")?))
            })
            .collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

/// One transaction writing a group. `None` (and nothing written) when not `careful` and some
/// change did not apply; see [`apply_changes`].
async fn write_group(
    conn: &mut SqliteConnection,
    group: &WriteGroup,
    now: i64,
    careful: bool,
) -> StoreResult<Option<WriteResult>> {
    let mut tx = conn.begin().await?;
    let mut callback_ids = Vec::with_capacity(group.callbacks.len());
    for cb in &group.callbacks {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO raw_callbacks (dfsp, method, path, headers, body, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&cb.dfsp)
        .bind(&cb.method)
        .bind(&cb.path)
        .bind(cb.headers.to_string())
        .bind(&cb.body)
        .bind(cb.received_at)
        .fetch_one(&mut *tx)
        .await?;
        callback_ids.push(id);
    }
    let Some(applied) = apply_changes(&mut tx, &group.changes, now, careful).await? else {
        return Ok(None);
    };
    for f in &group.finished {
        sqlx::query(
            "UPDATE raw_callbacks SET processed_at = $2, payment_id = $3, outcome = $4 \
             WHERE id = $1",
        )
        .bind(f.id)
        .bind(now)
        .bind(&f.payment_id)
        .bind(&f.outcome)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some(WriteResult {
        callback_ids,
        applied,
    }))
}

/// Rows in the statement that carries a chunk of `rows` group-write rows: the next power of
/// two, so that a chunk of any size is one statement (with NULL padding rows, see [`pad`]) of
/// one of a few shapes, and each shape's text is built and prepared once. One statement per
/// chunk matters because every statement is a round trip to the connection's thread.
fn padded(rows: usize) -> usize {
    rows.next_power_of_two()
}

/// Binds the NULL padding rows of a chunk of `rows` rows with `cols` columns each; the grouped
/// statements skip rows whose first column is NULL.
fn pad(mut q: SqliteQuery<'_>, rows: usize, cols: usize) -> SqliteQuery<'_> {
    for _ in 0..(padded(rows) - rows) * cols {
        q = q.bind(None::<&str>);
    }
    q
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// The statement texts of one grouped statement, one per padded row count (see [`grouped_sql`]).
type Shapes = [std::sync::OnceLock<String>; 16];

/// Inserts `rows` into `into` (`table (columns…)`, `cols` of them) with one padded
/// `INSERT … SELECT` per chunk; `bind` binds one row's values in column order.
async fn insert_grouped<'q, T>(
    conn: &mut SqliteConnection,
    shapes: &'static Shapes,
    into: &str,
    cols: usize,
    rows: &'q [T],
    bind: impl Fn(SqliteQuery<'q>, &'q T) -> SqliteQuery<'q>,
) -> StoreResult<()> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = grouped_sql(shapes, padded(chunk.len()), |n| {
            format!(
                "INSERT INTO {into} SELECT * FROM (VALUES {}) WHERE column1 IS NOT NULL",
                placeholders(n, cols)
            )
        });
        let q = chunk.iter().fold(sqlx::query(sql), &bind);
        pad(q, chunk.len(), cols).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Applies each change whose payment is still in its expected status, with its history rows.
/// `careful`: each UPDATE returns the ids it moved, so a change that lost a race is told
/// `Stale`. Otherwise UPDATEs only count their rows, and the first shortfall returns `None`
/// with the transaction to be rolled back.
async fn apply_changes(
    conn: &mut sqlx::SqliteConnection,
    changes: &[Change],
    now: i64,
    careful: bool,
) -> StoreResult<Option<Vec<Applied>>> {
    {
        let mut out = vec![Applied::Stale; changes.len()];
        // One UPDATE … FROM (VALUES …) per chunk instead of one statement per payment. A
        // statement must not touch a payment twice, so later changes to the same payment
        // (a callback and the send's answer merged in one group) go in a later round.
        let mut pending: Vec<usize> = (0..changes.len()).collect();
        while !pending.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let (round, later): (Vec<usize>, Vec<usize>) = pending
                .into_iter()
                .partition(|&i| seen.insert(changes[i].payment_id.as_str()));
            for chunk in round.chunks(UPDATE_CHUNK) {
                static SHAPES: Shapes = [const { std::sync::OnceLock::new() }; 16];
                static RETURNING_SHAPES: Shapes = [const { std::sync::OnceLock::new() }; 16];
                let shapes = if careful { &RETURNING_SHAPES } else { &SHAPES };
                let sql = grouped_sql(shapes, padded(chunk.len()), |rows| {
                    format!(
                        "UPDATE payments SET status = v.column1, updated_at = v.column2, \
                     dfsp = CASE WHEN v.column3 THEN v.column4 ELSE payments.dfsp END, \
                     fallbacks = COALESCE(v.column5, payments.fallbacks), \
                     dfsp_ref = COALESCE(v.column6, payments.dfsp_ref), \
                     idempotency_key = CASE WHEN v.column7 THEN v.column8 \
                         ELSE payments.idempotency_key END, \
                     reason_code = COALESCE(v.column9, payments.reason_code), \
                     reason = COALESCE(v.column10, payments.reason), \
                     route_version = COALESCE(v.column11, payments.route_version), \
                     adapter_version = COALESCE(v.column12, payments.adapter_version), \
                     next_at = COALESCE(v.column13, payments.next_at), \
                     lease_until = COALESCE(v.column14, payments.lease_until), \
                     attempts = payments.attempts + v.column15, \
                     polls = payments.polls + v.column16, \
                     lease_owner = COALESCE(v.column19, payments.lease_owner) \
                     FROM (VALUES {}) AS v \
                     WHERE payments.id = v.column17 AND payments.status = v.column18{}",
                        placeholders(rows, 19),
                        if careful {
                            " RETURNING payments.id"
                        } else {
                            ""
                        }
                    )
                });
                let mut q = sqlx::query(sql);
                for &i in chunk {
                    let change = &changes[i];
                    let f = &change.fields;
                    let fallbacks = f
                        .fallbacks
                        .as_ref()
                        .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "[]".into()));
                    q = q
                        .bind(change.to.as_str())
                        .bind(now)
                        .bind(f.dfsp.is_some())
                        .bind(f.dfsp.clone().flatten())
                        .bind(fallbacks)
                        .bind(f.dfsp_ref.clone())
                        .bind(f.idempotency_key.is_some())
                        .bind(f.idempotency_key.clone().flatten())
                        .bind(f.reason_code.clone())
                        .bind(f.reason.clone())
                        .bind(f.route_version.clone())
                        .bind(f.adapter_version.clone())
                        .bind(f.next_at)
                        .bind(f.lease_until)
                        .bind(i64::from(f.add_attempt))
                        .bind(i64::from(f.add_poll))
                        .bind(change.payment_id.as_str())
                        .bind(change.expect.as_str())
                        .bind(f.lease_owner.as_deref());
                }
                // Padding rows match no payment: their id is NULL.
                q = pad(q, chunk.len(), 19);
                if !careful {
                    if q.execute(&mut *conn).await?.rows_affected() != chunk.len() as u64 {
                        return Ok(None);
                    }
                    for &i in chunk {
                        out[i] = Applied::Done;
                    }
                    continue;
                }
                let done: std::collections::HashSet<String> = q
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|row| row.try_get::<String, _>(0))
                    .collect::<Result<_, _>>()?;
                for &i in chunk {
                    if done.contains(&changes[i].payment_id) {
                        out[i] = Applied::Done;
                    }
                }
            }
            pending = later;
        }
        let mut events = Vec::with_capacity(changes.len() * 2);
        let mut attempts = Vec::with_capacity(changes.len());
        for (change, applied) in changes.iter().zip(&out) {
            if *applied == Applied::Done {
                events.extend(
                    change
                        .events
                        .iter()
                        .map(|e| (change.payment_id.as_str(), e)),
                );
            }
            // An HTTP exchange happened whether or not its answer still moved the payment (a
            // callback may have got there first): the audit trail keeps it either way.
            if let Some(a) = &change.attempt {
                attempts.push((change.payment_id.as_str(), a));
            }
        }
        // History rows of the whole group in a few multi-row statements.
        static EVENT_SHAPES: Shapes = [const { std::sync::OnceLock::new() }; 16];
        insert_grouped(
            conn,
            &EVENT_SHAPES,
            "payment_events (payment_id, at, from_status, to_status, reason_code, detail, \
             route_version, adapter_version)",
            8,
            &events,
            |q, (id, e)| {
                q.bind(*id)
                    .bind(now)
                    .bind(e.from.map(Status::as_str))
                    .bind(e.to.as_str())
                    .bind(&e.reason_code)
                    .bind(&e.detail)
                    .bind(&e.route_version)
                    .bind(&e.adapter_version)
            },
        )
        .await?;
        static ATTEMPT_SHAPES: Shapes = [const { std::sync::OnceLock::new() }; 16];
        insert_grouped(
            conn,
            &ATTEMPT_SHAPES,
            "dispatch_attempts (payment_id, dfsp, kind, idempotency_key, method, url, \
             started_at, finished_at, http_status, outcome, error)",
            11,
            &attempts,
            |q, (id, a)| {
                q.bind(*id)
                    .bind(&a.dfsp)
                    .bind(a.kind)
                    .bind(&a.idempotency_key)
                    .bind(&a.method)
                    .bind(&a.url)
                    .bind(a.started_at)
                    .bind(a.finished_at)
                    .bind(a.http_status)
                    .bind(&a.outcome)
                    .bind(&a.error)
            },
        )
        .await?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::shaped_chunks;

    #[test]
    fn chunks_cover_everything_in_few_shapes() {
        let items: Vec<u32> = (0..1000).collect();
        let chunks = shaped_chunks(&items, 256);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [256, 256, 256, 128, 64, 32, 8]);
        let joined: Vec<u32> = chunks.concat();
        assert_eq!(joined, items);
        assert!(shaped_chunks::<u32>(&[], 256).is_empty());
    }
}

//! The shared job store on PostgreSQL (`[store] url = "postgres://…"`): the database is the
//! source of truth for every `omni serve` process on it (`--role api`, `--role worker`,
//! `--role all`), so any API node answers for any job and any worker runs any job.
//!
//! One row per job in `jobs` (migrations/, run at start-up by [`MIGRATOR`]): the
//! [`JobRecord`] as JSON plus the columns the queue locks and filters on.
//!
//! - **Claim**: `SELECT … FOR UPDATE SKIP LOCKED` of the oldest queued job (or one whose lease
//!   expired), then `status = 'in_progress'` with `lease_owner` and `lease_expires_at =
//!   now() + lease_s`. The process renews the leases of the jobs it runs every `poll_ms`.
//!   A job whose lease expired (its worker died) is claimed again; the worker counts
//!   `attempts` when it starts it, and a job already started `max_attempts` times fails with
//!   `worker_crashed` instead (the file store's rule at open, across machines).
//! - **Cancellation**: DELETE on any API node of a running job sets `cancel_requested` (the job
//!   is gone from the API at once); the lease renewal of the worker running it is also its
//!   cancellation check: it sees the flag within `poll_ms`, cancels the job's token (the
//!   pipeline stops at its next step), removes the files and the row.
//! - **Wake-up**: an admitted job is announced with `NOTIFY omni_jobs`; idle workers `LISTEN`
//!   and also poll every `poll_ms` (a notification missed while reconnecting costs at most one
//!   interval).
//! - **Outage**: every failed query is counted ([`PgStore::failures`]) and marks the store down
//!   until a query succeeds again (a ping every `poll_ms`); API nodes answer 503 meanwhile
//!   (see `routes::handle`). Workers retry the write that finishes a job for up to
//!   [`FINISH_RETRY`], and a job whose worker could not keep its lease is re-run.
//!
//! The interface is synchronous, like the file store's: worker threads and request handlers
//! block on the pool (`block_in_place` on the async runtime's threads).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::jobs::{Admission, JobError, JobRecord, Status, TerminalHook, now};
use crate::pipeline::progress::CancelToken;

/// The versioned migrations of `migrations/`, run at start-up (concurrent starts wait on
/// sqlx's advisory lock).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The channel of `NOTIFY` on each admitted job.
pub const CHANNEL: &str = "omni_jobs";

/// How long a worker retries the write that finishes a job (status, outputs) while the
/// database is unreachable, before it gives up (the lease then expires and the job runs again).
pub const FINISH_RETRY: Duration = Duration::from_secs(120);

/// `[store]` timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgOptions {
    /// Seconds a claim holds a job without renewal (`lease_s`).
    pub lease: Duration,
    /// Lease renewal, cancellation check, idle poll and health ping interval (`poll_ms`).
    pub poll: Duration,
    /// Starts of one job before it fails with `worker_crashed` (`[limits] max_attempts`).
    pub max_attempts: u32,
    /// Pool size of this process (connections).
    pub max_connections: u32,
}

/// The jobs table of one database, as this process sees it.
pub struct PgStore {
    pool: PgPool,
    rt: tokio::runtime::Handle,
    opts: PgOptions,
    /// This process's `lease_owner` (host, pid and a random suffix).
    owner: String,
    /// Jobs this process claimed and has not released, with their cancellation tokens.
    running: Mutex<HashMap<String, CancelToken>>,
    /// Running jobs whose lease another worker took over (their files are that worker's now).
    lost: Mutex<HashSet<String>>,
    failures: AtomicU64,
    down: AtomicBool,
    wake: tokio::sync::Notify,
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db` (for messages).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "the [store] url".to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Queued => "queued",
        Status::InProgress => "in_progress",
        Status::Completed => "completed",
        Status::Failed => "failed",
    }
}

fn decode(record: Value, hidden: bool) -> Result<JobRecord, sqlx::Error> {
    let mut rec: JobRecord =
        serde_json::from_value(record).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    rec.hidden = hidden;
    Ok(rec)
}

/// Write `rec` over its row (record and the columns derived from it).
async fn write(tx: &mut Transaction<'_, Postgres>, rec: &JobRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET status = $2, progress = $3, attempts = $4, record = $5, \
         updated_at = now() WHERE id = $1",
    )
    .bind(&rec.id)
    .bind(status_str(rec.status))
    .bind(i16::from(rec.progress))
    .bind(rec.attempts as i32)
    .bind(sqlx::types::Json(rec))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl PgStore {
    /// Connect to `url`, run the migrations, and start this process's background tasks on the
    /// current runtime: lease renewal + cancellation check and health ping (every `poll`), and
    /// the `LISTEN` that wakes idle workers.
    ///
    /// # Errors
    /// A one-line message (password redacted) when the database cannot be reached or migrated.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<Arc<Self>, String> {
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|e| format!("connecting to the job store {}: {e}", redact(url)))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| format!("migrating the job store {}: {e}", redact(url)))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let owner = format!(
            "{host}/{}/{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let me = Arc::new(Self {
            pool,
            rt: tokio::runtime::Handle::current(),
            opts,
            owner,
            running: Mutex::default(),
            lost: Mutex::default(),
            failures: AtomicU64::new(0),
            down: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        });
        tokio::spawn(Self::tick(Arc::downgrade(&me)));
        tokio::spawn(Self::listen(Arc::downgrade(&me)));
        Ok(me)
    }

    /// Run `f` to completion from synchronous code (a worker thread, or a request handler on
    /// the multi-threaded runtime).
    fn block<F: Future>(&self, f: F) -> F::Output {
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.rt.block_on(f)),
            Err(_) => self.rt.block_on(f),
        }
    }

    /// `Some` on success; a failure is logged, counted and marks the store down.
    fn ok<T>(&self, what: &str, r: Result<T, sqlx::Error>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::SeqCst);
                self.down.store(true, Ordering::SeqCst);
                tracing::warn!("job store: {what}: {e}");
                None
            }
        }
    }

    /// Failed queries so far (a request during which this grows is answered 503).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// The last query failed and no ping has succeeded since.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// The `poll_ms` interval.
    pub fn poll(&self) -> Duration {
        self.opts.poll
    }

    /// Every `poll`: renew the leases of the jobs this process runs and cancel those whose
    /// row asks for it, was deleted, or went to another worker; ping when idle.
    async fn tick(me: std::sync::Weak<Self>) {
        loop {
            let Some(s) = me.upgrade() else { return };
            let poll = s.opts.poll;
            let ids: Vec<String> = lock(&s.running).keys().cloned().collect();
            let r = match ids.is_empty() {
                true => sqlx::query("SELECT 1").execute(&s.pool).await.map(|_| ()),
                false => s.renew(&ids).await,
            };
            match r {
                Ok(()) => s.down.store(false, Ordering::SeqCst),
                Err(e) => {
                    s.ok::<()>("renewing leases", Err(e));
                }
            }
            drop(s);
            tokio::time::sleep(poll).await;
        }
    }

    async fn renew(&self, ids: &[String]) -> Result<(), sqlx::Error> {
        let rows = sqlx::query(
            "UPDATE jobs SET lease_expires_at = CASE WHEN lease_owner = $2 \
             THEN now() + make_interval(secs => $3) ELSE lease_expires_at END \
             WHERE id = ANY($1) RETURNING id, cancel_requested, lease_owner = $2 AS mine, status",
        )
        .bind(ids)
        .bind(&self.owner)
        .bind(self.opts.lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut seen = HashSet::new();
        let running = lock(&self.running);
        for row in rows {
            let id: String = row.try_get("id")?;
            let cancel: bool = row.try_get("cancel_requested")?;
            let mine: Option<bool> = row.try_get("mine")?;
            let status: String = row.try_get("status")?;
            seen.insert(id.clone());
            let Some(token) = running.get(&id) else {
                continue;
            };
            if status == "in_progress" && mine != Some(true) {
                tracing::warn!("job {id}: another worker took it over (lease expired); stopping");
                lock(&self.lost).insert(id.clone());
                token.cancel();
            } else if cancel {
                tracing::info!("job {id}: cancelled through the job store");
                token.cancel();
            }
        }
        // Only the jobs asked about: one claimed during the query is not missing from the store.
        for id in ids {
            if !seen.contains(id)
                && let Some(token) = running.get(id)
            {
                token.cancel();
            }
        }
        Ok(())
    }

    /// `LISTEN omni_jobs`, waking idle workers on each notification; reconnects after `poll`.
    async fn listen(me: std::sync::Weak<Self>) {
        loop {
            let Some(s) = me.upgrade() else { return };
            let (pool, poll) = (s.pool.clone(), s.opts.poll);
            drop(s);
            if let Ok(mut l) = PgListener::connect_with(&pool).await
                && l.listen(CHANNEL).await.is_ok()
            {
                while l.recv().await.is_ok() {
                    match me.upgrade() {
                        Some(s) => s.wake.notify_waiters(),
                        None => return,
                    }
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// A job as stored (`None`: no such job, deleted, or the store is down), with the
    /// cancellation token of this process's run of it.
    pub fn get(&self, id: &str) -> Option<JobRecord> {
        let r = self.block(async {
            let row = sqlx::query(
                "SELECT record, hidden FROM jobs WHERE id = $1 AND NOT cancel_requested",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.map(|row| decode(row.try_get("record")?, row.try_get("hidden")?))
                .transpose()
        });
        let mut rec = self.ok("reading a job", r)??;
        if let Some(t) = lock(&self.running).get(id) {
            rec.cancel = t.clone();
        }
        Some(rec)
    }

    /// Visible jobs (not hidden, not deleted) in creation order.
    pub fn list(&self) -> Vec<JobRecord> {
        let r = self.block(async {
            let rows = sqlx::query(
                "SELECT record FROM jobs WHERE NOT hidden AND NOT cancel_requested ORDER BY seq",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|row| decode(row.try_get("record")?, false))
                .collect::<Result<Vec<_>, _>>()
        });
        self.ok("listing jobs", r).unwrap_or_default()
    }

    /// Jobs queued and jobs running, in the whole store.
    pub fn counts(&self) -> (usize, usize) {
        let r = self.block(async {
            let row = sqlx::query(
                "SELECT count(*) FILTER (WHERE status = 'queued') AS q, \
                 count(*) FILTER (WHERE status = 'in_progress') AS r \
                 FROM jobs WHERE NOT cancel_requested",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok::<_, sqlx::Error>((row.try_get::<i64, _>("q")?, row.try_get::<i64, _>("r")?))
        });
        let (q, r) = self.ok("counting jobs", r).unwrap_or((0, 0));
        (q as usize, r as usize)
    }

    /// The next creation sequence number (`jobs_seq`; 0 when the store is down, and the
    /// insert that follows fails too).
    pub fn next_seq(&self) -> u64 {
        let r = self.block(async {
            sqlx::query_scalar::<_, i64>("SELECT nextval('jobs_seq')")
                .fetch_one(&self.pool)
                .await
        });
        self.ok("numbering a job", r).unwrap_or(0) as u64
    }

    /// Store a new job (queued ones unless `max` are already queued in the whole store; the
    /// count and the insert are not one transaction, so concurrent API nodes may overshoot
    /// `max` by one each) and wake the workers.
    ///
    /// # Errors
    /// [`Admission::Full`], or [`Admission::Storage`] when the database cannot be written.
    pub fn insert(&self, rec: &JobRecord, max: Option<usize>) -> Result<(), Admission> {
        enum E {
            Full,
            Db(sqlx::Error),
        }
        let r = self.block(async {
            if let Some(max) = max {
                let q: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobs WHERE status = 'queued' AND NOT cancel_requested",
                )
                .fetch_one(&self.pool)
                .await
                .map_err(E::Db)?;
                if q as usize >= max {
                    return Err(E::Full);
                }
            }
            let mut tx = self.pool.begin().await.map_err(E::Db)?;
            sqlx::query(
                "INSERT INTO jobs (id, seq, status, progress, attempts, hidden, record) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&rec.id)
            .bind(rec.seq as i64)
            .bind(status_str(rec.status))
            .bind(i16::from(rec.progress))
            .bind(rec.attempts as i32)
            .bind(rec.hidden)
            .bind(sqlx::types::Json(rec))
            .execute(&mut *tx)
            .await
            .map_err(E::Db)?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&rec.id)
                .execute(&mut *tx)
                .await
                .map_err(E::Db)?;
            tx.commit().await.map_err(E::Db)
        });
        match r {
            Ok(()) => Ok(()),
            Err(E::Full) => Err(Admission::Full),
            Err(E::Db(e)) => {
                let msg = e.to_string();
                self.ok::<()>("storing a job", Err(e));
                Err(Admission::Storage(std::io::Error::other(msg)))
            }
        }
    }

    /// Change a job under its row lock; `hook` runs when the change makes it terminal, before
    /// the change is committed. With `persist` (a status change) an unreachable database is
    /// retried for up to [`FINISH_RETRY`]; progress updates are dropped instead. `None` if
    /// the job is gone (or was deleted) or the store stayed down.
    pub fn update<R>(
        &self,
        id: &str,
        persist: bool,
        f: impl FnOnce(&mut JobRecord) -> R,
        hook: Option<&TerminalHook>,
    ) -> Option<R> {
        let deadline = Instant::now()
            + if persist {
                FINISH_RETRY
            } else {
                Duration::ZERO
            };
        let mut f = Some(f);
        // The change, once applied: a retry writes the same record again.
        let mut applied: Option<(JobRecord, R)> = None;
        loop {
            let r = self.block(async {
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(
                    "SELECT record, hidden FROM jobs WHERE id = $1 AND NOT cancel_requested \
                     FOR UPDATE",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(false);
                };
                if applied.is_none() {
                    let raw: Value = row.try_get("record")?;
                    let mut rec = decode(raw.clone(), row.try_get("hidden")?)?;
                    let was_terminal = rec.status.is_terminal();
                    let out = (f.take().expect("applied once"))(&mut rec);
                    let changed = serde_json::to_value(&rec).ok() != Some(raw);
                    if !changed {
                        tx.commit().await?;
                        applied = Some((rec, out));
                        return Ok(true);
                    }
                    if !was_terminal
                        && rec.status.is_terminal()
                        && let Some(hook) = hook
                    {
                        hook(&rec);
                    }
                    applied = Some((rec, out));
                }
                let (rec, _) = applied.as_ref().expect("set above");
                if !persist {
                    // A progress value lost in a database crash is harmless: no flush waited on.
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *tx)
                        .await?;
                }
                write(&mut tx, rec).await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(true)
            });
            match r {
                Ok(true) => return applied.map(|(_, out)| out),
                Ok(false) => return None,
                Err(e) => {
                    self.ok::<()>("updating a job", Err(e));
                    if Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(self.opts.poll);
                }
            }
        }
    }

    /// DELETE: a queued or finished job's row goes at once (the caller removes its files); a
    /// running job is marked `cancel_requested` (gone from the API; its worker stops at the next
    /// check and removes files and row). Returns the job as it was, `None` if unknown.
    pub fn remove(&self, id: &str) -> Option<JobRecord> {
        let r = self.block(async {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(
                "SELECT record, hidden FROM jobs WHERE id = $1 AND NOT cancel_requested \
                 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let rec = decode(row.try_get("record")?, row.try_get("hidden")?)?;
            let sql = match rec.status {
                Status::InProgress => "UPDATE jobs SET cancel_requested = true WHERE id = $1",
                _ => "DELETE FROM jobs WHERE id = $1",
            };
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Some(rec))
        });
        let rec = self.ok("removing a job", r)??;
        if let Some(t) = lock(&self.running).get(id) {
            t.cancel();
        }
        Some(rec)
    }

    /// Whether another worker took job `id` over from this process (its files are not ours
    /// to remove).
    pub fn lost(&self, id: &str) -> bool {
        lock(&self.lost).contains(id)
    }

    /// Block until this process holds a job (FIFO over the whole store); returns its id.
    /// Waits on `NOTIFY` or `poll`. `hook`: see [`PgStore::update`] (jobs failed as
    /// `worker_crashed` here).
    pub fn claim(&self, hook: Option<&TerminalHook>) -> String {
        loop {
            match self.try_claim(hook) {
                Ok(Some(id)) => return id,
                Ok(None) => {
                    let poll = self.opts.poll;
                    self.block(async {
                        let _ = tokio::time::timeout(poll, self.wake.notified()).await;
                    });
                }
                Err(e) => {
                    self.ok::<()>("claiming a job", Err(e));
                    std::thread::sleep(self.opts.poll);
                }
            }
        }
    }

    fn try_claim(&self, hook: Option<&TerminalHook>) -> Result<Option<String>, sqlx::Error> {
        self.block(async {
            loop {
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(
                    "SELECT record, hidden FROM jobs WHERE NOT cancel_requested \
                     AND (status = 'queued' OR (status = 'in_progress' AND lease_expires_at < now())) \
                     ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                )
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    tx.commit().await?;
                    return Ok(None);
                };
                let mut rec = decode(row.try_get("record")?, row.try_get("hidden")?)?;
                if rec.status == Status::InProgress {
                    // Its worker died (or lost the database) under it.
                    if rec.attempts >= self.opts.max_attempts {
                        tracing::warn!(
                            "job {} was started {} time(s) and its worker stopped each time; failing it",
                            rec.id,
                            rec.attempts
                        );
                        rec.status = Status::Failed;
                        rec.completed_at = Some(now());
                        rec.error = Some(JobError {
                            code: "worker_crashed".into(),
                            message: format!(
                                "the worker stopped while running this job {} time(s); it is not retried again",
                                rec.attempts
                            ),
                        });
                        if let Some(hook) = hook {
                            hook(&rec);
                        }
                        write(&mut tx, &rec).await?;
                        tx.commit().await?;
                        super::metrics::METRICS.finished("failed", "worker_crashed");
                        continue;
                    }
                    tracing::info!("job {}: its lease expired; running it again", rec.id);
                }
                rec.status = Status::InProgress;
                rec.progress = 0;
                rec.started_at = None;
                write(&mut tx, &rec).await?;
                sqlx::query(
                    "UPDATE jobs SET lease_owner = $2, \
                     lease_expires_at = now() + make_interval(secs => $3) WHERE id = $1",
                )
                .bind(&rec.id)
                .bind(&self.owner)
                .bind(self.opts.lease.as_secs_f64())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                lock(&self.running).insert(rec.id.clone(), CancelToken::default());
                return Ok(Some(rec.id));
            }
        })
    }

    /// This process is done with job `id`: stop renewing it, and remove its row if it was
    /// deleted while it ran.
    pub fn release(&self, id: &str) {
        lock(&self.running).remove(id);
        lock(&self.lost).remove(id);
        let r = self.block(async {
            sqlx::query("DELETE FROM jobs WHERE id = $1 AND cancel_requested AND lease_owner = $2")
                .bind(id)
                .bind(&self.owner)
                .execute(&self.pool)
                .await
        });
        self.ok("releasing a job", r);
    }

    /// Rows of deleted jobs whose worker died before it could remove them (lease expired);
    /// returns their ids (the caller removes their files).
    pub fn reap(&self) -> Vec<String> {
        let r = self.block(async {
            sqlx::query_scalar::<_, String>(
                "DELETE FROM jobs WHERE cancel_requested AND lease_expires_at < now() RETURNING id",
            )
            .fetch_all(&self.pool)
            .await
        });
        self.ok("removing deleted jobs", r).unwrap_or_default()
    }
}

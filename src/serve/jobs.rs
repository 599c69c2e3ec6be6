//! Job records, their store on disk, and the in-memory table both sides share.
//!
//! Each job is `jobs/<id>.json` in the storage folder (written to a temporary file and renamed,
//! so a crash leaves the old or the new record, never half of one), `<id>.input` for a job with an
//! image / video reference and `<id>.last.input` for a first-last-frame job's last image (both
//! written before the record) and `<id>.mp4` once complete.
//! Records are written on every status change; progress lives in memory only. At start the
//! table is rebuilt from the files: finished jobs stay listed and downloadable, unfinished ones are
//! queued again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::outputs::{OutputFile, Outputs};
use super::reference::RefKind;
use crate::pipeline::progress::CancelToken;
use crate::pipeline::request::GenerationRequest;

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Failed,
}

impl Status {
    /// Completed or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

/// What a job makes: a video (`/v1/videos`, LocalAI `/video`) or one image
/// (`/v1/images/generations`, ids `img_…`, never listed with the videos).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    #[default]
    Video,
    Image,
}

/// `error` of a failed job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// One job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// Creation order (ties of `created_at` break on it).
    pub seq: u64,
    pub model: String,
    pub status: Status,
    pub progress: u8,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub completed_at: Option<u64>,
    /// `seconds` as the create response showed it (the request may have given frames instead).
    pub seconds: String,
    pub error: Option<JobError>,
    pub file_name: Option<String>,
    pub inference_time_s: Option<f64>,
    /// Wall seconds per phase (`text_encoder`, `denoise`, `vae_decode`, `output`), summed over
    /// chunks; empty until the job completes.
    #[serde(default)]
    pub stage_durations: std::collections::BTreeMap<String, f64>,
    /// Peak resident memory of the server process (MiB) when the job completed: host memory,
    /// the whole process (model weights included).
    #[serde(default)]
    pub peak_memory_mb: Option<f64>,
    #[serde(default)]
    pub kind: JobKind,
    /// How many times the worker started this job (persisted before each start, so a job that
    /// takes the process down is not retried forever; see [`Jobs::open`]).
    #[serde(default)]
    pub attempts: u32,
    /// Image-to-video / video-to-video: the kind of the reference stored as `<id>.input` (the
    /// uploaded bytes as sent, decoded again when the job runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<RefKind>,
    /// First-last-frame-to-video: the last image is stored as `<id>.last.input` (as uploaded,
    /// decoded again when the job runs); `input` is then the first image.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_input: bool,
    /// The request, resolved once at admission; the worker runs it as stored (also after a
    /// restart).
    pub request: GenerationRequest,
    /// The job this one remixes, edits or extends (`POST /v1/videos/{id}/remix`, `/edits` and
    /// `/extensions` with `{"id": …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remixed_from_video_id: Option<String>,
    /// Where the `video.completed` / `video.failed` / `video.cancelled` event goes
    /// (the request's `webhook_url`, else `[webhooks] url`); `None`: no event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Continuation state (FastVideo's `ContinuationState`, kind `helios.v1`): asked for, taken
    /// from `<id>.input`, and the one returned.
    #[serde(default, skip_serializing_if = "Continuation::is_empty")]
    pub continuation: Continuation,
    /// `/v1/videos/sync` jobs: never listed, never stored.
    #[serde(skip)]
    pub hidden: bool,
    #[serde(skip)]
    pub cancel: CancelToken,
    /// When this process admitted the job (`None` for a job loaded from the store at start-up):
    /// the start of `omni_job_queue_wait_seconds`.
    #[serde(skip)]
    pub admitted: Option<std::time::Instant>,
}

/// A job's continuation state (see [`crate::pipeline::continuation`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Continuation {
    /// The job whose state this one continues (its state blob was copied to `<id>.input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `output.return_state` / `return_state`: store the state after the last chunk.
    #[serde(default)]
    pub return_state: bool,
    /// The returned `state` object (`{"kind": "helios.v1", "payload": {…, "blob": id}}`); the
    /// blob is `<id>.state`, removed with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
}

impl Continuation {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl JobRecord {
    /// The OpenAI/vLLM-Omni `Video` object; `ttl` (seconds) sets `expires_at`.
    pub fn video(&self, ttl: Option<u64>) -> Value {
        let mut v = self.video_fields(ttl);
        if let Some(state) = &self.continuation.state {
            v["state"] = state.clone();
        }
        v
    }

    fn video_fields(&self, ttl: Option<u64>) -> Value {
        // The video file's size: the generated size times `upscale_factor` with upscaling.
        let (video_width, video_height) = self.request.video_size();
        json!({
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": self.status,
            "progress": self.progress,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at(ttl),
            "prompt": self.request.prompt,
            "seconds": self.seconds,
            "size": format!("{video_width}x{video_height}"),
            "quality": "default",
            "remixed_from_video_id": self.remixed_from_video_id,
            "error": self.error,
            "media_type": "video/mp4",
            "file_name": self.file_name,
            "inference_time_s": self.inference_time_s,
            "stage_durations": self.stage_durations,
            "peak_memory_mb": self.peak_memory_mb,
            "fps": self.request.fps,
            "num_frames": self.request.video_frames(),
            "started_at": self.started_at,
        })
    }
}

impl JobRecord {
    /// When a finished job is removed (`completed_at + ttl`).
    pub fn expires_at(&self, ttl: Option<u64>) -> Option<u64> {
        Some(self.completed_at? + ttl?)
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `video_` (or `img_` for images) + 32 lowercase hex digits.
pub fn new_id(kind: JobKind) -> String {
    let prefix = match kind {
        JobKind::Video => "video_",
        JobKind::Image => "img_",
    };
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Whether `id` has the shape [`new_id`] makes (checked before any file access).
pub fn valid_id(id: &str) -> bool {
    let hex = id
        .strip_prefix("video_")
        .or_else(|| id.strip_prefix("img_"));
    hex.is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// How old an unaccounted file must be before a sweep of a running server removes it: an input
/// is written just before its record, and a job's files just before its record says so.
pub const LIVE_SWEEP_GRACE: Duration = Duration::from_secs(600);

/// Remove what a killed or failed run left in `storage`: temporary files (`*.tmp`: an MP4 or
/// preview being written when the process died), and files of a job that has no record, or
/// whose record does not need them (an input once the job is finished, outputs of a job that
/// is not completed).
///
/// `live`: the server is running (the TTL sweep), so the temporary files of unfinished jobs are
/// being written and are kept, and nothing younger than [`LIVE_SWEEP_GRACE`] is removed. At
/// startup (`live = false`) nobody writes, and every such file goes.
fn sweep_orphans(storage: &Path, records: &HashMap<String, JobRecord>, live: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(storage) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let orphan = match name.split_once('.') {
            // `.video_<id>.mp4.<pid>.<n>.tmp`, `<id>.thumbnail.tmp`.
            _ if name.ends_with(".tmp") => {
                let id = name.trim_start_matches('.').split('.').next().unwrap_or("");
                !live || records.get(id).is_none_or(|r| r.status.is_terminal())
            }
            Some((id, ext)) if valid_id(id) => match records.get(id) {
                None => true,
                Some(rec) if ext == "input" || ext == "last.input" => rec.status.is_terminal(),
                Some(rec) => rec.status != Status::Completed,
            },
            _ => false,
        };
        let young = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < LIVE_SWEEP_GRACE)
        };
        if !orphan || (live && young()) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                removed += 1;
                tracing::info!("removed orphaned file {name}");
            }
            Err(e) => tracing::warn!("removing orphaned file {name}: {e}"),
        }
    }
    removed
}

/// Why [`Jobs::insert_queued`] did not take a job.
#[derive(Debug)]
pub enum Admission {
    /// The queue is full.
    Full,
    /// The record could not be stored (disk full, storage gone).
    Storage(std::io::Error),
}

/// Persistent job records.
pub trait Store: Send + Sync {
    /// Every stored record.
    fn load_all(&self) -> Vec<JobRecord>;
    /// Create or replace a record.
    fn put(&self, rec: &JobRecord) -> std::io::Result<()>;
    /// Remove a record (absent is fine).
    fn remove(&self, id: &str) -> std::io::Result<()>;
}

/// One JSON file per job under `<storage>/jobs/`, replaced atomically.
#[derive(Debug)]
pub struct JsonDirStore {
    dir: PathBuf,
}

impl JsonDirStore {
    /// Open (and create) `<storage>/jobs`.
    ///
    /// # Errors
    /// The folder cannot be created.
    pub fn open(storage: &Path) -> std::io::Result<Self> {
        let dir = storage.join("jobs");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        debug_assert!(valid_id(id));
        self.dir.join(format!("{id}.json"))
    }
}

impl Store for JsonDirStore {
    fn load_all(&self) -> Vec<JobRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            match std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<JobRecord>(&b).ok())
            {
                Some(rec) if rec.id == id => out.push(rec),
                _ => tracing::warn!("skipping unreadable job record {name}"),
            }
        }
        out
    }

    fn put(&self, rec: &JobRecord) -> std::io::Result<()> {
        let path = self.path(&rec.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.id));
        let bytes = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        let written = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            // A full disk leaves a partial file: gone with the error.
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn remove(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The record store of a table on a shared store (which writes its own rows).
struct NoStore;

impl Store for NoStore {
    fn load_all(&self) -> Vec<JobRecord> {
        Vec::new()
    }
    fn put(&self, _: &JobRecord) -> std::io::Result<()> {
        Ok(())
    }
    fn remove(&self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
}

/// Called with a job's record when a stored change makes it terminal (completed or failed).
pub type TerminalHook = Box<dyn Fn(&JobRecord) + Send + Sync>;

/// The shared job table.
pub struct Jobs {
    pub storage: PathBuf,
    store: Box<dyn Store>,
    inner: Mutex<Inner>,
    /// See [`Jobs::on_terminal`].
    on_terminal: std::sync::OnceLock<TerminalHook>,
    /// Jobs [`Jobs::open`] failed as `worker_crashed`, for the hook once it is set.
    failed_at_open: Mutex<Vec<String>>,
    /// The shared store (`[store] url = "postgres://…"`): the source of truth, `inner` unused.
    shared: Option<std::sync::Arc<super::postgres::PgStore>>,
    /// Where finished files are published (see [`Jobs::outputs`]).
    outputs: Arc<Outputs>,
}

struct Inner {
    map: HashMap<String, JobRecord>,
    next_seq: u64,
}

impl Jobs {
    /// Open the table on `storage`, loading stored records. Returns the table and the ids of
    /// unfinished jobs (to queue again), oldest first. A job the worker already started
    /// `max_attempts` times without finishing (the process died under it each time) is marked
    /// failed with `error.code = "worker_crashed"` instead, so one bad job cannot crash-loop the
    /// server.
    ///
    /// # Errors
    /// The storage folder cannot be created.
    pub fn open(storage: &Path, max_attempts: u32) -> std::io::Result<(Self, Vec<String>)> {
        Self::open_file(
            storage,
            storage,
            max_attempts,
            Arc::new(Outputs::folder(storage)),
        )
    }

    /// [`Jobs::open`] with the records under `<records>/jobs` (`[store] url = "file:///…"`), the
    /// job files in `storage` and finished files published to `outputs` ([`super::outputs`]). A
    /// completed job whose video is missing is failed with `file_missing` only when `outputs`
    /// is a folder (an object store is not listed at start-up: a missing object is a 404).
    ///
    /// # Errors
    /// Either folder cannot be created.
    pub fn open_file(
        storage: &Path,
        records: &Path,
        max_attempts: u32,
        outputs: Arc<Outputs>,
    ) -> std::io::Result<(Self, Vec<String>)> {
        std::fs::create_dir_all(storage)?;
        let store = JsonDirStore::open(records)?;
        let mut map = HashMap::new();
        let mut resume = Vec::new();
        let mut next_seq = 0;
        let mut failed_at_open = Vec::new();
        let mut recs = store.load_all();
        recs.sort_by_key(|r| r.seq);
        for mut rec in recs {
            next_seq = next_seq.max(rec.seq + 1);
            if rec.status == Status::Completed
                && let Some(dir) = outputs.local_dir()
                && !rec
                    .file_name
                    .as_ref()
                    .is_some_and(|f| dir.join(f).is_file())
            {
                rec.status = Status::Failed;
                rec.error = Some(JobError {
                    code: "file_missing".into(),
                    message: "the video file is no longer in storage".into(),
                });
            }
            if !rec.status.is_terminal() && rec.attempts >= max_attempts {
                tracing::warn!(
                    "job {} was started {} time(s) and the server stopped under it each time; failing it",
                    rec.id,
                    rec.attempts
                );
                rec.status = Status::Failed;
                rec.completed_at = Some(now());
                rec.error = Some(JobError {
                    code: "worker_crashed".into(),
                    message: format!(
                        "the server stopped while running this job {} time(s); it is not retried again",
                        rec.attempts
                    ),
                });
                let _ = store.put(&rec);
                failed_at_open.push(rec.id.clone());
            }
            if !rec.status.is_terminal() {
                rec.status = Status::Queued;
                rec.progress = 0;
                rec.started_at = None;
                resume.push(rec.id.clone());
            }
            map.insert(rec.id.clone(), rec);
        }
        sweep_orphans(storage, &map, false);
        Ok((
            Self {
                storage: storage.to_path_buf(),
                store: Box::new(store),
                inner: Mutex::new(Inner { map, next_seq }),
                on_terminal: std::sync::OnceLock::new(),
                failed_at_open: Mutex::new(failed_at_open),
                shared: None,
                outputs,
            },
            resume,
        ))
    }

    /// The table on a shared store (PostgreSQL), with the job files in `storage` (a folder every
    /// process on the store sees). Nothing is resumed here: workers claim from the store.
    ///
    /// # Errors
    /// The storage folder cannot be created.
    pub fn open_shared(
        storage: &Path,
        pg: std::sync::Arc<super::postgres::PgStore>,
        outputs: Arc<Outputs>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(storage)?;
        Ok(Self {
            storage: storage.to_path_buf(),
            store: Box::new(NoStore),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                next_seq: 0,
            }),
            on_terminal: std::sync::OnceLock::new(),
            failed_at_open: Mutex::default(),
            shared: Some(pg),
            outputs,
        })
    }

    /// The shared store, if the table is on one.
    pub fn shared(&self) -> Option<&std::sync::Arc<super::postgres::PgStore>> {
        self.shared.as_ref()
    }

    /// Failed store queries so far (0 for the file store): a request during which this grows
    /// is answered 503.
    pub fn store_failures(&self) -> u64 {
        self.shared.as_ref().map_or(0, |pg| pg.failures())
    }

    /// The shared store is unreachable (its last query failed).
    pub fn store_down(&self) -> bool {
        self.shared.as_ref().is_some_and(|pg| pg.is_down())
    }

    /// Shared store: block until this process holds the next job and return its id (the
    /// removed rows of jobs whose worker died are cleaned up first). `None` for the file store,
    /// whose jobs come through the worker channel.
    pub fn claim_next(&self) -> Option<String> {
        let pg = self.shared.as_ref()?;
        for id in pg.reap() {
            self.remove_files(&id);
        }
        Some(pg.claim(self.on_terminal.get()))
    }

    /// The worker is done with job `id` (shared store: stop renewing its lease; remove the row
    /// of a job deleted while it ran). Nothing for the file store.
    pub fn release(&self, id: &str) {
        if let Some(pg) = &self.shared {
            pg.release(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, rec: &JobRecord) {
        if rec.hidden {
            return;
        }
        if let Err(e) = self.store.put(rec) {
            tracing::error!("storing job {}: {e}", rec.id);
        }
    }

    /// The next creation sequence number.
    pub fn next_seq(&self) -> u64 {
        if let Some(pg) = &self.shared {
            return pg.next_seq();
        }
        let mut g = self.lock();
        g.next_seq += 1;
        g.next_seq - 1
    }

    /// Add a new record (and store it unless hidden).
    pub fn insert(&self, rec: JobRecord) {
        if let Some(pg) = &self.shared {
            let _ = pg.insert(&rec, None);
            return;
        }
        self.persist(&rec);
        self.lock().map.insert(rec.id.clone(), rec);
    }

    /// Add a new queued record unless `max` jobs are already waiting (queued, not yet picked
    /// up by the worker); the count is of the table, so a deleted or expired job frees its slot
    /// at once. The record is written to the store before this returns (synced), so an admitted
    /// job survives a crash.
    ///
    /// # Errors
    /// [`Admission::Full`] with `max` waiting; [`Admission::Storage`] when the record cannot be
    /// written (the job is then not in the table either).
    pub fn insert_queued(&self, rec: JobRecord, max: usize) -> Result<(), Admission> {
        if let Some(pg) = &self.shared {
            return pg.insert(&rec, Some(max));
        }
        {
            let mut g = self.lock();
            let waiting = g
                .map
                .values()
                .filter(|r| r.status == Status::Queued)
                .count();
            if waiting >= max {
                return Err(Admission::Full);
            }
            g.map.insert(rec.id.clone(), rec.clone());
        }
        if !rec.hidden
            && let Err(e) = self.store.put(&rec)
        {
            tracing::error!("storing job {}: {e}", rec.id);
            self.lock().map.remove(&rec.id);
            return Err(Admission::Storage(e));
        }
        Ok(())
    }

    /// A copy of the record.
    pub fn get(&self, id: &str) -> Option<JobRecord> {
        if let Some(pg) = &self.shared {
            return pg.get(id);
        }
        self.lock().map.get(id).cloned()
    }

    /// Change a record; with `persist` the changed record is written to the store before it
    /// replaces the one others see. `None` if the job is gone.
    pub fn update<R>(
        &self,
        id: &str,
        persist: bool,
        f: impl FnOnce(&mut JobRecord) -> R,
    ) -> Option<R> {
        if let Some(pg) = &self.shared {
            return pg.update(id, persist, f, self.on_terminal.get());
        }
        let mut g = self.lock();
        let slot = g.map.get_mut(id)?;
        if !persist {
            return Some(f(slot));
        }
        // Stored before anyone can see it: a client that saw `completed` finds it completed
        // after a `kill -9`, whenever the kill lands (the lock is held over the write).
        let mut next = slot.clone();
        let r = f(&mut next);
        if !slot.status.is_terminal()
            && next.status.is_terminal()
            && let Some(hook) = self.on_terminal.get()
        {
            // Before the record: a crash in between re-runs the job and sends a second
            // event, rather than losing the only one.
            hook(&next);
        }
        self.persist(&next);
        *slot = next;
        Some(r)
    }

    /// Set the hook called when an update makes a job completed or failed (the webhook
    /// outbox): once per job, before the terminal record is stored, under the table's lock (so
    /// it must not call back into the table). Jobs [`Jobs::open`] failed as `worker_crashed`
    /// are passed to it now. A second call is ignored.
    pub fn on_terminal(&self, hook: TerminalHook) {
        if self.on_terminal.set(hook).is_err() {
            return;
        }
        let ids = std::mem::take(
            &mut *self
                .failed_at_open
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let hook = self.on_terminal.get().expect("set above");
        for id in ids {
            if let Some(rec) = self.get(&id) {
                hook(&rec);
            }
        }
    }

    /// Remove the record, cancel the job and delete its files.
    pub fn remove(&self, id: &str) -> Option<JobRecord> {
        if let Some(pg) = &self.shared {
            // A running job's files are removed by its worker when it stops.
            let rec = pg.remove(id)?;
            if rec.status != Status::InProgress {
                self.remove_files(id);
            }
            return Some(rec);
        }
        let rec = self.lock().map.remove(id)?;
        rec.cancel.cancel();
        if let Err(e) = self.store.remove(id) {
            tracing::error!("removing job record {id}: {e}");
        }
        self.remove_files(id);
        Some(rec)
    }

    /// Delete the job's files: the video, its previews and its input reference(s).
    pub fn remove_files(&self, id: &str) {
        if self.shared.as_ref().is_some_and(|pg| pg.lost(id)) {
            // Another worker runs the job now and writes these files.
            return;
        }
        if valid_id(id) {
            for p in [
                self.input_path(id),
                self.last_input_path(id),
                self.video_path(id),
                self.thumbnail_path(id),
                self.spritesheet_path(id),
                self.image_path(id),
                self.state_path(id),
                self.fmp4_path(id),
            ] {
                let _ = std::fs::remove_file(p);
            }
            self.outputs.remove(id);
        }
    }

    /// Where finished files are published and read back from.
    pub fn outputs(&self) -> &Arc<Outputs> {
        &self.outputs
    }

    /// `<storage>/<id>.fmp4`: the fragmented MP4 a finished video streams from
    /// (`content?stream=true`), written when the job completes.
    pub fn fmp4_path(&self, id: &str) -> PathBuf {
        self.storage.join(format!("{id}.fmp4"))
    }

    /// `<storage>/<id>.state`: the continuation state a job returned (safetensors).
    pub fn state_path(&self, id: &str) -> PathBuf {
        self.storage.join(format!("{id}.state"))
    }

    /// `<storage>/<id>.input`: the reference file of an I2V / V2V job, as uploaded.
    pub fn input_path(&self, id: &str) -> PathBuf {
        self.storage.join(format!("{id}.input"))
    }

    /// `<storage>/<id>.last.input`: the last image of a first-last-frame job, as uploaded.
    pub fn last_input_path(&self, id: &str) -> PathBuf {
        self.storage.join(OutputFile::LastInput.name(id))
    }

    /// `<storage>/<id>.mp4`.
    pub fn video_path(&self, id: &str) -> PathBuf {
        self.storage.join(format!("{id}.mp4"))
    }

    /// `<storage>/<id>.thumbnail.webp` (the middle frame).
    pub fn thumbnail_path(&self, id: &str) -> PathBuf {
        self.storage.join(format!("{id}.thumbnail.webp"))
    }

    /// `<storage>/<id>.spritesheet.jpg` (see [`super::previews`] for the grid).
    pub fn spritesheet_path(&self, id: &str) -> PathBuf {
        self.storage.join(format!("{id}.spritesheet.jpg"))
    }

    /// `<storage>/<id>.png` (image jobs: the first frame).
    pub fn image_path(&self, id: &str) -> PathBuf {
        self.storage.join(format!("{id}.png"))
    }

    /// Remove files no record needs that are older than [`LIVE_SWEEP_GRACE`] (what a failed
    /// admission, a crashed encoder or a corrupted record left); returns how many. Runs with the
    /// TTL sweep; the startup sweep removes them whatever their age.
    pub fn sweep_orphaned_files(&self) -> usize {
        if self.shared.is_some() {
            // Other processes write into the shared folder; their jobs are not in this table.
            return 0;
        }
        let records = self.lock().map.clone();
        sweep_orphans(&self.storage, &records, true)
    }

    /// Remove finished jobs past their TTL; returns how many.
    pub fn sweep(&self, ttl: u64) -> usize {
        let now = now();
        let expired: Vec<String> = self
            .list()
            .into_iter()
            .filter(|r| r.status.is_terminal() && r.expires_at(Some(ttl)).is_some_and(|e| e <= now))
            .map(|r| r.id)
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len()
    }

    /// Jobs queued and jobs running, hidden (`/v1/videos/sync`) ones included.
    pub fn counts(&self) -> (usize, usize) {
        if let Some(pg) = &self.shared {
            return pg.counts();
        }
        let g = self.lock();
        let count = |s: Status| g.map.values().filter(|r| r.status == s).count();
        (count(Status::Queued), count(Status::InProgress))
    }

    /// Visible records in creation order.
    pub fn list(&self) -> Vec<JobRecord> {
        if let Some(pg) = &self.shared {
            return pg.list();
        }
        let g = self.lock();
        let mut v: Vec<JobRecord> = g.map.values().filter(|r| !r.hidden).cloned().collect();
        v.sort_by_key(|r| r.seq);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        let id = new_id(JobKind::Video);
        assert!(valid_id(&id), "{id}");
        assert!(valid_id(&new_id(JobKind::Image)));
        for bad in [
            "",
            "video_",
            "video_../../etc/passwd",
            "video_0123456789ABCDEF0123456789abcdef",
            "img_0123456789abcdef0123456789abcde",
            "x",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    fn record(id: &str, status: Status) -> JobRecord {
        JobRecord {
            id: id.into(),
            seq: 0,
            model: "m".into(),
            status,
            progress: 0,
            created_at: 0,
            started_at: None,
            completed_at: None,
            seconds: "1".into(),
            error: None,
            file_name: None,
            inference_time_s: None,
            stage_durations: Default::default(),
            peak_memory_mb: None,
            kind: JobKind::Video,
            attempts: 0,
            input: None,
            last_input: false,
            request: crate::pipeline::request::ModelDefaults::helios_distilled().request,
            remixed_from_video_id: None,
            webhook_url: None,
            continuation: Default::default(),
            hidden: false,
            cancel: Default::default(),
            admitted: None,
        }
    }

    /// The live sweep keeps what running and queued jobs are writing and anything young;
    /// the startup sweep removes every orphan.
    #[test]
    fn the_terminal_hook_fires_once_per_job_before_its_record_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = new_id(JobKind::Video);
        {
            let (jobs, _) = Jobs::open(dir.path(), 2).unwrap();
            let mut r = record(&crashed, Status::InProgress);
            r.attempts = 2;
            jobs.insert(r);
        }
        let (jobs, resume) = Jobs::open(dir.path(), 2).unwrap();
        assert!(resume.is_empty(), "failed as worker_crashed at open");
        let live = new_id(JobKind::Video);
        jobs.insert(record(&live, Status::Queued));
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (s2, store) = (seen.clone(), dir.path().join("jobs"));
        jobs.on_terminal(Box::new(move |r: &JobRecord| {
            // The stored record is not terminal yet when the hook runs (open's crash case aside).
            let stored: Option<JobRecord> = std::fs::read(store.join(format!("{}.json", r.id)))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            s2.lock()
                .unwrap()
                .push((r.id.clone(), r.status, stored.map(|s| s.status)));
        }));
        jobs.update(&live, true, |r| r.status = Status::InProgress);
        jobs.update(&live, true, |r| r.status = Status::Completed);
        jobs.update(&live, true, |r| r.progress = 100);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (crashed, Status::Failed, Some(Status::Failed)),
                (live, Status::Completed, Some(Status::InProgress)),
            ]
        );
    }

    #[test]
    fn live_sweep_spares_running_jobs_and_young_files() {
        let dir = tempfile::tempdir().unwrap();
        let (running, done, gone) = (
            new_id(JobKind::Video),
            new_id(JobKind::Video),
            new_id(JobKind::Video),
        );
        let records: HashMap<String, JobRecord> = [
            record(&running, Status::InProgress),
            record(&done, Status::Completed),
        ]
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
        let old = SystemTime::now() - LIVE_SWEEP_GRACE * 2;
        let file = |name: String, aged: bool| {
            let p = dir.path().join(name);
            let f = std::fs::File::create(&p).unwrap();
            if aged {
                f.set_modified(old).unwrap();
            }
            p
        };
        let kept = [
            file(format!(".{running}.mp4.1.0.tmp"), true), // being encoded
            file(format!("{running}.input"), true),        // its input
            file(format!("{running}.last.input"), true),   // its last image
            file(format!("{done}.mp4"), true),
            file(format!("{gone}.input"), false), // just admitted, record not written yet
        ];
        let removed = [
            file(format!(".{done}.mp4.1.0.tmp"), true), // a finished job's leftover
            file(format!("{done}.input"), true),
            file(format!("{done}.last.input"), true),
            file(format!("{gone}.mp4"), true), // no record
            file(format!("{gone}.thumbnail.tmp"), true),
        ];
        assert_eq!(sweep_orphans(dir.path(), &records, true), removed.len());
        for p in &kept {
            assert!(p.exists(), "{} removed", p.display());
        }
        for p in &removed {
            assert!(!p.exists(), "{} kept", p.display());
        }
        // At startup nothing is being written: the running job's tmp and the young input go.
        assert_eq!(sweep_orphans(dir.path(), &records, false), 2);
        assert!(dir.path().join(format!("{running}.input")).exists());
    }
}

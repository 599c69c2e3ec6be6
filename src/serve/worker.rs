//! The worker threads that own the pipeline: each loads its own copy of the model once, then
//! they take jobs in FIFO order from one channel (the first free worker takes the next job),
//! writing progress and results into the job table. `workers = N` (`--workers N`) starts N of
//! them; one is the default. `devices = [i, j, …]` (`--devices i,j`, cuda build) starts one per
//! GPU, each thread bound to its device with
//! [`set_thread_device`](crate::pipeline::backend::set_thread_device) before it loads the model.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::jobs::{JobError, JobKind, Jobs, Status, now};
use super::metrics::{METRICS, MemoryLabels, WorkerLabels};
use super::outputs::OutputFile;
use super::previews::PreviewCollector;
use super::reference::{decode_first_last, decode_kind};
use super::stream::{LiveStreams, LiveWriter};
use crate::media::fmp4_out::Fmp4Writer;
use crate::media::mp4_out::{EncodeOptions, Mp4Writer};
use crate::pipeline::backend::DeviceMemory;
use crate::pipeline::continuation::{self, HeliosState};
use crate::pipeline::error::PipelineError;
use crate::pipeline::generator::{FrameSink, Generator, GeneratorOptions, RunContext, VideoFrames};
use crate::pipeline::noise::SeededNoise;
use crate::pipeline::progress::{NoProgress, Progress, ProgressSink};

/// A job for the worker; `done` fires once the job reached a terminal state (or vanished).
pub struct Job {
    pub id: String,
    pub done: Option<oneshot::Sender<()>>,
}

/// The async side's handle on the workers.
#[derive(Clone)]
pub struct Worker {
    tx: Sender<Job>,
    slots: Arc<Vec<Slot>>,
    /// The job table (on a shared store, workers claim from it instead of the channel).
    jobs: Arc<Jobs>,
}

/// What one worker thread shows of itself.
#[derive(Default)]
pub struct Slot {
    /// Its `worker` label: the index (`"0"`), or its GPU (`"cuda:2"`) with `devices`.
    name: String,
    ready: AtomicBool,
    /// The id of the job it runs now.
    job: Mutex<Option<String>>,
}

/// One worker's state, as `/v1/models` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerState {
    /// `"0"`, `"1"`, … (or `"cuda:0"`, `"cuda:3"`, … with `--devices`): the `worker` label of
    /// the metrics.
    pub worker: String,
    /// Its model is loaded.
    pub ready: bool,
    /// The job it runs now.
    pub job: Option<String>,
}

/// The model the worker loads and how.
pub struct WorkerModel {
    /// Diffusers-format checkpoint folder.
    pub dir: PathBuf,
    /// Load policy ([`LoadPolicy::KeepAll`](crate::pipeline::generator::LoadPolicy::KeepAll), or [`LoadPolicy::TextEncoderPerRequest`](crate::pipeline::generator::LoadPolicy::TextEncoderPerRequest) with
    /// `keep_text_encoder = false`).
    pub options: GeneratorOptions,
    /// The GPU of each worker (`--devices`); `None` = every worker on the default device.
    pub devices: Option<Vec<usize>>,
}

impl Worker {
    /// Start `count` worker threads, each loading its own copy of the model (0: `--role api`,
    /// no model). `resume` ids are queued first. The returned receiver gets the outcome of
    /// loading: `Ok` once every worker has its model, or the first error.
    ///
    /// On a shared store ([`Jobs::shared`]) the workers claim jobs from the store instead of
    /// the channel (the same run per job).
    pub fn spawn(
        model: WorkerModel,
        count: usize,
        jobs: Arc<Jobs>,
        streams: Arc<LiveStreams>,
        resume: Vec<String>,
    ) -> (Self, oneshot::Receiver<Result<(), String>>) {
        let (tx, rx) = channel::<Job>();
        for id in resume {
            let _ = tx.send(Job { id, done: None });
        }
        let rx = Arc::new(Mutex::new(rx));
        // `--role api` runs no worker (count 0); `--devices` gives one worker per device.
        let count = match count {
            0 => 0,
            c => model.devices.as_ref().map_or(c, Vec::len),
        };
        let devices = model.devices.clone();
        let device = |i: usize| devices.as_ref().and_then(|d| d.get(i).copied());
        let slots: Arc<Vec<Slot>> = Arc::new(
            (0..count)
                .map(|i| Slot {
                    name: match device(i) {
                        Some(d) => format!("cuda:{d}"),
                        None => i.to_string(),
                    },
                    ..Slot::default()
                })
                .collect(),
        );
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let loaded_tx = match count {
            0 => {
                let _ = loaded_tx.send(Ok(()));
                None
            }
            _ => Some(loaded_tx),
        };
        let loaded = Arc::new(Mutex::new(Loaded {
            left: count,
            tx: loaded_tx,
        }));
        let model = Arc::new(model);
        for index in 0..count {
            let me = Me {
                index,
                slots: slots.clone(),
                device: device(index),
            };
            let (model, jobs, streams, rx, loaded) = (
                model.clone(),
                jobs.clone(),
                streams.clone(),
                rx.clone(),
                loaded.clone(),
            );
            std::thread::Builder::new()
                .name(format!("omni-worker-{index}"))
                .spawn(move || run(me, &model, jobs, streams, rx, loaded))
                .expect("spawning a worker thread");
        }
        (Self { tx, slots, jobs }, loaded_rx)
    }

    /// Whether every worker's model is loaded.
    pub fn is_ready(&self) -> bool {
        self.slots.iter().all(|s| s.ready.load(Ordering::SeqCst))
    }

    /// Each worker's state, in worker order.
    pub fn states(&self) -> Vec<WorkerState> {
        self.slots
            .iter()
            .map(|s| WorkerState {
                worker: s.name.clone(),
                ready: s.ready.load(Ordering::SeqCst),
                job: s.job.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect()
    }

    /// Hand a job to the worker (the queue limit is the job table's: see
    /// [`Jobs::insert_queued`](super::jobs::Jobs::insert_queued)).
    ///
    /// Returns false when the worker thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        let Some(pg) = self.jobs.shared() else {
            return self.tx.send(job).is_ok();
        };
        // The store woke the workers (NOTIFY); `done` fires once the store shows the job
        // terminal or gone, polled every `poll_ms`.
        if let Some(done) = job.done {
            let (jobs, poll) = (self.jobs.clone(), pg.poll());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(poll).await;
                    let j = jobs.clone();
                    let id = job.id.clone();
                    let rec = tokio::task::spawn_blocking(move || j.get(&id)).await;
                    let finished = match rec {
                        Ok(Some(r)) => r.status.is_terminal(),
                        Ok(None) => !jobs.store_down(),
                        Err(_) => true,
                    };
                    if finished || done.is_closed() {
                        let _ = done.send(());
                        return;
                    }
                }
            });
        }
        true
    }
}

/// The load outcome the workers report together.
struct Loaded {
    /// Workers still loading.
    left: usize,
    tx: Option<oneshot::Sender<Result<(), String>>>,
}

/// Which worker a thread is.
struct Me {
    index: usize,
    slots: Arc<Vec<Slot>>,
    /// Its GPU (`--devices`).
    device: Option<usize>,
}

impl Me {
    fn slot(&self) -> &Slot {
        &self.slots[self.index]
    }

    /// The `worker` label of the metrics.
    fn label(&self) -> WorkerLabels {
        WorkerLabels {
            worker: self.slot().name.clone(),
        }
    }
}

fn run(
    me: Me,
    model: &WorkerModel,
    jobs: Arc<Jobs>,
    streams: Arc<LiveStreams>,
    rx: Arc<Mutex<Receiver<Job>>>,
    loaded: Arc<Mutex<Loaded>>,
) {
    let started = Instant::now();
    let report = |outcome: Result<(), String>| {
        let mut l = loaded.lock().unwrap_or_else(|e| e.into_inner());
        l.left -= 1;
        if (outcome.is_err() || l.left == 0)
            && let Some(tx) = l.tx.take()
        {
            let _ = tx.send(outcome);
        }
    };
    if let Some(d) = me.device
        && let Err(e) = crate::pipeline::backend::set_thread_device(d)
    {
        return report(Err(e));
    }
    let mut generator = match Generator::open(&model.dir, model.options, &mut NoProgress) {
        Ok(g) => g,
        Err(e) => {
            return report(Err(format!("loading {}: {e}", model.dir.display())));
        }
    };
    tracing::info!(
        "worker {} ({}): model loaded in {:.1} s",
        me.index,
        crate::pipeline::backend::thread_device_label(),
        started.elapsed().as_secs_f64()
    );
    me.slot().ready.store(true, Ordering::SeqCst);
    METRICS.worker_ready.get_or_create(&me.label()).set(1);
    report(Ok(()));
    loop {
        // The lock is held only while waiting: the first free worker takes the next job. On a
        // shared store the worker claims the store's next job instead.
        let job = match jobs.claim_next() {
            Some(id) => Job { id, done: None },
            None => match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        run_job(&me, &mut generator, &jobs, &streams, &job.id);
        jobs.release(&job.id);
        if let Some(done) = job.done {
            let _ = done.send(());
        }
    }
}

/// While alive, the worker counts as busy with its job; dropped, the job's wall time is
/// observed (`omni_worker_busy`, `omni_job_duration_seconds`).
struct Busy<'a>(&'a Me, Instant);

impl<'a> Busy<'a> {
    fn start(me: &'a Me, id: &str) -> Self {
        *me.slot().job.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
        METRICS.worker_busy.get_or_create(&me.label()).set(1);
        Self(me, Instant::now())
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        *self.0.slot().job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        METRICS.worker_busy.get_or_create(&self.0.label()).set(0);
        METRICS.job_duration.observe(self.1.elapsed().as_secs_f64());
    }
}

/// Writes each decoded chunk to the MP4 and, for video jobs, as one fragment to the job's live
/// stream, and keeps the frames the previews need.
struct Mp4Sink {
    writer: Mp4Writer,
    stream: Option<Fmp4Writer<LiveWriter>>,
    previews: PreviewCollector,
}

impl FrameSink for Mp4Sink {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        self.previews.push(&frames);
        if let Some(stream) = &mut self.stream {
            stream
                .push_frames_f32(&frames.data)
                .map_err(|e| e.to_string())?;
        }
        self.writer.push_frames(frames)
    }
}

/// Progress → the job's percent: each chunk is an equal share of 1..=99, 90 % of it for its
/// denoising steps and the rest for its decode.
struct JobProgress<'a> {
    jobs: &'a Jobs,
    id: &'a str,
    chunks: usize,
    /// Start of the phase being timed.
    mark: Instant,
    /// Seconds per phase, summed over chunks (the `stage_durations` of the job).
    durations: std::collections::BTreeMap<String, f64>,
    /// Largest GPU memory in use seen at the phase boundaries (`None` on the CPU backend).
    peak_device: Option<DeviceMemory>,
    /// End of the last denoising step (or start of the chunk): `omni_denoising_step_seconds`.
    last_step: Instant,
}

impl JobProgress<'_> {
    /// Close the running phase under `name` and start the next one.
    fn lap(&mut self, name: Option<&str>) {
        let now = Instant::now();
        if let Some(name) = name {
            *self.durations.entry(name.to_string()).or_default() += (now - self.mark).as_secs_f64();
        }
        self.mark = now;
    }
}

impl JobProgress<'_> {
    fn set(&self, chunk: usize, within: f64) {
        let frac = (chunk as f64 + within.clamp(0.0, 1.0)) / self.chunks.max(1) as f64;
        let pct = (1.0 + 98.0 * frac).floor().clamp(1.0, 99.0) as u8;
        self.jobs.update(self.id, false, |r| {
            if r.status == Status::InProgress && pct > r.progress {
                r.progress = pct;
            }
        });
    }
}

impl ProgressSink for JobProgress<'_> {
    fn event(&mut self, event: Progress) {
        // Phase timing from the event boundaries (on a GPU the device is not synchronised
        // here, so work queued in one phase may be counted in the next).
        match &event {
            Progress::EncodingPrompt { done: false } | Progress::ChunkStarted { .. } => {
                self.lap(None)
            }
            Progress::EncodingPrompt { done: true } => self.lap(Some("text_encoder")),
            Progress::Decoding { done: false, .. } => self.lap(Some("denoise")),
            Progress::Decoding { done: true, .. } => self.lap(Some("vae_decode")),
            Progress::FramesReady { .. } => self.lap(Some("output")),
            _ => {}
        }
        if matches!(
            event,
            Progress::EncodingPrompt { done: true } | Progress::Decoding { .. }
        ) && let Some(now) = Generator::device_memory()
        {
            self.peak_device = Some(self.peak_device.map_or(now, |p| p.max(now)));
        }
        match &event {
            Progress::ChunkStarted { .. } => self.last_step = Instant::now(),
            Progress::Step { .. } => {
                let now = Instant::now();
                METRICS
                    .step_seconds
                    .observe((now - self.last_step).as_secs_f64());
                self.last_step = now;
            }
            _ => {}
        }
        match event {
            Progress::ChunkStarted { chunk, chunks, .. } => {
                self.chunks = chunks;
                self.set(chunk, 0.0);
            }
            Progress::Step {
                chunk, step, steps, ..
            } => self.set(chunk, 0.9 * step as f64 / steps.max(1) as f64),
            Progress::Decoding { chunk, done: true } => self.set(chunk, 1.0),
            _ => {}
        }
    }
}

/// Marks the job failed with `code` and a message safe to show.
fn fail(jobs: &Jobs, id: &str, code: &str, message: String) {
    METRICS.finished("failed", code);
    jobs.update(id, true, |r| {
        r.status = Status::Failed;
        r.completed_at = Some(now());
        r.error = Some(JobError {
            code: code.to_string(),
            message,
        });
    });
}

/// Run the stored request of job `id` and record the outcome.
fn run_job(me: &Me, generator: &mut Generator, jobs: &Jobs, streams: &LiveStreams, id: &str) {
    streams.prune(jobs);
    let Some(rec) = jobs.get(id) else { return };
    if rec.cancel.is_cancelled() || rec.status.is_terminal() {
        return;
    }
    let mut req = rec.request.clone();
    if let Some(kind) = rec.input {
        // The reference as uploaded, decoded again here (the admission check decoded it once;
        // after a restart this is the only copy).
        let bytes = match read_input(jobs, id, OutputFile::Input) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("job {id}: reading its input reference: {e}");
                let message = "the job's input reference is no longer in storage";
                return fail(jobs, id, "input_missing", message.into());
            }
        };
        // First-last-frame: the last image stored beside it.
        let last = match rec.last_input {
            false => None,
            true => match read_input(jobs, id, OutputFile::LastInput) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::error!("job {id}: reading its last image: {e}");
                    let message = "the job's end_image is no longer in storage";
                    return fail(jobs, id, "input_missing", message.into());
                }
            },
        };
        let decoded = match &last {
            Some(last) => decode_first_last(&bytes, last, &req),
            None => decode_kind(&bytes, kind, &req),
        };
        match decoded {
            Ok(c) => req.conditioning = c,
            Err(e) => return fail(jobs, id, "invalid_input", e.to_string()),
        }
    }
    // A continuation: the state blob copied to `<id>.input` at admission.
    let state_in = match &rec.continuation.from {
        Some(_) => match read_input(jobs, id, OutputFile::Input)
            .ok()
            .and_then(|b| HeliosState::from_bytes(&b).ok())
        {
            Some(st) => Some(st),
            None => {
                let message = "the job's continuation state is no longer in storage";
                return fail(jobs, id, "input_missing", message.into());
            }
        },
        None => None,
    };
    // The worker shows the job before its record says `in_progress` (a client that sees the
    // status finds the job on a worker in `/v1/models`).
    let _busy = Busy::start(me, id);
    // Persisted before the work starts: if the process dies under this job, the next start
    // knows how often it tried (crash-loop safety, `Jobs::open`).
    jobs.update(id, true, |r| {
        r.status = Status::InProgress;
        r.started_at = Some(now());
        r.progress = 1;
        r.attempts += 1;
    });
    if let Some(admitted) = rec.admitted {
        METRICS
            .job_queue_wait
            .observe(admitted.elapsed().as_secs_f64());
    }
    let started = Instant::now();
    // The video's size: the generated one, times `upscale_factor` with upscaling.
    let (video_width, video_height) = req.video_size();
    let writer = match Mp4Writer::create(
        &jobs.video_path(id),
        video_width,
        video_height,
        req.fps,
        EncodeOptions::default(),
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("job {id}: {e}");
            let message = "could not create the output file";
            return fail(jobs, id, "internal_error", message.into());
        }
    };
    let live = (rec.kind == JobKind::Video).then(|| streams.get_or_create(id));
    let stream = match &live {
        Some(live) => match Fmp4Writer::new(
            LiveWriter(live.clone()),
            video_width,
            video_height,
            req.fps,
            EncodeOptions::default(),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("job {id}: {e}");
                live.end(false);
                return fail(
                    jobs,
                    id,
                    "internal_error",
                    "could not start the stream".into(),
                );
            }
        },
        None => None,
    };
    let mut sink = Mp4Sink {
        writer,
        stream,
        previews: PreviewCollector::new(video_width, video_height, req.video_frames()),
    };
    let mut noise = SeededNoise::new(req.seed);
    let mut progress = JobProgress {
        jobs,
        id,
        chunks: req.num_chunks(),
        mark: Instant::now(),
        durations: Default::default(),
        peak_device: None,
        last_step: Instant::now(),
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut ctx = RunContext {
            noise: &mut noise,
            progress: &mut progress,
            cancel: rec.cancel.clone(),
        };
        generator.generate_continued(
            &req,
            &mut ctx,
            &mut sink,
            state_in.as_ref(),
            rec.continuation.return_state,
        )
    }));
    let end_stream = |ok: bool| {
        if let Some(live) = &live {
            live.end(ok)
        }
    };
    match outcome {
        Ok(Ok((frames, state_out))) => {
            complete(me, jobs, &rec, sink, progress, started, (frames, state_out));
            let ok = jobs.get(id).is_some_and(|r| r.status == Status::Completed);
            end_stream(ok);
            // Later readers stream from disk; the fragments leave memory.
            if let (true, Some(live)) = (ok, &live) {
                if let Err(e) = std::fs::write(jobs.fmp4_path(id), live.contents()) {
                    tracing::error!("job {id}: writing its fragmented MP4: {e}");
                } else if let Err(e) = jobs.outputs().publish_blocking(id, &[OutputFile::Fmp4]) {
                    // Readers fall back to the MP4.
                    tracing::error!("job {id}: publishing its fragmented MP4: {e}");
                }
                streams.remove(id);
            }
        }
        Ok(Err(PipelineError::Cancelled)) => {
            drop(sink);
            jobs.remove_files(id);
            end_stream(false);
            streams.remove(id);
        }
        Ok(Err(e)) => {
            tracing::error!("job {id} failed: {e}");
            fail(jobs, id, "generation_failed", e.to_string());
            end_stream(false);
        }
        Err(_) => {
            tracing::error!("job {id}: the pipeline panicked");
            let message = "the generation stopped on an internal error";
            fail(jobs, id, "internal_error", message.into());
            end_stream(false);
        }
    }
}

/// Finish the MP4 and the previews of a generated job and mark it completed.
fn complete(
    me: &Me,
    jobs: &Jobs,
    rec: &super::jobs::JobRecord,
    sink: Mp4Sink,
    progress: JobProgress<'_>,
    started: Instant,
    (frames, state_out): (usize, Option<HeliosState>),
) {
    let id = rec.id.as_str();
    // The continuation state after the last chunk, stored as `<id>.state` (removed with the job).
    let state_json = match state_out {
        Some(st) => {
            if let Err(e) = std::fs::write(jobs.state_path(id), st.to_bytes()) {
                tracing::error!("job {id}: writing its state: {e}");
                jobs.remove_files(id);
                let message = "could not store the continuation state";
                return fail(jobs, id, "internal_error", message.into());
            }
            Some(serde_json::json!({
                "kind": continuation::KIND,
                "payload": {
                    "schema_version": continuation::SCHEMA_VERSION,
                    "segment_index": st.segment_index,
                    "blob": id,
                    "pipeline": st.pipeline,
                    "width": rec.request.width,
                    "height": rec.request.height,
                    "history_sizes": rec.request.history_sizes,
                },
            }))
        }
        None => None,
    };
    if let Some(Err(e)) = sink.stream.map(Fmp4Writer::finish) {
        tracing::error!("job {id}: finishing the stream: {e}");
    }
    if let Err(e) = sink.writer.finish() {
        tracing::error!("job {id}: finishing the MP4: {e}");
        return fail(
            jobs,
            id,
            "internal_error",
            "could not write the video file; free space in the server's storage folder and retry"
                .into(),
        );
    }
    let png = (rec.kind == JobKind::Image).then(|| jobs.image_path(id));
    if let Err(e) = sink.previews.write(
        &jobs.thumbnail_path(id),
        &jobs.spritesheet_path(id),
        png.as_deref(),
    ) {
        tracing::error!("job {id}: previews: {e}");
        jobs.remove_files(id);
        let message = "could not write the preview images";
        return fail(jobs, id, "internal_error", message.into());
    }
    // Staging → `[outputs]` (an upload for s3://) before anyone can see `completed`.
    let published = [
        OutputFile::Video,
        OutputFile::Thumbnail,
        OutputFile::Spritesheet,
        OutputFile::Image,
        OutputFile::State,
    ];
    let upload = Instant::now();
    if let Err(e) = jobs.outputs().publish_blocking(id, &published) {
        tracing::error!("job {id}: publishing to {}: {e}", jobs.outputs().describe);
        jobs.remove_files(id);
        let message = "could not store the video in the output store";
        return fail(jobs, id, "internal_error", message.into());
    }
    let upload_s = upload.elapsed().as_secs_f64();
    let secs = started.elapsed().as_secs_f64();
    let ms = |s: f64| (s * 1000.0).round() / 1000.0;
    let mut stage_durations: std::collections::BTreeMap<String, f64> = progress
        .durations
        .iter()
        .map(|(k, v)| (k.clone(), ms(*v)))
        .collect();
    if jobs.outputs().local_dir() != Some(jobs.storage.as_path()) {
        stage_durations.insert("publish".into(), ms(upload_s));
    }
    // GPU memory in use when the job ran on CUDA, else the process's peak RSS.
    let peak = match progress.peak_device {
        Some(m) => Some((m.bytes_in_use, "device")),
        None => crate::pipeline::bench::peak_rss_bytes().map(|b| (b, "host")),
    };
    let peak_memory_mb = peak.map(|(b, _)| ms(b as f64 / (1024.0 * 1024.0)));
    let kept = jobs.update(id, true, |r| {
        r.status = Status::Completed;
        r.progress = 100;
        r.completed_at = Some(now());
        r.file_name = Some(format!("{id}.mp4"));
        r.inference_time_s = Some(ms(secs));
        r.stage_durations = stage_durations;
        r.peak_memory_mb = peak_memory_mb;
        r.continuation.state = state_json;
    });
    if kept.is_none() {
        // Deleted while finishing (counted as cancelled by the DELETE).
        jobs.remove_files(id);
        return;
    }
    METRICS.finished("completed", "");
    METRICS.frames_generated.inc_by(frames as u64);
    METRICS
        .video_seconds_generated
        .inc_by(frames as f64 / f64::from(rec.request.fps.max(1)));
    if let Some((bytes, memory)) = peak {
        let labels = MemoryLabels {
            worker: me.label().worker,
            memory,
        };
        let g = METRICS.worker_peak_memory.get_or_create(&labels);
        g.set(g.get().max(bytes as f64));
    }
}

/// `<id>.input` or `<id>.last.input` (`file`): the staging copy, else the copy the API node
/// published to `[outputs]` at admission (it may run on another machine).
///
/// # Errors
/// Neither is readable: the staging error and the object-store one.
fn read_input(jobs: &Jobs, id: &str, file: OutputFile) -> Result<Vec<u8>, String> {
    let staged = match file {
        OutputFile::LastInput => jobs.last_input_path(id),
        _ => jobs.input_path(id),
    };
    match std::fs::read(staged) {
        Ok(b) => Ok(b),
        Err(local) => jobs
            .outputs()
            .read_blocking(id, file)
            .map(|b| b.to_vec())
            .map_err(|e| format!("{local}; from [outputs]: {e}")),
    }
}

//! Prometheus metrics of `omni serve`, answered at `GET /metrics` in the OpenMetrics text format
//! (`prometheus-client`, the Prometheus project's Rust client; Prometheus scrapes it as is).
//!
//! Every name starts with `omni_`; counters end in `_total`, durations are seconds, sizes bytes,
//! as the Prometheus naming conventions ask. The list (also in the README):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `omni_queue_depth` | gauge | | jobs queued and not started (read from the job table at scrape time) |
//! | `omni_jobs_running` | gauge | | jobs a worker is running now |
//! | `omni_jobs_finished_total` | counter | `status` (`completed`, `failed`, `cancelled`), `error_code` (empty unless failed) | jobs that reached an end |
//! | `omni_job_duration_seconds` | histogram | | wall time a worker spent on a job, start to its end (completed, failed or cancelled) |
//! | `omni_job_queue_wait_seconds` | histogram | | admission to worker start, for jobs this process admitted (not those queued again after a restart) |
//! | `omni_denoising_step_seconds` | histogram | | wall time of one transformer denoising step (all stages, all chunks) |
//! | `omni_frames_generated_total` | counter | | frames of completed jobs |
//! | `omni_video_seconds_generated_total` | counter | | seconds of video of completed jobs (frames / fps) |
//! | `omni_worker_ready` | gauge | `worker` (the index `0`, `1`…; the GPU `cuda:<i>` with `--devices`) | 1 once the worker's model is loaded |
//! | `omni_worker_busy` | gauge | `worker` | 1 while the worker runs a job |
//! | `omni_worker_peak_memory_bytes` | gauge | `worker`, `memory` (`device` on CUDA, `host` = peak RSS on CPU) | the largest memory in use seen at the end of a job |
//! | `omni_http_requests_total` | counter | `route` (the route table's path template, or `unmatched`), `method`, `status` | HTTP requests answered |
//! | `omni_http_request_duration_seconds` | histogram | `route` | time to answer (to the response head; streamed bodies not included) |
//!
//! The metrics are process-wide (one registry per process, as a Prometheus client keeps them):
//! one `omni serve` is one scrape target.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `omni_jobs_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishLabels {
    pub status: &'static str,
    pub error_code: String,
}

/// Labels of the per-worker gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

/// Labels of `omni_worker_peak_memory_bytes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemoryLabels {
    pub worker: String,
    pub memory: &'static str,
}

/// Labels of `omni_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

/// Labels of `omni_http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// Every metric of the process (see the module docs for names and meanings).
pub struct Metrics {
    registry: Registry,
    pub queue_depth: Gauge,
    pub jobs_running: Gauge,
    pub jobs_finished: Family<FinishLabels, Counter>,
    pub job_duration: Histogram,
    pub job_queue_wait: Histogram,
    pub step_seconds: Histogram,
    pub frames_generated: Counter,
    pub video_seconds_generated: Counter<f64, AtomicU64>,
    pub worker_ready: Family<WorkerLabels, Gauge>,
    pub worker_busy: Family<WorkerLabels, Gauge>,
    pub worker_peak_memory: Family<MemoryLabels, Gauge<f64, AtomicU64>>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
}

/// Buckets from 10 ms to about 1.5 hours, x2.5 apart (jobs take seconds on the tiny checkpoint
/// and minutes at full size).
fn job_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 2.5, 15)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("omni");
        let m = Self {
            registry: Registry::default(),
            queue_depth: Gauge::default(),
            jobs_running: Gauge::default(),
            jobs_finished: Family::default(),
            job_duration: Histogram::new(job_buckets()),
            job_queue_wait: Histogram::new(job_buckets()),
            // 1 ms .. ~65 s, x2 apart: a tiny-checkpoint step on CPU is milliseconds, a 14B
            // step at 640x384 on a GPU about a second, on a CPU minutes.
            step_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            frames_generated: Counter::default(),
            video_seconds_generated: Counter::default(),
            worker_ready: Family::default(),
            worker_busy: Family::default(),
            worker_peak_memory: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 4.0, 10))
            }),
        };
        registry.register(
            "queue_depth",
            "Jobs queued and not started",
            m.queue_depth.clone(),
        );
        registry.register(
            "jobs_running",
            "Jobs a worker is running",
            m.jobs_running.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached an end, by final status and error code",
            m.jobs_finished.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Wall seconds a worker spent on a job, start to end",
            m.job_duration.clone(),
        );
        registry.register(
            "job_queue_wait_seconds",
            "Seconds from admission to the start of the job",
            m.job_queue_wait.clone(),
        );
        registry.register(
            "denoising_step_seconds",
            "Wall seconds of one transformer denoising step",
            m.step_seconds.clone(),
        );
        registry.register(
            "frames_generated",
            "Frames of completed jobs",
            m.frames_generated.clone(),
        );
        registry.register(
            "video_seconds_generated",
            "Seconds of video of completed jobs",
            m.video_seconds_generated.clone(),
        );
        registry.register(
            "worker_ready",
            "1 once the worker's model is loaded",
            m.worker_ready.clone(),
        );
        registry.register(
            "worker_busy",
            "1 while the worker runs a job",
            m.worker_busy.clone(),
        );
        registry.register(
            "worker_peak_memory_bytes",
            "Largest memory in use seen at the end of a job (device on CUDA, host peak RSS on CPU)",
            m.worker_peak_memory.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Seconds to answer an HTTP request (to the response head)",
            m.http_duration.clone(),
        );
        Self { registry, ..m }
    }

    /// Count a finished job (`error_code` empty unless it failed).
    pub fn finished(&self, status: &'static str, error_code: &str) {
        self.jobs_finished
            .get_or_create(&FinishLabels {
                status,
                error_code: error_code.to_string(),
            })
            .inc();
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The OpenMetrics text of every metric ([`CONTENT_TYPE`]), ending in `# EOF`.
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &METRICS.registry)
        .expect("writing to a String does not fail");
    out
}

/// The `method` label: the request's method when it is a standard one, else `other` (bounded
/// label values whatever clients send).
pub fn method_label(m: &hyper::Method) -> &'static str {
    match *m {
        hyper::Method::GET => "GET",
        hyper::Method::POST => "POST",
        hyper::Method::DELETE => "DELETE",
        hyper::Method::HEAD => "HEAD",
        hyper::Method::PUT => "PUT",
        hyper::Method::PATCH => "PATCH",
        hyper::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        METRICS.finished("failed", "generation_failed");
        METRICS
            .http_requests
            .get_or_create(&HttpLabels {
                route: "/v1/videos",
                method: "POST",
                status: 200,
            })
            .inc();
        METRICS.video_seconds_generated.inc_by(1.5);
        let text = encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains(
                "omni_jobs_finished_total{status=\"failed\",error_code=\"generation_failed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "omni_http_requests_total{route=\"/v1/videos\",method=\"POST\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE omni_job_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT omni_job_duration_seconds seconds")
                || text.contains("omni_job_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("omni_video_seconds_generated_total 1.5"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("omni_"), "{line}");
        }
    }
}

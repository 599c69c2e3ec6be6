//! The one routing function and the handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::body;
use super::config::ServeConfig;
use super::create::{AdmitContext, Admitted, admit};
use super::error::ApiError;
use super::jobs::{Admission, JobKind, JobRecord, Jobs, Status, new_id, now, valid_id};
use super::metrics::{self, HttpLabels, METRICS, RouteLabels};
use super::openapi;
use super::outputs::{FetchError, OutputFile};
use super::reference;
use super::stream::{self as live, LiveStreams};
use super::worker::{Job, Worker};
use crate::pipeline::continuation::{self, HeliosState};
use crate::pipeline::request::{ModelDefaults, RequestPatch};

/// What every handler can see.
pub struct State {
    pub cfg: ServeConfig,
    pub defaults: ModelDefaults,
    /// The request layers below the body: `[default_request]`, then the preset's.
    pub lower_layers: Vec<RequestPatch>,
    pub jobs: Arc<Jobs>,
    pub worker: Worker,
    /// Slots for reference decodes at admission (`max_concurrent_decodes`).
    pub decodes: Arc<tokio::sync::Semaphore>,
    /// The webhook outbox (`None`: `[webhooks]` has no secret).
    pub webhooks: Option<Arc<super::webhooks::Webhooks>>,
    /// The guarded fetcher of reference URLs (`None`: `[remote_media]` is off).
    pub remote: Option<Arc<super::remote::RemoteMedia>>,
    /// The fragmented MP4 of video jobs, for `stream=true` readers.
    pub streams: Arc<LiveStreams>,
    /// Which LoRA adapters requests may use.
    pub lora: super::lora::LoraPolicy,
}

/// Every response body: a whole buffer, or a streamed video (chunked transfer).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
pub(super) type Resp = Response<Body>;

/// A whole-buffer body.
fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Entry point of every request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    // A shared store that is down: every route that needs it is a 503 (and so is a request
    // during which a store query failed: its answer may be a "not found" that is not true).
    let needs_store = !matches!(path.as_str(), "/health" | "/healthz" | "/metrics");
    let failures = state.jobs.store_failures();
    let down =
        || ApiError::Unavailable("the job store (PostgreSQL) is unreachable; retry shortly".into());
    let resp = match route(&state, req).await {
        _ if needs_store && state.jobs.store_failures() != failures => error_response(&down()),
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let template = match_route(path.trim_end_matches('/')).map_or("unmatched", |(r, _)| r.path);
    METRICS
        .http_requests
        .get_or_create(&HttpLabels {
            route: template,
            method: metrics::method_label(&method),
            status: resp.status().as_u16(),
        })
        .inc();
    METRICS
        .http_duration
        .get_or_create(&RouteLabels { route: template })
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        "{method} {path} → {} in {:.1} ms",
        resp.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(resp)
}

/// The error envelope (with `Retry-After` on 429).
pub fn error_response(e: &ApiError) -> Resp {
    match e {
        ApiError::Internal(_) | ApiError::Timeout(_) | ApiError::InsufficientStorage(_) => {
            tracing::warn!("{} {e}", e.status())
        }
        _ => tracing::debug!("{} {e}", e.status()),
    }
    let mut r = json_response(e.status(), &e.body());
    let h = r.headers_mut();
    match e {
        ApiError::QueueFull(_) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        ApiError::MethodNotAllowed { allow, .. } => {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        ApiError::RangeNotSatisfiable(len) => {
            let v = HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii");
            h.insert(header::CONTENT_RANGE, v);
        }
        _ => {}
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never needs a key (probes, the OpenAPI document).
    Public,
    /// Needs `Authorization: Bearer <key>` when `api_keys` is set.
    Key,
}

/// One row of the route table: [`route`] dispatches by it (404, 405 with `Allow`, auth) and
/// `/openapi.json` describes exactly these rows ([`super::openapi::document`]).
#[derive(Debug)]
pub struct Route {
    /// The OpenAPI path template, e.g. `/v1/videos/{video_id}`: a `{…}` segment matches any one
    /// path segment; literal rows are listed before the templates they overlap.
    pub path: &'static str,
    /// The methods it takes, as the `Allow` header lists them.
    pub allow: &'static str,
    pub access: Access,
}

impl Route {
    /// The methods of [`Route::allow`].
    pub fn methods(&self) -> impl Iterator<Item = &'static str> {
        self.allow.split(", ")
    }
}

const fn row(path: &'static str, allow: &'static str, access: Access) -> Route {
    Route {
        path,
        allow,
        access,
    }
}

/// Every route of the server.
pub const ROUTES: &[Route] = &[
    row("/", "GET", Access::Public),
    row("/ui/{file}", "GET", Access::Public),
    row("/health", "GET", Access::Public),
    row("/healthz", "GET", Access::Public),
    row("/readyz", "GET", Access::Public),
    row("/openapi.json", "GET", Access::Public),
    row("/metrics", "GET", Access::Public),
    row("/v1/models", "GET", Access::Key),
    row("/v1/models/{model}", "GET", Access::Key),
    row("/v1/videos", "GET, POST", Access::Key),
    row("/v1/videos/sync", "POST", Access::Key),
    row("/v1/videos/generations", "POST", Access::Key),
    row("/v1/videos/edits", "POST", Access::Key),
    row("/v1/videos/extensions", "POST", Access::Key),
    row("/v1/videos/characters", "POST", Access::Key),
    row("/v1/videos/characters/{character_id}", "GET", Access::Key),
    row("/v1/videos/{video_id}", "GET, DELETE", Access::Key),
    row("/v1/videos/{video_id}/content", "GET", Access::Key),
    row("/v1/videos/{video_id}/remix", "POST", Access::Key),
    row("/video", "POST", Access::Key),
    row("/generated-videos/{file}", "GET", Access::Key),
    row("/v1/images/generations", "POST", Access::Key),
    row("/v1/images/{image_id}/content", "GET", Access::Key),
];

/// The first row of [`ROUTES`] that `path` (no query, no trailing `/`) matches, with the values
/// of its `{…}` segments in order.
pub fn match_route(path: &str) -> Option<(&'static Route, Vec<&str>)> {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    ROUTES.iter().find_map(|r| {
        let pattern: Vec<&str> = r.path.trim_end_matches('/').split('/').skip(1).collect();
        if pattern.len() != segs.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in pattern.iter().zip(&segs) {
            match p.starts_with('{') {
                true => params.push(*s),
                false if p == s => {}
                false => return None,
            }
        }
        Some((r, params))
    })
}

async fn route(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let Some((row, params)) = match_route(&path) else {
        return Err(ApiError::NotFound(format!("No route for {path}")));
    };
    let method = req.method().clone();
    if !row.methods().any(|m| m == method.as_str()) {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            allow: row.allow,
        });
    }
    if !state.cfg.role.serves_api()
        && !matches!(row.path, "/health" | "/healthz" | "/readyz" | "/metrics")
    {
        return Err(ApiError::NotFound(format!(
            "No route for {path}: this process runs --role worker (only /health, /readyz and /metrics)"
        )));
    }
    if row.access == Access::Key {
        authorize(&state.cfg, &req)?;
    }
    if state.jobs.store_down() && !matches!(row.path, "/health" | "/healthz" | "/metrics") {
        return Err(ApiError::Unavailable(
            "the job store (PostgreSQL) is unreachable; retry shortly".into(),
        ));
    }
    let param = params.first().copied().unwrap_or_default();
    match (row.path, method.as_str()) {
        // The web page and its script and style (no data, so no key).
        ("/", _) => super::web::asset(&[]).map(boxed),
        ("/ui/{file}", _) => super::web::asset(&["ui", param]).map(boxed),
        ("/health" | "/healthz", _) => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        ("/readyz", _) => match state.worker.is_ready() {
            true => Ok(json_response(StatusCode::OK, &json!({"status": "ready"}))),
            false => Err(ApiError::Unavailable("the model is still loading".into())),
        },
        ("/metrics", _) => Ok(metrics_response(state)),
        ("/openapi.json", _) => Ok(json_response(
            StatusCode::OK,
            &openapi::document(&openapi::Described::of(state)),
        )),
        ("/v1/models", _) => {
            let data: Vec<Value> = std::iter::once(&state.cfg.served_model_name)
                .chain(&state.cfg.aliases)
                .map(|id| model_card(state, id))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        ("/v1/models/{model}", _) => match state.cfg.serves(param) {
            true => Ok(json_response(StatusCode::OK, &model_card(state, param))),
            false => Err(ApiError::NotFound(format!(
                "The model '{param}' does not exist"
            ))),
        },
        ("/v1/videos", "POST") => create(state, req).await,
        ("/v1/videos", _) => list(state, req.uri().query()),
        ("/v1/videos/sync", _) => sync(state, req).await,
        ("/v1/videos/generations", _) => generations(state, req).await,
        ("/v1/videos/{video_id}", "DELETE") => delete(state, param),
        ("/v1/videos/{video_id}", _) => retrieve(state, param),
        ("/v1/videos/{video_id}/content", _) => content(state, param, &req).await,
        ("/v1/videos/{video_id}/remix", _) => super::remix::remix(state, param, req).await,
        ("/v1/videos/edits", _) => super::remix::edit(state, req).await,
        ("/v1/videos/extensions", _) => super::remix::extend(state, req).await,
        ("/v1/videos/characters" | "/v1/videos/characters/{character_id}", _) => {
            Err(super::remix::characters())
        }
        ("/video", _) => localai_video(state, req).await,
        ("/generated-videos/{file}", _) => {
            let id = param.strip_suffix(".mp4").unwrap_or("");
            let rec = lookup(state, id)?;
            serve_video(state, &rec, &req).await
        }
        ("/v1/images/generations", _) => image_generations(state, req).await,
        ("/v1/images/{image_id}/content", _) => image_content(state, param).await,
        (p, m) => Err(ApiError::Internal(format!("no handler for {m} {p}"))),
    }
}

/// A whole-buffer response as a [`Resp`].
fn boxed(r: Response<Full<Bytes>>) -> Resp {
    r.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// `GET /metrics`: the queue gauges are read from the job table now, the rest is counted as it
/// happens ([`super::metrics`]).
fn metrics_response(state: &State) -> Resp {
    let (queued, running) = state.jobs.counts();
    METRICS.queue_depth.set(queued as i64);
    METRICS.jobs_running.set(running as i64);
    let mut r = Response::new(full(metrics::encode()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}

fn authorize(cfg: &ServeConfig, req: &Request<Incoming>) -> Result<(), ApiError> {
    if cfg.api_keys.is_empty() {
        return Ok(());
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The auth scheme is case-insensitive (RFC 7235 §2.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    match given {
        Some(k) if cfg.api_keys.iter().any(|a| a == k) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

fn model_card(state: &State, id: &str) -> Value {
    super::models::card(state, id)
}

/// The body, at most `max_body_bytes`.
async fn read_body(
    state: &State,
    req: Request<Incoming>,
) -> Result<(Option<String>, Bytes), ApiError> {
    let max = state.cfg.limits.max_body_bytes;
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(ApiError::TooLarge(max));
    }
    let body = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge(max)
            } else {
                ApiError::invalid("body", format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    Ok((ct, body))
}

/// The body as fields, whatever its encoding.
pub(super) async fn read_fields(
    state: &State,
    req: Request<Incoming>,
) -> Result<body::Fields, ApiError> {
    let (ct, bytes) = read_body(state, req).await?;
    let mut fields = body::parse(ct.as_deref(), bytes).await?;
    if let Some(remote) = &state.remote {
        // Reference URLs become data URLs of the fetched files (`[remote_media]`).
        remote.inline(&mut fields).await?;
    }
    Ok(fields)
}

/// Parse, validate and resolve a create body.
async fn admit_body(state: &State, req: Request<Incoming>) -> Result<Admitted, ApiError> {
    admit_fields(state, &read_fields(state, req).await?)
}

/// A generated file as base64 (`b64_json` answers).
async fn file_base64(
    state: &State,
    id: &str,
    file: OutputFile,
    what: &str,
) -> Result<String, ApiError> {
    let bytes = state
        .jobs
        .outputs()
        .read(id, file)
        .await
        .map_err(|_| ApiError::Internal(format!("the generated {what} is missing")))?;
    Ok(base64(&bytes))
}

/// With `[outputs] redirect = true`: a 302 to a presigned URL of the file; `None` otherwise.
async fn redirect_to(state: &State, id: &str, file: OutputFile) -> Option<Result<Resp, ApiError>> {
    let url = state.jobs.outputs().presigned(id, file).await?;
    Some(match url {
        Ok(url) => {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::FOUND;
            match HeaderValue::from_str(&url) {
                Ok(v) => {
                    r.headers_mut().insert(header::LOCATION, v);
                    Ok(r)
                }
                Err(_) => Err(ApiError::Internal(
                    "the presigned URL is not a header value".into(),
                )),
            }
        }
        Err(e) => {
            tracing::error!("presigning {id}{}: {e}", file.suffix());
            Err(ApiError::Internal("could not sign a download URL".into()))
        }
    })
}

pub(super) fn admit_fields(state: &State, fields: &body::Fields) -> Result<Admitted, ApiError> {
    admit_over(state, fields, None)
}

/// [`admit_fields`] with `source` (a remixed job's request) between the body and
/// `[default_request]`; the body's `webhook_url` is checked and resolved here.
pub(super) fn admit_over(
    state: &State,
    fields: &body::Fields,
    source: Option<RequestPatch>,
) -> Result<Admitted, ApiError> {
    let cfg = &state.cfg;
    let webhook_url = super::webhooks::Webhooks::target(
        state.webhooks.as_deref(),
        fields.map.get("webhook_url"),
    )?;
    let lower: Vec<RequestPatch> = source
        .into_iter()
        .chain(state.lower_layers.iter().cloned())
        .collect();
    let mut a = admit(
        fields,
        &AdmitContext {
            served: &cfg.served_model_name,
            serves: &|n| cfg.serves(n),
            lower_layers: &lower,
            defaults: &state.defaults,
            budget: &cfg.limits.budget,
            max_upload_bytes: cfg.limits.max_upload_bytes,
            lora: &state.lora,
            postprocess: &cfg.postprocess,
        },
    )?;
    a.webhook_url = webhook_url;
    Ok(a)
}

/// An admitted job not queued yet: its record and, with a reference, the `<id>.input` file (and
/// a first-last-frame job's `<id>.last.input`) that is removed again unless the job gets queued
/// ([`enqueue`]), so a refused, failed or abandoned admission (the client went away) leaves no
/// file behind.
pub(super) struct NewJob<'a> {
    pub(super) rec: JobRecord,
    input: Option<InputFile<'a>>,
}

/// The stored reference(s) of a job that is not queued yet.
struct InputFile<'a> {
    jobs: &'a Jobs,
    id: String,
    queued: bool,
}

impl Drop for InputFile<'_> {
    fn drop(&mut self) {
        if !self.queued {
            let _ = std::fs::remove_file(self.jobs.input_path(&self.id));
            let _ = std::fs::remove_file(self.jobs.last_input_path(&self.id));
            // And its published copies ([`publish_input`]), if any.
            self.jobs.outputs().remove(&self.id);
        }
    }
}

/// Publish `file` (`<id>.input`, `<id>.last.input`) to `[outputs]` at admission, so that a
/// worker on another machine (`--role worker` on a PostgreSQL store, outputs on S3) can read
/// it; the default storage folder keeps it where it is.
///
/// # Errors
/// 503 when the object store does not take it.
async fn publish_input(state: &State, id: &str, file: OutputFile) -> Result<(), ApiError> {
    match state.jobs.outputs().publish(id, file).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!("publishing the input of {id}: {e}");
            Err(ApiError::Unavailable(
                "could not store the reference in the object store; try again".into(),
            ))
        }
    }
}

/// The record of an admitted request. A reference (and a first-last-frame request's last
/// image) is checked by its header (at most `max_reference_pixels` per image or frame), then
/// decoded on a blocking thread, at most `max_concurrent_decodes` requests at once (one slot
/// decodes both images; a bad file, or one of a kind the checkpoint does not take, is a 400 and
/// no job); then the original bytes are written to `<id>.input` (and `<id>.last.input`) for the
/// worker, which decodes them again when it runs the job (also after a restart). A client that
/// goes away while waiting for a decode slot starts no decode; one that goes away during a
/// decode gets nothing written.
pub(super) async fn new_job(
    state: &State,
    mut a: Admitted,
    hidden: bool,
    kind: JobKind,
) -> Result<NewJob<'_>, ApiError> {
    let reference = a.reference.take();
    let last = a.last_reference.take();
    let mut rec = new_record(state, a, hidden, kind);
    let Some(r) = reference else {
        if let Some(l) = last {
            // Admission refuses a last image without a first one; kept as a guard.
            return Err(ApiError::invalid(
                &l.param,
                "a last image needs a first image (`input_reference`)",
            ));
        }
        return Ok(NewJob { rec, input: None });
    };
    let max_pixels = state.cfg.limits.max_reference_pixels;
    reference::check_pixels(&r, max_pixels)?;
    if let Some(l) = &last {
        reference::check_pixels(l, max_pixels)?;
    }
    let permit = state
        .decodes
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
    let req = rec.request.clone();
    let (kind, r, last) = tokio::task::spawn_blocking(move || {
        // The slot is held until the decode ends, even when the request is gone.
        let _permit = permit;
        let (kind, _pixels) = reference::decode(&r.bytes, r.hint, &req, &r.param)?;
        if let Some(l) = &last {
            // As an image only (its hint says so).
            reference::decode(&l.bytes, l.hint, &req, &l.param)?;
        }
        Ok::<_, ApiError>((kind, r, last))
    })
    .await
    .map_err(|_| ApiError::Internal("decoding the reference stopped".into()))??;
    super::create::check_kind_fits(&state.defaults, kind, &r.param)?;
    let input = InputFile {
        jobs: &state.jobs,
        id: rec.id.clone(),
        queued: false,
    };
    let write = |path: std::path::PathBuf, bytes: Vec<u8>| async move {
        tokio::fs::write(&path, &bytes).await.map_err(|e| {
            tracing::error!("writing {}: {e}", path.display());
            ApiError::InsufficientStorage("could not store the reference file".into())
        })
    };
    write(state.jobs.input_path(&rec.id), r.bytes).await?;
    publish_input(state, &rec.id, OutputFile::Input).await?;
    if let Some(l) = last {
        write(state.jobs.last_input_path(&rec.id), l.bytes).await?;
        publish_input(state, &rec.id, OutputFile::LastInput).await?;
        rec.last_input = true;
    }
    rec.input = Some(kind);
    Ok(NewJob {
        rec,
        input: Some(input),
    })
}

fn new_record(state: &State, a: Admitted, hidden: bool, kind: JobKind) -> JobRecord {
    JobRecord {
        id: new_id(kind),
        seq: state.jobs.next_seq(),
        model: a.model,
        status: Status::Queued,
        progress: 0,
        created_at: now(),
        started_at: None,
        completed_at: None,
        seconds: a.seconds,
        error: None,
        file_name: None,
        inference_time_s: None,
        stage_durations: Default::default(),
        peak_memory_mb: None,
        kind,
        input: None,
        last_input: false,
        attempts: 0,
        request: a.request,
        remixed_from_video_id: None,
        webhook_url: a.webhook_url,
        continuation: Default::default(),
        hidden,
        cancel: Default::default(),
        admitted: Some(std::time::Instant::now()),
    }
}

/// Insert and queue; on a full queue the record (and its input file) is removed again.
pub(super) fn enqueue(
    state: &State,
    job: NewJob<'_>,
    done: Option<oneshot::Sender<()>>,
) -> Result<String, ApiError> {
    let NewJob { rec, input } = job;
    let id = rec.id.clone();
    let max = state.cfg.limits.max_queued_jobs;
    match state.jobs.insert_queued(rec, max) {
        Ok(()) => {}
        Err(Admission::Full) => return Err(ApiError::QueueFull(max)),
        Err(Admission::Storage(_)) => {
            state.jobs.remove_files(&id);
            return Err(ApiError::InsufficientStorage(
                "the server could not store the job; free space in its storage folder".into(),
            ));
        }
    }
    if let Some(mut input) = input {
        // The record owns the file now: removing the job removes it.
        input.queued = true;
    }
    if !state.worker.submit(Job {
        id: id.clone(),
        done,
    }) {
        state.jobs.remove(&id);
        return Err(ApiError::Unavailable(
            "the generation worker stopped".into(),
        ));
    }
    Ok(id)
}

pub(super) fn video_response(state: &State, rec: &JobRecord) -> Resp {
    let mut r = json_response(StatusCode::OK, &rec.video(state.cfg.file_ttl_s));
    if !rec.status.is_terminal() {
        r.headers_mut().insert(
            "openai-poll-after-ms",
            HeaderValue::from(state.cfg.limits.poll_after_ms),
        );
    }
    r
}

async fn create(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let mut fields = read_fields(state, req).await?;
    let ask = take_continuation(state, &mut fields)?;
    let admitted = admit_fields(state, &fields)?;
    let mut job = new_job(state, admitted, false, JobKind::Video).await?;
    attach_continuation(state, &mut job, ask).await?;
    // Answer the job as admitted (`queued`): the worker may already have picked it up (or even
    // finished it) by the time the response is written, and a create answers the creation.
    let created = job.rec.clone();
    enqueue(state, job, None)?;
    Ok(video_response(state, &created))
}

/// `POST /v1/videos/generations`: create, wait until the job is terminal, answer the `Video`
/// (`?wait=false`: answer at once, like `POST /v1/videos`).
async fn generations(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let wait = !req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "wait=false"));
    let admitted = admit_body(state, req).await?;
    let job = new_job(state, admitted, false, JobKind::Video).await?;
    let (tx, rx) = oneshot::channel();
    let id = enqueue(state, job, Some(tx))?;
    if wait {
        // Ends when the job is terminal or deleted (the worker drops or fires `tx`).
        let _ = rx.await;
    }
    let rec = lookup(state, &id)?;
    Ok(video_response(state, &rec))
}

pub(super) fn lookup(state: &State, id: &str) -> Result<JobRecord, ApiError> {
    lookup_kind(state, id, JobKind::Video)
}

/// A visible job of `kind` (ids are checked before anything else).
fn lookup_kind(state: &State, id: &str, kind: JobKind) -> Result<JobRecord, ApiError> {
    let not_found = || {
        ApiError::NotFound(match kind {
            JobKind::Video => format!("Video '{id}' not found"),
            JobKind::Image => format!("Image '{id}' not found"),
        })
    };
    if !valid_id(id) {
        return Err(not_found());
    }
    state
        .jobs
        .get(id)
        .filter(|r| !r.hidden && r.kind == kind)
        .ok_or_else(not_found)
}

fn retrieve(state: &State, id: &str) -> Result<Resp, ApiError> {
    let rec = lookup(state, id)?;
    Ok(video_response(state, &rec))
}

fn delete(state: &State, id: &str) -> Result<Resp, ApiError> {
    lookup(state, id)?;
    if let Some(rec) = state.jobs.remove(id)
        && !rec.status.is_terminal()
    {
        METRICS.finished("cancelled", "");
        if let Some(hooks) = &state.webhooks {
            hooks.emit(&rec, "video.cancelled");
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": id, "deleted": true, "object": "video.deleted"}),
    ))
}

fn list(state: &State, query: Option<&str>) -> Result<Resp, ApiError> {
    let q: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::invalid("query", e.to_string()))?;
    let get = |k: &str| {
        q.iter()
            .rev()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit") {
        None => None,
        Some(s) => Some(
            s.parse::<usize>()
                .ok()
                .filter(|l| *l <= 100)
                .ok_or_else(|| ApiError::invalid("limit", format!("'{s}' is not in 0..=100")))?,
        ),
    };
    let desc = match get("order") {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => {
            return Err(ApiError::invalid(
                "order",
                format!("'{o}' is not 'asc' or 'desc'"),
            ));
        }
    };
    let mut all = state.jobs.list();
    all.retain(|r| r.kind == JobKind::Video);
    if desc {
        all.reverse();
    }
    let rest: &[JobRecord] = match get("after") {
        None => &all,
        Some(after) => match all.iter().position(|r| r.id == after) {
            Some(i) => &all[i + 1..],
            None => &[],
        },
    };
    let take = limit.unwrap_or(rest.len()).min(rest.len());
    let page = &rest[..take];
    let data: Vec<Value> = page.iter().map(|r| r.video(state.cfg.file_ttl_s)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "first_id": page.first().map(|r| &r.id),
            "last_id": page.last().map(|r| &r.id),
            "has_more": rest.len() > take,
        }),
    ))
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive range; `Err` = unsatisfiable.
fn parse_range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: answer with the whole file
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let start: u64 = a.parse().ok()?;
            let end = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                b.parse::<u64>().ok()?.min(len.saturating_sub(1))
            };
            if start >= len || start > end {
                return Some(Err(()));
            }
            (start, end)
        }
        (true, true) => return None,
    };
    Some(Ok(r))
}

/// Which file `GET /v1/videos/{id}/content` answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Video,
    Thumbnail,
    Spritesheet,
}

async fn content(state: &State, id: &str, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    let q: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    let variant = match q
        .iter()
        .rev()
        .find(|(k, _)| k == "variant")
        .map(|(_, v)| v.as_str())
    {
        None | Some("") | Some("video") => Variant::Video,
        Some("thumbnail") => Variant::Thumbnail,
        Some("spritesheet") => Variant::Spritesheet,
        Some(v) => {
            return Err(ApiError::invalid(
                "variant",
                format!("unknown variant '{v}'; use 'video', 'thumbnail' or 'spritesheet'"),
            ));
        }
    };
    let stream = stream_flag(
        q.iter()
            .rev()
            .find(|(k, _)| k == "stream")
            .map(|(_, v)| Value::String(v.clone()))
            .as_ref(),
    )?;
    if stream && variant != Variant::Video {
        return Err(ApiError::invalid(
            "stream",
            "stream=true is only for variant=video".to_string(),
        ));
    }
    let rec = lookup(state, id)?;
    let (file, ct) = match variant {
        Variant::Video if stream => return stream_video(state, &rec, req).await,
        Variant::Video => return serve_video(state, &rec, req).await,
        Variant::Thumbnail => (OutputFile::Thumbnail, "image/webp"),
        Variant::Spritesheet => (OutputFile::Spritesheet, "image/jpeg"),
    };
    ready(&rec)?;
    if let Some(r) = redirect_to(state, id, file).await {
        return r;
    }
    let bytes = state
        .jobs
        .outputs()
        .read(id, file)
        .await
        .map_err(|_| ApiError::NotFound(format!("No {variant:?} image for '{id}'")))?;
    Ok(bytes_response(bytes.into(), ct))
}

/// `stream`: `true`/`false` (JSON boolean, or the strings of a form or query); absent = false.
fn stream_flag(v: Option<&Value>) -> Result<bool, ApiError> {
    bool_field("stream", v)
}

/// A boolean field named `param`: JSON boolean, or `true`/`false`/`1`/`0`; absent = false.
fn bool_field(param: &str, v: Option<&Value>) -> Result<bool, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "1" => Ok(true),
        Some(Value::String(s)) if s == "false" || s == "0" || s.is_empty() => Ok(false),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("{v} is not true or false"),
        )),
    }
}

/// What a create body asks of continuation (FastVideo's `ContinuationState` contract):
/// `output.return_state` / `return_state`, and the `state` to continue (its blob, read).
struct ContinuationAsk {
    return_state: bool,
    from: Option<(String, Vec<u8>, HeliosState)>,
}

/// Takes `return_state`, `output` and `state` out of the fields (before admission, which ignores
/// unknown fields): 400 naming `state` for an unknown or expired state, "incompatible" for one
/// of another kind, schema or checkpoint.
fn take_continuation(
    state: &State,
    fields: &mut body::Fields,
) -> Result<ContinuationAsk, ApiError> {
    // Objects may come as their JSON text (forms).
    let object = |v: Value, param: &str| match v {
        Value::String(s) => serde_json::from_str::<Value>(&s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| ApiError::invalid(param, "must be a JSON object".to_string())),
        v if v.is_object() => Ok(v),
        _ => Err(ApiError::invalid(
            param,
            "must be a JSON object".to_string(),
        )),
    };
    let mut return_state = bool_field("return_state", fields.map.remove("return_state").as_ref())?;
    if let Some(out) = fields.map.remove("output").filter(|v| !v.is_null()) {
        let out = object(out, "output")?;
        for (k, v) in out.as_object().expect("checked") {
            match k.as_str() {
                "return_state" => return_state |= bool_field("output.return_state", Some(v))?,
                other => {
                    return Err(ApiError::invalid(
                        &format!("output.{other}"),
                        "not supported (only output.return_state)".to_string(),
                    ));
                }
            }
        }
    }
    if return_state && !state.defaults.pipeline_class.starts_with("Helios") {
        return Err(ApiError::invalid(
            "return_state",
            format!(
                "continuation state is a Helios feature; this checkpoint ({}) makes the whole video at once",
                state.defaults.pipeline_class
            ),
        ));
    }
    let from = match fields.map.remove("state").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(read_state(state, &object(v, "state")?)?),
    };
    Ok(ContinuationAsk { return_state, from })
}

/// The stored blob a `state` object names, checked against this server's checkpoint.
fn read_state(state: &State, v: &Value) -> Result<(String, Vec<u8>, HeliosState), ApiError> {
    let incompatible =
        |why: String| ApiError::invalid("state", format!("incompatible state: {why}"));
    if v["kind"] != continuation::KIND {
        return Err(incompatible(format!(
            "kind is {}, this server continues {}",
            v["kind"],
            continuation::KIND
        )));
    }
    let payload = &v["payload"];
    if payload["schema_version"] != continuation::SCHEMA_VERSION {
        return Err(incompatible(format!(
            "schema_version {} (this server reads {})",
            payload["schema_version"],
            continuation::SCHEMA_VERSION
        )));
    }
    let unknown = || {
        ApiError::invalid(
            "state",
            "unknown or expired state: its video is gone (states live as long as the video)"
                .to_string(),
        )
    };
    let blob = payload["blob"].as_str().ok_or_else(unknown)?;
    if !valid_id(blob)
        || state
            .jobs
            .get(blob)
            .is_none_or(|r| r.continuation.state.is_none())
    {
        return Err(unknown());
    }
    let bytes: Vec<u8> = state
        .jobs
        .outputs()
        .read_blocking(blob, OutputFile::State)
        .map_err(|_| unknown())?
        .into();
    let st = HeliosState::from_bytes(&bytes).map_err(|e| incompatible(e.to_string()))?;
    let class = crate::pipeline::generator::pipeline_entry(&state.cfg.model)
        .map(|e| e.class_name)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if st.pipeline != class {
        return Err(incompatible(format!(
            "made by {}, this server runs {class}",
            st.pipeline
        )));
    }
    Ok((blob.to_string(), bytes, st))
}

/// Attaches the continuation to an admitted job: the state's shape must fit the resolved
/// request, its blob is copied to `<id>.input` (the job keeps it even if the first video
/// expires).
async fn attach_continuation<'a>(
    state: &'a State,
    job: &mut NewJob<'a>,
    ask: ContinuationAsk,
) -> Result<(), ApiError> {
    job.rec.continuation.return_state = ask.return_state;
    let Some((blob, bytes, st)) = ask.from else {
        return Ok(());
    };
    let req = &job.rec.request;
    let n: usize = req.history_sizes.iter().sum();
    let [_, _, hn, hh, hw] = st.history.1;
    if job.input.is_some() {
        return Err(ApiError::invalid(
            "state",
            "a continuation cannot also take an image or video reference".to_string(),
        ));
    }
    if (hn, hh * 8, hw * 8) != (n, req.height as usize, req.width as usize) {
        return Err(ApiError::invalid(
            "state",
            format!(
                "incompatible state: made at {}x{} with {hn} history frames, this request is {}x{} with {n}",
                hw * 8,
                hh * 8,
                req.width,
                req.height
            ),
        ));
    }
    let path = state.jobs.input_path(&job.rec.id);
    tokio::fs::write(&path, &bytes).await.map_err(|e| {
        tracing::error!("writing {}: {e}", path.display());
        ApiError::InsufficientStorage("could not store the continuation state".into())
    })?;
    publish_input(state, &job.rec.id, OutputFile::Input).await?;
    job.input = Some(InputFile {
        jobs: &state.jobs,
        id: job.rec.id.clone(),
        queued: false,
    });
    job.rec.continuation.from = Some(blob);
    Ok(())
}

/// Headers of a streamed fragmented MP4 (no `Content-Length`: chunked transfer).
fn streamed_response(body: live::StreamedBody, id: &str) -> Resp {
    let mut r = Response::new(body.boxed_unsync());
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("inline; filename=\"{id}.mp4\"")).expect("ascii id"),
    );
    r
}

/// `content?stream=true`: the job's fragmented MP4, fragment by fragment as chunks finish
/// (see [`super::stream`]); a completed job without a live stream gets its fast-start MP4.
async fn stream_video(
    state: &State,
    rec: &JobRecord,
    req: &Request<Incoming>,
) -> Result<Resp, ApiError> {
    let id = rec.id.as_str();
    if rec.status == Status::Failed {
        return Err(ApiError::JobFailed);
    }
    state.streams.prune(&state.jobs);
    let completed = |id: &str| {
        state
            .jobs
            .get(id)
            .is_some_and(|r| r.status == Status::Completed)
    };
    let stream = match state.streams.get(id) {
        Some(s) => s,
        None if rec.status == Status::Completed => return finished_stream(state, rec, req).await,
        None if state.jobs.shared().is_some() => {
            // The fragments are in the memory of whichever worker process runs the job.
            return Err(ApiError::invalid(
                "stream",
                "with a PostgreSQL job store, stream=true is answered once the job is completed (its fragments stay in the worker process while it runs); poll the job, then ask again",
            ));
        }
        None => {
            // Queued or running: wait for the worker's fragments. The worker drops a finished
            // job's stream after writing `<id>.fmp4`; a stream made here after that (the job
            // completed since `rec` was read) stays empty, so read the file instead.
            let s = state.streams.get_or_create(id);
            if completed(id) && s.ended().is_none() && s.is_empty() {
                state.streams.remove(id);
                return finished_stream(state, rec, req).await;
            }
            s
        }
    };
    let body = live::body(stream, state.jobs.clone(), id, None);
    Ok(streamed_response(body, id))
}

/// A finished job's `<id>.fmp4` as a streamed body (its fast-start MP4 when there is none).
async fn finished_stream(
    state: &State,
    rec: &JobRecord,
    req: &Request<Incoming>,
) -> Result<Resp, ApiError> {
    let id = rec.id.as_str();
    match state.jobs.outputs().read(id, OutputFile::Fmp4).await {
        Ok(bytes) => {
            let stream = live::LiveStream::completed(bytes.into());
            let body = live::body(stream, state.jobs.clone(), id, None);
            Ok(streamed_response(body, id))
        }
        Err(_) => serve_video(state, rec, req).await,
    }
}

/// 404 while the job runs, 422 once it failed.
fn ready(rec: &JobRecord) -> Result<(), ApiError> {
    match rec.status {
        Status::Failed => Err(ApiError::JobFailed),
        Status::Completed => Ok(()),
        _ => Err(ApiError::NotFound("Generation is still in progress".into())),
    }
}

fn bytes_response(bytes: Vec<u8>, content_type: &'static str) -> Resp {
    let mut r = Response::new(full(bytes));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The MP4 of a finished job, with Range support.
async fn serve_video(
    state: &State,
    rec: &JobRecord,
    req: &Request<Incoming>,
) -> Result<Resp, ApiError> {
    let id = rec.id.as_str();
    ready(rec)?;
    if let Some(r) = redirect_to(state, id, OutputFile::Video).await {
        return r;
    }
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let fetched = state
        .jobs
        .outputs()
        .fetch(id, OutputFile::Video, |len| {
            range.and_then(|h| parse_range(h, len))
        })
        .await
        .map_err(|e| match e {
            FetchError::NotFound => {
                ApiError::NotFound("Generated video file not found on disk".into())
            }
            FetchError::Unsatisfiable(len) => ApiError::RangeNotSatisfiable(len),
            FetchError::Backend(e) => {
                tracing::error!(
                    "reading {id}.mp4 from {}: {e}",
                    state.jobs.outputs().describe
                );
                ApiError::Unavailable("the output store did not answer; retry".into())
            }
        })?;
    let len = fetched.len;
    let (status, body, content_range) = match fetched.range {
        None => (StatusCode::OK, fetched.bytes, None),
        Some((a, b)) => (
            StatusCode::PARTIAL_CONTENT,
            fetched.bytes,
            Some(format!("bytes {a}-{b}/{len}")),
        ),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{id}.mp4\"")).expect("ascii id"),
    );
    if let Some(cr) = content_range {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).expect("ascii"),
        );
    }
    Ok(r)
}

/// `http://<Host>` of the request, for the `url`s LocalAI and image clients download from.
fn base_url(req: &Request<Incoming>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// `response_format`: `url` (default) or `b64_json`.
fn b64_requested(fields: &body::Fields) -> Result<bool, ApiError> {
    match fields.map.get("response_format") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(f)) if f == "url" || f.is_empty() => Ok(false),
        Some(Value::String(f)) if f == "b64_json" => Ok(true),
        Some(v) => Err(ApiError::invalid(
            "response_format",
            format!("{v} is not 'url' or 'b64_json'"),
        )),
    }
}

/// Queue a visible job and wait until it is terminal; the finished record, or a 500 naming the
/// generation error.
async fn run_blocking(state: &State, job: NewJob<'_>) -> Result<JobRecord, ApiError> {
    let (tx, rx) = oneshot::channel();
    let kind = job.rec.kind;
    let id = enqueue(state, job, Some(tx))?;
    let _ = rx.await;
    let rec = lookup_kind(state, &id, kind)
        .map_err(|_| ApiError::Internal("the job was deleted before it finished".into()))?;
    match rec.status {
        Status::Completed => Ok(rec),
        _ => Err(ApiError::Internal(format!(
            "Generation failed: {}",
            rec.error
                .map(|e| e.message)
                .unwrap_or_else(|| "the job did not complete".into())
        ))),
    }
}

/// LocalAI `POST /video`: JSON, blocks, answers `{"created","id","data":[{"index":0,"url"}]}`
/// (or `b64_json`). The job is an ordinary video job: listed, downloadable, deletable.
async fn localai_video(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let base = base_url(&req);
    let fields = read_fields(state, req).await?;
    let b64 = b64_requested(&fields)?;
    let admitted = admit_fields(state, &fields)?;
    let job = new_job(state, admitted, false, JobKind::Video).await?;
    let rec = run_blocking(state, job).await?;
    let item = if b64 {
        let b64 = file_base64(state, &rec.id, OutputFile::Video, "file").await?;
        json!({"index": 0, "b64_json": b64})
    } else {
        json!({"index": 0, "url": format!("{base}/generated-videos/{}.mp4", rec.id)})
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"created": rec.created_at, "id": rec.id, "data": [item]}),
    ))
}

/// `POST /v1/images/generations`: a one-frame generation (the first frame of one chunk) as PNG.
async fn image_generations(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let base = base_url(&req);
    let mut fields = read_fields(state, req).await?;
    no_webhook(&fields, "/v1/images/generations")?;
    if let Some(n) = fields.map.get("n").filter(|v| !v.is_null())
        && n.as_u64() != Some(1)
        && n.as_str() != Some("1")
    {
        return Err(ApiError::invalid(
            "n",
            format!("{n} images: only n=1 is supported"),
        ));
    }
    let b64 = b64_requested(&fields)?;
    for k in ["seconds", "num_frames", "video_params"] {
        fields.map.remove(k);
    }
    fields.map.insert("num_frames".into(), json!(1));
    let admitted = admit_fields(state, &fields)?;
    if let Some(r) = &admitted.reference {
        return Err(ApiError::invalid(
            &r.param,
            format!(
                "`{}` is not supported by /v1/images/generations; use /v1/videos",
                r.param
            ),
        ));
    }
    let prompt = admitted.request.prompt.clone();
    let job = new_job(state, admitted, false, JobKind::Image).await?;
    let rec = run_blocking(state, job).await?;
    let item = if b64 {
        let b64 = file_base64(state, &rec.id, OutputFile::Image, "image").await?;
        json!({"b64_json": b64, "revised_prompt": prompt})
    } else {
        json!({"url": format!("{base}/v1/images/{}/content", rec.id), "revised_prompt": prompt})
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": rec.id, "created": rec.created_at, "data": [item]}),
    ))
}

async fn image_content(state: &State, id: &str) -> Result<Resp, ApiError> {
    let rec = lookup_kind(state, id, JobKind::Image)?;
    ready(&rec)?;
    let bytes = state
        .jobs
        .outputs()
        .read(id, OutputFile::Image)
        .await
        .map_err(|_| ApiError::NotFound(format!("No image file for '{id}'")))?;
    Ok(bytes_response(bytes.into(), "image/png"))
}

/// Standard base64 with padding (RFC 4648), as OpenAI's `b64_json`.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `webhook_url` on an endpoint whose job sends no events (it answers the result itself and
/// is not a listed video job): 400 naming it.
fn no_webhook(fields: &body::Fields, endpoint: &str) -> Result<(), ApiError> {
    match fields.map.get("webhook_url") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "webhook_url",
            format!(
                "`webhook_url`: {endpoint} answers with the result itself and sends no events; \
                 use POST /v1/videos"
            ),
        )),
    }
}

/// Removes a sync job (cancelling it) when the request ends early.
struct SyncGuard<'a> {
    jobs: &'a Jobs,
    id: String,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        self.jobs.remove(&self.id);
    }
}

/// [`SyncGuard`] owned by a streamed response body: removes the job (cancelling it) and its
/// stream when the body ends or the client goes away.
struct OwnedSyncGuard {
    jobs: Arc<Jobs>,
    streams: Arc<LiveStreams>,
    id: String,
}

impl Drop for OwnedSyncGuard {
    fn drop(&mut self) {
        self.jobs.remove(&self.id);
        self.streams.remove(&self.id);
    }
}

async fn sync(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    let query_stream = query
        .iter()
        .rev()
        .find(|(k, _)| k == "stream")
        .map(|(_, v)| Value::String(v.clone()));
    let mut fields = read_fields(state, req).await?;
    let field_stream = fields.map.remove("stream");
    let stream = stream_flag(field_stream.as_ref().or(query_stream.as_ref()))?;
    no_webhook(&fields, "/v1/videos/sync")?;
    let ask = take_continuation(state, &mut fields)?;
    if ask.return_state {
        return Err(ApiError::invalid(
            "return_state",
            "/v1/videos/sync keeps no job to hold a state; use POST /v1/videos".to_string(),
        ));
    }
    let admitted = admit_fields(state, &fields)?;
    let started = Instant::now();
    let mut job = new_job(state, admitted, true, JobKind::Video).await?;
    attach_continuation(state, &mut job, ask).await?;
    let model = job.rec.model.clone();
    if stream {
        // Fragments go out as chunks finish; the job lives as long as the response body.
        let id = enqueue(state, job, None)?;
        let guard = OwnedSyncGuard {
            jobs: state.jobs.clone(),
            streams: state.streams.clone(),
            id: id.clone(),
        };
        let stream = state.streams.get_or_create(&id);
        let body = live::body(stream, state.jobs.clone(), &id, Some(Box::new(guard)));
        let mut r = streamed_response(body, &id);
        let hv = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("?"));
        r.headers_mut().insert(
            "x-request-id",
            hv(format!("video_sync-{}", &id["video_".len()..])),
        );
        r.headers_mut().insert("x-model", hv(model));
        return Ok(r);
    }
    let (tx, rx) = oneshot::channel();
    let id = enqueue(state, job, Some(tx))?;
    let _guard = SyncGuard {
        jobs: &state.jobs,
        id: id.clone(),
    };
    let timeout = state.cfg.limits.sync_timeout_s;
    if tokio::time::timeout(Duration::from_secs(timeout), rx)
        .await
        .is_err()
    {
        return Err(ApiError::Timeout(timeout));
    }
    let rec = state
        .jobs
        .get(&id)
        .ok_or_else(|| ApiError::Internal("the job was removed before it finished".into()))?;
    match rec.status {
        Status::Completed => {}
        _ => {
            let msg = rec
                .error
                .map(|e| e.message)
                .unwrap_or_else(|| "the generation did not complete".into());
            return Err(ApiError::Internal(format!(
                "Video generation failed: {msg}"
            )));
        }
    }
    let bytes = state
        .jobs
        .outputs()
        .read(&id, OutputFile::Video)
        .await
        .map_err(|_| ApiError::Internal("the generated file is missing".into()))?;
    let mut r = Response::new(full(bytes));
    let h = r.headers_mut();
    let hv = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("?"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(
        "x-request-id",
        hv(format!("video_sync-{}", &id["video_".len()..])),
    );
    h.insert("x-model", hv(model));
    h.insert(
        "x-inference-time-s",
        hv(format!(
            "{:.3}",
            rec.inference_time_s
                .unwrap_or_else(|| started.elapsed().as_secs_f64())
        )),
    );
    h.insert(
        "x-stage-durations",
        hv(serde_json::to_string(&rec.stage_durations).unwrap_or_else(|_| "{}".into())),
    );
    h.insert(
        "x-peak-memory-mb",
        hv(format!("{:.3}", rec.peak_memory_mb.unwrap_or(0.0))),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        hv(format!("attachment; filename=\"{id}.mp4\"")),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::{base64, parse_range};

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("items=1-2", 100), None);
    }
}

//! The one routing function and the handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::body;
use super::config::ServeConfig;
use super::create::{Admitted, admit};
use super::error::ApiError;
use super::jobs::{JobRecord, Jobs, Status, new_id, now, patch_of, valid_id};
use super::worker::{Job, Worker};
use crate::pipeline::request::ModelDefaults;

/// What every handler can see.
pub struct State {
    pub cfg: ServeConfig,
    pub defaults: ModelDefaults,
    pub jobs: Arc<Jobs>,
    pub worker: Worker,
}

type Resp = Response<Full<Bytes>>;

/// Entry point of every request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let resp = match route(&state, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
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
        ApiError::Internal(_) | ApiError::Timeout(_) => tracing::warn!("{} {e}", e.status()),
        _ => tracing::debug!("{} {e}", e.status()),
    }
    let mut r = json_response(e.status(), &e.body());
    if let ApiError::QueueFull(_) = e {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    let only = |m: Method| -> Result<(), ApiError> {
        if method == m {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed(method.to_string()))
        }
    };
    match segs.as_slice() {
        ["health"] | ["healthz"] => {
            only(Method::GET)?;
            return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
        }
        ["readyz"] => {
            only(Method::GET)?;
            return match state.worker.is_ready() {
                true => Ok(json_response(StatusCode::OK, &json!({"status": "ready"}))),
                false => Err(ApiError::Unavailable("the model is still loading".into())),
            };
        }
        ["v1", ..] => authorize(&state.cfg, &req)?,
        _ => return Err(ApiError::NotFound(format!("No route for {path}"))),
    }
    match segs.as_slice() {
        ["v1", "models"] => {
            only(Method::GET)?;
            let data: Vec<Value> = std::iter::once(&state.cfg.served_model_name)
                .chain(&state.cfg.aliases)
                .map(|id| model_card(state, id))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        ["v1", "models", id] => {
            only(Method::GET)?;
            match state.cfg.serves(id) {
                true => Ok(json_response(StatusCode::OK, &model_card(state, id))),
                false => Err(ApiError::NotFound(format!(
                    "The model '{id}' does not exist"
                ))),
            }
        }
        ["v1", "videos"] if method == Method::POST => create(state, req).await,
        ["v1", "videos"] => {
            only(Method::GET)?;
            list(state, req.uri().query())
        }
        ["v1", "videos", "sync"] => {
            only(Method::POST)?;
            sync(state, req).await
        }
        ["v1", "videos", "generations"] => {
            only(Method::POST)?;
            generations(state, req).await
        }
        ["v1", "videos", id] => match method {
            Method::GET => retrieve(state, id),
            Method::DELETE => delete(state, id),
            _ => Err(ApiError::MethodNotAllowed(method.to_string())),
        },
        ["v1", "videos", id, "content"] => {
            only(Method::GET)?;
            content(state, id, &req).await
        }
        _ => Err(ApiError::NotFound(format!("No route for {path}"))),
    }
}

fn authorize(cfg: &ServeConfig, req: &Request<Incoming>) -> Result<(), ApiError> {
    if cfg.api_keys.is_empty() {
        return Ok(());
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(k) if cfg.api_keys.iter().any(|a| a == k) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

fn model_card(state: &State, id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "omni",
           "root": state.cfg.served_model_name})
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

/// Parse, validate and resolve a create body.
async fn admit_body(state: &State, req: Request<Incoming>) -> Result<Admitted, ApiError> {
    let (ct, bytes) = read_body(state, req).await?;
    let fields = body::parse(ct.as_deref(), bytes).await?;
    let cfg = &state.cfg;
    admit(
        &fields,
        &cfg.served_model_name,
        |n| cfg.serves(n),
        &cfg.default_request,
        &state.defaults,
    )
}

fn new_record(state: &State, a: Admitted, hidden: bool) -> JobRecord {
    let r = &a.request;
    JobRecord {
        id: new_id(),
        seq: state.jobs.next_seq(),
        model: a.model,
        status: Status::Queued,
        progress: 0,
        created_at: now(),
        started_at: None,
        completed_at: None,
        prompt: r.prompt.clone(),
        seconds: a.seconds,
        size: format!("{}x{}", r.width, r.height),
        fps: r.fps,
        num_frames: r.output_frames(),
        error: None,
        file_name: None,
        inference_time_s: None,
        request: patch_of(r),
        hidden,
        cancel: Default::default(),
    }
}

/// Insert and queue; on a full queue the record is removed again.
fn enqueue(
    state: &State,
    rec: JobRecord,
    done: Option<oneshot::Sender<()>>,
) -> Result<String, ApiError> {
    let id = rec.id.clone();
    state.jobs.insert(rec);
    match state.worker.submit(Job {
        id: id.clone(),
        done,
    }) {
        Ok(()) => Ok(id),
        Err(full) => {
            state.jobs.remove(&id);
            Err(match full {
                true => ApiError::QueueFull(state.cfg.limits.max_queued_jobs),
                false => ApiError::Unavailable("the generation worker stopped".into()),
            })
        }
    }
}

fn video_response(state: &State, rec: &JobRecord) -> Resp {
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
    let admitted = admit_body(state, req).await?;
    let rec = new_record(state, admitted, false);
    let id = enqueue(state, rec, None)?;
    let rec = state
        .jobs
        .get(&id)
        .ok_or_else(|| ApiError::NotFound("Video not found".into()))?;
    Ok(video_response(state, &rec))
}

/// `POST /v1/videos/generations`: create, wait until the job is terminal, answer the `Video`
/// (`?wait=false`: answer at once, like `POST /v1/videos`).
async fn generations(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let wait = !req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "wait=false"));
    let admitted = admit_body(state, req).await?;
    let rec = new_record(state, admitted, false);
    let (tx, rx) = oneshot::channel();
    let id = enqueue(state, rec, Some(tx))?;
    if wait {
        // Ends when the job is terminal or deleted (the worker drops or fires `tx`).
        let _ = rx.await;
    }
    let rec = lookup(state, &id)?;
    Ok(video_response(state, &rec))
}

fn lookup(state: &State, id: &str) -> Result<JobRecord, ApiError> {
    let not_found = || ApiError::NotFound(format!("Video '{id}' not found"));
    if !valid_id(id) {
        return Err(not_found());
    }
    state
        .jobs
        .get(id)
        .filter(|r| !r.hidden)
        .ok_or_else(not_found)
}

fn retrieve(state: &State, id: &str) -> Result<Resp, ApiError> {
    let rec = lookup(state, id)?;
    Ok(video_response(state, &rec))
}

fn delete(state: &State, id: &str) -> Result<Resp, ApiError> {
    lookup(state, id)?;
    state.jobs.remove(id);
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

async fn content(state: &State, id: &str, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    let rec = lookup(state, id)?;
    let q: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    match q
        .iter()
        .rev()
        .find(|(k, _)| k == "variant")
        .map(|(_, v)| v.as_str())
    {
        None | Some("") | Some("video") => {}
        Some(v @ ("thumbnail" | "spritesheet")) => {
            return Err(ApiError::invalid(
                "variant",
                format!("variant '{v}' is not available yet; only 'video' is"),
            ));
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "variant",
                format!("unknown variant '{v}'; use 'video'"),
            ));
        }
    }
    match rec.status {
        Status::Failed => return Err(ApiError::JobFailed),
        Status::Completed => {}
        _ => return Err(ApiError::NotFound("Generation is still in progress".into())),
    }
    let bytes = tokio::fs::read(state.jobs.video_path(id))
        .await
        .map_err(|_| ApiError::NotFound("Generated video file not found on disk".into()))?;
    let len = bytes.len() as u64;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| parse_range(h, len));
    let (status, body, content_range) = match range {
        None => (StatusCode::OK, Bytes::from(bytes), None),
        Some(Ok((a, b))) => (
            StatusCode::PARTIAL_CONTENT,
            Bytes::from(bytes).slice(a as usize..=b as usize),
            Some(format!("bytes {a}-{b}/{len}")),
        ),
        Some(Err(())) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return Ok(r);
        }
    };
    let mut r = Response::new(Full::new(body));
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

async fn sync(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let admitted = admit_body(state, req).await?;
    let started = Instant::now();
    let rec = new_record(state, admitted, true);
    let model = rec.model.clone();
    let (tx, rx) = oneshot::channel();
    let id = enqueue(state, rec, Some(tx))?;
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
    let bytes = tokio::fs::read(state.jobs.video_path(&id))
        .await
        .map_err(|_| ApiError::Internal("the generated file is missing".into()))?;
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
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
    h.insert("x-stage-durations", HeaderValue::from_static("{}"));
    h.insert("x-peak-memory-mb", HeaderValue::from_static("0.000"));
    h.insert(
        header::CONTENT_DISPOSITION,
        hv(format!("attachment; filename=\"{id}.mp4\"")),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

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

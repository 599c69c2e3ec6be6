//! The OpenAI Videos API's other job-making methods (openai-python 3.x `resources/videos.py`):
//!
//! - `POST /v1/videos/{video_id}/remix` (`videos.remix(video_id, prompt=…)`, JSON): the source
//!   job's resolved request (model, size, frames, fps, seed, steps, guidance) with the new prompt
//!   on top; any other create field in the body overrides it too. A source that was
//!   image-to-video is refused (400 `video_id`) unless the body brings its own reference: its
//!   reference file is deleted once it finished.
//! - `POST /v1/videos/edits` (`videos.edit(prompt=…, video=…)`, multipart) and
//!   `POST /v1/videos/extensions` (`videos.extend(prompt=…, seconds=…, video=…)`): video-to-video
//!   from `video`, an uploaded MP4 (or a data URL / base64) or `{"id": "video_…"}` of a completed
//!   video on this server. With an id, the source's request is the layer under the body (same
//!   size, fps, seed and settings) and `remixed_from_video_id` names it. Helios's video-to-video
//!   continues the given frames (history conditioning), so both answer a continuation under
//!   the new prompt: `seconds` is the length of the new part (OpenAI's extension reports the
//!   stitched total), and an edit does not re-render the source frames.
//! - `POST /v1/videos/characters`, `GET /v1/videos/characters/{character_id}`: 501, Helios
//!   has no character conditioning.

use serde_json::Value;

use super::error::ApiError;
use super::jobs::{JobKind, JobRecord, Status};
use super::reference::{self, RawReference, RefKind};
use super::routes::{
    Resp, State, admit_over, enqueue, lookup, new_job, read_fields, video_response,
};
use crate::pipeline::request::{GenerationRequest, RequestPatch};
use hyper::Request;
use hyper::body::Incoming;

/// The request of a stored job as a request layer: every field set, except the steps knob of
/// the sampler the checkpoint does not run and the fields the checkpoint cannot honour (a layer
/// that sets them is refused by `resolve`; their values are the defaults, unused).
fn patch_of(state: &State, req: &GenerationRequest) -> Result<RequestPatch, ApiError> {
    let internal =
        |e: serde_json::Error| ApiError::Internal(format!("reading the source job's request: {e}"));
    let mut v = serde_json::to_value(req).map_err(internal)?;
    if let Some(m) = v.as_object_mut() {
        for k in &state.defaults.unsupported {
            m.remove(*k);
        }
    }
    let mut p: RequestPatch = serde_json::from_value(v).map_err(internal)?;
    match req.is_enable_stage2 {
        true => p.num_inference_steps = None,
        false => p.pyramid_num_inference_steps_list = None,
    }
    Ok(p)
}

/// `POST /v1/videos/{video_id}/remix`.
///
/// # Errors
/// 404 for an unknown `video_id`; 400 as a create, or for an image-to-video source without a
/// new reference.
pub async fn remix(state: &State, id: &str, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let src = lookup(state, id)?;
    let fields = read_fields(state, req).await?;
    let mut a = admit_over(state, &fields, Some(patch_of(state, &src.request)?))?;
    if src.input.is_some() && a.reference.is_none() {
        return Err(ApiError::invalid(
            "video_id",
            format!(
                "`video_id`: '{id}' was generated from a reference image or video, which is not \
                 kept after the job; send it again as `input_reference` with the remix"
            ),
        ));
    }
    keep_source_echo(&mut a, &src, &fields.map);
    let mut job = new_job(state, a, false, JobKind::Video).await?;
    job.rec.remixed_from_video_id = Some(src.id.clone());
    let created = job.rec.clone();
    enqueue(state, job, None)?;
    Ok(video_response(state, &created))
}

/// `model` and `seconds` as the source showed them, when the body does not set them.
fn keep_source_echo(
    a: &mut super::create::Admitted,
    src: &JobRecord,
    body: &serde_json::Map<String, Value>,
) {
    let set = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    if !set("model") {
        a.model = src.model.clone();
    }
    if !set("seconds") && !set("num_frames") && a.request.num_frames == src.request.num_frames {
        a.seconds = src.seconds.clone();
    }
}

/// `POST /v1/videos/edits`.
///
/// # Errors
/// 400 naming `video` (missing, unknown id, not completed, not an MP4 of one chunk) or
/// another field, as a create.
pub async fn edit(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    from_video(state, req, "edited").await
}

/// `POST /v1/videos/extensions`.
///
/// # Errors
/// As [`edit`].
pub async fn extend(state: &State, req: Request<Incoming>) -> Result<Resp, ApiError> {
    from_video(state, req, "extended").await
}

async fn from_video(state: &State, req: Request<Incoming>, verb: &str) -> Result<Resp, ApiError> {
    let mut fields = read_fields(state, req).await?;
    let mut source: Option<JobRecord> = None;
    let bytes = match fields.uploads.iter().position(|u| u.field == "video") {
        Some(i) => fields.uploads.remove(i).data.to_vec(),
        None => {
            let v = match fields.map.remove("video") {
                None | Some(Value::Null) => {
                    return Err(ApiError::invalid(
                        "video",
                        "`video` is required: an uploaded MP4, or {\"id\": \"video_…\"} of a completed video",
                    ));
                }
                Some(Value::String(s)) if s.trim_start().starts_with('{') => {
                    serde_json::from_str::<Value>(&s)
                        .map_err(|e| ApiError::invalid("video", format!("not valid JSON: {e}")))?
                }
                Some(v) => v,
            };
            match v.get("id") {
                Some(Value::String(id)) => {
                    let rec = lookup(state, id).map_err(|_| {
                        ApiError::invalid(
                            "video",
                            format!("`video`: no video '{id}' on this server"),
                        )
                    })?;
                    if rec.status != Status::Completed {
                        return Err(ApiError::invalid(
                            "video",
                            format!(
                                "`video`: '{id}' is {:?}; only a completed video can be {verb}",
                                rec.status
                            ),
                        ));
                    }
                    let bytes = state
                        .jobs
                        .outputs()
                        .read(id, super::outputs::OutputFile::Video)
                        .await
                        .map(Vec::from)
                        .map_err(|_| {
                            ApiError::invalid(
                                "video",
                                format!("`video`: the file of '{id}' is gone"),
                            )
                        })?;
                    source = Some(rec);
                    bytes
                }
                Some(_) => return Err(ApiError::invalid("video", "`video.id` must be a string")),
                None => reference::from_value("video", &v)?.bytes,
            }
        }
    };
    let max = state.cfg.limits.max_upload_bytes;
    if source.is_none() && bytes.len() > max {
        return Err(ApiError::UploadTooLarge {
            param: "video".into(),
            size: bytes.len(),
            max,
        });
    }
    let patch = source
        .as_ref()
        .map(|r| patch_of(state, &r.request))
        .transpose()?;
    let mut a = admit_over(state, &fields, patch)?;
    if let Some(r) = &a.reference {
        return Err(ApiError::invalid(
            &r.param,
            format!(
                "`{}`: this endpoint takes its one reference as `video`",
                r.param
            ),
        ));
    }
    a.reference = Some(RawReference {
        param: "video".into(),
        bytes,
        hint: Some(RefKind::Video),
    });
    if let Some(src) = &source {
        keep_source_echo(&mut a, src, &fields.map);
    }
    let mut job = new_job(state, a, false, JobKind::Video).await?;
    job.rec.remixed_from_video_id = source.map(|r| r.id);
    let created = job.rec.clone();
    enqueue(state, job, None)?;
    Ok(video_response(state, &created))
}

/// The answer of the character endpoints.
pub fn characters() -> ApiError {
    ApiError::NotImplemented(
        "Characters (POST /v1/videos/characters, GET /v1/videos/characters/{character_id}) are \
         not supported: the Helios models omni serves have no character conditioning. Steer \
         appearance with an `input_reference` image instead."
            .into(),
    )
}

//! Conditioning inputs of a create request: image-to-video and video-to-video.
//!
//! Where a reference can come from (shared/reference/api.md §5.3):
//! - a multipart file part `input_reference` (aliases `image_reference`, `video_reference`,
//!   `start_image`, `reference_url` as file parts too);
//! - `input_reference`, `start_image` (LocalAI), `reference_url` (FastVideo): a string, a
//!   `data:` URL or plain base64 — or an object like `image_reference`;
//! - `image_reference` `{"image_url": "data:image/png;base64,..."}` (object, or its JSON text in a
//!   form field, or the bracket form `image_reference[image_url]`), `video_reference`
//!   `{"video_url": ...}`.
//!
//! Only one of them per request (400 naming the second). First-last-frame-to-video (Wan2.1
//! FLF2V, diffusers `last_image`) takes a second image, the last frame: LocalAI's `end_image`
//! (a string or object as above, or a multipart file part), or FastVideo's list form
//! `image_reference: [first, last]` (its second item is called `image_reference[1]` in errors);
//! one of the two (400 naming the second). `file_id` and http(s) URLs are refused
//! with 400: the server reads no `/v1/files` store and fetches nothing remote. The bytes are
//! decoded at admission (image first, then H.264 MP4; `video_reference` as video only) so a bad
//! file is a 400 and no job; the original bytes are stored beside the job and decoded again when
//! the worker runs it (so a restarted server re-runs the job with the same input).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::body::Fields;
use super::error::ApiError;
use crate::pipeline::request::{Conditioning, ConditioningError, GenerationRequest, MediaSource};

/// What a stored reference is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefKind {
    /// A still image: image-to-video.
    Image,
    /// An H.264 MP4: video-to-video.
    Video,
}

/// A reference taken from the request, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawReference {
    /// The field it came in (the `param` of any error about it).
    pub param: String,
    pub bytes: Vec<u8>,
    /// `Some` when the field or the data URL says what it is.
    pub hint: Option<RefKind>,
}

/// Fields that carry a reference, in the order they are looked at.
const FIELDS: &[&str] = &[
    "input_reference",
    "image_reference",
    "video_reference",
    "start_image",
    "reference_url",
];

/// The field of the last frame (LocalAI `end_image`).
pub const END_IMAGE: &str = "end_image";

/// The references of a request, not decoded yet.
#[derive(Debug, Clone, Default)]
pub struct References {
    /// The image or video (the first frame of a first-last-frame video).
    pub first: Option<RawReference>,
    /// The last frame of a first-last-frame video (`end_image` or `image_reference[1]`).
    pub last: Option<RawReference>,
}

/// The references of `fields`, if any (no decoding yet): at most one first reference and one
/// last image.
///
/// # Errors
/// 400 naming the field: two references, two last images, an `image_reference` list of more
/// than two, an unknown file field, `file_id`, a URL, bad base64, bad JSON; 413 over
/// `max_upload_bytes`.
pub fn extract(fields: &Fields, max_upload_bytes: usize) -> Result<References, ApiError> {
    let mut found: Vec<RawReference> = Vec::new();
    let mut last: Vec<RawReference> = Vec::new();
    for up in &fields.uploads {
        if up.field == END_IMAGE {
            last.push(RawReference {
                param: END_IMAGE.into(),
                bytes: up.data.to_vec(),
                hint: Some(RefKind::Image),
            });
            continue;
        }
        if !FIELDS.contains(&up.field.as_str()) {
            return Err(ApiError::invalid(
                &up.field,
                format!(
                    "unexpected file in `{}`; send the reference file as `input_reference`",
                    up.field
                ),
            ));
        }
        let hint = match up.content_type.as_deref() {
            Some(ct) if ct.starts_with("video/") => Some(RefKind::Video),
            _ if up.field == "video_reference" => Some(RefKind::Video),
            _ => None,
        };
        found.push(RawReference {
            param: up.field.clone(),
            bytes: up.data.to_vec(),
            hint,
        });
    }
    for &field in FIELDS {
        match fields.map.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if field == "image_reference" && image_list(v).is_some() => {
                // FastVideo's list form: [first] or [first, last].
                let items = image_list(v).expect("checked");
                if items.len() > 2 {
                    return Err(ApiError::invalid(
                        field,
                        format!(
                            "`image_reference` lists {} images; it takes [first] or [first, last]",
                            items.len()
                        ),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    match i {
                        0 => found.push(from_value(field, item)?),
                        _ => {
                            let mut r = from_value("image_reference[1]", item)?;
                            r.hint = Some(RefKind::Image);
                            last.push(r);
                        }
                    }
                }
            }
            Some(v) => found.push(from_value(field, v)?),
        }
    }
    match fields.map.get(END_IMAGE) {
        None | Some(Value::Null) => {}
        Some(v) => {
            let mut r = from_value(END_IMAGE, v)?;
            r.hint = Some(RefKind::Image);
            last.push(r);
        }
    }
    if found.len() > 1 {
        return Err(ApiError::invalid(
            &found[1].param,
            format!(
                "Provide only one of input_reference, image_reference, video_reference, \
                 start_image or reference_url (got `{}` and `{}`)",
                found[0].param, found[1].param
            ),
        ));
    }
    if last.len() > 1 {
        return Err(ApiError::invalid(
            &last[1].param,
            format!(
                "Provide only one last image, end_image or image_reference[1] (got `{}` and `{}`)",
                last[0].param, last[1].param
            ),
        ));
    }
    let refs = References {
        first: found.pop(),
        last: last.pop(),
    };
    for r in refs.first.iter().chain(&refs.last) {
        if r.bytes.len() > max_upload_bytes {
            return Err(ApiError::UploadTooLarge {
                param: r.param.clone(),
                size: r.bytes.len(),
                max: max_upload_bytes,
            });
        }
    }
    Ok(refs)
}

/// The items of an `image_reference` list (a JSON array, or its JSON text from a form); `None`
/// for any other value.
fn image_list(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) => Some(items.clone()),
        Value::String(s) if s.trim_start().starts_with('[') => {
            match serde_json::from_str::<Value>(s) {
                Ok(Value::Array(items)) => Some(items),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A JSON / form value: a string (data URL, base64, URL, or an object's JSON text) or an object
/// `{"image_url"|"video_url"|"url"|"file_id": ...}`.
pub(super) fn from_value(field: &str, v: &Value) -> Result<RawReference, ApiError> {
    let video_field = field == "video_reference";
    let obj = match v {
        Value::Object(o) => o.clone(),
        Value::String(s) if s.trim_start().starts_with('{') => {
            match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(o)) => o,
                Ok(_) => return Err(ApiError::invalid(field, "must be a JSON object")),
                Err(e) => {
                    return Err(ApiError::invalid(field, format!("not valid JSON: {e}")));
                }
            }
        }
        Value::String(s) => return from_string(field, s, video_field),
        _ => {
            return Err(ApiError::invalid(
                field,
                "must be a data URL, base64 text or an object like {\"image_url\": \"data:image/png;base64,...\"}",
            ));
        }
    };
    if obj.get("file_id").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            field,
            format!(
                "`{field}`: file_id is not supported (this server has no /v1/files store); \
                 send the file as a multipart `input_reference` or a data URL"
            ),
        ));
    }
    for key in ["image_url", "video_url", "url"] {
        match obj.get(key) {
            Some(Value::String(s)) => {
                return from_string(field, s, video_field || key == "video_url");
            }
            Some(Value::Object(o)) => {
                // `{"image_url": {"url": ...}}` (chat-completions style).
                if let Some(Value::String(s)) = o.get("url") {
                    return from_string(field, s, video_field || key == "video_url");
                }
            }
            _ => {}
        }
    }
    Err(ApiError::invalid(
        field,
        format!(
            "`{field}` needs `image_url` (a data URL or base64), e.g. {{\"image_url\": \"data:image/png;base64,...\"}}"
        ),
    ))
}

/// `data:<mime>;base64,<data>`, plain base64, or a refused URL.
fn from_string(field: &str, s: &str, video: bool) -> Result<RawReference, ApiError> {
    let s = s.trim();
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ApiError::invalid(
            field,
            format!(
                "`{field}`: remote URLs are not fetched by this server ([remote_media] \
                 enabled = false); send the file as a multipart `input_reference` upload, a \
                 data URL or base64"
            ),
        ));
    }
    let (mime, data) = match s.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').ok_or_else(|| {
                ApiError::invalid(field, "a data URL needs a comma before its data")
            })?;
            if !meta.to_ascii_lowercase().ends_with(";base64") {
                return Err(ApiError::invalid(
                    field,
                    "only base64 data URLs (`data:image/png;base64,...`) are supported",
                ));
            }
            (Some(meta.to_ascii_lowercase()), data)
        }
        None => (None, s),
    };
    use base64::Engine as _;
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cleaned.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.trim_end_matches('=')))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cleaned.trim_end_matches('=')))
        .map_err(|_| {
            ApiError::invalid(
                field,
                format!("`{field}` is not a data URL or valid base64 (local paths and other URLs are not read)"),
            )
        })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid(field, "the reference is empty"));
    }
    let hint = if video || mime.as_deref().is_some_and(|m| m.starts_with("video/")) {
        Some(RefKind::Video)
    } else if mime.as_deref().is_some_and(|m| m.starts_with("image/")) {
        Some(RefKind::Image)
    } else {
        None
    };
    Ok(RawReference {
        param: field.to_string(),
        bytes,
        hint,
    })
}

/// Refuse a reference whose image, or video frame, is over `max_pixels` (width × height as its
/// header declares), before any pixel is decoded: a 519 KB PNG can declare 13000x13000.
/// Bytes that are neither an image nor an MP4 header pass (the decode names what is wrong).
///
/// # Errors
/// 400 naming the field.
pub fn check_pixels(r: &RawReference, max_pixels: u64) -> Result<(), ApiError> {
    let dims = match r.hint {
        Some(RefKind::Video) => None,
        _ => crate::media::image_dimensions(&r.bytes),
    }
    .or_else(|| match r.hint {
        Some(RefKind::Image) => None,
        _ => crate::media::VideoReader::from_bytes(r.bytes.clone(), "uploaded video")
            .ok()
            .map(|v| (v.info().width, v.info().height)),
    });
    match dims {
        Some((w, h)) if w as u64 * h as u64 > max_pixels => Err(ApiError::invalid(
            &r.param,
            format!(
                "the reference is {w}x{h} = {} pixels, over this server's limit of {max_pixels} \
                 (max_reference_pixels); scale it down, it is stretched to the output size anyway",
                w as u64 * h as u64
            ),
        )),
        _ => Ok(()),
    }
}

/// Decode `bytes` to the conditioning of `req` (pixels at the output size). Without a hint the
/// bytes are tried as an image, then as a video. CPU work: call it off the async runtime.
///
/// # Errors
/// 400 naming `param`: not a decodable image or video, or a video shorter than one chunk.
pub fn decode(
    bytes: &[u8],
    hint: Option<RefKind>,
    req: &GenerationRequest,
    param: &str,
) -> Result<(RefKind, Conditioning), ApiError> {
    let src = MediaSource::Bytes(bytes);
    let image_err = match hint {
        Some(RefKind::Video) => None,
        _ => match Conditioning::from_image(src, req) {
            Ok(c) => return Ok((RefKind::Image, c)),
            Err(e) => Some(e.to_string()),
        },
    };
    if hint == Some(RefKind::Image) {
        return Err(ApiError::invalid(
            param,
            format!(
                "provided content is not a valid image: {}",
                image_err.unwrap_or_default()
            ),
        ));
    }
    match Conditioning::from_video(src, req) {
        Ok(c) => Ok((RefKind::Video, c)),
        Err(e @ ConditioningError::TooShort { .. }) => Err(ApiError::invalid(param, e.to_string())),
        Err(ConditioningError::Media(e)) => Err(ApiError::invalid(
            param,
            match image_err {
                Some(ie) => format!(
                    "provided content is not a valid image or video (as an image: {ie}; as a video: {e})"
                ),
                None => format!("provided content is not a valid video: {e}"),
            },
        )),
    }
}

/// [`decode`] with a known kind (the worker, from the stored file).
///
/// # Errors
/// As [`decode`].
pub fn decode_kind(
    bytes: &[u8],
    kind: RefKind,
    req: &GenerationRequest,
) -> Result<Conditioning, ApiError> {
    decode(bytes, Some(kind), req, "input_reference").map(|(_, c)| c)
}

/// The first-last-frame conditioning ([`Conditioning::FirstLast`]) of two stored images (the
/// worker, from `<id>.input` and `<id>.last.input`). CPU work.
///
/// # Errors
/// 400 naming `input_reference` or `end_image`: an image that does not decode.
pub fn decode_first_last(
    first: &[u8],
    last: &[u8],
    req: &GenerationRequest,
) -> Result<Conditioning, ApiError> {
    // Each is decoded once more on its own so an error names the image it is about.
    decode(first, Some(RefKind::Image), req, "input_reference")?;
    decode(last, Some(RefKind::Image), req, END_IMAGE)?;
    Conditioning::from_first_last(MediaSource::Bytes(first), MediaSource::Bytes(last), req)
        .map_err(|e| ApiError::invalid(END_IMAGE, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        Fields {
            map: v.as_object().unwrap().clone(),
            uploads: Vec::new(),
        }
    }

    #[test]
    fn sources_and_refusals_name_their_field() {
        let r = extract(
            &fields(json!({"image_reference": {"image_url": "data:image/png;base64,AAEC"}})),
            100,
        )
        .unwrap()
        .first
        .unwrap();
        assert_eq!(
            (r.param.as_str(), r.bytes, r.hint),
            ("image_reference", vec![0, 1, 2], Some(RefKind::Image))
        );
        let r = extract(&fields(json!({"start_image": "AAEC"})), 100)
            .unwrap()
            .first
            .unwrap();
        assert_eq!((r.param.as_str(), r.hint), ("start_image", None));
        let r = extract(
            &fields(json!({"image_reference": "{\"image_url\": \"data:video/mp4;base64,AAEC\"}"})),
            100,
        )
        .unwrap()
        .first
        .unwrap();
        assert_eq!(r.hint, Some(RefKind::Video));
        let none = extract(&fields(json!({"prompt": "p"})), 100).unwrap();
        assert!(none.first.is_none() && none.last.is_none());
        for (body, param, status) in [
            (
                json!({"input_reference": "AAEC", "image_reference": {"image_url": "AAEC"}}),
                "image_reference",
                400,
            ),
            (
                json!({"image_reference": {"file_id": "f"}}),
                "image_reference",
                400,
            ),
            (
                json!({"start_image": "https://x/y.png"}),
                "start_image",
                400,
            ),
            (
                json!({"reference_url": "not base64!"}),
                "reference_url",
                400,
            ),
            (json!({"image_reference": "{nope"}), "image_reference", 400),
            (json!({"start_image": "AAECAwQFBgc="}), "start_image", 413),
            (
                json!({"start_image": "AAEC", "end_image": "AAECAwQFBgc="}),
                "end_image",
                413,
            ),
            (
                json!({"image_reference": [{"image_url": "AAEC"}, "AAEC"], "end_image": "AAEC"}),
                "end_image",
                400,
            ),
            (
                json!({"image_reference": ["AAEC", "AAEC", "AAEC"]}),
                "image_reference",
                400,
            ),
            (json!({"end_image": "https://x/y.png"}), "end_image", 400),
            (
                json!({"image_reference": ["AAEC", {"file_id": "f"}]}),
                "image_reference[1]",
                400,
            ),
        ] {
            let e = extract(&fields(body.clone()), 4).unwrap_err();
            assert_eq!(e.status().as_u16(), status, "{body}: {e}");
            assert_eq!(e.body()["error"]["param"], param, "{body}: {e}");
        }
    }

    #[test]
    fn a_last_image_comes_as_end_image_or_the_second_image_reference() {
        for (body, first_param, last_param) in [
            (
                json!({"start_image": "AAEC", "end_image": "data:image/png;base64,AAED"}),
                "start_image",
                "end_image",
            ),
            (
                json!({"input_reference": "AAEC", "end_image": {"image_url": "AAED"}}),
                "input_reference",
                "end_image",
            ),
            (
                json!({"image_reference": [{"image_url": "AAEC"}, {"image_url": "AAED"}]}),
                "image_reference",
                "image_reference[1]",
            ),
            (
                json!({"image_reference": "[{\"image_url\": \"AAEC\"}, \"AAED\"]"}),
                "image_reference",
                "image_reference[1]",
            ),
        ] {
            let r = extract(&fields(body.clone()), 100).unwrap();
            let (first, last) = (r.first.unwrap(), r.last.unwrap());
            assert_eq!(
                (first.param.as_str(), first.bytes),
                (first_param, vec![0, 1, 2])
            );
            assert_eq!(
                (last.param.as_str(), last.bytes, last.hint),
                (last_param, vec![0, 1, 3], Some(RefKind::Image)),
                "{body}"
            );
        }
        // A one-item list is the first image only; `end_image` alone is extracted (admission
        // refuses it without a first image).
        let r = extract(&fields(json!({"image_reference": ["AAEC"]})), 100).unwrap();
        assert!(r.first.is_some() && r.last.is_none());
        let r = extract(&fields(json!({"end_image": "AAEC"})), 100).unwrap();
        assert!(r.first.is_none() && r.last.is_some());
    }
}

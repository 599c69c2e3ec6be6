//! `GET /openapi.json`: the OpenAPI 3.1 description of the running server, built from the route
//! table ([`ROUTES`]: every row and method, and nothing else) and the live configuration: bearer
//! auth and its 401s only when `api_keys` is set, the served model names, the model's pixel grid
//! and the `[limits.budget]` bounds. Rules that span fields (long/short side, `seconds · fps`
//! against the frame budget, the history sum) are stated in `description`s; a request inside the
//! per-field bounds may still get a 400 naming the field for them.

use serde_json::{Map, Value, json};

use super::routes::{Access, ROUTES, State};
use crate::pipeline::request::{GenerationRequest, RequestPatch, WorkBudget};

/// What the document describes: the parts of the running server's configuration it depends on.
#[derive(Debug, Clone)]
pub struct Described {
    /// `api_keys` is set: key routes need `Authorization: Bearer <key>` (else 401).
    pub auth: bool,
    /// The served model name, then its aliases (`model` must be one of them).
    pub models: Vec<String>,
    /// What an empty request resolves to (`[default_request]` and the preset over the
    /// checkpoint's defaults): the `default`s of the fields.
    pub defaults: GenerationRequest,
    /// The checkpoint runs the pyramid sampler (steps per stage) rather than one stage.
    pub pyramid: bool,
    /// Pixel grid of width/height: 16·2^(stages−1) pixels.
    pub grid: u32,
    pub budget: WorkBudget,
    /// Request fields the checkpoint cannot honour (any value is a 400 naming the field).
    pub unsupported: Vec<&'static str>,
    /// The checkpoint makes first-last-frame videos (Wan2.1 FLF2V): `end_image` is required
    /// with the first image; elsewhere it is a 400.
    pub takes_last_image: bool,
}

impl Described {
    /// The running server's.
    pub fn of(state: &State) -> Self {
        let defaults =
            crate::pipeline::request::defaults_under(&state.lower_layers, &state.defaults);
        Described {
            auth: !state.cfg.api_keys.is_empty(),
            models: std::iter::once(&state.cfg.served_model_name)
                .chain(&state.cfg.aliases)
                .cloned()
                .collect(),
            pyramid: state.defaults.is_enable_stage2,
            grid: 16u32 << state.defaults.pyramid_num_stages.saturating_sub(1),
            defaults,
            budget: state.cfg.limits.budget,
            unsupported: state.defaults.unsupported.clone(),
            takes_last_image: state.defaults.takes_last_image,
        }
    }

    /// What `end_image` does on this checkpoint.
    fn end_image(&self) -> Value {
        let what = match self.takes_last_image {
            true => {
                "this first-last-frame (Wan2.1 FLF2V) checkpoint needs it, with the first frame as input_reference / start_image / image_reference (either alone is a 400 naming end_image)"
            }
            false => {
                "this checkpoint takes no last image: any value is a 400 naming end_image (only a Wan2.1 FLF2V checkpoint, whose transformer sets pos_embed_seq_len, takes one)"
            }
        };
        json!({"type": ["string", "object", "null"], "format": "binary", "description": format!(
            "LocalAI: the last frame of a first-last-frame video (diffusers last_image), as a multipart file part, a data URL, base64 or {{image_url}}; an image only; checked against max_reference_pixels and decoded at admission like input_reference. FastVideo's image_reference: [first, last] is the same (errors name image_reference[1]). {what}"
        )})
    }
}

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn json_any(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"type": "object"}}}})
}

fn binary(content_types: &[&str]) -> Value {
    let content: Map<String, Value> = content_types
        .iter()
        .map(|ct| {
            (
                ct.to_string(),
                json!({"schema": {"type": "string", "format": "binary"}}),
            )
        })
        .collect();
    json!({"description": "OK", "content": content})
}

fn create_body() -> Value {
    let schema = json!({"$ref": "#/components/schemas/VideoCreate"});
    json!({"required": true, "content": {
        "multipart/form-data": {"schema": schema},
        "application/json": {"schema": schema},
        "application/x-www-form-urlencoded": {"schema": schema},
    }})
}

fn id_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

const SERVER_ERRORS: &str = "Server-side failure (500, or the generation failed on a blocking endpoint), model not loaded or worker gone (503), /sync past sync_timeout_s (504), the job could not be stored (507)";

/// The responses of the endpoints that admit a generation: `ok`, or an error envelope.
fn create_responses(ok: Value) -> Value {
    json!({
        "200": ok,
        "400": err("A bad field (`param` names it; over the work budget too) or a model mismatch"),
        "413": err("Body over max_body_bytes, or a reference file over max_upload_bytes (`param` names it)"),
        "415": err("Unsupported content type"),
        "429": err("Job queue full (Retry-After)"),
        "5XX": err(SERVER_ERRORS),
    })
}

/// The operation `method` of route `path`; `None` for a row or method the document does not know
/// (a test keeps this in step with [`ROUTES`]).
fn operation(path: &str, method: &str) -> Option<Value> {
    let op = match (path, method) {
        ("/", "GET") => json!({"summary": "The web page (HTML; holds no data, never needs a key)",
            "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}}}),
        ("/ui/{file}", "GET") => {
            json!({"summary": "The web page's script (app.js) and style sheet (app.css)",
            "parameters": [{"name": "file", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK", "content": {
                "text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}}},
                "404": err("Unknown file")}})
        }
        ("/health" | "/healthz", "GET") => json!({"summary": "Liveness (never needs a key)",
            "responses": {"200": json_any("{status: ok}")}}),
        ("/readyz", "GET") => {
            json!({"summary": "503 until the model is loaded (never needs a key)",
            "responses": {"200": json_any("{status: ready}"), "503": err("Loading")}})
        }
        ("/metrics", "GET") => {
            json!({"summary": "Prometheus metrics in the OpenMetrics text format (never needs a key; names in the README)",
            "responses": {"200": {"description": "OK", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}})
        }
        ("/openapi.json", "GET") => json!({"summary": "This document (never needs a key)",
            "responses": {"200": json_any("OpenAPI 3.1")}}),
        ("/v1/models", "GET") => json!({"summary": "The served model and its aliases",
            "responses": {"200": json_any("{object: list, data: [model]}")}}),
        ("/v1/models/{model}", "GET") => json!({"summary": "One model card",
            "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": json_any("model"), "404": err("Unknown model")}}),
        ("/v1/videos", "POST") => {
            json!({"summary": "Create a video job (answers at once, status queued)",
            "operationId": "createVideo",
            "requestBody": create_body(), "responses": create_responses(json_ok("Video")),
            "links": video_links()})
        }
        ("/v1/videos", "GET") => json!({"summary": "List video jobs",
            "parameters": [
                {"name": "after", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": ["integer", "string"], "minimum": 0, "maximum": 100, "pattern": "^(\\+?[0-9]{1,20})?$"},
                 "description": "page size, 0..=100 (default: all); empty = absent"},
                {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc", ""], "default": "desc"}}],
            "responses": {"200": json_any("{object: list, data, first_id, last_id, has_more}"),
                          "400": err("Bad paging parameter")}}),
        ("/v1/videos/sync", "POST") => json!({
            "summary": "Generate and answer the MP4 (X-Request-Id, X-Model, X-Inference-Time-S); with stream=true (body field or query) a fragmented MP4 streamed as chunks finish",
            "requestBody": create_body(), "responses": create_responses(binary(&["video/mp4"]))}),
        ("/v1/videos/generations", "POST") => json!({
            "summary": "Create and block until the job ends (?wait=false: at once)",
            "operationId": "createVideoAndWait",
            "parameters": [{"name": "wait", "in": "query", "schema": {"type": "string"},
                "description": "`false`: answer at once; anything else waits"}],
            "requestBody": create_body(), "responses": create_responses(json_ok("Video")),
            "links": video_links()}),
        ("/v1/videos/{video_id}", "GET") => json!({
            "summary": "Retrieve (200 also for failed jobs; openai-poll-after-ms while running)",
            "operationId": "retrieveVideo", "parameters": [id_param("video_id")],
            "responses": {"200": json_ok("Video"), "404": err("Unknown id")}}),
        ("/v1/videos/{video_id}", "DELETE") => json!({
            "summary": "Delete (cancels a running job) with its files",
            "operationId": "deleteVideo", "parameters": [id_param("video_id")],
            "responses": {"200": json_any("{id, deleted: true, object: video.deleted}"), "404": err("Unknown id")}}),
        ("/v1/videos/{video_id}/content", "GET") => json!({
            "summary": "Download: variant=video (MP4, Range), thumbnail (WebP, middle frame), spritesheet (JPEG, 10 evenly spaced frames, 5 per row)",
            "operationId": "downloadVideoContent",
            "parameters": [id_param("video_id"),
                {"name": "variant", "in": "query", "schema": {"enum": ["video", "thumbnail", "spritesheet", ""], "default": "video"},
                 "description": "empty = video"},
                {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["true", "false", "1", "0", ""]},
                 "description": "true: fragmented MP4 with chunked transfer, one fragment per chunk as it is decoded (also while the job runs)"},
                {"name": "Range", "in": "header", "schema": {"type": "string"}, "description": "bytes=a-b, bytes=a- or bytes=-n (video only)"}],
            "responses": {"200": binary(&["video/mp4", "image/webp", "image/jpeg"]),
                          "206": binary(&["video/mp4"]), "400": err("Unknown variant"),
                          "302": {"description": "[outputs] redirect = true: Location is a presigned URL of the file in the object store",
                                  "headers": {"Location": {"schema": {"type": "string"}}}},
                          "404": err("Unknown id or not finished"),
                          "416": err("Range not satisfiable (Content-Range: bytes */length)"),
                          "422": err("The job failed")}}),
        ("/v1/videos/{video_id}/remix", "POST") => json!({
            "summary": "OpenAI remix: the source job's resolved request (size, frames, seed, settings) with a new prompt; remixed_from_video_id is set",
            "operationId": "remixVideo", "parameters": [id_param("video_id")],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VideoCreate"}}}},
            "responses": with(create_responses(json_ok("Video")), json!({"404": err("Unknown video_id")})),
            "links": video_links()}),
        ("/v1/videos/edits" | "/v1/videos/extensions", "POST") => {
            let schema = json!({"$ref": "#/components/schemas/VideoFromVideo"});
            json!({
            "summary": match path {
                "/v1/videos/edits" => "OpenAI edit: video-to-video from `video` under a new prompt",
                _ => "OpenAI extend: video-to-video continuation of `video` for `seconds`",
            },
            "requestBody": {"required": true, "content": {
                "multipart/form-data": {"schema": schema}, "application/json": {"schema": schema}}},
            "responses": create_responses(json_ok("Video")),
            "links": video_links()})
        }
        ("/v1/videos/characters", "POST") => json!({
            "summary": "OpenAI characters: not supported (501)",
            "responses": {"501": err("Not implemented: Helios has no character conditioning")}}),
        ("/v1/videos/characters/{character_id}", "GET") => json!({
            "summary": "OpenAI characters: not supported (501)",
            "parameters": [id_param("character_id")],
            "responses": {"501": err("Not implemented: Helios has no character conditioning")}}),
        ("/video", "POST") => json!({
            "summary": "LocalAI: generate (blocks); data[0].url under /generated-videos or data[0].b64_json",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LocalAIVideo"}}}},
            "responses": create_responses(json_any("{created, id, data: [{index: 0, url | b64_json}]}"))}),
        ("/generated-videos/{file}", "GET") => {
            json!({"summary": "LocalAI: the MP4 named by a /video url",
            "parameters": [id_param("file")],
            "responses": {"200": binary(&["video/mp4"]), "206": binary(&["video/mp4"]),
                          "404": err("Unknown file"), "416": err("Range not satisfiable"), "422": err("The job failed")}})
        }
        ("/v1/images/generations", "POST") => {
            json!({"summary": "One-frame generation as PNG (blocks); n must be 1",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImageCreate"}}}},
            "responses": create_responses(json_any("{id, created, data: [{url | b64_json, revised_prompt}]}"))})
        }
        ("/v1/images/{image_id}/content", "GET") => {
            json!({"summary": "The PNG of an image generation",
            "parameters": [id_param("image_id")],
            "responses": {"200": binary(&["image/png"]), "404": err("Unknown id or not finished"), "422": err("The job failed")}})
        }
        _ => return None,
    };
    Some(op)
}

/// Links from a created `Video` to the operations that take its id (stateful testing, clients).
fn video_links() -> Value {
    let by_id = json!({"video_id": "$response.body#/id"});
    json!({"200": {
        "RetrieveVideo": {"operationId": "retrieveVideo", "parameters": by_id},
        "DeleteVideo": {"operationId": "deleteVideo", "parameters": by_id},
        "DownloadVideoContent": {"operationId": "downloadVideoContent", "parameters": by_id},
    }})
}

/// The document of the server `d` describes.
pub fn document(d: &Described) -> Value {
    let mut paths = Map::new();
    for row in ROUTES {
        let mut item = Map::new();
        for method in row.methods() {
            let mut op =
                operation(row.path, method).unwrap_or_else(|| json!({"summary": "undocumented"}));
            let secured = d.auth && row.access == Access::Key;
            op["security"] = match secured {
                true => json!([{"bearer": []}]),
                false => json!([]),
            };
            if secured {
                op["responses"]["401"] = err("Missing or wrong bearer key");
            }
            item.insert(method.to_ascii_lowercase(), op);
        }
        paths.insert(row.path.to_string(), Value::Object(item));
    }
    // Links name operations by id; the `links` of a response live under its status code.
    for (_, item) in paths.iter_mut() {
        for (_, op) in item.as_object_mut().into_iter().flatten() {
            if let Some(links) = op.as_object_mut().and_then(|o| o.remove("links")) {
                for (status, l) in links.as_object().into_iter().flatten() {
                    op["responses"][status]["links"] = l.clone();
                }
            }
        }
    }
    let mut components = json!({
        "schemas": {
            "VideoCreate": video_create_schema(d), "Video": video_schema(),
            "Error": error_schema(), "LocalAIVideo": localai_schema(d),
            "VideoFromVideo": video_from_video_schema(d),
            "ImageCreate": image_create_schema(d),
        },
    });
    if d.auth {
        components["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "omni serve", "version": env!("CARGO_PKG_VERSION"),
                 "description": "OpenAI Videos / vLLM-Omni / LocalAI compatible video generation (Helios)"},
        "components": components,
        "paths": paths,
    })
}

/// A non-blank string (the server trims it; blank is a 400); a number is taken as its text.
fn non_blank() -> Value {
    json!({"type": ["string", "number"], "minLength": 1, "pattern": "\\S"})
}

/// Text of an integer as forms send it: `" +0042 "` parses, `"1.5"` does not; an empty form
/// field is absent.
const INTEGER_TEXT: &str = "^(\\s*\\+?[0-9]{1,20}\\s*)?$";

/// An optional integer field as the body parser takes it: a JSON number or its text, `null` =
/// absent, at least `min`, at most `max` (the type's range, or a bound the server checks on
/// this field whatever other fields say). Rules that depend on other fields go in `x-` keys and
/// the description.
fn int_field(min: u64, max: u64) -> Value {
    json!({"type": ["integer", "string", "null"], "minimum": min, "maximum": max, "pattern": INTEGER_TEXT})
}

/// An optional number field (JSON number or its text; `null` = absent).
fn number_field() -> Value {
    json!({"type": ["number", "string", "null"], "pattern": "^(\\s*[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?\\s*)?$"})
}

fn with(mut v: Value, extra: Value) -> Value {
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

/// Width or height in pixels: positive at parse time; the grid and the side limits apply to
/// the resolved size (`size` beats width/height), so they are `x-` keys.
fn side(d: &Described, default: u32) -> Value {
    with(
        int_field(1, u32::MAX as u64),
        json!({"default": default,
        "x-multiple-of": d.grid, "x-maximum-long-side": d.budget.max_long_side,
        "x-maximum-short-side": d.budget.max_short_side,
        "description": format!("pixels, a multiple of {}; the longer side at most {} and the shorter at most {} (else 400 naming it); `size` beats it",
            d.grid, d.budget.max_long_side, d.budget.max_short_side)}),
    )
}

/// The per-field schemas shared by the create bodies (top-level fields: the highest layer).
fn common_fields(d: &Described) -> Map<String, Value> {
    let r = &d.defaults;
    let u32_max = u32::MAX as u64;
    let mut m = Map::new();
    m.insert("prompt".into(), non_blank());
    m.insert(
        "model".into(),
        json!({"enum": d.models, "default": d.models[0]}),
    );
    m.insert(
        "negative_prompt".into(),
        json!({"type": ["string", "number", "null"], "default": r.negative_prompt}),
    );
    m.insert("width".into(), side(d, r.width));
    m.insert("height".into(), side(d, r.height));
    m.insert("size".into(), json!({"type": ["string", "number", "null"],
        "pattern": "^(\\s*\\+?[0-9]*[1-9][0-9]*\\s*[xX]\\s*\\+?[0-9]*[1-9][0-9]*\\s*)?$",
        "x-multiple-of": d.grid,
        "description": format!("WxH in pixels (e.g. 640x384); beats width/height; each side snapped to the nearest multiple of {}, then the width/height limits apply", d.grid)}));
    m.insert(
        "num_frames".into(),
        with(
            int_field(1, d.budget.max_num_frames as u64),
            json!({"default": r.num_frames,
        "description": "frames; made in chunks of 33 and trimmed to 4k+1; beats seconds"}),
        ),
    );
    m.insert(
        "fps".into(),
        with(
            int_field(1, 240),
            json!({"default": r.fps, "description": "frames per second"}),
        ),
    );
    m.insert("seconds".into(), with(int_field(1, u32_max), json!({
        "description": format!("duration in seconds: num_frames = seconds·fps when num_frames is absent (at most {} frames, else 400 naming seconds)", d.budget.max_num_frames)})));
    m.insert(
        "seed".into(),
        with(
            int_field(0, u64::MAX),
            json!({"description": "random when absent"}),
        ),
    );
    m.insert(
        "guidance_scale".into(),
        with(
            number_field(),
            json!({"minimum": 0, "maximum": 20, "default": r.guidance_scale}),
        ),
    );
    m.insert("cfg_scale".into(), with(number_field(), json!({"description": "alias of guidance_scale (0..=20); both set to different values is a 400"})));
    if !d.pyramid {
        m.insert(
            "num_inference_steps".into(),
            with(int_field(1, 200), json!({"default": r.num_inference_steps})),
        );
        m.insert("step".into(), with(int_field(0, u64::MAX), json!({"description": "alias of num_inference_steps (1..=200); both set to different values is a 400"})));
    }
    // Wan fields: documented with their range where the checkpoint honours them; elsewhere no
    // value is valid (the server answers 400 naming the field).
    for (key, lo, hi, default, what) in [
        (
            "guidance_scale_2",
            0.0,
            20.0,
            r.guidance_scale_2,
            "guidance scale of the low-noise expert (Wan2.2 two-expert checkpoints); default: guidance_scale",
        ),
        (
            "boundary_ratio",
            0.0,
            1.0,
            r.boundary_ratio,
            "expert switch at boundary_ratio·1000 (Wan2.2 two-expert checkpoints), exclusive bounds",
        ),
        (
            "flow_shift",
            0.0,
            100.0,
            r.flow_shift,
            "the scheduler's flow shift (Wan)",
        ),
    ] {
        let schema = match d.unsupported.contains(&key) {
            true => {
                json!({"type": ["string", "null"], "maxLength": 0,
                    "description": format!("this model cannot honour `{key}`: any value is a 400 naming it (null, or an empty form value, is absent)")})
            }
            false => {
                // guidance_scale_2 takes 0..=20; boundary_ratio (0, 1) and flow_shift (0, 100]
                // exclude 0 (the server checks the same).
                let bounds = match key {
                    "guidance_scale_2" => json!({"minimum": lo, "maximum": hi}),
                    "boundary_ratio" => json!({"exclusiveMinimum": lo, "exclusiveMaximum": hi}),
                    _ => json!({"exclusiveMinimum": lo, "maximum": hi}),
                };
                let schema = with(number_field(), bounds);
                with(schema, json!({"default": default, "description": what}))
            }
        };
        m.insert(key.into(), schema);
    }
    m
}

/// `extra_params`: one schema per [`RequestPatch`] key (plain JSON types, unknown keys a 400).
/// Keys the top-level fields beat are typed only; the keys only this layer sets are bounded as
/// the server checks them, and the ones the checkpoint fixes are `const`.
fn extra_params_schema(d: &Described) -> Value {
    let r = &d.defaults;
    let as_json = serde_json::to_value(r).unwrap_or_default();
    let uint = |max: u64| json!({"type": "integer", "minimum": 0, "maximum": max});
    let mut props = Map::new();
    for key in RequestPatch::KEYS {
        if d.unsupported.contains(key) {
            // Any value is a 400 naming the key (additionalProperties is false).
            continue;
        }
        let schema = match *key {
            "prompt" | "negative_prompt" => json!({"type": "string"}),
            "width" | "height" | "num_frames" | "fps" => uint(u32::MAX as u64),
            "seed" | "num_inference_steps" if !d.pyramid || *key == "seed" => uint(u64::MAX),
            "guidance_scale" | "guidance_scale_2" | "boundary_ratio" | "flow_shift" => {
                json!({"type": "number"})
            }
            "pyramid_num_inference_steps_list" if d.pyramid => json!({"type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 200},
                "minItems": r.pyramid_num_stages, "maxItems": r.pyramid_num_stages,
                "description": "steps per pyramid stage"}),
            "num_inference_steps" | "pyramid_num_inference_steps_list" => continue,
            "is_enable_stage2" => json!({"const": r.is_enable_stage2}),
            "pyramid_num_stages" => json!({"const": r.pyramid_num_stages}),
            "keep_first_frame" => json!({"const": true}),
            "is_amplify_first_chunk"
            | "use_cfg_zero_star"
            | "use_zero_init"
            | "is_skip_first_chunk" => {
                json!({"type": "boolean"})
            }
            "history_sizes" => {
                json!({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": u64::MAX},
                "minItems": 3, "maxItems": 3,
                "description": format!("latent frames [long, mid, short]; at most {} in all (else 400)", d.budget.max_history_frames)})
            }
            "num_latent_frames_per_chunk" => json!({"type": "integer", "minimum": 1,
                "maximum": d.budget.max_latent_frames_per_chunk}),
            "max_sequence_length" => json!({"type": "integer", "minimum": 1, "maximum": 4096}),
            "zero_steps" => uint(u64::MAX),
            "lora" => lora_schema(),
            "enable_frame_interpolation" => json!({"type": "boolean"}),
            "frame_interpolation_exp" => json!({"type": "integer", "minimum": 1, "maximum": 4}),
            "frame_interpolation_scale" => json!({"enum": [0.25, 0.5, 1, 2, 4]}),
            "frame_interpolation_model_path" => json!({"type": "string"}),
            "strength" => json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
            "enable_upscale" => json!({"type": "boolean"}),
            "upscale_factor" => json!({"enum": [2, 4],
                "description": "2 or 4; absent = the upscale model's own scale"}),
            "upscale_model_path" => json!({"type": "string"}),
            other => {
                json!({"description": format!("{other}: see `omni generate --print-request`")})
            }
        };
        let schema = match as_json.get(*key) {
            Some(default) => with(nullable(schema), json!({"default": default})),
            None => nullable(schema),
        };
        props.insert(key.to_string(), schema);
    }
    json!({"type": ["object", "string", "null"], "properties": props, "additionalProperties": false,
           "description": "model knobs below the top-level fields (any key of `omni generate --print-request`; a form sends the object's JSON text); unknown keys are a 400"})
}

/// `schema` or JSON null: an `extra_params` key set to null is absent (the server reads every
/// key as optional).
fn nullable(mut v: Value) -> Value {
    let null = Value::Null;
    if let Some(t) = v.get_mut("type") {
        match t {
            Value::String(s) => *t = json!([s.clone(), "null"]),
            Value::Array(a) if !a.contains(&json!("null")) => a.push(json!("null")),
            _ => {}
        }
    } else if let Some(c) = v.as_object_mut().and_then(|o| o.remove("const")) {
        v["enum"] = json!([c, null]);
    } else if let Some(Value::Array(e)) = v.get_mut("enum") {
        e.push(null);
    } else if v.get("anyOf").is_some() || v.get("oneOf").is_some() {
        return json!({"anyOf": [v, {"type": "null"}]});
    }
    v
}

/// The `lora` field: one adapter object, a list of them, or the JSON text of either.
fn lora_schema() -> Value {
    let adapter = json!({"type": "object", "additionalProperties": false, "properties": {
        "name": {"type": "string", "description": "a `[lora] preload` name (aliases lora_name, adapter)"},
        "lora_name": {"type": "string"}, "adapter": {"type": "string"},
        "path": {"type": "string", "description": "a .safetensors file (or folder) inside the server's lora_dirs, absolute or relative to one (aliases lora_path, local_path)"},
        "lora_path": {"type": "string"}, "local_path": {"type": "string"},
        "scale": {"type": ["number", "string"], "description": "strength s of W + s·(α/r)·B·A (default 1, or the preload's); alias lora_scale"},
        "lora_scale": {"type": ["number", "string"]},
        "int_id": {"type": "integer", "minimum": 0}, "lora_int_id": {"type": "integer", "minimum": 0},
        "load_into_transformer_2": {"type": "boolean", "default": false, "description": "merge into transformer_2 (the low-noise expert of a Wan2.2 A14B checkpoint) instead of transformer, as diffusers' load_lora_weights(load_into_transformer_2=True); a 400 naming `lora` on a checkpoint without transformer_2. List an adapter twice (with and without) to adapt both experts"}}});
    json!({"oneOf": [adapter, {"type": "array", "items": adapter}, {"type": "string"}, {"type": "null"}],
        "description": "LoRA adapters merged into the transformer for this request only (diffusers/PEFT or original Wan/ComfyUI safetensors; Helios and every Wan checkpoint); several are combined. A path outside lora_dirs, an unknown name or an adapter that does not fit the model is a 400 naming `lora`"})
}

/// `VideoCreate`: the body of the create endpoints (JSON, form or multipart).
fn video_create_schema(d: &Described) -> Value {
    let mut props = common_fields(d);
    let extra = json!({
        "video_params": {"type": ["object", "string", "null"], "properties": {
            "width": int_field(1, u32::MAX as u64), "height": int_field(1, u32::MAX as u64),
            "num_frames": int_field(1, u32::MAX as u64), "fps": int_field(1, u32::MAX as u64)},
            "description": "vLLM-Omni / FastVideo: below the top-level fields"},
        "extra_params": extra_params_schema(d),
        "lora": lora_schema(),
        "enable_frame_interpolation": {"type": ["boolean", "string", "null"],
            "description": "insert RIFE frames between the decoded frames; needs the server's `[postprocess] rife_model` (--rife-model) or `frame_interpolation_model_path`, else 400 naming this field. The output fps is the resolved fps × 2^frame_interpolation_exp unless `fps` is set explicitly (request, default_request or preset); num_frames in the Video is the real (N − 1)·2^exp + 1"},
        "frame_interpolation_exp": {"type": ["integer", "string", "null"], "minimum": 1, "maximum": 4, "default": 1,
            "description": "n: 2^n − 1 frames between each pair (2x, 4x, …). This and the two below only with enable_frame_interpolation (else 400 naming the field)"},
        "frame_interpolation_scale": {"type": ["number", "string", "null"], "enum": [0.25, 0.5, 1, 2, 4, null], "default": 1,
            "description": "RIFE's inference scale (flow resolution)"},
        "frame_interpolation_model_path": {"type": ["string", "null"],
            "description": "a RIFE 4.22 lite, 4.22, 4.25 or 4.26 flownet.pkl (the version is read from its layers): the server's rife_model or a file inside its [postprocess] model_dirs"},
        "enable_upscale": {"type": ["boolean", "string", "null"],
            "description": "upscale every frame with Real-ESRGAN (tiled), after frame interpolation; needs the server's `[postprocess] upscale_model` (--upscale-model) or `upscale_model_path`, else 400 naming this field. The MP4 and the Video's `size` are the generated size × upscale_factor"},
        "upscale_factor": {"type": ["integer", "string", "null"], "enum": [2, 4, "2", "4", null],
            "description": "2 or 4: the model's own scale (the default), or 2 from a x4 model (its output averaged over 2x2 pixels); another is a 400 naming this field. Only with enable_upscale (else 400)"},
        "upscale_model_path": {"type": ["string", "null"],
            "description": "a Real-ESRGAN .pth (RRDBNet RealESRGAN_x4plus/x2plus or SRVGGNetCompact realesr-general-x4v3/animevideov3, told apart by its keys): the server's upscale_model or a file inside its [postprocess] model_dirs. Only with enable_upscale (else 400)"},
        "input_reference": {"type": "string", "format": "binary",
            "description": "image (PNG/JPEG/WebP → image-to-video) or H.264 MP4 (≥ one chunk, 33 frames → video-to-video) as a multipart file part; in JSON a data URL, base64 or {image_url}. Decoded at admission (undecodable → 400, param input_reference); stretched to the output size"},
        "image_reference": {"type": ["object", "string", "array"], "properties": {"image_url": {"type": "string"}},
            "items": {"type": ["object", "string"]}, "maxItems": 2,
            "description": "{\"image_url\": \"data:image/png;base64,...\"} (or its JSON text in a form field); plain base64 accepted; file_id is refused with 400, http(s) URLs too unless [remote_media] is enabled. FastVideo's list form [first] or [first, last]: the second item is the last frame (as end_image)"},
        "video_reference": {"type": ["object", "string"], "properties": {"video_url": {"type": "string"}},
            "description": "{\"video_url\": \"data:video/mp4;base64,...\"}: video-to-video"},
        "start_image": {"type": "string", "description": "alias of input_reference (data URL or base64)"},
        "reference_url": {"type": "string", "description": "alias of input_reference (data URL or base64; an http(s) URL only with [remote_media] enabled)"},
        "webhook_url": {"type": ["string", "null"], "format": "uri",
            "description": "where the signed video.completed / video.failed / video.cancelled event goes; its host must be in [webhooks] allow_hosts (else 400); default [webhooks] url; a 400 on /v1/videos/sync (it answers the MP4 itself)"},
    });
    props.extend(extra.as_object().cloned().unwrap_or_default());
    props.insert("end_image".into(), d.end_image());
    json!({
        "type": "object", "required": ["prompt"], "properties": props,
        "description": "At most one of input_reference, image_reference, video_reference, start_image, reference_url (else 400 naming the second), and at most one last frame, end_image or image_reference[1]. An image-to-video checkpoint takes an image and a video-to-video one a video (the other kind is a 400 naming the field at admission). Other unknown fields are ignored."
    })
}

/// `ImageCreate`: the body of `POST /v1/images/generations`.
fn image_create_schema(d: &Described) -> Value {
    let c = common_fields(d);
    json!({"type": "object", "required": ["prompt"], "properties": {
        "prompt": c["prompt"], "model": c["model"], "size": c["size"], "n": {"enum": [1, "1", null]},
        "seed": c["seed"], "negative_prompt": c["negative_prompt"],
        "response_format": {"enum": ["url", "b64_json", "", null]}}})
}

/// `Video`: the job object.
fn video_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "string"}, "object": {"const": "video"}, "model": {"type": "string"},
            "status": {"enum": ["queued", "in_progress", "completed", "failed"]},
            "progress": {"type": "integer"}, "created_at": {"type": "integer"},
            "completed_at": {"type": ["integer", "null"]}, "expires_at": {"type": ["integer", "null"]},
            "started_at": {"type": ["integer", "null"]},
            "prompt": {"type": "string"}, "seconds": {"type": "string"},
            "size": {"type": "string", "description": "WIDTHxHEIGHT of the video file: the generated size × upscale_factor with enable_upscale"},
            "quality": {"type": "string"}, "media_type": {"type": "string"},
            "remixed_from_video_id": {"type": ["string", "null"]},
            "error": {"type": ["object", "null"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
            "file_name": {"type": ["string", "null"]}, "inference_time_s": {"type": ["number", "null"]},
            "stage_durations": {"type": "object", "additionalProperties": {"type": "number"},
                "description": "wall seconds per phase: text_encoder, denoise, vae_decode, output"},
            "peak_memory_mb": {"type": ["number", "null"], "description": "peak memory of the job, MiB: GPU memory in use (CubeCL allocator, sampled at phase ends) on CUDA, else the server process's peak resident memory"},
            "fps": {"type": "integer"}, "num_frames": {"type": "integer"},
        }
    })
}

/// `VideoFromVideo`: the body of `/v1/videos/edits` and `/v1/videos/extensions`.
fn video_from_video_schema(d: &Described) -> Value {
    let c = common_fields(d);
    json!({"type": "object", "required": ["prompt", "video"], "properties": {
        "prompt": c["prompt"], "model": c["model"], "seconds": c["seconds"], "seed": c["seed"],
        "size": c["size"], "negative_prompt": c["negative_prompt"],
        "video": {"type": ["object", "string"], "format": "binary",
            "properties": {"id": {"type": "string"}},
            "description": "an H.264 MP4 (multipart file part, data URL or base64; ≥ 33 frames) or {\"id\": \"video_…\"} of a completed video here (its request is the layer under the body)"},
        "webhook_url": {"type": ["string", "null"], "format": "uri"}}})
}

/// `Error`: the OpenAI error envelope.
fn error_schema() -> Value {
    json!({
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}
    })
}

/// `LocalAIVideo`: the body of LocalAI's `POST /video`.
fn localai_schema(d: &Described) -> Value {
    let c = common_fields(d);
    let mut props = Map::new();
    for k in [
        "model",
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "num_frames",
        "fps",
        "seconds",
        "size",
        "seed",
        "cfg_scale",
    ] {
        props.insert(k.into(), c[k].clone());
    }
    if let Some(step) = c.get("step") {
        props.insert("step".into(), step.clone());
    }
    props.insert("start_image".into(), json!({"type": "string", "description": "first frame (image-to-video) or an MP4 (video-to-video) as a data URL or base64; http(s) URLs are refused (400)"}));
    props.insert("end_image".into(), d.end_image());
    props.insert(
        "input_reference".into(),
        json!({"type": "string", "description": "alias of start_image"}),
    );
    props.insert(
        "response_format".into(),
        json!({"enum": ["url", "b64_json", "", null]}),
    );
    json!({"type": "object", "required": ["prompt"], "properties": props})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::request::ModelDefaults;

    fn described(auth: bool) -> Described {
        let defaults = ModelDefaults::helios_distilled();
        Described {
            auth,
            models: vec!["m".into()],
            pyramid: defaults.is_enable_stage2,
            grid: 64,
            defaults: defaults.request.clone(),
            budget: WorkBudget::default(),
            unsupported: defaults.unsupported.clone(),
            takes_last_image: false,
        }
    }

    /// Every row and method of the route table is documented, and nothing else.
    #[test]
    fn document_matches_route_table() {
        let d = described(false);
        let doc = document(&d);
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ROUTES.len());
        for row in ROUTES {
            let item = paths[row.path].as_object().unwrap();
            assert_eq!(item.len(), row.methods().count(), "{}", row.path);
            for m in row.methods() {
                assert!(
                    operation(row.path, m).is_some(),
                    "{m} {} undocumented",
                    row.path
                );
                assert!(item.contains_key(&m.to_ascii_lowercase()));
            }
        }
    }

    /// Auth and 401 appear exactly when keys are set, and only on key routes.
    #[test]
    fn auth_only_with_keys() {
        for auth in [false, true] {
            let doc = document(&described(auth));
            assert_eq!(doc["components"].get("securitySchemes").is_some(), auth);
            for row in ROUTES {
                for m in row.methods() {
                    let op = &doc["paths"][row.path][m.to_ascii_lowercase()];
                    let secured = auth && row.access == Access::Key;
                    assert_eq!(op["security"].as_array().unwrap().is_empty(), !secured);
                    assert_eq!(
                        op["responses"].get("401").is_some(),
                        secured,
                        "{m} {}",
                        row.path
                    );
                }
            }
        }
    }

    /// `extra_params` documents every request key the checkpoint takes.
    #[test]
    fn extra_params_cover_request_keys() {
        let d = described(false);
        let s = extra_params_schema(&d);
        let props = s["properties"].as_object().unwrap();
        for k in RequestPatch::KEYS {
            let skipped = d.unsupported.contains(k)
                || match d.pyramid {
                    true => *k == "num_inference_steps",
                    false => *k == "pyramid_num_inference_steps_list",
                };
            assert_eq!(props.contains_key(*k), !skipped, "{k}");
            assert!(
                props.get(*k).is_none_or(|p| p
                    .get("description")
                    .is_none_or(|t| !t.as_str().unwrap().contains("see `omni"))),
                "{k} has no schema"
            );
        }
    }
}

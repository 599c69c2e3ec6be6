//! `GET /openapi.json`: a hand-written OpenAPI 3.1 description of every endpoint.

use serde_json::{Value, json};

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
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

/// The responses of the three create endpoints: `ok`, or an error envelope.
fn create_errors(ok: Value) -> Value {
    json!({
        "200": ok,
        "400": err("A bad field (`param` names it; over the work budget too) or a model mismatch"),
        "401": err("Missing or wrong bearer key (when api_keys are set)"),
        "405": err("Another method (the Allow header lists the right ones)"),
        "413": err("Body over max_body_bytes, or a reference file over max_upload_bytes (`param` names it)"),
        "415": err("Unsupported content type"),
        "429": err("Job queue full (Retry-After)"),
        "507": err("The job could not be stored; nothing was queued"),
    })
}

fn binary(content_type: &str) -> Value {
    json!({"description": "OK", "content": {content_type: {"schema": {"type": "string", "format": "binary"}}}})
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "omni serve", "version": env!("CARGO_PKG_VERSION"),
                 "description": "OpenAI Videos / vLLM-Omni / LocalAI compatible video generation (Helios)"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "VideoCreate": video_create_schema(), "Video": video_schema(),
                "Error": error_schema(), "LocalAIVideo": localai_schema(),
            },
        },
        "security": [{"bearer": []}],
        "paths": paths(),
    })
}

/// `VideoCreate`: the body of the create endpoints (JSON, form or multipart).
fn video_create_schema() -> Value {
    json!({
        "type": "object", "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string"}, "model": {"type": "string"},
            "negative_prompt": {"type": "string"},
            "seconds": {"type": ["string", "integer"], "description": "num_frames = seconds·fps when num_frames is absent"},
            "size": {"type": "string", "description": "WxH; beats width/height; snapped to the model's pixel grid"},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "num_frames": {"type": "integer"}, "fps": {"type": "integer"},
            "seed": {"type": "integer"},
            "guidance_scale": {"type": "number", "minimum": 0, "maximum": 20},
            "cfg_scale": {"type": "number", "description": "alias of guidance_scale"},
            "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 200},
            "step": {"type": "integer", "description": "alias of num_inference_steps"},
            "video_params": {"type": "object"},
            "extra_params": {"type": "object", "description": "any key of `omni generate --print-request`"},
            "input_reference": {"type": "string", "format": "binary",
                "description": "image (PNG/JPEG/WebP → image-to-video) or H.264 MP4 (≥ one chunk, 33 frames → video-to-video) as a multipart file part; in JSON a data URL, base64 or {image_url}. Decoded at admission (undecodable → 400, param input_reference); stretched to the output size"},
            "image_reference": {"type": ["object", "string"], "properties": {"image_url": {"type": "string"}},
                "description": "{\"image_url\": \"data:image/png;base64,...\"} (or its JSON text in a form field); plain base64 accepted; file_id and http(s) URLs are refused with 400"},
            "video_reference": {"type": ["object", "string"], "properties": {"video_url": {"type": "string"}},
                "description": "{\"video_url\": \"data:video/mp4;base64,...\"}: video-to-video"},
            "start_image": {"type": "string", "description": "alias of input_reference (data URL or base64)"},
            "reference_url": {"type": "string", "description": "alias of input_reference (data URL or base64; remote URLs refused)"},
        },
        "description": "At most one of input_reference, image_reference, video_reference, start_image, reference_url (else 400 naming the second)."
    })
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
            "prompt": {"type": "string"}, "seconds": {"type": "string"}, "size": {"type": "string"},
            "remixed_from_video_id": {"type": "null"},
            "error": {"type": ["object", "null"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
            "file_name": {"type": ["string", "null"]}, "inference_time_s": {"type": ["number", "null"]},
            "stage_durations": {"type": "object", "additionalProperties": {"type": "number"},
                "description": "wall seconds per phase: text_encoder, denoise, vae_decode, output"},
            "peak_memory_mb": {"type": ["number", "null"], "description": "peak memory of the job, MiB: GPU memory in use (CubeCL allocator, sampled at phase ends) on CUDA, else the server process's peak resident memory"},
            "fps": {"type": "integer"}, "num_frames": {"type": "integer"},
        }
    })
}

/// `Error`: the OpenAI error envelope.
fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"error": {"type": "object", "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": "string"}}}}
    })
}

/// `LocalAIVideo`: the body of LocalAI's `POST /video`.
fn localai_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "model": {"type": "string"}, "prompt": {"type": "string"},
            "negative_prompt": {"type": "string"},
            "start_image": {"type": "string", "description": "first frame (image-to-video) or an MP4 (video-to-video) as a data URL or base64; http(s) URLs are refused (400)"},
            "end_image": {"type": "string", "description": "refused (400): last-frame conditioning is not supported"},
            "input_reference": {"type": "string", "description": "alias of start_image"},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "num_frames": {"type": "integer"}, "fps": {"type": "integer"},
            "seconds": {"type": "string"}, "size": {"type": "string"}, "seed": {"type": "integer"},
            "cfg_scale": {"type": "number"}, "step": {"type": "integer"},
            "response_format": {"enum": ["url", "b64_json"]},
        }
    })
}

/// Every endpoint.
fn paths() -> Value {
    json!({
        "/v1/videos": {
            "post": {"summary": "Create a video job (answers at once, status queued)",
                     "requestBody": create_body(), "responses": create_errors(json_ok("Video"))},
            "get": {"summary": "List video jobs",
                    "parameters": [
                        {"name": "after", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 100}},
                        {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"], "default": "desc"}}],
                    "responses": {"200": {"description": "{object: list, data, first_id, last_id, has_more}"}, "400": err("Bad paging parameter")}},
        },
        "/v1/videos/sync": {"post": {"summary": "Generate and answer the MP4 (X-Request-Id, X-Model, X-Inference-Time-S)",
            "requestBody": create_body(), "responses": create_errors(binary("video/mp4"))}},
        "/v1/videos/generations": {"post": {"summary": "Create and block until the job ends (?wait=false: at once)",
            "requestBody": create_body(), "responses": create_errors(json_ok("Video"))}},
        "/v1/videos/{video_id}": {
            "parameters": [id_param("video_id")],
            "get": {"summary": "Retrieve (200 also for failed jobs; openai-poll-after-ms while running)",
                    "responses": {"200": json_ok("Video"), "404": err("Unknown id")}},
            "delete": {"summary": "Delete (cancels a running job) with its files",
                       "responses": {"200": {"description": "{id, deleted: true, object: video.deleted}"}, "404": err("Unknown id")}},
        },
        "/v1/videos/{video_id}/content": {"get": {
            "summary": "Download: variant=video (MP4, Range), thumbnail (WebP, middle frame), spritesheet (JPEG, 10 evenly spaced frames, 5 per row)",
            "parameters": [id_param("video_id"), {"name": "variant", "in": "query", "schema": {"enum": ["video", "thumbnail", "spritesheet"], "default": "video"}}],
            "responses": {"200": binary("video/mp4"), "206": binary("video/mp4"), "400": err("Unknown variant"),
                          "404": err("Unknown id or not finished"), "416": err("Range not satisfiable (Content-Range: bytes */length)"),
                          "422": err("The job failed")}}},
        "/video": {"post": {"summary": "LocalAI: generate (blocks); data[0].url under /generated-videos or data[0].b64_json",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LocalAIVideo"}}}},
            "responses": {"200": {"description": "{created, id, data: [{index: 0, url | b64_json}]}"}, "400": err("Bad field, undecodable start_image, or end_image"), "500": err("Generation failed")}}},
        "/generated-videos/{file}": {"get": {"summary": "LocalAI: the MP4 named by a /video url",
            "parameters": [id_param("file")], "responses": {"200": binary("video/mp4"), "404": err("Unknown file")}}},
        "/v1/images/generations": {"post": {"summary": "One-frame generation as PNG (blocks); n must be 1",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["prompt"],
                "properties": {"prompt": {"type": "string"}, "model": {"type": "string"}, "size": {"type": "string"}, "n": {"const": 1},
                               "seed": {"type": "integer"}, "negative_prompt": {"type": "string"},
                               "response_format": {"enum": ["url", "b64_json"]}}}}}},
            "responses": {"200": {"description": "{id, created, data: [{url | b64_json, revised_prompt}]}"}, "400": err("Bad field"), "500": err("Generation failed")}}},
        "/v1/images/{image_id}/content": {"get": {"summary": "The PNG of an image generation",
            "parameters": [id_param("image_id")], "responses": {"200": binary("image/png"), "404": err("Unknown id")}}},
        "/v1/models": {"get": {"summary": "The served model and its aliases", "responses": {"200": {"description": "{object: list, data: [model]}"}}}},
        "/v1/models/{model}": {"get": {"summary": "One model card", "parameters": [id_param("model")],
            "responses": {"200": {"description": "model"}, "404": err("Unknown model")}}},
        "/health": {"get": {"summary": "Liveness (never needs a key)", "security": [], "responses": {"200": {"description": "{status: ok}"}}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "{status: ok}"}}}},
        "/readyz": {"get": {"summary": "503 until the model is loaded", "security": [], "responses": {"200": {"description": "{status: ready}"}, "503": err("Loading")}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/": {"get": {"summary": "The web page (HTML; holds no data, never needs a key)", "security": [], "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    })
}

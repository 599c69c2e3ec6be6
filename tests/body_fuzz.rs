//! Property test of the request-body path (issue 9, "a property/fuzz test of the body parser"):
//! whatever bytes arrive as JSON, urlencoded or multipart, `body::parse` and then `create::admit`
//! (typed body, references, one resolve, the work budget) answer `Ok` or a 4xx `ApiError`; they
//! never panic and never answer 5xx. Bounded: 10 000 cases per shape (well under a second each in
//! release), so CI runs it with the rest of `cargo test --release`.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use omni::pipeline::request::{ModelDefaults, RequestPatch, WorkBudget};
use omni::serve::body;
use omni::serve::create::{AdmitContext, admit};

/// Field names the parser and admission look at, and some they do not.
const NAMES: &[&str] = &[
    "prompt",
    "model",
    "size",
    "width",
    "height",
    "num_frames",
    "fps",
    "seconds",
    "seed",
    "guidance_scale",
    "cfg_scale",
    "num_inference_steps",
    "step",
    "extra_params",
    "video_params",
    "input_reference",
    "image_reference",
    "video_reference",
    "start_image",
    "reference_url",
    "end_image",
    "negative_prompt",
    "extra_params[seed]",
    "extra_params[history_sizes][]",
    "image_reference[image_url]",
    "n",
    "x",
];

fn check(content_type: &str, bytes: Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let parsed = rt.block_on(body::parse(Some(content_type), Bytes::from(bytes)));
    let fields = match parsed {
        Ok(f) => f,
        Err(e) => {
            assert!(e.status().is_client_error(), "parse: {e:?}");
            return;
        }
    };
    let defaults = ModelDefaults::helios_distilled();
    let lower = [RequestPatch::default()];
    let cx = AdmitContext {
        served: "tiny",
        serves: &|n| n == "tiny",
        lower_layers: &lower,
        defaults: &defaults,
        budget: &WorkBudget::default(),
        max_upload_bytes: 1 << 16,
        lora: &Default::default(),
        postprocess: &Default::default(),
    };
    if let Err(e) = admit(&fields, &cx) {
        assert!(e.status().is_client_error(), "admit: {e:?}");
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        Just(json!("128x64")),
        Just(json!("data:image/png;base64,iVBORw0KGgo=")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(NAMES), inner), 0..4).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn pairs() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop::sample::select(NAMES),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..24),
                "[0-9]{1,12}".prop_map(String::into_bytes),
                "[ -~]{0,16}".prop_map(String::into_bytes),
            ],
        ),
        0..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn json_bodies(fields in prop::collection::vec((prop::sample::select(NAMES), json_value()), 0..8)) {
        let map: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        check("application/json", Value::Object(map).to_string().into_bytes());
    }

    #[test]
    fn raw_bytes_in_every_content_type(
        ct in prop::sample::select(vec![
            "application/json", "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=B0undary", "multipart/form-data", "", "text/plain",
        ]),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        check(ct, bytes);
    }

    #[test]
    fn urlencoded_bodies(pairs in pairs()) {
        let mut body = Vec::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                body.push(b'&');
            }
            body.extend(k.as_bytes());
            body.push(b'=');
            for b in v {
                body.extend(format!("%{b:02X}").as_bytes());
            }
        }
        check("application/x-www-form-urlencoded", body);
    }

    #[test]
    fn multipart_bodies(pairs in pairs(), file in any::<bool>(), truncate in 0usize..64) {
        let mut body = Vec::new();
        for (k, v) in &pairs {
            body.extend(b"--B0undary\r\nContent-Disposition: form-data; name=\"");
            body.extend(k.as_bytes());
            body.push(b'"');
            if file {
                body.extend(b"; filename=\"f.png\"\r\nContent-Type: image/png");
            }
            body.extend(b"\r\n\r\n");
            body.extend(v);
            body.extend(b"\r\n");
        }
        body.extend(b"--B0undary--\r\n");
        let keep = body.len().saturating_sub(truncate);
        body.truncate(keep);
        check("multipart/form-data; boundary=B0undary", body);
    }
}

//! The shipped presets `presets/helios-{base,mid,distilled}.toml` are well-formed: every top-level
//! key is a request key (it deserializes into `RequestPatch` on its own, with the right type),
//! `[model]` names the Hugging Face weights, and the values are the upstream defaults.

use std::path::Path;

use omni::pipeline::request::RequestPatch;
use serde::Deserialize;

fn load(name: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("presets")
        .join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Splits off `[model]`, checks every other key and returns the `RequestPatch` of the keys it
/// knows.
fn check(name: &str, hf_id: &str, pipeline: &str) -> (toml::Table, RequestPatch) {
    let mut table = load(name);
    let model = table
        .remove("model")
        .and_then(|m| m.as_table().cloned())
        .unwrap_or_else(|| panic!("{name}: no [model] table"));
    assert_eq!(model.get("hf_id").and_then(|v| v.as_str()), Some(hf_id));
    assert_eq!(
        model.get("pipeline").and_then(|v| v.as_str()),
        Some(pipeline)
    );
    assert_eq!(
        model.len(),
        2,
        "{name}: [model] keys {:?}",
        model.keys().collect::<Vec<_>>()
    );

    for (key, value) in &table {
        let mut single = toml::Table::new();
        single.insert(key.clone(), value.clone());
        if let Err(e) = RequestPatch::deserialize(single) {
            panic!("{name}: `{key}` is not a RequestPatch field of the right type: {e}");
        }
    }
    let patch = RequestPatch::deserialize(table.clone()).expect("the keys form a RequestPatch");
    // The embedded copy the binary uses is the same file.
    assert_eq!(
        omni::pipeline::request::Preset::builtin(name)
            .unwrap()
            .patch,
        patch
    );
    (table, patch)
}

#[test]
fn helios_base_preset_holds_the_upstream_defaults() {
    let (t, p) = check("helios-base", "BestWishYsh/Helios-Base", "HeliosPipeline");
    assert_eq!(
        (p.width, p.height, p.num_frames, p.fps),
        (Some(640), Some(384), Some(132), Some(24))
    );
    assert_eq!(p.guidance_scale, Some(5.0));
    assert_eq!(p.num_inference_steps, Some(50));
    assert_eq!(t["num_inference_steps"].as_integer(), Some(50));
    assert_eq!(p.history_sizes, Some(vec![16, 2, 1]));
    assert!(!t.contains_key("pyramid_num_inference_steps_list"));
}

#[test]
fn helios_mid_preset_holds_the_upstream_defaults() {
    let (t, p) = check(
        "helios-mid",
        "BestWishYsh/Helios-Mid",
        "HeliosPyramidPipeline",
    );
    assert_eq!((p.width, p.height, p.fps), (Some(640), Some(384), Some(24)));
    assert_eq!(p.pyramid_num_inference_steps_list, Some(vec![20, 20, 20]));
    assert_eq!(p.guidance_scale, Some(5.0));
    assert_eq!(p.is_amplify_first_chunk, Some(false));
    assert_eq!(t["use_cfg_zero_star"].as_bool(), Some(true));
    assert_eq!(
        (p.use_cfg_zero_star, p.use_zero_init, p.zero_steps),
        (Some(true), Some(true), Some(1))
    );
}

#[test]
fn helios_distilled_preset_holds_the_upstream_defaults() {
    let (t, p) = check(
        "helios-distilled",
        "BestWishYsh/Helios-Distilled",
        "HeliosPyramidPipeline",
    );
    assert_eq!((p.width, p.height, p.fps), (Some(640), Some(384), Some(24)));
    assert_eq!(p.pyramid_num_inference_steps_list, Some(vec![2, 2, 2]));
    assert_eq!(p.guidance_scale, Some(1.0));
    assert_eq!(p.is_amplify_first_chunk, Some(true));
    assert!(!t.contains_key("use_cfg_zero_star"));
}

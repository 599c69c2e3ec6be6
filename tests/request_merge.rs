//! One request, one merge: precedence of the layers (flags > `--extra-params` > preset >
//! checkpoint defaults), the Helios knobs of issue 3 item 6, the per-variant defaults, presets
//! and the `extra_params` errors.

use std::collections::BTreeSet;

use omni::pipeline::request::{ModelDefaults, Preset, RequestPatch, resolve};

fn prompt() -> RequestPatch {
    RequestPatch {
        prompt: Some("a cat".into()),
        ..Default::default()
    }
}

#[test]
fn keys_list_every_patch_field() {
    let json = serde_json::to_value(RequestPatch::default()).unwrap();
    let fields: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let keys: BTreeSet<&str> = RequestPatch::KEYS.iter().copied().collect();
    assert_eq!(fields, keys);
}

#[test]
fn flags_beat_extra_params_beat_preset_beat_defaults() {
    let preset = Preset::builtin("helios-mid").unwrap();
    let extra =
        RequestPatch::from_extra_params(r#"{"zero_steps": 0, "guidance_scale": 4.0}"#).unwrap();
    let flags = RequestPatch {
        guidance_scale: Some(3.0),
        width: Some(128),
        ..prompt()
    };
    let r = resolve(&[flags, extra, preset.patch], &ModelDefaults::helios_mid()).unwrap();
    assert_eq!(r.guidance_scale, 3.0, "flag beats extra_params");
    assert_eq!(r.zero_steps, 0, "extra_params beat the preset");
    assert_eq!(r.width, 128);
    assert_eq!(r.height, 384, "preset value");
    assert_eq!(r.pyramid_num_inference_steps_list, vec![20, 20, 20]);
    assert!(r.use_cfg_zero_star && r.use_zero_init);
    assert_eq!(r.max_sequence_length, 512);
}

#[test]
fn variant_defaults() {
    let base = resolve(&[prompt()], &ModelDefaults::helios_base()).unwrap();
    assert_eq!((base.num_inference_steps, base.guidance_scale), (50, 5.0));
    assert!(!base.is_enable_stage2 && !base.use_cfg_zero_star);
    assert_eq!(base.pyramid_num_stages, 1);

    let mid = resolve(&[prompt()], &ModelDefaults::helios_mid()).unwrap();
    assert_eq!(mid.pyramid_num_inference_steps_list, vec![20, 20, 20]);
    assert_eq!(mid.guidance_scale, 5.0);
    assert!(mid.use_cfg_zero_star && mid.use_zero_init && !mid.is_amplify_first_chunk);
    assert_eq!(mid.zero_steps, 1);

    let d = resolve(&[prompt()], &ModelDefaults::helios_distilled()).unwrap();
    assert_eq!(d.pyramid_num_inference_steps_list, vec![2, 2, 2]);
    assert_eq!(d.guidance_scale, 1.0);
    assert!(d.is_amplify_first_chunk && !d.use_cfg_zero_star);
    assert!(d.keep_first_frame && !d.is_skip_first_chunk);
}

#[test]
fn base_sizes_need_multiples_of_16_only() {
    let p = RequestPatch {
        width: Some(144),
        height: Some(80),
        ..prompt()
    };
    resolve(std::slice::from_ref(&p), &ModelDefaults::helios_base()).unwrap();
    let e = resolve(&[p], &ModelDefaults::helios_mid()).unwrap_err();
    assert_eq!(e.param, "width");
}

#[test]
fn unknown_extra_param_lists_the_valid_keys() {
    let e = RequestPatch::from_extra_params(r#"{"zero_stepz": 1}"#).unwrap_err();
    assert_eq!(e.param, "extra_params");
    assert!(e.message.contains("zero_stepz"), "{e}");
    assert!(e.message.contains("valid keys: prompt,"), "{e}");
    assert!(e.message.contains("is_skip_first_chunk"), "{e}");
}

#[test]
fn wrong_type_extra_param_lists_the_valid_keys() {
    let e = RequestPatch::from_extra_params(r#"{"use_zero_init": "yes"}"#).unwrap_err();
    assert_eq!(e.param, "extra_params");
    assert!(e.message.contains("invalid type"), "{e}");
    assert!(e.message.contains("valid keys:"), "{e}");
}

#[test]
fn extra_params_must_be_a_json_object() {
    for (text, what) in [
        ("[1, 2]", "an array"),
        ("3", "a number"),
        ("nope", "not valid JSON"),
    ] {
        let e = RequestPatch::from_extra_params(text).unwrap_err();
        assert_eq!(e.param, "extra_params");
        assert!(e.message.contains(what), "{text}: {e}");
    }
    let all = RequestPatch::from_extra_params(
        r#"{"is_enable_stage2": true, "pyramid_num_stages": 3,
            "pyramid_num_inference_steps_list": [4, 4, 4], "use_cfg_zero_star": true,
            "use_zero_init": false, "zero_steps": 0, "is_amplify_first_chunk": false,
            "history_sizes": [16, 2, 1], "num_latent_frames_per_chunk": 9,
            "keep_first_frame": true, "is_skip_first_chunk": true}"#,
    )
    .unwrap();
    let r = resolve(&[prompt(), all], &ModelDefaults::helios_distilled()).unwrap();
    assert_eq!(r.pyramid_num_inference_steps_list, vec![4, 4, 4]);
    assert!(r.use_cfg_zero_star && !r.use_zero_init && r.is_skip_first_chunk);
}

#[test]
fn knobs_that_do_not_fit_the_checkpoint_are_errors() {
    let cases = [
        (r#"{"is_enable_stage2": false}"#, "is_enable_stage2"),
        (r#"{"pyramid_num_stages": 2}"#, "pyramid_num_stages"),
        (r#"{"keep_first_frame": false}"#, "keep_first_frame"),
        (r#"{"num_inference_steps": 0}"#, "num_inference_steps"),
    ];
    for (text, param) in cases {
        let extra = RequestPatch::from_extra_params(text).unwrap();
        let e = resolve(&[prompt(), extra], &ModelDefaults::helios_mid()).unwrap_err();
        assert_eq!(e.param, param, "{text}: {e}");
    }
    let stage2 = RequestPatch::from_extra_params(r#"{"is_enable_stage2": true}"#).unwrap();
    let e = resolve(&[prompt(), stage2], &ModelDefaults::helios_base()).unwrap_err();
    assert_eq!(e.param, "is_enable_stage2");
}

#[test]
fn builtin_presets_parse_and_bad_presets_are_errors() {
    for name in Preset::builtin_names() {
        let p = Preset::builtin(name).unwrap();
        let hf_id = p.model.hf_id.unwrap();
        let org = match name.starts_with("wan") {
            true => "Wan-AI/Wan2.",
            false => "BestWishYsh/Helios-",
        };
        assert!(hf_id.starts_with(org), "{name}: {hf_id}");
    }
    assert!(Preset::builtin("helios-large").is_none());
    let e = Preset::parse("widht = 3").unwrap_err();
    assert_eq!(e.param, "preset");
    assert!(
        e.message.contains("widht") && e.message.contains("valid keys"),
        "{e}"
    );
    let e = Preset::parse("[model]\nrepo = \"x\"").unwrap_err();
    assert!(e.message.contains("repo"), "{e}");
    let e = Preset::parse("width = \"wide\"").unwrap_err();
    assert!(e.message.contains("valid keys"), "{e}");
}

//! Per-request LoRA: whole-pipeline parity with diffusers' `load_lora_weights` + `set_adapters`
//! (fixtures made by `tests/fixtures/make_lora.py`: a PEFT adapter with alpha metadata, a PEFT
//! adapter with biases and no metadata, and an original Wan/ComfyUI-named adapter converted by
//! diffusers), the bit-exact restore, job isolation, and the errors naming adapter and key; the
//! same for the Wan family (T2V, two experts with `load_into_transformer_2`, I2V image keys).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use common::{
    Collect, MIN_PSNR_DB, Reference, TestBackend, distilled_request, psnr, tiny_distilled,
};
use omni::pipeline::generator::{Generator, GeneratorOptions, LoadPolicy, RunContext};
use omni::pipeline::lora::{self, LoraAdapter, LoraError, LoraSpec, Loras};
use omni::pipeline::models::transformer_helios::{
    self, HeliosTransformer3DModel, HeliosTransformer3DModelConfig,
};
use omni::pipeline::models::transformer_wan::{self, WanTransformer3DModel};
use omni::pipeline::noise::FileNoise;
use omni::pipeline::progress::{CancelToken, NoProgress};

fn spec(rel: &str, scale: f64) -> LoraSpec {
    LoraSpec {
        name: Some(rel.into()),
        path: Some(common::fixture(rel).display().to_string()),
        scale: Some(scale),
        int_id: None,
        load_into_transformer_2: false,
    }
}

/// One Distilled run of the tiny checkpoint with diffusers' draws and `loras`; the frames in
/// [0, 1].
fn run(generator: &mut Generator, loras: Vec<LoraSpec>) -> Vec<f32> {
    let mut req = distilled_request();
    req.lora = Loras(loras);
    let mut noise =
        FileNoise::open(&common::fixture("reference/pipeline_distilled.safetensors")).unwrap();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let n = generator.generate(&req, &mut ctx, &mut sink).unwrap();
    assert_eq!(n, 65);
    sink.0.iter().flat_map(|f| f.data.iter().copied()).collect()
}

/// Three consecutive jobs on one loaded generator: adapter "a"; adapters "b" + "w" (original
/// Wan naming); none. Each matches its own diffusers run, so no job sees another's weights.
#[test]
fn lora_jobs_match_diffusers_and_never_see_each_others_weights() {
    let mut generator = Generator::open(
        &tiny_distilled(),
        GeneratorOptions {
            load: LoadPolicy::KeepAll,
            vae_dtype: None,
            ..Default::default()
        },
        &mut NoProgress,
    )
    .unwrap();
    let lora_ref = Reference::open("pipeline_lora.safetensors");
    let plain_ref = Reference::open("pipeline_distilled.safetensors");
    let jobs: [(&str, Vec<LoraSpec>, &Reference, &str); 4] = [
        (
            "a @ 0.75 (PEFT, alpha from metadata)",
            vec![spec("lora/peft_a", 0.75)],
            &lora_ref,
            "frames_a",
        ),
        (
            "b @ 1.5 + w @ 1.0 (PEFT with biases; original Wan naming)",
            vec![
                spec("lora/peft_b/pytorch_lora_weights.safetensors", 1.5),
                spec("lora/wan_orig.safetensors", 1.0),
            ],
            &lora_ref,
            "frames_bw",
        ),
        ("no adapter", vec![], &plain_ref, "frames"),
        (
            "a @ 0.75 again (cached)",
            vec![spec("lora/peft_a", 0.75)],
            &lora_ref,
            "frames_a",
        ),
    ];
    for (what, loras, reference, name) in jobs {
        let got = run(&mut generator, loras);
        let (shape, want) = reference.frames01(name);
        assert_eq!(shape, vec![1, 65, 64, 128, 3]);
        let db = psnr(&got, &want);
        eprintln!("{what}: PSNR vs diffusers {db:.2} dB");
        assert!(
            db >= MIN_PSNR_DB,
            "{what}: PSNR {db:.2} dB < {MIN_PSNR_DB} dB"
        );
    }
}

/// Every float parameter's bytes by path.
fn snapshot<B: Backend, M: Module<B>>(m: &M) -> BTreeMap<String, Vec<u8>> {
    struct Snap {
        path: Vec<String>,
        out: BTreeMap<String, Vec<u8>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Snap {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.out
                .insert(self.path.join("."), p.val().into_data().bytes.to_vec());
        }
    }
    let mut s = Snap {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    m.visit(&mut s);
    s.out
}

fn tiny_transformer() -> HeliosTransformer3DModel<TestBackend> {
    HeliosTransformer3DModel::load(&tiny_distilled().join("transformer"), &Default::default())
        .unwrap()
}

fn adapter(rel: &str) -> Arc<LoraAdapter> {
    Arc::new(LoraAdapter::read(&common::fixture(rel), rel).unwrap())
}

/// Merge `adapters` into `t`, check that exactly the parameters the merge reports changed and
/// that the restore gives back every parameter bit-exactly; returns the changed Burn paths.
fn merge_and_restore<M: Module<TestBackend>>(
    t: M,
    adapters: &[(Arc<LoraAdapter>, f64)],
    unmap: fn(&str) -> String,
    remap: fn(&str) -> String,
) -> Vec<String> {
    let before = snapshot(&t);
    let (merged, originals) = lora::merge(t, adapters, unmap, remap, &Default::default()).unwrap();
    let during = snapshot(&merged);
    let changed: Vec<String> = before
        .keys()
        .filter(|k| before[*k] != during[*k])
        .cloned()
        .collect();
    assert_eq!(changed.len(), originals.len(), "{changed:?}");
    let after = snapshot(&originals.restore(merged));
    assert_eq!(before.len(), after.len());
    for (k, v) in &before {
        assert!(after[k] == *v, "{k} not restored bit-exactly");
    }
    changed
}

#[test]
fn restore_is_bit_exact_and_merge_changes_only_targeted_weights() {
    let adapters = vec![
        (adapter("lora/peft_a"), 0.75),
        (adapter("lora/peft_b"), 1.5),
        (adapter("lora/wan_orig.safetensors"), 1.0),
    ];
    let changed = merge_and_restore(
        tiny_transformer(),
        &adapters,
        transformer_helios::diffusers_module_path,
        transformer_helios::burn_param_path,
    );
    for k in [
        "blocks.0.attn1.to_out.weight",
        "blocks.1.ffn.net_0_proj.weight",
        "proj_out.bias", // diff_b / lora_B.bias merged
    ] {
        assert!(changed.iter().any(|c| c == k), "{k} not merged");
    }
    assert!(!changed.iter().any(|k| k.contains("norm")), "{changed:?}");
}

/// The merged weight is W + s·(α/r)·B·A with α/r = 8/4 from the metadata header.
#[test]
fn merged_weight_is_w_plus_scaled_ba() {
    let t = tiny_transformer();
    let w0: Vec<f32> = t.blocks[0]
        .attn1
        .to_q
        .weight
        .val()
        .into_data()
        .to_vec()
        .unwrap();
    let a = adapter("lora/peft_a");
    let layer = a
        .layers
        .iter()
        .find(|l| l.module == "blocks.0.attn1.to_q")
        .unwrap();
    assert_eq!((layer.rank, layer.factor), (4, 2.0));
    let (merged, _) = lora::merge(
        t,
        &[(a.clone(), 0.5)],
        transformer_helios::diffusers_module_path,
        transformer_helios::burn_param_path,
        &Default::default(),
    )
    .unwrap();
    let w1: Vec<f32> = merged.blocks[0]
        .attn1
        .to_q
        .weight
        .val()
        .into_data()
        .to_vec()
        .unwrap();
    let (inp, out, r) = (layer.in_features, layer.out_features, layer.rank);
    let mut max_err = 0f64;
    for i in 0..inp {
        for o in 0..out {
            // Burn stores [in, out].
            let ba: f64 = (0..r)
                .map(|k| layer.b[o * r + k] as f64 * layer.a[k * inp + i] as f64)
                .sum();
            let want = w0[i * out + o] as f64 + 0.5 * 2.0 * ba;
            max_err = max_err.max((w1[i * out + o] as f64 - want).abs());
        }
    }
    assert!(max_err < 1e-5, "max error {max_err}");
}

#[test]
fn targets_from_the_config_equal_the_model_linears() {
    let t = tiny_transformer();
    let from_module = lora::targets_of(&t, transformer_helios::diffusers_module_path);
    let (config, _) = omni::pipeline::checkpoint::read_config::<HeliosTransformer3DModelConfig>(
        &tiny_distilled().join("transformer/config.json"),
    )
    .unwrap();
    assert_eq!(config.lora_targets(), from_module);
    assert_eq!(
        from_module.get("blocks.1.attn1.to_out.0"),
        Some(&(24, 24)),
        "{from_module:?}"
    );
    assert_eq!(
        transformer_helios::burn_param_path("blocks.1.ffn.net.0.proj.bias"),
        "blocks.1.ffn.net_0_proj.bias"
    );
}

fn write(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> tempfile::TempPath {
    let file = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile()
        .unwrap()
        .into_temp_path();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, s, v)| {
            (
                k.to_string(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                s.clone(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &file).unwrap();
    file
}

fn check(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> LoraError {
    let file = write(tensors);
    let targets = HeliosTransformer3DModelConfig {
        num_layers: 2,
        num_attention_heads: 2,
        attention_head_dim: 12,
        ffn_dim: 32,
        text_dim: 32,
        ..Default::default()
    }
    .lora_targets();
    LoraAdapter::read(&file, "bad")
        .and_then(|a| a.check_targets(&targets))
        .unwrap_err()
}

#[test]
fn bad_adapters_name_the_adapter_and_the_key() {
    let a = |k: &str| format!("transformer.{k}.lora_A.weight");
    let b = |k: &str| format!("transformer.{k}.lora_B.weight");
    let (qa, qb) = (a("blocks.0.attn1.to_q"), b("blocks.0.attn1.to_q"));
    let (xa, xb) = (a("blocks.0.attn1.nope"), b("blocks.0.attn1.nope"));
    type Case<'a> = (Vec<(&'a str, Vec<usize>, Vec<f32>)>, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![
                (&xa, vec![2, 24], vec![0.0; 48]),
                (&xb, vec![24, 2], vec![0.0; 48]),
            ],
            &xa,
            "not a Linear",
        ),
        (
            vec![
                (&qa, vec![2, 20], vec![0.0; 40]),
                (&qb, vec![24, 2], vec![0.0; 48]),
            ],
            &qa,
            "shape",
        ),
        (
            vec![
                (&qa, vec![2, 24], vec![0.0; 48]),
                (&qb, vec![24, 3], vec![0.0; 72]),
            ],
            &qa,
            "rank mismatch",
        ),
        (
            vec![
                (&qa, vec![2, 24], vec![f32::NAN; 48]),
                (&qb, vec![24, 2], vec![0.0; 48]),
            ],
            &qa,
            "non-finite",
        ),
        (vec![(&qa, vec![2, 24], vec![0.0; 48])], &qa, "no partner"),
        (
            vec![
                ("text_encoder.x.lora_A.weight", vec![2, 24], vec![0.0; 48]),
                ("text_encoder.x.lora_B.weight", vec![24, 2], vec![0.0; 48]),
            ],
            "text_encoder.x.lora_A.weight",
            "only the transformer",
        ),
        (
            vec![
                (
                    "diffusion_model.blocks.0.self_attn.zz.lora_down.weight",
                    vec![2, 24],
                    vec![0.0; 48],
                ),
                (
                    "diffusion_model.blocks.0.self_attn.zz.lora_up.weight",
                    vec![24, 2],
                    vec![0.0; 48],
                ),
            ],
            "diffusion_model.blocks.0.self_attn.zz.lora_down.weight",
            "maps to no module",
        ),
    ];
    for (tensors, key, words) in cases {
        let e = check(&tensors);
        let msg = e.to_string();
        assert!(
            matches!(&e, LoraError::Key { adapter, key: k, .. } if adapter == "bad" && k == key),
            "{msg}"
        );
        assert!(msg.contains(words) && msg.contains("`bad`"), "{msg}");
    }
    let e = LoraAdapter::read(std::path::Path::new("/no/such.safetensors"), "gone").unwrap_err();
    assert!(
        matches!(e, LoraError::File { .. }) && e.to_string().contains("`gone`"),
        "{e}"
    );
}

// ------------------------------------------------------------------------------------------------
// Wan (diffusers `WanLoraLoaderMixin`): fixtures from `make_lora.py --only-wan`, reference runs in
// `reference/pipeline_wan_lora.safetensors` (32×48, 9 frames, 4 steps, CFG 5 with a negative
// prompt, the injected `latents` of `pipeline_wan_t2v`; I2V: the image and latents of
// `pipeline_wan_i2v`).

const WAN_NEGATIVE_PROMPT: &str = "blurry, low quality, static";

/// The request of tests/pipeline_wan.rs (the fixture script's `PIPE_ARGS`).
fn wan_patch() -> omni::pipeline::request::RequestPatch {
    serde_json::from_value(serde_json::json!({
        "prompt": common::PROMPT, "negative_prompt": WAN_NEGATIVE_PROMPT, "height": 32,
        "width": 48, "num_frames": 9, "num_inference_steps": 4, "guidance_scale": 5.0
    }))
    .unwrap()
}

fn open_generator(dir: &std::path::Path) -> Generator {
    Generator::open(
        dir,
        GeneratorOptions {
            load: LoadPolicy::KeepAll,
            vae_dtype: None,
            ..Default::default()
        },
        &mut NoProgress,
    )
    .unwrap()
}

/// One job of `generator` with `loras` (`patch` over the Wan request above), the draws of
/// `noise`; the frames in [0, 1], or the error.
fn wan_job(
    generator: &mut Generator,
    patch: omni::pipeline::request::RequestPatch,
    loras: Vec<LoraSpec>,
    noise: &str,
    conditioning: Option<omni::pipeline::request::Conditioning>,
) -> Result<Vec<f32>, omni::pipeline::error::PipelineError> {
    let mut req =
        omni::pipeline::request::resolve(&[wan_patch(), patch], generator.defaults()).unwrap();
    req.lora = Loras(loras);
    if let Some(c) = conditioning {
        req.conditioning = c;
    }
    let mut noise = FileNoise::open(&common::fixture(&format!("reference/{noise}"))).unwrap();
    let mut sink = Collect::default();
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let n = generator.generate(&req, &mut ctx, &mut sink)?;
    assert_eq!(n, 9);
    Ok(sink.0.iter().flat_map(|f| f.data.iter().copied()).collect())
}

fn assert_wan_frames(what: &str, got: &[f32], reference: &str, name: &str) {
    let (shape, want) = Reference::open(reference).frames01(name);
    assert_eq!(shape, vec![9, 32, 48, 3]);
    let db = psnr(got, &want);
    eprintln!("{what}: PSNR vs diffusers {db:.2} dB");
    assert!(
        db >= MIN_PSNR_DB,
        "{what}: PSNR {db:.2} dB < {MIN_PSNR_DB} dB"
    );
}

fn into_transformer_2(mut s: LoraSpec) -> LoraSpec {
    s.load_into_transformer_2 = true;
    s
}

/// Wan2.1 T2V: a PEFT adapter, then the original Wan naming plus PEFT, then none, each against
/// its own diffusers run; the no-adapter job before and after the adapter jobs gives the same
/// bytes (the restore is bit-exact and no job sees another's weights).
#[test]
fn wan_t2v_lora_jobs_match_diffusers_and_restore_bit_exactly() {
    let mut generator = open_generator(&common::fixture("tiny-wan2.1-t2v"));
    let lora_ref = "pipeline_wan_lora.safetensors";
    let job = |g: &mut Generator, loras| wan_job(g, Default::default(), loras, lora_ref, None);
    let plain_before = job(&mut generator, vec![]).unwrap();
    assert_wan_frames(
        "t2v, no adapter",
        &plain_before,
        "pipeline_wan_t2v.safetensors",
        "frames",
    );
    let got = job(&mut generator, vec![spec("lora/wan_peft", 0.8)]).unwrap();
    assert_wan_frames("t2v, PEFT @ 0.8", &got, lora_ref, "t2v_peft.frames");
    let got = job(
        &mut generator,
        vec![
            spec("lora/wan_orig_t2v.safetensors", 1.0),
            spec("lora/wan_peft", 0.5),
        ],
    )
    .unwrap();
    assert_wan_frames(
        "t2v, original Wan naming @ 1.0 + PEFT @ 0.5",
        &got,
        lora_ref,
        "t2v_orig.frames",
    );
    let plain_after = job(&mut generator, vec![]).unwrap();
    assert!(
        plain_before
            .iter()
            .zip(&plain_after)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "a job after LoRA jobs differs from the same job before them"
    );
    // A `transformer_2` adapter on a one-expert checkpoint is refused (diffusers raises), and
    // the next job still runs on the original weights.
    let err = job(
        &mut generator,
        vec![into_transformer_2(spec("lora/wan_peft", 1.0))],
    )
    .unwrap_err();
    assert!(err.to_string().contains("transformer_2"), "{err}");
    assert_eq!(job(&mut generator, vec![]).unwrap(), plain_before);
}

/// Wan2.2 A14B (two experts): the PEFT adapter into `transformer`, the original-named one into
/// `transformer_2` (`load_into_transformer_2`), guidance_scale_2 2.0.
#[test]
fn wan_two_expert_lora_job_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::fixture("tiny-wan2.1-t2v"), dir.path());
    common::copy_dir(&common::fixture("tiny-wan2.2-a14b"), dir.path());
    let targets = Generator::lora_targets_of(dir.path()).unwrap();
    assert_eq!(targets.transformer_2.as_ref(), Some(&targets.transformer));
    let mut generator = open_generator(dir.path());
    let patch = omni::pipeline::request::RequestPatch {
        guidance_scale_2: Some(2.0),
        ..Default::default()
    };
    let loras = vec![
        spec("lora/wan_peft", 0.8),
        into_transformer_2(spec("lora/wan_orig_t2v.safetensors", 1.0)),
    ];
    let got = wan_job(
        &mut generator,
        patch.clone(),
        loras,
        "pipeline_wan_lora.safetensors",
        None,
    )
    .unwrap();
    assert_wan_frames(
        "a14b, PEFT → transformer, original → transformer_2",
        &got,
        "pipeline_wan_lora.safetensors",
        "a14b.frames",
    );
    let plain = wan_job(
        &mut generator,
        patch,
        vec![],
        "pipeline_wan_lora.safetensors",
        None,
    )
    .unwrap();
    assert_wan_frames(
        "a14b, no adapter after it",
        &plain,
        "pipeline_wan_a14b.safetensors",
        "frames",
    );
}

/// Wan2.1 I2V: an original-named adapter on the image cross-attention (`k_img`/`v_img` →
/// `attn2.add_k_proj`/`add_v_proj`) and the image embedder (`img_emb.proj.{1,3}`).
#[test]
fn wan_i2v_lora_job_matches_diffusers() {
    use omni::pipeline::request::{Conditioning, ConditioningPixels};
    let r = Reference::open("pipeline_wan_i2v.safetensors");
    let (frames, w, h) = common::input_frames(&r, "image");
    let image = Conditioning::Image(ConditioningPixels::from_rgb8_frames(&frames, w, h));
    let dir = common::fixture("tiny-wan2.1-i2v");
    let loras = vec![spec("lora/wan_orig_i2v.safetensors", 1.0)];
    let a = adapter("lora/wan_orig_i2v.safetensors");
    assert!(
        a.layers
            .iter()
            .any(|l| l.module == "blocks.1.attn2.add_v_proj")
    );
    assert!(
        a.layers
            .iter()
            .any(|l| l.module == "condition_embedder.image_embedder.ff.net.2" && l.bias.is_some())
    );
    let mut generator = open_generator(&dir);
    let got = wan_job(
        &mut generator,
        Default::default(),
        loras,
        "pipeline_wan_i2v.safetensors",
        Some(image),
    )
    .unwrap();
    assert_wan_frames(
        "i2v, original Wan naming with k_img/v_img/img_emb",
        &got,
        "pipeline_wan_lora.safetensors",
        "i2v.frames",
    );
}

/// The I2V adapter's image keys map to no module of a T2V checkpoint: refused before loading,
/// naming the adapter and the key; a Helios adapter's shapes do not fit Wan (text_dim 32 ≠ 24).
#[test]
fn wan_checks_name_the_adapter_key_and_expert() {
    let t2v = common::fixture("tiny-wan2.1-t2v");
    let check = |loras: Vec<LoraSpec>| {
        let mut req = common::distilled_request();
        req.lora = Loras(loras);
        Generator::check_loras(&t2v, &req)
    };
    check(vec![spec("lora/wan_peft", 1.0)]).unwrap();
    check(vec![spec("lora/wan_orig_t2v.safetensors", 1.0)]).unwrap();
    let err = check(vec![spec("lora/wan_orig_i2v.safetensors", 1.0)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora/wan_orig_i2v.safetensors") && err.contains("add_k_proj"),
        "{err}"
    );
    let err = check(vec![into_transformer_2(spec("lora/wan_peft", 1.0))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("load_into_transformer_2"), "{err}");
    // The T2V adapters fit the I2V transformer (diffusers pads the image projections with
    // zeros: no change there).
    let mut req = common::distilled_request();
    req.lora = Loras(vec![spec("lora/wan_peft", 1.0)]);
    Generator::check_loras(&common::fixture("tiny-wan2.1-i2v"), &req).unwrap();
}

fn tiny_wan_i2v_transformer() -> WanTransformer3DModel<TestBackend> {
    WanTransformer3DModel::load(
        &common::fixture("tiny-wan2.1-i2v").join("transformer"),
        &Default::default(),
    )
    .unwrap()
}

#[test]
fn wan_targets_from_the_config_equal_the_model_linears() {
    let t = tiny_wan_i2v_transformer();
    let from_module = lora::targets_of(&t, transformer_wan::diffusers_module_path);
    assert_eq!(t.config().lora_targets(), from_module);
    assert_eq!(
        from_module.get("blocks.0.attn2.add_k_proj"),
        Some(&(24, 24))
    );
    assert_eq!(
        from_module.get("condition_embedder.image_embedder.ff.net.0.proj"),
        Some(&(16, 16))
    );
    assert_eq!(
        transformer_wan::burn_param_path("condition_embedder.image_embedder.ff.net.2.bias"),
        "condition_embedder.image_embedder.ff.net_2.bias"
    );
}

#[test]
fn wan_restore_is_bit_exact_and_merge_changes_only_targeted_weights() {
    let adapters = vec![
        (adapter("lora/wan_orig_i2v.safetensors"), 1.0),
        (adapter("lora/wan_peft"), 0.7),
    ];
    let changed = merge_and_restore(
        tiny_wan_i2v_transformer(),
        &adapters,
        transformer_wan::diffusers_module_path,
        transformer_wan::burn_param_path,
    );
    for k in [
        "blocks.0.attn2.add_k_proj.weight",
        "blocks.0.attn2.add_k_proj.bias",
        "condition_embedder.image_embedder.ff.net_0_proj.weight",
        "condition_embedder.time_embedder.linear_1.weight",
        "proj_out.weight",
    ] {
        assert!(changed.iter().any(|c| c == k), "{k} not merged");
    }
}

/// Original Wan naming with `.alpha` and `diff_b`: diffusers folds α/r into A (`scale_down`)
/// and B (`scale_up`) and adds `diff_b` unscaled, so the merged bias is `b + s·diff_b` (a bias
/// scaled by α/r too cost the whole-pipeline runs 13–17 dB against diffusers).
#[test]
fn original_alpha_scales_the_matrices_but_not_diff_b() {
    let p = "diffusion_model.blocks.0.self_attn.v";
    let file = write(&[
        (&format!("{p}.lora_down.weight"), vec![4, 24], vec![1.0; 96]),
        (&format!("{p}.lora_up.weight"), vec![24, 4], vec![1.0; 96]),
        (&format!("{p}.alpha"), vec![], vec![1.0]),
        (&format!("{p}.diff_b"), vec![24], vec![3.0; 24]),
    ]);
    let a = LoraAdapter::read(&file, "w").unwrap();
    let l = &a.layers[0];
    assert_eq!(l.module, "blocks.0.attn1.to_v");
    // α/r = 1/4 = scale_down 0.5 · scale_up 0.5 (get_alpha_scales), factor 1.
    assert_eq!((l.a[0], l.b[0], l.factor), (0.5, 0.5, 1.0));
    assert_eq!(l.bias.as_deref(), Some(&[3.0; 24][..]));
}

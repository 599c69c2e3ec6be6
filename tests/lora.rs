//! Per-request LoRA: whole-pipeline parity with diffusers' `load_lora_weights` + `set_adapters`
//! (fixtures made by `tests/fixtures/make_lora.py`: a PEFT adapter with alpha metadata, a PEFT
//! adapter with biases and no metadata, and an original Wan/ComfyUI-named adapter converted by
//! diffusers), the bit-exact restore, job isolation, and the errors naming adapter and key.

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
use omni::pipeline::noise::FileNoise;
use omni::pipeline::progress::{CancelToken, NoProgress};

fn spec(rel: &str, scale: f64) -> LoraSpec {
    LoraSpec {
        name: Some(rel.into()),
        path: Some(common::fixture(rel).display().to_string()),
        scale: Some(scale),
        int_id: None,
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

#[test]
fn restore_is_bit_exact_and_merge_changes_only_targeted_weights() {
    let t = tiny_transformer();
    let before = snapshot(&t);
    let adapters = vec![
        (adapter("lora/peft_a"), 0.75),
        (adapter("lora/peft_b"), 1.5),
        (adapter("lora/wan_orig.safetensors"), 1.0),
    ];
    let (merged, originals) = lora::merge(
        t,
        &adapters,
        transformer_helios::diffusers_module_path,
        transformer_helios::burn_param_path,
        &Default::default(),
    )
    .unwrap();
    let during = snapshot(&merged);
    let changed: Vec<&String> = before.keys().filter(|k| before[*k] != during[*k]).collect();
    assert_eq!(changed.len(), originals.len(), "{changed:?}");
    assert!(changed.contains(&&"blocks.0.attn1.to_out.weight".to_string()));
    assert!(changed.contains(&&"blocks.1.ffn.net_0_proj.weight".to_string()));
    assert!(
        changed.contains(&&"proj_out.bias".to_string()),
        "diff_b / lora_B.bias merged"
    );
    assert!(!changed.iter().any(|k| k.contains("norm")), "{changed:?}");
    let restored = originals.restore(merged);
    let after = snapshot(&restored);
    assert_eq!(before.len(), after.len());
    for (k, v) in &before {
        assert!(after[k] == *v, "{k} not restored bit-exactly");
    }
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

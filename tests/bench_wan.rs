//! `omni bench dit --config wan2.1-14b|wan2.2-5b`: the Wan FLOP model against the table of
//! `shared/reference/wan.md` §5 (computed there with `shared/reference/dit_flops.py`), the real
//! shapes, and the command itself on a reduced size (1 layer, 64x32 pixels) printing its figures.
//! Nothing is timed or asserted about speed.

mod common;

use omni::pipeline::bench::{WanDitScale, wan_dit_forward_flops};
use omni::pipeline::models::transformer_wan::WanTransformer3DModelConfig;

#[test]
fn wan_dit_flops_match_the_reference_table() {
    let pf = |cfg: &WanTransformer3DModelConfig, l| wan_dit_forward_flops(cfg, l, 512) / 1e15;
    let w14 = WanDitScale::Wan21_14B.transformer_config();
    assert_eq!(
        (w14.inner_dim(), w14.ffn_dim, w14.num_layers),
        (5120, 13824, 40)
    );
    // Wan2.1-T2V-14B at 832x480x81 (32,760 tokens) and 1280x720x81 (75,600 tokens).
    assert!(
        (pf(&w14, 32_760) - 1.678).abs() < 0.002,
        "{}",
        pf(&w14, 32_760)
    );
    assert!(
        (pf(&w14, 75_600) - 6.523).abs() < 0.002,
        "{}",
        pf(&w14, 75_600)
    );
    // Wan2.2-TI2V-5B at 1280x704x121 (27,280 tokens).
    let w5 = WanDitScale::Wan22_5B.transformer_config();
    assert_eq!(
        (w5.inner_dim(), w5.ffn_dim, w5.num_layers),
        (3072, 14336, 30)
    );
    assert_eq!((w5.in_channels, w5.out_channels()), (48, 48));
    assert!(
        (pf(&w5, 27_280) - 0.517).abs() < 0.002,
        "{}",
        pf(&w5, 27_280)
    );
    // Tokens at the model card sizes: 21·45·80 and 31·22·40.
    for (scale, tokens) in [
        (WanDitScale::Wan21_14B, 75_600),
        (WanDitScale::Wan22_5B, 27_280),
    ] {
        let (w, h, f) = scale.default_size();
        let s = scale.vae_scale_spatial();
        assert_eq!(((f - 1) / 4 + 1) * (h / s / 2) * (w / s / 2), tokens);
    }
}

#[test]
fn bench_dit_wan_prints_one_json_line_with_the_figures() {
    let out = common::omni()
        .args(["bench", "dit", "--config", "wan2.2-5b", "--size", "64x32"])
        .args([
            "--num-frames",
            "5",
            "--layers",
            "1",
            "--warmup",
            "0",
            "--iters",
            "1",
        ])
        .args(["--json", "--threads", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["latent"], serde_json::json!([48, 2, 2, 4]));
    assert_eq!(
        (v["tokens"].as_u64(), v["layers"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(v["model_layers"], 30);
    let cfg = WanDitScale::Wan22_5B.transformer_config();
    let one_layer = WanTransformer3DModelConfig {
        num_layers: 1,
        ..cfg
    };
    let tflop = v["tflop"].as_f64().unwrap();
    assert!((tflop - wan_dit_forward_flops(&one_layer, 4, 512) / 1e12).abs() < 1e-9);
    assert!(v["ms_mean"].as_f64().unwrap() > 0.0);
    // A size the 16x VAE and 2x2 patches cannot take, and a Wan config for another bench.
    let out = common::omni()
        .args(["bench", "dit", "--config", "wan2.2-5b", "--size", "48x32"])
        .output()
        .unwrap();
    let line = common::assert_one_line_error(&out);
    assert!(line.contains("multiples of 32"), "{line}");
    let out = common::omni()
        .args(["bench", "vae", "--config", "wan2.1-14b"])
        .output()
        .unwrap();
    let line = common::assert_one_line_error(&out);
    assert!(line.contains("only for `omni bench dit`"), "{line}");
}

//! `omni serve` with per-request LoRA over real sockets: the `lora` field as multipart JSON text
//! and as a JSON object / list, `[lora] preload` names, `lora_dirs` confinement, and the 400s
//! (bad path, unknown name, adapter that does not fit, unknown key in the object), on Helios and
//! on a Wan checkpoint. Also `omni generate --lora` (Helios and Wan).

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use common::http::{Server, error_400, http, multipart};
use common::{assert_one_line_error, copy_dir, fixture, tiny_distilled};

fn start(storage: &Path, config: &Path) -> Server {
    start_model(&tiny_distilled(), storage, config)
}

fn start_model(model: &Path, storage: &Path, config: &Path) -> Server {
    Server::serve(
        model,
        "tiny",
        storage,
        &["--config", config.to_str().unwrap()],
    )
}

fn post_json(s: &Server, path: &str, body: Value) -> (u16, Vec<u8>) {
    s.post_json(path, &body)
}

/// A lora_dirs folder with the fixture adapters and one adapter whose A has the wrong width.
fn lora_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("loras");
    copy_dir(&fixture("lora"), &dir);
    let bad = std::fs::read(fixture("lora/peft_b/pytorch_lora_weights.safetensors")).unwrap();
    // Same file, renamed so that a 24-wide lora_A targets a 32-wide Linear (ffn.net.2 ← to_q).
    let st = safetensors::SafeTensors::deserialize(&bad).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace("attn1.to_q", "ffn.net.2x")
                    .replace("ffn.net.2.", "attn1.to_q.")
                    .replace("ffn.net.2x", "ffn.net.2"),
                v,
            )
        })
        .collect();
    safetensors::serialize_to_file(tensors, None, &dir.join("bad.safetensors")).unwrap();
    dir
}

const SYNC: &str = "/v1/videos/sync";

/// A server for `model` with `lora_dirs` = [`lora_dir`] and the adapter `rel` of it preloaded
/// as `name` at `scale`; returns it and the lora_dirs folder.
fn preload_server(
    root: &Path,
    model: &Path,
    name: &str,
    rel: &str,
    scale: f64,
) -> (Server, std::path::PathBuf) {
    let loras = lora_dir(root);
    let config = root.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "lora_dirs = [{:?}]\n[[lora.preload]]\nname = {name:?}\npath = {:?}\nscale = {scale}\n",
            loras.display().to_string(),
            loras.join(rel).display().to_string()
        ),
    )
    .unwrap();
    (start_model(model, &root.join("st"), &config), loras)
}

/// A multipart `/v1/videos/sync` of `fields` plus `lora` (JSON text) when given: the MP4 bytes.
fn sync_form(s: &Server, fields: &[(&str, &str)], lora: Option<&str>) -> Vec<u8> {
    let mut fields = fields.to_vec();
    if let Some(l) = lora {
        fields.push(("lora", l));
    }
    let (ct, body) = multipart(&fields);
    let r = http(&s.addr, "POST", SYNC, &[("Content-Type", &ct)], &body);
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    assert_eq!(&r.1[4..8], b"ftyp");
    r.1
}

#[test]
fn lora_over_multipart_and_json_with_preload_names_and_400s() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, loras) = preload_server(tmp.path(), &tiny_distilled(), "style", "peft_a", 0.75);

    // Multipart: the field is JSON text. A preloaded name, then no adapter, same seed.
    let fields = [
        ("prompt", "a lighthouse"),
        ("size", "128x64"),
        ("num_frames", "33"),
        ("seed", "5"),
    ];
    let sync = |lora: Option<&str>| sync_form(&s, &fields, lora);
    let with_style = sync(Some(r#"{"name": "style"}"#));
    let plain = sync(None);
    let again = sync(Some(r#"[{"lora_name": "style", "lora_scale": "0.75"}]"#));
    assert_ne!(with_style, plain, "the adapter changes the video");
    assert_eq!(with_style, again, "same adapter, same scale, same bytes");
    assert_eq!(plain, sync(None), "no adapter left behind after a LoRA job");

    // JSON: an object with a path relative to lora_dirs, and a list of two adapters.
    for lora in [
        json!({"adapter": "b", "local_path": "peft_b", "scale": 1.5}),
        json!([{"path": loras.join("wan_orig.safetensors")}, {"name": "style", "lora_int_id": 7}]),
    ] {
        let r = post_json(
            &s,
            SYNC,
            json!({"prompt": "a lighthouse", "size": "128x64", "num_frames": 33, "lora": lora}),
        );
        assert_eq!(r.0, 200, "{lora}: {}", String::from_utf8_lossy(&r.1));
    }

    // 400s naming `lora`.
    let outside = fixture("lora/peft_a").display().to_string();
    for (lora, words) in [
        (json!({"path": "/etc/passwd"}), "outside"),
        (json!({"path": outside}), "outside"),
        (json!({"path": "nope.safetensors"}), "no such adapter"),
        (json!({"name": "unknown"}), "not preloaded"),
        (
            json!({"path": "bad.safetensors"}),
            "key `transformer.blocks.0.attn1.to_q.lora_A.weight`",
        ),
        (json!({"pathh": "peft_b"}), "unknown field"),
        (json!({"scale": 1}), "name"),
        (json!("{not json"), "JSON"),
    ] {
        let e = error_400(post_json(
            &s,
            "/v1/videos",
            json!({"prompt": "p", "size": "128x64", "lora": lora}),
        ));
        assert_eq!(e["param"], "lora", "{lora}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(words),
            "{lora}: {e}"
        );
    }
    // The same through multipart.
    let (ct, body) = multipart(&[("prompt", "p"), ("lora", r#"{"path": "/etc/passwd"}"#)]);
    let e = error_400(http(
        &s.addr,
        "POST",
        "/v1/videos",
        &[("Content-Type", &ct)],
        &body,
    ));
    assert_eq!(e["param"], "lora", "{e}");
}

#[test]
fn a_server_without_lora_dirs_refuses_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("serve.toml");
    std::fs::write(&config, "").unwrap();
    let s = start(&tmp.path().join("st"), &config);
    let path = fixture("lora/peft_a").display().to_string();
    let e = error_400(post_json(
        &s,
        "/v1/videos",
        json!({"prompt": "p", "lora": {"path": path}}),
    ));
    assert_eq!(e["param"], "lora");
    assert!(e["message"].as_str().unwrap().contains("lora_dirs"), "{e}");
}

#[test]
fn generate_takes_lora_path_scale_and_names_a_bad_adapter_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let loras = lora_dir(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["generate", "--prompt", "p", "--print-request", "--model"])
        .arg(tiny_distilled())
        .arg("--lora")
        .arg(format!("{}:0.5", loras.join("peft_a").display()))
        .arg("--lora")
        .arg(loras.join("wan_orig.safetensors"))
        .args(["-o"])
        .arg(tmp.path().join("x.mp4"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["lora"][0]["scale"], 0.5);
    assert!(
        r["lora"][1]["path"]
            .as_str()
            .unwrap()
            .ends_with("wan_orig.safetensors")
    );
    assert!(r["lora"][1].get("scale").is_none());
    let out = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["generate", "--prompt", "p", "--model"])
        .arg(tiny_distilled())
        .arg("--lora")
        .arg(loras.join("bad.safetensors"))
        .args(["-o"])
        .arg(tmp.path().join("y.mp4"))
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(
        line.contains("transformer.blocks.0.attn1.to_q.lora_A.weight"),
        "{line}"
    );
    assert!(!tmp.path().join("y.mp4").exists());
}

/// A Wan2.1 T2V server: the `lora` field over multipart (preloaded name) and JSON (PEFT and the
/// original Wan naming by path), isolation between jobs, and the 400s naming `lora` for an
/// adapter whose keys are not modules of this checkpoint (I2V image keys) and for
/// `load_into_transformer_2` on a one-expert checkpoint.
#[test]
fn wan_lora_over_multipart_and_json_and_400s() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = preload_server(
        tmp.path(),
        &fixture("tiny-wan2.1-t2v"),
        "wan",
        "wan_peft",
        0.8,
    );
    let fields = [
        ("prompt", "a lighthouse"),
        ("size", "48x32"),
        ("num_frames", "9"),
        ("num_inference_steps", "2"),
        ("seed", "5"),
    ];
    let sync = |lora: Option<&str>| sync_form(&s, &fields, lora);
    let with_wan = sync(Some(r#"{"name": "wan"}"#));
    let plain = sync(None);
    assert_ne!(with_wan, plain, "the adapter changes the video");
    assert_eq!(
        with_wan,
        sync(Some(r#"[{"lora_name": "wan", "lora_scale": "0.8"}]"#)),
        "same adapter, same scale, same bytes"
    );
    assert_eq!(plain, sync(None), "no adapter left behind after a LoRA job");
    let json_sync = |lora: Value| {
        post_json(
            &s,
            SYNC,
            json!({"prompt": "a lighthouse", "size": "48x32", "num_frames": 9,
                   "num_inference_steps": 2, "seed": 5, "lora": lora}),
        )
    };
    let r = json_sync(json!([{"path": "wan_orig_t2v.safetensors", "scale": 1.0}, {"name": "wan"}]));
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    assert_ne!(r.1, with_wan, "the second adapter adds to the first");
    for (lora, words) in [
        (
            json!({"path": "wan_orig_i2v.safetensors"}),
            vec!["wan_orig_i2v", "k_img", "add_k_proj"],
        ),
        (
            json!({"name": "wan", "load_into_transformer_2": true}),
            vec!["wan", "transformer_2"],
        ),
    ] {
        let e = error_400(json_sync(lora.clone()));
        assert_eq!(e["param"], "lora", "{lora}: {e}");
        let m = e["message"].as_str().unwrap();
        assert!(words.iter().all(|w| m.contains(w)), "{lora}: {e}");
    }
}

#[test]
fn generate_with_a_wan_checkpoint_takes_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let mp4 = tmp.path().join("wan.mp4");
    let run = |lora: Option<String>, out: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_omni"));
        cmd.args(["generate", "--prompt", "a lighthouse", "--model"])
            .arg(fixture("tiny-wan2.1-t2v"))
            .args(["--width", "48", "--height", "32", "--num-frames", "9"])
            .args(["--num-inference-steps", "2", "--seed", "5", "--quiet"]);
        if let Some(l) = lora {
            cmd.arg("--lora").arg(l);
        }
        cmd.arg("-o").arg(out).output().unwrap()
    };
    let lora = format!("{}:0.8", fixture("lora/wan_peft").display());
    let out = run(Some(lora), &mp4);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let probe = common::http::ffprobe(&mp4);
    assert_eq!((probe.width, probe.height, probe.frames), (48, 32, 9));
    let plain = tmp.path().join("plain.mp4");
    let out = run(None, &plain);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_ne!(
        std::fs::read(&mp4).unwrap(),
        std::fs::read(&plain).unwrap(),
        "--lora changes the video"
    );
    // An I2V adapter on the T2V checkpoint: one line naming the key, no file.
    let bad = tmp.path().join("bad.mp4");
    let out = run(
        Some(
            fixture("lora/wan_orig_i2v.safetensors")
                .display()
                .to_string(),
        ),
        &bad,
    );
    let line = assert_one_line_error(&out);
    assert!(
        line.contains("k_img") && line.contains("add_k_proj"),
        "{line}"
    );
    assert!(!bad.exists());
}

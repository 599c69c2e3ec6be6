//! Shared helpers for the parity tests: fixture paths, reading reference tensors, error metrics.
//!
//! Fixtures are made by `tests/fixtures/make_fixtures.py` (see its header for the recipe) and
//! committed, so the tests need no Python.
#![allow(dead_code)]

pub mod http;
pub mod s3;
pub mod vae;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// The CPU test backend (f32).
pub type TestBackend = omni::pipeline::backend::CpuBackend;

/// `tests/fixtures/<rel>`: under the source tree the test was built from, or, for a test binary
/// carried to another machine (the GPU box has no Rust), under the current directory.
pub fn fixture(rel: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let root = match built.is_dir() {
        true => built,
        false => PathBuf::from("tests/fixtures"),
    };
    root.join(rel)
}

/// The shipped tiny Distilled checkpoint folder.
pub fn tiny_distilled() -> PathBuf {
    fixture("tiny-helios-distilled")
}

/// A reference file: `tests/fixtures/reference/<name>` read whole.
pub struct Reference {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Self {
        let path = fixture("reference").join(name);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self { path, bytes }
    }

    fn view(&self, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("tensor `{name}` not in {}", self.path.display()));
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }

    /// Whether the file holds `name`.
    pub fn has(&self, name: &str) -> bool {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        st.names().contains(&name)
    }

    /// A tensor as f64 values plus its shape (F32, F64, F16, I64 and I32 files are accepted).
    pub fn f64s(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let (shape, dtype, raw) = self.view(name);
        let vals = match dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("unsupported dtype {other:?} for `{name}`"),
        };
        (shape, vals)
    }

    /// A float tensor on `device` (converted to f32).
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let (shape, vals) = self.f64s(name);
        assert_eq!(shape.len(), D, "rank of `{name}`");
        let vals: Vec<f32> = vals.into_iter().map(|v| v as f32).collect();
        Tensor::from_data(TensorData::new(vals, shape), device)
    }

    /// An integer tensor on `device`.
    pub fn int_tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        let (shape, vals) = self.f64s(name);
        assert_eq!(shape.len(), D, "rank of `{name}`");
        let vals: Vec<i64> = vals.into_iter().map(|v| v as i64).collect();
        Tensor::from_data(TensorData::new(vals, shape), device)
    }

    /// Video frames in [0, 1] plus their shape: float tensors as stored, `U8` tensors (how the
    /// fixture script stores decoded frames) as `x / 255`.
    pub fn frames01(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, dtype, raw) = self.view(name);
        if dtype == Dtype::U8 {
            return (shape, raw.iter().map(|&b| b as f32 / 255.0).collect());
        }
        let (shape, vals) = self.f64s(name);
        (shape, vals.into_iter().map(|v| v as f32).collect())
    }

    /// Integer values as a flat vector.
    pub fn i64s(&self, name: &str) -> Vec<i64> {
        self.f64s(name).1.into_iter().map(|v| v as i64).collect()
    }
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let d: Vec<f32> = (a - b).abs().into_data().convert::<f32>().to_vec().unwrap();
    d.into_iter().fold(0.0f64, |m, v| m.max(v as f64))
}

/// Largest absolute difference between two slices.
pub fn max_abs_diff_slice(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// PSNR in dB of `a` against `b`, both with values in [0, 1].
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x - *y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

/// The prompt the tests generate from.
pub const PROMPT: &str = "A serene lakeside sunrise with mist over the water.";

/// The issues' bar for decoded frames against diffusers (fp32 on both sides).
pub const MIN_PSNR_DB: f64 = 40.0;

/// The built `omni` binary.
pub fn omni() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_omni"))
}

/// `omni generate -q` on the tiny Distilled checkpoint, 128x64, 33 frames, prompt "p", with
/// `extra` flags, writing `out`; the finished process's output.
pub fn generate_tiny(extra: &[&str], out: &Path) -> std::process::Output {
    omni()
        .args([
            "generate",
            "--prompt",
            "p",
            "--width",
            "128",
            "--height",
            "64",
            "--num-frames",
            "33",
            "-q",
            "--model",
        ])
        .arg(tiny_distilled())
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

/// Start `cmd` (an `omni serve ... --port 0`) with its stdout piped and return the child and the
/// `host:port` it prints on its first line ("omni serve listening on http://host:port").
pub fn spawn_serve(cmd: &mut std::process::Command) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting omni serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("omni serve listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, addr)
}

/// Write a 9-frame 48×32 H.264 MP4 made by the tiny Wan2.1 text-to-video checkpoint (2 steps)
/// to `out`: the input video of the video-to-video tests.
pub fn tiny_wan_clip(out: &Path) {
    let out_run = omni()
        .args(["generate", "--model"])
        .arg(fixture("tiny-wan2.1-t2v"))
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        .args([
            "--num-frames",
            "9",
            "--num-inference-steps",
            "2",
            "--quiet",
            "-o",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(out_run.status.success(), "{}", stderr(&out_run));
}

/// A command's stderr as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Failure: exit ≠ 0 and exactly one non-empty stderr line starting with `omni: error:`.
pub fn assert_one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected failure, got success");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{err}");
    assert!(lines[0].starts_with("omni: error:"), "{err}");
    lines[0].to_string()
}

/// Copy a folder tree (test checkpoints into temporary folders).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A frame sink that keeps every delivery.
#[derive(Default)]
pub struct Collect(pub Vec<omni::pipeline::pipelines::pipeline_helios_pyramid::VideoFrames>);

impl omni::pipeline::pipelines::pipeline_helios_pyramid::FrameSink for Collect {
    fn push_frames(
        &mut self,
        frames: omni::pipeline::pipelines::pipeline_helios_pyramid::VideoFrames,
    ) -> Result<(), String> {
        self.0.push(frames);
        Ok(())
    }
}

/// A progress sink that keeps every event.
#[derive(Default)]
pub struct Record(pub Vec<omni::pipeline::progress::Progress>);

impl omni::pipeline::progress::ProgressSink for Record {
    fn event(&mut self, event: omni::pipeline::progress::Progress) {
        self.0.push(event);
    }
}

/// The request of the 2-chunk Distilled parity runs (T2V, I2V, V2V): 128x64 pixels, 66 frames,
/// pyramid steps 2,2,2 with the amplified first chunk, no CFG, on the tiny Distilled checkpoint.
pub fn distilled_request() -> omni::pipeline::request::GenerationRequest {
    let patch = omni::pipeline::request::RequestPatch {
        prompt: Some(PROMPT.into()),
        width: Some(128),
        height: Some(64),
        num_frames: Some(66),
        guidance_scale: Some(1.0),
        pyramid_num_inference_steps_list: Some(vec![2, 2, 2]),
        is_amplify_first_chunk: Some(true),
        ..Default::default()
    };
    let defaults =
        omni::pipeline::pipelines::pipeline_helios_pyramid::checkpoint_defaults(&tiny_distilled())
            .unwrap();
    omni::pipeline::request::resolve(&[patch], &defaults).unwrap()
}

/// A stored u8 input (`[F, H, W, 3]` or `[H, W, 3]`) as RGB8 frames plus (width, height).
pub fn input_frames(reference: &Reference, name: &str) -> (Vec<Vec<u8>>, usize, usize) {
    let (shape, vals) = reference.frames01(name);
    let (h, w) = (shape[shape.len() - 3], shape[shape.len() - 2]);
    let bytes: Vec<u8> = vals.iter().map(|v| (v * 255.0).round() as u8).collect();
    let frames = bytes.chunks_exact(h * w * 3).map(|c| c.to_vec()).collect();
    (frames, w, h)
}

/// A tiny checkpoint of another variant (`base`, `mid`): the tiny Distilled weights plus that
/// variant's committed `model_index.json` and scheduler config, in a temporary folder.
pub fn tiny_variant(variant: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny_distilled(), dir.path());
    copy_dir(&fixture(&format!("tiny-helios-{variant}")), dir.path());
    dir
}

/// The commit hash the fake Hugging Face cache files its snapshot under.
pub const HF_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A Hugging Face hub cache (as `huggingface-cli download` leaves it) holding `checkpoint` as
/// the repo `repo_id`: `models--org--name/refs/main` → [`HF_COMMIT`],
/// `snapshots/<commit>/<file>` symlinks into `blobs/`. Returns the cache folder (the value of
/// `HF_HUB_CACHE`).
pub fn hf_cache(root: &Path, repo_id: &str, checkpoint: &Path) -> PathBuf {
    let cache = root.join("hub");
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(HF_COMMIT);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), HF_COMMIT).unwrap();
    std::fs::create_dir_all(&blobs).unwrap();
    let mut files = Vec::new();
    list_files(checkpoint, Path::new(""), &mut files);
    for (n, rel) in files.iter().enumerate() {
        let blob = format!("{n:064x}");
        std::fs::copy(checkpoint.join(rel), blobs.join(&blob)).unwrap();
        let link = snapshot.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        // Relative, as huggingface_hub makes them: ../../blobs/<hash> from the snapshot root.
        let up = "../".repeat(rel.components().count() + 1);
        std::os::unix::fs::symlink(format!("{up}blobs/{blob}"), &link).unwrap();
        assert!(link.is_file(), "{} does not resolve", link.display());
    }
    cache
}

fn list_files(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let r = rel.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            list_files(dir, &r, out);
        } else {
            out.push(r);
        }
    }
}

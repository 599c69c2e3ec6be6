//! `omni generate --offload-experts auto|on|off` on the tiny Wan2.2 A14B two-expert checkpoint
//! (`tiny-wan2.1-t2v` + the `tiny-wan2.2-a14b` overlay): one expert at a time (`on`, the
//! low-noise expert loaded when the schedule crosses `boundary_ratio`) gives the frames both
//! resident experts (`off`) give, byte for byte; `on` / `off` to a one-expert checkpoint, and
//! `on` to the two-expert image-to-video one (which keeps both resident), are one-line errors
//! naming the flag.

mod common;

use std::path::Path;
use std::process::Command;

use common::{PROMPT, assert_one_line_error, copy_dir, fixture, omni, stderr};

/// `base` with `overlay` copied over it, in a temporary folder.
fn checkpoint(base: &str, overlay: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(base), dir.path());
    copy_dir(&fixture(overlay), dir.path());
    dir
}

/// `omni generate` of 9 tiny frames with `--offload-experts residency` into `out`.
fn generate(model: &Path, residency: &str, out: &Path) -> Command {
    let mut cmd = omni();
    cmd.args(["generate", "--model"])
        .arg(model)
        .args(["--prompt", PROMPT, "--width", "48", "--height", "32"])
        // 4 steps across the 0.875 boundary: both experts run.
        .args([
            "--num-frames",
            "9",
            "--num-inference-steps",
            "4",
            "--seed",
            "3",
        ])
        .args(["--offload-experts", residency, "--quiet", "-o"])
        .arg(out);
    cmd
}

#[test]
fn offloading_experts_gives_the_frames_of_both_resident() {
    let model = checkpoint("tiny-wan2.1-t2v", "tiny-wan2.2-a14b");
    let tmp = tempfile::tempdir().unwrap();
    let mut frames = Vec::new();
    for residency in ["on", "off", "auto"] {
        let npy = tmp.path().join(format!("{residency}.npy"));
        // Logs on stderr: the pipeline says when it offloads.
        let out = generate(model.path(), residency, &npy)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "{residency}: {err}");
        // The switch reaches the pipeline: only `on` offloads (`auto` keeps both on the CPU).
        assert_eq!(
            err.contains("one expert resident at a time"),
            residency == "on",
            "{residency}: {err}"
        );
        frames.push(std::fs::read(&npy).unwrap());
    }
    // [9, 32, 48, 3] uint8 plus the .npy header.
    assert!(frames[0].len() > 9 * 32 * 48 * 3, "{}", frames[0].len());
    assert!(frames[0] == frames[1], "on and off differ");
    assert!(frames[1] == frames[2], "off and auto differ");
}

#[test]
fn an_expert_residency_the_checkpoint_cannot_honour_is_one_line_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("x.mp4");
    for residency in ["on", "off"] {
        let out = generate(&fixture("tiny-wan2.1-t2v"), residency, &out_path)
            .output()
            .unwrap();
        let line = assert_one_line_error(&out);
        assert!(line.contains("--offload-experts"), "{line}");
        assert!(line.contains("one transformer"), "{line}");
    }
    let i2v = checkpoint("tiny-wan2.1-i2v", "tiny-wan2.2-i2v-a14b");
    let out = generate(i2v.path(), "on", &out_path).output().unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("--offload-experts on"), "{line}");
    // Not a value of the flag: clap's usage error names it.
    let out = generate(&fixture("tiny-wan2.1-t2v"), "sometimes", &out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--offload-experts"),
        "{}",
        stderr(&out)
    );
    assert!(!out_path.exists(), "nothing written");
}

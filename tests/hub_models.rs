//! Models by Hugging Face repo id (issue 16): `omni generate --model org/name[@revision]` runs a
//! checkpoint found offline in a Hugging Face cache layout (`refs/`, `snapshots/<commit>/`
//! symlinks into `blobs/`) under `HF_HUB_CACHE`, and an uncached id fails in one line.

mod common;

use std::path::Path;

use common::{HF_COMMIT, PROMPT, assert_one_line_error, hf_cache, omni, stderr, tiny_distilled};

/// `omni generate --model MODEL` at 128x64, 33 frames, seed 3, offline with `cache`; the MP4 bytes.
fn generate(model: &str, cache: &Path, out: &Path) -> std::process::Output {
    omni()
        .args(["generate", "--model", model, "--prompt", PROMPT])
        .args(["--width", "128", "--height", "64", "--num-frames", "33"])
        .args(["--seed", "3", "--quiet", "-o"])
        .arg(out)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

#[test]
fn a_cached_repo_id_runs_offline_like_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hf_cache(dir.path(), "tiny-org/tiny-helios", &tiny_distilled());
    let by_folder = dir.path().join("folder.mp4");
    let out = generate(tiny_distilled().to_str().unwrap(), &cache, &by_folder);
    assert!(out.status.success(), "{}", stderr(&out));
    for (model, name) in [
        ("tiny-org/tiny-helios", "repo.mp4"),
        (
            &format!("tiny-org/tiny-helios@{HF_COMMIT}") as &str,
            "commit.mp4",
        ),
    ] {
        let path = dir.path().join(name);
        let out = generate(model, &cache, &path);
        assert!(out.status.success(), "{model}: {}", stderr(&out));
        assert!(
            std::fs::read(&path).unwrap() == std::fs::read(&by_folder).unwrap(),
            "{model}: the cached snapshot made another video than its folder"
        );
    }
}

#[test]
fn an_uncached_repo_id_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hf_cache(dir.path(), "tiny-org/tiny-helios", &tiny_distilled());
    for model in ["tiny-org/not-there", "tiny-org/tiny-helios@v9"] {
        let out = generate(model, &cache, &dir.path().join("x.mp4"));
        let line = assert_one_line_error(&out);
        assert!(
            line.contains("not in the Hugging Face cache")
                && line.contains(model.split('@').next().unwrap()),
            "{line}"
        );
        assert!(!dir.path().join("x.mp4").exists());
    }
    // Neither a folder nor a repo id.
    let out = generate("./no/such/folder", &cache, &dir.path().join("x.mp4"));
    let line = assert_one_line_error(&out);
    assert!(line.contains("./no/such/folder"), "{line}");
}

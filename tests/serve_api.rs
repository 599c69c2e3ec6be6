//! Black-box tests of `omni serve` over real sockets: the built binary on the shipped tiny
//! Distilled checkpoint, a temporary storage folder, `--port 0` (the bound address is read from
//! stdout), and the minimal HTTP/1.1 client on `std::net::TcpStream` of `tests/common/http.rs`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::http::{Resp, multipart, send as http};
use common::{PROMPT, assert_one_line_error, hf_cache, tiny_distilled, tiny_variant};

/// A running `omni serve` (common's, killed on drop) with this file's [`Resp`] requests.
struct Server(common::http::Server);

impl std::ops::Deref for Server {
    type Target = common::http::Server;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Server {
    /// Start on `storage` with extra CLI args and wait until `/readyz` is 200.
    fn start(storage: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["--served-model-name", "tiny-helios"];
        args.extend_from_slice(extra);
        Self::start_model(tiny_distilled().as_os_str(), storage, &args, &[])
    }

    /// Start `omni serve MODEL` (a folder or a repo id) with extra args and environment.
    fn start_model(
        model: &std::ffi::OsStr,
        storage: &Path,
        extra: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        Server(common::http::Server::start(
            Command::new(env!("CARGO_BIN_EXE_omni"))
                .arg("serve")
                .arg(model)
                .args(["--port", "0"])
                .arg("--storage")
                .arg(storage)
                .args(extra)
                .envs(envs.iter().copied())
                .stderr(Stdio::inherit()),
        ))
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        http(&self.addr, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    fn post_json(&self, path: &str, body: Value) -> Resp {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, &[("Content-Type", "application/json")], b"")
    }

    /// Poll until the job is terminal; returns the final Video and every progress value seen.
    fn wait(&self, id: &str) -> (Value, Vec<u64>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = Vec::new();
        loop {
            let r = self.get(&format!("/v1/videos/{id}"));
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            seen.push(v["progress"].as_u64().unwrap());
            match v["status"].as_str().unwrap() {
                "completed" | "failed" => {
                    assert!(r.header("openai-poll-after-ms").is_none());
                    return (v, seen);
                }
                _ => assert!(r.header("openai-poll-after-ms").is_some()),
            }
            assert!(Instant::now() < deadline, "job {id} never finished");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("serve.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn mp4_files(storage: &Path) -> Vec<String> {
    std::fs::read_dir(storage)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".mp4"))
        .collect()
}

const SMALL: &str = "128x64";

#[test]
fn health_readiness_and_models() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--alias", "sora-2"]);
    for p in ["/health", "/healthz", "/readyz"] {
        assert_eq!(s.get(p).status, 200, "{p}");
    }
    let models = s.get("/v1/models").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny-helios", "sora-2"]);
    assert_eq!(s.get("/v1/models/sora-2").json()["object"], "model");
    s.get("/v1/models/nope").error(404);
    s.get("/nowhere").error(404);
}

#[test]
fn create_poll_download_and_delete_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);

    // JSON.
    let r = s.post_json(
        "/v1/videos",
        json!({"prompt": "a red cube", "size": SMALL, "num_frames": 33, "fps": 12, "seed": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("openai-poll-after-ms").is_some());
    let v = r.json();
    assert_eq!(v["object"], "video");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["size"], SMALL);
    assert_eq!(v["model"], "tiny-helios");
    assert!(!r.text().contains(": "), "compact JSON expected");
    let json_id = v["id"].as_str().unwrap().to_string();

    // x-www-form-urlencoded, with a bracket field the openai SDK would send for extra_body.
    let r = s.request(
        "POST",
        "/v1/videos",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"prompt=a+blue+sphere&width=128&height=64&seconds=3&fps=11&extra_params[seed]=4",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let form_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["seconds"], "3");

    // multipart/form-data (what the openai SDK always sends).
    let (ct, body) = multipart(&[
        ("prompt", "a green cone"),
        ("model", "tiny-helios"),
        ("size", SMALL),
        ("num_frames", "33"),
        ("seed", ""),
    ]);
    let r = s.request("POST", "/v1/videos", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let mp_id = r.json()["id"].as_str().unwrap().to_string();

    let mut all_progress = Vec::new();
    for id in [&json_id, &form_id, &mp_id] {
        let (v, seen) = s.wait(id);
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["progress"], 100);
        assert_eq!(v["file_name"], format!("{id}.mp4"));
        assert!(v["completed_at"].as_u64().is_some());
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "progress went back: {seen:?}"
        );
        all_progress.extend(seen);
    }
    assert!(
        all_progress.iter().any(|p| (1..100).contains(p)),
        "never saw progress between 0 and 100: {all_progress:?}"
    );
    assert_eq!(
        s.get(&format!("/v1/videos/{form_id}")).json()["fps"],
        11,
        "form fps"
    );

    // Download, whole and by range.
    let r = s.get(&format!("/v1/videos/{json_id}/content"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    assert_eq!(&r.body[4..8], b"ftyp");
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains(&format!("{json_id}.mp4"))
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let whole = r.body;
    let r = s.request(
        "GET",
        &format!("/v1/videos/{json_id}/content?variant=video"),
        &[("Range", "bytes=4-11")],
        b"",
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &whole[4..12]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 4-11/{}", whole.len()).as_str())
    );
    s.get(&format!("/v1/videos/{json_id}/content?variant=bogus"))
        .error(400);

    // List: desc by default, paging with after/limit.
    let l = s.get("/v1/videos").json();
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [&mp_id, &form_id, &json_id]);
    let p1 = s.get("/v1/videos?limit=2&order=asc").json();
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["first_id"], json_id.as_str());
    assert_eq!(p1["last_id"], form_id.as_str());
    let p2 = s
        .get(&format!("/v1/videos?limit=2&order=asc&after={form_id}"))
        .json();
    assert_eq!(p2["has_more"], false);
    assert_eq!(p2["data"][0]["id"], mp_id.as_str());
    let p0 = s.get("/v1/videos?limit=0").json();
    assert_eq!(
        (p0["has_more"].clone(), p0["first_id"].clone()),
        (json!(true), Value::Null)
    );

    // Delete: record and file go.
    let d = s.delete(&format!("/v1/videos/{json_id}")).json();
    assert_eq!(
        d,
        json!({"id": json_id, "deleted": true, "object": "video.deleted"})
    );
    s.get(&format!("/v1/videos/{json_id}")).error(404);
    s.get(&format!("/v1/videos/{json_id}/content")).error(404);
    assert!(!mp4_files(dir.path()).iter().any(|f| f.contains(&json_id)));
}

#[test]
fn precedence_is_request_then_default_request_then_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[default_request]\nwidth = 128\nheight = 64\nnum_frames = 33\nfps = 8\nseed = 5\n",
    );
    let storage = dir.path().join("storage");
    let s = Server::start(&storage, &["--config", cfg.to_str().unwrap()]);
    let v = s.post_json("/v1/videos", json!({"prompt": "p"})).json();
    assert_eq!(
        (v["size"].as_str(), v["fps"].as_u64()),
        (Some(SMALL), Some(8))
    );
    assert_eq!(v["seconds"], "4", "round(33 frames / 8 fps)");
    let v = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": "64x64", "fps": 16}),
        )
        .json();
    assert_eq!(
        (v["size"].as_str(), v["fps"].as_u64()),
        (Some("64x64"), Some(16))
    );
    // `seconds` beats the default num_frames: 5 s at 8 fps = 40 frames → 2 chunks → 65 frames.
    let v = s
        .post_json("/v1/videos", json!({"prompt": "p", "seconds": 5}))
        .json();
    assert_eq!(
        (v["num_frames"].as_u64(), v["seconds"].as_str()),
        (Some(65), Some("5"))
    );
    // The checkpoint's guidance (1.0, so no CFG) and steps fill the rest: the jobs complete.
    for item in s.get("/v1/videos").json()["data"].as_array().unwrap() {
        let id = item["id"].as_str().unwrap();
        assert_eq!(s.wait(id).0["status"], "completed");
    }
}

#[test]
fn bad_inputs_return_the_openai_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[limits]\nmax_body_bytes = 4096\n");
    let s = Server::start(&dir.path().join("st"), &["--config", cfg.to_str().unwrap()]);
    for (body, param) in [
        (json!({}), "prompt"),
        (json!({"prompt": "   "}), "prompt"),
        (json!({"prompt": "p", "size": "640x"}), "size"),
        (json!({"prompt": "p", "size": "bad"}), "size"),
        (json!({"prompt": "p", "seconds": "0"}), "seconds"),
        (
            json!({"prompt": "p", "num_inference_steps": 0}),
            "num_inference_steps",
        ),
        (
            json!({"prompt": "p", "num_inference_steps": 201}),
            "num_inference_steps",
        ),
        (
            json!({"prompt": "p", "guidance_scale": 25}),
            "guidance_scale",
        ),
        (
            json!({"prompt": "p", "extra_params": "{not json"}),
            "extra_params",
        ),
        (
            json!({"prompt": "p", "extra_params": {"nope": 1}}),
            "extra_params",
        ),
        (json!({"prompt": "p", "width": 100}), "width"),
        (json!({"prompt": "p", "model": "other"}), "model"),
    ] {
        for path in ["/v1/videos", "/v1/videos/sync"] {
            let e = s.post_json(path, body.clone()).error(400);
            assert_eq!(e["param"], param, "{path} {body}: {e}");
            assert_eq!(e["type"], "invalid_request_error");
        }
    }
    let e = s
        .request(
            "POST",
            "/v1/videos",
            &[("Content-Type", "application/json")],
            b"{\"prompt\":",
        )
        .error(400);
    assert_eq!(e["param"], "body");
    s.request(
        "POST",
        "/v1/videos",
        &[("Content-Type", "text/plain")],
        b"hi",
    )
    .error(415);
    let big = json!({"prompt": "x".repeat(5000)}).to_string();
    s.request(
        "POST",
        "/v1/videos",
        &[("Content-Type", "application/json")],
        big.as_bytes(),
    )
    .error(413);
    // Nothing above created a job.
    assert_eq!(s.get("/v1/videos").json()["data"], json!([]));

    for bad in [
        "does-not-exist",
        "video_..%2F..%2Fetc%2Fpasswd",
        "video_0123456789abcdef0123456789abcdef",
    ] {
        s.get(&format!("/v1/videos/{bad}")).error(404);
        s.get(&format!("/v1/videos/{bad}/content")).error(404);
        s.delete(&format!("/v1/videos/{bad}")).error(404);
    }
    s.get("/v1/videos?limit=101").error(400);
    s.get("/v1/videos?limit=-1").error(400);
    s.get("/v1/videos?order=newest").error(400);
    s.request("PUT", "/v1/videos/sync", &[], b"").error(405);
}

#[test]
fn api_keys_guard_v1_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "api_keys = [\"sk-test\"]\n");
    let s = Server::start(&dir.path().join("st"), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(s.get("/health").status, 200);
    s.get("/v1/models").error(401);
    s.request(
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .error(401);
    let r = s.request(
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer sk-test")],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn sync_returns_mp4_bytes_with_metadata_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let (ct, body) = multipart(&[
        ("prompt", "a lighthouse"),
        ("size", SMALL),
        ("num_frames", "33"),
    ]);
    let r = s.request("POST", "/v1/videos/sync", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    assert_eq!(&r.body[4..8], b"ftyp");
    assert!(r.header("x-request-id").unwrap().starts_with("video_sync-"));
    assert_eq!(r.header("x-model"), Some("tiny-helios"));
    assert!(
        r.header("x-inference-time-s")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    // Real phase timings and memory, not placeholders.
    let stages: serde_json::Value =
        serde_json::from_str(r.header("x-stage-durations").unwrap()).unwrap();
    for phase in ["text_encoder", "denoise", "vae_decode", "output"] {
        assert!(stages[phase].as_f64().unwrap() >= 0.0, "{phase}: {stages}");
    }
    assert!(stages["denoise"].as_f64().unwrap() > 0.0, "{stages}");
    let peak: f64 = r.header("x-peak-memory-mb").unwrap().parse().unwrap();
    assert!(peak > 1.0, "peak memory {peak} MiB");
    // Stateless: no job listed, no file kept.
    assert_eq!(s.get("/v1/videos").json()["data"], json!([]));
    assert!(
        mp4_files(dir.path()).is_empty(),
        "{:?}",
        mp4_files(dir.path())
    );
}

#[test]
fn sync_past_its_timeout_answers_504() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[limits]\nsync_timeout_s = 1\n");
    let storage = dir.path().join("st");
    let s = Server::start(&storage, &["--config", cfg.to_str().unwrap()]);
    let r = s.post_json(
        "/v1/videos/sync",
        json!({"prompt": "long", "size": SMALL, "num_frames": 33 * 12}),
    );
    r.error(504);
    // The job was cancelled: a new one runs right away.
    let id = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.wait(&id).0["status"], "completed");
}

#[test]
fn delete_cancels_a_running_job_at_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    // Reference: one 33-frame job.
    let t0 = Instant::now();
    let small = json!({"prompt": "p", "size": SMALL, "num_frames": 33});
    let id = s.post_json("/v1/videos", small.clone()).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait(&id);
    let one_chunk = t0.elapsed();

    // A 60-chunk job, deleted once running.
    let long = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": SMALL, "num_frames": 33 * 60}),
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = s.get(&format!("/v1/videos/{long}")).json();
        if v["status"] == "in_progress" && v["progress"].as_u64().unwrap() > 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {v}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t1 = Instant::now();
    assert_eq!(
        s.delete(&format!("/v1/videos/{long}")).json()["deleted"],
        true
    );
    s.get(&format!("/v1/videos/{long}")).error(404);
    // The worker is free again long before the 60 chunks would have finished.
    let next = s.post_json("/v1/videos", small).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.wait(&next).0["status"], "completed");
    assert!(
        t1.elapsed() < one_chunk * 20,
        "cancel took {:?} (one chunk: {one_chunk:?})",
        t1.elapsed()
    );
    let files = mp4_files(dir.path());
    assert!(!files.iter().any(|f| f.contains(&long)), "{files:?}");
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[limits]\nmax_queued_jobs = 1\n");
    let s = Server::start(&dir.path().join("st"), &["--config", cfg.to_str().unwrap()]);
    let body = json!({"prompt": "p", "size": SMALL, "num_frames": 33 * 12});
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let r = s.post_json("/v1/videos", body.clone());
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
            assert_eq!(r.error(429)["code"], "queue_full");
            refused += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            accepted.push(r.json()["id"].as_str().unwrap().to_string());
        }
    }
    assert!(
        refused >= 2,
        "running + 1 queued at most; accepted {accepted:?}"
    );
    // Refused jobs are not listed.
    assert_eq!(
        s.get("/v1/videos").json()["data"].as_array().unwrap().len(),
        accepted.len()
    );
    for id in accepted {
        s.delete(&format!("/v1/videos/{id}"));
    }
}

#[test]
fn jobs_survive_kill_9_and_unfinished_ones_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let (done, pending) = {
        let s = Server::start(&storage, &[]);
        let done = s
            .post_json(
                "/v1/videos",
                json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
            )
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(s.wait(&done).0["status"], "completed");
        let pending = s
            .post_json(
                "/v1/videos",
                json!({"prompt": "q", "size": SMALL, "num_frames": 66}),
            )
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        (done, pending)
        // Dropped here: SIGKILL, whatever the pending job was doing.
    };
    let s = Server::start(&storage, &[]);
    let v = s.get(&format!("/v1/videos/{done}")).json();
    assert_eq!(v["status"], "completed");
    let r = s.get(&format!("/v1/videos/{done}/content"));
    assert_eq!((r.status, &r.body[4..8]), (200, &b"ftyp"[..]));
    let (v, _) = s.wait(&pending);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["num_frames"], 65);
    let l = s.get("/v1/videos?order=asc").json();
    assert_eq!(l["first_id"], done.as_str());
    assert_eq!(l["last_id"], pending.as_str());
}

#[test]
fn generations_blocks_until_the_job_is_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let r = s.post_json(
        "/v1/videos/generations",
        json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["status"].as_str(), v["progress"].as_u64()),
        (Some("completed"), Some(100))
    );
    assert!(r.header("openai-poll-after-ms").is_none());
    let id = v["id"].as_str().unwrap();
    assert_eq!(s.get(&format!("/v1/videos/{id}/content")).status, 200);
    let r = s.post_json(
        "/v1/videos/generations?wait=false",
        json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
    );
    let status = r.json()["status"].clone();
    assert!(status == "queued" || status == "in_progress", "{status}");
}

#[test]
fn file_ttl_removes_finished_jobs_and_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[storage]\nfile_ttl_s = 1\n");
    let storage = dir.path().join("st");
    let s = Server::start(&storage, &["--config", cfg.to_str().unwrap()]);
    let id = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (v, _) = s.wait(&id);
    assert_eq!(
        v["expires_at"].as_u64(),
        Some(v["completed_at"].as_u64().unwrap() + 1)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.get(&format!("/v1/videos/{id}")).status != 404 {
        assert!(Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mp4_files(&storage).is_empty());
    assert!(!storage.join("jobs").join(format!("{id}.json")).exists());
}

#[test]
fn a_failed_job_is_200_failed_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let s = Server::start(&storage, &[]);
    // Without its storage folder a job cannot be stored: 507 at admission (issue 9 item 6:
    // never a 200 for a job that is then lost).
    std::fs::remove_dir_all(&storage).unwrap();
    let small = json!({"prompt": "p", "size": SMALL, "num_frames": 33});
    assert_eq!(s.post_json("/v1/videos", small.clone()).status, 507);
    std::fs::create_dir_all(storage.join("jobs")).unwrap();
    // A job that fails while it runs: its stored input reference vanishes while it waits
    // behind a long job.
    let long = s.post_json(
        "/v1/videos",
        json!({"prompt": "p", "size": SMALL, "num_frames": 33 * 40}),
    );
    let long = long.json()["id"].as_str().unwrap().to_string();
    let (ct, body) = multipart_file(
        &[("prompt", "p"), ("size", SMALL), ("num_frames", "33")],
        "input_reference",
        "first.png",
        "image/png",
        &png_bytes(128, 64),
    );
    let r = create_multipart(&s, &ct, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    std::fs::remove_file(storage.join(format!("{id}.input"))).unwrap();
    s.delete(&format!("/v1/videos/{long}"));
    let (v, _) = s.wait(&id);
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "input_missing", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    let e = s.get(&format!("/v1/videos/{id}/content")).error(422);
    assert_eq!(e["code"], "generation_failed");
    assert_eq!(s.get("/health").status, 200);
    let id = s.post_json("/v1/videos", small).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.wait(&id).0["status"], "completed");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &[]);
    let Ok(killed) = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
    else {
        eprintln!("no `kill` command on this machine; skipping the SIGTERM check");
        return;
    };
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_missing_model_folder_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_omni"))
        .arg("serve")
        .arg(dir.path().join("no-such-model"))
        .args(["--port", "0", "--storage"])
        .arg(dir.path().join("st"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("omni: error:") && lines[0].contains("no-such-model"),
        "{err}"
    );
}

fn files_of(storage: &Path, id: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(storage)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(id))
        .collect();
    v.sort();
    v
}

#[test]
fn thumbnail_and_spritesheet_come_with_the_video_and_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let id = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.wait(&id).0["status"], "completed");
    let r = s.get(&format!("/v1/videos/{id}/content?variant=thumbnail"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/webp"));
    let thumb = image::load_from_memory(&r.body).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (128, 64));
    let r = s.get(&format!("/v1/videos/{id}/content?variant=spritesheet"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    let sheet = image::load_from_memory(&r.body).unwrap();
    // 33 frames → 10 tiles of 128x64, 5 per row.
    assert_eq!((sheet.width(), sheet.height()), (5 * 128, 2 * 64));
    assert_eq!(
        files_of(dir.path(), &id),
        [
            // The fragmented MP4 `content?stream=true` serves once the job is done.
            format!("{id}.fmp4"),
            format!("{id}.mp4"),
            format!("{id}.spritesheet.jpg"),
            format!("{id}.thumbnail.webp")
        ]
    );
    s.get(&format!("/v1/videos/{id}/content?variant=poster"))
        .error(400);
    s.delete(&format!("/v1/videos/{id}"));
    assert!(files_of(dir.path(), &id).is_empty());
    s.get(&format!("/v1/videos/{id}/content?variant=thumbnail"))
        .error(404);
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').map(val).collect();
    let mut out = Vec::new();
    for c in bytes.chunks(4) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, v)| n | (*v as u32) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..c.len()]);
    }
    out
}

/// The path part of an absolute `http://host/...` URL.
fn path_of(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap();
    &rest[rest.find('/').unwrap()..]
}

#[test]
fn localai_video_blocks_and_answers_url_or_b64() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let r = s.post_json(
        "/video",
        json!({"model": "tiny-helios", "prompt": "a lake", "width": 128, "height": 64,
               "num_frames": 33, "fps": 12, "seed": 1, "cfg_scale": 1.0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // LocalAI's `step`: Distilled runs a 3-stage pyramid, so one step count cannot be honoured;
    // it is a 400 naming `step`, not silently dropped.
    let e = s
        .post_json("/video", json!({"prompt": "a lake", "step": 4}))
        .error(400);
    assert_eq!(e["param"], "step", "{e}");
    let v = r.json();
    assert!(v["created"].as_u64().is_some());
    let id = v["id"].as_str().unwrap();
    assert_eq!(v["data"][0]["index"], 0);
    let url = v["data"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://") && url.ends_with(&format!("/generated-videos/{id}.mp4")),
        "{url}"
    );
    let mp4 = s.get(path_of(url));
    assert_eq!((mp4.status, &mp4.body[4..8]), (200, &b"ftyp"[..]));
    assert_eq!(mp4.header("content-type"), Some("video/mp4"));
    // An ordinary job: listed, deletable.
    assert_eq!(
        s.get(&format!("/v1/videos/{id}")).json()["status"],
        "completed"
    );

    let r = s.post_json(
        "/video",
        json!({"prompt": "a lake", "size": SMALL, "seconds": "2", "fps": 8,
               "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["data"][0].get("url").is_none());
    let bytes = b64_decode(v["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!(&bytes[4..8], b"ftyp");

    let e = s
        .post_json(
            "/video",
            json!({"prompt": "p", "end_image": "data:image/png;base64,iVBORw0KGgo="}),
        )
        .error(400);
    assert_eq!(e["param"], "end_image");
    for field in ["start_image", "input_reference"] {
        let e = s
            .post_json(
                "/video",
                json!({"prompt": "p", field: "data:image/png;base64,iVBORw0KGgo="}),
            )
            .error(400);
        assert_eq!(e["param"], field, "a truncated PNG is undecodable: {e}");
    }
    s.post_json("/video", json!({"prompt": "p", "response_format": "gif"}))
        .error(400);
    s.get("/generated-videos/video_0123456789abcdef0123456789abcdef.mp4")
        .error(404);
    s.get("/generated-videos/..%2Fjobs").error(404);
}

#[test]
fn images_generations_answer_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let r = s.post_json(
        "/v1/images/generations",
        json!({"prompt": "a red apple", "size": SMALL, "response_format": "b64_json", "seed": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("img_"));
    assert_eq!(v["data"][0]["revised_prompt"], "a red apple");
    let png = b64_decode(v["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (128, 64));

    let r = s.post_json(
        "/v1/images/generations",
        json!({"prompt": "a green apple", "size": SMALL, "n": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let url = v["data"][0]["url"].as_str().unwrap();
    let r = s.get(path_of(url));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(&r.body[..4], b"\x89PNG");
    // Images are not videos.
    assert_eq!(s.get("/v1/videos").json()["data"], json!([]));
    let id = v["id"].as_str().unwrap();
    s.get(&format!("/v1/videos/{id}")).error(404);
    s.get("/v1/images/img_0123456789abcdef0123456789abcdef/content")
        .error(404);
    s.post_json("/v1/images/generations", json!({"prompt": "p", "n": 2}))
        .error(400);
    s.post_json("/v1/images/generations", json!({"prompt": " "}))
        .error(400);
}

#[test]
fn openapi_describes_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "api_keys = [\"k\"]\n");
    let s = Server::start(&dir.path().join("st"), &["--config", cfg.to_str().unwrap()]);
    // Open, like /health.
    let r = s.get("/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/videos",
        "/v1/videos/sync",
        "/v1/videos/generations",
        "/v1/videos/{video_id}",
        "/v1/videos/{video_id}/content",
        "/video",
        "/generated-videos/{file}",
        "/v1/images/generations",
        "/v1/images/{image_id}/content",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    // With api_keys set, the document asks for the bearer key on the key routes (and lists
    // their 401), and on none of the probes.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/v1/videos"]["post"]["security"],
        json!([{"bearer": []}])
    );
    assert!(doc["paths"]["/v1/videos/{video_id}"]["delete"]["responses"]["401"].is_object());
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([]));
    assert!(
        doc["paths"]["/health"]["get"]["responses"]
            .get("401")
            .is_none()
    );
    // Every content type the download answers, and the bounds of the loaded model.
    let content =
        &doc["paths"]["/v1/videos/{video_id}/content"]["get"]["responses"]["200"]["content"];
    for ct in ["video/mp4", "image/webp", "image/jpeg"] {
        assert!(content.get(ct).is_some(), "{ct}: {content}");
    }
    let create = &doc["components"]["schemas"]["VideoCreate"]["properties"];
    assert_eq!(create["prompt"]["minLength"], 1);
    assert_eq!(create["width"]["x-multiple-of"], 64, "{}", create["width"]);
    assert_eq!(
        create["model"]["enum"],
        json!(["tiny-helios"]),
        "the served name"
    );
    assert!(
        create.get("num_inference_steps").is_none(),
        "a pyramid checkpoint takes no num_inference_steps"
    );
    // The LocalAI and image routes are guarded like /v1.
    s.post_json("/video", json!({"prompt": "p"})).error(401);
    s.get("/generated-videos/x.mp4").error(401);
}

// ---------------------------------------------------------------------------------------------
// Image-to-video and video-to-video.

/// A PNG test pattern of `w x h`.
fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// An H.264 MP4 of `frames` test-pattern frames made by ffmpeg (libx264).
fn mp4_bytes(frames: usize, size: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.mp4");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate=24"))
        .args(["-frames:v", &frames.to_string()])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("running `ffmpeg` ({e}): these tests make their input videos with ffmpeg; install it (apt-get install -y ffmpeg)")
        });
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).unwrap()
}

/// A multipart body with text `fields` and one file part.
fn multipart_file(
    fields: &[(&str, &str)],
    file_field: &str,
    file_name: &str,
    content_type: &str,
    data: &[u8],
) -> (String, Vec<u8>) {
    let boundary = "omniTestBoundaryFile93Xq";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; \
             filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(data);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn b64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// (width, height, frames) of an MP4.
fn mp4_shape(bytes: &[u8]) -> (u32, u32, usize) {
    let v = omni::media::read_video_bytes(bytes, &omni::media::VideoReadOptions::default())
        .expect("the output is a readable MP4");
    (v.width, v.height, v.frames.len())
}

fn create_multipart(s: &Server, ct: &str, body: &[u8]) -> Resp {
    s.request("POST", "/v1/videos", &[("Content-Type", ct)], body)
}

#[test]
fn image_to_video_from_an_upload_or_an_image_reference() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let png = png_bytes(96, 80);

    // Multipart upload (what the openai SDK sends for `input_reference=open(...)`).
    let (ct, body) = multipart_file(
        &[
            ("prompt", "a red cube"),
            ("size", SMALL),
            ("seconds", "1"),
            ("fps", "24"),
        ],
        "input_reference",
        "ref.png",
        "image/png",
        &png,
    );
    let r = create_multipart(&s, &ct, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(dir.path().join(format!("{id}.input")).is_file());
    let (v, _) = s.wait(&id);
    assert_eq!(v["status"], "completed", "{v}");
    let mp4 = s.get(&format!("/v1/videos/{id}/content"));
    assert_eq!(mp4.status, 200);
    assert_eq!(mp4_shape(&mp4.body), (128, 64, 33));

    // JSON `image_reference` with a data URL, on /v1/videos/generations.
    let data_url = format!("data:image/png;base64,{}", b64_encode(&png));
    let r = s.post_json(
        "/v1/videos/generations",
        json!({"prompt": "a red cube", "size": SMALL, "num_frames": 33, "seed": 2,
               "image_reference": {"image_url": data_url}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "completed", "{}", r.text());
    let id2 = r.json()["id"].as_str().unwrap().to_string();
    // The same as a JSON string in a form field, on /sync.
    let (ct, body) = multipart(&[
        ("prompt", "a red cube"),
        ("size", SMALL),
        ("num_frames", "33"),
        (
            "image_reference",
            &json!({"image_url": data_url}).to_string(),
        ),
    ]);
    let r = s.request("POST", "/v1/videos/sync", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mp4_shape(&r.body), (128, 64, 33));

    // Deleting a conditioned job removes its stored input.
    s.delete(&format!("/v1/videos/{id}"));
    s.delete(&format!("/v1/videos/{id2}"));
    assert!(files_of(dir.path(), &id).is_empty());
    assert!(files_of(dir.path(), &id2).is_empty());
}

#[test]
fn bad_references_are_400_with_param_and_create_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[limits]\nmax_upload_bytes = 4096\nmax_reference_pixels = 10000\n",
    );
    let s = Server::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let png = png_bytes(16, 16);
    let data_url = format!("data:image/png;base64,{}", b64_encode(&png));

    // Both an upload and an image_reference.
    let (ct, body) = multipart_file(
        &[
            ("prompt", "p"),
            (
                "image_reference",
                &json!({"image_url": data_url}).to_string(),
            ),
        ],
        "input_reference",
        "ref.png",
        "image/png",
        &png,
    );
    let e = create_multipart(&s, &ct, &body).error(400);
    assert_eq!(e["param"], "image_reference", "{e}");
    assert!(e["message"].as_str().unwrap().contains("only one"), "{e}");

    // Undecodable upload.
    let (ct, body) = multipart_file(
        &[("prompt", "p")],
        "input_reference",
        "x.png",
        "image/png",
        b"not-an-image",
    );
    let e = create_multipart(&s, &ct, &body).error(400);
    assert_eq!(e["param"], "input_reference", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("not a valid image"),
        "{e}"
    );

    // Over max_reference_pixels by its header (128x128 = 16384 > 10000): refused before decoding,
    // as an upload and as base64.
    let mut big = Vec::new();
    image::RgbImage::from_pixel(128, 128, image::Rgb([9, 9, 9]))
        .write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
        .unwrap();
    assert!(big.len() < 4096, "a flat PNG is small: {} bytes", big.len());
    let (ct, body) = multipart_file(
        &[("prompt", "p")],
        "input_reference",
        "big.png",
        "image/png",
        &big,
    );
    let e = create_multipart(&s, &ct, &body).error(400);
    assert_eq!(e["param"], "input_reference", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("128x128") && msg.contains("max_reference_pixels"),
        "{e}"
    );
    let e = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "start_image": b64_encode(&big)}),
        )
        .error(400);
    assert_eq!(e["param"], "start_image", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("max_reference_pixels"),
        "{e}"
    );

    // A video shorter than one chunk.
    let short = mp4_bytes(5, "128x64");
    let (ct, body) = multipart_file(
        &[("prompt", "p")],
        "input_reference",
        "in.mp4",
        "video/mp4",
        &short,
    );
    let e = create_multipart(&s, &ct, &body).error(400);
    assert_eq!(e["param"], "input_reference", "{e}");

    // file_id, remote URLs, bad base64, over the upload limit.
    for (body, param, status) in [
        (
            json!({"prompt": "p", "image_reference": {"file_id": "file_1"}}),
            "image_reference",
            400,
        ),
        (
            json!({"prompt": "p", "start_image": "https://example.com/a.png"}),
            "start_image",
            400,
        ),
        (
            json!({"prompt": "p", "reference_url": "%%%"}),
            "reference_url",
            400,
        ),
        (
            json!({"prompt": "p", "input_reference": b64_encode(&vec![7u8; 5000])}),
            "input_reference",
            413,
        ),
    ] {
        let e = s.post_json("/v1/videos", body.clone()).error(status);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    assert_eq!(
        s.get("/v1/videos").json()["data"],
        json!([]),
        "no job was created"
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".input"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn video_to_video_from_an_upload() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let input = mp4_bytes(40, "160x96");
    let (ct, body) = multipart_file(
        &[
            ("prompt", "continue"),
            ("size", SMALL),
            ("num_frames", "33"),
        ],
        "input_reference",
        "in.mp4",
        "video/mp4",
        &input,
    );
    let r = create_multipart(&s, &ct, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let (v, _) = s.wait(&id);
    assert_eq!(v["status"], "completed", "{v}");
    let mp4 = s.get(&format!("/v1/videos/{id}/content"));
    assert_eq!(mp4_shape(&mp4.body), (128, 64, 33));
}

#[test]
fn a_queued_conditioned_job_runs_again_conditioned_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let png = png_bytes(64, 64);
    let (long, pending) = {
        let s = Server::start(&storage, &[]);
        // A long job in front so the conditioned one is still queued at the kill.
        let long = s
            .post_json(
                "/v1/videos",
                json!({"prompt": "long", "size": SMALL, "num_frames": 330}),
            )
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (ct, body) = multipart_file(
            &[("prompt", "q"), ("size", SMALL), ("num_frames", "33")],
            "input_reference",
            "ref.png",
            "image/png",
            &png,
        );
        let r = create_multipart(&s, &ct, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        (long, r.json()["id"].as_str().unwrap().to_string())
        // Dropped here: SIGKILL.
    };
    let record: Value = serde_json::from_slice(
        &std::fs::read(storage.join("jobs").join(format!("{pending}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["input"], "image", "{record}");
    assert_eq!(
        record["status"], "queued",
        "still queued at the kill: {record}"
    );
    assert_eq!(
        std::fs::read(storage.join(format!("{pending}.input"))).unwrap(),
        png
    );
    let s = Server::start(&storage, &[]);
    s.delete(&format!("/v1/videos/{long}"));
    let (v, _) = s.wait(&pending);
    assert_eq!(v["status"], "completed", "{v}");
    let mp4 = s.get(&format!("/v1/videos/{pending}/content"));
    assert_eq!(mp4_shape(&mp4.body), (128, 64, 33));
    s.delete(&format!("/v1/videos/{pending}"));
    assert!(!storage.join(format!("{pending}.input")).exists());
}

#[test]
fn localai_video_takes_start_image_as_base64() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let png = png_bytes(128, 64);
    for (field, value) in [
        ("start_image", b64_encode(&png)),
        (
            "input_reference",
            format!("data:image/png;base64,{}", b64_encode(&png)),
        ),
    ] {
        let r = s.post_json(
            "/video",
            json!({"prompt": "a lake", "width": 128, "height": 64, "num_frames": 33,
                   field: value, "response_format": "b64_json"}),
        );
        assert_eq!(r.status, 200, "{field}: {}", r.text());
        let bytes = b64_decode(r.json()["data"][0]["b64_json"].as_str().unwrap());
        assert_eq!(mp4_shape(&bytes), (128, 64, 33));
    }
}

/// `keep_text_encoder = false`: the worker loads UMT5 for each request and drops it after
/// encoding; requests still succeed, and the same seed gives the same video every time.
#[test]
fn text_encoder_loaded_per_request_when_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "keep_text_encoder = false\n");
    let storage = dir.path().join("st");
    let s = Server::start(&storage, &["--config", cfg.to_str().unwrap()]);
    let body = json!({"prompt": "a lighthouse", "size": SMALL, "num_frames": 33, "seed": 5});
    let first = s.post_json("/v1/videos/sync", body.clone());
    assert_eq!(first.status, 200, "{}", first.text());
    let second = s.post_json("/v1/videos/sync", body);
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(&first.body[4..8], b"ftyp");
    assert!(first.body == second.body, "same seed, same bytes");
}

/// Issue 16: over HTTP every field a checkpoint can use reaches it as from the CLI. A Base
/// server given `num_inference_steps=3` makes the bytes `omni generate --num-inference-steps 3`
/// makes with the same seed, and not those of 4 steps (so the steps were neither dropped nor
/// replaced by the default 50).
#[test]
fn base_runs_the_requested_steps_over_http_as_the_cli_does() {
    let model = tiny_variant("base");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_model(model.path().as_os_str(), &dir.path().join("st"), &[], &[]);
    let r = s.post_json(
        "/v1/videos",
        json!({"prompt": PROMPT, "width": 128, "height": 64, "num_frames": 33, "seed": 5,
               "num_inference_steps": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let (v, _) = s.wait(&id);
    assert_eq!(v["status"], "completed", "{v}");
    let served = s.get(&format!("/v1/videos/{id}/content")).body;
    let cli = |steps: &str| {
        let out = dir.path().join(format!("cli-{steps}.mp4"));
        let status = Command::new(env!("CARGO_BIN_EXE_omni"))
            .args(["generate", "--model"])
            .arg(model.path())
            .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
            .args(["--num-frames", "33", "--seed", "5", "--quiet"])
            .args(["--num-inference-steps", steps, "-o"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(out).unwrap()
    };
    assert!(
        served == cli("3"),
        "the server's 3-step video differs from the CLI's"
    );
    assert!(served != cli("4"), "3 and 4 steps made the same video");
}

#[test]
fn a_preset_for_another_pipeline_class_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_omni"))
        .arg("serve")
        .arg(tiny_distilled())
        .args(["--preset", "helios-base", "--port", "0", "--storage"])
        .arg(dir.path().join("st"))
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(
        line.contains("HeliosPipeline") && line.contains("HeliosPyramidPipeline"),
        "{line}"
    );
    // The Base checkpoint with the Distilled preset: refused too, not 400 on every request.
    let base = tiny_variant("base");
    let out = Command::new(env!("CARGO_BIN_EXE_omni"))
        .arg("serve")
        .arg(base.path())
        .args(["--preset", "helios-distilled", "--port", "0", "--storage"])
        .arg(dir.path().join("st"))
        .output()
        .unwrap();
    let line = assert_one_line_error(&out);
    assert!(line.contains("helios-distilled"), "{line}");
}

/// `omni serve org/name` as vLLM-Omni users start theirs: the repo found offline in the Hugging
/// Face cache layout, served under its repo id.
#[test]
fn serves_a_repo_id_from_the_hugging_face_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = hf_cache(dir.path(), "tiny-org/tiny-helios", &tiny_distilled());
    let s = Server::start_model(
        "tiny-org/tiny-helios".as_ref(),
        &dir.path().join("st"),
        &[],
        &[
            ("HF_HUB_CACHE", cache.as_os_str()),
            ("HF_HUB_OFFLINE", "1".as_ref()),
        ],
    );
    let models = s.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny-org/tiny-helios", "{models}");
    let r = s.post_json(
        "/v1/videos",
        json!({"model": "tiny-org/tiny-helios", "prompt": "p", "size": "128x64",
               "num_frames": 33, "seed": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (v, _) = s.wait(r.json()["id"].as_str().unwrap());
    assert_eq!(v["status"], "completed", "{v}");
}

/// Issue 9 (1, 2, 7): requests that would exhaust memory or run for days are a 400 naming the
/// field (as the client sent it) and its limit, before any job exists; the server goes on.
#[test]
fn requests_over_the_work_budget_are_400_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("st"), &[]);
    for (body, param) in [
        (
            json!({"prompt": "p", "extra_params": {"history_sizes": [100000, 100000, 100000]}}),
            "history_sizes",
        ),
        (
            json!({"prompt": "p", "size": SMALL,
                   "extra_params": {"num_latent_frames_per_chunk": 1000000}}),
            "num_latent_frames_per_chunk",
        ),
        (
            json!({"prompt": "p", "num_frames": 1000000000}),
            "num_frames",
        ),
        (json!({"prompt": "p", "seconds": 1000000000}), "seconds"),
        (json!({"prompt": "p", "size": "99999x99999"}), "width"),
        (json!({"prompt": "p", "width": 4294967295u32}), "width"),
    ] {
        let e = s.post_json("/v1/videos", body.clone()).error(400);
        assert_eq!(e["param"], param, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains("limit") || param == "width",
            "{e}"
        );
    }
    assert_eq!(
        s.get("/v1/videos").json()["data"].as_array().unwrap().len(),
        0
    );
    let r = s.post_json(
        "/v1/videos",
        json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
    );
    let (v, _) = s.wait(r.json()["id"].as_str().unwrap());
    assert_eq!(v["status"], "completed", "{v}");
}

/// Issue 9 (3): a deleted queued job gives its queue slot back at once.
#[test]
fn deleted_queued_jobs_free_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[limits]\nmax_queued_jobs = 2\n");
    let s = Server::start(&dir.path().join("st"), &["--config", cfg.to_str().unwrap()]);
    let long = json!({"prompt": "p", "size": SMALL, "num_frames": 33 * 40});
    let running = s.post_json("/v1/videos", long.clone()).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.get(&format!("/v1/videos/{running}")).json()["status"] != "in_progress" {
        assert!(Instant::now() < deadline, "the first job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _round in 0..3 {
        let queued: Vec<String> = (0..2)
            .map(|_| {
                let r = s.post_json("/v1/videos", long.clone());
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(s.post_json("/v1/videos", long.clone()).status, 429);
        for id in queued {
            assert_eq!(s.delete(&format!("/v1/videos/{id}")).status, 200);
        }
    }
    s.delete(&format!("/v1/videos/{running}"));
}

/// Issue 9 (1): a job the server died under `max_attempts` times is failed with
/// `worker_crashed` at the next start instead of taking the server down again; one it died
/// under fewer times runs again.
#[test]
fn a_job_the_server_died_under_twice_fails_instead_of_looping() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let ids: Vec<String> = {
        let s = Server::start(&storage, &[]);
        (0..2)
            .map(|i| {
                let r = s.post_json(
                    "/v1/videos",
                    json!({"prompt": format!("p{i}"), "size": SMALL, "num_frames": 33}),
                );
                let id = r.json()["id"].as_str().unwrap().to_string();
                assert_eq!(s.wait(&id).0["status"], "completed");
                id
            })
            .collect()
    };
    // As the records look after the process died mid-job (once, twice).
    for (id, attempts) in ids.iter().zip([2, 1]) {
        let path = storage.join("jobs").join(format!("{id}.json"));
        let mut rec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        rec["status"] = json!("in_progress");
        rec["attempts"] = json!(attempts);
        for k in ["completed_at", "file_name"] {
            rec[k] = Value::Null;
        }
        std::fs::write(&path, rec.to_string()).unwrap();
    }
    let s = Server::start(&storage, &[]);
    let v = s.get(&format!("/v1/videos/{}", ids[0])).json();
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "worker_crashed", "{v}");
    let (v, _) = s.wait(&ids[1]);
    assert_eq!(v["status"], "completed", "{v}");
}

/// Issue 9 (4): a client that never finishes its headers (slowloris) is cut off after
/// `header_read_timeout_s`, and others are served meanwhile.
#[test]
fn slow_headers_are_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[limits]\nheader_read_timeout_s = 1\n");
    let s = Server::start(&dir.path().join("st"), &["--config", cfg.to_str().unwrap()]);
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(&s.addr).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            c
        })
        .collect();
    assert_eq!(
        s.get("/health").status,
        200,
        "served while 20 clients dawdle"
    );
    let started = Instant::now();
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the server: EOF (or a 408 first), or a reset; not a read timeout.
        match c.read(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow clients held for {:?}",
        started.elapsed()
    );
    assert_eq!(s.get("/health").status, 200);
}

/// Issue 9 (9): the auth scheme is case-insensitive, 405 says what is allowed, 416 carries the
/// envelope, and a text field that is not UTF-8 is a 400 naming it (not mojibake).
#[test]
fn protocol_details_allow_416_bearer_case_and_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "api_keys = [\"sk-test\"]\n");
    let s = Server::start(&dir.path().join("st"), &["--config", cfg.to_str().unwrap()]);
    let auth = [("Authorization", "bearer sk-test")];
    assert_eq!(s.request("GET", "/v1/models", &auth, b"").status, 200);
    let r = s.request("PUT", "/v1/videos/sync", &auth, b"");
    r.error(405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = s.request("PATCH", "/v1/videos", &auth, b"");
    r.error(405);
    assert_eq!(r.header("allow"), Some("GET, POST"));

    let (ct, body) = multipart(&[("prompt", "a lake"), ("size", SMALL), ("num_frames", "33")]);
    let r = s.request(
        "POST",
        "/v1/videos",
        &[auth[0], ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while s
        .request("GET", &format!("/v1/videos/{id}"), &auth, b"")
        .json()["status"]
        != "completed"
    {
        assert!(Instant::now() < deadline, "job never completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = s.request(
        "GET",
        &format!("/v1/videos/{id}/content"),
        &[auth[0], ("Range", "bytes=999999999-")],
        b"",
    );
    assert_eq!(r.error(416)["code"], "range_not_satisfiable");
    assert!(r.header("content-range").unwrap().starts_with("bytes */"));

    let boundary = "omniTestBoundary7MA4YWxk";
    let mut body =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n")
            .into_bytes();
    body.extend_from_slice(b"\xff\xfe bad\r\n");
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = s.request(
        "POST",
        "/v1/videos",
        &[auth[0], ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.error(400)["param"], "prompt");
    let form = [
        auth[0],
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let r = s.request(
        "POST",
        "/v1/videos",
        &form,
        b"size=128x64&prompt=%FF%FE+bad",
    );
    assert_eq!(r.error(400)["param"], "prompt");
}

/// Issue 9 (5): what a killed run leaves behind (temporary MP4s and previews, inputs of finished
/// or unknown jobs) is removed at the next start; a completed job's files and foreign files stay.
#[test]
fn files_nothing_needs_are_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let id = {
        let s = Server::start(&storage, &[]);
        let r = s.post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
        );
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(s.wait(&id).0["status"], "completed");
        // The record reaches the disk just after the status is visible: wait for it before the
        // kill, so the restart sees a completed job.
        let record = storage.join("jobs").join(format!("{id}.json"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&record).is_ok_and(|t| t.contains("\"completed\"")) {
            assert!(
                Instant::now() < deadline,
                "the completed record never reached the disk"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        id
    };
    let kept_before = files_of(&storage, &id);
    let unknown = "video_0123456789abcdef0123456789abcdef";
    let orphans = [
        format!(".{id}.mp4.4242.0.tmp"),
        format!("{id}.spritesheet.tmp"),
        format!("{id}.input"),
        format!("{unknown}.input"),
        format!("{unknown}.mp4"),
    ];
    for f in &orphans {
        std::fs::write(storage.join(f), b"x").unwrap();
    }
    std::fs::write(storage.join("notes.txt"), b"mine").unwrap();
    let s = Server::start(&storage, &[]);
    for f in &orphans {
        assert!(!storage.join(f).exists(), "{f} survived the start-up sweep");
    }
    assert!(storage.join("notes.txt").exists());
    assert_eq!(files_of(&storage, &id), kept_before);
    let r = s.get(&format!("/v1/videos/{id}/content"));
    assert_eq!((r.status, &r.body[4..8]), (200, &b"ftyp"[..]));
}

/// Issue 9 (6): when the job record cannot be stored the create is a 507 with the envelope and
/// no job exists, never a 200 for a job that is then lost; once storage works again, so do jobs.
#[test]
fn a_job_that_cannot_be_stored_is_507_not_a_lost_200() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let s = Server::start(&storage, &[]);
    // Storage that fails writes: the records folder replaced by a plain file.
    let jobs = storage.join("jobs");
    std::fs::rename(&jobs, storage.join("jobs.away")).unwrap();
    std::fs::write(&jobs, b"not a folder").unwrap();
    let body = json!({"prompt": "p", "size": SMALL, "num_frames": 33});
    let e = s.post_json("/v1/videos", body.clone()).error(507);
    assert_eq!(e["code"], "insufficient_storage", "{e}");
    assert_eq!(
        s.get("/v1/videos").json()["data"].as_array().unwrap().len(),
        0,
        "no job was admitted"
    );
    std::fs::remove_file(&jobs).unwrap();
    std::fs::rename(storage.join("jobs.away"), &jobs).unwrap();
    let r = s.post_json("/v1/videos", body);
    assert_eq!(r.status, 200, "{}", r.text());
    let (v, _) = s.wait(r.json()["id"].as_str().unwrap());
    assert_eq!(v["status"], "completed", "{v}");
}

/// Storage files no job record accounts for: temporary files, and files of unknown ids.
fn orphans(storage: &Path) -> Vec<String> {
    let ids: Vec<String> = std::fs::read_dir(storage.join("jobs"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    std::fs::read_dir(storage)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || !ids.iter().any(|id| n.starts_with(&format!("{id}."))))
        .collect()
}

#[test]
fn kill_9_at_four_moments_leaves_no_orphan_files_and_loses_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("st");
    let png = png_bytes(64, 32);
    let (ct, upload) = multipart_file(
        &[
            ("prompt", "conditioned"),
            ("size", SMALL),
            ("num_frames", "33"),
        ],
        "input_reference",
        "ref.png",
        "image/png",
        &png,
    );
    let mut admitted: Vec<String> = Vec::new();

    // 1. During admission: a conditioned create is still being sent / decoded.
    {
        let s = Server::start(&storage, &[]);
        let mut c = TcpStream::connect(&s.addr).unwrap();
        let head = format!(
            "POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            upload.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&upload).unwrap();
        // Killed (drop) without reading the answer.
    }

    // 2. A job denoising and a conditioned job queued behind it.
    {
        let s = Server::start(&storage, &[]);
        let long = s.post_json(
            "/v1/videos",
            json!({"prompt": "long", "size": SMALL, "num_frames": 132}),
        );
        admitted.push(long.json()["id"].as_str().unwrap().to_string());
        let queued = create_multipart(&s, &ct, &upload);
        assert_eq!(queued.status, 200, "{}", queued.text());
        admitted.push(queued.json()["id"].as_str().unwrap().to_string());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = s.get(&format!("/v1/videos/{}", admitted[0])).json();
            if v["status"] == "in_progress" && v["progress"].as_u64().unwrap() > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "never started: {v}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let v = s.get(&format!("/v1/videos/{}", admitted[1])).json();
        assert_eq!(v["status"], "queued", "{v}");
    }

    // 3. Writing the output: the last steps of a job (decode, MP4, previews).
    {
        let s = Server::start(&storage, &[]);
        let deadline = Instant::now() + Duration::from_secs(120);
        'watch: loop {
            for id in &admitted {
                let v = s.get(&format!("/v1/videos/{id}")).json();
                if v["status"] == "in_progress" && v["progress"].as_u64().unwrap() >= 90 {
                    break 'watch;
                }
            }
            assert!(Instant::now() < deadline, "no job reached its output stage");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // 4. Right after a restart (the sweep and the re-queued jobs starting), then once more to
    //    let everything finish.
    {
        let _s = Server::start(&storage, &[]);
    }
    let s = Server::start(&storage, &[]);
    for id in &admitted {
        let (v, _) = s.wait(id);
        // A job killed under twice fails (`worker_crashed`); none is lost or left running.
        assert!(
            v["status"] == "completed" || v["error"]["code"] == "worker_crashed",
            "{v}"
        );
    }
    let listed = s.get("/v1/videos?order=asc").json();
    for id in &admitted {
        assert!(
            listed["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["id"] == id.as_str()),
            "{id} lost: {listed}"
        );
    }
    let left = orphans(&storage);
    assert!(left.is_empty(), "orphan files after four kills: {left:?}");
}

/// A 1 MiB tmpfs mounted at `at` (root only), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fill the filesystem of `path` up to `keep` free bytes; returns the filler file.
fn fill_disk(dir: &Path, keep: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    let mut len = 0u64;
    while f.write_all(&block).is_ok() {
        len += 4096;
    }
    drop(f);
    // What did land counts; give back `keep` bytes.
    let len = std::fs::metadata(&path).unwrap().len().max(len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len.saturating_sub(keep))
        .unwrap();
    path
}

#[test]
fn a_full_disk_during_a_job_fails_it_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk")) else {
        // `mount` needs root; CI runs as root (as the apt steps of .ci/run do).
        assert!(
            std::env::var_os("OMNI_REQUIRE_TMPFS").is_none(),
            "cannot mount a tmpfs and OMNI_REQUIRE_TMPFS is set"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    };
    let storage = disk.0.join("st");
    let s = Server::start(&storage, &[]);
    // Room for job records (a few KiB each), not for the video.
    let filler = fill_disk(&disk.0, 12 * 1024);
    let r = s.post_json(
        "/v1/videos",
        json!({"prompt": "p", "size": SMALL, "num_frames": 66}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let (v, _) = s.wait(&id);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        files_of(&storage, &id).is_empty(),
        "partial files: {:?}",
        files_of(&storage, &id)
    );
    assert!(orphans(&storage).is_empty(), "{:?}", orphans(&storage));
    assert_eq!(s.get("/health").status, 200);

    // Full to the last byte: admission answers 507 and keeps nothing.
    let before = s.get("/v1/videos").json()["data"].as_array().unwrap().len();
    let _ = fill_disk(&disk.0.join("st"), 0);
    let r = s.post_json(
        "/v1/videos",
        json!({"prompt": "q", "size": SMALL, "num_frames": 33}),
    );
    r.error(507);
    assert_eq!(
        s.get("/v1/videos").json()["data"].as_array().unwrap().len(),
        before
    );
    std::fs::remove_file(disk.0.join("st").join("filler")).unwrap();
    std::fs::remove_file(&filler).unwrap();

    // Space again: the next job completes; after a restart the failed one is still failed.
    let r = s.post_json(
        "/v1/videos",
        json!({"prompt": "r", "size": SMALL, "num_frames": 33}),
    );
    let ok = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait(&ok).0["status"], "completed");
    drop(s);
    let s = Server::start(&storage, &[]);
    assert_eq!(
        s.get(&format!("/v1/videos/{id}")).json()["status"],
        "failed"
    );
    assert_eq!(
        s.get(&format!("/v1/videos/{ok}")).json()["status"],
        "completed"
    );
    drop(s);
    assert!(orphans(&storage).is_empty(), "{:?}", orphans(&storage));
}

/// The value of the sample `name` (with its labels, as printed) in an OpenMetrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
fn metrics_count_jobs_steps_frames_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("st"), &[]);
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(
        sample(&text, "omni_worker_ready{worker=\"0\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "omni_queue_depth"), Some(0.0), "{text}");
    // One completed job of 33 frames at 11 fps, 3 denoising steps (one per pyramid stage).
    let v = s.post_json(
        "/v1/videos",
        json!({"prompt": "p", "size": SMALL, "num_frames": 33, "fps": 11,
               "extra_params": {"pyramid_num_inference_steps_list": [1, 1, 1],
                                "is_amplify_first_chunk": false}}),
    );
    let id = v.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait(&id).0["status"], "completed");
    // A 400 and a cancelled job.
    s.post_json("/v1/videos", json!({"prompt": ""})).error(400);
    let long = s.post_json(
        "/v1/videos",
        json!({"prompt": "p", "size": SMALL, "num_frames": 33 * 40}),
    );
    let long = long.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.delete(&format!("/v1/videos/{long}")).status, 200);
    let text = s.get("/metrics").text();
    let get = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name}:\n{text}"));
    assert_eq!(
        get("omni_jobs_finished_total{status=\"completed\",error_code=\"\"}"),
        1.0
    );
    assert_eq!(
        get("omni_jobs_finished_total{status=\"cancelled\",error_code=\"\"}"),
        1.0
    );
    assert_eq!(get("omni_frames_generated_total"), 33.0);
    assert!((get("omni_video_seconds_generated_total") - 3.0).abs() < 1e-9);
    // The cancelled job may have run some steps before the DELETE; the completed one ran 3.
    assert!(get("omni_denoising_step_seconds_count") >= 3.0, "{text}");
    assert!(get("omni_job_duration_seconds_count") >= 1.0, "{text}");
    assert!(get("omni_job_queue_wait_seconds_count") >= 1.0, "{text}");
    assert!(get("omni_worker_peak_memory_bytes{worker=\"0\",memory=\"host\"}") > 1e6);
    assert_eq!(
        get("omni_http_requests_total{route=\"/v1/videos\",method=\"POST\",status=\"400\"}"),
        1.0
    );
    assert_eq!(
        get(
            "omni_http_requests_total{route=\"/v1/videos/{video_id}\",method=\"DELETE\",status=\"200\"}"
        ),
        1.0
    );
    assert!(get("omni_http_request_duration_seconds_count{route=\"/metrics\"}") >= 1.0);
    s.get("/no/such/route").error(404);
    let text = s.get("/metrics").text();
    assert_eq!(
        sample(
            &text,
            "omni_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"
        ),
        Some(1.0),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("omni_"), "{line}");
    }
}

#[test]
fn two_workers_run_two_jobs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("st"), &["--workers", "2"]);
    let models = s.get("/v1/models").json();
    let workers = &models["data"][0]["workers"];
    assert_eq!(
        workers,
        &json!([{"worker": "0", "ready": true, "job": null},
                {"worker": "1", "ready": true, "job": null}]),
        "{models}"
    );
    // Two jobs of 40 chunks each: both must be in progress at the same moment, each on its
    // own worker (with one worker the second would stay queued until the first ends).
    let body = json!({"prompt": "p", "size": SMALL, "num_frames": 33 * 40});
    let a = s.post_json("/v1/videos", body.clone()).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s.post_json("/v1/videos", body).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = |id: &str| s.get(&format!("/v1/videos/{id}")).json()["status"].clone();
        if status(&a) == "in_progress" && status(&b) == "in_progress" {
            break;
        }
        assert!(Instant::now() < deadline, "the two jobs never ran together");
        std::thread::sleep(Duration::from_millis(10));
    }
    let models = s.get("/v1/models").json();
    let mut running: Vec<String> = models["data"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["job"].as_str().map(String::from))
        .collect();
    running.sort();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(running, both, "{models}");
    let text = s.get("/metrics").text();
    for w in ["0", "1"] {
        assert_eq!(
            sample(&text, &format!("omni_worker_busy{{worker=\"{w}\"}}")),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(sample(&text, "omni_jobs_running"), Some(2.0), "{text}");
    for id in [&a, &b] {
        assert_eq!(s.delete(&format!("/v1/videos/{id}")).status, 200);
    }
    // The workers are free again and a short job completes.
    let id = s
        .post_json(
            "/v1/videos",
            json!({"prompt": "p", "size": SMALL, "num_frames": 33}),
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.wait(&id).0["status"], "completed");
}

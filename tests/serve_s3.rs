//! `[outputs] url = "s3://…"` against a real S3-compatible server, and the scale-out config
//! errors, over real sockets (the built `omni serve` on the tiny Distilled checkpoint).
//!
//! The S3 server is moto in server mode (PyPI `moto[server]`): `OMNI_S3_ENDPOINT`
//! (`http://host:port`) names a running one, else the test starts `moto_server` itself from
//! `OMNI_MOTO_SERVER`, `target/moto-venv/bin/moto_server` or `PATH` on a free loopback port and
//! stops it at the end. The bucket is created with an unsigned `PUT /<bucket>` (moto accepts it;
//! for another server create `OMNI_S3_BUCKET` beforehand and set it). Without a server the S3
//! test is skipped with a printed reason, unless `OMNI_REQUIRE_S3=1` (as `.ci/run` sets), in
//! which case it fails. Install moto with:
//! `python3 -m venv target/moto-venv && target/moto-venv/bin/pip install 'moto[server]==5.2.5'`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use serde_json::{Value, json};

use common::http::{Resp, send as http};
use common::s3::{Killed, s3_or_skip};
use common::{assert_one_line_error, omni, spawn_serve, tiny_distilled};

/// A running `omni serve`, killed on drop.
struct Server {
    _child: Killed,
    addr: String,
}

impl Server {
    fn start(storage: &Path, config: &Path) -> Server {
        let (child, addr) = spawn_serve(
            omni()
                .arg("serve")
                .arg(tiny_distilled())
                .args(["--port", "0", "--served-model-name", "tiny-helios"])
                .arg("--storage")
                .arg(storage)
                .arg("--config")
                .arg(config)
                // Credentials from the standard AWS variables (moto takes any).
                .env("AWS_ACCESS_KEY_ID", "omni-test")
                .env("AWS_SECRET_ACCESS_KEY", "omni-test-secret")
                .env("AWS_REGION", "us-east-1")
                .stderr(Stdio::inherit()),
        );
        let server = Server {
            _child: Killed(child),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.get("/readyz").status != 200 {
            assert!(Instant::now() < deadline, "model never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn get(&self, path: &str) -> Resp {
        http(&self.addr, "GET", path, &[], b"")
    }

    fn create(&self, seed: u64) -> String {
        let body =
            json!({"prompt": "a red cube", "size": "128x64", "num_frames": 33, "seed": seed});
        let r = http(
            &self.addr,
            "POST",
            "/v1/videos",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.get(&format!("/v1/videos/{id}")).json();
            if v["status"] == "completed" || v["status"] == "failed" {
                return v;
            }
            assert!(Instant::now() < deadline, "job {id} never finished");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn ffprobe_frames(bytes: &[u8]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.mp4");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe must be installed (apt-get install -y ffmpeg; .ci/run does it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe: {}",
        common::stderr(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["streams"][0]["codec_name"], "h264");
    v["streams"][0]["nb_read_frames"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The bucket through `object_store` (a second, independent client of the same server).
struct Bucket {
    store: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    fn new(endpoint: &str, bucket: &str) -> Self {
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id("omni-test")
            .with_secret_access_key("omni-test-secret")
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            store: Arc::new(store),
            rt,
        }
    }

    /// Object names under `prefix/` that start with `id`, sorted.
    fn names(&self, prefix: &str, id: &str) -> Vec<String> {
        let p = ObjectPath::from(prefix);
        let mut v: Vec<String> = self
            .rt
            .block_on(self.store.list(Some(&p)).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .filter(|n| n.starts_with(id))
            .collect();
        v.sort();
        v
    }

    fn bytes(&self, key: &str) -> Vec<u8> {
        let store = self.store.clone();
        let key = ObjectPath::from(key);
        self.rt
            .block_on(async move { store.get(&key).await?.bytes().await })
            .unwrap()
            .to_vec()
    }

    /// Poll (at most 30 s) until `names(prefix, id)` is `want`.
    fn wait_names(&self, prefix: &str, id: &str, want: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let names = self.names(prefix, id);
            if names == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bucket has {names:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn config(dir: &Path, endpoint: &str, url: &str, redirect: bool) -> PathBuf {
    let p = dir.join("serve.toml");
    std::fs::write(
        &p,
        format!(
            "[outputs]\nurl = \"{url}\"\nendpoint = \"{endpoint}\"\nallow_http = true\n\
             redirect = {redirect}\npresign_expiry_s = 600\n"
        ),
    )
    .unwrap();
    p
}

/// `host:port` and `path?query` of an absolute http URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (host.to_string(), path.to_string())
}

#[test]
fn outputs_on_s3_are_uploaded_served_with_ranges_redirected_and_deleted() {
    let Some(s3) = s3_or_skip("serve_s3") else {
        return;
    };
    let bucket = s3.bucket("serve");
    let b = Bucket::new(&s3.endpoint, &bucket);
    let storage = tempfile::tempdir().unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    let prefix = "runs/a";
    let url = format!("s3://{bucket}/{prefix}");
    let cfg = config(cfg_dir.path(), &s3.endpoint, &url, false);

    let s = Server::start(storage.path(), &cfg);
    let kept = s.create(1);
    let gone = s.create(2);
    for id in [&kept, &gone] {
        let v = s.wait(id);
        assert_eq!(v["status"], "completed", "{v}");
        assert!(v["stage_durations"]["publish"].as_f64().is_some(), "{v}");
    }
    // Every output is in the bucket and none is left in the staging folder.
    let all = |id: &str| {
        [".fmp4", ".mp4", ".spritesheet.jpg", ".thumbnail.webp"]
            .map(|s| format!("{id}{s}"))
            .to_vec()
    };
    b.wait_names(prefix, &kept, &all(&kept));
    let staged: Vec<String> = std::fs::read_dir(storage.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&kept))
        .collect();
    assert!(staged.is_empty(), "staging still holds {staged:?}");
    let object = b.bytes(&format!("{prefix}/{kept}.mp4"));

    // Whole download: the object's bytes, and a video ffprobe reads (33 frames).
    let r = s.get(&format!("/v1/videos/{kept}/content"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("video/mp4"));
    assert_eq!(r.body, object);
    assert_eq!(ffprobe_frames(&r.body), 33);
    // A Range request becomes a ranged GET of the object.
    let r = http(
        &s.addr,
        "GET",
        &format!("/v1/videos/{kept}/content"),
        &[("Range", "bytes=100-1099")],
        b"",
    );
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-1099/{}", object.len()).as_str())
    );
    assert_eq!(r.body, object[100..1100]);
    let r = http(
        &s.addr,
        "GET",
        &format!("/v1/videos/{kept}/content"),
        &[("Range", "bytes=-10")],
        b"",
    );
    assert_eq!((r.status, &r.body[..]), (206, &object[object.len() - 10..]));
    let r = http(
        &s.addr,
        "GET",
        &format!("/v1/videos/{kept}/content"),
        &[("Range", &format!("bytes={}-", object.len()))],
        b"",
    );
    assert_eq!(r.status, 416, "{}", r.text());
    // Previews come from the bucket too.
    let r = s.get(&format!("/v1/videos/{kept}/content?variant=thumbnail"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b.bytes(&format!("{prefix}/{kept}.thumbnail.webp")));
    assert_eq!(&r.body[..4], b"RIFF");

    // DELETE removes the job's objects.
    b.wait_names(prefix, &gone, &all(&gone));
    let r = http(&s.addr, "DELETE", &format!("/v1/videos/{gone}"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    b.wait_names(prefix, &gone, &[]);
    assert_eq!(
        b.names(prefix, &kept),
        all(&kept),
        "the other job's objects stay"
    );
    drop(s);

    // Restarted with `redirect = true` on the same storage: the kept job is still completed
    // (its video is not in the staging folder, and that is fine), and content answers a 302 to
    // a presigned URL that downloads the same bytes from the S3 server.
    let cfg = config(cfg_dir.path(), &s3.endpoint, &url, true);
    let s = Server::start(storage.path(), &cfg);
    let v = s.get(&format!("/v1/videos/{kept}")).json();
    assert_eq!(v["status"], "completed", "{v}");
    let r = s.get(&format!("/v1/videos/{kept}/content"));
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").expect("a Location header").to_string();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(
        location.contains(&format!("/{bucket}/{prefix}/{kept}.mp4")),
        "{location}"
    );
    let (host, path) = split_url(&location);
    let r = http(&host, "GET", &path, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, object);
    let r = s.get(&format!("/v1/videos/{kept}/content?variant=spritesheet"));
    assert_eq!(r.status, 302);
    let (host, path) = split_url(r.header("location").unwrap());
    assert_eq!(
        http(&host, "GET", &path, &[], b"").body,
        b.bytes(&format!("{prefix}/{kept}.spritesheet.jpg"))
    );
    // A new job in redirect mode is uploaded as well.
    let id = s.create(3);
    assert_eq!(s.wait(&id)["status"], "completed");
    b.wait_names(prefix, &id, &all(&id));
}

#[test]
fn bad_outputs_and_devices_config_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("[outputs]\nredirect = true\n", "redirect"),
        (
            "[outputs]\nurl = \"gs://bucket/x\"\n",
            "gs:// scheme is not supported",
        ),
        (
            "[outputs]\nurl = \"s3://b\"\npresign_expiry_s = 0\n",
            "presign_expiry_s",
        ),
    ] {
        let cfg = dir.path().join("serve.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = omni()
            .arg("serve")
            .arg(tiny_distilled())
            .args(["--port", "0", "--config"])
            .arg(&cfg)
            .arg("--storage")
            .arg(dir.path().join("storage"))
            .output()
            .unwrap();
        let line = assert_one_line_error(&out);
        assert!(line.contains(needle), "{text}: {line}");
    }
    if !cfg!(feature = "cuda") {
        let out = omni()
            .arg("serve")
            .arg(tiny_distilled())
            .args(["--port", "0", "--devices", "0,1"])
            .output()
            .unwrap();
        let line = assert_one_line_error(&out);
        assert!(
            line.contains("--workers N") && line.contains("cuda"),
            "{line}"
        );
    }
}

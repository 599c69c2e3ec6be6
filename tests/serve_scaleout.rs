//! Scale-out on a real PostgreSQL: `omni serve --role api` and `--role worker` processes (the
//! built binary, CPU, the tiny Distilled checkpoint) sharing one job store; the 30-job test
//! publishes the videos to one S3 bucket (`tests/common/s3.rs`: `OMNI_S3_ENDPOINT` or a moto
//! server; a shared folder when there is none and `OMNI_REQUIRE_S3` is unset), the others share
//! one storage folder ([`outputs`]).
//!
//! Needs `OMNI_TEST_POSTGRES_URL` (a role that may `CREATE DATABASE`; each test makes its own
//! database); without it the tests print why and pass, unless `OMNI_REQUIRE_POSTGRES=1`
//! (`.ci/run` starts a throwaway cluster and sets both). The restart test starts its own
//! cluster from the same PostgreSQL binaries (`initdb`/`pg_ctl`, run as the `postgres` user when
//! the tests run as root), so restarting it disturbs no other test.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::s3::s3_or_skip;
use common::{spawn_serve, tiny_distilled};

/// The test's PostgreSQL server URL, or `None` (skip) with the reason printed.
fn pg_url(test: &str) -> Option<String> {
    match std::env::var("OMNI_TEST_POSTGRES_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u.trim().to_string()),
        _ => {
            assert!(
                std::env::var("OMNI_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "OMNI_REQUIRE_POSTGRES=1 but OMNI_TEST_POSTGRES_URL is not set"
            );
            eprintln!("{test}: skipped: OMNI_TEST_POSTGRES_URL is not set (see .ci/run)");
            None
        }
    }
}

/// `psql -At` on `url`: the output rows, `|`-separated.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A new, empty database on the server of `url`; returns its URL.
fn fresh_db(url: &str) -> String {
    let name = format!("omni_test_{}", uuid::Uuid::new_v4().simple());
    psql(url, &format!("CREATE DATABASE {name}"));
    let mut u = url::Url::parse(url).expect("OMNI_TEST_POSTGRES_URL is a URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

/// Where the processes of one test put the videos: one folder they all see. (The one place to
/// change when outputs move to an object store.)
fn outputs(dir: &Path) -> PathBuf {
    let p = dir.join("outputs");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A small, fast job (the serve tests' size).
fn small_job() -> Value {
    json!({"prompt": "p", "size": "128x64", "num_frames": 33})
}

/// A job that runs for a while on the tiny checkpoint (many chunks).
fn long_job() -> Value {
    json!({"prompt": "p", "size": "128x64", "num_frames": 33 * 12})
}

/// One `omni serve` process; SIGKILLed on drop.
struct Node {
    child: Child,
    addr: String,
}

impl Node {
    /// Start `--role role` on the store `db` with `[store]` timings, wait for `/readyz`.
    fn start(dir: &Path, role: &str, db: &str, store: &str) -> Node {
        Self::start_with(dir, role, db, store, None)
    }

    /// [`Node::start`] with the `[outputs]` section `outputs` (an object store): the process
    /// then stages in a storage folder of its own instead of the shared [`outputs`] folder.
    fn start_with(dir: &Path, role: &str, db: &str, store: &str, outputs: Option<&str>) -> Node {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let config = dir.join(format!("serve-{tag}.toml"));
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"{db}\"\n{store}\n[limits]\nmax_queued_jobs = 100\n\
                 max_attempts = 2\n{}",
                outputs.unwrap_or("")
            ),
        )
        .unwrap();
        let storage = match outputs {
            Some(_) => dir.join(format!("staging-{tag}")),
            None => self::outputs(dir),
        };
        let (child, addr) = spawn_serve(
            Command::new(env!("CARGO_BIN_EXE_omni"))
                .arg("serve")
                .arg(tiny_distilled())
                .args(["--port", "0", "--served-model-name", "tiny-helios"])
                .args(["--role", role])
                .arg("--storage")
                .arg(&storage)
                .arg("--config")
                .arg(&config)
                .stderr(Stdio::inherit()),
        );
        let node = Node { child, addr };
        let deadline = Instant::now() + Duration::from_secs(180);
        while node.get("/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "{role} never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn req(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
        http(&self.addr, method, path, body)
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.req("GET", path, None)
    }

    fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (s, b) = self.req(method, path, body);
        let v = serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&b)));
        (s, v)
    }

    /// POST a job; its id.
    fn create(&self, body: &Value) -> String {
        let (s, v) = self.json("POST", "/v1/videos", Some(body));
        assert_eq!(s, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    fn video(&self, id: &str) -> Value {
        let (s, v) = self.json("GET", &format!("/v1/videos/{id}"), None);
        assert_eq!(s, 200, "{v}");
        v
    }

    /// `omni_jobs_finished_total{status="completed"}` of this process.
    fn completed_metric(&self) -> u64 {
        let (s, b) = self.get("/metrics");
        assert_eq!(s, 200);
        String::from_utf8_lossy(&b)
            .lines()
            .filter(|l| l.starts_with("omni_jobs_finished_total{status=\"completed\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; (status, body).
fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    (status, body)
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + len]);
        b = &b[nl + 4 + len..];
    }
}

/// Poll `node` until job `id` is terminal; the final Video.
fn wait_terminal(node: &Node, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = node.video(id);
        if matches!(v["status"].as_str(), Some("completed" | "failed")) {
            return v;
        }
        assert!(Instant::now() < deadline, "job {id} never finished: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Poll until `f` is true.
fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attempts(db: &str, id: &str) -> u32 {
    psql(db, &format!("SELECT attempts FROM jobs WHERE id = '{id}'"))
        .parse()
        .unwrap()
}

#[test]
fn thirty_jobs_through_two_api_nodes_on_three_workers_complete_exactly_once() {
    let Some(url) = pg_url("thirty_jobs") else {
        return;
    };
    let db = fresh_db(&url);
    let dir = tempfile::tempdir().unwrap();
    let store = "poll_ms = 200";
    // The videos go to one S3 bucket (each process stages in its own folder), or, without an
    // S3 server (and without OMNI_REQUIRE_S3), to one shared folder.
    let s3 = s3_or_skip("thirty_jobs (S3 part; running on a shared folder instead)");
    let bucket = s3.as_ref().map(|s3| s3.bucket("scaleout"));
    let section = s3
        .as_ref()
        .zip(bucket.as_ref())
        .map(|(s3, b)| s3.outputs_section(b, "scaleout"));
    let start = |role| Node::start_with(dir.path(), role, &db, store, section.as_deref());
    let api = [start("api"), start("api")];
    let workers: Vec<Node> = (0..3).map(|_| start("worker")).collect();
    // A worker serves only the probes and /metrics; an API node loads no model.
    let (s, v) = workers[0].json("GET", "/v1/videos", None);
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--role worker")
    );
    let (_, models) = api[0].json("GET", "/v1/models", None);
    assert_eq!(models["data"][0]["workers"], json!([]), "{models}");

    let t0 = Instant::now();
    let ids: Vec<String> = (0..30).map(|i| api[i % 2].create(&small_job())).collect();
    let mut files = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // Polled through the other API node than the one that took it.
        let v = wait_terminal(&api[(i + 1) % 2], id, Duration::from_secs(600));
        assert_eq!(v["status"], "completed", "{v}");
        files.push(v["file_name"].as_str().unwrap().to_string());
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "30 jobs, 2 API + 3 worker processes: {secs:.1} s ({:.1} jobs/min; 2-core machine)",
        30.0 * 60.0 / secs
    );
    // Each job started once: no job ran twice.
    assert_eq!(
        psql(
            &db,
            "SELECT count(*) FROM jobs WHERE status = 'completed' AND attempts = 1"
        ),
        "30"
    );
    // Each job completed on exactly one worker, and the work was shared.
    let per_worker: Vec<u64> = workers.iter().map(Node::completed_metric).collect();
    println!("jobs completed per worker: {per_worker:?}");
    assert_eq!(per_worker.iter().sum::<u64>(), 30, "{per_worker:?}");
    assert!(
        per_worker.iter().filter(|n| **n > 0).count() >= 2,
        "{per_worker:?}"
    );
    // Both API nodes list all 30 and serve the same bytes of every video.
    for node in &api {
        let (_, list) = node.json("GET", "/v1/videos?limit=100", None);
        assert_eq!(list["data"].as_array().unwrap().len(), 30);
    }
    for id in &ids {
        let (sa, a) = api[0].get(&format!("/v1/videos/{id}/content"));
        let (sb, b) = api[1].get(&format!("/v1/videos/{id}/content"));
        assert_eq!((sa, sb), (200, 200));
        assert!(a.len() > 100 && &a[4..8] == b"ftyp", "{id}: not an MP4");
        assert_eq!(a, b, "{id}");
    }
    let mut unique = files.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 30);
    if s3.is_some() {
        // Published to the bucket: no process keeps a video in its staging folder, so every
        // download above came from S3 through the API nodes.
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("staging-") {
                let left: Vec<_> = std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.file_name().to_string_lossy().into_owned())
                    .filter(|f| f.ends_with(".mp4"))
                    .collect();
                assert!(left.is_empty(), "{left:?} left in {}", e.path().display());
            }
        }
    }
}

#[test]
fn an_image_to_video_job_admitted_on_an_api_node_runs_on_a_worker_with_other_storage() {
    // The reference is stored by the API node at admission; the worker (its own storage
    // folder, as on another machine) reads it from the object store.
    let Some(url) = pg_url("image_to_video_across_nodes") else {
        return;
    };
    let Some(s3) = s3_or_skip("image_to_video_across_nodes") else {
        return;
    };
    let db = fresh_db(&url);
    let dir = tempfile::tempdir().unwrap();
    let bucket = s3.bucket("inputs");
    let section = s3.outputs_section(&bucket, "i2v");
    let store = "poll_ms = 200";
    let api = Node::start_with(dir.path(), "api", &db, store, Some(&section));
    let _worker = Node::start_with(dir.path(), "worker", &db, store, Some(&section));
    let img = image::RgbImage::from_fn(128, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    use base64::Engine as _;
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png.into_inner())
    );
    let mut body = small_job();
    body["input_reference"] = json!(data_url);
    let id = api.create(&body);
    let v = wait_terminal(&api, &id, Duration::from_secs(600));
    assert_eq!(v["status"], "completed", "{v}");
    let (s, mp4) = api.get(&format!("/v1/videos/{id}/content"));
    assert_eq!(s, 200);
    assert!(mp4.len() > 100 && &mp4[4..8] == b"ftyp", "not an MP4");
    // The input never reached the worker's folder through the file system: only the API
    // node's staging folder ever held it, and the upload removed it there too.
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("staging-") {
            assert!(!e.path().join(format!("{id}.input")).exists());
        }
    }
}

#[test]
fn a_killed_workers_job_runs_again_elsewhere_after_its_lease_expires() {
    let Some(url) = pg_url("killed_worker") else {
        return;
    };
    let db = fresh_db(&url);
    let dir = tempfile::tempdir().unwrap();
    let store = "lease_s = 2\npoll_ms = 200";
    let api = Node::start(dir.path(), "api", &db, store);
    let mut workers: Vec<Option<Node>> = (0..2)
        .map(|_| Some(Node::start(dir.path(), "worker", &db, store)))
        .collect();
    let id = api.create(&long_job());
    // Mid-job: running, past its first steps.
    wait_until("the job runs", Duration::from_secs(120), || {
        let v = api.video(&id);
        v["status"] == "in_progress" && v["progress"].as_u64().unwrap() > 1
    });
    let owner = psql(
        &db,
        &format!("SELECT lease_owner FROM jobs WHERE id = '{id}'"),
    );
    let pid: u32 = owner.split('/').nth(1).unwrap().parse().unwrap();
    let victim = workers
        .iter()
        .position(|w| w.as_ref().is_some_and(|w| w.pid() == pid))
        .expect("the lease owner is one of the workers");
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed_at = Instant::now();
    workers[victim] = None;
    let v = wait_terminal(&api, &id, Duration::from_secs(600));
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(attempts(&db, &id), 2);
    let survivor = workers.iter().flatten().next().unwrap();
    assert_eq!(survivor.completed_metric(), 1);
    let new_owner = psql(
        &db,
        &format!("SELECT lease_owner FROM jobs WHERE id = '{id}'"),
    );
    assert_ne!(new_owner, owner);
    println!(
        "killed worker's job re-run and completed {:.1} s after the kill (lease 2 s)",
        killed_at.elapsed().as_secs_f64()
    );
    let (s, mp4) = api.get(&format!("/v1/videos/{id}/content"));
    assert_eq!(s, 200);
    assert_eq!(&mp4[4..8], b"ftyp");
}

#[test]
fn delete_on_one_api_node_cancels_the_job_running_on_a_worker() {
    let Some(url) = pg_url("delete_cancels") else {
        return;
    };
    let db = fresh_db(&url);
    let dir = tempfile::tempdir().unwrap();
    let store = "poll_ms = 200";
    let (a, b) = (
        Node::start(dir.path(), "api", &db, store),
        Node::start(dir.path(), "api", &db, store),
    );
    let worker = Node::start(dir.path(), "worker", &db, store);
    let id = a.create(&long_job());
    wait_until("the job runs", Duration::from_secs(120), || {
        let v = b.video(&id);
        v["status"] == "in_progress" && v["progress"].as_u64().unwrap() > 1
    });
    let (s, v) = a.json("DELETE", &format!("/v1/videos/{id}"), None);
    assert_eq!((s, v["deleted"].as_bool()), (200, Some(true)), "{v}");
    let deleted_at = Instant::now();
    // Gone from both API nodes at once.
    assert_eq!(b.get(&format!("/v1/videos/{id}")).0, 404);
    assert_eq!(a.get(&format!("/v1/videos/{id}")).0, 404);
    // The worker stops at its next check and removes the row and the files.
    wait_until(
        "the worker dropped the job",
        Duration::from_secs(60),
        || psql(&db, &format!("SELECT count(*) FROM jobs WHERE id = '{id}'")) == "0",
    );
    println!(
        "DELETE → the worker stopped and removed the job in {:.0} ms (check every 200 ms)",
        deleted_at.elapsed().as_secs_f64() * 1e3
    );
    assert!(!outputs(dir.path()).join(format!("{id}.mp4")).exists());
    // The worker is free: the next job runs and is the only one it completed.
    let next = b.create(&small_job());
    assert_eq!(
        wait_terminal(&a, &next, Duration::from_secs(300))["status"],
        "completed"
    );
    assert_eq!(worker.completed_metric(), 1);
}

/// A throwaway PostgreSQL cluster of this test; stopped (and its folder removed) on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    /// `pg_ctl`/`initdb`: `OMNI_TEST_POSTGRES_BIN`, else the newest /usr/lib/postgresql/*/bin.
    fn bin() -> PathBuf {
        if let Ok(b) = std::env::var("OMNI_TEST_POSTGRES_BIN") {
            return b.into();
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("pg_ctl").exists())
            .collect();
        dirs.sort();
        dirs.pop().expect("pg_ctl under /usr/lib/postgresql/*/bin")
    }

    /// Run a server binary as the data folder's owner (`postgres` when we are root).
    fn run(&self, tool: &str, args: &[&str]) {
        let mut cmd = match is_root() {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
                c
            }
            false => Command::new(self.bin.join(tool)),
        };
        let out = cmd.args(args).output().expect("running a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Cluster {
            bin: Self::bin(),
            data,
            _dir: dir,
            port,
        };
        let data = c.data.to_str().unwrap().to_string();
        c.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        c.pg_ctl_start();
        c
    }

    fn pg_ctl_start(&self) {
        let data = self.data.to_str().unwrap().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.parent().unwrap().display()
        );
        let log = self.data.parent().unwrap().join("log");
        let log = log.to_str().unwrap();
        self.run(
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", log, "-w", "start"],
        );
    }

    fn stop(&self) {
        let data = self.data.to_str().unwrap().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_string();
        let _ = std::panic::catch_unwind(|| {
            self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"])
        });
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn postgres_restart_gives_503_then_recovers_and_loses_no_job() {
    if pg_url("postgres_restart").is_none() {
        return;
    }
    let cluster = Cluster::start();
    let db = fresh_db(&cluster.url());
    let dir = tempfile::tempdir().unwrap();
    // The lease outlives the outage: the running job keeps its worker.
    let store = "lease_s = 20\npoll_ms = 200";
    let api = Node::start(dir.path(), "api", &db, store);
    let _worker = Node::start(dir.path(), "worker", &db, store);
    let mut ids: Vec<String> = (0..4).map(|_| api.create(&small_job())).collect();
    wait_until("a job runs", Duration::from_secs(120), || {
        api.video(&ids[0])["status"] != "queued"
    });
    cluster.stop();
    let stopped = Instant::now();
    // Down: every store route is a 503 with the OpenAI envelope; the probes of life stay up.
    for (method, path, body) in [
        ("GET", format!("/v1/videos/{}", ids[1]), None),
        ("GET", "/v1/videos".to_string(), None),
        ("POST", "/v1/videos".to_string(), Some(small_job())),
        ("GET", "/readyz".to_string(), None),
    ] {
        let (s, v) = api.json(method, &path, body.as_ref());
        assert_eq!(s, 503, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("job store")
        );
    }
    assert_eq!(api.get("/health").0, 200);
    std::thread::sleep(Duration::from_secs(1));
    cluster.pg_ctl_start();
    // Back without a restart of omni.
    wait_until("the API recovered", Duration::from_secs(30), || {
        api.get("/readyz").0 == 200
    });
    println!(
        "PostgreSQL down and restarted; API answering again {:.1} s after the stop",
        stopped.elapsed().as_secs_f64()
    );
    ids.push(api.create(&small_job()));
    for id in &ids {
        let v = wait_terminal(&api, id, Duration::from_secs(600));
        assert_eq!(v["status"], "completed", "{v}");
    }
    assert_eq!(
        psql(&db, "SELECT count(*) FROM jobs WHERE status = 'completed'"),
        "5"
    );
}

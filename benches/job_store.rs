//! The job store's cost per job, and jobs per minute across processes on PostgreSQL.
//!
//! `cargo bench --bench job_store [-- --jobs N --progress K]` (defaults 200 jobs, 20 progress
//! updates each):
//!
//! 1. **Store overhead per job**, in-process, no model: admit (insert), claim (PostgreSQL:
//!    `FOR UPDATE SKIP LOCKED` + lease; file store: the record written at start), K progress
//!    updates, completion; mean and p99 ms per job for the file store (`[store] url =
//!    "file://…"`, JSON files synced to disk) and for PostgreSQL.
//! 2. **Jobs per minute across processes**: the release `omni serve` on the tiny checkpoint,
//!    one `--role api` and 1, 2, 3 `--role worker` processes (one worker thread each) on one
//!    database, 12 small jobs (128x64, 33 frames) per run.
//!
//! PostgreSQL: `OMNI_BENCH_POSTGRES_URL`, else `OMNI_TEST_POSTGRES_URL` (a role that may create
//! databases; each part makes its own); without either only the file store is measured.
//! Not a test: nothing is asserted about speed. Say the machine's cores next to the figures.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Conn, field, wait_status};
use omni::serve::jobs::{JobKind, JobRecord, Jobs, Status, new_id, now};
use omni::serve::postgres::{PgOptions, PgStore};

fn record(jobs: &Jobs) -> JobRecord {
    JobRecord {
        id: new_id(JobKind::Video),
        seq: jobs.next_seq(),
        model: "m".into(),
        status: Status::Queued,
        progress: 0,
        created_at: now(),
        started_at: None,
        completed_at: None,
        seconds: "1".into(),
        error: None,
        file_name: None,
        inference_time_s: None,
        stage_durations: Default::default(),
        peak_memory_mb: None,
        kind: JobKind::Video,
        attempts: 0,
        input: None,
        last_input: false,
        request: omni::pipeline::request::ModelDefaults::helios_distilled().request,
        remixed_from_video_id: None,
        webhook_url: None,
        continuation: Default::default(),
        hidden: false,
        cancel: Default::default(),
        admitted: None,
    }
}

/// One job's store traffic as the server makes it; seconds.
fn one_job(jobs: &Jobs, progress: usize) -> f64 {
    let t = Instant::now();
    let rec = record(jobs);
    let id = rec.id.clone();
    assert!(jobs.insert_queued(rec, usize::MAX).is_ok());
    if let Some(claimed) = jobs.claim_next() {
        assert_eq!(claimed, id);
    }
    jobs.update(&id, true, |r| {
        r.status = Status::InProgress;
        r.started_at = Some(now());
        r.progress = 1;
        r.attempts += 1;
    });
    for p in 0..progress {
        let pct = 2 + (97 * p / progress.max(1)) as u8;
        jobs.update(&id, false, |r| r.progress = pct);
    }
    jobs.update(&id, true, |r| {
        r.status = Status::Completed;
        r.progress = 100;
        r.completed_at = Some(now());
        r.file_name = Some(format!("{id}.mp4"));
    });
    jobs.release(&id);
    t.elapsed().as_secs_f64()
}

fn report(name: &str, mut secs: Vec<f64>) {
    secs.sort_by(f64::total_cmp);
    let mean = secs.iter().sum::<f64>() / secs.len() as f64;
    let p99 = secs[(secs.len() * 99 / 100).min(secs.len() - 1)];
    println!(
        "{name:>10}: {:.2} ms per job (mean), p99 {:.2} ms, over {} jobs",
        mean * 1e3,
        p99 * 1e3,
        secs.len()
    );
}

fn psql(url: &str, sql: &str) {
    let ok = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .status()
        .expect("psql");
    assert!(ok.success(), "psql {sql}");
}

fn fresh_db(url: &str) -> String {
    let name = format!("omni_bench_{}", uuid::Uuid::new_v4().simple());
    psql(url, &format!("CREATE DATABASE {name}"));
    let mut u = url::Url::parse(url).unwrap();
    u.set_path(&format!("/{name}"));
    u.to_string()
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// Start `omni serve --role role` on `db`; the process and its address once ready.
fn node(role: &str, db: &str, storage: &std::path::Path) -> (common::Server, String) {
    use std::io::BufRead;
    let config = storage.join(format!("{role}-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &config,
        format!("[store]\nurl = \"{db}\"\npoll_ms = 200\n[limits]\nmax_queued_jobs = 100\n"),
    )
    .unwrap();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-helios-distilled"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["serve", model, "--port", "0", "--role", role, "--storage"])
        .arg(storage)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting omni serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = common::Server::from_child(child);
    let addr = line
        .trim()
        .strip_prefix("omni serve listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let mut c = Conn::open(&addr);
    let t0 = Instant::now();
    while c.call("GET", "/readyz", "").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(180), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, addr)
}

fn main() {
    let n = arg("--jobs", 200);
    let progress = arg("--progress", 20);
    println!(
        "job store overhead: admit + claim + {progress} progress updates + completion, {n} jobs \
         ({} cores)",
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = Jobs::open(&dir.path().join("file"), 2).unwrap();
    report("file", (0..n).map(|_| one_job(&file, progress)).collect());

    let url = std::env::var("OMNI_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("OMNI_TEST_POSTGRES_URL"))
        .ok()
        .filter(|u| !u.trim().is_empty());
    let Some(url) = url else {
        println!("postgres: skipped (set OMNI_BENCH_POSTGRES_URL or OMNI_TEST_POSTGRES_URL)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = fresh_db(&url);
    let pg: Arc<PgStore> = rt
        .block_on(PgStore::connect(
            &db,
            PgOptions {
                lease: Duration::from_secs(30),
                poll: Duration::from_millis(1000),
                max_attempts: 2,
                max_connections: 4,
            },
        ))
        .unwrap();
    let pg_dir = dir.path().join("pg");
    let outputs = std::sync::Arc::new(omni::serve::outputs::Outputs::folder(&pg_dir));
    let shared = Jobs::open_shared(&pg_dir, pg, outputs).unwrap();
    report(
        "postgres",
        (0..n).map(|_| one_job(&shared, progress)).collect(),
    );
    drop(shared);

    println!("jobs per minute across processes: 1 api + W worker processes, 12 jobs of 128x64x33");
    let storage = dir.path().join("outputs");
    std::fs::create_dir_all(&storage).unwrap();
    for w in 1..=3 {
        let db = fresh_db(&url);
        let (_api, addr) = node("api", &db, &storage);
        let _workers: Vec<_> = (0..w).map(|_| node("worker", &db, &storage)).collect();
        let mut c = Conn::open(&addr);
        let body = r#"{"prompt":"p","size":"128x64","num_frames":33}"#;
        let t0 = Instant::now();
        let ids: Vec<String> = (0..12)
            .map(|_| {
                let (s, b) = c.call("POST", "/v1/videos", body);
                assert_eq!(s, 200, "{b}");
                field(&b, "id").unwrap()
            })
            .collect();
        for id in &ids {
            let b = wait_status(&mut c, id, |s| s == "completed" || s == "failed");
            assert_eq!(field(&b, "status").as_deref(), Some("completed"), "{b}");
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "  {w} worker process(es): {:.1} jobs/min ({secs:.1} s for 12)",
            12.0 * 60.0 / secs
        );
    }
}

//! Jobs per minute of one `omni serve` process with 1, 2 and 4 CPU workers, and the cost of the
//! outputs backend per job (file vs S3).
//!
//! `cargo bench --bench serve_throughput [-- --jobs N --workers 1,2,4 --size 128x64 --frames 33]`:
//! for each worker count, starts the release `omni serve --workers W` on the tiny checkpoint
//! with a fresh storage folder, posts N jobs (default 8) at once, and prints jobs/minute from the
//! first POST to the last `completed`. Then, once with the default folder outputs and once with
//! `[outputs] url = "s3://…"` (moto: `OMNI_S3_ENDPOINT`, else `target/moto-venv/bin/moto_server`
//! started here; skipped with a message without one), it runs the N jobs on one worker and
//! prints per job the upload time (`stage_durations.publish`: staging → bucket, 0 for the
//! default folder) and the time to the first byte of `GET /v1/videos/{id}/content`. Not a test:
//! nothing about speed is asserted; print the machine's cores with the figures.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Conn, field};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Post `jobs` jobs, wait for all; returns their ids and the seconds from the first POST to the
/// last completion.
fn run_jobs(c: &mut Conn, jobs: usize, size: &str, frames: usize) -> (Vec<String>, f64) {
    let t0 = Instant::now();
    let ids: Vec<String> = (0..jobs)
        .map(|i| {
            let body = format!(
                r#"{{"prompt":"a throughput clip {i}","size":"{size}","num_frames":{frames},"seed":{i}}}"#
            );
            let (st, b) = c.call("POST", "/v1/videos", &body);
            assert_eq!(st, 200, "{b}");
            field(&b, "id").unwrap()
        })
        .collect();
    for id in &ids {
        let b = common::wait_status(c, id, |s| s == "completed" || s == "failed");
        assert_eq!(field(&b, "status").as_deref(), Some("completed"), "{b}");
    }
    (ids, t0.elapsed().as_secs_f64())
}

/// Milliseconds to the first byte of a GET, then reads the rest; returns (ms, status line).
fn first_byte_ms(addr: &str, path: &str) -> (f64, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let t0 = Instant::now();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let head = String::from_utf8_lossy(&rest[..rest.len().min(20)]).into_owned();
    (
        ms,
        format!("{}{}", first[0] as char, head.lines().next().unwrap_or("")),
    )
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// An S3 endpoint and a fresh bucket on it, or why not.
fn s3() -> Result<(String, String, Option<Killed>), String> {
    let (endpoint, moto) = match std::env::var("OMNI_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => (e.trim_end_matches('/').to_string(), None),
        _ => {
            let bin = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/moto-venv/bin/moto_server"
            );
            if !std::path::Path::new(bin).is_file() {
                return Err(format!("no OMNI_S3_ENDPOINT and no {bin}"));
            }
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if t0.elapsed() > Duration::from_secs(60) {
                    return Err("moto_server never listened".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (format!("http://127.0.0.1:{port}"), Some(Killed(child)))
        }
    };
    let bucket = format!("omni-bench-{}", std::process::id());
    let host = endpoint.trim_start_matches("http://").to_string();
    let mut c = Conn::open(&host);
    let (st, b) = c.call("PUT", &format!("/{bucket}"), "");
    if st != 200 {
        return Err(format!("creating bucket {bucket}: {st} {b}"));
    }
    Ok((endpoint, bucket, moto))
}

fn main() {
    let mut jobs = 8usize;
    let mut workers = vec![1usize, 2, 4];
    let mut size = "128x64".to_string();
    let mut frames = 33usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jobs" => jobs = it.next().and_then(|v| v.parse().ok()).unwrap(),
            "--workers" => {
                workers = it
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|w| w.parse().unwrap())
                    .collect()
            }
            "--size" => size = it.next().unwrap().clone(),
            "--frames" => frames = it.next().and_then(|v| v.parse().ok()).unwrap(),
            _ => {} // `--bench` and friends from cargo
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "omni serve throughput: tiny Distilled checkpoint, {jobs} jobs of {size} x {frames} frames posted at once, {cores} CPU threads (the workers share them)"
    );
    for &w in &workers {
        let (_server, mut c, _storage) = common::start(&["--workers", &w.to_string()]);
        // One warm-up job (first-touch allocations), not counted.
        run_jobs(&mut c, 1, &size, frames);
        let (_, secs) = run_jobs(&mut c, jobs, &size, frames);
        println!(
            "workers {w}: {jobs} jobs in {secs:.2} s = {:.1} jobs/min",
            jobs as f64 * 60.0 / secs
        );
    }

    println!("outputs backend overhead per job (1 worker, {jobs} jobs):");
    let s3 = s3();
    let cfg_dir = std::env::temp_dir().join(format!("omni-bench-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let mut backends = vec![("file (default)", None)];
    match &s3 {
        Ok((endpoint, bucket, _)) => {
            let p = cfg_dir.join("s3.toml");
            std::fs::write(
                &p,
                format!(
                    "[outputs]\nurl = \"s3://{bucket}/bench\"\nendpoint = \"{endpoint}\"\nallow_http = true\n"
                ),
            )
            .unwrap();
            backends.push(("s3 (moto)", Some(p)));
        }
        Err(why) => println!("s3: skipped ({why})"),
    }
    for (name, cfg) in backends {
        // SAFETY: set before any thread of this process reads the environment concurrently
        // (the servers are children; they inherit it).
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "omni-bench");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "omni-bench-secret");
            std::env::set_var("AWS_REGION", "us-east-1");
        }
        let cfg_s = cfg.as_ref().map(|p| p.display().to_string());
        let extra: Vec<&str> = match &cfg_s {
            Some(p) => vec!["--config", p.as_str()],
            None => vec![],
        };
        let (_server, mut c, _storage) = common::start(&extra);
        run_jobs(&mut c, 1, &size, frames);
        let (ids, _) = run_jobs(&mut c, jobs, &size, frames);
        let mut publish = Vec::new();
        let mut first = Vec::new();
        for id in &ids {
            let (_, b) = c.call("GET", &format!("/v1/videos/{id}"), "");
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            publish.push(v["stage_durations"]["publish"].as_f64().unwrap_or(0.0) * 1e3);
            let (ms, status) = first_byte_ms(&c.addr, &format!("/v1/videos/{id}/content"));
            assert!(status.contains("200"), "{status}");
            first.push(ms);
        }
        println!(
            "{name}: upload {:.1} ms/job (max {:.1}), first byte of content {:.2} ms (max {:.2})",
            mean(&publish),
            publish.iter().cloned().fold(0.0, f64::max),
            mean(&first),
            first.iter().cloned().fold(0.0, f64::max),
        );
    }
    let _ = std::fs::remove_dir_all(&cfg_dir);
}

//! GET `/v1/videos/{id}` throughput and latency while a job runs.
//!
//! `cargo bench --bench serve_get [-- --connections N --seconds T]` (defaults 16 and 10): starts
//! the release `omni serve` on the tiny checkpoint with a temporary storage folder, queues a long
//! job (128x64, 33·400 frames), waits until it is `in_progress`, then N threads each hammer the
//! job's `GET /v1/videos/{id}` over one keep-alive connection for T seconds. Prints requests/s and
//! the p50/p90/p99/max latency, and checks the job was still running at the end. Not a test:
//! nothing is asserted about speed.

mod common;

use std::time::{Duration, Instant};

use common::{Conn, field};

fn main() {
    let mut connections = 16usize;
    let mut seconds = 10u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--connections" => connections = it.next().and_then(|v| v.parse().ok()).unwrap(),
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).unwrap(),
            _ => {} // `--bench` and friends from cargo
        }
    }
    let (_server, mut c, storage) = common::start(&[]);
    let (st, body) = c.call(
        "POST",
        "/v1/videos",
        r#"{"prompt":"a long benchmark clip","size":"128x64","num_frames":13200}"#,
    );
    assert_eq!(st, 200, "{body}");
    let id = field(&body, "id").unwrap();
    let path = format!("/v1/videos/{id}");
    common::wait_status(&mut c, &id, |s| s == "in_progress");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "omni serve GET {path}: {connections} keep-alive connections, {seconds} s, job in progress, {cores} CPU threads"
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, path) = (c.addr.clone(), path.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(&addr);
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0usize;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (st, _) = c.call("GET", &path, "");
                    lat.push(t.elapsed().as_nanos() as u64);
                    errors += (st != 200) as usize;
                }
                (lat, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap();
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    let (_, b) = c.call("GET", &path, "");
    println!(
        "requests: {}  errors: {errors}  requests/s: {:.0}",
        lat.len(),
        lat.len() as f64 / elapsed
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "job afterwards: status {}, progress {}",
        field(&b, "status").unwrap_or("?".into()),
        field(&b, "progress").unwrap_or("?".into())
    );
    c.call("DELETE", &path, "");
    let _ = std::fs::remove_dir_all(&storage);
}

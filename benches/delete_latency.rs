//! DELETE of a running job → the next job starts: how long the worker stays busy after a cancel.
//!
//! `cargo bench --bench delete_latency [-- --sizes 640x384,3840x2112 --repeats N]` (defaults
//! 640x384 and 2 repeats): starts the release `omni serve` on the tiny checkpoint; per size, phase
//! and repeat, queues a one-chunk job (33 frames) at that size, waits until it is in the phase,
//! queues a small job behind it, DELETEs the long one and times until the small one is
//! `in_progress`. Phases: `start` (as soon as the job is `in_progress`: prompt encoding, the first
//! step), `denoise` (progress ≥ 30: mid-sampling, inside a transformer forward) and `decode`
//! (progress ≥ 90: all steps done, inside the VAE decode — the longest uninterruptible unit at
//! large sizes is one frame there or one transformer block); later repeats land later into the
//! phase. The pipeline checks the cancel flag before every transformer block and between the
//! VAE's frames, so the latency is about one block's or one frame's time. Prints the mean and
//! worst per size and phase, and the worst per size. Not a test: nothing is asserted about speed.

mod common;

use std::time::{Duration, Instant};

use common::{Conn, field, wait_status};

/// `(name, progress that marks it)`.
const PHASES: [(&str, u64); 3] = [("start", 0), ("denoise", 30), ("decode", 90)];

/// One cancel: DELETE `size` at `phase`, `delay` into it; milliseconds until the next job runs.
fn cancel_once(c: &mut Conn, size: &str, at_progress: u64, delay: Duration, seed: usize) -> f64 {
    let long = format!(r#"{{"prompt":"long","size":"{size}","num_frames":33,"seed":{seed}}}"#);
    let (st, body) = c.call("POST", "/v1/videos", &long);
    assert_eq!(st, 200, "{body}");
    let id = field(&body, "id").unwrap();
    let path = format!("/v1/videos/{id}");
    loop {
        let (_, b) = c.call("GET", &path, "");
        let progress: u64 = field(&b, "progress")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if field(&b, "status").as_deref() == Some("in_progress") && progress >= at_progress {
            break;
        }
        assert_ne!(
            field(&b, "status").as_deref(),
            Some("completed"),
            "finished before {at_progress}%"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(delay);
    let small = r#"{"prompt":"next","size":"128x64","num_frames":33}"#;
    let (st, body) = c.call("POST", "/v1/videos", small);
    assert_eq!(st, 200, "{body}");
    let next = field(&body, "id").unwrap();
    let t = Instant::now();
    let (st, _) = c.call("DELETE", &path, "");
    assert_eq!(st, 200);
    wait_status(c, &next, |s| s != "queued");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    wait_status(c, &next, |s| s == "completed" || s == "failed");
    ms
}

fn main() {
    let mut sizes = vec!["640x384".to_string()];
    let mut repeats = 2usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => sizes = it.next().unwrap().split(',').map(str::to_string).collect(),
            "--repeats" => repeats = it.next().and_then(|v| v.parse().ok()).unwrap(),
            _ => {} // `--bench` and friends from cargo
        }
    }
    // The largest size the default budget allows needs it raised for nothing: 3840x2160 is
    // off the 64-pixel grid, 3840x2112 is the largest on it.
    let (_server, mut c, storage) = common::start(&[]);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "omni serve, tiny checkpoint, {cores} CPU threads: DELETE of a running job -> next job in_progress"
    );
    for size in &sizes {
        let mut worst = (0.0f64, "");
        for (phase, at) in PHASES {
            let ms: Vec<f64> = (0..repeats)
                .map(|r| cancel_once(&mut c, size, at, Duration::from_millis(100 * r as u64), r))
                .collect();
            let max = ms.iter().copied().fold(0.0, f64::max);
            let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
            if max > worst.0 {
                worst = (max, phase);
            }
            println!("{size:>10} {phase:>8}: mean {mean:.1} ms, worst {max:.1} ms ({ms:.1?})");
        }
        println!("{size:>10}    worst: {:.1} ms (at {})", worst.0, worst.1);
    }
    let _ = std::fs::remove_dir_all(&storage);
}

//! DELETE of a running job → the next job starts: how long the worker stays busy after a cancel.
//!
//! `cargo bench --bench delete_latency [-- --sizes 640x384,1280x768 --repeats N]` (defaults
//! 640x384 and 3 repeats): starts the release `omni serve` on the tiny checkpoint; per size and
//! repeat, queues a long job at that size, waits until it is `in_progress` and a little longer
//! (so the DELETE lands mid-step, mid-block or mid-decode), queues a small job behind it, DELETEs
//! the long one and times until the small one is `in_progress`. The pipeline checks the cancel
//! flag before every transformer block and between the VAE's frames, so this is about one
//! block's (or one frame's) time. Prints the mean and worst latency per size. Not a test:
//! nothing is asserted about speed.

mod common;

use std::time::{Duration, Instant};

use common::{field, wait_status};

fn main() {
    let mut sizes = vec!["640x384".to_string()];
    let mut repeats = 3usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => sizes = it.next().unwrap().split(',').map(str::to_string).collect(),
            "--repeats" => repeats = it.next().and_then(|v| v.parse().ok()).unwrap(),
            _ => {} // `--bench` and friends from cargo
        }
    }
    let (_server, mut c, storage) = common::start(&[]);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "omni serve, tiny checkpoint, {cores} CPU threads: DELETE of a running job -> next job in_progress"
    );
    for size in &sizes {
        let mut ms = Vec::new();
        for r in 0..repeats {
            let long =
                format!(r#"{{"prompt":"long","size":"{size}","num_frames":330,"seed":{r}}}"#);
            let (st, body) = c.call("POST", "/v1/videos", &long);
            assert_eq!(st, 200, "{body}");
            let id = field(&body, "id").unwrap().to_string();
            wait_status(&mut c, &id, |s| s == "in_progress");
            // Land the DELETE at a different point of the work each time.
            std::thread::sleep(Duration::from_millis(150 + 350 * r as u64));
            let small = r#"{"prompt":"next","size":"128x64","num_frames":33}"#;
            let (st, body) = c.call("POST", "/v1/videos", small);
            assert_eq!(st, 200, "{body}");
            let next = field(&body, "id").unwrap().to_string();
            let t = Instant::now();
            let (st, _) = c.call("DELETE", &format!("/v1/videos/{id}"), "");
            assert_eq!(st, 200);
            wait_status(&mut c, &next, |s| s != "queued");
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            wait_status(&mut c, &next, |s| s == "completed" || s == "failed");
        }
        let worst = ms.iter().copied().fold(0.0, f64::max);
        let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        println!(
            "{size:>10}: {repeats} cancels, mean {mean:.1} ms, worst {worst:.1} ms ({ms:.1?})"
        );
    }
    let _ = std::fs::remove_dir_all(&storage);
}

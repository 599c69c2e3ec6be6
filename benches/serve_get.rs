//! GET `/v1/videos/{id}` throughput and latency while a job runs.
//!
//! `cargo bench --bench serve_get [-- --connections N --seconds T]` (defaults 16 and 10): starts
//! the release `omni serve` on the tiny checkpoint with a temporary storage folder, queues a long
//! job (128x64, 33·400 frames), waits until it is `in_progress`, then N threads each hammer the
//! job's `GET /v1/videos/{id}` over one keep-alive connection for T seconds. Prints requests/s and
//! the p50/p90/p99/max latency, and checks the job was still running at the end. Not a test:
//! nothing is asserted about speed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    fn open(addr: &str) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        Self {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            addr: addr.to_string(),
        }
    }

    /// Status and body.
    fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.w.write_all(req.as_bytes()).expect("write");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).expect("body");
        (status, String::from_utf8_lossy(&buf).into_owned())
    }
}

fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let i = json.find(&pat)? + pat.len();
    let rest = &json[i..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

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
    let storage = std::env::temp_dir().join(format!("omni-bench-serve-{}", std::process::id()));
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-helios-distilled"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["serve", model, "--port", "0", "--storage"])
        .arg(&storage)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting omni serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("omni serve listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let mut c = Conn::open(&addr);
    let t0 = Instant::now();
    while c.call("GET", "/readyz", "").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, body) = c.call(
        "POST",
        "/v1/videos",
        r#"{"prompt":"a long benchmark clip","size":"128x64","num_frames":13200}"#,
    );
    assert_eq!(st, 200, "{body}");
    let id = field(&body, "id").unwrap().to_string();
    let path = format!("/v1/videos/{id}");
    loop {
        let (_, b) = c.call("GET", &path, "");
        if field(&b, "status") == Some("in_progress") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "omni serve GET {path}: {connections} keep-alive connections, {seconds} s, job in progress, {cores} CPU threads"
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, path) = (addr.clone(), path.clone());
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
        field(&b, "status").unwrap_or("?"),
        field(&b, "progress").unwrap_or("?")
    );
    c.call("DELETE", &path, "");
    let _ = std::fs::remove_dir_all(&storage);
}

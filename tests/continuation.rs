//! Issue 13: continuation state. Generating A (returning its state), then continuing with B,
//! equals generating A+B in one request with the same draws, frame for frame (bit-identical
//! f32 frames on the CPU); a state of another size or checkpoint is refused as "incompatible".

mod common;

use common::{Collect, PROMPT, tiny_distilled};
use omni::pipeline::continuation::HeliosState;
use omni::pipeline::generator::{Generator, GeneratorOptions, LoadPolicy, RunContext};
use omni::pipeline::noise::SeededNoise;
use omni::pipeline::progress::{CancelToken, NoProgress};
use omni::pipeline::request::{GenerationRequest, RequestPatch, resolve};

fn req(g: &Generator, num_frames: u32, width: u32) -> GenerationRequest {
    let patch = RequestPatch {
        prompt: Some(PROMPT.into()),
        width: Some(width),
        height: Some(64),
        num_frames: Some(num_frames),
        seed: Some(5),
        ..Default::default()
    };
    resolve(&[patch], g.defaults()).unwrap()
}

/// Runs `req`; every frame's f32 values `[H, W, 3]`, and the state when asked for.
fn run(
    g: &mut Generator,
    req: &GenerationRequest,
    state: Option<&HeliosState>,
    want_state: bool,
) -> Result<(Vec<Vec<f32>>, Option<HeliosState>), String> {
    let mut noise = SeededNoise::new(req.seed);
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut NoProgress,
        cancel: CancelToken::new(),
    };
    let mut sink = Collect::default();
    let (n, out) = g
        .generate_continued(req, &mut ctx, &mut sink, state, want_state)
        .map_err(|e| e.to_string())?;
    let frames: Vec<Vec<f32>> = sink
        .0
        .iter()
        .flat_map(|c| {
            let len = c.height * c.width * 3;
            c.data
                .chunks_exact(len)
                .map(|f| f.to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(frames.len(), n);
    Ok((frames, out))
}

#[test]
fn a_then_b_equals_a_plus_b_bit_for_bit() {
    let options = GeneratorOptions {
        load: LoadPolicy::KeepAll,
        vae_dtype: None,
        ..Default::default()
    };
    let mut g = Generator::open(&tiny_distilled(), options, &mut NoProgress).unwrap();

    // A+B in one request: 99 frames → 97 (4k+1), three chunks.
    let r = req(&g, 99, 128);
    let (ab, _) = run(&mut g, &r, None, false).unwrap();
    assert_eq!(ab.len(), 97);

    // A: one chunk, state returned; through its stored form.
    let r = req(&g, 33, 128);
    let (a, state) = run(&mut g, &r, None, true).unwrap();
    let state = state.expect("state asked for");
    assert_eq!(state.segment_index, 1);
    assert_eq!(state.pipeline, "HeliosPyramidPipeline");
    let state = HeliosState::from_bytes(&state.to_bytes()).unwrap();
    // B: two more chunks continuing A (66 frames → 65).
    let r = req(&g, 66, 128);
    let (b, state_b) = run(&mut g, &r, Some(&state), true).unwrap();
    assert_eq!(state_b.unwrap().segment_index, 3);

    assert_eq!(a.len(), 33);
    assert_eq!(b.len(), 65);
    for (i, f) in a.iter().chain(&b[..64]).enumerate() {
        assert!(*f == ab[i], "frame {i} differs between A then B and A+B");
    }
    // Not trivially equal: the chunks differ from each other.
    assert!(ab[0] != ab[40]);

    // The same state against another size, or from another checkpoint class: incompatible.
    let r = req(&g, 33, 256);
    let err = run(&mut g, &r, Some(&state), false).unwrap_err();
    assert!(err.contains("state: incompatible"), "{err}");
    let mut other = state.clone();
    other.pipeline = "HeliosPipeline".into();
    let r = req(&g, 33, 128);
    let err = run(&mut g, &r, Some(&other), false).unwrap_err();
    assert!(err.contains("state: incompatible"), "{err}");
    // Garbage is not a state.
    assert!(HeliosState::from_bytes(b"not a state").is_err());
}

/// One HTTP/1.1 request with `Connection: close`: (status, JSON body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    let json = serde_json::from_slice(&raw[split + 4..]).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[test]
fn the_server_returns_a_state_and_continues_from_it() {
    use serde_json::json;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let storage = tempfile::tempdir().unwrap();
    let (mut child, addr) = common::spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_omni"))
            .arg("serve")
            .arg(tiny_distilled())
            .args(["--port", "0", "--storage"])
            .arg(storage.path())
            .stderr(Stdio::inherit()),
    );
    let wait = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, v) = http(&addr, "GET", &format!("/v1/videos/{id}"), &json!(null));
            if v["status"] == "completed" || v["status"] == "failed" {
                return v;
            }
            assert!(Instant::now() < deadline, "{v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    while http(&addr, "GET", "/readyz", &json!(null)).0 != 200 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let base = json!({"prompt": PROMPT, "size": "128x64", "num_frames": 33, "seed": 5});
    let mut a = base.clone();
    a["output"] = json!({"return_state": true});
    let (status, created) = http(&addr, "POST", "/v1/videos", &a);
    assert_eq!(status, 200, "{created}");
    let id_a = created["id"].as_str().unwrap().to_string();
    let video_a = wait(&id_a);
    assert_eq!(video_a["status"], "completed", "{video_a}");
    let state = video_a["state"].clone();
    assert_eq!(state["kind"], "helios.v1", "{video_a}");
    assert_eq!(state["payload"]["schema_version"], 1);
    assert_eq!(state["payload"]["segment_index"], 1);
    assert_eq!(state["payload"]["blob"], id_a.as_str());
    assert!(storage.path().join(format!("{id_a}.state")).is_file());

    // B continues A and returns its own state (two chunks more: segment 3).
    let mut b = base.clone();
    b["num_frames"] = json!(66);
    b["state"] = state.clone();
    b["return_state"] = json!(true);
    let (status, created) = http(&addr, "POST", "/v1/videos", &b);
    assert_eq!(status, 200, "{created}");
    let video_b = wait(created["id"].as_str().unwrap());
    assert_eq!(video_b["status"], "completed", "{video_b}");
    assert_eq!(video_b["state"]["payload"]["segment_index"], 3, "{video_b}");
    // A video made without asking has no state.
    let (_, created) = http(&addr, "POST", "/v1/videos", &base);
    assert!(wait(created["id"].as_str().unwrap()).get("state").is_none());

    // Refusals, each a 400 naming `state`.
    let refused = |body: serde_json::Value, needle: &str| {
        let (status, e) = http(&addr, "POST", "/v1/videos", &body);
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], "state", "{e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    };
    let mut other_size = base.clone();
    other_size["size"] = json!("256x64");
    other_size["state"] = state.clone();
    refused(other_size, "incompatible");
    let mut other_kind = base.clone();
    other_kind["state"] = json!({"kind": "wan.v1", "payload": state["payload"]});
    refused(other_kind, "incompatible");
    let mut unknown = base.clone();
    unknown["state"] = json!({"kind": "helios.v1",
        "payload": {"schema_version": 1, "segment_index": 1, "blob": "video_00000000000000000000000000000000"}});
    refused(unknown, "unknown or expired");
    // Expired: the state goes with its video.
    assert_eq!(
        http(&addr, "DELETE", &format!("/v1/videos/{id_a}"), &json!(null)).0,
        200
    );
    let mut expired = base.clone();
    expired["state"] = state;
    refused(expired, "unknown or expired");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_cli_round_trip_through_a_state_file_equals_one_run() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let run = |frames: &str, extra: &[&std::ffi::OsStr], out: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_omni"))
            .args(["generate", "--model"])
            .arg(tiny_distilled())
            .args([
                "--prompt", PROMPT, "--width", "128", "--height", "64", "--seed", "5",
            ])
            .args(["--num-frames", frames, "-q", "-o"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
    };
    run("66", &[], &p("ab.npy"));
    run(
        "33",
        &["--return-state".as_ref(), p("a.state").as_os_str()],
        &p("a.npy"),
    );
    run(
        "33",
        &["--state".as_ref(), p("a.state").as_os_str()],
        &p("b.npy"),
    );
    let read = |name: &str| -> ndarray::Array4<u8> { ndarray_npy::read_npy(p(name)).unwrap() };
    let (ab, a, b) = (read("ab.npy"), read("a.npy"), read("b.npy"));
    assert_eq!(ab.shape()[0], 65);
    assert_eq!((a.shape()[0], b.shape()[0]), (33, 33));
    let ab = ab.as_slice().unwrap();
    let frame = 64 * 128 * 3;
    assert!(a.as_slice().unwrap() == &ab[..33 * frame]);
    assert!(b.as_slice().unwrap()[..32 * frame] == ab[33 * frame..]);
    // A file that is not a state: one line naming the flag.
    std::fs::write(p("bad.state"), b"nope").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "--state"])
        .arg(p("bad.state"))
        .arg("-o")
        .arg(p("x.mp4"))
        .output()
        .unwrap();
    let line = common::assert_one_line_error(&o);
    assert!(line.contains("--state"), "{line}");
}

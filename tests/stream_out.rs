//! Issue 13: chunks as they are made. `omni generate -o -` (fragmented MP4 on stdout, decoded by
//! ffmpeg from a pipe), the event order of the first fragment vs the second chunk's denoising,
//! the lossless outputs (`-o DIR/`, `.npy`) against the frames the MP4 was encoded from, and the
//! server's `content?stream=true` / `sync` with `stream=true` (chunked transfer, ffprobe-clean).

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{PROMPT, spawn_serve, stderr, tiny_distilled};
use omni::media::fmp4_out::Fmp4Writer;
use omni::media::mp4_out::{EncodeOptions, Mp4Writer};
use omni::pipeline::generator::{Generator, GeneratorOptions, LoadPolicy, RunContext};
use omni::pipeline::noise::SeededNoise;
use omni::pipeline::progress::{CancelToken, NoProgress, Progress, ProgressSink};
use omni::pipeline::request::{RequestPatch, resolve};

const W: u32 = 128;
const H: u32 = 64;

/// Top-level box types of an MP4 byte string, in order.
fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&bytes[pos + 4..pos + 8]).into_owned());
        assert!(size >= 8, "box of size {size} at {pos}");
        pos += size;
    }
    assert_eq!(pos, bytes.len(), "boxes do not end at the end of the data");
    out
}

/// ffprobe of MP4 bytes given on stdin: (codec, r_frame_rate, nb_read_frames, width, height).
fn ffprobe_stdin(bytes: &[u8]) -> (String, String, String, u64, u64) {
    let mut child = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,r_frame_rate,nb_read_frames",
        ])
        .args(["-of", "json", "-i", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffprobe must be installed (apt-get install -y ffmpeg; .ci/run does it)");
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success(), "ffprobe failed: {}", stderr(&out));
    assert!(out.stderr.is_empty(), "ffprobe warnings: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    (
        s["codec_name"].as_str().unwrap().into(),
        s["r_frame_rate"].as_str().unwrap().into(),
        s["nb_read_frames"].as_str().unwrap().into(),
        s["width"].as_u64().unwrap(),
        s["height"].as_u64().unwrap(),
    )
}

fn generate(extra: &[&str], output: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
        .args([
            "--num-frames",
            "66",
            "--fps",
            "12",
            "--seed",
            "3",
            "--quiet",
        ])
        .args(extra)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap()
}

#[test]
fn generate_to_stdout_is_a_fragmented_mp4_that_ffmpeg_decodes_from_a_pipe() {
    // omni generate … -o - | ffmpeg -i - -f rawvideo -
    let mut omni = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
        .args([
            "--num-frames",
            "66",
            "--fps",
            "12",
            "--seed",
            "3",
            "-o",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ffmpeg = Command::new("ffmpeg")
        .args([
            "-v", "error", "-xerror", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ])
        .stdin(omni.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let status = omni.wait().unwrap();
    let mut err = String::new();
    omni.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "omni failed: {err}");
    // Progress and the summary stay on stderr.
    assert!(err.contains("streamed 65 frames (2 fragments"), "{err}");
    assert!(ffmpeg.status.success(), "ffmpeg: {}", stderr(&ffmpeg));
    assert!(ffmpeg.stderr.is_empty(), "ffmpeg: {}", stderr(&ffmpeg));
    // 66 frames are trimmed to 65 (4k+1), in two 33-frame chunks.
    assert_eq!(ffmpeg.stdout.len(), 65 * (W * H * 3) as usize);

    // The same bytes captured: ftyp+moov, then one moof+mdat per chunk; ffprobe accepts them.
    let out = Command::new(env!("CARGO_BIN_EXE_omni"))
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
        .args([
            "--num-frames",
            "66",
            "--fps",
            "12",
            "--seed",
            "3",
            "-q",
            "-o",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "quiet run printed: {}", stderr(&out));
    assert_eq!(
        top_level_boxes(&out.stdout),
        ["ftyp", "moov", "moof", "mdat", "moof", "mdat"]
    );
    let (codec, fps, frames, w, h) = ffprobe_stdin(&out.stdout);
    assert_eq!(
        (codec.as_str(), fps.as_str(), frames.as_str(), w, h),
        ("h264", "12/1", "65", 128, 64)
    );
}

#[test]
fn npy_and_png_hold_exactly_the_frames_the_mp4_was_encoded_from() {
    let dir = tempfile::tempdir().unwrap();
    let (mp4, npy, pngs) = (
        dir.path().join("v.mp4"),
        dir.path().join("v.npy"),
        dir.path().join("frames/"),
    );
    for p in [&mp4, &npy, &pngs] {
        let out = generate(&[], p);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // .npy: uint8 [65, 64, 128, 3].
    let arr: ndarray::Array4<u8> = ndarray_npy::read_npy(&npy).unwrap();
    assert_eq!(arr.shape(), &[65, 64, 128, 3]);
    let frames: Vec<&[u8]> = arr
        .as_slice()
        .unwrap()
        .chunks_exact((W * H * 3) as usize)
        .collect();
    // PNG per frame, equal to the npy frames.
    let mut names: Vec<_> = std::fs::read_dir(&pngs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 65);
    assert_eq!(names[0], "frame_00000.png");
    for (i, name) in names.iter().enumerate() {
        let img = image::open(pngs.join(name)).unwrap().into_rgb8();
        assert_eq!((img.width(), img.height()), (W, H));
        assert!(
            img.as_raw() == frames[i],
            "frame {i} differs between PNG and npy"
        );
    }
    // The encoder is deterministic: encoding the npy frames again gives the CLI's MP4 byte for
    // byte, so these are exactly the frames it was encoded from.
    let again = dir.path().join("again.mp4");
    let mut w = Mp4Writer::create(&again, W, H, 12, EncodeOptions::default()).unwrap();
    for f in &frames {
        w.push_rgb(f).unwrap();
    }
    w.finish().unwrap();
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&mp4).unwrap());
    // A frame really changes over time (not a constant image).
    assert_ne!(frames[0], frames[64]);
}

#[test]
fn bad_lossless_outputs_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(&["--format", "png"], Path::new("-"));
    let line = common::assert_one_line_error(&out);
    assert!(line.contains("-o -"), "{line}");
    let out = generate(&[], &dir.path().join("missing/v.npy"));
    let line = common::assert_one_line_error(&out);
    assert!(line.contains("does not exist"), "{line}");
}

/// What happened, in order: pipeline events and bytes written to the stream.
#[derive(Default, Clone)]
struct Log(Rc<RefCell<Vec<String>>>);

impl ProgressSink for Log {
    fn event(&mut self, event: Progress) {
        let e = match event {
            Progress::Step { chunk, step, .. } => format!("step {chunk}.{step}"),
            Progress::Decoding { chunk, done } => format!("decode {chunk} {done}"),
            _ => return,
        };
        self.0.borrow_mut().push(e);
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().push(format!("bytes {}", buf.len()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_first_fragment_is_written_before_the_second_chunk_is_denoised() {
    let dir = tiny_distilled();
    let mut generator = Generator::open(
        &dir,
        GeneratorOptions {
            load: LoadPolicy::KeepAll,
            vae_dtype: None,
            ..Default::default()
        },
        &mut NoProgress,
    )
    .unwrap();
    let patch = RequestPatch {
        prompt: Some(PROMPT.into()),
        width: Some(W),
        height: Some(H),
        num_frames: Some(99),
        fps: Some(12),
        ..Default::default()
    };
    let req = resolve(&[patch], generator.defaults()).unwrap();
    let log = Log::default();
    let mut progress = log.clone();
    let mut sink = Fmp4Writer::new(log.clone(), W, H, 12, EncodeOptions::default()).unwrap();
    let mut noise = SeededNoise::new(0);
    let mut ctx = RunContext {
        noise: &mut noise,
        progress: &mut progress,
        cancel: CancelToken::new(),
    };
    generator.generate(&req, &mut ctx, &mut sink).unwrap();
    let events = log.0.borrow().clone();
    let first_bytes = events.iter().position(|e| e.starts_with("bytes")).unwrap();
    let second_chunk = events.iter().position(|e| e == "step 1.1").unwrap();
    let first_decoded = events.iter().position(|e| e == "decode 0 true").unwrap();
    assert!(
        first_decoded < first_bytes && first_bytes < second_chunk,
        "{events:?}"
    );
    // Exactly one fragment between the chunks: bytes after chunk 0's decode, none before.
    let third_chunk = events.iter().position(|e| e == "step 2.1").unwrap();
    let between = events[second_chunk..third_chunk]
        .iter()
        .filter(|e| e.starts_with("bytes"))
        .count();
    assert!(between >= 1, "{events:?}");
}

/// One raw HTTP/1.1 exchange: (status, lowercase headers, body as received).
fn http_raw(addr: &str, method: &str, path: &str, ct: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

/// Decodes a chunked transfer-encoded body (RFC 9112 §7.1); panics on a truncated one.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        assert_eq!(&b[size..size + 2], b"\r\n");
        b = &b[size + 2..];
    }
}

#[test]
fn the_server_streams_fragments_with_chunked_transfer() {
    let storage = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_omni"))
            .arg("serve")
            .arg(tiny_distilled())
            .args([
                "--port",
                "0",
                "--served-model-name",
                "tiny-helios",
                "--storage",
            ])
            .arg(storage.path())
            .stderr(Stdio::inherit()),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while http_raw(&addr, "GET", "/readyz", "text/plain", b"").0 != 200 {
        assert!(Instant::now() < deadline, "model never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = serde_json::json!({"prompt": "a lighthouse", "size": "128x64", "num_frames": 66, "fps": 12});

    // Asynchronous job: the stream is asked for right after the create, while it is queued or
    // running, and follows it to the end.
    let (status, _, created) = http_raw(
        &addr,
        "POST",
        "/v1/videos",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&created));
    let id = serde_json::from_slice::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/videos/{id}/content?stream=true");
    let (status, head, raw) = http_raw(&addr, "GET", &path, "text/plain", b"");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("content-type: video/mp4"), "{head}");
    let streamed = dechunk(&raw);
    assert_eq!(
        top_level_boxes(&streamed),
        ["ftyp", "moov", "moof", "mdat", "moof", "mdat"]
    );
    let (codec, fps, frames, w, h) = ffprobe_stdin(&streamed);
    assert_eq!(
        (codec.as_str(), fps.as_str(), frames.as_str(), w, h),
        ("h264", "12/1", "65", 128, 64)
    );
    // Asked again after completion: the same bytes, now from `<id>.fmp4` on disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !storage.path().join(format!("{id}.fmp4")).is_file() {
        assert!(Instant::now() < deadline, "no {id}.fmp4");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, _, again) = http_raw(&addr, "GET", &path, "text/plain", b"");
    assert!(dechunk(&again) == streamed);
    // The fast-start MP4 is still there.
    let (status, head, _) = http_raw(
        &addr,
        "GET",
        &format!("/v1/videos/{id}/content"),
        "text/plain",
        b"",
    );
    assert_eq!(status, 200);
    assert!(head.contains("content-length"), "{head}");

    // Sync with stream=true: the fragments are the response.
    let mut sync_body = body.clone();
    sync_body["stream"] = serde_json::json!(true);
    let (status, head, raw) = http_raw(
        &addr,
        "POST",
        "/v1/videos/sync",
        "application/json",
        sync_body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("x-request-id: video_sync-"), "{head}");
    let (_, _, frames, _, _) = ffprobe_stdin(&dechunk(&raw));
    assert_eq!(frames, "65");

    // A bad flag is a 400 naming `stream`.
    let (status, _, err) = http_raw(
        &addr,
        "GET",
        &format!("/v1/videos/{id}/content?stream=maybe"),
        "text/plain",
        b"",
    );
    assert_eq!(status, 400);
    let e: serde_json::Value = serde_json::from_slice(&err).unwrap();
    assert_eq!(e["error"]["param"], "stream");
    let _ = child.kill();
    let _ = child.wait();
}

//! End-to-end `omni generate --image` / `--video` on the shipped tiny Distilled checkpoint
//! (checked with ffprobe), and their bad-input paths: exit code ≠ 0, one readable line, no file
//! left at `-o`. Images are made in the test with the `image` crate, videos with ffmpeg
//! (libx264; the video tests fail with a message saying so when `ffmpeg` is not on `PATH`).

mod common;

use common::{PROMPT, assert_one_line_error, omni, stderr};

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::tiny_distilled;
use image::{ImageFormat, Rgb, RgbImage};

fn nb_read_frames(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed (apt-get install -y ffmpeg)");
    assert!(out.status.success(), "ffprobe failed: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    assert_eq!(s["codec_name"], "h264");
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(128), Some(64))
    );
    s["nb_read_frames"].as_str().unwrap().to_string()
}

fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 2) as u8, (y * 3) as u8, ((x + y) % 256) as u8])
    })
}

/// An H.264 MP4 of `frames` test-pattern frames at `size` made by ffmpeg (libx264).
fn make_video(path: &Path, frames: usize, size: &str) {
    let out = match Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc=size={size}:rate=24"))
        .args([
            "-frames:v",
            &frames.to_string(),
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!(
            "running `ffmpeg` ({e}): these tests make their input videos with ffmpeg; install it \
             (e.g. `apt-get install -y ffmpeg`)"
        ),
    };
    assert!(out.status.success(), "ffmpeg failed: {}", stderr(&out));
}

fn generate(extra: &[&std::ffi::OsStr], out_mp4: &Path) -> Output {
    omni()
        .args(["generate", "--model"])
        .arg(tiny_distilled())
        .args(["--prompt", PROMPT, "--width", "128", "--height", "64"])
        .args(["--num-frames", "33", "--seed", "5", "--quiet"])
        .args(extra)
        .arg("-o")
        .arg(out_mp4)
        .output()
        .unwrap()
}

#[test]
fn image_to_video_from_png_jpeg_and_webp_writes_an_mp4() {
    let dir = tempfile::tempdir().unwrap();
    for (name, format, (w, h)) in [
        ("in.png", ImageFormat::Png, (128, 64)),
        ("in.jpg", ImageFormat::Jpeg, (100, 90)), // resized to 128x64
        ("in.webp", ImageFormat::WebP, (128, 64)),
    ] {
        let img = dir.path().join(name);
        picture(w, h).save_with_format(&img, format).unwrap();
        let mp4 = dir.path().join(format!("{name}.mp4"));
        let out = generate(&["--image".as_ref(), img.as_os_str()], &mp4);
        assert!(out.status.success(), "omni failed: {}", stderr(&out));
        assert_eq!(nb_read_frames(&mp4), "33");
    }
}

#[test]
fn video_to_video_writes_only_the_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    make_video(&input, 40, "160x96");
    let mp4 = dir.path().join("out.mp4");
    let out = generate(&["--video".as_ref(), input.as_os_str()], &mp4);
    assert!(out.status.success(), "omni failed: {}", stderr(&out));
    assert_eq!(nb_read_frames(&mp4), "33");
}

#[test]
fn an_undecodable_image_fails_in_one_line_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("broken.png");
    std::fs::write(&img, b"this is not a png at all").unwrap();
    let mp4 = dir.path().join("out.mp4");
    let out = generate(&["--image".as_ref(), img.as_os_str()], &mp4);
    let line = assert_one_line_error(&out);
    assert!(line.contains("broken.png"), "{line}");
    assert!(!mp4.exists());
}

#[test]
fn an_undecodable_video_fails_in_one_line_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("broken.mp4");
    std::fs::write(&video, vec![7u8; 4096]).unwrap();
    let mp4 = dir.path().join("out.mp4");
    let out = generate(&["--video".as_ref(), video.as_os_str()], &mp4);
    let line = assert_one_line_error(&out);
    assert!(line.contains("broken.mp4"), "{line}");
    assert!(!mp4.exists());
}

#[test]
fn a_video_shorter_than_one_window_fails_in_one_line_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("short.mp4");
    make_video(&video, 10, "128x64");
    let mp4 = dir.path().join("out.mp4");
    let out = generate(&["--video".as_ref(), video.as_os_str()], &mp4);
    let line = assert_one_line_error(&out);
    assert!(line.contains("at least 33"), "{line}");
    assert!(!mp4.exists());
}

#[test]
fn image_and_video_together_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("in.png");
    picture(128, 64).save(&img).unwrap();
    let mp4 = dir.path().join("out.mp4");
    let out = generate(
        &[
            "--image".as_ref(),
            img.as_os_str(),
            "--video".as_ref(),
            img.as_os_str(),
        ],
        &mp4,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    assert!(!mp4.exists());
}

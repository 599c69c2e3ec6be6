//! `omni::media::{image_in, video_in}`: reference images and videos in, with every kind of bad
//! input refused with one clear message.
//!
//! Images are made in the test with the `image` crate. Videos are made in the test with ffmpeg
//! (libx264, libx265, libvpx-vp9; CI installs Debian's ffmpeg): the video tests fail with a message
//! saying so when `ffmpeg` is not on `PATH`, instead of passing silently.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use image::{ImageFormat, Rgb, RgbImage};
use omni::media::image_in::{
    MAX_IMAGE_SIDE, MediaError, load_image, load_image_bytes, rgb8_to_chw_f32, to_video_tensor_data,
};
use omni::media::video_in::{VideoReadOptions, VideoReader, read_video, read_video_bytes};

// ---------------------------------------------------------------------------------------------
// Images

/// A 48x32 image with four solid quadrants (red, green / blue, white), so orientation and
/// channel order are visible even after lossy JPEG.
fn quadrants(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| match (x < w / 2, y < h / 2) {
        (true, true) => Rgb([255, 0, 0]),
        (false, true) => Rgb([0, 255, 0]),
        (true, false) => Rgb([0, 0, 255]),
        (false, false) => Rgb([255, 255, 255]),
    })
}

/// A smooth gradient, for lossless round trips.
fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 5) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
    })
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// Mean absolute difference per channel value between two same-sized RGB images.
fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as i64 - y as i64).unsigned_abs())
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn png_and_webp_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let img = gradient(48, 32);
    for (format, name) in [(ImageFormat::Png, "a.png"), (ImageFormat::WebP, "a.webp")] {
        let path = write(dir.path(), name, &encode(&img, format));
        let back = load_image(&path).unwrap();
        assert_eq!(back, img, "{name} must round-trip losslessly");
    }
}

#[test]
fn jpeg_round_trips_within_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let img = quadrants(48, 32);
    let path = write(dir.path(), "a.jpg", &encode(&img, ImageFormat::Jpeg));
    let back = load_image(&path).unwrap();
    assert_eq!(back.dimensions(), (48, 32));
    // JPEG at the encoder's default quality: blocky edges, solid areas close.
    let d = mean_abs_diff(&back, &img);
    assert!(d < 12.0, "JPEG round trip mean abs diff {d}");
    assert!(
        near(back.get_pixel(2, 2), [255, 0, 0]),
        "{:?}",
        back.get_pixel(2, 2)
    );
}

#[test]
fn format_is_sniffed_from_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let img = gradient(16, 8);
    let path = write(
        dir.path(),
        "really_a_png.jpg",
        &encode(&img, ImageFormat::Png),
    );
    assert_eq!(load_image(&path).unwrap(), img);
    let path = write(dir.path(), "no_extension", &encode(&img, ImageFormat::WebP));
    assert_eq!(load_image(&path).unwrap(), img);
}

#[test]
fn bytes_and_file_give_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode(&quadrants(32, 16), ImageFormat::Jpeg);
    let path = write(dir.path(), "q.jpg", &bytes);
    assert_eq!(
        load_image(&path).unwrap(),
        load_image_bytes(&bytes).unwrap()
    );
}

#[test]
fn rgba_and_grey_images_become_rgb() {
    let rgba = image::RgbaImage::from_pixel(8, 4, image::Rgba([10, 20, 30, 0]));
    let mut buf = std::io::Cursor::new(Vec::new());
    rgba.write_to(&mut buf, ImageFormat::Png).unwrap();
    let img = load_image_bytes(buf.get_ref()).unwrap();
    // Alpha dropped, not composited (PIL's convert("RGB") does the same).
    assert!(img.pixels().all(|p| *p == Rgb([10, 20, 30])));

    let grey = image::GrayImage::from_pixel(8, 4, image::Luma([77]));
    let mut buf = std::io::Cursor::new(Vec::new());
    grey.write_to(&mut buf, ImageFormat::Png).unwrap();
    let img = load_image_bytes(buf.get_ref()).unwrap();
    assert!(img.pixels().all(|p| *p == Rgb([77, 77, 77])));
}

#[test]
fn undecodable_file_names_the_file_and_the_supported_formats() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 4] = [
        (
            "notes.png",
            b"this is not an image at all, just some text\n",
        ),
        ("empty.png", b""),
        // A BMP header: a real format, but not one we accept.
        (
            "pic.bmp",
            b"BM\x3e\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0\x01\0\0\0\x01\0\0\0\x01\0\x18\0",
        ),
        // PNG signature, then garbage.
        (
            "broken.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRxxxxxxxxxxxxxxxxxxxx",
        ),
    ];
    for (name, bytes) in cases {
        let path = write(dir.path(), name, bytes);
        let err = load_image(&path).unwrap_err();
        assert!(
            matches!(err, MediaError::UndecodableImage { .. }),
            "{name}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains("PNG, JPEG, WebP"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}

#[test]
fn truncated_jpeg_is_refused() {
    let bytes = encode(&gradient(64, 64), ImageFormat::Jpeg);
    let err = load_image_bytes(&bytes[..bytes.len() / 3]);
    // zune-jpeg may fill a truncated scan with grey instead of failing; either way no panic and,
    // on error, the one-line message.
    if let Err(e) = err {
        assert!(e.to_string().contains("uploaded image"), "{e}");
    }
    let err = load_image_bytes(&bytes[..20]).unwrap_err();
    assert!(
        matches!(err, MediaError::UndecodableImage { .. }),
        "{err:?}"
    );
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = load_image("/nonexistent/dir/ref.png").unwrap_err();
    assert!(matches!(err, MediaError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/ref.png"));
}

#[test]
fn images_wider_than_the_decoder_limit_are_refused() {
    let wide = image::GrayImage::new(MAX_IMAGE_SIDE + 1, 1);
    let mut buf = std::io::Cursor::new(Vec::new());
    wide.write_to(&mut buf, ImageFormat::Png).unwrap();
    let err = load_image_bytes(buf.get_ref()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("limit") || msg.contains("16384"), "{msg}");
}

/// A JPEG with an APP1/Exif segment holding one IFD0 entry: Orientation (0x0112) = `value`.
fn jpeg_with_orientation(img: &RgbImage, value: u16) -> Vec<u8> {
    let jpeg = encode(img, ImageFormat::Jpeg);
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08"); // big-endian TIFF, IFD0 at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&value.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // padding of the 4-byte value field
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn near(got: &Rgb<u8>, want: [u8; 3]) -> bool {
    got.0
        .iter()
        .zip(want)
        .all(|(&g, w)| (g as i32 - w as i32).abs() <= 24)
}

#[test]
fn exif_orientation_is_applied_and_absent_exif_means_upright() {
    let img = quadrants(48, 32);
    // No EXIF: unchanged orientation (what PIL's exif_transpose does without the tag).
    let upright = load_image_bytes(&encode(&img, ImageFormat::Jpeg)).unwrap();
    assert_eq!(upright.dimensions(), (48, 32));
    assert!(near(upright.get_pixel(4, 4), [255, 0, 0]));
    // Orientation 1 = upright too.
    let one = load_image_bytes(&jpeg_with_orientation(&img, 1)).unwrap();
    assert_eq!(one.dimensions(), (48, 32));
    assert!(near(one.get_pixel(4, 4), [255, 0, 0]));
    // Orientation 6: the stored image must be rotated 90° clockwise for display, so the
    // stored bottom-left (blue) quadrant ends up top-left.
    let rotated = load_image_bytes(&jpeg_with_orientation(&img, 6)).unwrap();
    assert_eq!(rotated.dimensions(), (32, 48));
    assert!(
        near(rotated.get_pixel(4, 4), [0, 0, 255]),
        "{:?}",
        rotated.get_pixel(4, 4)
    );
    assert!(
        near(rotated.get_pixel(28, 4), [255, 0, 0]),
        "{:?}",
        rotated.get_pixel(28, 4)
    );
    assert!(near(rotated.get_pixel(28, 44), [0, 255, 0]));
}

#[test]
fn video_tensor_is_planar_and_normalised_to_minus_one_one() {
    let img = quadrants(48, 32);
    let t = to_video_tensor_data(&img, 48, 32).unwrap();
    // [3, 1, H, W]
    assert_eq!(t.len(), 3 * 32 * 48);
    let at = |c: usize, y: usize, x: usize| t[c * 32 * 48 + y * 48 + x];
    // Top-left red, top-right green, bottom-left blue, bottom-right white.
    assert_eq!((at(0, 0, 0), at(1, 0, 0), at(2, 0, 0)), (1.0, -1.0, -1.0));
    assert_eq!(
        (at(0, 0, 47), at(1, 0, 47), at(2, 0, 47)),
        (-1.0, 1.0, -1.0)
    );
    assert_eq!(
        (at(0, 31, 0), at(1, 31, 0), at(2, 31, 0)),
        (-1.0, -1.0, 1.0)
    );
    assert_eq!(
        (at(0, 31, 47), at(1, 31, 47), at(2, 31, 47)),
        (1.0, 1.0, 1.0)
    );
    // Exactly 2 * v / 255 - 1 at the same size (no resampling).
    let g = gradient(16, 8);
    let t = to_video_tensor_data(&g, 16, 8).unwrap();
    assert_eq!(t, rgb8_to_chw_f32(g.as_raw(), 16, 8));
    let v = g.get_pixel(3, 5).0[1];
    assert_eq!(t[16 * 8 + 5 * 16 + 3], v as f32 / 255.0 * 2.0 - 1.0);
}

#[test]
fn video_tensor_resizes_by_stretching_like_diffusers() {
    // 48x32 -> 20x40: aspect ratio not kept (diffusers resize_mode="default"), quadrant centres
    // keep their colours, values stay within [-1, 1].
    let img = quadrants(48, 32);
    let (w, h) = (20usize, 40usize);
    let t = to_video_tensor_data(&img, w as u32, h as u32).unwrap();
    assert_eq!(t.len(), 3 * w * h);
    assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
    let at = |c: usize, y: usize, x: usize| t[c * w * h + y * w + x];
    let px = |y, x| [at(0, y, x), at(1, y, x), at(2, y, x)];
    assert_eq!(px(5, 3), [1.0, -1.0, -1.0]);
    assert_eq!(px(5, 16), [-1.0, 1.0, -1.0]);
    assert_eq!(px(35, 3), [-1.0, -1.0, 1.0]);
    assert_eq!(px(35, 16), [1.0, 1.0, 1.0]);
    assert!(matches!(
        to_video_tensor_data(&img, 0, 8),
        Err(MediaError::InvalidTargetSize { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Videos

const VW: u32 = 64;
const VH: u32 = 48;
const VFRAMES: usize = 30;
/// Largest accepted difference between a decoded frame's mean channel value and the solid colour
/// it was encoded from (8-bit levels). At CRF 10 solid frames come back within 1–2 levels; the
/// colours of neighbouring frames differ by 8 in each channel, so a frame out of order fails.
const COLOUR_TOL: f64 = 3.5;

/// The solid colour of frame `i` of the test videos: every channel moves by 8 levels per frame.
fn frame_colour(i: usize) -> [u8; 3] {
    [
        (16 + 7 * i) as u8,
        (235 - 7 * i) as u8,
        (40 + (i * 8) % 160) as u8,
    ]
}

fn ffmpeg(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`ffmpeg` not found on PATH: these tests make their input videos with ffmpeg; \
             install it (e.g. `apt-get install -y ffmpeg`)"
        ),
        Err(e) => panic!("running ffmpeg: {e}"),
    };
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Encodes the solid-colour test frames (`VFRAMES` at `w x h`, 24 frames/s) with ffmpeg, the
/// extra output options in `opts`, into `dir/name`.
fn make_video(dir: &Path, name: &str, w: u32, h: u32, opts: &[&str]) -> PathBuf {
    let mut raw = Vec::with_capacity(VFRAMES * (w * h * 3) as usize);
    for i in 0..VFRAMES {
        let c = frame_colour(i);
        for _ in 0..w * h {
            raw.extend_from_slice(&c);
        }
    }
    let path = dir.join(name);
    let size = format!("{w}x{h}");
    let mut args = vec![
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &size, "-r", "24", "-i", "-",
    ];
    args.extend_from_slice(opts);
    args.push(path.to_str().unwrap());
    ffmpeg(&args, Some(&raw));
    path
}

const X264: &[&str] = &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"];

fn x264(extra: &[&'static str]) -> Vec<&'static str> {
    [X264, extra].concat()
}

/// Frame types as ffprobe reports them, in display order.
fn pict_types(path: &Path) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pict_type",
        ])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe (part of ffmpeg) must be on PATH");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect()
}

fn mean_rgb(frame: &[u8]) -> [f64; 3] {
    let mut s = [0f64; 3];
    for px in frame.chunks_exact(3) {
        for c in 0..3 {
            s[c] += px[c] as f64;
        }
    }
    let n = (frame.len() / 3) as f64;
    s.map(|v| v / n)
}

/// Asserts `frames` are the test colours, in order.
fn assert_colours(frames: &[Vec<u8>], what: &str) {
    assert_eq!(frames.len(), VFRAMES, "{what}: frame count");
    for (i, f) in frames.iter().enumerate() {
        let got = mean_rgb(f);
        let want = frame_colour(i);
        for c in 0..3 {
            assert!(
                (got[c] - want[c] as f64).abs() <= COLOUR_TOL,
                "{what}: frame {i} mean {got:?}, want {want:?}"
            );
        }
    }
}

#[test]
fn baseline_mp4_decodes_every_frame_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_video(
        dir.path(),
        "baseline.mp4",
        VW,
        VH,
        &x264(&["-profile:v", "baseline"]),
    );
    let v = read_video(&p, &VideoReadOptions::default()).unwrap();
    assert_eq!((v.width, v.height), (VW, VH));
    assert_eq!((v.source_width, v.source_height), (VW, VH));
    assert!((v.fps - 24.0).abs() < 1e-6, "fps {}", v.fps);
    assert!(v.frames.iter().all(|f| f.len() == (VW * VH * 3) as usize));
    assert_colours(&v.frames, "baseline");
    let info = VideoReader::open(&p).unwrap().info().clone();
    assert_eq!(info.profile, "Baseline");
    assert_eq!(info.frames, VFRAMES);
}

#[test]
fn high_profile_with_b_frames_decodes_in_display_order() {
    let dir = tempfile::tempdir().unwrap();
    let opts = x264(&[
        "-profile:v",
        "high",
        "-x264-params",
        "bframes=3:b-adapt=0:scenecut=0:keyint=12",
    ]);
    let p = make_video(dir.path(), "high_b.mp4", VW, VH, &opts);
    let types = pict_types(&p);
    assert!(
        types.contains('B'),
        "the test video must have B-frames: {types}"
    );
    let v = read_video(&p, &VideoReadOptions::default()).unwrap();
    assert_colours(&v.frames, "high+B");
    assert_eq!(VideoReader::open(&p).unwrap().info().profile, "High");

    // Same through the in-memory path and with fast start (moov first).
    let bytes = fs::read(&p).unwrap();
    let from_bytes = read_video_bytes(&bytes, &VideoReadOptions::default()).unwrap();
    assert_eq!(from_bytes.frames, v.frames);
    let mut faststart = opts.clone();
    faststart.extend(["-movflags", "+faststart"]);
    let p = make_video(dir.path(), "high_b_faststart.mp4", VW, VH, &faststart);
    assert_colours(
        &read_video(&p, &VideoReadOptions::default()).unwrap().frames,
        "faststart",
    );
}

#[test]
fn fragmented_mp4_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let opts = x264(&[
        "-profile:v",
        "high",
        "-x264-params",
        "bframes=2:b-adapt=0:scenecut=0:keyint=8",
        "-movflags",
        "frag_keyframe+empty_moov",
    ]);
    let p = make_video(dir.path(), "frag.mp4", VW, VH, &opts);
    assert!(
        pict_types(&p).contains('B'),
        "the test video must have B-frames"
    );
    let v = read_video(&p, &VideoReadOptions::default()).unwrap();
    assert_colours(&v.frames, "fragmented");
    assert!((v.fps - 24.0).abs() < 1e-6, "fps {}", v.fps);
}

#[test]
fn frames_are_resized_to_the_output_size_and_sizes_are_cropped_from_the_sps() {
    let dir = tempfile::tempdir().unwrap();
    // 70x38 is not a multiple of 16: the SPS carries cropping.
    let p = make_video(dir.path(), "odd.mp4", 70, 38, X264);
    let v = read_video(&p, &VideoReadOptions::default()).unwrap();
    assert_eq!((v.width, v.height), (70, 38));
    assert_colours(&v.frames, "70x38");
    let v = read_video(&p, &VideoReadOptions::resized(32, 64)).unwrap();
    assert_eq!(
        (v.width, v.height, v.source_width, v.source_height),
        (32, 64, 70, 38)
    );
    assert!(v.frames.iter().all(|f| f.len() == 32 * 64 * 3));
    assert_colours(&v.frames, "resized");
}

#[test]
fn streaming_decode_matches_read_video() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_video(
        dir.path(),
        "s.mp4",
        VW,
        VH,
        &x264(&["-x264-params", "bframes=3:b-adapt=0:scenecut=0"]),
    );
    let all = read_video(&p, &VideoReadOptions::default()).unwrap();
    let streamed: Vec<Vec<u8>> = VideoReader::open(&p)
        .unwrap()
        .frames(None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(streamed, all.frames);
}

#[test]
fn frame_cap_is_enforced_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_video(dir.path(), "cap.mp4", VW, VH, X264);
    let opts = VideoReadOptions {
        size: None,
        max_frames: VFRAMES - 1,
    };
    let err = read_video(&p, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            MediaError::TooManyFrames {
                frames: VFRAMES,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("at most 29 frames"), "{err}");
}

fn assert_one_line(err: &MediaError) -> String {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn yuv444_10bit_and_interlaced_h264_are_refused_naming_the_flavour() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "444.mp4",
            vec![
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv444p",
                "-profile:v",
                "high444",
            ],
            "4:4:4",
        ),
        (
            "10bit.mp4",
            vec![
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p10le",
                "-profile:v",
                "high10",
            ],
            "10-bit",
        ),
        (
            "interlaced.mp4",
            vec![
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-x264-params",
                "interlaced=1",
            ],
            "interlaced",
        ),
    ];
    for (name, opts, needle) in cases {
        let p = make_video(dir.path(), name, VW, VH, &opts);
        let err = read_video(&p, &VideoReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, MediaError::UnsupportedProfile { .. }),
            "{name}: {err:?}"
        );
        let msg = assert_one_line(&err);
        assert!(msg.contains(needle) && msg.contains(name), "{name}: {msg}");
    }
}

#[test]
fn other_codecs_are_refused_naming_the_codec() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 4] = [
        ("vp9.webm", &["-c:v", "libvpx-vp9", "-b:v", "200k"], "VP9"),
        ("vp9.mp4", &["-c:v", "libvpx-vp9", "-b:v", "200k"], "VP9"),
        ("hevc.mp4", &["-c:v", "libx265", "-tag:v", "hvc1"], "HEVC"),
        ("mpeg4.mp4", &["-c:v", "mpeg4"], "MPEG-4 Part 2"),
    ];
    for (name, opts, codec) in cases {
        let p = make_video(dir.path(), name, VW, VH, opts);
        let err = read_video(&p, &VideoReadOptions::default()).unwrap_err();
        let msg = assert_one_line(&err);
        assert!(
            matches!(
                err,
                MediaError::UnsupportedCodec { .. } | MediaError::NotMp4 { .. }
            ),
            "{name}: {err:?}"
        );
        assert!(msg.contains(codec) && msg.contains(name), "{name}: {msg}");
    }
    let webm = read_video(dir.path().join("vp9.webm"), &VideoReadOptions::default()).unwrap_err();
    assert!(webm.to_string().contains("WebM"), "{webm}");
}

#[test]
fn audio_only_mp4_has_no_video_track() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audio.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=0.5",
            "-c:a",
            "aac",
            p.to_str().unwrap(),
        ],
        None,
    );
    let err = read_video(&p, &VideoReadOptions::default()).unwrap_err();
    assert!(matches!(err, MediaError::NoVideoTrack { .. }), "{err:?}");
    assert!(assert_one_line(&err).contains("audio.mp4"));
}

#[test]
fn empty_truncated_and_non_video_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = make_video(dir.path(), "good.mp4", VW, VH, X264);
    let mut fs_opts = X264.to_vec();
    fs_opts.extend(["-movflags", "+faststart"]);
    let good_fs = make_video(dir.path(), "good_fs.mp4", VW, VH, &fs_opts);
    let bytes = fs::read(&good).unwrap();
    let bytes_fs = fs::read(&good_fs).unwrap();
    let png = encode(&gradient(8, 8), ImageFormat::Png);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.mp4", vec![]),
        ("half.mp4", bytes[..bytes.len() / 2].to_vec()),
        (
            "half_faststart.mp4",
            bytes_fs[..bytes_fs.len() / 2].to_vec(),
        ),
        ("head_only.mp4", bytes_fs[..40].to_vec()),
        ("text.mp4", b"hello, this is not a video".to_vec()),
        ("image.mp4", png),
    ];
    for (name, data) in cases {
        let p = write(dir.path(), name, &data);
        let err = read_video(&p, &VideoReadOptions::default()).unwrap_err();
        let msg = assert_one_line(&err);
        assert!(
            matches!(
                err,
                MediaError::NotMp4 { .. } | MediaError::CorruptVideo { .. }
            ),
            "{name}: {err:?}"
        );
        assert!(msg.contains(name), "{name}: {msg}");
    }
    let err = read_video(dir.path().join("missing.mp4"), &VideoReadOptions::default()).unwrap_err();
    assert!(matches!(err, MediaError::Io { .. }));
    let err = read_video_bytes(&[], &VideoReadOptions::default()).unwrap_err();
    assert!(assert_one_line(&err).contains("uploaded video"));
}

/// Writes an MP4 whose H.264 track has the SPS/PPS of `src` but no samples (ffmpeg drops the
/// track altogether when asked for zero frames).
fn mp4_with_empty_h264_track(src: &Path, dst: &Path) {
    let bytes = fs::read(src).unwrap();
    let parsed = re_mp4::Mp4::read_bytes(&bytes).unwrap();
    let track = parsed.tracks().values().next().unwrap();
    let re_mp4::StsdBoxContent::Avc1(avc1) = &track.trak(&parsed).mdia.minf.stbl.stsd.contents
    else {
        panic!("source must be H.264");
    };
    let avcc = &avc1.avcc.contents;
    let config = mp4::Mp4Config {
        major_brand: "isom".parse().unwrap(),
        minor_version: 512,
        compatible_brands: vec!["isom".parse().unwrap(), "avc1".parse().unwrap()],
        timescale: 12_288,
    };
    let mut w = mp4::Mp4Writer::write_start(std::io::Cursor::new(Vec::new()), &config).unwrap();
    w.add_track(&mp4::TrackConfig {
        track_type: mp4::TrackType::Video,
        timescale: 12_288,
        language: "und".into(),
        media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
            width: VW as u16,
            height: VH as u16,
            seq_param_set: avcc.sequence_parameter_sets[0].bytes.clone(),
            pic_param_set: avcc.picture_parameter_sets[0].bytes.clone(),
        }),
    })
    .unwrap();
    w.write_end().unwrap();
    fs::write(dst, w.into_writer().into_inner()).unwrap();
}

#[test]
fn video_without_frames_is_refused_as_shorter_than_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let src = make_video(dir.path(), "src.mp4", VW, VH, X264);
    let p = dir.path().join("zero.mp4");
    mp4_with_empty_h264_track(&src, &p);
    let err = read_video(&p, &VideoReadOptions::default()).unwrap_err();
    let msg = assert_one_line(&err);
    assert!(matches!(err, MediaError::NoFrames { .. }), "{err:?}");
    assert!(
        msg.contains("zero.mp4") && msg.contains("shorter than one frame"),
        "{msg}"
    );

    // ffmpeg asked for zero frames writes no video track at all.
    let p = dir.path().join("zero_ffmpeg.mp4");
    ffmpeg(
        &[
            "-i",
            src.to_str().unwrap(),
            "-c",
            "copy",
            "-frames:v",
            "0",
            p.to_str().unwrap(),
        ],
        None,
    );
    let err = read_video(&p, &VideoReadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            MediaError::NoFrames { .. } | MediaError::NoVideoTrack { .. }
        ),
        "{err:?}"
    );
}

//! `omni::media::mp4_out`: files that ffprobe/ffmpeg accept, fast-start layout, round trip
//! through a decoder, and no stray files on errors.
//!
//! The ffprobe/ffmpeg checks need both tools on `PATH` (CI installs ffmpeg); they fail with a
//! message saying so instead of passing silently.

use std::fs;
use std::path::Path;
use std::process::Command;

use omni::media::mp4_out::{
    EncodeOptions, Mp4Error, Mp4Writer, default_bitrate_bps, frame_f32_to_rgb8,
};
use openh264::OpenH264API;
use openh264::decoder::{Decoder, DecoderConfig, Flush};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSource};

const W: u32 = 128;
const H: u32 = 96;
const FPS: u32 = 24;
const FRAMES: usize = 40;
/// Y-plane PSNR floor of the decoded video vs the encoder's YUV input. At 1 Mbit/s for 128x96
/// (3.4 bit/pixel/frame) smooth content decodes far above this; below it something is broken
/// (wrong frame order, lost frames, wrong colour conversion), not merely lossy.
const MIN_Y_PSNR_DB: f64 = 30.0;

/// A smooth moving gradient with a moving square, RGB8 `[H, W, 3]`.
fn synthetic_frame(t: usize, w: u32, h: u32) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    let mut rgb = Vec::with_capacity(w * h * 3);
    let (sx, sy) = ((t * 2) % w, (t * 3 / 2) % h);
    for y in 0..h {
        for x in 0..w {
            let in_square = x >= sx && x < sx + 16 && y >= sy && y < sy + 16;
            if in_square {
                rgb.extend_from_slice(&[240, 240, 32]);
            } else {
                rgb.push(((x * 255 / w + t * 4) % 256) as u8);
                rgb.push(((y * 255 / h + t * 2) % 256) as u8);
                rgb.push((((x + y) * 128 / (w + h)) + 64) as u8);
            }
        }
    }
    rgb
}

fn write_test_video(path: &Path) -> Vec<Vec<u8>> {
    let existed = path.exists();
    let mut writer = Mp4Writer::create(path, W, H, FPS, EncodeOptions::default()).unwrap();
    let frames: Vec<Vec<u8>> = (0..FRAMES).map(|t| synthetic_frame(t, W, H)).collect();
    for f in &frames {
        writer.push_rgb(f).unwrap();
    }
    assert_eq!(writer.frames(), FRAMES);
    if !existed {
        assert!(
            !path.exists(),
            "nothing may appear at the path before finish"
        );
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.frames, FRAMES);
    assert_eq!((summary.width, summary.height, summary.fps), (W, H, FPS));
    assert_eq!(summary.bytes, fs::metadata(path).unwrap().len());
    assert!((summary.duration_s - FRAMES as f64 / FPS as f64).abs() < 1e-9);
    frames
}

/// Runs an ffmpeg-suite tool; panics with an install hint if it is missing.
fn run_tool(tool: &str, args: &[&str]) -> std::process::Output {
    match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` not found on PATH: this test checks the MP4 with the ffmpeg tools; \
             install ffmpeg (e.g. `apt-get install -y ffmpeg`)"
        ),
        Err(e) => panic!("running {tool}: {e}"),
    }
}

/// Top-level box types in file order (plain 32-bit sizes; our files are small).
fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        names.push(String::from_utf8_lossy(&bytes[pos + 4..pos + 8]).into_owned());
        assert!(size >= 8, "box {} has size {size}", names.last().unwrap());
        pos += size;
    }
    assert_eq!(
        pos,
        bytes.len(),
        "top-level boxes must tile the file exactly"
    );
    names
}

fn y_psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Decodes every frame's Y plane (tightly packed, `w * h` bytes) with the mp4 reader +
/// openh264 (`Flush::NoFlush`, as recommended for decoding).
fn decode_y_planes(path: &Path) -> (Vec<Vec<u8>>, (usize, usize)) {
    let bytes = fs::read(path).unwrap();
    let size = bytes.len() as u64;
    let mut reader = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), size).unwrap();
    let (track_id, sps, pps) = {
        let track = reader.tracks().values().next().expect("one track");
        (
            track.track_id(),
            track.sequence_parameter_set().unwrap().to_vec(),
            track.picture_parameter_set().unwrap().to_vec(),
        )
    };
    let mut decoder = Decoder::with_api_config(
        OpenH264API::from_source(),
        DecoderConfig::new().flush_after_decode(Flush::NoFlush),
    )
    .unwrap();
    let mut planes = Vec::new();
    let mut dims = (0, 0);
    let mut keep = |yuv: &openh264::decoder::DecodedYUV<'_>| {
        let (w, h) = yuv.dimensions();
        let stride = yuv.strides().0;
        dims = (w, h);
        let mut y = Vec::with_capacity(w * h);
        for row in 0..h {
            y.extend_from_slice(&yuv.y()[row * stride..row * stride + w]);
        }
        planes.push(y);
    };
    let count = reader.sample_count(track_id).unwrap();
    for id in 1..=count {
        let sample = reader.read_sample(track_id, id).unwrap().expect("sample");
        let mut annexb = Vec::new();
        if id == 1 {
            for ps in [&sps, &pps] {
                annexb.extend_from_slice(&[0, 0, 0, 1]);
                annexb.extend_from_slice(ps);
            }
        }
        let mut s = &sample.bytes[..];
        while !s.is_empty() {
            let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(&s[4..4 + len]);
            s = &s[4 + len..];
        }
        if let Some(yuv) = decoder.decode(&annexb).unwrap() {
            keep(&yuv);
        }
    }
    for yuv in decoder.flush_remaining().unwrap() {
        keep(&yuv);
    }
    (planes, dims)
}

#[test]
fn ffprobe_reports_h264_avc1_size_rate_and_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.mp4");
    write_test_video(&path);

    let out = run_tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,codec_tag_string,width,height,pix_fmt,r_frame_rate,avg_frame_rate,\
             nb_read_frames,duration:format=duration",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ffprobe complained: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stream = &json["streams"][0];
    assert_eq!(stream["codec_name"], "h264", "{json}");
    assert_eq!(stream["codec_tag_string"], "avc1", "{json}");
    assert_eq!(stream["width"], W, "{json}");
    assert_eq!(stream["height"], H, "{json}");
    assert_eq!(stream["pix_fmt"], "yuv420p", "{json}");
    assert_eq!(stream["r_frame_rate"], "24/1", "{json}");
    assert_eq!(stream["avg_frame_rate"], "24/1", "{json}");
    assert_eq!(stream["nb_read_frames"], FRAMES.to_string(), "{json}");
    let expected = FRAMES as f64 / FPS as f64;
    for d in [&stream["duration"], &json["format"]["duration"]] {
        let d: f64 = d.as_str().expect("duration string").parse().unwrap();
        // ffprobe prints 6 decimals; the mp4 0.14 truncation bug would give 1.64 instead of 1.666667.
        assert!(
            (d - expected).abs() < 2e-6,
            "duration {d} != {expected}: {json}"
        );
    }
}

#[test]
fn ffmpeg_decodes_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decode.mp4");
    write_test_video(&path);
    let out = run_tool(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-xerror",
            "-i",
            path.to_str().unwrap(),
            "-f",
            "null",
            "-",
        ],
    );
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "ffmpeg printed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn file_is_fast_start_with_matching_timescales_and_vmhd_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layout.mp4");
    write_test_video(&path);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(top_level_boxes(&bytes), ["ftyp", "moov", "mdat"]);

    let size = bytes.len() as u64;
    let reader = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), size).unwrap();
    assert_eq!(reader.tracks().len(), 1);
    let track = reader.tracks().values().next().unwrap();
    assert_eq!(reader.moov.mvhd.timescale, track.trak.mdia.mdhd.timescale);
    assert_eq!(track.trak.mdia.minf.vmhd.as_ref().unwrap().flags, 1);
    assert_eq!(track.sample_count() as usize, FRAMES);
    assert_eq!((track.width(), track.height()), (W as u16, H as u16));
    // The first sample must be a sync (IDR) sample, and with the default key-frame interval of
    // 2 * fps = 48 frames the 40-frame video has exactly one.
    let stss = track.trak.mdia.minf.stbl.stss.as_ref().expect("stss");
    assert_eq!(stss.entries, [1]);
}

#[test]
fn decoded_frames_match_input_count_and_y_psnr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roundtrip.mp4");
    let frames = write_test_video(&path);
    let (planes, dims) = decode_y_planes(&path);
    assert_eq!(planes.len(), FRAMES, "decoded frame count");
    assert_eq!(dims, (W as usize, H as usize));
    for (t, (rgb, decoded)) in frames.iter().zip(&planes).enumerate() {
        let input = YUVBuffer::from_rgb8_source(RgbSliceU8::new(rgb, (W as usize, H as usize)));
        let psnr = y_psnr(&input.y()[..(W * H) as usize], decoded);
        assert!(
            psnr >= MIN_Y_PSNR_DB,
            "frame {t}: Y-PSNR {psnr:.2} dB < {MIN_Y_PSNR_DB} dB"
        );
    }
}

#[test]
fn push_frames_f32_matches_push_rgb_of_truncated_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (32u32, 16u32);
    let frame_len = (w * h * 3) as usize;
    // Two "chunks" of 3 frames each, as floats in [0, 1].
    let floats: Vec<f32> = (0..6 * frame_len)
        .map(|i| ((i * 7) % 1000) as f32 / 999.0)
        .collect();

    let a = dir.path().join("a.mp4");
    let mut wa = Mp4Writer::create(&a, w, h, 16, EncodeOptions::default()).unwrap();
    for chunk in floats.chunks(3 * frame_len) {
        wa.push_frames_f32(chunk).unwrap();
    }
    assert_eq!(wa.frames(), 6);
    wa.finish().unwrap();

    let b = dir.path().join("b.mp4");
    let mut wb = Mp4Writer::create(&b, w, h, 16, EncodeOptions::default()).unwrap();
    let mut rgb = vec![0u8; frame_len];
    for frame in floats.chunks(frame_len) {
        frame_f32_to_rgb8(frame, &mut rgb);
        wb.push_rgb(&rgb).unwrap();
    }
    wb.finish().unwrap();
    // OpenH264 is deterministic, so the same bytes in give the same file.
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
}

#[test]
fn float_conversion_truncates_like_diffusers_export_to_video() {
    // `(frame * 255).astype(np.uint8)` on float32 in [0, 1].
    let src = [
        0.0,
        1.0,
        0.5,
        0.999,
        0.998_04,
        1.0 / 255.0,
        -0.2,
        1.7,
        f32::NAN,
    ];
    let mut dst = [0u8; 9];
    frame_f32_to_rgb8(&src, &mut dst);
    assert_eq!(dst, [0, 255, 127, 254, 254, 1, 0, 255, 0]);
}

#[test]
fn dropping_without_finish_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abandoned.mp4");
    let mut writer = Mp4Writer::create(&path, W, H, FPS, EncodeOptions::default()).unwrap();
    for t in 0..5 {
        writer.push_rgb(&synthetic_frame(t, W, H)).unwrap();
    }
    // A wrong-sized frame mid-way is an error, and the caller gives up.
    let err = writer.push_rgb(&[0u8; 10]).unwrap_err();
    assert!(
        matches!(err, Mp4Error::FrameLength { got: 10, .. }),
        "{err}"
    );
    assert_eq!(writer.frames(), 5);
    drop(writer);
    assert!(!path.exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary file left behind"
    );
}

#[test]
fn finishing_with_no_frames_errors_and_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.mp4");
    let writer = Mp4Writer::create(&path, W, H, FPS, EncodeOptions::default()).unwrap();
    assert!(matches!(writer.finish(), Err(Mp4Error::NoFrames)));
    assert!(!path.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn finish_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.mp4");
    fs::write(&path, b"old").unwrap();
    write_test_video(&path);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(&bytes[4..8], b"ftyp");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the video remains"
    );
}

#[test]
fn unwritable_directory_fails_in_create_naming_the_path() {
    let path = Path::new("/proc/nonexistent/x.mp4");
    let err = Mp4Writer::create(path, W, H, FPS, EncodeOptions::default()).unwrap_err();
    assert!(matches!(err, Mp4Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("/proc/nonexistent/x.mp4"), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the io::Error is kept as the source"
    );

    // A read-only directory (meaningless as root, who may write anyway: then only the above).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        let can_write_anyway = fs::write(dir.path().join("probe"), b"").is_ok();
        if !can_write_anyway {
            let path = dir.path().join("ro.mp4");
            let err = Mp4Writer::create(&path, W, H, FPS, EncodeOptions::default()).unwrap_err();
            assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn invalid_parameters_are_rejected_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.mp4");
    let create = |w, h, fps, opts| Mp4Writer::create(&path, w, h, fps, opts).unwrap_err();
    let d = EncodeOptions::default();
    for (w, h) in [(127, 96), (128, 95), (0, 96), (4096, 2160), (2170, 2170)] {
        let err = create(w, h, 24, d);
        assert!(
            matches!(err, Mp4Error::InvalidSize { .. }),
            "{w}x{h}: {err}"
        );
        assert!(err.to_string().contains(&format!("{w}x{h}")), "{err}");
    }
    assert!(create(127, 96, 24, d).to_string().contains("even"));
    assert!(matches!(
        create(W, H, 0, d),
        Mp4Error::InvalidFps { fps: 0 }
    ));
    let opts = EncodeOptions {
        bitrate_bps: Some(5),
        ..d
    };
    assert!(matches!(
        create(W, H, 24, opts),
        Mp4Error::InvalidBitrate { bps: 5 }
    ));
    let opts = EncodeOptions {
        keyframe_interval: Some(0),
        ..d
    };
    assert!(matches!(
        create(W, H, 24, opts),
        Mp4Error::InvalidKeyframeInterval
    ));
    let err = Mp4Writer::create(dir.path(), W, H, 24, d).unwrap_err();
    assert!(matches!(err, Mp4Error::InvalidPath { .. }), "{err}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn frame_rates_that_do_not_divide_90khz_keep_exact_durations() {
    // 32 frames/s (e.g. RIFE 2x of 16) does not divide 90000; the writer picks another timescale.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fps32.mp4");
    let mut writer = Mp4Writer::create(&path, 64, 32, 32, EncodeOptions::default()).unwrap();
    for t in 0..48 {
        writer.push_rgb(&synthetic_frame(t, 64, 32)).unwrap();
    }
    let summary = writer.finish().unwrap();
    assert_eq!(summary.duration_s, 1.5);
    let bytes = fs::read(&path).unwrap();
    let size = bytes.len() as u64;
    let reader = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), size).unwrap();
    assert_eq!(reader.duration(), std::time::Duration::from_millis(1500));
    let track = reader.tracks().values().next().unwrap();
    assert_eq!(track.trak.mdia.mdhd.timescale % 32, 0);
}

#[test]
fn default_bitrate_scales_with_pixels_and_has_a_floor() {
    assert_eq!(default_bitrate_bps(128, 96, 24), 1_000_000);
    assert_eq!(default_bitrate_bps(1280, 720, 24), 2_211_840);
}

#[test]
fn writer_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Mp4Writer>();
}

#[test]
fn idr_every_two_seconds_marked_as_sync_samples() {
    // Default key-frame interval 2 * fps: IDRs at frames 0, 48, 96 of 100 at 24 frames/s, each
    // recorded in stss (1-based sample numbers) so players can seek to them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gop.mp4");
    let mut writer = Mp4Writer::create(&path, 64, 32, 24, EncodeOptions::default()).unwrap();
    for t in 0..100 {
        writer.push_rgb(&synthetic_frame(t, 64, 32)).unwrap();
    }
    writer.finish().unwrap();
    let bytes = fs::read(&path).unwrap();
    let size = bytes.len() as u64;
    let reader = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), size).unwrap();
    let track = reader.tracks().values().next().unwrap();
    let stss = track.trak.mdia.minf.stbl.stss.as_ref().expect("stss");
    assert_eq!(stss.entries, [1, 49, 97]);
}

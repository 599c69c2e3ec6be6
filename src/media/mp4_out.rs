//! Streaming H.264/MP4 writer: RGB8 frames in, a fast-start `.mp4` file out.
//!
//! Frames are pushed one at a time (or a chunk at a time), converted to YUV 4:2:0 (BT.601
//! limited range, the `openh264` fast path), encoded with OpenH264 (Constrained Baseline) and
//! muxed with the `mp4` crate into memory. Only the *encoded* samples are kept, never decoded
//! RGB frames, so a long video costs its compressed size in memory (about 0.1 bit per pixel per
//! frame at the default bitrate). [`Mp4Writer::finish`] moves `moov` in front of `mdat`
//! ("fast start"), writes a temporary file next to the target, fsyncs it and renames it over the
//! target, so readers never see a half-written video.
//!
//! Workarounds for the `mp4` 0.14 crate (see `shared/reference/video-io.md` §2):
//! - movie timescale == track timescale, otherwise each sample's duration is truncated when
//!   converted to the movie timescale and the file is reported too short;
//! - the crate writes `moov` last: [`Mp4Writer::finish`] re-reads it with the crate's own
//!   `MoovBox` reader, shifts every `co64`/`stco` chunk offset by the size of `moov`, and writes
//!   `ftyp, moov, mdat`;
//! - the crate writes `vmhd` flags 0; ISO/IEC 14496-12 wants 1 (some Android players care).
//!
//! Encoder settings that matter (OpenH264's defaults silently drop frames): frame skipping off,
//! bitrate rate control with an explicit target, `max_frame_rate = fps`, an IDR every `2 * fps`
//! frames, and BT.601 VUI so players use the matrix the RGB->YUV conversion used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mp4::{BoxHeader, BoxType, Mp4Box, ReadBox, WriteBox};

use super::h264_encode::{H264Encoder, check_video};

/// Largest frame OpenH264 encodes (level 5.2): 3840x2160 landscape or 2160x3840 portrait, pixels.
pub const MAX_LONG_SIDE: u32 = 3840;
/// See [`MAX_LONG_SIDE`].
pub const MAX_SHORT_SIDE: u32 = 2160;
/// Highest accepted frame rate, frames/s.
pub const MAX_FPS: u32 = 1000;
/// Default bitrate density: bits per pixel per frame (0.1 gives 2.2 Mbit/s at 1280x720, 24 frames/s).
pub const DEFAULT_BITS_PER_PIXEL: f64 = 0.1;
/// Floor of the default bitrate, bits/s (small videos would look blocky below it).
pub const MIN_DEFAULT_BITRATE_BPS: u32 = 1_000_000;
/// Accepted range of an explicit [`EncodeOptions::bitrate_bps`], bits/s.
pub const BITRATE_RANGE_BPS: std::ops::RangeInclusive<u32> = 10_000..=240_000_000;

/// MP4 timescale (ticks per second) preferred for video: the MPEG 90 kHz clock.
const PREFERRED_TIMESCALE: u32 = 90_000;

/// Per-process counter that keeps temporary file names unique.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Errors from [`Mp4Writer`].
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    /// Width or height is odd (H.264 4:2:0 needs even sizes), zero, or above the encoder's limit.
    #[error(
        "cannot encode a {width}x{height} video: {reason} (width and height must be even, non-zero, \
         and at most 3840x2160 or 2160x3840 pixels)"
    )]
    InvalidSize {
        /// Requested width, pixels.
        width: u32,
        /// Requested height, pixels.
        height: u32,
        /// What is wrong with the size.
        reason: &'static str,
    },
    /// The frame rate is zero or above [`MAX_FPS`].
    #[error("invalid frame rate {fps} frames/s: must be between 1 and {MAX_FPS}")]
    InvalidFps {
        /// Requested frame rate, frames/s.
        fps: u32,
    },
    /// An explicit bitrate outside [`BITRATE_RANGE_BPS`].
    #[error("invalid bitrate {bps} bit/s: must be between 10 kbit/s and 240 Mbit/s")]
    InvalidBitrate {
        /// Requested bitrate, bits/s.
        bps: u32,
    },
    /// An explicit key-frame interval of 0.
    #[error("invalid key-frame interval 0: must be at least 1 frame")]
    InvalidKeyframeInterval,
    /// The output path names no file (e.g. ends in `..` or is a directory).
    #[error("invalid output path {}: {reason}", path.display())]
    InvalidPath {
        /// The requested output path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A pushed buffer has the wrong length for the video's size.
    #[error(
        "frame buffer has {got} values, expected {expected} ({width}x{height} pixels x 3 channels{per})",
        per = if *.frames_allowed { " per frame" } else { "" }
    )]
    FrameLength {
        /// Length received, elements.
        got: usize,
        /// Length expected, elements (one frame, or a multiple of one frame).
        expected: usize,
        /// Video width, pixels.
        width: u32,
        /// Video height, pixels.
        height: u32,
        /// Whether any whole number of frames would have been accepted.
        frames_allowed: bool,
    },
    /// OpenH264 failed.
    #[error("H.264 encoding failed at frame {frame}: {message}")]
    Encode {
        /// Index of the frame being encoded (0-based).
        frame: usize,
        /// OpenH264's description.
        message: String,
    },
    /// The encoder produced no picture for a frame (it must never skip, see module docs).
    #[error(
        "H.264 encoder skipped frame {frame} (frame type {frame_type}); the video would lose frames"
    )]
    SkippedFrame {
        /// Index of the skipped frame (0-based).
        frame: usize,
        /// OpenH264's frame type, for diagnosis.
        frame_type: String,
    },
    /// The `mp4` crate failed while muxing.
    #[error("MP4 muxing failed while {action}")]
    Mux {
        /// What was being done.
        action: &'static str,
        /// The `mp4` crate's error.
        #[source]
        source: mp4::Error,
    },
    /// The muxed MP4 did not have the expected top-level layout (a bug, not an input problem).
    #[error("internal MP4 layout error: {0}")]
    Layout(&'static str),
    /// [`Mp4Writer::finish`] was called before any frame was pushed.
    #[error("no frames were pushed; an MP4 needs at least one frame")]
    NoFrames,
    /// An earlier encode or mux error left the writer unusable.
    #[error("the MP4 writer failed earlier and cannot continue: {0}")]
    Poisoned(String),
    /// Writing a streamed video (fragmented MP4 to a pipe or a connection) failed.
    #[error("cannot write the video stream")]
    Stream(#[source] io::Error),
    /// Reading or writing a file failed.
    #[error("cannot write video {}: {action} {}", path.display(), at.display())]
    Io {
        /// The requested output path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The file actually touched (the temporary file, the directory or `path`).
        at: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Encoder speed/quality trade-off (OpenH264 `ECOMPLEXITY_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Complexity {
    /// Fastest, about 1.5x the frames/s of `Medium` at a slightly worse quality for the bitrate.
    Low,
    /// OpenH264's default.
    #[default]
    Medium,
    /// Slowest, best quality for the bitrate.
    High,
}

impl Complexity {
    pub(crate) fn to_openh264(self) -> openh264::encoder::Complexity {
        match self {
            Self::Low => openh264::encoder::Complexity::Low,
            Self::Medium => openh264::encoder::Complexity::Medium,
            Self::High => openh264::encoder::Complexity::High,
        }
    }
}

/// H.264 encoder options; `EncodeOptions::default()` suits generated video.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Target bitrate, bits/s. `None`: [`default_bitrate_bps`] (0.1 bit per pixel per frame, at
    /// least 1 Mbit/s).
    pub bitrate_bps: Option<u32>,
    /// Distance between IDR (key) frames, frames. `None`: `2 * fps` (one every 2 seconds).
    pub keyframe_interval: Option<u32>,
    /// Encoder effort.
    pub complexity: Complexity,
}

/// What [`Mp4Writer::finish`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Mp4Summary {
    /// Frames in the file.
    pub frames: usize,
    /// Frame width, pixels.
    pub width: u32,
    /// Frame height, pixels.
    pub height: u32,
    /// Frame rate, frames/s.
    pub fps: u32,
    /// File size, bytes.
    pub bytes: u64,
    /// Playback duration, seconds (`frames / fps`).
    pub duration_s: f64,
}

/// Default target bitrate in bits/s for a `width`x`height` (pixels) video at `fps` frames/s:
/// [`DEFAULT_BITS_PER_PIXEL`] bits per pixel per frame, at least [`MIN_DEFAULT_BITRATE_BPS`].
pub fn default_bitrate_bps(width: u32, height: u32, fps: u32) -> u32 {
    let bps = width as f64 * height as f64 * fps as f64 * DEFAULT_BITS_PER_PIXEL;
    let max = *BITRATE_RANGE_BPS.end() as f64;
    bps.clamp(MIN_DEFAULT_BITRATE_BPS as f64, max).round() as u32
}

/// Converts float RGB values in `[0, 1]` to bytes exactly as diffusers does for a pipeline's
/// default output: `VideoProcessor.postprocess_video(output_type="np")` yields float32 frames
/// clamped to `[0, 1]` (`denormalize`: `(x * 0.5 + 0.5).clamp(0, 1)`), then
/// `diffusers.utils.export_to_video` converts them with `(frame * 255).astype(np.uint8)`:
/// a float32 multiply followed by **truncation**, not rounding. (`numpy_to_pil`, used for
/// `output_type="pil"`, rounds instead; Helios' documented example uses the `np` path.)
///
/// Values are clamped to `[0, 1]` first (a no-op after `denormalize`); NaN becomes 0.
/// `src` and `dst` are any layout, element for element (e.g. `[H, W, 3]`); lengths must match.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn frame_f32_to_rgb8(src: &[f32], dst: &mut [u8]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "frame_f32_to_rgb8: source and destination lengths differ"
    );
    for (d, &s) in dst.iter_mut().zip(src) {
        // `as u8` truncates toward zero and saturates (NaN -> 0), like astype(uint8) in range.
        *d = (s.clamp(0.0, 1.0) * 255.0f32) as u8;
    }
}

/// Streaming H.264/MP4 writer; see the module docs.
///
/// Dropping it without calling [`finish`](Self::finish) (for example on an error or a
/// cancelled job) writes nothing at the target path and removes the temporary file.
pub struct Mp4Writer {
    path: PathBuf,
    width: u32,
    height: u32,
    fps: u32,
    /// MP4 ticks per second, used for both the movie and the track.
    timescale: u32,
    encoder: H264Encoder,
    /// Reused RGB8 buffer for [`push_frames_f32`](Self::push_frames_f32).
    rgb_scratch: Vec<u8>,
    /// Created at the first frame, once SPS/PPS are known.
    muxer: Option<Muxer>,
    frames: usize,
    poisoned: Option<String>,
    temp: TempFile,
}

struct Muxer {
    writer: mp4::Mp4Writer<Cursor<Vec<u8>>>,
}

impl std::fmt::Debug for Mp4Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mp4Writer")
            .field("path", &self.path)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl Mp4Writer {
    /// Starts a video of `width`x`height` pixels (both even) at `fps` frames per second, to be
    /// written at `path` when finished.
    ///
    /// Nothing is created at `path` until [`finish`](Self::finish); a hidden temporary file
    /// (`.<name>.<pid>.<n>.tmp`) is created in `path`'s directory right away, so an unwritable
    /// directory fails here rather than after the video has been generated.
    pub fn create(
        path: &Path,
        width: u32,
        height: u32,
        fps: u32,
        opts: EncodeOptions,
    ) -> Result<Self, Mp4Error> {
        check_video(width, height, fps, &opts)?;
        let temp = TempFile::create_for(path)?;
        let encoder = H264Encoder::new(width, height, fps, opts)?;

        // Movie timescale == track timescale (mp4 0.14 duration bug), and a whole number of
        // ticks per frame so that durations are exact.
        let timescale = if PREFERRED_TIMESCALE.is_multiple_of(fps) {
            PREFERRED_TIMESCALE
        } else {
            fps * 1000
        };

        Ok(Self {
            path: path.to_path_buf(),
            width,
            height,
            fps,
            timescale,
            encoder,
            rgb_scratch: Vec::new(),
            muxer: None,
            frames: 0,
            poisoned: None,
            temp,
        })
    }

    /// Appends one frame: RGB8, row-major, `width * height * 3` bytes (`[H, W, 3]`).
    ///
    /// A wrong length is reported and the writer stays usable; an encoder or muxer error makes
    /// every later call fail (drop the writer).
    pub fn push_rgb(&mut self, rgb: &[u8]) -> Result<(), Mp4Error> {
        if let Some(msg) = &self.poisoned {
            return Err(Mp4Error::Poisoned(msg.clone()));
        }
        let expected = self.frame_len();
        if rgb.len() != expected {
            return Err(self.length_error(rgb.len(), false));
        }
        let result = self.encode_and_mux(rgb);
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
        }
        result
    }

    /// Appends frames given as floats in `[0, 1]`, layout `[F, H, W, 3]` (`F` frames, row-major
    /// RGB), converted with [`frame_f32_to_rgb8`] one frame at a time (no `F`-frame RGB buffer).
    /// `frames.len()` must be a multiple of `width * height * 3`.
    pub fn push_frames_f32(&mut self, frames: &[f32]) -> Result<(), Mp4Error> {
        let frame_len = self.frame_len();
        if !frames.len().is_multiple_of(frame_len) {
            return Err(self.length_error(frames.len(), true));
        }
        let mut scratch = std::mem::take(&mut self.rgb_scratch);
        scratch.resize(frame_len, 0);
        let mut result = Ok(());
        for frame in frames.chunks_exact(frame_len) {
            frame_f32_to_rgb8(frame, &mut scratch);
            result = self.push_rgb(&scratch);
            if result.is_err() {
                break;
            }
        }
        self.rgb_scratch = scratch;
        result
    }

    /// Number of frames pushed so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Frame width, pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height, pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Frame rate, frames/s.
    pub fn fps(&self) -> u32 {
        self.fps
    }

    /// The path the video will be written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Muxes and writes the file: fast-start MP4 (`ftyp, moov, mdat`) to the temporary file,
    /// fsync, then rename over `path` (and fsync the directory, best effort).
    pub fn finish(mut self) -> Result<Mp4Summary, Mp4Error> {
        if let Some(msg) = &self.poisoned {
            return Err(Mp4Error::Poisoned(msg.clone()));
        }
        let Some(mut muxer) = self.muxer.take() else {
            return Err(Mp4Error::NoFrames);
        };
        muxer.writer.write_end().map_err(|source| Mp4Error::Mux {
            action: "writing the moov box",
            source,
        })?;
        let muxed = muxer.writer.into_writer().into_inner();
        let layout = fast_start_layout(&muxed)?;

        let io_err = |action, at: &Path| {
            let path = self.path.clone();
            let at = at.to_path_buf();
            move |source| Mp4Error::Io {
                path,
                action,
                at,
                source,
            }
        };
        let temp_path = self.temp.path.clone();
        let file = self
            .temp
            .file
            .take()
            .expect("temporary file is open until finish");
        let mut out = BufWriter::new(file);
        let write = (|| -> io::Result<u64> {
            out.write_all(&muxed[..layout.mdat_start])?;
            out.write_all(&layout.moov)?;
            out.write_all(&muxed[layout.mdat_start..layout.moov_start])?;
            out.write_all(&muxed[layout.moov_end..])?;
            out.flush()?;
            Ok((muxed.len() - (layout.moov_end - layout.moov_start) + layout.moov.len()) as u64)
        })();
        let bytes = write.map_err(io_err("writing temporary file", &temp_path))?;
        let file = out
            .into_inner()
            .map_err(|e| io_err("writing temporary file", &temp_path)(e.into_error()))?;
        file.sync_all()
            .map_err(io_err("syncing temporary file", &temp_path))?;
        drop(file);

        fs::rename(&temp_path, &self.path)
            .map_err(io_err("renaming temporary file", &temp_path))?;
        self.temp.persisted = true;
        if let Some(dir) = self.temp.dir() {
            // Durability of the rename itself; not fatal where directories cannot be opened.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }

        Ok(Mp4Summary {
            frames: self.frames,
            width: self.width,
            height: self.height,
            fps: self.fps,
            bytes,
            duration_s: self.frames as f64 / self.fps as f64,
        })
    }

    fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    fn length_error(&self, got: usize, frames_allowed: bool) -> Mp4Error {
        Mp4Error::FrameLength {
            got,
            expected: self.frame_len(),
            width: self.width,
            height: self.height,
            frames_allowed,
        }
    }

    fn encode_and_mux(&mut self, rgb: &[u8]) -> Result<(), Mp4Error> {
        let frame = self.frames;
        let encoded = self.encoder.encode(rgb)?;
        if self.muxer.is_none() {
            let (sps, pps) = self
                .encoder
                .parameter_sets()
                .expect("known after the first frame");
            self.muxer = Some(self.start_muxer(sps.to_vec(), pps.to_vec())?);
        }
        let muxer = self.muxer.as_mut().expect("muxer started above");
        let duration = self.timescale / self.fps;
        muxer
            .writer
            .write_sample(
                1,
                &mp4::Mp4Sample {
                    start_time: frame as u64 * duration as u64,
                    duration,
                    rendering_offset: 0,
                    is_sync: encoded.is_sync,
                    bytes: encoded.avcc.into(),
                },
            )
            .map_err(|source| Mp4Error::Mux {
                action: "writing a sample",
                source,
            })?;
        self.frames += 1;
        Ok(())
    }

    fn start_muxer(&self, sps: Vec<u8>, pps: Vec<u8>) -> Result<Muxer, Mp4Error> {
        let mux_err = |action| move |source| Mp4Error::Mux { action, source };
        let brand = |s: &str| s.parse::<mp4::FourCC>().expect("four-character brand");
        let config = mp4::Mp4Config {
            major_brand: brand("isom"),
            minor_version: 512,
            compatible_brands: ["isom", "iso2", "avc1", "mp41"].map(brand).to_vec(),
            timescale: self.timescale,
        };
        let mut writer = mp4::Mp4Writer::write_start(Cursor::new(Vec::new()), &config)
            .map_err(mux_err("writing the file header"))?;
        writer
            .add_track(&mp4::TrackConfig {
                track_type: mp4::TrackType::Video,
                timescale: self.timescale,
                language: "und".into(),
                media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                    width: self.width as u16,
                    height: self.height as u16,
                    seq_param_set: sps,
                    pic_param_set: pps,
                }),
            })
            .map_err(mux_err("adding the video track"))?;
        Ok(Muxer { writer })
    }
}

/// Where `mdat` and `moov` are in the `mp4` crate's output, and the patched `moov`.
struct FastStart {
    /// Byte offset of the `mdat` box header: `moov` goes here.
    mdat_start: usize,
    /// Byte range of the original `moov` box (it must follow all media data).
    moov_start: usize,
    moov_end: usize,
    /// Serialized `moov` with chunk offsets shifted by its own size and `vmhd` flags = 1.
    moov: Vec<u8>,
}

/// Walks the top-level boxes with `mp4::BoxHeader`, re-reads `moov` with the crate's own
/// reader and patches it for a `ftyp, moov, mdat` layout.
fn fast_start_layout(file: &[u8]) -> Result<FastStart, Mp4Error> {
    let mux_err = |action| move |source| Mp4Error::Mux { action, source };
    let mut cursor = Cursor::new(file);
    let mut mdat_start = None;
    let mut moov = None;
    let mut pos = 0u64;
    while pos < file.len() as u64 {
        cursor
            .seek(SeekFrom::Start(pos))
            .map_err(|e| mux_err("walking boxes")(e.into()))?;
        let header = BoxHeader::read(&mut cursor).map_err(mux_err("reading a box header"))?;
        let header_len = cursor.position() - pos;
        // `BoxHeader::read` reports a 64-bit `largesize` minus 8 (callers subtract 8 for the
        // header), so add the extra 8 back to get the box's real length.
        let len = match (header.size, header_len) {
            (0, _) => file.len() as u64 - pos,
            (s, 16) => s + 8,
            (s, _) => s,
        };
        if len < header_len || pos + len > file.len() as u64 {
            return Err(Mp4Error::Layout(
                "top-level box runs past the end of the file",
            ));
        }
        match header.name {
            BoxType::MdatBox if mdat_start.is_none() => mdat_start = Some(pos),
            BoxType::MoovBox => moov = Some((pos, pos + len, header_len, header.size)),
            _ => {}
        }
        pos += len;
    }
    let mdat_start = mdat_start.ok_or(Mp4Error::Layout("no mdat box"))?;
    let (moov_start, moov_end, moov_header_len, moov_size) =
        moov.ok_or(Mp4Error::Layout("no moov box"))?;
    if moov_start < mdat_start {
        return Err(Mp4Error::Layout("moov already precedes mdat"));
    }

    // `MoovBox::read_box` expects the reader just past the header and `moov_size` as reported
    // by `BoxHeader::read` (it takes the box to start 8 bytes back).
    cursor
        .seek(SeekFrom::Start(moov_start + moov_header_len))
        .map_err(|e| mux_err("seeking to moov")(e.into()))?;
    let mut moov =
        mp4::MoovBox::read_box(&mut cursor, moov_size).map_err(mux_err("re-reading moov"))?;
    let shift = moov.box_size();
    for trak in &mut moov.traks {
        if let Some(vmhd) = trak.mdia.minf.vmhd.as_mut() {
            vmhd.flags = 1;
        }
        if let Some(co64) = trak.mdia.minf.stbl.co64.as_mut() {
            for offset in &mut co64.entries {
                *offset += shift;
            }
        }
        if let Some(stco) = trak.mdia.minf.stbl.stco.as_mut() {
            for offset in &mut stco.entries {
                *offset = u32::try_from(*offset as u64 + shift).map_err(|_| {
                    Mp4Error::Layout("32-bit chunk offset overflows after fast start")
                })?;
            }
        }
    }
    let mut moov_bytes = Vec::with_capacity(shift as usize);
    moov.write_box(&mut moov_bytes)
        .map_err(mux_err("writing the fast-start moov"))?;
    if moov_bytes.len() as u64 != shift {
        return Err(Mp4Error::Layout(
            "moov size differs from its computed box_size",
        ));
    }
    Ok(FastStart {
        mdat_start: mdat_start as usize,
        moov_start: moov_start as usize,
        moov_end: moov_end as usize,
        moov: moov_bytes,
    })
}

/// The hidden temporary file `finish` writes before renaming; removed on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
    persisted: bool,
}

impl TempFile {
    fn create_for(target: &Path) -> Result<Self, Mp4Error> {
        let invalid = |reason| Mp4Error::InvalidPath {
            path: target.to_path_buf(),
            reason,
        };
        let name = target
            .file_name()
            .ok_or_else(|| invalid("it names no file"))?;
        if target.is_dir() {
            return Err(invalid("it is a directory"));
        }
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let path = dir.join(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Mp4Error::Io {
                path: target.to_path_buf(),
                action: "creating temporary file",
                at: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            file: Some(file),
            persisted: false,
        })
    }

    fn dir(&self) -> Option<&Path> {
        self.path.parent()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The pipeline's chunks straight into the MP4 (float `[0, 1]` → u8 as diffusers'
/// `export_to_video`): the one frame sink `omni generate`, `omni bench` and the server share.
impl crate::pipeline::pipelines::pipeline_output::FrameSink for Mp4Writer {
    fn push_frames(
        &mut self,
        frames: crate::pipeline::pipelines::pipeline_output::VideoFrames,
    ) -> Result<(), String> {
        self.push_frames_f32(&frames.data)
            .map_err(|e| e.to_string())
    }
}

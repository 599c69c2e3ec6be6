//! Reference videos for video-to-video: H.264 in MP4 in, RGB8 frames in display order out.
//!
//! Demux with `re_mp4` (reads plain, fast-start and fragmented MP4; `mp4` 0.14 returns garbage
//! for fragmented files), convert each sample from AVCC (length-prefixed NAL units) to Annex-B,
//! prepending the SPS/PPS from `avcC` to every sync sample, and decode with OpenH264 built with
//! `Flush::NoFlush` plus [`Decoder::flush_remaining`] at the end: the default flushing decoder
//! loses frames on streams with B-frames (`shared/reference/video-io.md` §3, measured). OpenH264
//! returns pictures in display order.
//!
//! Accepted: 8-bit 4:2:0 progressive H.264, Constrained Baseline, Main or High profile. Refused
//! before decoding, with one clear line: files that are not MP4 (WebM, Matroska, AVI, … with the
//! codec named where it can be read), MP4 without a video track, other codecs (HEVC, VP9, AV1,
//! MPEG-4 Part 2, ProRes, …), High 10 / 4:2:2 / 4:4:4 and interlaced H.264 (read from the SPS in
//! `avcC`), empty videos, and videos above the caller's frame cap.
//!
//! Colour: OpenH264's `write_rgb8` (BT.601 limited range), the matrix our own writer signals.
//! Divergences from diffusers, whose `load_video` decodes with ffmpeg (via imageio/decord) into PIL
//! frames: ffmpeg's swscale may pick another matrix when the stream signals BT.709, and upsamples
//! chroma differently; each frame is then resized like a reference image
//! ([`crate::media::image_in::resize_rgb`], Lanczos3 stretch, see that module for the PIL
//! divergence).
//!
//! Memory: the MP4 file is read whole (at most [`MAX_VIDEO_FILE_BYTES`]); frames are decoded one
//! at a time ([`VideoReader::frames`] streams them), and [`read_video`] keeps every decoded frame,
//! already resized, so it refuses videos with more than [`VideoReadOptions::max_frames`] samples
//! before decoding anything.

use std::collections::VecDeque;
use std::path::Path;

use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use re_mp4::{Avc1Box, Mp4, StsdBoxContent, Track, TrackKind};

use super::image_in::{MediaError, RgbImage, read_capped, resize_rgb};

/// Largest accepted video file, bytes (the file is held in memory while decoding).
pub const MAX_VIDEO_FILE_BYTES: u64 = 1024 * 1024 * 1024;
/// Default cap on decoded frames kept by [`read_video`]: 600 frames (25 s at 24 frames/s) of
/// 640x384 RGB8 are 442 MB.
pub const DEFAULT_MAX_FRAMES: usize = 600;
/// Largest accepted coded width or height, pixels (H.264 level 5.2 allows 4096x2304).
pub const MAX_VIDEO_SIDE: u32 = 4096;

/// What [`read_video`] does with the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoReadOptions {
    /// Resize every frame to `(width, height)` (Lanczos3 stretch, as diffusers'
    /// `VideoProcessor.preprocess_video`); `None` keeps the decoded size.
    pub size: Option<(u32, u32)>,
    /// Refuse videos with more frames than this ([`MediaError::TooManyFrames`]).
    pub max_frames: usize,
}

impl Default for VideoReadOptions {
    fn default() -> Self {
        Self {
            size: None,
            max_frames: DEFAULT_MAX_FRAMES,
        }
    }
}

impl VideoReadOptions {
    /// Frames resized to `width x height`, default frame cap.
    pub fn resized(width: u32, height: u32) -> Self {
        Self {
            size: Some((width, height)),
            ..Self::default()
        }
    }
}

/// A whole decoded video.
#[derive(Debug, Clone)]
pub struct DecodedVideo {
    /// Frames in display order, each RGB8 `[height, width, 3]` row-major.
    pub frames: Vec<Vec<u8>>,
    /// Width of `frames`, pixels (the requested size, or the decoded size).
    pub width: u32,
    /// Height of `frames`, pixels.
    pub height: u32,
    /// Average frame rate from the MP4 sample durations, frames/s (0 if the file has none).
    pub fps: f64,
    /// The video's own size (after SPS cropping), pixels.
    pub source_width: u32,
    /// See [`DecodedVideo::source_width`].
    pub source_height: u32,
}

/// What the container and the SPS say, known before decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Coded size after SPS cropping, pixels.
    pub width: u32,
    /// See [`VideoInfo::width`].
    pub height: u32,
    /// Samples (frames) in the video track.
    pub frames: usize,
    /// Average frame rate, frames/s (0 if the file gives no durations).
    pub fps: f64,
    /// H.264 profile name, e.g. "High".
    pub profile: &'static str,
}

/// Decodes the H.264/MP4 video at `path` into RGB8 frames in display order, resized as `opts`
/// asks.
///
/// # Errors
/// [`MediaError::Io`], [`MediaError::FileTooLarge`], [`MediaError::NotMp4`],
/// [`MediaError::NoVideoTrack`], [`MediaError::UnsupportedCodec`],
/// [`MediaError::UnsupportedProfile`], [`MediaError::DimensionsTooLarge`],
/// [`MediaError::NoFrames`], [`MediaError::TooManyFrames`], [`MediaError::CorruptVideo`],
/// [`MediaError::InvalidTargetSize`].
pub fn read_video(
    path: impl AsRef<Path>,
    opts: &VideoReadOptions,
) -> Result<DecodedVideo, MediaError> {
    collect(VideoReader::open(path)?, opts)
}

/// [`read_video`] for an in-memory file, e.g. an upload; messages call it "uploaded video".
///
/// # Errors
/// As [`read_video`].
pub fn read_video_bytes(bytes: &[u8], opts: &VideoReadOptions) -> Result<DecodedVideo, MediaError> {
    if bytes.len() as u64 > MAX_VIDEO_FILE_BYTES {
        return Err(MediaError::FileTooLarge {
            name: "uploaded video".into(),
            size: bytes.len() as u64,
            max: MAX_VIDEO_FILE_BYTES,
        });
    }
    collect(
        VideoReader::from_bytes(bytes.to_vec(), "uploaded video")?,
        opts,
    )
}

fn collect(reader: VideoReader, opts: &VideoReadOptions) -> Result<DecodedVideo, MediaError> {
    let info = reader.info().clone();
    if info.frames > opts.max_frames {
        return Err(MediaError::TooManyFrames {
            name: reader.name.clone(),
            frames: info.frames,
            max: opts.max_frames,
        });
    }
    let name = reader.name.clone();
    let mut frames = Vec::with_capacity(info.frames);
    let mut frames_iter = reader.frames(opts.size)?;
    for frame in &mut frames_iter {
        frames.push(frame?);
    }
    if frames.is_empty() {
        return Err(MediaError::CorruptVideo {
            name,
            reason: format!("none of its {} samples decoded to a picture", info.frames),
        });
    }
    let (width, height) = opts.size.unwrap_or(frames_iter.decoded_size);
    Ok(DecodedVideo {
        frames,
        width,
        height,
        fps: info.fps,
        source_width: frames_iter.decoded_size.0,
        source_height: frames_iter.decoded_size.1,
    })
}

/// An opened, validated H.264/MP4 video, ready to decode.
pub struct VideoReader {
    name: String,
    bytes: Vec<u8>,
    samples: SampleTable,
    /// SPS and PPS from `avcC`, Annex-B, prepended to every sync sample.
    parameter_sets: Vec<u8>,
    /// Bytes in each AVCC NAL length prefix (1, 2 or 4).
    nal_length_size: usize,
    info: VideoInfo,
}

impl VideoReader {
    /// Reads and validates the MP4 at `path` (nothing is decoded yet).
    ///
    /// # Errors
    /// As [`read_video`], except the decoding errors.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MediaError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = read_capped(path, &name, MAX_VIDEO_FILE_BYTES)?;
        Self::from_bytes(bytes, &name)
    }

    /// Validates an in-memory MP4; `name` names it in messages.
    ///
    /// # Errors
    /// As [`VideoReader::open`].
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, MediaError> {
        let name = name.to_owned();
        let mp4 = parse_mp4(&bytes).map_err(|detail| MediaError::NotMp4 {
            name: name.clone(),
            detail,
        })?;
        let (track, avc1) = h264_track(&mp4, &name)?;
        let corrupt = |reason: String| MediaError::CorruptVideo {
            name: name.clone(),
            reason,
        };
        let avcc = &avc1.avcc.contents;
        let Some(sps_nal) = avcc.sequence_parameter_sets.first() else {
            return Err(corrupt("the avcC box holds no SPS".into()));
        };
        let sps = Sps::parse(&sps_nal.bytes)
            .ok_or_else(|| corrupt("the SPS in the avcC box cannot be parsed".into()))?;
        let profile = check_sps(&sps, &name)?;
        let nal_length_size = avcc.length_size_minus_one as usize + 1;
        if !matches!(nal_length_size, 1 | 2 | 4) {
            return Err(corrupt(format!(
                "invalid NAL length size {nal_length_size} in avcC"
            )));
        }
        let (samples, fps) = sample_table(track, bytes.len(), &name)?;
        let info = VideoInfo {
            width: sps.width,
            height: sps.height,
            frames: samples.len(),
            fps,
            profile,
        };
        let parameter_sets = annex_b_parameter_sets(avc1);
        drop(mp4);
        Ok(Self {
            name,
            bytes,
            samples,
            parameter_sets,
            nal_length_size,
            info,
        })
    }

    /// What the container and the SPS say.
    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// The input's name as used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decodes frame by frame, in display order, each resized to `size` if given.
    ///
    /// # Errors
    /// [`MediaError::InvalidTargetSize`] for a zero `size`, [`MediaError::CorruptVideo`] if
    /// OpenH264 cannot be initialised; the iterator yields decoding errors.
    pub fn frames(self, size: Option<(u32, u32)>) -> Result<VideoFrames, MediaError> {
        if let Some((width, height)) = size
            && (width == 0 || height == 0)
        {
            return Err(MediaError::InvalidTargetSize { width, height });
        }
        let decoder = Decoder::with_api_config(
            OpenH264API::from_source(),
            DecoderConfig::new().flush_after_decode(Flush::NoFlush),
        )
        .map_err(|e| MediaError::CorruptVideo {
            name: self.name.clone(),
            reason: format!("cannot start the H.264 decoder: {e}"),
        })?;
        let decoded_size = (self.info.width, self.info.height);
        Ok(VideoFrames {
            reader: self,
            decoder,
            next_sample: 0,
            flushed: false,
            failed: false,
            pending: VecDeque::new(),
            packet: Vec::new(),
            size,
            decoded_size,
        })
    }
}

/// Checks that `bytes` look like an MP4 and demuxes them; the error says what they are instead
/// (naming the container where it can) or why demuxing failed.
fn parse_mp4(bytes: &[u8]) -> Result<Mp4, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    if let Some(container) = sniff_non_mp4(bytes) {
        return Err(format!("it is {container}, not an MP4 file"));
    }
    if bytes.len() < 8 || !is_iso_bmff_box(&bytes[4..8]) {
        return Err("it is not an MP4 file".into());
    }
    // `re_mp4` is not hardened against hostile input: turn a panic into an error.
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Mp4::read_bytes(bytes)));
    match parsed {
        Ok(Ok(mp4)) => Ok(mp4),
        Ok(Err(e)) => Err(format!("the MP4 structure is invalid or truncated ({e})")),
        Err(_) => Err("the MP4 structure is invalid or truncated (demuxer panicked)".into()),
    }
}

/// The video track to decode (the first H.264 one, else the first video track, which is then
/// refused naming its codec) and its `avc1` sample entry.
fn h264_track<'a>(mp4: &'a Mp4, name: &str) -> Result<(&'a Track, &'a Avc1Box), MediaError> {
    let video_tracks: Vec<_> = mp4
        .tracks()
        .values()
        // The handler type, not `Track::kind`: re_mp4 leaves `kind` empty for sample
        // entries it does not know (mp4v, ProRes, ...), which we still want to name.
        .filter(|t| {
            t.kind == Some(TrackKind::Video) || t.trak(mp4).mdia.hdlr.handler_type.value == *b"vide"
        })
        .collect();
    let Some(track) = video_tracks
        .iter()
        .find(|t| {
            matches!(
                t.trak(mp4).mdia.minf.stbl.stsd.contents,
                StsdBoxContent::Avc1(_)
            )
        })
        .or(video_tracks.first())
    else {
        return Err(MediaError::NoVideoTrack { name: name.into() });
    };
    match &track.trak(mp4).mdia.minf.stbl.stsd.contents {
        StsdBoxContent::Avc1(avc1) => Ok((track, avc1)),
        other => Err(MediaError::UnsupportedCodec {
            name: name.into(),
            codec: codec_name(other),
        }),
    }
}

/// Refuses what the decoder or the pipeline cannot take: chroma other than 4:2:0, more than 8
/// bits, interlacing, profiles other than (Constrained) Baseline, Main and High, an empty or
/// oversized picture. Returns the profile name.
fn check_sps(sps: &Sps, name: &str) -> Result<&'static str, MediaError> {
    let unsupported = |detail: String| MediaError::UnsupportedProfile {
        name: name.to_owned(),
        detail,
    };
    let profile = profile_name(sps.profile_idc);
    if sps.chroma_format_idc != 1 {
        let chroma = match sps.chroma_format_idc {
            0 => "4:0:0 (monochrome)",
            2 => "4:2:2",
            _ => "4:4:4",
        };
        return Err(unsupported(format!(
            "{profile} profile (profile_idc {}) with {chroma} chroma",
            sps.profile_idc
        )));
    }
    if sps.bit_depth_luma != 8 || sps.bit_depth_chroma != 8 {
        return Err(unsupported(format!(
            "{profile} profile (profile_idc {}) with {}-bit samples",
            sps.profile_idc,
            sps.bit_depth_luma.max(sps.bit_depth_chroma)
        )));
    }
    if !sps.frame_mbs_only {
        return Err(unsupported(format!(
            "{profile} profile (profile_idc {}), interlaced (field or MBAFF coding)",
            sps.profile_idc
        )));
    }
    if !matches!(sps.profile_idc, 66 | 77 | 100) {
        return Err(unsupported(format!(
            "{profile} profile (profile_idc {})",
            sps.profile_idc
        )));
    }
    if sps.width == 0 || sps.height == 0 {
        return Err(MediaError::CorruptVideo {
            name: name.to_owned(),
            reason: format!("the SPS gives a {}x{} picture", sps.width, sps.height),
        });
    }
    if sps.width > MAX_VIDEO_SIDE || sps.height > MAX_VIDEO_SIDE {
        return Err(MediaError::DimensionsTooLarge {
            name: name.to_owned(),
            width: sps.width,
            height: sps.height,
            max: MAX_VIDEO_SIDE,
        });
    }
    Ok(profile)
}

/// Byte range in the file and sync flag of each sample, in decode order.
type SampleTable = Vec<(std::ops::Range<usize>, bool)>;

/// The [`SampleTable`] of `track`, checked to lie inside the `file_len` bytes, and the average
/// frame rate from the sample durations (0 without durations).
fn sample_table(
    track: &Track,
    file_len: usize,
    name: &str,
) -> Result<(SampleTable, f64), MediaError> {
    if track.samples.is_empty() {
        return Err(MediaError::NoFrames { name: name.into() });
    }
    let mut samples = Vec::with_capacity(track.samples.len());
    let mut total_duration = 0u64;
    for (i, s) in track.samples.iter().enumerate() {
        let end = s.offset.checked_add(s.size);
        match end {
            Some(end) if end <= file_len as u64 => {}
            _ => {
                return Err(MediaError::CorruptVideo {
                    name: name.to_owned(),
                    reason: format!("sample {} lies outside the file (truncated?)", i + 1),
                });
            }
        }
        samples.push((s.byte_range(), s.is_sync));
        total_duration = total_duration.saturating_add(s.duration);
    }
    let fps = if total_duration > 0 && track.timescale > 0 {
        samples.len() as f64 * track.timescale as f64 / total_duration as f64
    } else {
        0.0
    };
    Ok((samples, fps))
}

/// The SPS and PPS of `avcC` in Annex-B (start code before each), to prepend to sync samples.
fn annex_b_parameter_sets(avc1: &Avc1Box) -> Vec<u8> {
    let avcc = &avc1.avcc.contents;
    let mut parameter_sets = Vec::new();
    for ps in avcc
        .sequence_parameter_sets
        .iter()
        .chain(&avcc.picture_parameter_sets)
    {
        parameter_sets.extend_from_slice(&[0, 0, 0, 1]);
        parameter_sets.extend_from_slice(&ps.bytes);
    }
    parameter_sets
}

/// Streaming decoder over a [`VideoReader`]: yields RGB8 frames (`[height, width, 3]`) in
/// display order. Holds at most the few frames OpenH264 releases at once.
pub struct VideoFrames {
    reader: VideoReader,
    decoder: Decoder,
    next_sample: usize,
    flushed: bool,
    failed: bool,
    pending: VecDeque<Vec<u8>>,
    packet: Vec<u8>,
    size: Option<(u32, u32)>,
    /// Size of the decoded pictures, pixels (the SPS size until the first picture).
    pub decoded_size: (u32, u32),
}

impl VideoFrames {
    fn corrupt(&self, reason: String) -> MediaError {
        MediaError::CorruptVideo {
            name: self.reader.name.clone(),
            reason,
        }
    }

    /// Converts one AVCC sample to Annex-B in `self.packet`.
    fn build_packet(&mut self, index: usize) -> Result<(), MediaError> {
        let (range, is_sync) = self.reader.samples[index].clone();
        let n = self.reader.nal_length_size;
        self.packet.clear();
        if is_sync || index == 0 {
            self.packet.extend_from_slice(&self.reader.parameter_sets);
        }
        let mut data = &self.reader.bytes[range];
        while !data.is_empty() {
            if data.len() < n {
                return Err(self.corrupt(format!("sample {} ends inside a NAL length", index + 1)));
            }
            let len = data[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            let Some(nal) = data.get(n..n + len) else {
                return Err(self.corrupt(format!(
                    "sample {} has a NAL unit longer than the sample",
                    index + 1
                )));
            };
            self.packet.extend_from_slice(&[0, 0, 0, 1]);
            self.packet.extend_from_slice(nal);
            data = &data[n + len..];
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), MediaError> {
        if self.next_sample < self.reader.samples.len() {
            let index = self.next_sample;
            self.next_sample += 1;
            self.build_packet(index)?;
            let size = self.size;
            let decoded = match self.decoder.decode(&self.packet) {
                Ok(Some(yuv)) => Some(convert(&yuv, size)),
                Ok(None) => None,
                Err(e) => {
                    return Err(MediaError::CorruptVideo {
                        name: self.reader.name.clone(),
                        reason: format!("H.264 decoding failed at sample {}: {e}", index + 1),
                    });
                }
            };
            if let Some((frame, dims)) = decoded {
                self.accept(frame, dims)?;
            }
        } else if !self.flushed {
            self.flushed = true;
            let size = self.size;
            let rest: Vec<_> = match self.decoder.flush_remaining() {
                Ok(frames) => frames.iter().map(|yuv| convert(yuv, size)).collect(),
                Err(e) => {
                    return Err(MediaError::CorruptVideo {
                        name: self.reader.name.clone(),
                        reason: format!("H.264 decoding failed at the end of the stream: {e}"),
                    });
                }
            };
            for (frame, dims) in rest {
                self.accept(frame, dims)?;
            }
        }
        Ok(())
    }

    fn accept(&mut self, frame: Vec<u8>, dims: (u32, u32)) -> Result<(), MediaError> {
        if dims != self.decoded_size {
            if self.size.is_none() {
                return Err(self.corrupt(format!(
                    "the picture size changes from {}x{} to {}x{} mid-stream",
                    self.decoded_size.0, self.decoded_size.1, dims.0, dims.1
                )));
            }
            self.decoded_size = dims;
        }
        self.pending.push_back(frame);
        Ok(())
    }
}

impl Iterator for VideoFrames {
    type Item = Result<Vec<u8>, MediaError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            if let Some(frame) = self.pending.pop_front() {
                return Some(Ok(frame));
            }
            if self.flushed {
                return None;
            }
            if let Err(e) = self.step() {
                self.failed = true;
                return Some(Err(e));
            }
        }
        None
    }
}

/// YUV 4:2:0 picture to RGB8 (BT.601 limited range), resized to `size` if given. Returns the frame
/// and the decoded picture size.
fn convert(yuv: &DecodedYUV<'_>, size: Option<(u32, u32)>) -> (Vec<u8>, (u32, u32)) {
    let (w, h) = yuv.dimensions();
    let mut rgb = vec![0u8; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    let dims = (w as u32, h as u32);
    let frame = match size {
        Some(target) if target != dims => {
            let img = RgbImage::from_raw(dims.0, dims.1, rgb).expect("buffer sized for the frame");
            resize_rgb(&img, target.0, target.1)
                .expect("target size checked non-zero")
                .into_raw()
        }
        _ => rgb,
    };
    (frame, dims)
}

/// Box types that can open an ISO-BMFF (MP4/MOV) file.
fn is_iso_bmff_box(fourcc: &[u8]) -> bool {
    matches!(
        fourcc,
        b"ftyp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"styp" | b"pnot"
    )
}

/// Names a few common containers that are not MP4, with their video codec where it is cheap to
/// read.
fn sniff_non_mp4(bytes: &[u8]) -> Option<String> {
    if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        let kind = if find(bytes, b"webm").is_some_and(|i| i < 64) {
            "a WebM file"
        } else {
            "a Matroska file"
        };
        return Some(match matroska_codec(bytes) {
            Some(codec) => format!("{kind} with {codec} video"),
            None => kind.to_owned(),
        });
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" {
        return Some(match &bytes[8..12] {
            b"AVI " => "an AVI file".into(),
            b"WEBP" => "a WebP image".into(),
            _ => "a RIFF file".into(),
        });
    }
    if bytes.starts_with(b"GIF8") {
        return Some("a GIF image".into());
    }
    if bytes.starts_with(b"\x89PNG") {
        return Some("a PNG image".into());
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some("a JPEG image".into());
    }
    if bytes.starts_with(b"OggS") {
        return Some("an Ogg file".into());
    }
    if bytes.len() >= 189 && bytes[0] == 0x47 && bytes[188] == 0x47 {
        return Some("an MPEG transport stream".into());
    }
    if bytes.starts_with(&[0, 0, 0, 1]) || bytes.starts_with(&[0, 0, 1]) {
        return Some("a raw (Annex-B) H.264 or MPEG stream without a container".into());
    }
    None
}

/// The first video `CodecID` (EBML id 0x86, a short string starting "V_") in a Matroska/WebM file,
/// as a codec name. Scans the first megabyte instead of walking the EBML tree; the track headers
/// come before the clusters.
fn matroska_codec(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(1 << 20)];
    let mut i = 0;
    while i + 4 < head.len() {
        if head[i] == 0x86 && head[i + 1] & 0x80 != 0 {
            let len = (head[i + 1] & 0x7F) as usize;
            if let Some(id) = head.get(i + 2..i + 2 + len)
                && id.starts_with(b"V_")
            {
                let id = String::from_utf8_lossy(id).into_owned();
                return Some(match id.as_str() {
                    "V_VP9" => "VP9".into(),
                    "V_VP8" => "VP8".into(),
                    "V_AV1" => "AV1".into(),
                    "V_MPEG4/ISO/AVC" => "H.264".into(),
                    "V_MPEGH/ISO/HEVC" => "H.265/HEVC".into(),
                    _ => id,
                });
            }
        }
        i += 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A readable name for a non-H.264 MP4 sample entry.
fn codec_name(content: &StsdBoxContent) -> String {
    match content {
        StsdBoxContent::Avc1(_) => "H.264".into(),
        StsdBoxContent::Hvc1(_) | StsdBoxContent::Hev1(_) => "H.265/HEVC".into(),
        StsdBoxContent::Av01(_) => "AV1".into(),
        StsdBoxContent::Vp08(_) => "VP8".into(),
        StsdBoxContent::Vp09(_) => "VP9".into(),
        StsdBoxContent::Mp4a(_) => "AAC (audio)".into(),
        StsdBoxContent::Tx3g(_) => "tx3g (subtitles)".into(),
        StsdBoxContent::Unknown(fourcc) => {
            let cc = fourcc.to_string();
            let known = match cc.as_str() {
                "mp4v" => Some("MPEG-4 Part 2"),
                "avc3" | "avc2" | "avc4" => Some("H.264 with in-band parameter sets"),
                "apch" | "apcn" | "apcs" | "apco" | "ap4h" | "ap4x" => Some("Apple ProRes"),
                "mjpa" | "mjpb" | "jpeg" => Some("Motion JPEG"),
                "dvh1" | "dvhe" => Some("Dolby Vision"),
                "encv" => Some("encrypted video"),
                _ => None,
            };
            match known {
                Some(name) => format!("{name} ('{cc}')"),
                None => format!("'{cc}'"),
            }
        }
    }
}

fn profile_name(profile_idc: u8) -> &'static str {
    match profile_idc {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4 Predictive",
        44 => "CAVLC 4:4:4 Intra",
        83 | 86 => "Scalable (SVC)",
        118 | 128 | 134 | 135 | 138 | 139 => "Multiview/3D (MVC)",
        _ => "unknown",
    }
}

/// The SPS fields that decide whether OpenH264 can decode the stream, and the cropped size.
#[derive(Debug, Clone, PartialEq)]
struct Sps {
    profile_idc: u8,
    chroma_format_idc: u32,
    bit_depth_luma: u32,
    bit_depth_chroma: u32,
    frame_mbs_only: bool,
    width: u32,
    height: u32,
}

impl Sps {
    /// Parses an SPS NAL unit (with its one-byte header), ITU-T H.264 §7.3.2.1.1.
    fn parse(nal: &[u8]) -> Option<Self> {
        if nal.len() < 4 || nal[0] & 0x1F != 7 {
            return None;
        }
        // Drop emulation-prevention bytes (00 00 03 -> 00 00).
        let mut rbsp = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in &nal[1..] {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            rbsp.push(b);
        }
        let mut r = BitReader {
            data: &rbsp,
            pos: 0,
        };
        let profile_idc = r.bits(8)? as u8;
        r.bits(8)?; // constraint_set flags + reserved
        r.bits(8)?; // level_idc
        r.ue()?; // seq_parameter_set_id
        let (mut chroma_format_idc, mut bit_depth_luma, mut bit_depth_chroma) = (1, 8, 8);
        let mut separate_colour_plane = false;
        if matches!(
            profile_idc,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        ) {
            chroma_format_idc = r.ue()?;
            if chroma_format_idc == 3 {
                separate_colour_plane = r.bit()?;
            }
            bit_depth_luma = r.ue()? + 8;
            bit_depth_chroma = r.ue()? + 8;
            r.bit()?; // qpprime_y_zero_transform_bypass_flag
            if r.bit()? {
                // seq_scaling_matrix_present_flag
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.bit()? {
                        let size = if i < 6 { 16 } else { 64 };
                        let (mut last, mut next) = (8i64, 8i64);
                        for _ in 0..size {
                            if next != 0 {
                                next = (last + r.se()? + 256) % 256;
                            }
                            last = if next == 0 { last } else { next };
                        }
                    }
                }
            }
        }
        r.ue()?; // log2_max_frame_num_minus4
        match r.ue()? {
            0 => {
                r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
            }
            1 => {
                r.bit()?; // delta_pic_order_always_zero_flag
                r.se()?; // offset_for_non_ref_pic
                r.se()?; // offset_for_top_to_bottom_field
                let n = r.ue()?;
                if n > 255 {
                    return None;
                }
                for _ in 0..n {
                    r.se()?;
                }
            }
            _ => {}
        }
        r.ue()?; // max_num_ref_frames
        r.bit()?; // gaps_in_frame_num_value_allowed_flag
        let width_mbs = r.ue()?.checked_add(1)?;
        let height_map_units = r.ue()?.checked_add(1)?;
        let frame_mbs_only = r.bit()?;
        if !frame_mbs_only {
            r.bit()?; // mb_adaptive_frame_field_flag
        }
        r.bit()?; // direct_8x8_inference_flag
        let height_mbs = height_map_units.checked_mul(if frame_mbs_only { 1 } else { 2 })?;
        let mut width = width_mbs.checked_mul(16)?;
        let mut height = height_mbs.checked_mul(16)?;
        if r.bit()? {
            // frame_cropping_flag
            let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
            let chroma_array_type = if separate_colour_plane {
                0
            } else {
                chroma_format_idc
            };
            let (sub_w, sub_h) = match chroma_array_type {
                1 => (2, 2),
                2 => (2, 1),
                _ => (1, 1),
            };
            let crop_x = if chroma_array_type == 0 { 1 } else { sub_w };
            let crop_y = (if chroma_array_type == 0 { 1 } else { sub_h })
                * if frame_mbs_only { 1 } else { 2 };
            width = width.checked_sub(crop_x * left.checked_add(right)?)?;
            height = height.checked_sub(crop_y * top.checked_add(bottom)?)?;
        }
        Some(Self {
            profile_idc,
            chroma_format_idc,
            bit_depth_luma,
            bit_depth_chroma,
            frame_mbs_only,
            width,
            height,
        })
    }
}

/// MSB-first bit reader with Exp-Golomb codes.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b == 1)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()? as u32;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        ((1u64 << zeros) - 1 + rest as u64).try_into().ok()
    }

    fn se(&mut self) -> Option<i64> {
        let k = self.ue()? as i64;
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes() {
        // 1 | 010 | 011 | 00100 | 00101 -> ue 0, 1, 2, 3, se(4) = -2
        let data = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader {
            data: &data,
            pos: 0,
        };
        assert_eq!(r.ue(), Some(0));
        assert_eq!(r.ue(), Some(1));
        assert_eq!(r.ue(), Some(2));
        assert_eq!(r.ue(), Some(3));
        assert_eq!(r.se(), Some(-2));
    }

    #[test]
    fn webm_codec_is_named() {
        let mut webm = vec![0x1A, 0x45, 0xDF, 0xA3, 0x42, 0x82, 0x84];
        webm.extend_from_slice(b"webm");
        webm.extend_from_slice(&[0xAE, 0x90, 0x86, 0x85]);
        webm.extend_from_slice(b"V_VP9");
        assert_eq!(
            sniff_non_mp4(&webm).as_deref(),
            Some("a WebM file with VP9 video")
        );
    }
}

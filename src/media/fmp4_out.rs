//! Fragmented MP4 (ISO/IEC 14496-12 §8.8; ISO BMFF byte stream format of Media Source
//! Extensions) written as it is made: an initialization segment (`ftyp` + `moov` with `mvex`)
//! before the first fragment, then one `moof` + `mdat` fragment per pushed chunk. Every byte is
//! written to `W` (stdout for `omni generate -o -`, a channel for the server's streamed
//! `GET /v1/videos/{id}/content?stream=true`) as soon as the chunk is encoded, so a reader can
//! play the first chunk while the next is still being denoised.
//!
//! Boxes are written by `muxide` 0.5's [`FragmentedMuxer`] (`tfhd` with default-base-is-moof,
//! `tfdt` base decode times, per-sample durations, sizes and sync flags in `trun`). Tried first
//! and not used: the `mp4` 0.14 crate (already a dependency for the fast-start file) keeps its
//! fragment boxes in private modules (only `MoofBox` is exported), its `TrafBox::get_size`
//! leaves out `tfdt`, and `MvexBox` reports the box type `mdia`, so it writes wrong sizes and
//! types; `mp4-atom` 0.17 has correct typed atoms but leaves the whole `moov` tree (`mvhd`,
//! `tkhd`, `mdia`, empty sample tables, `avc1`/`avcC`, `mvex`) to the caller, which muxide
//! builds in one call from the SPS/PPS.
//!
//! Frames are encoded by the same [`H264Encoder`] settings as the fast-start file, so the
//! samples are bit-identical to [`Mp4Writer`](super::mp4_out::Mp4Writer)'s for the same frames.

use std::io::Write;

use muxide::fragmented::{FragmentConfig, FragmentedMuxer};

use super::h264_encode::{H264Encoder, check_video};
use super::mp4_out::{EncodeOptions, Mp4Error, frame_f32_to_rgb8};

/// Media timescale preferred for video, ticks per second (the MPEG 90 kHz clock).
const PREFERRED_TIMESCALE: u32 = 90_000;

/// What [`Fmp4Writer::finish`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Fmp4Summary {
    /// Frames in the stream.
    pub frames: usize,
    /// `moof` + `mdat` fragments written.
    pub fragments: usize,
    /// Bytes written to the output, init segment included.
    pub bytes: u64,
    /// Playback duration, seconds (`frames / fps`).
    pub duration_s: f64,
}

/// Streaming fragmented-MP4 writer over any [`Write`]; see the module docs.
pub struct Fmp4Writer<W: Write> {
    out: W,
    width: u32,
    height: u32,
    fps: u32,
    timescale: u32,
    encoder: H264Encoder,
    /// Created at the first frame, once SPS/PPS are known.
    muxer: Option<FragmentedMuxer>,
    /// Frames queued for the next fragment.
    pending: usize,
    /// Reused RGB8 buffer for [`push_frames_f32`](Self::push_frames_f32).
    rgb_scratch: Vec<u8>,
    frames: usize,
    fragments: usize,
    bytes: u64,
    poisoned: Option<String>,
}

impl<W: Write> std::fmt::Debug for Fmp4Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fmp4Writer")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .field("frames", &self.frames)
            .field("fragments", &self.fragments)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Fmp4Writer<W> {
    /// Starts a stream of `width`x`height` pixels (both even) at `fps` frames/s into `out`.
    /// Nothing is written before the first fragment.
    ///
    /// # Errors
    /// The size, frame-rate and option errors of [`Mp4Error`]; [`Mp4Error::Encode`].
    pub fn new(
        out: W,
        width: u32,
        height: u32,
        fps: u32,
        opts: EncodeOptions,
    ) -> Result<Self, Mp4Error> {
        check_video(width, height, fps, &opts)?;
        let encoder = H264Encoder::new(width, height, fps, opts)?;
        // A whole number of ticks per frame, so that durations and decode times are exact.
        let timescale = if PREFERRED_TIMESCALE.is_multiple_of(fps) {
            PREFERRED_TIMESCALE
        } else {
            fps * 1000
        };
        Ok(Self {
            out,
            width,
            height,
            fps,
            timescale,
            encoder,
            muxer: None,
            pending: 0,
            rgb_scratch: Vec::new(),
            frames: 0,
            fragments: 0,
            bytes: 0,
            poisoned: None,
        })
    }

    /// Queues one RGB8 frame, row-major `[H, W, 3]` (`width * height * 3` bytes), for the next
    /// fragment.
    ///
    /// # Errors
    /// [`Mp4Error::FrameLength`] (the writer stays usable); an encode error poisons it.
    pub fn push_rgb(&mut self, rgb: &[u8]) -> Result<(), Mp4Error> {
        self.check_poison()?;
        let expected = self.frame_len();
        if rgb.len() != expected {
            return Err(self.length_error(rgb.len(), false));
        }
        let result = self.encode_and_queue(rgb);
        self.poison_on(result)
    }

    /// Encodes frames given as floats in `[0, 1]`, layout `[F, H, W, 3]`, converted with
    /// [`frame_f32_to_rgb8`], and writes them as one fragment.
    ///
    /// # Errors
    /// As [`push_rgb`](Self::push_rgb) and [`flush_fragment`](Self::flush_fragment).
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
        result?;
        self.flush_fragment()
    }

    /// Writes the queued frames as one `moof` + `mdat` fragment (preceded, the first time, by
    /// the initialization segment) and flushes the output. Nothing happens when no frame is
    /// queued.
    ///
    /// # Errors
    /// [`Mp4Error::Stream`] when the output cannot be written (the writer is then poisoned).
    pub fn flush_fragment(&mut self) -> Result<(), Mp4Error> {
        self.check_poison()?;
        if self.pending == 0 {
            return Ok(());
        }
        let result = self.write_fragment();
        self.poison_on(result)
    }

    /// Writes any queued frames and returns the output.
    ///
    /// # Errors
    /// [`Mp4Error::NoFrames`] when no frame was ever pushed; as
    /// [`flush_fragment`](Self::flush_fragment).
    pub fn finish(mut self) -> Result<(W, Fmp4Summary), Mp4Error> {
        self.flush_fragment()?;
        if self.frames == 0 {
            return Err(Mp4Error::NoFrames);
        }
        let summary = Fmp4Summary {
            frames: self.frames,
            fragments: self.fragments,
            bytes: self.bytes,
            duration_s: self.frames as f64 / self.fps as f64,
        };
        Ok((self.out, summary))
    }

    /// Frames encoded so far (queued or written).
    pub fn frames(&self) -> usize {
        self.frames
    }

    fn check_poison(&self) -> Result<(), Mp4Error> {
        match &self.poisoned {
            Some(msg) => Err(Mp4Error::Poisoned(msg.clone())),
            None => Ok(()),
        }
    }

    fn poison_on(&mut self, result: Result<(), Mp4Error>) -> Result<(), Mp4Error> {
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
        }
        result
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

    fn encode_and_queue(&mut self, rgb: &[u8]) -> Result<(), Mp4Error> {
        let encoded = self.encoder.encode(rgb)?;
        if self.muxer.is_none() {
            let (sps, pps) = self
                .encoder
                .parameter_sets()
                .expect("known after the first frame");
            let mut config = FragmentConfig::new(self.width, self.height, self.timescale);
            config.sps = sps.to_vec();
            config.pps = pps.to_vec();
            let muxer = FragmentedMuxer::new(config).map_err(|e| Mp4Error::Encode {
                frame: 0,
                message: format!("starting the fragmented MP4: {e}"),
            })?;
            self.muxer = Some(muxer);
        }
        let muxer = self.muxer.as_mut().expect("started above");
        let t = self.frames as u64 * (self.timescale / self.fps) as u64;
        muxer
            .write_video(t, t, &encoded.avcc, encoded.is_sync)
            .map_err(|e| Mp4Error::Encode {
                frame: self.frames,
                message: format!("queueing the sample: {e}"),
            })?;
        self.frames += 1;
        self.pending += 1;
        Ok(())
    }

    fn write_fragment(&mut self) -> Result<(), Mp4Error> {
        let muxer = self.muxer.as_mut().expect("a frame is queued");
        if self.fragments == 0 {
            let init = muxer.init_segment();
            self.out.write_all(&init).map_err(Mp4Error::Stream)?;
            self.bytes += init.len() as u64;
        }
        let fragment = muxer
            .flush_segment()
            .expect("flush_segment returns the queued frames");
        self.out.write_all(&fragment).map_err(Mp4Error::Stream)?;
        self.out.flush().map_err(Mp4Error::Stream)?;
        self.bytes += fragment.len() as u64;
        self.fragments += 1;
        self.pending = 0;
        Ok(())
    }
}

/// One fragment per decoded chunk (float `[0, 1]` → u8 as diffusers' `export_to_video`).
impl<W: Write> crate::pipeline::pipelines::pipeline_output::FrameSink for Fmp4Writer<W> {
    fn push_frames(
        &mut self,
        frames: crate::pipeline::pipelines::pipeline_output::VideoFrames,
    ) -> Result<(), String> {
        self.push_frames_f32(&frames.data)
            .map_err(|e| e.to_string())
    }
}

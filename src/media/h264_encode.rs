//! RGB8 frames → H.264 access units in AVCC form (4-byte NAL lengths), the part the two MP4
//! writers share: [`Mp4Writer`](super::mp4_out::Mp4Writer) (fast-start file) and
//! [`Fmp4Writer`](super::fmp4_out::Fmp4Writer) (fragmented, streamed).
//!
//! Encoder settings that matter (OpenH264's defaults silently drop frames): frame skipping off,
//! bitrate rate control with an explicit target, `max_frame_rate = fps`, an IDR every `2 * fps`
//! frames, and BT.601 VUI so players use the matrix the RGB->YUV conversion used (see
//! `shared/reference/video-io.md` §1).

use openh264::OpenH264API;
use openh264::Timestamp;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode,
    VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};

use super::mp4_out::{
    BITRATE_RANGE_BPS, EncodeOptions, MAX_FPS, MAX_LONG_SIDE, MAX_SHORT_SIDE, Mp4Error,
    default_bitrate_bps,
};

/// One encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The access unit as one MP4 sample: NAL units each prefixed by its 4-byte big-endian
    /// length, without the SPS/PPS that [`H264Encoder::parameter_sets`] returns.
    pub avcc: Vec<u8>,
    /// Whether it holds an IDR picture (an MP4 sync sample).
    pub is_sync: bool,
}

/// OpenH264 (Constrained Baseline) with the settings above, one frame at a time.
pub struct H264Encoder {
    width: u32,
    height: u32,
    fps: u32,
    encoder: Encoder,
    /// Reused YUV 4:2:0 buffer, `width * height * 3 / 2` bytes.
    yuv: YUVBuffer,
    /// SPS and PPS of the first frame (no start code), once it is encoded.
    parameter_sets: Option<(Vec<u8>, Vec<u8>)>,
    frames: usize,
}

impl std::fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Encoder")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Checks the size, frame rate and options of a video before anything is created.
///
/// # Errors
/// [`Mp4Error::InvalidSize`], [`Mp4Error::InvalidFps`], [`Mp4Error::InvalidBitrate`],
/// [`Mp4Error::InvalidKeyframeInterval`].
pub fn check_video(
    width: u32,
    height: u32,
    fps: u32,
    opts: &EncodeOptions,
) -> Result<(), Mp4Error> {
    check_size(width, height)?;
    if fps == 0 || fps > MAX_FPS {
        return Err(Mp4Error::InvalidFps { fps });
    }
    if let Some(bps) = opts.bitrate_bps
        && !BITRATE_RANGE_BPS.contains(&bps)
    {
        return Err(Mp4Error::InvalidBitrate { bps });
    }
    if opts.keyframe_interval == Some(0) {
        return Err(Mp4Error::InvalidKeyframeInterval);
    }
    Ok(())
}

impl H264Encoder {
    /// An encoder for `width`x`height` pixels (both even) at `fps` frames/s.
    ///
    /// # Errors
    /// As [`check_video`]; [`Mp4Error::Encode`] when OpenH264 cannot be set up.
    pub fn new(width: u32, height: u32, fps: u32, opts: EncodeOptions) -> Result<Self, Mp4Error> {
        check_video(width, height, fps, &opts)?;
        let bitrate = opts
            .bitrate_bps
            .unwrap_or_else(|| default_bitrate_bps(width, height, fps));
        let keyframe_interval = opts.keyframe_interval.unwrap_or(2 * fps);
        let config = EncoderConfig::new()
            .skip_frames(false)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(bitrate))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .intra_frame_period(IntraFramePeriod::from_num_frames(keyframe_interval))
            .complexity(opts.complexity.to_openh264())
            .num_threads(1)
            .vui(VuiConfig::bt601())
            .debug(false);
        let mut encoder =
            Encoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| {
                Mp4Error::Encode {
                    frame: 0,
                    message: format!("creating the encoder: {e}"),
                }
            })?;
        silence_encoder_log(&mut encoder);
        Ok(Self {
            width,
            height,
            fps,
            encoder,
            yuv: YUVBuffer::new(width as usize, height as usize),
            parameter_sets: None,
            frames: 0,
        })
    }

    /// SPS and PPS (NAL units without start code) for the `avcC` box; `None` before the first
    /// frame.
    pub fn parameter_sets(&self) -> Option<(&[u8], &[u8])> {
        self.parameter_sets
            .as_ref()
            .map(|(s, p)| (s.as_slice(), p.as_slice()))
    }

    /// Frames encoded so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Encodes one RGB8 frame, row-major `[H, W, 3]` (`width * height * 3` bytes; the caller
    /// checks the length).
    ///
    /// Parameter sets repeated at every IDR are dropped when identical to the first frame's (they
    /// are in `avcC`); a changed one (not expected) stays in-band so decoders still see it.
    ///
    /// # Errors
    /// [`Mp4Error::Encode`], or [`Mp4Error::SkippedFrame`] when OpenH264 produced no picture.
    pub fn encode(&mut self, rgb: &[u8]) -> Result<EncodedFrame, Mp4Error> {
        let frame = self.frames;
        let (w, h) = (self.width as usize, self.height as usize);
        self.yuv.read_rgb8(RgbSliceU8::new(rgb, (w, h)));
        let millis = frame as u64 * 1000 / self.fps as u64;
        let bitstream = self
            .encoder
            .encode_at(&self.yuv, Timestamp::from_millis(millis))
            .map_err(|e| Mp4Error::Encode {
                frame,
                message: e.to_string(),
            })?;
        let frame_type = bitstream.frame_type();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Err(Mp4Error::SkippedFrame {
                frame,
                frame_type: format!("{frame_type:?}"),
            });
        }

        // Annex-B NAL units -> one AVCC sample (4-byte big-endian lengths).
        let mut sample = Vec::new();
        let mut sps = None;
        let mut pps = None;
        let mut is_sync = false;
        let first = self.parameter_sets.is_none();
        for l in 0..bitstream.num_layers() {
            let layer = bitstream.layer(l).expect("layer index in range");
            for n in 0..layer.nal_count() {
                let nal = strip_start_code(layer.nal_unit(n).expect("NAL index in range"));
                let Some(&header) = nal.first() else { continue };
                let known = self.parameter_sets.as_ref();
                match header & 0x1f {
                    7 if sps.is_none() && first => sps = Some(nal.to_vec()),
                    8 if pps.is_none() && first => pps = Some(nal.to_vec()),
                    7 if known.is_some_and(|(s, _)| s == nal) => {}
                    8 if known.is_some_and(|(_, p)| p == nal) => {}
                    t => {
                        is_sync |= t == 5;
                        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        sample.extend_from_slice(nal);
                    }
                }
            }
        }
        if sample.is_empty() {
            return Err(Mp4Error::SkippedFrame {
                frame,
                frame_type: format!("{frame_type:?} without picture data"),
            });
        }
        if first {
            let (Some(sps), Some(pps)) = (sps, pps) else {
                return Err(Mp4Error::Encode {
                    frame,
                    message: "the first encoded frame carries no SPS/PPS".into(),
                });
            };
            self.parameter_sets = Some((sps, pps));
        }
        self.frames += 1;
        Ok(EncodedFrame {
            avcc: sample,
            is_sync,
        })
    }
}

/// Sets OpenH264's trace level to quiet *before* its lazy initialisation at the first frame.
///
/// The `openh264` crate applies `.debug(false)` only after `InitializeExt`, which itself logs
/// "bEnableFrameSkip = 0, bitrate can't be controlled ..." to stderr at warning level (harmless:
/// the measured bitrate stays on target). A library must not print, and OpenH264 accepts this
/// one option before initialisation (`CWelsH264SVCEncoder::SetOption`).
fn silence_encoder_log(encoder: &mut Encoder) {
    let mut level: std::ffi::c_int = openh264_sys2::WELS_LOG_QUIET as std::ffi::c_int;
    // SAFETY: TRACE_LEVEL reads one int through the pointer, which outlives the call; it changes
    // only logging, none of the parameters the crate relies on. A failure only leaves logging on.
    unsafe {
        let _ = encoder.raw_api().set_option(
            openh264_sys2::ENCODER_OPTION_TRACE_LEVEL,
            (&raw mut level).cast::<std::ffi::c_void>(),
        );
    }
}

fn check_size(width: u32, height: u32) -> Result<(), Mp4Error> {
    let err = |reason| {
        Err(Mp4Error::InvalidSize {
            width,
            height,
            reason,
        })
    };
    if width == 0 || height == 0 {
        return err("zero size");
    }
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return err("odd width or height");
    }
    if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
        return err("too large for the H.264 encoder");
    }
    Ok(())
}

/// Strips a leading Annex-B start code (`00 00 01` or `00 00 00 01`).
fn strip_start_code(nal: &[u8]) -> &[u8] {
    if let Some(rest) = nal.strip_prefix(&[0, 0, 0, 1]) {
        rest
    } else if let Some(rest) = nal.strip_prefix(&[0, 0, 1]) {
        rest
    } else {
        nal
    }
}

//! Reference images for image-to-video: PNG, JPEG or WebP in, RGB8 out, then the `[-1, 1]`
//! video tensor the VAE encoder takes.
//!
//! Mirrors what diffusers does before `HeliosPyramidPipeline.prepare_image_latents`:
//! `diffusers.utils.load_image` (`PIL.ImageOps.exif_transpose`, then `.convert("RGB")`), then
//! `VideoProcessor.preprocess(image, height, width)` (`image_processor.py`
//! `VaeImageProcessor`, default config: `resize_mode="default"`, `resample="lanczos"`,
//! `reducing_gap=None`, `do_normalize=True`, `do_convert_rgb=False`):
//! 1. `PIL.Image.resize((width, height), LANCZOS)`: a plain stretch to the output size, aspect
//!    ratio *not* kept, no crop, no padding;
//! 2. `np.array(image).astype(np.float32) / 255.0`;
//! 3. `2.0 * x - 1.0`.
//!
//! Deliberate divergences:
//! - The resize is `image::imageops::resize` with `FilterType::Lanczos3`: the same kernel
//!   (`sinc(x) * sinc(x / 3)`, support 3 widened by the downscale ratio, weights normalised, pixel
//!   centres at `i + 0.5`) as PIL's `LANCZOS`, but computed in `f32` with the vertical pass first,
//!   where PIL uses 22-bit fixed-point weights, the horizontal pass first and rounds the
//!   intermediate to 8 bits. Results differ by a few 8-bit levels at most, on sharp edges; an
//!   image already at the output size is copied unchanged by both.
//! - Alpha is dropped, not composited (PIL's `convert("RGB")` does the same); 16-bit images are
//!   scaled to 8 bits (PIL truncates some 16-bit modes differently).
//! - Animated WebP: the first frame is used.
//!
//! Safety: the format is sniffed from the content ([`ImageReader::with_guessed_format`]), not
//! taken from the file name; decoding runs under [`image::Limits`] ([`MAX_IMAGE_SIDE`] per side,
//! [`MAX_DECODE_ALLOC_BYTES`] of allocations) against decompression bombs, and files above
//! [`MAX_IMAGE_FILE_BYTES`] are refused before decoding.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

pub use image::RgbImage;

/// Formats accepted for reference images, as printed in error messages.
pub const SUPPORTED_IMAGE_FORMATS: &str = "PNG, JPEG, WebP";
/// Largest accepted image width or height, pixels (decoder limit, checked before allocating).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most memory the image decoder may allocate at once, bytes.
pub const MAX_DECODE_ALLOC_BYTES: u64 = 512 * 1024 * 1024;
/// Largest accepted image file, bytes.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Errors from reading reference images ([`load_image`]) and videos
/// ([`crate::media::video_in::read_video`]). Each message is one line that names the input.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The file could not be read.
    #[error("cannot read {name}: {source}")]
    Io {
        /// The input, as named in messages (a path, or e.g. "uploaded image").
        name: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The input is larger than the accepted maximum.
    #[error("{name} is too large: {size} bytes (at most {max} bytes are accepted)")]
    FileTooLarge {
        /// The input, as named in messages.
        name: String,
        /// Its size, bytes.
        size: u64,
        /// The limit, bytes.
        max: u64,
    },
    /// Not an image in a supported format, or a corrupt one.
    #[error("cannot decode image {name}: {reason} (supported formats: {SUPPORTED_IMAGE_FORMATS})")]
    UndecodableImage {
        /// The input, as named in messages.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The image or video is wider or taller than accepted.
    #[error("{name} is {width}x{height} pixels: at most {max} pixels per side are accepted")]
    DimensionsTooLarge {
        /// The input, as named in messages.
        name: String,
        /// Its width, pixels.
        width: u32,
        /// Its height, pixels.
        height: u32,
        /// The limit, pixels.
        max: u32,
    },
    /// A requested output size of zero.
    #[error("invalid target size {width}x{height}: width and height must be non-zero")]
    InvalidTargetSize {
        /// Requested width, pixels.
        width: u32,
        /// Requested height, pixels.
        height: u32,
    },
    /// Not an MP4 file (the detected container is named where known).
    #[error(
        "cannot read video {name}: {detail}; only H.264 video in an MP4 file is supported \
         (convert with `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`)"
    )]
    NotMp4 {
        /// The input, as named in messages.
        name: String,
        /// What the file is, or what is wrong with it.
        detail: String,
    },
    /// An MP4 file without a video track.
    #[error("video {name} has no video track")]
    NoVideoTrack {
        /// The input, as named in messages.
        name: String,
    },
    /// A video codec other than H.264.
    #[error(
        "video {name} uses the {codec} codec: only H.264 (AVC) is supported \
         (convert with `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`)"
    )]
    UnsupportedCodec {
        /// The input, as named in messages.
        name: String,
        /// The codec, e.g. "VP9", "H.265/HEVC".
        codec: String,
    },
    /// An H.264 flavour the decoder cannot handle (4:4:4, 4:2:2, more than 8 bits, interlaced).
    #[error(
        "video {name} is H.264 {detail}, which is not supported: only 8-bit 4:2:0 progressive \
         H.264 is (convert with `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`)"
    )]
    UnsupportedProfile {
        /// The input, as named in messages.
        name: String,
        /// The offending property, e.g. "High 4:4:4 Predictive profile (profile_idc 244)".
        detail: String,
    },
    /// No frame in the video.
    #[error("video {name} has no frames: a video shorter than one frame cannot be used")]
    NoFrames {
        /// The input, as named in messages.
        name: String,
    },
    /// More frames than the caller accepts.
    #[error("video {name} has {frames} frames: at most {max} frames are accepted")]
    TooManyFrames {
        /// The input, as named in messages.
        name: String,
        /// Frames in the video.
        frames: usize,
        /// The limit.
        max: usize,
    },
    /// The H.264 bitstream or the MP4 sample table is corrupt.
    #[error("cannot decode video {name}: {reason}")]
    CorruptVideo {
        /// The input, as named in messages.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// Reads and decodes the image at `path` (content-sniffed PNG, JPEG or WebP), applying its EXIF
/// orientation, and converts it to RGB8 (alpha dropped).
///
/// # Errors
/// [`MediaError::Io`], [`MediaError::FileTooLarge`], [`MediaError::UndecodableImage`] (not an
/// image, an unsupported format, a corrupt file) or [`MediaError::DimensionsTooLarge`].
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage, MediaError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let bytes = read_capped(path, &name, MAX_IMAGE_FILE_BYTES)?;
    decode_image(&bytes, &name)
}

/// [`load_image`] for an in-memory file, e.g. an upload; messages call it "uploaded image".
///
/// # Errors
/// As [`load_image`].
pub fn load_image_bytes(bytes: &[u8]) -> Result<RgbImage, MediaError> {
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(MediaError::FileTooLarge {
            name: "uploaded image".into(),
            size: bytes.len() as u64,
            max: MAX_IMAGE_FILE_BYTES,
        });
    }
    decode_image(bytes, "uploaded image")
}

/// The width and height an image file declares in its header, pixels, read without decoding
/// the pixels (cheap even for a decompression bomb); `None` when the bytes are not a PNG, JPEG
/// or WebP header this can read.
pub fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {
            reader.into_dimensions().ok()
        }
        _ => None,
    }
}

/// Resizes `img` to `width x height` as diffusers' `VaeImageProcessor.preprocess` does (see the
/// module docs: Lanczos stretch, no aspect-ratio preservation) and returns it as `f32` in
/// `[-1, 1]` (`2 * v / 255 - 1`).
///
/// # Shapes
/// Returns `[3, 1, height, width]` row-major (channel, frame, row, column): one frame of the
/// `[C, T, H, W]` video the VAE encoder takes, batch dimension left to the caller.
///
/// # Errors
/// [`MediaError::InvalidTargetSize`] if `width` or `height` is zero.
pub fn to_video_tensor_data(
    img: &RgbImage,
    width: u32,
    height: u32,
) -> Result<Vec<f32>, MediaError> {
    let resized = resize_rgb(img, width, height)?;
    Ok(rgb8_to_chw_f32(
        resized.as_raw(),
        width as usize,
        height as usize,
    ))
}

/// Resizes an RGB8 image to exactly `width x height` with Lanczos3 (the filter diffusers'
/// `VaeImageProcessor` uses; see the module docs for the divergence from PIL). An image already
/// at that size is returned unchanged.
///
/// # Errors
/// [`MediaError::InvalidTargetSize`] if `width` or `height` is zero.
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage, MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::InvalidTargetSize { width, height });
    }
    if img.dimensions() == (width, height) {
        return Ok(img.clone());
    }
    Ok(image::imageops::resize(
        img,
        width,
        height,
        FilterType::Lanczos3,
    ))
}

/// Converts interleaved RGB8 `[H, W, 3]` to planar `f32` `[3, H, W]` in `[-1, 1]`
/// (`np.float32(v) / 255 * 2 - 1`, as diffusers' `pil_to_numpy` then `normalize`).
///
/// # Panics
/// If `rgb.len() != width * height * 3`.
pub fn rgb8_to_chw_f32(rgb: &[u8], width: usize, height: usize) -> Vec<f32> {
    let plane = width * height;
    assert_eq!(
        rgb.len(),
        plane * 3,
        "RGB8 buffer does not match {width}x{height}"
    );
    let mut out = vec![0.0f32; plane * 3];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 / 255.0 * 2.0 - 1.0;
        g[i] = px[1] as f32 / 255.0 * 2.0 - 1.0;
        b[i] = px[2] as f32 / 255.0 * 2.0 - 1.0;
    }
    out
}

/// Reads a whole file, refusing files above `max` bytes before reading them.
pub(crate) fn read_capped(path: &Path, name: &str, max: u64) -> Result<Vec<u8>, MediaError> {
    let io_err = |source| MediaError::Io {
        name: name.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io_err)?.len();
    if size > max {
        return Err(MediaError::FileTooLarge {
            name: name.to_owned(),
            size,
            max,
        });
    }
    std::fs::read(path).map_err(io_err)
}

fn decode_image(bytes: &[u8], name: &str) -> Result<RgbImage, MediaError> {
    let undecodable = |reason: String| MediaError::UndecodableImage {
        name: name.to_owned(),
        reason,
    };
    if bytes.is_empty() {
        return Err(undecodable("the file is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(undecodable(format!(
                "{} images are not supported",
                other
                    .extensions_str()
                    .first()
                    .unwrap_or(&"this format")
                    .to_uppercase()
            )));
        }
        None => return Err(undecodable("not a recognised image format".into())),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| classify(e, name))?;
    let (width, height) = decoder.dimensions();
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(MediaError::DimensionsTooLarge {
            name: name.to_owned(),
            width,
            height,
            max: MAX_IMAGE_SIDE,
        });
    }
    // A missing or unreadable EXIF block means "no rotation", as PIL's `exif_transpose`.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, name))?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Maps an `image` error to [`MediaError`], keeping limit violations distinct.
fn classify(e: image::ImageError, name: &str) -> MediaError {
    MediaError::UndecodableImage {
        name: name.to_owned(),
        reason: match e {
            image::ImageError::Limits(l) => format!("exceeds the decoder limits ({l})"),
            other => other.to_string(),
        },
    }
}

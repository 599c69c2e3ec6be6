//! Lossless frame outputs for tools: one PNG per frame in a folder ([`PngDirWriter`], via the
//! `image` crate) or the whole video as a NumPy `uint8` array `[F, H, W, 3]` ([`NpyWriter`], via
//! `ndarray-npy`). Both receive exactly the bytes the H.264 encoder would: floats in `[0, 1]`
//! converted by [`frame_f32_to_rgb8`] (diffusers' `export_to_video` truncation), so frames can be
//! compared without a codec.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::mp4_out::frame_f32_to_rgb8;
use crate::pipeline::pipelines::pipeline_output::{FrameSink, VideoFrames};

/// Errors of the lossless writers.
#[derive(Debug, thiserror::Error)]
pub enum FramesError {
    /// A file or folder could not be written.
    #[error("cannot write {}: {action}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// PNG encoding failed.
    #[error("cannot write {}", path.display())]
    Png {
        /// The file.
        path: PathBuf,
        /// The `image` crate's error.
        #[source]
        source: image::ImageError,
    },
    /// Writing the `.npy` file failed.
    #[error("cannot write {}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// `ndarray-npy`'s error.
        #[source]
        source: ndarray_npy::WriteNpyError,
    },
    /// A chunk's frame size differs from the first chunk's.
    #[error("frame size changed from {0:?} to {1:?} (height, width)")]
    SizeChanged((usize, usize), (usize, usize)),
    /// `finish` was called before any frame was pushed.
    #[error("no frames were pushed")]
    NoFrames,
}

/// Converts one chunk to RGB8 bytes `[F, H, W, 3]`.
fn to_rgb8(frames: &VideoFrames) -> Vec<u8> {
    let mut rgb = vec![0u8; frames.data.len()];
    frame_f32_to_rgb8(&frames.data, &mut rgb);
    rgb
}

/// Writes `frame_{index:05}.png` files into a folder as chunks arrive.
#[derive(Debug)]
pub struct PngDirWriter {
    dir: PathBuf,
    frames: usize,
}

impl PngDirWriter {
    /// Creates `dir` (and its parents) when missing.
    ///
    /// # Errors
    /// [`FramesError::Io`] when the folder cannot be created.
    pub fn create(dir: &Path) -> Result<Self, FramesError> {
        fs::create_dir_all(dir).map_err(|source| FramesError::Io {
            path: dir.to_path_buf(),
            action: "creating the folder",
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            frames: 0,
        })
    }

    /// The path of frame `index` (0-based).
    pub fn frame_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("frame_{index:05}.png"))
    }

    /// Writes one chunk, `[F, H, W, 3]` floats in `[0, 1]`.
    ///
    /// # Errors
    /// [`FramesError::Png`] naming the file.
    pub fn push(&mut self, frames: &VideoFrames) -> Result<(), FramesError> {
        let rgb = to_rgb8(frames);
        let len = frames.height * frames.width * 3;
        for frame in rgb.chunks_exact(len.max(1)) {
            let path = self.frame_path(self.frames);
            image::save_buffer_with_format(
                &path,
                frame,
                frames.width as u32,
                frames.height as u32,
                image::ExtendedColorType::Rgb8,
                image::ImageFormat::Png,
            )
            .map_err(|source| FramesError::Png {
                path: path.clone(),
                source,
            })?;
            self.frames += 1;
        }
        Ok(())
    }

    /// Frames written.
    pub fn frames(&self) -> usize {
        self.frames
    }
}

impl FrameSink for PngDirWriter {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        self.push(&frames).map_err(|e| e.to_string())
    }
}

/// Collects RGB8 frames and writes them as one `.npy` file at [`finish`](Self::finish)
/// (the frame count is in the header, so the file is written once the video is complete:
/// to a temporary file next to the target, then renamed).
#[derive(Debug)]
pub struct NpyWriter {
    path: PathBuf,
    /// `(height, width)` of the first chunk.
    size: Option<(usize, usize)>,
    rgb: Vec<u8>,
    frames: usize,
}

impl NpyWriter {
    /// A writer for `path`; nothing is created before [`finish`](Self::finish).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            size: None,
            rgb: Vec::new(),
            frames: 0,
        }
    }

    /// Appends one chunk, `[F, H, W, 3]` floats in `[0, 1]`.
    ///
    /// # Errors
    /// [`FramesError::SizeChanged`] when the frame size differs from the first chunk's.
    pub fn push(&mut self, frames: &VideoFrames) -> Result<(), FramesError> {
        let size = (frames.height, frames.width);
        match self.size {
            Some(s) if s != size => return Err(FramesError::SizeChanged(s, size)),
            _ => self.size = Some(size),
        }
        self.rgb.extend_from_slice(&to_rgb8(frames));
        self.frames += frames.frames;
        Ok(())
    }

    /// Writes the `uint8` array `[F, H, W, 3]`; returns the number of frames.
    ///
    /// # Errors
    /// [`FramesError::NoFrames`], [`FramesError::Npy`], [`FramesError::Io`].
    pub fn finish(self) -> Result<usize, FramesError> {
        let Some((h, w)) = self.size else {
            return Err(FramesError::NoFrames);
        };
        let array = ndarray::Array4::from_shape_vec((self.frames, h, w, 3), self.rgb)
            .expect("frames * height * width * 3 bytes were collected");
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = self
            .path
            .with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let npy_err = |source| FramesError::Npy {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = ndarray_npy::write_npy(&temp, &array) {
            let _ = fs::remove_file(&temp);
            return Err(npy_err(e));
        }
        fs::rename(&temp, &self.path).map_err(|source| {
            let _ = fs::remove_file(&temp);
            FramesError::Io {
                path: self.path.clone(),
                action: "renaming the temporary file",
                source,
            }
        })?;
        Ok(self.frames)
    }
}

impl FrameSink for NpyWriter {
    fn push_frames(&mut self, frames: VideoFrames) -> Result<(), String> {
        self.push(&frames).map_err(|e| e.to_string())
    }
}

//! Still images made from the frames on their way to the MP4: the `thumbnail` (WebP, the middle
//! frame), the `spritesheet` (JPEG grid of evenly spaced frames) and, for image jobs, the first
//! frame as PNG.
//!
//! Spritesheet grid: [`SPRITE_FRAMES`] frames (fewer when the video is shorter) at indices
//! `round(i·(n−1)/(k−1))`, first and last included, laid out left to right then top to bottom in
//! rows of [`SPRITE_COLUMNS`]; each tile is the frame scaled to at most [`SPRITE_TILE_WIDTH`]
//! pixels wide (aspect kept, never enlarged). Unused cells of the last row are black.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, RgbImage, imageops};

use crate::media::mp4_out::frame_f32_to_rgb8;
use crate::pipeline::pipelines::pipeline_helios_pyramid::VideoFrames;

/// Frames in a spritesheet (at most).
pub const SPRITE_FRAMES: usize = 10;
/// Tiles per spritesheet row.
pub const SPRITE_COLUMNS: usize = 5;
/// Widest tile, pixels.
pub const SPRITE_TILE_WIDTH: u32 = 256;

/// Keeps the frames the previews need while the video streams past.
pub struct PreviewCollector {
    width: u32,
    height: u32,
    total: usize,
    seen: usize,
    /// Global frame index → the frame, for the indices wanted.
    kept: BTreeMap<usize, RgbImage>,
    wanted: Vec<usize>,
}

impl PreviewCollector {
    /// For a video of `total` frames of `width`x`height`.
    pub fn new(width: u32, height: u32, total: usize) -> Self {
        let mut wanted = sprite_indices(total);
        wanted.push(0);
        wanted.push(total / 2);
        wanted.sort_unstable();
        wanted.dedup();
        Self {
            width,
            height,
            total,
            seen: 0,
            kept: BTreeMap::new(),
            wanted,
        }
    }

    /// Look at the next chunk of frames (`[F, H, W, 3]` floats in `[0, 1]`).
    pub fn push(&mut self, frames: &VideoFrames) {
        let len = frames.height * frames.width * 3;
        if frames.width as u32 != self.width || frames.height as u32 != self.height || len == 0 {
            return;
        }
        for f in 0..frames.frames {
            let idx = self.seen + f;
            if self.wanted.binary_search(&idx).is_ok() {
                let mut rgb = vec![0u8; len];
                frame_f32_to_rgb8(&frames.data[f * len..(f + 1) * len], &mut rgb);
                if let Some(img) = RgbImage::from_raw(self.width, self.height, rgb) {
                    self.kept.insert(idx, img);
                }
            }
        }
        self.seen += frames.frames;
    }

    fn frame(&self, idx: usize) -> Option<&RgbImage> {
        self.kept
            .get(&idx)
            .or_else(|| self.kept.range(..=idx).next_back().map(|(_, v)| v))
            .or_else(|| self.kept.values().next())
    }

    /// Write `thumbnail` (WebP) and `spritesheet` (JPEG), and `first_png` when given.
    ///
    /// # Errors
    /// No frame was seen, or a file could not be encoded or written.
    pub fn write(
        &self,
        thumbnail: &Path,
        spritesheet: &Path,
        first_png: Option<&Path>,
    ) -> Result<(), String> {
        let total = self.total.min(self.seen).max(1);
        let thumb = self.frame(total / 2).ok_or("no frames were generated")?;
        save(thumb, thumbnail, ImageFormat::WebP)?;
        save(&self.sheet(total), spritesheet, ImageFormat::Jpeg)?;
        if let Some(png) = first_png {
            save(self.frame(0).ok_or("no frames")?, png, ImageFormat::Png)?;
        }
        Ok(())
    }

    fn sheet(&self, total: usize) -> RgbImage {
        let idx = sprite_indices(total);
        let scale = (SPRITE_TILE_WIDTH as f64 / self.width as f64).min(1.0);
        let tw = ((self.width as f64 * scale).round() as u32).max(1);
        let th = ((self.height as f64 * scale).round() as u32).max(1);
        let cols = idx.len().clamp(1, SPRITE_COLUMNS);
        let rows = idx.len().div_ceil(cols).max(1);
        let mut sheet = RgbImage::new(tw * cols as u32, th * rows as u32);
        for (n, i) in idx.iter().enumerate() {
            let Some(f) = self.frame(*i) else { continue };
            let tile = if scale < 1.0 {
                imageops::resize(f, tw, th, imageops::FilterType::Triangle)
            } else {
                f.clone()
            };
            let (x, y) = ((n % cols) as u32 * tw, (n / cols) as u32 * th);
            imageops::replace(&mut sheet, &tile, x as i64, y as i64);
        }
        sheet
    }
}

/// The spritesheet's frame indices for a video of `n` frames.
pub fn sprite_indices(n: usize) -> Vec<usize> {
    let k = n.clamp(1, SPRITE_FRAMES);
    if k == 1 {
        return vec![0];
    }
    (0..k)
        .map(|i| ((i * (n - 1)) as f64 / (k - 1) as f64).round() as usize)
        .collect()
}

fn save(img: &RgbImage, path: &Path, format: ImageFormat) -> Result<(), String> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format)
        .map_err(|e| format!("encoding {}: {e}", path.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, buf.into_inner())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            // A full disk leaves a partial file: gone with the error.
            let _ = std::fs::remove_file(&tmp);
            format!("writing {}: {e}", path.display())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sprite_indices_span_first_to_last() {
        assert_eq!(sprite_indices(1), vec![0]);
        assert_eq!(sprite_indices(3), vec![0, 1, 2]);
        let i = sprite_indices(33);
        assert_eq!(i.len(), SPRITE_FRAMES);
        assert_eq!((i[0], i[9]), (0, 32));
    }

    #[test]
    fn previews_are_written_from_streamed_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h, n) = (8usize, 4usize, 33usize);
        let mut c = PreviewCollector::new(w as u32, h as u32, n);
        for chunk in [20usize, 13] {
            c.push(&VideoFrames {
                data: vec![0.5; chunk * w * h * 3],
                frames: chunk,
                height: h,
                width: w,
            });
        }
        let (t, s, p) = (
            dir.path().join("t.webp"),
            dir.path().join("s.jpg"),
            dir.path().join("f.png"),
        );
        c.write(&t, &s, Some(&p)).unwrap();
        let sheet = image::open(&s).unwrap();
        assert_eq!((sheet.width(), sheet.height()), (8 * 5, 4 * 2));
        assert_eq!(image::open(&t).unwrap().width(), 8);
        assert_eq!(image::open(&p).unwrap().height(), 4);
    }
}

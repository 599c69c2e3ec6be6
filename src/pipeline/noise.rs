//! Every random draw of the pipeline, by name.
//!
//! The pipeline asks a [`NoiseSource`] for standard-normal tensors (before any transform) under
//! fixed names, so that another implementation (diffusers, in the parity tests) can be driven
//! with exactly the same draws:
//!
//! | name | shape | what |
//! |---|---|---|
//! | `chunk{k}.latents` | `[B, 16, 9, H/8, W/8]` | initial noise of chunk `k` (before the pyramid downsampling) |
//! | `chunk{k}.stage{s}.block_noise` | `[B·16·9·(h_s/2)·(w_s/2), 4]` | raw `z` of the block noise re-noising pyramid stage `s ≥ 1` (`h_s, w_s`: that stage's latent size), before `z @ Lᵀ` |
//! | `image.vae_sample` | `[B, 16, 1, H/8, W/8]` | I2V: `latent_dist.sample()` noise of the image encoded as one frame |
//! | `fake_image.vae_sample` | `[B, 16, 9, H/8, W/8]` | I2V: `latent_dist.sample()` noise of the image repeated 33 frames |
//! | `image.noise_sigma` | `[1]` | I2V/V2V: **uniform** `U[0,1)` draw (`torch.rand(1)`) giving the anchor's σ = `min + u·(max − min)` |
//! | `image.noise` | `[B, 16, 1, H/8, W/8]` | I2V/V2V: noise of `x ← σ·ε + (1−σ)·x` on the anchor latent |
//! | `fake_image.noise_sigma` | `[1]` | I2V: **uniform** draw of the fake image latent's σ |
//! | `fake_image.noise` | `[B, 16, 1, H/8, W/8]` | I2V: noise of the fake image latent |
//! | `video.first_frame.vae_sample` | `[B, 16, 1, H/8, W/8]` | V2V: sample noise of the first frame encoded alone |
//! | `video.window{i}.vae_sample` | `[B, 16, 9, H/8, W/8]` | V2V: sample noise of the `i`-th 33-frame window (counted from the first kept window) |
//! | `video.window{i}.noise_sigma` | `[9]` | V2V: **uniform** draws, one σ per latent frame of window `i` |
//! | `video.window{i}.noise` | `[B, 16, 9, H/8, W/8]` | V2V: noise of window `i`'s latents |
//! | `latents` | `[B, 16, (F−1)/4+1, H/8, W/8]` | Wan (`WanPipeline`): the initial latents of the whole video |
//!
//! [`FileNoise`] reads them from a safetensors file (`omni generate --noise-file`);
//! [`SeededNoise`] draws them from a seed (`--seed`), each name from its own stream so that the
//! values of one draw do not depend on the others.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

/// A draw could not be served.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// The noise file could not be read or parsed.
    #[error("reading noise file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// The noise file lacks a draw the pipeline needs.
    #[error(
        "noise file {path} has no tensor `{name}` (shape {shape:?}); see the README's noise-file table"
    )]
    Missing {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    /// The noise file holds the draw with another shape.
    #[error("noise tensor `{name}` in {path} has shape {found:?}, the pipeline needs {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

/// A source of named standard-normal draws.
pub trait NoiseSource {
    /// `shape.iter().product()` standard-normal values (row-major) for the draw `name`.
    ///
    /// # Errors
    /// [`NoiseError`] when the draw cannot be served (file sources only).
    fn standard_normal(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, NoiseError>;

    /// `shape.iter().product()` values uniform in `[0, 1)` (torch.rand) for the draw `name`.
    ///
    /// # Errors
    /// [`NoiseError`] when the draw cannot be served (file sources only).
    fn uniform(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, NoiseError>;
}

/// Draws from a seed: each name gets its own `StdRng` seeded from `(seed, name)`.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seed: u64,
}

impl SeededNoise {
    /// A source for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

/// FNV-1a of the name, mixed with the seed (stable across platforms and releases).
fn stream_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl NoiseSource for SeededNoise {
    fn standard_normal(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, NoiseError> {
        let mut rng = StdRng::seed_from_u64(stream_seed(self.seed, name));
        let n: usize = shape.iter().product();
        Ok((0..n).map(|_| StandardNormal.sample(&mut rng)).collect())
    }

    fn uniform(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, NoiseError> {
        let mut rng = StdRng::seed_from_u64(stream_seed(self.seed, name));
        let n: usize = shape.iter().product();
        Ok((0..n).map(|_| rand::Rng::random::<f32>(&mut rng)).collect())
    }
}

/// Draws read from a safetensors file (F32, F64, F16 or BF16 tensors), one tensor per name.
#[derive(Debug)]
pub struct FileNoise {
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// Tensors of other dtypes (a file may carry more than draws); an error only if asked for.
    not_float: HashMap<String, safetensors::Dtype>,
}

impl FileNoise {
    /// Read every tensor of `path`.
    ///
    /// # Errors
    /// [`NoiseError::File`] when the file is unreadable, not safetensors, or holds a non-float tensor.
    pub fn open(path: &Path) -> Result<Self, NoiseError> {
        let err = |message: String| NoiseError::File {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let mut tensors = HashMap::new();
        let mut not_float = HashMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let vals: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                safetensors::Dtype::F16 => raw
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => raw
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    not_float.insert(name, other);
                    continue;
                }
            };
            tensors.insert(name, (view.shape().to_vec(), vals));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            not_float,
        })
    }
}

impl NoiseSource for FileNoise {
    fn standard_normal(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, NoiseError> {
        if let Some(dtype) = self.not_float.get(name) {
            return Err(NoiseError::File {
                path: self.path.clone(),
                message: format!("tensor `{name}` has dtype {dtype:?}; noise must be float"),
            });
        }
        let Some((found, vals)) = self.tensors.get(name) else {
            return Err(NoiseError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
                shape: shape.to_vec(),
            });
        };
        if found != shape {
            return Err(NoiseError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        Ok(vals.clone())
    }

    /// The file holds the raw `U[0, 1)` values under the name (read as [`Self::standard_normal`]).
    fn uniform(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, NoiseError> {
        self.standard_normal(name, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_draws_are_reproducible_and_independent_of_order() {
        let mut a = SeededNoise::new(7);
        let x1 = a.standard_normal("chunk0.latents", &[2, 3]).unwrap();
        let y1 = a.standard_normal("chunk1.latents", &[2, 3]).unwrap();
        let mut b = SeededNoise::new(7);
        let y2 = b.standard_normal("chunk1.latents", &[2, 3]).unwrap();
        let x2 = b.standard_normal("chunk0.latents", &[2, 3]).unwrap();
        assert_eq!(x1, x2);
        assert_eq!(y1, y2);
        assert_ne!(x1, y1);
        let mut c = SeededNoise::new(8);
        assert_ne!(c.standard_normal("chunk0.latents", &[2, 3]).unwrap(), x1);
    }

    #[test]
    fn seeded_uniform_draws_are_in_the_unit_interval() {
        let v = SeededNoise::new(0)
            .uniform("image.noise_sigma", &[10_000])
            .unwrap();
        assert!(v.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn seeded_draws_are_standard_normal() {
        let v = SeededNoise::new(0)
            .standard_normal("x", &[100_000])
            .unwrap();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}

//! Shared helpers for the parity tests: fixture paths, reading reference tensors, error metrics.
//!
//! Fixtures are made by `tests/fixtures/make_fixtures.py` (see its header for the recipe) and
//! committed, so the tests need no Python.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// The CPU test backend (f32).
pub type TestBackend = omni::pipeline::backend::CpuBackend;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The shipped tiny Distilled checkpoint folder.
pub fn tiny_distilled() -> PathBuf {
    fixture("tiny-helios-distilled")
}

/// A reference file: `tests/fixtures/reference/<name>` read whole.
pub struct Reference {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(name: &str) -> Self {
        let path = fixture("reference").join(name);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self { path, bytes }
    }

    fn view(&self, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("tensor `{name}` not in {}", self.path.display()));
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }

    /// Whether the file holds `name`.
    pub fn has(&self, name: &str) -> bool {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        st.names().iter().any(|n| *n == name)
    }

    /// A tensor as f64 values plus its shape (F32, F64, F16, I64 and I32 files are accepted).
    pub fn f64s(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let (shape, dtype, raw) = self.view(name);
        let vals = match dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("unsupported dtype {other:?} for `{name}`"),
        };
        (shape, vals)
    }

    /// A float tensor on `device` (converted to f32).
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let (shape, vals) = self.f64s(name);
        assert_eq!(shape.len(), D, "rank of `{name}`");
        let vals: Vec<f32> = vals.into_iter().map(|v| v as f32).collect();
        Tensor::from_data(TensorData::new(vals, shape), device)
    }

    /// An integer tensor on `device`.
    pub fn int_tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        let (shape, vals) = self.f64s(name);
        assert_eq!(shape.len(), D, "rank of `{name}`");
        let vals: Vec<i64> = vals.into_iter().map(|v| v as i64).collect();
        Tensor::from_data(TensorData::new(vals, shape), device)
    }

    /// Video frames in [0, 1] plus their shape: float tensors as stored, `U8` tensors (how the
    /// fixture script stores decoded frames) as `x / 255`.
    pub fn frames01(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, dtype, raw) = self.view(name);
        if dtype == Dtype::U8 {
            return (shape, raw.iter().map(|&b| b as f32 / 255.0).collect());
        }
        let (shape, vals) = self.f64s(name);
        (shape, vals.into_iter().map(|v| v as f32).collect())
    }

    /// Integer values as a flat vector.
    pub fn i64s(&self, name: &str) -> Vec<i64> {
        self.f64s(name).1.into_iter().map(|v| v as i64).collect()
    }
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let d: Vec<f32> = (a - b).abs().into_data().convert::<f32>().to_vec().unwrap();
    d.into_iter().fold(0.0f64, |m, v| m.max(v as f64))
}

/// Largest absolute difference between two slices.
pub fn max_abs_diff_slice(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}

/// PSNR in dB of `a` against `b`, both with values in [0, 1].
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x - *y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

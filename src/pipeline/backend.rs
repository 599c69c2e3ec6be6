//! Backend choice: `Flex` (pure-Rust CPU, f32) by default, `Cuda<bf16>` with the `cuda` feature.

/// CPU backend used by tests and CPU runs.
pub type CpuBackend = burn::backend::Flex;

/// CUDA backend (CubeCL, bf16 activations, fusion + autotune). Built only with `--features cuda`.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<half::bf16, i32>;

/// The backend `omni` runs on: CUDA when built with `--features cuda`, else the CPU.
#[cfg(feature = "cuda")]
pub type DefaultBackend = CudaBackend;
/// The backend `omni` runs on: CUDA when built with `--features cuda`, else the CPU.
#[cfg(not(feature = "cuda"))]
pub type DefaultBackend = CpuBackend;

//! Backend choice: `Flex` (pure-Rust CPU, f32) by default, `Cuda<bf16>` with the `cuda` feature,
//! and device-memory queries for the benchmarks and the server.

use burn::tensor::backend::Backend;

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

/// What the device allocator holds, in bytes (CubeCL's `MemoryUsage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of live tensors.
    pub bytes_in_use: u64,
    /// Bytes the memory pools have reserved from the driver (≥ in use; what the process holds
    /// on the GPU apart from the CUDA context and kernels).
    pub bytes_reserved: u64,
}

impl DeviceMemory {
    /// Field-wise maximum (for peaks sampled over a run).
    pub fn max(self, other: Self) -> Self {
        Self {
            bytes_in_use: self.bytes_in_use.max(other.bytes_in_use),
            bytes_reserved: self.bytes_reserved.max(other.bytes_reserved),
        }
    }
}

/// Current device memory of `device` when it is a CUDA device, `None` otherwise (the CPU
/// backend allocates from the process heap: see `bench::peak_rss_bytes`). The caller syncs the
/// device first if it wants the memory after pending work.
pub fn device_memory<B: Backend>(device: &B::Device) -> Option<DeviceMemory> {
    #[cfg(feature = "cuda")]
    {
        use cubecl::Runtime;
        let any: &dyn std::any::Any = device;
        if let Some(cuda) = any.downcast_ref::<cubecl::cuda::CudaDevice>() {
            let usage = cubecl::cuda::CudaRuntime::client(cuda)
                .memory_usage()
                .ok()?;
            return Some(DeviceMemory {
                bytes_in_use: usage.bytes_in_use,
                bytes_reserved: usage.bytes_reserved,
            });
        }
    }
    let _ = device;
    None
}

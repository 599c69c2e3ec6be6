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

/// Check that the default device can run a kernel before minutes of loading start.
///
/// Always `Ok` on the CPU backend. On CUDA, a missing driver or GPU makes CubeCL panic on its
/// device thread (and the caller with an unrelated `RecvError`); this runs one upload and
/// read-back under `catch_unwind` with the panic output captured, and returns the first panic
/// message instead.
///
/// # Errors
/// A one-line message naming the cause (e.g. `Unable to dynamically load the "cuda" shared
/// library`) and what to do.
pub fn probe_device() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    {
        use burn::tensor::Tensor;
        use std::sync::{Arc, Mutex};

        let first: Arc<Mutex<Option<String>>> = Arc::default();
        let seen = first.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(msg);
        }));
        let ok = std::panic::catch_unwind(|| {
            let device = Default::default();
            let t = Tensor::<DefaultBackend, 1>::from_data([1.0f32, 2.0], &device);
            t.into_data().to_vec::<f32>().is_ok()
        });
        std::panic::set_hook(previous);
        if !matches!(ok, Ok(true)) {
            let cause = first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| "the device did not answer".into());
            // cudarc's message lists every library name it tried: keep the first sentence.
            let cause = cause.split(" - searched").next().unwrap_or(&cause).trim();
            return Err(format!(
                "no usable CUDA device: {cause}. This build (--features cuda) needs an NVIDIA GPU \
                 with its driver (libcuda.so on LD_LIBRARY_PATH); on a machine without one, build \
                 omni without --features cuda"
            ));
        }
    }
    Ok(())
}

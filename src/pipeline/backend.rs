//! Backend choice: `Flex` (pure-Rust CPU, f32) by default, `Cuda<bf16>` with the `cuda` feature,
//! the CPU thread pool ([`init_threads`]), and device-memory queries for the benchmarks and the
//! server.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

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

/// Size the CPU thread pool: rayon's global pool, which the CPU backend's matmuls,
/// convolutions, norms and softmax (and [`crate::pipeline::models::attention_dispatch`]) share.
/// `Some(n)` caps it at `n` threads, `None` gives one per logical CPU this process may use
/// (affinity and cgroup quota included). Call it once, at start-up, before the first tensor
/// op: the pool cannot be resized later. Returns the number of threads in use.
///
/// The CUDA backend computes on the GPU; there the pool only serves the host-side work.
///
/// # Errors
/// `n` is 0, or the pool was already started (by an earlier call or a tensor op).
pub fn init_threads(threads: Option<usize>) -> Result<usize, String> {
    if threads == Some(0) {
        return Err("the thread count must be at least 1".into());
    }
    let n = match threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("omni-cpu-{i}"))
        .build_global()
        .map_err(|e| format!("could not start {n} CPU threads: {e}"))?;
    Ok(num_threads())
}

/// Threads of the CPU pool ([`init_threads`]; rayon's default size if it was never called).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// `f` applied to the burn-flex primitive of `tensor` when the backend is the CPU backend
/// (`Ok`), or `tensor` back untouched (`Err`) on any other backend: the door for the few fused
/// CPU kernels the models use (tanh GELU, the attention softmax, RoPE), each with a portable
/// fallback made of burn ops.
pub fn flex_map<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    f: impl FnOnce(FlexTensor) -> FlexTensor,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let primitive: Box<dyn Any> = Box::new(tensor.into_primitive().tensor());
    let (primitive, mapped) = match primitive.downcast::<FlexTensor>() {
        Ok(flex) => (Box::new(f(*flex)) as Box<dyn Any>, true),
        Err(other) => (other, false),
    };
    let primitive = primitive
        .downcast::<B::FloatTensorPrimitive>()
        .expect("the primitive keeps its type");
    let tensor = Tensor::from_primitive(TensorPrimitive::Float(*primitive));
    if mapped { Ok(tensor) } else { Err(tensor) }
}

/// `vec![value; len]` written by the CPU pool. `vec![0.0; len]` is `calloc`, and glibc serves
/// allocations up to 32 MiB from its heap once it has freed a few, so the fused CPU kernels'
/// buffers were zeroed by one `memset` on the calling thread while the pool waited (a tenth of
/// a VAE decode on 2 cores).
pub fn par_filled(len: usize, value: f32) -> Vec<f32> {
    use rayon::prelude::*;
    /// Elements per rayon task (256 KiB).
    const FILL: usize = 1 << 16;
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()
        .par_chunks_mut(FILL)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(value)));
    // SAFETY: every one of the `len` elements was just initialised.
    unsafe { v.set_len(len) };
    v
}

/// A burn-flex tensor as a `Tensor<B, D>` when `B` is the CPU backend (`None` on the others):
/// the way back from a fused CPU kernel whose output rank differs from its input's.
pub fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Option<Tensor<B, D>> {
    let primitive: Box<dyn Any> = Box::new(tensor);
    let primitive = primitive.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*primitive)))
}

/// The burn-flex primitive of `tensor` (sharing its buffer) on the CPU backend, `None` on the
/// others.
pub fn as_flex<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<FlexTensor> {
    let primitive: Box<dyn Any> = Box::new(tensor.clone().into_primitive().tensor());
    primitive.downcast::<FlexTensor>().ok().map(|t| *t)
}

/// `tensor` in a buffer of its own, row-major from offset 0, on the CPU backend (a copy when it
/// is a strided view or a `narrow` that does not start at the first element); unchanged on the
/// other backends. burn-flex's SIMD element-wise kernels (in place, or broadcasting a row or a
/// per-row scalar) only take such operands; any other layout goes through a scalar strided
/// loop. Values are untouched.
pub fn contiguous<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    flex_map(tensor, |t| t.to_contiguous()).unwrap_or_else(|t| t)
}

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

/// Total memory of `device` in bytes when it is a CUDA device (the driver's
/// `cuDeviceTotalMem`), `None` otherwise (the CPU backend has no device memory of its own).
/// Used by the Wan2.2 A14B expert residency (`pipeline_wan::offload_experts_auto`).
pub fn device_total_memory<B: Backend>(device: &B::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    {
        let any: &dyn std::any::Any = device;
        if let Some(cuda) = any.downcast_ref::<cubecl::cuda::CudaDevice>() {
            use cudarc::driver::result;
            result::init().ok()?;
            let dev = result::device::get(cuda.index as i32).ok()?;
            // SAFETY: `dev` is a device handle the driver just returned after `init`.
            let total = unsafe { result::device::total_mem(dev) }.ok()?;
            return Some(total as u64);
        }
    }
    let _ = device;
    None
}

thread_local! {
    /// The GPU index [`thread_device`] answers on this thread (see [`set_thread_device`]).
    static THREAD_DEVICE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Pick the device the pipelines opened and run on this thread use, as
/// `torch.cuda.set_device(index)` does: `omni serve --devices 0,1` calls it once at the start
/// of each worker thread, before [`crate::pipeline::generator::Generator::open`]. On the CPU
/// build only index 0 exists.
///
/// # Errors
/// A non-zero index on the CPU build.
pub fn set_thread_device(index: usize) -> Result<(), String> {
    if cfg!(not(feature = "cuda")) && index != 0 {
        return Err(format!(
            "device {index}: this CPU build has one device; use --workers N for more CPU workers"
        ));
    }
    THREAD_DEVICE.with(|d| d.set(index));
    Ok(())
}

/// This thread's device of [`DefaultBackend`]: `Cuda(i)` for the index given to
/// [`set_thread_device`] (0 by default) on the cuda build, the CPU otherwise.
pub fn thread_device() -> burn::tensor::ops::Device<DefaultBackend> {
    #[cfg(feature = "cuda")]
    {
        cubecl::cuda::CudaDevice {
            index: THREAD_DEVICE.with(std::cell::Cell::get),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Default::default()
    }
}

/// This thread's device as the metrics and `/v1/models` name it: `cuda:<i>` or `cpu`.
pub fn thread_device_label() -> String {
    match cfg!(feature = "cuda") {
        true => format!("cuda:{}", THREAD_DEVICE.with(std::cell::Cell::get)),
        false => "cpu".to_string(),
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

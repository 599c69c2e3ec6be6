//! Which dtype each part of the pipeline computes in, mirroring how diffusers runs Helios in
//! bf16 (`HeliosPyramidPipeline.from_pretrained(..., torch_dtype=torch.bfloat16)` with the VAE
//! loaded in float32, as the diffusers docs and the official Helios code do):
//!
//! | part | dtype | reference |
//! |---|---|---|
//! | latents, history, noise, scheduler and guidance arithmetic | f32 | `prepare_latents(dtype=torch.float32)`, `HeliosScheduler.step` |
//! | transformer | the device's float dtype (bf16 on CUDA) | `torch_dtype` |
//! | transformer `_keep_in_fp32_modules` (`time_embedder`, `scale_shift_table`, `norm1/2/3`, `history_key_scale`) | f32 | diffusers `modeling_utils.load_model_dict_into_meta` |
//! | text encoder (UMT5) | the device's float dtype | transformers keeps `wo` in f32 only for fp16 (`_keep_in_fp32_modules`) |
//! | VAE | f32 | `AutoencoderKLWan.from_pretrained(..., torch_dtype=torch.float32)` |
//!
//! On the f32 CPU backend every row is f32. The same rules hold on a CPU device whose default
//! float dtype is set to bf16 (`burn::tensor::set_default_float_dtype`), which is how the bf16
//! parity tests check the CUDA precision plan without a GPU.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, get_device_settings};

/// The compute dtypes of one pipeline (see the module docs for the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// `HeliosTransformer3DModel` weights and activations (except its f32 modules).
    pub transformer: DType,
    /// `UMT5EncoderModel` weights and activations.
    pub text_encoder: DType,
    /// `AutoencoderKLWan` weights and activations.
    pub vae: DType,
}

impl Precision {
    /// diffusers' bf16 recipe on `device`: transformer and text encoder in the device's default
    /// float dtype (bf16 for `Cuda<bf16>`, f32 for the CPU backend), VAE in f32.
    pub fn for_device<B: Backend>(device: &B::Device) -> Self {
        let float = device_float_dtype::<B>(device);
        Self {
            transformer: float,
            text_encoder: float,
            vae: DType::F32,
        }
    }
}

/// The default float dtype of `device` (what `Tensor::from_data(data, device)` creates).
pub fn device_float_dtype<B: Backend>(device: &B::Device) -> DType {
    get_device_settings::<B>(device).float_dtype.into()
}

/// A float dtype as the CLI spells it, without naming Burn's `DType` (so clap arguments and
/// [`crate::pipeline::generator::GeneratorOptions`] stay backend-free).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl std::str::FromStr for Dtype {
    type Err = String;

    /// `f32`/`float32`/`fp32`, `bf16`/`bfloat16`, `f16`/`float16`/`fp16`.
    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            other => Err(format!("unknown dtype `{other}`: use f32, bf16 or f16")),
        }
    }
}

impl From<Dtype> for DType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
            Dtype::F16 => DType::F16,
        }
    }
}

/// Parse a dtype name as the CLI and presets spell it: `f32`/`float32`, `bf16`/`bfloat16`,
/// `f16`/`float16`.
///
/// # Errors
/// A message listing the accepted names.
pub fn parse_dtype(name: &str) -> Result<DType, String> {
    name.parse::<Dtype>().map(DType::from)
}

/// The dtype a parameter is stored in: f32 when one of the components of its module path
/// (`blocks.0.norm2.gamma` → `blocks`, `0`, `norm2`, `gamma`) is in `keep_in_fp32`, else
/// `compute`. This is diffusers' rule (`module_to_keep_in_fp32 in param_name.split(".")`).
pub fn param_dtype<S: AsRef<str>, K: AsRef<str>>(
    path: &[S],
    compute: DType,
    keep_in_fp32: &[K],
) -> DType {
    let keep = path
        .iter()
        .any(|part| keep_in_fp32.iter().any(|k| k.as_ref() == part.as_ref()));
    if keep { DType::F32 } else { compute }
}

/// Casts every float parameter of a module to [`param_dtype`] of its path: used for modules
/// built with random weights (benchmarks), which never pass through the loader.
pub struct PrecisionMapper<'a> {
    compute: DType,
    keep_in_fp32: &'a [&'a str],
    path: Vec<String>,
}

impl<'a> PrecisionMapper<'a> {
    /// Cast `module`'s float parameters to `compute`, or f32 under `keep_in_fp32`.
    pub fn apply<B: Backend, M: Module<B>>(
        module: M,
        compute: DType,
        keep_in_fp32: &'a [&'a str],
    ) -> M {
        let mut mapper = Self {
            compute,
            keep_in_fp32,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }
}

impl<B: Backend> ModuleMapper<B> for PrecisionMapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = param_dtype(&self.path, self.compute, self.keep_in_fp32);
        param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_in_fp32_matches_whole_path_components() {
        let keep = ["norm2", "scale_shift_table", "time_embedder"];
        let dt = |p: &str| param_dtype(&p.split('.').collect::<Vec<_>>(), DType::BF16, &keep);
        assert_eq!(dt("blocks.3.norm2.gamma"), DType::F32);
        assert_eq!(dt("blocks.3.scale_shift_table"), DType::F32);
        assert_eq!(
            dt("condition_embedder.time_embedder.linear_1.weight"),
            DType::F32
        );
        // `time_proj` is not `time_embedder`; `norm_out` is not `norm2`.
        assert_eq!(dt("condition_embedder.time_proj.weight"), DType::BF16);
        assert_eq!(dt("norm_out.scale_shift_table"), DType::F32);
        assert_eq!(dt("blocks.3.attn1.norm_q.gamma"), DType::BF16);
    }

    #[test]
    fn dtype_names_parse() {
        assert_eq!(parse_dtype("bf16"), Ok(DType::BF16));
        assert_eq!(parse_dtype("Float32"), Ok(DType::F32));
        assert!(parse_dtype("f8").unwrap_err().contains("f32, bf16 or f16"));
    }
}

//! The prompt side of a Helios checkpoint: `tokenizer/` and `text_encoder/` (UMT5), step 3 of
//! diffusers' `HeliosPyramidPipeline.__call__` (`encode_prompt`), loadable on its own so the
//! text encoder can be dropped once the prompts are encoded.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::pipeline::checkpoint::component_dir;
use crate::pipeline::error::PipelineError;
use crate::pipeline::models::umt5::UMT5EncoderModel;
use crate::pipeline::progress::{Progress, ProgressSink, loading};
use crate::pipeline::request::GenerationRequest;
use crate::pipeline::text_encoding::encode_prompt;
use crate::pipeline::tokenizer::{PromptTokenizer, TokenizeError};

/// The prompt side of a checkpoint: `tokenizer/` and `text_encoder/` (UMT5), loadable on its own
/// so that the 11 GB (bf16) encoder can be dropped once the prompts are encoded.
pub struct PromptEncoder<B: Backend> {
    pub tokenizer: PromptTokenizer,
    pub text_encoder: UMT5EncoderModel<B>,
    device: B::Device,
}

/// The prompt embeddings one request needs (`[1, max_sequence_length, d_model]` each).
pub struct PromptEmbeds<B: Backend> {
    pub prompt_embeds: Tensor<B, 3>,
    /// Present when `guidance_scale > 1` (CFG).
    pub negative_prompt_embeds: Option<Tensor<B, 3>>,
}

impl<B: Backend> PromptEncoder<B> {
    /// Load the tokenizer and the text encoder (in `dtype`) of the checkpoint folder `dir`.
    ///
    /// # Errors
    /// [`PipelineError::Load`] naming the missing or broken file.
    pub fn load(
        dir: &Path,
        device: &B::Device,
        dtype: DType,
        progress: &mut dyn ProgressSink,
    ) -> Result<Self, PipelineError> {
        let sub = |name: &str| component_dir(dir, name);
        let tokenizer = loading(progress, "tokenizer", || {
            PromptTokenizer::from_dir(&sub("tokenizer")?)
        })?;
        let text_encoder = loading(progress, "text_encoder", || {
            UMT5EncoderModel::load_with_dtype(&sub("text_encoder")?, device, dtype)
        })?;
        Ok(Self {
            tokenizer,
            text_encoder,
            device: device.clone(),
        })
    }

    /// Prompt embeddings `[1, max_sequence_length, d_model]` as diffusers' `encode_prompt`.
    ///
    /// # Errors
    /// [`TokenizeError`] when the prompt cannot be tokenized at that length.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        max_sequence_length: usize,
    ) -> Result<Tensor<B, 3>, TokenizeError> {
        encode_prompt(
            &self.tokenizer,
            &self.text_encoder,
            prompt,
            max_sequence_length,
            &self.device,
        )
    }

    /// Step 3 of `__call__`: the prompt, and the negative prompt when CFG is on
    /// (`guidance_scale > 1`), with `EncodingPrompt` progress events around it.
    ///
    /// # Errors
    /// [`PipelineError::Tokenize`] when a prompt cannot be tokenized.
    pub fn encode_request(
        &self,
        req: &GenerationRequest,
        progress: &mut dyn ProgressSink,
    ) -> Result<PromptEmbeds<B>, PipelineError> {
        progress.event(Progress::EncodingPrompt { done: false });
        let prompt_embeds = self.encode_prompt(&req.prompt, req.max_sequence_length)?;
        let negative_prompt_embeds = match req.guidance_scale > 1.0 {
            true => Some(self.encode_prompt(&req.negative_prompt, req.max_sequence_length)?),
            false => None,
        };
        progress.event(Progress::EncodingPrompt { done: true });
        Ok(PromptEmbeds {
            prompt_embeds,
            negative_prompt_embeds,
        })
    }
}

/// Whether [`HeliosPyramidPipeline`](super::pipeline_helios_pyramid::HeliosPyramidPipeline) keeps the text encoder loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderResidency {
    /// Loaded with the pipeline and kept (the server: no reload per request).
    Resident,
    /// Not kept: loaded from the checkpoint for each [`HeliosPyramidPipeline::call`](super::pipeline_helios_pyramid::HeliosPyramidPipeline::call) and dropped
    /// after encoding, or not at all when the caller encodes first with a [`PromptEncoder`] and
    /// uses [`HeliosPyramidPipeline::call_with_embeds`](super::pipeline_helios_pyramid::HeliosPyramidPipeline::call_with_embeds) (`omni generate`: the encoder and the
    /// transformer are never in memory together).
    OnDemand,
}

//! [`PipelineError`]: every way a generation can fail, from loading to the last frame.

use super::checkpoint::LoadError;
use super::noise::NoiseError;
use super::tokenizer::TokenizeError;

/// A generation failure.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The checkpoint could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A random draw could not be served.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// The request does not fit this checkpoint.
    #[error("{0}")]
    Unsupported(String),
    /// The frame consumer failed (e.g. the MP4 writer).
    #[error("writing frames: {0}")]
    Sink(String),
    /// The prompt could not be tokenized.
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    /// A LoRA adapter of the request cannot be applied (names the adapter and key).
    #[error(transparent)]
    Lora(#[from] super::lora::LoraError),
    /// The run was cancelled through its [`CancelToken`](crate::pipeline::progress::CancelToken).
    #[error("cancelled")]
    Cancelled,
}

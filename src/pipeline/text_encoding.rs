//! Prompt → text embeddings: mirrors diffusers 0.42.1
//! `pipelines/helios/pipeline_helios_pyramid.py` `HeliosPyramidPipeline._get_t5_prompt_embeds`
//! (identical in `pipeline_helios.py`) for one prompt and one video per prompt.
//!
//! ```text
//! prompt = prompt_clean(prompt)
//! ids, mask = tokenizer(prompt, padding="max_length", max_length=L, truncation=True, add_special_tokens=True)
//! seq_len = mask.sum()
//! embeds = text_encoder(ids, mask).last_hidden_state        # [1, L, d_model]
//! embeds = cat([embeds[:, :seq_len], zeros(L - seq_len)])  # padded rows are zeroed
//! ```
//!
//! The zero rows matter: the DiT's cross-attention has no mask, so they take part in it, and the
//! padded length (512 for Helios) changes the result.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::models::umt5::UMT5EncoderModel;
use super::tokenizer::{PromptTokenizer, TokenizeError, prompt_clean};

/// Encode one prompt into `[1, max_sequence_length, d_model]` text embeddings: the UMT5
/// `last_hidden_state` for the `seq_len` real tokens (`</s>` included) and zeros after them.
///
/// # Errors
/// [`TokenizeError`] if tokenization fails or `max_sequence_length` cannot hold the special
/// tokens.
///
/// # Panics
/// If the tokenizer produces an id outside the encoder's vocabulary (a tokenizer that does not
/// belong to this text encoder).
///
/// # Shapes
/// Returns `[1, max_sequence_length, d_model]`.
pub fn encode_prompt<B: Backend>(
    tokenizer: &PromptTokenizer,
    encoder: &UMT5EncoderModel<B>,
    prompt: &str,
    max_sequence_length: usize,
    device: &B::Device,
) -> Result<Tensor<B, 3>, TokenizeError> {
    let cleaned = prompt_clean(prompt);
    let encoded = tokenizer.encode(&cleaned, max_sequence_length)?;
    if let Some(&bad) = encoded
        .ids
        .iter()
        .find(|&&id| id as usize >= encoder.vocab_size)
    {
        panic!(
            "token id {bad} is outside the text encoder's vocabulary ({}): the tokenizer does not \
             match the text encoder",
            encoder.vocab_size
        );
    }
    let len = max_sequence_length;
    let to_tensor = |v: &[u32]| {
        let v: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, len]), device)
    };
    let ids = to_tensor(&encoded.ids);
    let mask = to_tensor(&encoded.attention_mask);
    let hidden = encoder.forward(ids, mask); // [1, L, d_model]
    if encoded.seq_len == len {
        return Ok(hidden);
    }
    // prompt_embeds = [u[:v] for u, v in zip(prompt_embeds, seq_lens)], then zero-padded to L.
    let d_model = encoder.d_model;
    let kept = hidden.narrow(1, 0, encoded.seq_len);
    let zeros =
        Tensor::<B, 3>::zeros([1, len - encoded.seq_len, d_model], device).cast(kept.dtype());
    Ok(Tensor::cat(vec![kept, zeros], 1))
}

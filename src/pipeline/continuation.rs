//! Continuation state of a Helios video (FastVideo's `ContinuationState` contract, kind
//! `helios.v1`): what the chunk loop needs to generate the next chunk of a finished video as if
//! it had never stopped — the history buffer (the last `sum(history_sizes)` latent frames), the
//! anchor latent and the index of the next chunk (whose random draws are `chunk{k}.…`). Decoding
//! carries nothing across chunks (each chunk is VAE-decoded on its own), so this is all.
//!
//! A video made in two requests (A with its state returned, then B continuing it, with the same
//! seed) equals the one request A+B frame for frame on the CPU (`tests/continuation.rs`).
//!
//! Stored as safetensors: tensors `history` `[1, C, N, h, w]` and `anchor` `[1, C, 1, h, w]`
//! (f32), metadata `kind`, `schema_version`, `segment_index`, `pipeline` (the checkpoint's
//! `_class_name`).

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

/// The `kind` of a Helios state.
pub const KIND: &str = "helios.v1";
/// The payload layout version.
pub const SCHEMA_VERSION: u32 = 1;

/// A tensor on the host: f32 values and their shape.
pub type HostTensor = (Vec<f32>, [usize; 5]);

/// Where a continued Helios video picks up; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct HeliosState {
    /// Chunks generated so far, counting every earlier segment: the index of the next chunk.
    pub segment_index: usize,
    /// `model_index.json` `_class_name` of the checkpoint that made it.
    pub pipeline: String,
    /// History buffer, f32 values and shape `[1, C, N, h, w]`.
    pub history: HostTensor,
    /// Anchor latent, f32 values and shape `[1, C, 1, h, w]`.
    pub anchor: Option<HostTensor>,
}

/// A state that cannot be read or does not fit the request.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not a Helios state blob.
    #[error("not a {KIND} continuation state: {0}")]
    Invalid(String),
    /// Made by another model or at another size.
    #[error("the continuation state is incompatible with this request: {0}")]
    Incompatible(String),
}

impl HeliosState {
    /// The state as safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let history = le(&self.history.0);
        let anchor = self.anchor.as_ref().map(|(v, _)| le(v));
        let mut views = vec![(
            "history".to_string(),
            TensorView::new(Dtype::F32, self.history.1.to_vec(), &history).expect("shape fits"),
        )];
        if let (Some((_, shape)), Some(bytes)) = (&self.anchor, &anchor) {
            views.push((
                "anchor".to_string(),
                TensorView::new(Dtype::F32, shape.to_vec(), bytes).expect("shape fits"),
            ));
        }
        let meta: HashMap<String, String> = [
            ("kind", KIND.to_string()),
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("segment_index", self.segment_index.to_string()),
            ("pipeline", self.pipeline.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        safetensors::serialize(views, Some(meta)).expect("serializing f32 tensors")
    }

    /// Reads [`to_bytes`](Self::to_bytes)' output.
    ///
    /// # Errors
    /// [`StateError::Invalid`] for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let bad = |m: String| StateError::Invalid(m);
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("no `{k}`")));
        if get("kind")? != KIND {
            return Err(bad(format!("kind is not {KIND}")));
        }
        if get("schema_version")? != SCHEMA_VERSION.to_string() {
            return Err(bad("unknown schema_version".into()));
        }
        let segment_index = get("segment_index")?
            .parse()
            .map_err(|_| bad("segment_index is not a number".into()))?;
        let tensor = |name: &str| -> Result<Option<HostTensor>, StateError> {
            let Ok(t) = st.tensor(name) else {
                return Ok(None);
            };
            let shape: [usize; 5] = t
                .shape()
                .try_into()
                .map_err(|_| bad(format!("`{name}` is not 5-D")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!("`{name}` is not f32")));
            }
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(Some((v, shape)))
        };
        Ok(Self {
            segment_index,
            pipeline: get("pipeline")?,
            history: tensor("history")?.ok_or_else(|| bad("no `history` tensor".into()))?,
            anchor: tensor("anchor")?,
        })
    }
}

//! `omni serve`: the HTTP API (vLLM-Omni / OpenAI Videos / FastVideo / LocalAI).
//!
//! Not built yet: the server arrives with its own issue. The pipeline it will wrap is
//! [`crate::pipeline`], driven through the same request type as `omni generate`.

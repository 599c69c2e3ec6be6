//! The Helios pipeline: checkpoint loading, models, schedulers and the chunked denoising loop.
//!
//! Everything here is generic over a Burn [`Backend`](burn::tensor::backend::Backend); the CLI and
//! the server pick the backend ([`backend::DefaultBackend`]). This layer never prints, parses
//! arguments or reads the environment: progress goes through [`progress::ProgressSink`].

pub mod backend;
pub mod checkpoint;
pub mod models;
pub mod schedulers;
pub mod text_encoding;
pub mod tokenizer;
pub mod weights;
pub mod noise;
pub mod progress;
pub mod request;
pub mod pipelines;

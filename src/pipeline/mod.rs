//! The Helios pipeline: checkpoint loading, models, schedulers and the chunked denoising loop.
//!
//! Everything here is generic over a Burn [`Backend`](burn::tensor::backend::Backend); the CLI and
//! the server pick the backend ([`backend::DefaultBackend`]). This layer never prints, parses
//! arguments or reads the environment: progress goes through [`progress::ProgressSink`].

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod error;
pub mod generator;
pub mod guidance;
pub mod models;
pub mod noise;
pub mod pipelines;
pub mod precision;
pub mod preset;
pub mod progress;
pub mod request;
pub mod schedulers;
pub mod text_encoding;
pub mod tokenizer;
pub mod weights;

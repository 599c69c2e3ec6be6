//! The Helios pipeline: checkpoint loading, models, schedulers and the chunked denoising loop.
//!
//! The models, schedulers and pipelines are generic over a Burn
//! [`Backend`](burn::tensor::backend::Backend). The CLI and the server reach them through one
//! non-generic door, [`generator::Generator`], which owns the backend
//! ([`backend::DefaultBackend`]), the load order and the text-encoder residency, and picks the
//! pipeline from the checkpoint's `model_index.json` `_class_name` ([`generator::PIPELINES`]).
//! Requests are resolved once ([`request::resolve`], with [`preset::Preset`] as a layer). This
//! layer never prints, parses arguments or reads the environment: progress goes through
//! [`progress::ProgressSink`].

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod continuation;
pub mod error;
pub mod generator;
pub mod guidance;
pub mod image_processing_clip;
pub mod lora;
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

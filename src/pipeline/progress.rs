//! Progress events and cancellation.
//!
//! The pipeline reports what it is doing to a [`ProgressSink`]; the CLI draws indicatif bars, the
//! server (later) writes percent done into the job record. The library never prints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the pipeline is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Loading a checkpoint component (`"transformer"`, `"vae"`, `"text_encoder"`, `"tokenizer"`,
    /// `"scheduler"`); `done` is false when it starts and true when it is loaded.
    Loading { component: &'static str, done: bool },
    /// Encoding the prompt(s) with the text encoder.
    EncodingPrompt { done: bool },
    /// A chunk of `frames` video frames starts; it takes `steps` transformer steps in all stages.
    ChunkStarted {
        chunk: usize,
        chunks: usize,
        steps: usize,
        frames: usize,
    },
    /// Denoising step `step` (1-based, counted over all stages of the chunk) of `steps` finished.
    Step {
        chunk: usize,
        stage: usize,
        step: usize,
        steps: usize,
    },
    /// The VAE starts (`done == false`) or finished decoding chunk `chunk`.
    Decoding { chunk: usize, done: bool },
    /// `frames` frames of the output are ready (after decoding chunk `chunk`).
    FramesReady { chunk: usize, frames: usize },
}

/// Receives [`Progress`] events.
pub trait ProgressSink {
    /// Called for each event, in order, on the pipeline's thread.
    fn event(&mut self, event: Progress);
}

/// Run `load` between the `Loading { component, done: false }` and `{ done: true }` events (the
/// second only when it succeeds).
///
/// # Errors
/// Whatever `load` returns.
pub fn loading<T, E>(
    progress: &mut dyn ProgressSink,
    component: &'static str,
    load: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    progress.event(Progress::Loading {
        component,
        done: false,
    });
    let loaded = load()?;
    progress.event(Progress::Loading {
        component,
        done: true,
    });
    Ok(loaded)
}

/// A sink that ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&mut self, _event: Progress) {}
}

/// A flag that stops a running generation at the next denoising step.
#[derive(Debug, Default, Clone)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Ask the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

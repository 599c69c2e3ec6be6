//! indicatif progress bars for the pipeline's [`Progress`] events.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use omni::pipeline::progress::{Progress, ProgressSink};

/// Draws bars on stderr; hidden with `--quiet`, when stderr is not a terminal, or when
/// `RUST_LOG` is set (so log lines and bars do not interleave).
pub struct BarProgress {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl BarProgress {
    pub fn new(quiet: bool) -> Self {
        let enabled =
            !quiet && std::io::stderr().is_terminal() && std::env::var_os("RUST_LOG").is_none();
        Self { enabled, bar: None }
    }

    fn spinner(&mut self, msg: String) {
        self.finish();
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::new_spinner().with_message(msg);
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn steps(&mut self, msg: String, total: u64) {
        self.finish();
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_message(msg);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} steps {elapsed} (eta {eta})",
            )
            .expect("valid")
            .progress_chars("=> "),
        );
        self.bar = Some(bar);
    }

    /// Finish the current bar, leaving its last line.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl ProgressSink for BarProgress {
    fn event(&mut self, event: Progress) {
        match event {
            Progress::Loading {
                component,
                done: false,
            } => self.spinner(format!("loading {component}")),
            Progress::EncodingPrompt { done: false } => self.spinner("encoding prompt".into()),
            Progress::ChunkStarted {
                chunk,
                chunks,
                steps,
                frames,
            } => self.steps(
                format!("chunk {}/{chunks} ({frames} frames)", chunk + 1),
                steps as u64,
            ),
            Progress::Step { step, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step as u64);
                }
            }
            Progress::Decoding { chunk, done: false } => self.spinner(format!(
                "decoding chunk {} (VAE) and encoding H.264",
                chunk + 1
            )),
            _ => {}
        }
    }
}

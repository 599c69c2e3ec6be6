//! The post-processing a request asks for, as one chain of [`FrameSink`]s in front of the
//! output: decoded chunk → RIFE interpolation ([`InterpolatingSink`]) → Real-ESRGAN upscaling
//! ([`UpscalingSink`]) → the caller's sink. Every pipeline family runs its frames through
//! [`PostprocessModels::run`], which keeps the last-used models loaded between requests.

use std::path::PathBuf;

use burn::tensor::backend::Backend;

use super::realesrgan::{Upscaler, UpscalingSink};
use super::rife::{IFNet, InterpolatingSink};
use crate::pipeline::error::PipelineError;
use crate::pipeline::generator::FrameSink;
use crate::pipeline::request::GenerationRequest;

/// The RIFE and Real-ESRGAN models of the last request that used them, by path.
pub struct PostprocessModels<B: Backend> {
    rife: Option<(PathBuf, IFNet<B>)>,
    upscaler: Option<(PathBuf, Upscaler<B>)>,
}

impl<B: Backend> Default for PostprocessModels<B> {
    fn default() -> Self {
        Self {
            rife: None,
            upscaler: None,
        }
    }
}

impl<B: Backend> PostprocessModels<B> {
    /// Load the request's models unless they are the ones already loaded (call before anything
    /// heavy runs, so a bad file fails the request early).
    ///
    /// # Errors
    /// [`PipelineError::Unsupported`]: a model path is empty (the CLI / server fill it in) or
    /// the file is unreadable / not a RIFE 4.22 lite or Real-ESRGAN model, or the upscale
    /// factor is one the model cannot make.
    pub fn ensure(
        &mut self,
        req: &GenerationRequest,
        device: &B::Device,
    ) -> Result<(), PipelineError> {
        if req.enable_frame_interpolation {
            let path = PathBuf::from(&req.frame_interpolation_model_path);
            if req.frame_interpolation_model_path.is_empty() {
                return Err(PipelineError::Unsupported(
                    "`enable_frame_interpolation` needs a RIFE model: set `frame_interpolation_model_path` (or --rife-model / [postprocess] rife_model)".into(),
                ));
            }
            if self.rife.as_ref().is_none_or(|(p, _)| *p != path) {
                let net = IFNet::load(&path, device)
                    .map_err(|e| PipelineError::Unsupported(e.to_string()))?;
                self.rife = Some((path, net));
            }
        }
        if req.enable_upscale {
            let path = PathBuf::from(&req.upscale_model_path);
            if req.upscale_model_path.is_empty() {
                return Err(PipelineError::Unsupported(
                    "`enable_upscale` needs a Real-ESRGAN model: set `upscale_model_path` (or --upscale-model / [postprocess] upscale_model)".into(),
                ));
            }
            if self.upscaler.as_ref().is_none_or(|(p, _)| *p != path) {
                let net = Upscaler::load(&path, device)
                    .map_err(|e| PipelineError::Unsupported(e.to_string()))?;
                self.upscaler = Some((path, net));
            }
            let (_, net) = self.upscaler.as_ref().expect("loaded above");
            super::realesrgan::check_factor(net.scale(), req.upscale_factor as usize).map_err(
                |m| PipelineError::Unsupported(format!("invalid `upscale_factor`: {m}")),
            )?;
        }
        Ok(())
    }

    /// Run `f` with its frames going through the request's post-processing into `sink`; `f`
    /// returns the number of frames it decoded, this the number `sink` received
    /// (`(N − 1)·2^exp + 1` with interpolation).
    ///
    /// # Errors
    /// What `f` returns.
    ///
    /// # Panics
    /// If [`Self::ensure`] was not called for `req`.
    pub fn run<T>(
        &self,
        req: &GenerationRequest,
        sink: &mut dyn FrameSink,
        f: impl FnOnce(&mut dyn FrameSink) -> Result<(usize, T), PipelineError>,
    ) -> Result<(usize, T), PipelineError> {
        let mut up_sink;
        let sink: &mut dyn FrameSink = match req.enable_upscale {
            true => {
                let (_, net) = self.upscaler.as_ref().expect("ensure() loads the upscaler");
                up_sink = UpscalingSink::new(net, req.upscale_factor as usize, sink);
                &mut up_sink
            }
            false => sink,
        };
        let mut rife_sink;
        let sink: &mut dyn FrameSink = match req.enable_frame_interpolation {
            true => {
                let (_, net) = self.rife.as_ref().expect("ensure() loads RIFE");
                rife_sink = InterpolatingSink::new(
                    net,
                    req.frame_interpolation_exp,
                    req.frame_interpolation_scale,
                    sink,
                );
                &mut rife_sink
            }
            false => sink,
        };
        let (n, out) = f(sink)?;
        let n = match req.enable_frame_interpolation {
            true => (n.max(1) - 1) * (1 << req.frame_interpolation_exp) + 1,
            false => n,
        };
        Ok((n, out))
    }
}

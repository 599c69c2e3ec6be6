//! Step 4 of diffusers' `HeliosPyramidPipeline.__call__`: image- and video-to-video
//! conditioning (`prepare_image_latents`, `prepare_video_latents` and the σ-noising that follows),
//! from decoded pixels to the anchor latent and the history fill.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::pipeline_helios_pyramid::{DenoiseParts, RunContext};
use crate::pipeline::error::PipelineError;
use crate::pipeline::models::autoencoder_kl_wan::AutoencoderKLWan;
use crate::pipeline::request::{Conditioning, GenerationRequest};

/// Latent frames ↔ video frames: the Wan VAE compresses 4× in time.
const VAE_SCALE_FACTOR_TEMPORAL: usize = 4;

/// The noised anchor latent `[1, 16, 1, h, w]` and what fills the history.
pub(super) type PreparedConditioning<B> = (Tensor<B, 5>, HistoryFill<B>);

/// Where the encoded conditioning goes in the history buffer.
pub(super) enum HistoryFill<B: Backend> {
    /// I2V: the fake image latent `[1, 16, 1, h, w]` replaces the last slot.
    LastSlot(Tensor<B, 5>),
    /// V2V: the video latents `[1, 16, n, h, w]` fill the end (zeros stay in front when
    /// `n < sum(history_sizes)`).
    Frames(Tensor<B, 5>),
}

/// diffusers' defaults of `image_noise_sigma_{min,max}` and `video_noise_sigma_{min,max}`.
const IMAGE_NOISE_SIGMA_MIN: f64 = 0.111;
const IMAGE_NOISE_SIGMA_MAX: f64 = 0.135;
const VIDEO_NOISE_SIGMA_MIN: f64 = 0.111;
const VIDEO_NOISE_SIGMA_MAX: f64 = 0.135;

impl<B: Backend> DenoiseParts<'_, B> {
    /// Step 4 of `__call__` (`prepare_image_latents` / `prepare_video_latents` and the noising
    /// that follows), in diffusers' order of draws:
    ///
    /// * image: `image.vae_sample`, `fake_image.vae_sample`, `image.noise_sigma` (uniform),
    ///   `image.noise`, `fake_image.noise_sigma` (uniform), `fake_image.noise`. The anchor is the
    ///   image encoded as one frame; the fake image latent (last latent of the image repeated
    ///   over one window) replaces the last history slot.
    /// * video: `video.first_frame.vae_sample`, `video.window{i}.vae_sample` per window of
    ///   `(t−1)·4+1` frames cut from the end (a leading remainder is dropped),
    ///   `image.noise_sigma`, `image.noise`, then per window `video.window{i}.noise_sigma`
    ///   (`t` uniform draws, one σ per latent frame) and `video.window{i}.noise`.
    ///
    /// Every latent is noised `x ← σ·ε + (1−σ)·x` with `σ = min + u·(max − min)`, `u ~ U[0,1)`.
    pub(super) fn prepare_conditioning(
        &self,
        req: &GenerationRequest,
        ctx: &mut RunContext<'_>,
        t_chunk: usize,
    ) -> Result<Option<PreparedConditioning<B>>, PipelineError> {
        let (pixels, is_video) = match &req.conditioning {
            Conditioning::None => return Ok(None),
            Conditioning::Image(p) => (p, false),
            Conditioning::Video(p) => (p, true),
            Conditioning::FirstLast(_) => {
                return Err(PipelineError::Unsupported(
                    "last_image: a first-last-frame video needs a Wan FLF2V checkpoint; Helios takes one image".into(),
                ));
            }
        };
        let (h, w) = (req.height as usize, req.width as usize);
        if (pixels.height, pixels.width) != (h, w)
            || pixels.data.len() != 3 * pixels.frames * h * w
            || pixels.frames == 0
        {
            return Err(PipelineError::Unsupported(format!(
                "the conditioning input is {} frame(s) of {}x{} ({} values); the request needs {w}x{h} pixels",
                pixels.frames,
                pixels.width,
                pixels.height,
                pixels.data.len()
            )));
        }
        if !is_video && pixels.frames != 1 {
            return Err(PipelineError::Unsupported(format!(
                "an image input must be one frame, got {}",
                pixels.frames
            )));
        }
        let window = (t_chunk - 1) * VAE_SCALE_FACTOR_TEMPORAL + 1;
        let device = self.device;
        let video = Tensor::<B, 5>::from_data(
            TensorData::new(pixels.data.clone(), [1, 3, pixels.frames, h, w]),
            (device, DType::F32),
        );
        let (lo_img, hi_img) = (IMAGE_NOISE_SIGMA_MIN, IMAGE_NOISE_SIGMA_MAX);
        let (lo_vid, hi_vid) = (VIDEO_NOISE_SIGMA_MIN, VIDEO_NOISE_SIGMA_MAX);
        if !is_video {
            // prepare_image_latents
            let image_latents = self.encode_sample(video.clone(), "image.vae_sample", ctx)?;
            let fake_video = video.repeat_dim(2, window);
            let fake_full = self.encode_sample(fake_video, "fake_image.vae_sample", ctx)?;
            let n = fake_full.dims()[2];
            let fake = fake_full.narrow(2, n - 1, 1);
            let image_latents = self.renoise(image_latents, "image", 1, (lo_img, hi_img), ctx)?;
            let fake = self.renoise(fake, "fake_image", 1, (lo_vid, hi_vid), ctx)?;
            return Ok(Some((image_latents, HistoryFill::LastSlot(fake))));
        }
        // prepare_video_latents
        let num_frames = pixels.frames;
        let num_windows = num_frames / window;
        if num_windows == 0 {
            return Err(PipelineError::Unsupported(format!(
                "the input video has {num_frames} frame(s); video-to-video needs at least {window}                  (one window of (num_latent_frames_per_chunk - 1) * 4 + 1 frames)"
            )));
        }
        let start_frame = num_frames - num_windows * window;
        let first = self.encode_sample(
            video.clone().narrow(2, 0, 1),
            "video.first_frame.vae_sample",
            ctx,
        )?;
        let mut windows = Vec::with_capacity(num_windows);
        for i in 0..num_windows {
            let chunk = video.clone().narrow(2, start_frame + i * window, window);
            windows.push(self.encode_sample(chunk, &format!("video.window{i}.vae_sample"), ctx)?);
        }
        let first = self.renoise(first, "image", 1, (lo_img, hi_img), ctx)?;
        let mut noisy = Vec::with_capacity(num_windows);
        for (i, latents) in windows.into_iter().enumerate() {
            let frames = latents.dims()[2];
            noisy.push(self.renoise(
                latents,
                &format!("video.window{i}"),
                frames,
                (lo_vid, hi_vid),
                ctx,
            )?);
        }
        Ok(Some((first, HistoryFill::Frames(Tensor::cat(noisy, 2)))))
    }

    /// `normalize(vae.encode(pixels).latent_dist.sample())` with the sample noise drawn as `name`,
    /// returned in f32 (diffusers: `.to(device=device, dtype=torch.float32)`).
    fn encode_sample(
        &self,
        pixels: Tensor<B, 5>,
        name: &str,
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        let (mean, logvar) = self.vae.encode(pixels);
        let dims = mean.dims();
        let eps = ctx.noise.standard_normal(name, &dims)?;
        let eps =
            Tensor::<B, 5>::from_data(TensorData::new(eps, dims), (self.device, mean.dtype()));
        let sample = AutoencoderKLWan::sample(mean, logvar, eps).cast(DType::F32);
        Ok(self.vae.normalize(sample))
    }

    /// `σ·ε + (1−σ)·x` with `frames` σ values (one per latent frame, or one for all when
    /// `frames == 1`) from the uniform draw `{prefix}.noise_sigma` and ε = `{prefix}.noise`.
    fn renoise(
        &self,
        x: Tensor<B, 5>,
        prefix: &str,
        frames: usize,
        (lo, hi): (f64, f64),
        ctx: &mut RunContext<'_>,
    ) -> Result<Tensor<B, 5>, PipelineError> {
        let u = ctx
            .noise
            .uniform(&format!("{prefix}.noise_sigma"), &[frames])?;
        // torch: rand(n) * (max − min) + min in float32.
        let (range, lo) = ((hi - lo) as f32, lo as f32);
        let sigmas: Vec<f32> = u.iter().map(|u| u * range + lo).collect();
        let sigma = Tensor::<B, 5>::from_data(
            TensorData::new(sigmas, [1, 1, frames, 1, 1]),
            (self.device, DType::F32),
        );
        let dims = x.dims();
        let eps = ctx
            .noise
            .standard_normal(&format!("{prefix}.noise"), &dims)?;
        let eps = Tensor::<B, 5>::from_data(TensorData::new(eps, dims), (self.device, DType::F32));
        let one_minus = sigma.clone().neg().add_scalar(1.0);
        Ok(sigma * eps + one_minus * x)
    }
}

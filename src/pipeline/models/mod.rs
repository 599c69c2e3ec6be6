//! Neural network modules, one file per reference class.

pub mod activations;
pub mod attention_dispatch;
pub mod attention_small_head;
pub mod autoencoder_kl_wan;
pub mod clip_vision_model;
pub mod conv3d_dispatch;
pub mod linear_dispatch;
pub mod modulation_dispatch;
pub mod rms_norm_dispatch;
pub mod transformer_helios;
pub mod transformer_wan;
pub mod umt5;

//! `disa`: MAR image generation with DiSA (diffusion step annealing), one library for the
//! `disa` command-line program and the browser demo.
//!
//! The pieces, from the outside in:
//! - [`sampler`]: [`Generation`], MAR's AR loop as a step-by-step state machine;
//! - [`model`]: the MAR transformer, the diffusion head, the VAE / patch decoders;
//! - [`diffusion`] and [`schedule`]: the DDPM tables and the DiSA / mask / CFG schedules;
//! - [`noise`]: seeded or replayed random streams;
//! - [`weights`]: reading official checkpoints and safetensors (a `Bundle` becomes a
//!   [`LoadedModel`] in `src/load.rs`, above both);
//! - [`base`]: what every layer shares: host tensors, the weight map, the clock;
//! - [`image`]: turning decoded tensors into RGB pixels;
//! - `train` and `eval`: training the small Fashion-MNIST MAR and measuring sample quality
//!   (native only).

pub mod analysis;
pub mod backend;
pub mod base;
#[cfg(not(target_arch = "wasm32"))]
pub mod data;
pub mod defaults;
pub mod diffusion;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
pub mod gpu;
pub mod image;
mod load;
pub mod model;
pub mod noise;
pub mod sampler;
pub mod schedule;
#[cfg(all(feature = "train", not(target_arch = "wasm32")))]
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod weights;

pub use error::{DisaError, Result};
pub use sampler::{Generation, LoadedModel, Request, StepEvent};
pub use schedule::{CfgSchedule, StepSchedule};

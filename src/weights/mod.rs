//! Reading weights: the official checkpoint layouts (`checkpoint-last.pth`, VAE `.ckpt`) and
//! safetensors, into a validated name → tensor map the model builders take from. Every check
//! (format, missing keys, shapes, non-finite values) happens here, before any tensor reaches a
//! module, so bad files give an error and never a panic.

#[cfg(not(target_arch = "wasm32"))]
pub mod atomic;
mod bundle;
#[cfg(not(target_arch = "wasm32"))]
mod files;
pub mod limits;
mod map;
#[cfg(not(target_arch = "wasm32"))]
mod pickle_scan;
pub mod quant;
#[cfg(not(target_arch = "wasm32"))]
mod torch_checkpoint;
mod usage;

#[cfg(not(target_arch = "wasm32"))]
pub use atomic::{write_atomic, write_atomic_with};
pub use bundle::{
    Bundle, BundleInfo, DecoderSpec, FORMAT_VERSION, SourceFile, Storage, StoredForm,
};
#[cfg(not(target_arch = "wasm32"))]
pub use files::{
    ModelFiles, PRESETS, config_from_spec, fingerprint, read_config_json, read_with_progress,
};
pub use map::{
    FileFormat, HostTensor, SNIFF_LEN, WeightMap, detect_format, is_mar_tensor,
    is_vae_decoder_tensor,
};
#[cfg(not(target_arch = "wasm32"))]
pub use torch_checkpoint::{save_torch_checkpoint, write_torch_checkpoint};
pub use usage::{mar_tensor_shapes, vae_tensor_shapes};

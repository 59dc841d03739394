//! Patch un-embedding: for models whose tokens are pixel patches (the project's small
//! Fashion-MNIST model), un-patchifying is the whole decoder; this only undoes the token
//! normalization.

use burn::module::Module;
use burn::tensor::Tensor;

/// Pixels from patch tokens: `image = tokens / scale`, the inverse of the training-time
/// normalization `token = pixel_in_[-1,1] · scale`.
#[derive(Module, Debug)]
pub struct PatchDecoder {
    /// Token scale used at training time.
    pub scale: f32,
}

impl PatchDecoder {
    /// # Shapes
    /// `latents [B, c, H, W]` (already un-patchified) → `[B, c, H, W]` in about [−1, 1].
    pub fn forward(&self, latents: Tensor<4>) -> Tensor<4> {
        latents.div_scalar(self.scale)
    }
}

//! Choosing the compute device: Burn's wgpu backend (Metal, Vulkan, DX12 natively; WebGPU in
//! the browser) or the pure-Rust CPU backend (`flex`), which also runs in wasm.

use crate::error::{Result, invalid};
use burn::tensor::Device;
use std::fmt;
use std::str::FromStr;

/// Whether `device` is the plain CPU backend, where the host-side kernels (GELU, SiLU, fused
/// attention, threaded parts) may take a tensor's values out and put new ones back.
///
/// Not `device == Device::flex()`: Burn's device equality ignores autodiff, so a training
/// device (`Device::flex().autodiff()`) compares equal, and a host round trip there would cut
/// the gradient (and orphan the forward graph, which then never frees).
pub fn is_plain_cpu(device: &Device) -> bool {
    *device == Device::flex() && !device.is_autodiff()
}

/// A backend a user can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Pure-Rust CPU backend (Burn's `flex`).
    Cpu,
    /// Burn's wgpu backend on the best adapter found.
    Wgpu,
}

impl FromStr for Backend {
    type Err = crate::DisaError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" | "webgpu" | "vulkan" | "metal" | "dx12" => Ok(Self::Wgpu),
            _ => Err(invalid!("unknown backend `{s}`: use cpu or wgpu")),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
        })
    }
}

impl Backend {
    /// The Burn device for this backend.
    ///
    /// # Errors
    /// When the wgpu backend was not compiled in.
    pub fn device(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            Self::Wgpu => wgpu_device(),
        }
    }
}

/// Burn's wgpu runtime on the default adapter, initialized once per process with its handles
/// registered for the fused kernels ([`crate::gpu`]).
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
fn wgpu_device() -> Result<Device> {
    use std::sync::OnceLock;
    static DEVICE: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let (device, setup) = Device::wgpu_options()
                .init_with_setup()
                .map_err(|e| format!("no usable GPU adapter for wgpu: {e}"))?;
            crate::gpu::register(&device, &setup);
            Ok(device)
        })
        .clone()
        .map_err(crate::DisaError::Device)
}

#[cfg(target_arch = "wasm32")]
fn wgpu_device() -> Result<Device> {
    Ok(Device::webgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(all(not(feature = "wgpu"), not(target_arch = "wasm32")))]
fn wgpu_device() -> Result<Device> {
    Err(invalid!(
        "this build has no wgpu backend (built without the `wgpu` feature)"
    ))
}

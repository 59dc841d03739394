//! Which Burn devices have wgpu handles we can launch our own kernels on.

use burn::tensor::Device;
use burn::tensor::wgpu::{WgpuSetup, wgpu};
use std::sync::Arc;

/// The wgpu handles behind one Burn wgpu device.
#[derive(Debug)]
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::AdapterInfo,
}

impl GpuContext {
    /// Keeps the device and queue of the setup Burn's runtime was initialized with.
    pub fn from_setup(setup: &WgpuSetup) -> Self {
        Self {
            device: setup.device.clone(),
            queue: setup.queue.clone(),
            adapter: setup.adapter.get_info(),
        }
    }

    /// Whether the adapter is a software one that runs on the CPU (see [`is_software`]).
    pub fn is_software(&self) -> bool {
        is_software(&self.adapter)
    }
}

/// Whether an adapter is software running on the CPU (lavapipe/llvmpipe, SwiftShader): by its
/// device type, or by name where a browser reports no type.
pub fn is_software(adapter: &wgpu::AdapterInfo) -> bool {
    let name = adapter.name.to_ascii_lowercase();
    matches!(adapter.device_type, wgpu::DeviceType::Cpu)
        || name.contains("swiftshader")
        || name.contains("llvmpipe")
}

// wgpu handles are not `Send` in the browser (one worker thread owns them), so the registry
// is per thread there and process-wide natively.
#[cfg(target_arch = "wasm32")]
thread_local! {
    static REGISTRY: std::cell::RefCell<Vec<(Device, Arc<GpuContext>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(not(target_arch = "wasm32"))]
static REGISTRY: std::sync::Mutex<Vec<(Device, Arc<GpuContext>)>> =
    std::sync::Mutex::new(Vec::new());

/// Records the wgpu handles of `device`.
pub fn register(device: &Device, setup: &WgpuSetup) {
    let ctx = Arc::new(GpuContext::from_setup(setup));
    #[cfg(target_arch = "wasm32")]
    REGISTRY.with(|r| r.borrow_mut().push((device.clone(), ctx)));
    #[cfg(not(target_arch = "wasm32"))]
    REGISTRY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((device.clone(), ctx));
}

/// The wgpu handles of `device`, if it is a registered GPU device.
pub fn context(device: &Device) -> Option<Arc<GpuContext>> {
    let find = |entries: &Vec<(Device, Arc<GpuContext>)>| {
        entries
            .iter()
            .find(|(d, _)| d == device)
            .map(|(_, c)| c.clone())
    };
    #[cfg(target_arch = "wasm32")]
    return REGISTRY.with(|r| find(&r.borrow()));
    #[cfg(not(target_arch = "wasm32"))]
    return find(&REGISTRY.lock().unwrap_or_else(|e| e.into_inner()));
}

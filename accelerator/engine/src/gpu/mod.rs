//! The accelerator's GPU layer: finds NVIDIA GPUs through the CUDA driver API, stages a batch's
//! inputs into device memory with as few host-to-device copies as possible, and checks a GPU end
//! to end (copies, run-time compiled kernels, a worker's copy load).
//!
//! Everything here goes through [`cudarc`] with the driver library (`libcuda.so`) and NVRTC
//! (`libnvrtc.so`) loaded at run time, so the crate builds and its tests run on machines without
//! CUDA. cudarc panics when it is asked to call into a library that cannot be loaded; every entry
//! point here checks that the library is present first ([`driver_present`]) and answers
//! [`GpuError::NoDriver`] instead, and also turns any other panic inside cudarc into an error.
//!
//! # Contents
//! - [`discover`]: the GPUs of this machine ([`GpuInfo`]).
//! - [`plan_copies`]: sans-IO plan of a batch's host-to-device copies: parts adjacent in host
//!   memory (consecutive slots of one arena) become one copy.
//! - [`GpuStaging`]: one worker's device input/output buffers, pinned host buffers and stream.
//! - [`nvrtc_smoke`], [`copy_check`], [`load_check`]: the checks run by `qdl-gpu-check`.

mod checks;
mod plan;
mod staging;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use cudarc::driver::{CudaContext, DriverError, result, sys};

pub use checks::{copy_check, load_check, nvrtc_smoke};
pub use plan::{CopyRun, plan_copies};
pub use staging::{GpuStaging, UploadStats};

/// The reason given when the driver library cannot be loaded.
const NO_DRIVER: &str = "libcuda.so cannot be loaded: no NVIDIA driver on this machine";

/// Errors of the GPU layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The CUDA driver cannot be used at all on this machine.
    #[error("no usable NVIDIA driver: {reason}")]
    NoDriver {
        /// Why, e.g. "libcuda.so cannot be loaded: no NVIDIA driver on this machine".
        reason: String,
    },
    /// The driver works but has no GPU of this ordinal.
    #[error("no GPU {ordinal}: the driver reports {count} GPU(s)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: u32,
        /// How many GPUs the driver reports.
        count: usize,
    },
    /// A CUDA driver call failed; the text names the call, what it was for, and the CUDA error.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// Run-time compilation with NVRTC failed, or NVRTC cannot be loaded; the text has the log.
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// A buffer is too small for what was asked.
    #[error("{what} too small: need {need} B, have {have} B")]
    Capacity {
        /// Which buffer ("device input buffer", ...).
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Description of a GPU, as [`discover`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// CUDA device ordinal (as `CUDA_VISIBLE_DEVICES` renumbers them).
    pub ordinal: u32,
    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Total device memory in bytes.
    pub total_bytes: u64,
    /// Free device memory in bytes at discovery time.
    pub free_bytes: u64,
    /// Compute capability (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
}

/// Whether the CUDA driver library (`libcuda.so`, `nvcuda.dll`) can be loaded. Answered once per
/// process and cached. A loadable library may still be unusable (the CUDA toolkit's stub, a driver
/// older than needed): [`discover`] tells.
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: `is_culib_present` only tries `dlopen` (and `dlclose`) on the fixed names of NVIDIA's
    // driver library; running that library's initialisers has no precondition on our side.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// Whether the NVRTC library (`libnvrtc.so`, part of the CUDA toolkit, not of the driver) can be
/// loaded. Answered once per process and cached.
pub fn nvrtc_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: as in `driver_present`: only `dlopen`/`dlclose` of NVIDIA's fixed NVRTC names.
    *PRESENT.get_or_init(|| unsafe { cudarc::nvrtc::sys::is_culib_present() })
}

/// The GPUs of this machine, in ordinal order.
///
/// Errors: [`GpuError::NoDriver`] when the driver library cannot be loaded (reason: "libcuda.so
/// cannot be loaded: no NVIDIA driver on this machine") or is the CUDA toolkit's stub library.
/// When the driver loads but has no GPU (`cuInit` answers `CUDA_ERROR_NO_DEVICE`, as in a container
/// started without GPUs, or the device count is 0) the answer is `Ok` with an empty list: callers
/// that need a GPU check for emptiness.
pub fn discover() -> Result<Vec<GpuInfo>, GpuError> {
    guarded("discover", || {
        let count = init_driver()?;
        (0..count).map(gpu_info).collect()
    })
}

/// The CUDA version the driver supports, as (major, minor), e.g. (12, 4).
pub fn driver_version() -> Result<(u32, u32), GpuError> {
    guarded("driver_version", || {
        if !driver_present() {
            return Err(no_driver());
        }
        let mut v: std::ffi::c_int = 0;
        // SAFETY: the library is present (checked above) and `v` is a valid place for the one
        // integer the call writes; `cuDriverGetVersion` needs no `cuInit`.
        unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(cuda_err("cuDriverGetVersion"))?;
        let v = u32::try_from(v).unwrap_or(0);
        Ok((v / 1000, (v % 1000) / 10))
    })
}

fn gpu_info(index: usize) -> Result<GpuInfo, GpuError> {
    let ordinal = u32::try_from(index).unwrap_or(u32::MAX);
    let ctx = CudaContext::new(index).map_err(cuda_err(format_args!("cuDevicePrimaryCtxRetain on GPU {ordinal}")))?;
    let name = ctx.name().map_err(cuda_err(format_args!("cuDeviceGetName on GPU {ordinal}")))?;
    let total = ctx.total_mem().map_err(cuda_err(format_args!("cuDeviceTotalMem on GPU {ordinal}")))?;
    let (free, _) = ctx.mem_get_info().map_err(cuda_err(format_args!("cuMemGetInfo on GPU {ordinal}")))?;
    let compute_capability =
        ctx.compute_capability().map_err(cuda_err(format_args!("cuDeviceGetAttribute on GPU {ordinal}")))?;
    Ok(GpuInfo { ordinal, name, total_bytes: total as u64, free_bytes: free as u64, compute_capability })
}

/// Loads and initialises the driver; answers the number of GPUs (0 when the driver has none).
fn init_driver() -> Result<usize, GpuError> {
    if !driver_present() {
        return Err(no_driver());
    }
    match result::init() {
        Ok(()) => {}
        Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => return Ok(0),
        Err(e) if e.0 == sys::CUresult::CUDA_ERROR_STUB_LIBRARY => {
            return Err(GpuError::NoDriver {
                reason: "the libcuda.so found is the CUDA toolkit's stub library, not a driver: \
                         no NVIDIA driver on this machine"
                    .into(),
            });
        }
        Err(e) => return Err(cuda_err("cuInit")(e)),
    }
    let count = result::device::get_count().map_err(cuda_err("cuDeviceGetCount"))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// The primary context of GPU `ordinal`, bound to the calling thread, after checking that the
/// driver is there and the GPU exists (so cudarc never panics on a missing library).
fn open_context(ordinal: u32) -> Result<std::sync::Arc<CudaContext>, GpuError> {
    let count = init_driver()?;
    if ordinal as usize >= count {
        return Err(GpuError::NoDevice { ordinal, count });
    }
    CudaContext::new(ordinal as usize).map_err(cuda_err(format_args!("cuDevicePrimaryCtxRetain on GPU {ordinal}")))
}

fn no_driver() -> GpuError {
    GpuError::NoDriver { reason: NO_DRIVER.into() }
}

/// A CUDA error as "CUDA_ERROR_OUT_OF_MEMORY (out of memory)".
fn describe(e: DriverError) -> String {
    let name = format!("{:?}", e.0);
    match e.error_string() {
        Ok(text) => format!("{name} ({})", text.to_string_lossy()),
        Err(_) => name,
    }
}

/// Maps a driver error to [`GpuError::Cuda`] naming the failed `call` (and what it was for).
fn cuda_err(call: impl std::fmt::Display) -> impl FnOnce(DriverError) -> GpuError {
    move |e| GpuError::Cuda(format!("{call} failed: {}", describe(e)))
}

/// Runs `f`, turning a panic inside cudarc (a library or symbol it cannot load) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, GpuError>) -> Result<T, GpuError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(GpuError::Cuda(format!("{what}: cudarc panicked: {msg}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_well() {
        let e = GpuError::Capacity { what: "device input buffer", need: 10, have: 4 };
        assert_eq!(e.to_string(), "device input buffer too small: need 10 B, have 4 B");
        let e = GpuError::NoDevice { ordinal: 3, count: 1 };
        assert_eq!(e.to_string(), "no GPU 3: the driver reports 1 GPU(s)");
        assert!(no_driver().to_string().contains(NO_DRIVER));
    }

    #[test]
    fn guarded_turns_panics_into_errors() {
        let r: Result<(), GpuError> = guarded("test", || panic!("Missing symbol cuFoo"));
        assert_eq!(r, Err(GpuError::Cuda("test: cudarc panicked: Missing symbol cuFoo".into())));
    }
}

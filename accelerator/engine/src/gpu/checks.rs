//! End-to-end checks of a GPU, as `qdl-gpu-check` runs them: run-time compilation and a kernel,
//! batched copies (byte for byte), and a worker's copy load.

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use cudarc::driver::{LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{Ptx, result as nvrtc_result, sys as nvrtc_sys};

use super::staging::alloc_pinned;
use super::{GpuError, GpuStaging, cuda_err, guarded, nvrtc_present, open_context, plan_copies};

/// Bytes of one ResNet-50 sample (224 × 224 × 3, u8), the slot size of the copy checks.
const SLOT: usize = 150_528;
/// Samples per batch in the checks.
const BATCH: usize = 64;
/// Bytes of one sample's answer in the load check (one i32 class index).
const ANSWER: usize = 4;

const SAXPY_SRC: &str = r#"
extern "C" __global__ void saxpy(float a, const float* x, float b, float* y, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = a * x[i] + b;
    }
}
"#;

/// Compiles a saxpy kernel (`y[i] = a·x[i] + b`) with NVRTC at run time, runs it over 1 Mi floats
/// on its own stream of GPU `ordinal`, copies the result back and checks every element on the
/// host. The kernel is compiled to a cubin for the GPU's architecture; when this NVRTC cannot
/// (older than the GPU, or newer than the driver accepts), to PTX that the driver compiles.
///
/// Errors: [`GpuError::NoDriver`]/[`GpuError::NoDevice`] as for [`GpuStaging::new`];
/// [`GpuError::Nvrtc`] when `libnvrtc.so` (CUDA toolkit) cannot be loaded or compilation fails.
pub fn nvrtc_smoke(ordinal: u32) -> Result<String, GpuError> {
    guarded("nvrtc_smoke", || {
        let ctx = open_context(ordinal)?;
        if !super::nvrtc_present() {
            return Err(GpuError::Nvrtc(
                "libnvrtc.so cannot be loaded: install the CUDA toolkit's NVRTC (e.g. the cuda-nvrtc package) \
                 or add its directory to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let (major, minor) =
            ctx.compute_capability().map_err(cuda_err(format_args!("cuDeviceGetAttribute on GPU {ordinal}")))?;
        let attempts = [
            (Some(format!("--gpu-architecture=sm_{major}{minor}")), true, format!("sm_{major}{minor} cubin")),
            (Some(format!("--gpu-architecture=compute_{major}{minor}")), false, format!("compute_{major}{minor} PTX")),
            (None, false, "default-arch PTX".to_string()),
        ];
        let mut failures = Vec::new();
        let mut loaded = None;
        for (arch, cubin, label) in attempts {
            let module = compile(SAXPY_SRC, arch, cubin).and_then(|image| {
                ctx.load_module(image).map_err(cuda_err(format_args!("cuModuleLoadData ({label}) on GPU {ordinal}")))
            });
            match module {
                Ok(m) => {
                    loaded = Some((m, label));
                    break;
                }
                Err(e) => failures.push(format!("{label}: {e}")),
            }
        }
        let Some((module, label)) = loaded else {
            return Err(GpuError::Nvrtc(failures.join("; ")));
        };
        let saxpy = module.load_function("saxpy").map_err(cuda_err("cuModuleGetFunction (saxpy)"))?;

        const N: u32 = 1 << 20;
        let (a, b) = (3.0f32, -2.0f32);
        // Small integers: a·x + b is exact in f32 with or without a fused multiply-add.
        let x: Vec<f32> = (0..N).map(|i| (i % 8192) as f32).collect();
        let stream = ctx.new_stream().map_err(cuda_err(format_args!("cuStreamCreate on GPU {ordinal}")))?;
        let x_dev = stream.clone_htod(&x).map_err(cuda_err("cuMemcpyHtoDAsync (saxpy x)"))?;
        let mut y_dev = stream.alloc_zeros::<f32>(N as usize).map_err(cuda_err("cuMemAlloc (saxpy y)"))?;
        let n = N;
        let mut launch = stream.launch_builder(&saxpy);
        launch.arg(&a).arg(&x_dev).arg(&b).arg(&mut y_dev).arg(&n);
        // SAFETY: the arguments match the kernel's parameters in order and type (f32, const
        // float*, f32, float*, unsigned int); `x_dev` and `y_dev` hold `n` floats each and the
        // kernel touches index `i` only when `i < n`.
        unsafe { launch.launch(LaunchConfig::for_num_elems(N)) }.map_err(cuda_err("cuLaunchKernel (saxpy)"))?;
        let y = stream.clone_dtoh(&y_dev).map_err(cuda_err("cuMemcpyDtoHAsync (saxpy y)"))?;
        stream.synchronize().map_err(cuda_err("cuStreamSynchronize (saxpy)"))?;
        if let Some(i) = (0..N as usize).find(|&i| y[i] != a * x[i] + b) {
            return Err(GpuError::Cuda(format!(
                "saxpy on GPU {ordinal}: y[{i}] = {} but {a}·{} + {b} = {}",
                y[i],
                x[i],
                a * x[i] + b
            )));
        }
        Ok(format!("saxpy over {N} floats verified ({label}, NVRTC {})", nvrtc_version()))
    })
}

/// Copies a batch from a slot arena to GPU `ordinal` and back, byte for byte: 6 of 64 ResNet-sized
/// slots (0, 1, 2, 5, 6, 9: three runs of adjacent slots), uploaded once from a pageable arena
/// (staged: one copy) and once from a pinned arena (one copy per run, checked against
/// [`plan_copies`]), each time read back from the device input buffer and compared with the
/// concatenation of the parts.
pub fn copy_check(ordinal: u32) -> Result<String, GpuError> {
    guarded("copy_check", || {
        const SLOTS: usize = 64;
        let picked = [0usize, 1, 2, 5, 6, 9];
        let mut staging = GpuStaging::new(ordinal, picked.len() * SLOT, BATCH * ANSWER)?;
        let total = picked.len() * SLOT;

        let pageable: Vec<u8> = (0..SLOTS * SLOT).map(pattern).collect();
        let mut pinned = alloc_pinned(staging.context(), SLOTS * SLOT, "pinned slot arena")?;
        pinned.as_mut_slice().map_err(cuda_err("pinned slot arena"))?.copy_from_slice(&pageable);
        let pinned = pinned.as_slice().map_err(cuda_err("pinned slot arena"))?;

        let mut report = Vec::new();
        let mut runs = 0;
        for (arena, is_pinned) in [(pageable.as_slice(), false), (pinned, true)] {
            let parts: Vec<&[u8]> = picked.iter().map(|&s| &arena[s * SLOT..(s + 1) * SLOT]).collect();
            runs = plan_copies(&parts).len();
            staging.fill_input(0xA5)?;
            let stats = staging.upload(&parts, is_pinned)?;
            let expected_copies = if is_pinned { runs } else { 1 };
            let source = if is_pinned { "pinned" } else { "pageable" };
            if stats.copies != expected_copies || stats.bytes != total || stats.staged == is_pinned {
                return Err(GpuError::Cuda(format!(
                    "{source} upload on GPU {ordinal}: {stats:?}, expected {expected_copies} copies of {total} B"
                )));
            }
            let back = staging.read_input(total)?;
            if let Some(at) = first_difference(&back, &parts) {
                return Err(GpuError::Cuda(format!(
                    "{source} upload on GPU {ordinal}: device input differs from the parts at byte {at}"
                )));
            }
            report.push(format!("{source} {} copy(ies)", stats.copies));
        }
        Ok(format!("{} slots in {runs} runs, {total} B verified: {}", picked.len(), report.join(", ")))
    })
}

/// A worker under copy load on GPU `ordinal` for `seconds`: batches of 64 ResNet-sized samples
/// (150528 B) uploaded from a pinned arena of 256 slots (each batch 64 consecutive slots from a
/// start that moves by 67, wrapping at the arena's end: one or two copies), and 64 × 4 B of answers
/// downloaded, back to back. Reports batches/s and the host-to-device rate; the last batch is read
/// back and verified.
pub fn load_check(ordinal: u32, seconds: f64) -> Result<String, GpuError> {
    guarded("load_check", || {
        const SLOTS: usize = 256;
        let mut staging = GpuStaging::new(ordinal, BATCH * SLOT, BATCH * ANSWER)?;
        let mut arena = alloc_pinned(staging.context(), SLOTS * SLOT, "pinned slot arena")?;
        for (i, b) in arena.as_mut_slice().map_err(cuda_err("pinned slot arena"))?.iter_mut().enumerate() {
            *b = pattern(i);
        }
        let arena = arena.as_slice().map_err(cuda_err("pinned slot arena"))?;
        let batch_parts = |k: usize| -> Vec<&[u8]> {
            (0..BATCH).map(|j| (k * 67 + j) % SLOTS).map(|s| &arena[s * SLOT..(s + 1) * SLOT]).collect()
        };
        let mut answers = vec![0u8; BATCH * ANSWER];
        let limit = Duration::from_secs_f64(if seconds.is_finite() { seconds.clamp(0.0, 86_400.0) } else { 0.0 });
        let (mut batches, mut copies, mut bytes) = (0usize, 0usize, 0usize);
        let start = Instant::now();
        loop {
            let stats = staging.upload(&batch_parts(batches), true)?;
            staging.download(BATCH * ANSWER, &mut answers)?;
            batches += 1;
            copies += stats.copies;
            bytes += stats.bytes;
            if start.elapsed() >= limit {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let last = batch_parts(batches - 1);
        if let Some(at) = first_difference(&staging.read_input(BATCH * SLOT)?, &last) {
            return Err(GpuError::Cuda(format!("load on GPU {ordinal}: last batch differs at byte {at}")));
        }
        Ok(format!(
            "{batches} batches in {secs:.2} s: {:.0} batches/s, {:.1} GB/s H2D, {:.2} copies/batch",
            batches as f64 / secs,
            bytes as f64 / secs / 1e9,
            copies as f64 / batches as f64
        ))
    })
}

/// Content of byte `i` of a check arena: varies within and across slots.
fn pattern(i: usize) -> u8 {
    let slot = i / SLOT;
    (i.wrapping_mul(7) ^ slot.wrapping_mul(131) ^ (i >> 9)) as u8
}

/// Where `got` first differs from the concatenation of `parts`, if anywhere.
fn first_difference(got: &[u8], parts: &[&[u8]]) -> Option<usize> {
    let mut at = 0;
    for part in parts {
        let Some(seg) = got.get(at..at + part.len()) else {
            return Some(at);
        };
        if let Some(i) = seg.iter().zip(part.iter()).position(|(a, b)| a != b) {
            return Some(at + i);
        }
        at += part.len();
    }
    (at != got.len()).then_some(at)
}

/// Compiles `src` with NVRTC to a cubin (`cubin`) or to PTX, with an optional architecture option.
fn compile(src: &str, arch: Option<String>, cubin: bool) -> Result<Ptx, GpuError> {
    struct Program(nvrtc_sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: the program was created by `create_program` and is destroyed only here.
            let _ = unsafe { nvrtc_result::destroy_program(self.0) };
        }
    }
    let src = CString::new(src).map_err(|e| GpuError::Nvrtc(e.to_string()))?;
    // `src` is declared before `prog`, so it outlives it, as NVRTC requires.
    let prog = Program(
        nvrtc_result::create_program(&src, Some(c"qdl_check.cu"))
            .map_err(|e| GpuError::Nvrtc(format!("nvrtcCreateProgram failed: {e:?}")))?,
    );
    let options: Vec<String> = arch.into_iter().collect();
    // SAFETY: `prog.0` is a live program (destroyed only when `prog` drops).
    if let Err(e) = unsafe { nvrtc_result::compile_program(prog.0, &options) } {
        // SAFETY: as above.
        let log = unsafe { nvrtc_result::get_program_log(prog.0) }.map(|l| c_chars(&l)).unwrap_or_default();
        return Err(GpuError::Nvrtc(format!("nvrtcCompileProgram {options:?} failed: {e:?}: {}", log.trim())));
    }
    if cubin {
        let mut size = 0usize;
        // SAFETY: `prog.0` is live and compiled; `size` is a valid place for the size.
        unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size) }
            .result()
            .map_err(|e| GpuError::Nvrtc(format!("nvrtcGetCUBINSize failed: {e:?}")))?;
        let mut image = vec![0u8; size];
        // SAFETY: `image` has the `size` bytes NVRTC reported for this program's cubin.
        unsafe { nvrtc_sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| GpuError::Nvrtc(format!("nvrtcGetCUBIN failed: {e:?}")))?;
        Ok(Ptx::from_binary(image))
    } else {
        // SAFETY: `prog.0` is live and compiled.
        let ptx = unsafe { nvrtc_result::get_ptx(prog.0) }
            .map_err(|e| GpuError::Nvrtc(format!("nvrtcGetPTX failed: {e:?}")))?;
        Ok(Ptx::from_src(c_chars(&ptx)))
    }
}

/// A NUL-terminated C character buffer as a string.
fn c_chars(buf: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
}

/// NVRTC's version, as "12.4".
fn nvrtc_version() -> String {
    if !nvrtc_present() {
        return "absent".into();
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the call writes two integers to valid places.
    match unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }.result() {
        Ok(()) => format!("{major}.{minor}"),
        Err(e) => format!("unknown ({e:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_the_byte() {
        let a = [1u8, 2, 3];
        let b = [4u8, 5];
        let parts: [&[u8]; 2] = [&a, &b];
        assert_eq!(first_difference(&[1, 2, 3, 4, 5], &parts), None);
        assert_eq!(first_difference(&[1, 2, 3, 4, 6], &parts), Some(4));
        assert_eq!(first_difference(&[1, 2, 3, 4], &parts), Some(3));
        assert_eq!(first_difference(&[1, 2, 3, 4, 5, 6], &parts), Some(5));
    }

    #[test]
    fn pattern_differs_between_slots() {
        assert_ne!((0..64).map(pattern).collect::<Vec<_>>(), (SLOT..SLOT + 64).map(pattern).collect::<Vec<_>>());
    }
}

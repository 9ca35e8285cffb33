//! Where llama.cpp put a model's weights, read from its own load log (llama.h has no query for
//! it), and the GPUs its ggml backends found.
//!
//! While [`super::LoadedModel::load_with`] loads a model, [`observe`] sees llama.cpp's log lines
//! (the engine's log callback hands each one over) and keeps those of `load_tensors`:
//!
//! ```text
//! load_tensors: offloaded 31/31 layers to GPU
//! load_tensors:        CUDA0 model buffer size =    51.30 MiB
//! load_tensors:   CPU_Mapped model buffer size =    13.06 MiB
//! ```
//!
//! A llama.cpp without a GPU backend prints no `offloaded` line (it cannot offload), and its
//! buffers are the CPU's. So a model is on a GPU exactly when some layers were offloaded and a
//! weight buffer is a CUDA device's (`CUDA0`; `CUDA_Host` is pinned host memory): a build that
//! silently fell back to the CPU says so.

use std::sync::{Mutex, MutexGuard};

/// Where one model's weights went; see the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    /// Layers put on a GPU, of the model's offloadable layers (its layers and the output layer),
    /// when llama.cpp can offload at all.
    pub offloaded: Option<(u32, u32)>,
    /// The model's weight buffers as llama.cpp names them (`CUDA0`, `CPU_Mapped`, ...), MiB.
    pub buffers: Vec<(String, f64)>,
}

impl Placement {
    /// Whether weights are in a GPU's memory: some layers offloaded, and a buffer on a CUDA device.
    pub fn on_gpu(&self) -> bool {
        self.offloaded.is_some_and(|(n, _)| n > 0) && self.buffers.iter().any(|(b, _)| is_cuda_device(b))
    }

    /// Whether every offloadable layer is on a GPU.
    pub fn all_on_gpu(&self) -> bool {
        self.on_gpu() && self.offloaded.is_some_and(|(n, of)| n == of)
    }

    /// One line for logs and checks: `31/31 layers on the GPU; weights CUDA0 51.3 MiB, CPU_Mapped
    /// 13.1 MiB`.
    pub fn describe(&self) -> String {
        let layers = match self.offloaded {
            Some((n, of)) => format!("{n}/{of} layers on the GPU"),
            None => "no GPU offload (llama.cpp without a GPU backend)".to_string(),
        };
        let buffers: Vec<String> = self.buffers.iter().map(|(name, mib)| format!("{name} {mib:.1} MiB")).collect();
        if buffers.is_empty() { layers } else { format!("{layers}; weights {}", buffers.join(", ")) }
    }
}

/// `CUDA` followed by a device number.
fn is_cuda_device(name: &str) -> bool {
    name.strip_prefix("CUDA").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The placement being observed, while a model loads.
static SEEN: Mutex<Option<Placement>> = Mutex::new(None);

fn seen() -> MutexGuard<'static, Option<Placement>> {
    SEEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts observing a load (the caller holds the lock that serialises loads).
pub(super) fn start() {
    *seen() = Some(Placement::default());
}

/// Ends observing and returns what the load's log said.
pub(super) fn finish() -> Placement {
    seen().take().unwrap_or_default()
}

/// One line of llama.cpp's log (trailing whitespace trimmed).
pub(super) fn observe(text: &str) {
    let Some(rest) = text.strip_prefix("load_tensors:") else { return };
    if let Some(p) = seen().as_mut() {
        parse(rest.trim(), p);
    }
}

/// Reads one `load_tensors:` line (after the prefix) into `p`.
fn parse(line: &str, p: &mut Placement) {
    if let Some(rest) = line.strip_prefix("offloaded ")
        && let Some((counts, _)) = rest.split_once(" layers to GPU")
        && let Some((n, of)) = counts.split_once('/')
        && let (Ok(n), Ok(of)) = (n.parse(), of.parse())
    {
        p.offloaded = Some((n, of));
    } else if let Some((name, size)) = line.split_once(" model buffer size =")
        && let Some(mib) = size.trim().strip_suffix("MiB").and_then(|m| m.trim().parse().ok())
    {
        p.buffers.push((name.trim().to_string(), mib));
    }
}

/// The GPUs llama.cpp's ggml backends found, as `CUDA0 (NVIDIA H200, 139.7 GiB)`: none with
/// CPU-only libraries, whatever the machine has.
pub(super) fn gpu_devices() -> Vec<String> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, T::Gpu | T::IntegratedGpu))
        .map(|d| format!("{} ({}, {:.1} GiB)", d.name, d.description, d.memory_total as f64 / (1u64 << 30) as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(lines: &[&str]) -> Placement {
        let mut p = Placement::default();
        for l in lines {
            parse(l.strip_prefix("load_tensors:").unwrap().trim(), &mut p);
        }
        p
    }

    #[test]
    fn a_cuda_load_log_is_on_the_gpu() {
        let p = placement(&[
            "load_tensors: offloading output layer to GPU",
            "load_tensors: offloading 30 repeating layers to GPU",
            "load_tensors: offloaded 31/31 layers to GPU",
            "load_tensors:        CUDA0 model buffer size =    51.30 MiB",
            "load_tensors:   CPU_Mapped model buffer size =    13.06 MiB",
        ]);
        assert_eq!(p.offloaded, Some((31, 31)));
        assert_eq!(p.buffers, vec![("CUDA0".to_string(), 51.3), ("CPU_Mapped".to_string(), 13.06)]);
        assert!(p.on_gpu() && p.all_on_gpu());
        assert_eq!(p.describe(), "31/31 layers on the GPU; weights CUDA0 51.3 MiB, CPU_Mapped 13.1 MiB");
    }

    #[test]
    fn a_cpu_load_log_or_none_offloaded_is_not() {
        let cpu = placement(&["load_tensors:   CPU_Mapped model buffer size =    64.36 MiB"]);
        assert!(!cpu.on_gpu());
        assert!(cpu.describe().starts_with("no GPU offload"), "{}", cpu.describe());
        // A CUDA build told to offload nothing: pinned host memory is not the GPU.
        let none = placement(&[
            "load_tensors: offloaded 0/31 layers to GPU",
            "load_tensors:    CUDA_Host model buffer size =    64.36 MiB",
        ]);
        assert!(!none.on_gpu());
        let some = placement(&[
            "load_tensors: offloaded 8/31 layers to GPU",
            "load_tensors: CUDA1 model buffer size = 9.5 MiB",
        ]);
        assert!(some.on_gpu() && !some.all_on_gpu());
    }

    #[test]
    fn other_lines_are_ignored() {
        let mut p = Placement::default();
        for l in ["loading model tensors, this can take a while... (mmap = true)", "offloaded x/y layers to GPU", ""] {
            parse(l, &mut p);
        }
        assert_eq!(p, Placement::default());
        assert!(!is_cuda_device("CUDA") && !is_cuda_device("CUDA_Host") && is_cuda_device("CUDA12"));
    }
}

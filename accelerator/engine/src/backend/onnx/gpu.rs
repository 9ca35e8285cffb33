//! The onnx backend on a GPU worker with the CUDA execution provider: the batch's inputs go
//! through the worker's own pinned staging and device buffers ([`crate::gpu::GpuStaging`]) and
//! ONNX Runtime reads them in place.
//!
//! Per batch:
//! 1. the samples' tensors are planned as parts, tensor by tensor (all samples' first tensor,
//!    then all samples' second, ...; zero rows pad a fixed batch), and uploaded: pieces adjacent
//!    in host memory become one copy, and pageable memory is staged through pinned memory first,
//!    so a batch is one host→device transfer;
//! 2. the stream is synchronized, then each input is a tensor over its range of the device input
//!    buffer (no copy by ONNX Runtime);
//! 3. ONNX Runtime returns the selected outputs in host memory (one device→host copy per output
//!    tensor), which are split into the samples' answers as on the CPU.
//!
//! f16 inputs (no `half` element type in this build of `ort`) take the host path instead, where
//! ONNX Runtime copies the inputs itself.

use std::borrow::Cow;

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{Session, SessionInputValue};
use ort::value::{Shape, TensorRefMut};
use qdl_shared::workload::DType;

use super::model::ModelInfo;
use super::{OnnxError, split_outputs};
use crate::backend::Batch;
use crate::gpu::GpuStaging;

/// A GPU worker's staging for the onnx backend; see the module docs.
pub struct GpuIo {
    staging: GpuStaging,
    ordinal: u32,
    zeros: Vec<u8>,
}

impl GpuIo {
    /// Staging on GPU `ordinal` (grown to the first batches' needs).
    pub fn new(ordinal: u32) -> Result<GpuIo, OnnxError> {
        let staging = GpuStaging::new(ordinal, 1 << 20, 1 << 16).map_err(|e| OnnxError::Run(e.to_string()))?;
        Ok(GpuIo { staging, ordinal, zeros: Vec::new() })
    }

    /// Whether this batch can take the device path.
    pub fn supports(batch: &Batch<'_>) -> bool {
        batch.spec.inputs.iter().all(|t| t.dtype != DType::F16)
    }

    /// Runs `batch` padded to `rows` on the device; outputs go to `output`.
    pub fn run(
        &mut self,
        session: &mut Session,
        options: &ort::session::RunOptions<ort::session::HasSelectedOutputs>,
        _info: &ModelInfo,
        batch: &Batch<'_>,
        rows: usize,
        output: &mut [u8],
    ) -> Result<(), OnnxError> {
        let spec = batch.spec;
        let (n, ib) = (batch.n, spec.input_bytes());
        let fail = |e: crate::gpu::GpuError| OnnxError::Run(format!("GPU {}: {e}", self.ordinal));
        let need_in = rows * ib;
        let pad = spec.inputs.iter().map(|t| (rows - n) * t.bytes()).max().unwrap_or(0);
        if self.zeros.len() < pad {
            self.zeros.resize(pad, 0);
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(spec.inputs.len() * (n + 1));
        let mut offset = 0;
        for t in &spec.inputs {
            let b = t.bytes();
            for i in 0..n {
                parts.push(&batch.input[i * ib + offset..i * ib + offset + b]);
            }
            if rows > n {
                parts.push(&self.zeros[..(rows - n) * b]);
            }
            offset += b;
        }
        if self.staging.input_capacity() < need_in {
            let out = self.staging.output_capacity();
            self.staging.grow(need_in.next_power_of_two(), out).map_err(fail)?;
        }
        self.staging.upload(&parts, false).map_err(fail)?;
        self.staging.synchronize().map_err(fail)?;
        let base = self.staging.device_input_ptr();
        let memory =
            MemoryInfo::new(AllocationDevice::CUDA, self.ordinal as i32, AllocatorType::Device, MemoryType::Default)
                .map_err(|e| OnnxError::Run(e.to_string()))?;
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(spec.inputs.len());
        let mut at = 0u64;
        for t in &spec.inputs {
            let shape = Shape::new(std::iter::once(rows as i64).chain(t.shape.iter().map(|&d| d as i64)));
            let ptr = (base + at) as usize as *mut ort::sys::c_void;
            inputs.push((Cow::Borrowed(t.name.as_str()), device_value(t.dtype, memory.clone(), ptr, shape)?));
            at += (rows * t.bytes()) as u64;
        }
        let outputs = session.run_with_options(inputs, options).map_err(|e| OnnxError::Run(e.to_string()))?;
        split_outputs(&outputs, spec, rows, n, output)
    }
}

/// A tensor over device memory at `ptr`.
fn device_value(
    dtype: DType,
    memory: MemoryInfo<'static>,
    ptr: *mut ort::sys::c_void,
    shape: Shape,
) -> Result<SessionInputValue<'static>, OnnxError> {
    fn raw<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug>(
        memory: MemoryInfo<'static>,
        ptr: *mut ort::sys::c_void,
        shape: Shape,
    ) -> Result<SessionInputValue<'static>, OnnxError> {
        // SAFETY: `ptr` points into the worker's device input buffer on the device `memory`
        // names, at an offset where `shape` elements of `T` were just uploaded (the buffer was
        // grown to hold the whole batch and the stream synchronized). The buffer is neither freed
        // nor regrown until this run has returned, which is the tensor's whole life.
        let t =
            unsafe { TensorRefMut::<T>::from_raw(memory, ptr, shape) }.map_err(|e| OnnxError::Run(e.to_string()))?;
        Ok(t.into())
    }
    match dtype {
        DType::I8 => raw::<i8>(memory, ptr, shape),
        DType::U8 => raw::<u8>(memory, ptr, shape),
        DType::I32 => raw::<i32>(memory, ptr, shape),
        DType::I64 => raw::<i64>(memory, ptr, shape),
        DType::F32 => raw::<f32>(memory, ptr, shape),
        DType::F16 => Err(OnnxError::Run("f16 inputs take the host path".into())),
    }
}

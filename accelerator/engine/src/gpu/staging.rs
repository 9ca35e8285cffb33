//! One GPU worker's buffers and stream: [`GpuStaging`].

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice, sys};

use super::{GpuError, cuda_err, guarded, open_context, plan_copies};

/// What one [`GpuStaging::upload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStats {
    /// Host-to-device copies issued.
    pub copies: usize,
    /// Bytes put into the device input buffer.
    pub bytes: usize,
    /// Whether the parts went through the pinned staging buffer (pageable sources).
    pub staged: bool,
}

/// One GPU worker's staging area: the device's primary context, a stream of its own (a
/// non-blocking stream, not the legacy default stream, so it never serialises with other work on
/// the device), a device input and a device output buffer, and a pinned (page-locked) host buffer
/// for each direction.
///
/// All work is queued on the one stream, so an inference engine that runs on
/// [`stream_ptr`](Self::stream_ptr) (ONNX Runtime's `user_compute_stream`) is ordered after
/// [`upload`](Self::upload) and before [`download`](Self::download) without extra
/// synchronisation. Work on another stream that uses the raw device pointers must be ordered by the
/// caller (e.g. with [`synchronize`](Self::synchronize)). [`grow`](Self::grow) may move the buffers:
/// raw pointers taken before it are stale after it.
#[derive(Debug)]
pub struct GpuStaging {
    ordinal: u32,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    dev_in: CudaSlice<u8>,
    dev_out: CudaSlice<u8>,
    host_in: PinnedHostSlice<u8>,
    host_out: PinnedHostSlice<u8>,
    input_capacity: usize,
    output_capacity: usize,
    /// Recorded on the stream after each copy out of `host_in`: the host waits on it before it
    /// writes `host_in` again, so it never overwrites bytes a copy has yet to read.
    staging_read: CudaEvent,
}

impl GpuStaging {
    /// Opens GPU `ordinal` and allocates buffers of `input_capacity` and `output_capacity` bytes
    /// (device and pinned host each), zeroed.
    ///
    /// Errors: [`GpuError::NoDriver`] without a usable driver, [`GpuError::NoDevice`] when there is
    /// no such GPU, [`GpuError::Cuda`] when an allocation fails.
    pub fn new(ordinal: u32, input_capacity: usize, output_capacity: usize) -> Result<Self, GpuError> {
        guarded("GpuStaging::new", || {
            let ctx = open_context(ordinal)?;
            // SAFETY: this context object (a fresh `Arc` of our own around the primary context) is
            // only used by this `GpuStaging`, whose buffers are all used on its one stream and freed
            // in that stream's order, so cudarc's cross-stream event tracking has nothing to do.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.new_stream().map_err(cuda_err(format_args!("cuStreamCreate on GPU {ordinal}")))?;
            let staging_read = ctx.new_event(None).map_err(cuda_err(format_args!("cuEventCreate on GPU {ordinal}")))?;
            let dev_in = alloc_device(&stream, input_capacity, "device input buffer")?;
            let dev_out = alloc_device(&stream, output_capacity, "device output buffer")?;
            let host_in = alloc_pinned(&ctx, input_capacity, "pinned input staging buffer")?;
            let host_out = alloc_pinned(&ctx, output_capacity, "pinned output buffer")?;
            let staging = GpuStaging {
                ordinal,
                ctx,
                stream,
                dev_in,
                dev_out,
                host_in,
                host_out,
                input_capacity,
                output_capacity,
                staging_read,
            };
            // The device buffers are allocated and zeroed in stream order: finish that so their raw
            // pointers are usable from any stream.
            staging.synchronize()?;
            Ok(staging)
        })
    }

    /// Puts `parts` (a batch's per-sample inputs, in batch order) back to back at the start of the
    /// device input buffer, and returns once the host memory of `parts` is no longer needed.
    ///
    /// - `pinned_sources`: the parts are in page-locked memory (a pinned slot arena). Each run of
    ///   [`plan_copies`] is one asynchronous host-to-device copy, straight from the parts; the call
    ///   waits for the copies to complete before returning, since the borrow of `parts` ends then.
    ///   ([`upload_async`](Self::upload_async) does not wait.)
    /// - otherwise (ordinary pageable memory): a copy from pageable memory cannot be DMA'd
    ///   directly; the driver copies it through a bounce buffer of its own, chunk by chunk, and the
    ///   call is synchronous and slow, once per copy. So the parts are first copied on the host
    ///   into the pinned staging buffer, and then ONE asynchronous copy moves the whole staged range.
    ///   The call returns without waiting for it (the staging buffer is ours; the next upload waits
    ///   until the copy has read it).
    ///
    /// Errors: [`GpuError::Capacity`] when the parts exceed the input capacity (nothing is copied).
    pub fn upload(&mut self, parts: &[&[u8]], pinned_sources: bool) -> Result<UploadStats, GpuError> {
        // SAFETY: `upload_async` needs `parts` to stay valid and unchanged until its copies have
        // read them; with `pinned_sources` we wait for the stream below, on success and on error,
        // before the borrow of `parts` ends; staged copies read only our own staging buffer.
        let result = unsafe { self.upload_async(parts, pinned_sources) };
        if !pinned_sources {
            return result;
        }
        // Wait even after an error: copies queued before it may still read `parts`.
        let synced = self.synchronize();
        let stats = result?;
        synced?;
        Ok(stats)
    }

    /// As [`upload`](Self::upload), but with `pinned_sources` the copies are only queued: the call
    /// returns before they have read the parts, so the host can go on (gather the next batch)
    /// while the copy engine works.
    ///
    /// # Safety
    /// With `pinned_sources`, the memory of every part must stay valid and unmodified until the
    /// stream has passed the copies: until [`synchronize`](Self::synchronize),
    /// [`download`](Self::download) or a safe [`upload`](Self::upload) has returned, also when
    /// this call returns an error (copies queued before the failure may still read the parts).
    /// Without `pinned_sources` there is no extra requirement.
    pub unsafe fn upload_async(&mut self, parts: &[&[u8]], pinned_sources: bool) -> Result<UploadStats, GpuError> {
        let total = parts.iter().try_fold(0usize, |sum, p| sum.checked_add(p.len())).unwrap_or(usize::MAX);
        if total > self.input_capacity {
            return Err(GpuError::Capacity { what: "device input buffer", need: total, have: self.input_capacity });
        }
        if total == 0 {
            return Ok(UploadStats { copies: 0, bytes: 0, staged: !pinned_sources });
        }
        self.bind()?;
        let dst = self.device_input_ptr();
        let stream = self.stream.cu_stream();
        if pinned_sources {
            let runs = plan_copies(parts);
            for run in &runs {
                // SAFETY: the run's `len` bytes from `parts[run.src]` are the run's parts, adjacent
                // in host memory (`plan_copies`), and the caller keeps them alive until the copy
                // has run (this function's contract); the destination range lies in the device
                // input buffer since `dst_offset + len <= total <= input_capacity`; the stream
                // belongs to the context bound above.
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(
                        dst + run.dst_offset as u64,
                        parts[run.src].as_ptr().cast(),
                        run.len,
                        stream,
                    )
                }
                .result()
                .map_err(cuda_err(format_args!(
                    "cuMemcpyHtoDAsync ({} B at +{}) on GPU {}",
                    run.len, run.dst_offset, self.ordinal
                )))?;
            }
            return Ok(UploadStats { copies: runs.len(), bytes: total, staged: false });
        }
        // Wait until the previous staged copy has read the staging buffer before overwriting it.
        self.staging_read.synchronize().map_err(cuda_err("cuEventSynchronize (staging buffer)"))?;
        let staging = self.host_in.as_mut_slice().map_err(cuda_err("pinned staging buffer"))?;
        // Host copies go part by part: their cost does not depend on adjacency, and a Rust slice
        // cannot soundly span two parts (they may be separate allocations).
        let mut at = 0;
        for part in parts {
            staging[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let src = self.host_in.as_ptr().map_err(cuda_err("pinned staging buffer"))?;
        // SAFETY: `src` is our pinned staging buffer, holding `total <= input_capacity` bytes just
        // written, and it is not written again before `staging_read` (recorded next) has passed;
        // the destination is the first `total` bytes of the device input buffer; the stream
        // belongs to the bound context.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), total, stream) }
            .result()
            .map_err(cuda_err(format_args!("cuMemcpyHtoDAsync ({total} B staged) on GPU {}", self.ordinal)))?;
        self.staging_read.record(&self.stream).map_err(cuda_err("cuEventRecord (staging buffer)"))?;
        Ok(UploadStats { copies: 1, bytes: total, staged: true })
    }

    /// Copies the first `len` bytes of the device output buffer into `out[..len]`: ONE
    /// device-to-host copy into the pinned output buffer, a wait for the stream (so everything
    /// queued before, the inference included, has finished), then a host copy.
    ///
    /// Errors: [`GpuError::Capacity`] when `len` exceeds the output capacity or `out`.
    pub fn download(&mut self, len: usize, out: &mut [u8]) -> Result<(), GpuError> {
        if len > self.output_capacity {
            return Err(GpuError::Capacity { what: "device output buffer", need: len, have: self.output_capacity });
        }
        if len > out.len() {
            return Err(GpuError::Capacity { what: "download destination", need: len, have: out.len() });
        }
        self.bind()?;
        if len > 0 {
            let dst = self.host_out.as_mut_ptr().map_err(cuda_err("pinned output buffer"))?;
            // SAFETY: `dst` is our pinned output buffer of `output_capacity >= len` bytes, not
            // accessed by the host until the stream synchronisation below; the source is the
            // first `len` bytes of the device output buffer; the stream belongs to the bound
            // context.
            unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast(), self.device_output_ptr(), len, self.stream.cu_stream()) }
                .result()
                .map_err(cuda_err(format_args!("cuMemcpyDtoHAsync ({len} B) on GPU {}", self.ordinal)))?;
        }
        self.synchronize()?;
        if len > 0 {
            let host = self.host_out.as_slice().map_err(cuda_err("pinned output buffer"))?;
            out[..len].copy_from_slice(&host[..len]);
        }
        Ok(())
    }

    /// Waits until all work queued on this worker's stream has finished.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(cuda_err(format_args!("cuStreamSynchronize on GPU {}", self.ordinal)))
    }

    /// Makes the buffers at least `input_capacity` and `output_capacity` bytes (e.g. for the
    /// largest batch a worker will form); buffers already large enough are kept. Waits for the
    /// stream first; reallocated buffers are zeroed and their raw pointers change.
    pub fn grow(&mut self, input_capacity: usize, output_capacity: usize) -> Result<(), GpuError> {
        if input_capacity <= self.input_capacity && output_capacity <= self.output_capacity {
            return Ok(());
        }
        guarded("GpuStaging::grow", || {
            self.synchronize()?;
            if input_capacity > self.input_capacity {
                self.dev_in = alloc_device(&self.stream, input_capacity, "device input buffer")?;
                self.host_in = alloc_pinned(&self.ctx, input_capacity, "pinned input staging buffer")?;
                self.input_capacity = input_capacity;
            }
            if output_capacity > self.output_capacity {
                self.dev_out = alloc_device(&self.stream, output_capacity, "device output buffer")?;
                self.host_out = alloc_pinned(&self.ctx, output_capacity, "pinned output buffer")?;
                self.output_capacity = output_capacity;
            }
            self.synchronize()
        })
    }

    /// The device input buffer as a raw `CUdeviceptr` (for binding into ONNX Runtime).
    pub fn device_input_ptr(&self) -> u64 {
        raw_ptr(&self.dev_in, &self.stream)
    }

    /// The device output buffer as a raw `CUdeviceptr` (for binding into ONNX Runtime).
    pub fn device_output_ptr(&self) -> u64 {
        raw_ptr(&self.dev_out, &self.stream)
    }

    /// The raw `CUstream` of this worker (for ONNX Runtime's `user_compute_stream` option). It
    /// stays owned by this `GpuStaging`.
    pub fn stream_ptr(&self) -> usize {
        self.stream.cu_stream() as usize
    }

    /// The GPU's ordinal.
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// Bytes the device input buffer (and the pinned staging buffer) can hold.
    pub fn input_capacity(&self) -> usize {
        self.input_capacity
    }

    /// Bytes the device output buffer (and the pinned output buffer) can hold.
    pub fn output_capacity(&self) -> usize {
        self.output_capacity
    }

    /// The context (for the checks, which allocate pinned arenas in it).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The first `len` bytes of the device input buffer, read back (for the checks).
    pub(crate) fn read_input(&self, len: usize) -> Result<Vec<u8>, GpuError> {
        if len > self.input_capacity {
            return Err(GpuError::Capacity { what: "device input buffer", need: len, have: self.input_capacity });
        }
        let mut out = vec![0u8; len];
        self.stream
            .memcpy_dtoh(&self.dev_in.slice(..len), &mut out)
            .map_err(cuda_err(format_args!("cuMemcpyDtoHAsync ({len} B read-back) on GPU {}", self.ordinal)))?;
        self.synchronize()?;
        Ok(out)
    }

    /// Sets every byte of the device input buffer to `byte` (so a check cannot pass on stale data).
    pub(crate) fn fill_input(&self, byte: u8) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: the range is exactly the device input buffer we own; the stream belongs to the
        // bound context and orders the fill after earlier copies.
        unsafe { sys::cuMemsetD8Async(self.device_input_ptr(), byte, self.dev_in.len(), self.stream.cu_stream()) }
            .result()
            .map_err(cuda_err(format_args!("cuMemsetD8Async on GPU {}", self.ordinal)))?;
        self.synchronize()
    }

    fn bind(&self) -> Result<(), GpuError> {
        self.ctx.bind_to_thread().map_err(cuda_err(format_args!("cuCtxSetCurrent on GPU {}", self.ordinal)))
    }
}

impl Drop for GpuStaging {
    fn drop(&mut self) {
        // Pinned host memory is freed at once, not in stream order: let queued copies finish first.
        let _ = self.stream.synchronize();
    }
}

fn raw_ptr(buf: &CudaSlice<u8>, stream: &CudaStream) -> u64 {
    // Event tracking is off for this context, so the guard records nothing when dropped.
    let (ptr, _guard) = buf.device_ptr(stream);
    ptr
}

/// A zeroed device buffer of `len` bytes (at least 1: the driver refuses empty allocations).
fn alloc_device(stream: &Arc<CudaStream>, len: usize, what: &str) -> Result<CudaSlice<u8>, GpuError> {
    let ordinal = stream.context().ordinal();
    stream
        .alloc_zeros::<u8>(len.max(1))
        .map_err(cuda_err(format_args!("cuMemAlloc ({what}, {len} B) on GPU {ordinal}")))
}

/// A zeroed page-locked host buffer of `len` bytes (at least 1), cached (not write-combined: the
/// host reads it back, and reads of write-combined memory are uncached and very slow).
pub(crate) fn alloc_pinned(ctx: &Arc<CudaContext>, len: usize, what: &str) -> Result<PinnedHostSlice<u8>, GpuError> {
    let len = len.max(1);
    // SAFETY: the memory is uninitialised on return; it is zeroed below before anything reads it.
    let mut buf = unsafe { ctx.alloc_pinned_with_flags::<u8>(len, 0) }
        .map_err(cuda_err(format_args!("cuMemHostAlloc ({what}, {len} B) on GPU {}", ctx.ordinal())))?;
    let ptr = buf.as_mut_ptr().map_err(cuda_err(what))?;
    // SAFETY: `ptr` is the start of the `len` bytes just allocated, owned by `buf` alone, and no
    // copy uses them yet.
    unsafe { std::ptr::write_bytes(ptr, 0, len) };
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_thread_can_own_its_staging() {
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<GpuStaging>();
    }
}

//! The GPU layer (`qdl_engine::gpu`).
//!
//! Without an NVIDIA driver, every entry point answers a clear [`GpuError::NoDriver`] and nothing
//! panics; these are real tests on every machine. The GPU parts run where a GPU is found and are
//! skipped otherwise ("skipped: no NVIDIA driver"), unless `QDL_REQUIRE_GPU=1` is set, which makes
//! a missing GPU a failure (`scripts/gpu-check` sets it on GPU machines).

use qdl_engine::gpu::{self, GpuError, GpuStaging};

fn gpu_required() -> bool {
    std::env::var("QDL_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The ordinal of the first GPU, or `None` (after saying why) when the GPU parts are skipped.
fn first_gpu() -> Option<u32> {
    match gpu::discover() {
        Ok(gpus) if !gpus.is_empty() => Some(gpus[0].ordinal),
        other => {
            let why = match other {
                Err(GpuError::NoDriver { .. }) => "no NVIDIA driver".to_string(),
                Ok(_) => "no NVIDIA GPU".to_string(),
                Err(e) => e.to_string(),
            };
            assert!(!gpu_required(), "QDL_REQUIRE_GPU=1 but no GPU can be used: {why}");
            println!("skipped: {why}");
            None
        }
    }
}

fn assert_no_driver<T: std::fmt::Debug>(what: &str, r: Result<T, GpuError>) {
    match r {
        Err(GpuError::NoDriver { reason }) => {
            assert!(reason.contains("no NVIDIA driver on this machine"), "{what}: {reason}");
        }
        other => panic!("{what}: expected NoDriver, got {other:?}"),
    }
}

#[test]
fn without_a_driver_every_entry_point_says_so() {
    if gpu::driver_present() {
        println!("skipped: an NVIDIA driver library is present");
        return;
    }
    assert!(!gpu_required(), "QDL_REQUIRE_GPU=1 but libcuda.so cannot be loaded");
    let err = gpu::discover().unwrap_err();
    assert_eq!(
        err,
        GpuError::NoDriver { reason: "libcuda.so cannot be loaded: no NVIDIA driver on this machine".into() }
    );
    assert!(err.to_string().contains("libcuda.so cannot be loaded: no NVIDIA driver on this machine"), "{err}");
    assert_no_driver("GpuStaging::new", GpuStaging::new(0, 1 << 20, 1 << 10));
    assert_no_driver("driver_version", gpu::driver_version());
    assert_no_driver("nvrtc_smoke", gpu::nvrtc_smoke(0));
    assert_no_driver("copy_check", gpu::copy_check(0));
    assert_no_driver("load_check", gpu::load_check(0, 0.1));
    // Asked twice: the answer is cached and stays the same.
    assert_eq!(gpu::discover().unwrap_err(), err);
}

#[test]
fn discovery_describes_each_gpu() {
    let Some(_) = first_gpu() else { return };
    let gpus = gpu::discover().unwrap();
    for (i, g) in gpus.iter().enumerate() {
        assert_eq!(g.ordinal as usize, i);
        assert!(!g.name.is_empty());
        assert!(g.total_bytes > 0 && g.free_bytes <= g.total_bytes, "{g:?}");
        assert!(g.compute_capability.0 >= 3, "{g:?}");
    }
    let count = gpus.len();
    let err = GpuStaging::new(count as u32, 16, 16).unwrap_err();
    assert_eq!(err, GpuError::NoDevice { ordinal: count as u32, count });
}

#[test]
fn staging_round_trip_and_capacity() {
    let Some(ordinal) = first_gpu() else { return };
    let mut s = GpuStaging::new(ordinal, 1000, 64).unwrap();
    assert_eq!((s.ordinal(), s.input_capacity(), s.output_capacity()), (ordinal, 1000, 64));
    assert_ne!(s.device_input_ptr(), 0);
    assert_ne!(s.device_output_ptr(), 0);
    assert_ne!(s.stream_ptr(), 0, "the worker has a stream of its own, not the legacy default stream");

    let arena: Vec<u8> = (0..1200u32).map(|i| (i * 13) as u8).collect();
    let parts: Vec<&[u8]> = vec![&arena[0..100], &arena[100..300], &arena[500..600]];
    let stats = s.upload(&parts, false).unwrap();
    assert_eq!(stats, gpu::UploadStats { copies: 1, bytes: 400, staged: true });
    let stats = s.upload(&parts, true).unwrap();
    assert_eq!(stats, gpu::UploadStats { copies: 2, bytes: 400, staged: false });

    let too_big: Vec<&[u8]> = vec![&arena[..1001]];
    assert!(matches!(s.upload(&too_big, true), Err(GpuError::Capacity { need: 1001, have: 1000, .. })));

    // The output buffer starts zeroed.
    let mut out = [0xFFu8; 64];
    s.download(64, &mut out).unwrap();
    assert_eq!(out, [0u8; 64]);
    assert!(matches!(s.download(65, &mut [0u8; 65]), Err(GpuError::Capacity { .. })));
    assert!(matches!(s.download(64, &mut [0u8; 10]), Err(GpuError::Capacity { .. })));

    s.grow(4000, 32).unwrap();
    assert_eq!((s.input_capacity(), s.output_capacity()), (4000, 64));
    assert_eq!(s.upload(&[&arena[..]], false).unwrap().bytes, 1200);
    s.synchronize().unwrap();
}

#[test]
fn copy_check_passes() {
    let Some(ordinal) = first_gpu() else { return };
    let detail = gpu::copy_check(ordinal).unwrap();
    println!("copy_check: {detail}");
    assert!(detail.contains("3 runs"), "{detail}");
}

#[test]
fn nvrtc_smoke_passes() {
    let Some(ordinal) = first_gpu() else { return };
    let detail = gpu::nvrtc_smoke(ordinal).unwrap();
    println!("nvrtc_smoke: {detail}");
    assert!(detail.contains("verified"), "{detail}");
}

#[test]
fn load_check_passes() {
    let Some(ordinal) = first_gpu() else { return };
    let detail = gpu::load_check(ordinal, 1.0).unwrap();
    println!("load_check: {detail}");
    assert!(detail.contains("batches/s"), "{detail}");
}

//! The `synthetic` backend: a device whose batch takes `fixed_us + per_sample_us × n`.
//!
//! The worker thread sleeps for the modelled time (minus what computing the reference outputs
//! took), so the model holds on a loaded 2-core machine and costs no CPU. Timer slack of the
//! worker thread is set to 1 µs by the worker so sleeps end close to their deadline.

use std::time::{Duration, Instant};

use super::{Backend, BackendError, reference_batch};
use qdl_shared::config::SyntheticConfig;
use qdl_shared::workload::WorkloadSpec;

/// Models a device's batch latency; see the module docs.
pub struct Synthetic {
    config: SyntheticConfig,
}

impl Synthetic {
    /// A backend with these latency models.
    pub fn new(config: SyntheticConfig) -> Synthetic {
        Synthetic { config }
    }
}

impl Backend for Synthetic {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn infer(&mut self, spec: &WorkloadSpec, n: usize, input: &[u8], output: &mut [u8]) -> Result<(), BackendError> {
        let start = Instant::now();
        reference_batch(spec, n, input, output);
        let deadline = start + Duration::from_nanos(self.config.model_for(&spec.name).batch_ns(n));
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdl_shared::config::LatencyModel;

    #[test]
    fn batch_takes_the_modelled_time_and_answers_correctly() {
        let mut cfg = SyntheticConfig::default();
        cfg.workloads.insert("bert".into(), LatencyModel { fixed_us: 2000.0, per_sample_us: 500.0 });
        let mut b = Synthetic::new(cfg);
        let spec = WorkloadSpec::bert();
        let input: Vec<u8> = (0..spec.input_bytes() * 4).map(|i| (i % 251) as u8).collect();
        let mut out = vec![0u8; 32];
        let t = Instant::now();
        b.infer(&spec, 4, &input, &mut out).unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_micros(4000), "{took:?}");
        let mut expected = vec![0u8; 32];
        reference_batch(&spec, 4, &input, &mut expected);
        assert_eq!(out, expected);
        assert_ne!(out[..8], out[8..16], "different samples, different answers");
    }
}

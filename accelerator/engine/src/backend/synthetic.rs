//! The `synthetic` backend: a device whose batch takes `fixed_us + per_sample_us × n`.
//!
//! The worker thread sleeps for the modelled time (minus what computing the reference outputs
//! took), so the model holds on a loaded 2-core machine and costs no CPU. Timer slack of the
//! worker thread is set to 1 µs by the worker so sleeps end close to their deadline. The time
//! counts from when the batch was formed, so gathering it is part of the modelled time.

use std::time::{Duration, Instant};

use super::{Backend, BackendError, Batch, reference_batch};
use qdl_shared::config::SyntheticConfig;

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

    fn token_engine(&self) -> Option<Box<dyn crate::generate::engine::TokenEngine>> {
        Some(Box::new(crate::generate::engine::SyntheticTokens::new(self.config.tokens)))
    }

    fn infer(&mut self, batch: &Batch<'_>, output: &mut [u8]) -> Result<(), BackendError> {
        reference_batch(batch, output);
        // The modelled time counts from when the batch was formed, so the gather (the host side
        // of a device's input copy) is part of it, on the network and in-process alike.
        let model = self.config.model_for(&batch.spec.name);
        let deadline = batch.formed + Duration::from_nanos(model.batch_ns(batch.n));
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
    use qdl_shared::workload::WorkloadSpec;

    #[test]
    fn batch_takes_the_modelled_time_and_answers_correctly() {
        let mut cfg = SyntheticConfig::default();
        cfg.workloads.insert("bert".into(), LatencyModel { fixed_us: 2000.0, per_sample_us: 500.0 });
        let mut b = Synthetic::new(cfg);
        let spec = WorkloadSpec::bert();
        let input: Vec<u8> = (0..spec.input_bytes() * 4).map(|i| (i % 251) as u8).collect();
        let mut out = vec![0u8; 32];
        let t = Instant::now();
        let batch = Batch { spec: &spec, n: 4, input: &input, formed: t };
        b.infer(&batch, &mut out).unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_micros(4000), "{took:?}");
        let mut expected = vec![0u8; 32];
        reference_batch(&batch, &mut expected);
        assert_eq!(out, expected);
        assert_ne!(out[..8], out[8..16], "different samples, different answers");
    }
}

//! The `echo` backend: the reference output, computed at once. For generative workloads its
//! token engine is the synthetic one with no step time: the network-only upper bound.

use super::{Backend, BackendError, Batch, reference_batch};

/// Answers every sample with its reference output immediately.
pub struct Echo;

impl Backend for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn token_engine(&self) -> Option<Box<dyn crate::generate::engine::TokenEngine>> {
        let instant = qdl_shared::config::TokenModel { fixed_us: 0.0, per_prefill_token_us: 0.0, per_sequence_us: 0.0 };
        Some(Box::new(crate::generate::engine::SyntheticTokens::new(instant)))
    }

    fn infer(&mut self, batch: &Batch<'_>, output: &mut [u8]) -> Result<(), BackendError> {
        reference_batch(batch, output);
        Ok(())
    }
}

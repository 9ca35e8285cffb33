//! What LoadGen sees: the SUT (one, whatever the number of accelerators) and the QSL.

use std::sync::Arc;

use actix::Addr;
use futures::future::join_all;
use qdl_loadgen::{IssuedSamples, QuerySampleLibrary, SystemUnderTest};
use qdl_shared::wire::message::RunState;

use crate::client::{AcceleratorClient, QueryName, SetRunState};
use crate::issuer::QueryIssuer;
use crate::qsl::SampleStore;
use crate::supervisor::{FailureSink, RunFailure};

/// How the SUT's name is obtained.
pub enum SutName {
    /// Ask every accelerator over the network, each time LoadGen asks (the Network division's
    /// required round trip; LoadGen times it as `get_sut_name_duration_ns`).
    /// The list is shared with the run: an accelerator that rejoins takes its old place.
    Network(Clients),
    /// The in-process baseline: a fixed name (it is not a Network SUT).
    Local(String),
}

/// The control sessions of a run, in the order the accelerators were given, shared so that an
/// accelerator that rejoins replaces its lost session.
pub type Clients = Arc<std::sync::Mutex<Vec<Addr<AcceleratorClient>>>>;

/// A snapshot of the sessions.
pub fn snapshot(clients: &Clients) -> Vec<Addr<AcceleratorClient>> {
    clients.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Builds the SUT name from the accelerators' names.
pub fn network_sut_name(names: &[String]) -> String {
    format!("qdl Network SUT ({})", names.join(", "))
}

/// Duplicate names among `names`, if any.
pub fn duplicate_names(names: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut dups = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            dups.insert(n.clone());
        }
    }
    dups.into_iter().collect()
}

/// The SUT LoadGen drives.
pub struct QdlSut {
    /// Splits and dispatches queries.
    pub issuer: Arc<QueryIssuer>,
    /// Where the name comes from.
    pub name: SutName,
}

impl SystemUnderTest for QdlSut {
    fn name(&self) -> String {
        match &self.name {
            SutName::Local(n) => n.clone(),
            SutName::Network(clients) => {
                let clients = snapshot(clients);
                let answers = futures::executor::block_on(join_all(clients.iter().map(|c| c.send(QueryName))));
                let mut names = Vec::new();
                for a in answers {
                    match a {
                        Ok(Ok(n)) => names.push(n),
                        Ok(Err(e)) => {
                            tracing::error!("SUT name query failed: {e}");
                            names.push("?".into());
                        }
                        Err(e) => {
                            tracing::error!("SUT name query failed: {e}");
                            names.push("?".into());
                        }
                    }
                }
                let dups = duplicate_names(&names);
                if !dups.is_empty() {
                    tracing::error!("accelerator names are not unique: {}", dups.join(", "));
                }
                network_sut_name(&names)
            }
        }
    }

    fn issue_query(&self, samples: IssuedSamples<'_>) {
        self.issuer.issue(samples);
    }

    fn flush_queries(&self) {
        self.issuer.flush();
        // Tell the accelerators too (NVIDIA's harness has the same state); nobody waits for the
        // acknowledgement.
        if let SutName::Network(clients) = &self.name {
            for c in snapshot(clients) {
                c.do_send(SetRunState(RunState::Flush));
            }
        }
    }
}

/// The QSL LoadGen loads samples from.
pub struct QdlQsl {
    /// The samples.
    pub store: Arc<SampleStore>,
    /// Where a sample that cannot be loaded is reported (it ends the run).
    pub failures: FailureSink,
}

impl QuerySampleLibrary for QdlQsl {
    fn name(&self) -> String {
        format!("qdl {} QSL", self.store.source().spec().name)
    }

    fn total_sample_count(&self) -> usize {
        self.store.total()
    }

    fn performance_sample_count(&self) -> usize {
        self.store.performance()
    }

    fn load_samples_to_ram(&self, indices: &[usize]) {
        let started = std::time::Instant::now();
        if let Err(e) = self.store.load(indices) {
            self.failures.report(RunFailure::SampleLoad(e));
        }
        tracing::debug!(samples = indices.len(), ms = started.elapsed().as_millis() as u64, "samples loaded");
    }

    fn unload_samples_from_ram(&self, _indices: &[usize]) {
        self.store.unload();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_contains_network_sut_and_duplicates_are_found() {
        let names = vec!["acc-0".to_string(), "acc-1".to_string(), "acc-0".to_string()];
        assert!(network_sut_name(&names).contains("Network SUT"));
        assert_eq!(duplicate_names(&names), vec!["acc-0".to_string()]);
        assert!(duplicate_names(&names[..2]).is_empty());
    }
}

//! The run's supervision: which connections and control sessions exist, what a failure does to
//! the run, and how a lost accelerator comes back.
//!
//! # Construction order
//! Nothing is patched in later: each part is built from the ones before it.
//! 1. [`failure::channel`]: the [`FailureSink`] every reporter gets and the [`FailureInbox`];
//! 2. the [`QueryIssuer`] (no lanes yet; it reports "no accelerator left" to the sink);
//! 3. the [`Cluster`] over the issuer, the sample store and the I/O arbiters;
//! 4. [`supervise`]: the "qdl-supervisor" thread that reads the inbox;
//! 5. the connections: [`Cluster::connect_network`] (control sessions, then each one's data
//!    connections, whose lanes join the issuer) or [`Cluster::add_connection`] per in-process lane.
//!
//! # Supervision tree (one `run`)
//! ```text
//! main thread ── LoadGen StartTest (blocks) ── IssueQuery → QueryIssuer ──lanes──▶ ConnectionActor
//! "qdl-io" thread: actix System
//!   ├─ control arbiter: AcceleratorClient × accelerator (session, heartbeats, run state), rejoins
//!   └─ I/O arbiters × frontend.io_threads: ConnectionActor × data connection (LaneCore, transport)
//! "qdl-supervisor" thread: FailureInbox ─▶ decide ─┬─ Survive: Abandon the accelerator's
//!        ▲                                         │  connections (their samples are re-dispatched
//!        │ RunFailure                              │  by the issuer), rejoin it once a second
//!   AcceleratorClient (lost session)               └─ EndRun: the binary's handler (exit 3)
//!   QueryIssuer (no lane left, no re-dispatch thread)
//!   QdlQsl (samples cannot be loaded)
//! ```
//! The supervisor holds the cluster weakly and the inbox ends when the last sink is dropped, so
//! the thread ends with the run.

pub mod failure;
mod sessions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use actix::{Actor, Addr, ArbiterHandle};
use qdl_shared::transport::InitiatorTransport;

pub use failure::{FailureInbox, FailureSink, RunFailure};
pub use sessions::{ClusterError, SessionRecipe};

use crate::client::AcceleratorClient;
use crate::connection::{Abandon, ConnectionActor, ConnectionParts};
use crate::issuer::{Lane, QueryIssuer};
use crate::qsl::SampleStore;
use crate::sut::Clients;
use crate::timeline::RunLatencies;

/// What the supervisor does about one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The run goes on without the accelerator given as `given`: its data connections are given
    /// up (their samples go to the others), and it is asked back if `rejoin`.
    Survive {
        /// The address it was given as.
        given: String,
        /// Try to bring it back (not once the test is over).
        rejoin: bool,
    },
    /// The run's samples can no longer all complete: end it.
    EndRun,
}

/// The survive-or-fail rule, sans-IO: an accelerator lost once its data connections exist is
/// survived (the issuer re-places its samples); one lost before (nothing of the run is on it
/// yet, and the run cannot start as configured) and every other failure end the run.
pub fn decide(failure: &RunFailure, has_connections: impl Fn(&str) -> bool, test_over: bool) -> Decision {
    match failure {
        RunFailure::AcceleratorLost { given, .. } if has_connections(given) => {
            Decision::Survive { given: given.clone(), rejoin: !test_over }
        }
        _ => Decision::EndRun,
    }
}

/// Everything a [`Cluster`] is built from.
pub struct ClusterParts {
    /// The run's issuer (built first, with no lanes).
    pub issuer: Arc<QueryIssuer>,
    /// The loaded samples.
    pub store: Arc<SampleStore>,
    /// Where end-to-end latencies go for the run's timeline.
    pub latencies: Arc<RunLatencies>,
    /// The arbiters that run the data connections (round robin).
    pub io: Vec<ArbiterHandle>,
    /// The arbiter that runs control sessions and rejoins.
    pub control: ArbiterHandle,
    /// Where the control sessions report a loss.
    pub failures: FailureSink,
    /// How to open control sessions (network runs; `None` for the in-process baseline).
    pub recipe: Option<Arc<SessionRecipe>>,
}

/// The data connections of a run.
#[derive(Default)]
struct Members {
    /// Those not given up, by the address their accelerator was given as (`""` in-process); an
    /// accelerator that was lost keeps its (empty) entry.
    live: HashMap<String, Vec<Addr<ConnectionActor>>>,
    /// Every one started (rejoined and given-up ones included), for the run's counters.
    all: Vec<Addr<ConnectionActor>>,
}

/// The run's connections and control sessions; see the module docs.
pub struct Cluster {
    issuer: Arc<QueryIssuer>,
    store: Arc<SampleStore>,
    latencies: Arc<RunLatencies>,
    io: Vec<ArbiterHandle>,
    control: ArbiterHandle,
    failures: FailureSink,
    recipe: Option<Arc<SessionRecipe>>,
    /// The control sessions in the order the accelerators were given (shared with the SUT,
    /// which asks them for its name); one that rejoins takes its old place.
    clients: Clients,
    /// The data connections.
    connections: Mutex<Members>,
    started: AtomicUsize,
    /// The accelerators a rejoin task is bringing back (one task each).
    rejoining: Mutex<std::collections::HashSet<String>>,
    /// The test is over: lost accelerators are not asked back.
    test_over: AtomicBool,
}

impl Cluster {
    /// A cluster with no connections yet.
    pub fn new(p: ClusterParts) -> Arc<Cluster> {
        assert!(!p.io.is_empty(), "a cluster needs at least one I/O arbiter");
        Arc::new(Cluster {
            issuer: p.issuer,
            store: p.store,
            latencies: p.latencies,
            io: p.io,
            control: p.control,
            failures: p.failures,
            recipe: p.recipe,
            clients: Clients::default(),
            connections: Mutex::default(),
            started: AtomicUsize::new(0),
            rejoining: Mutex::default(),
            test_over: AtomicBool::new(false),
        })
    }

    /// The issuer the lanes join.
    pub fn issuer(&self) -> &Arc<QueryIssuer> {
        &self.issuer
    }

    /// The control sessions, in the order the accelerators were given (shared, live).
    pub fn clients(&self) -> Clients {
        self.clients.clone()
    }

    /// Where end-to-end latencies are recorded.
    pub fn latencies(&self) -> &Arc<RunLatencies> {
        &self.latencies
    }

    /// Every data connection started so far (rejoined ones included).
    pub fn connections(&self) -> Vec<Addr<ConnectionActor>> {
        self.lock_connections().all.clone()
    }

    /// The test is over: accelerators lost from now on are not asked back.
    pub fn end_test(&self) {
        self.test_over.store(true, Ordering::Release);
    }

    fn is_over(&self) -> bool {
        self.test_over.load(Ordering::Acquire)
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Members> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a `ConnectionActor` for a new lane of the accelerator `given` (`""` in-process),
    /// labelled `{accelerator}/{connection}`, on an I/O arbiter (round robin), and adds its lane
    /// to the issuer. `transport` is built inside the arbiter's runtime.
    pub fn add_connection(
        &self,
        given: &str,
        accelerator: &str,
        connection: u32,
        slots: u32,
        output_bytes: u32,
        transport: impl FnOnce() -> Box<dyn InitiatorTransport> + Send + 'static,
    ) {
        let lane = Lane::new(format!("{accelerator}/{connection}"), slots);
        let (l, acc) = (lane.clone(), accelerator.to_string());
        let (store, issuer, latencies) = (self.store.clone(), self.issuer.clone(), self.latencies.clone());
        let arbiter = &self.io[self.started.fetch_add(1, Ordering::Relaxed) % self.io.len()];
        let actor = ConnectionActor::start_in_arbiter(arbiter, move |_| {
            ConnectionActor::new(ConnectionParts {
                label: l.label().to_string(),
                accelerator: acc,
                connection,
                lane: l,
                transport: transport(),
                slots,
                output_bytes,
                store,
                issuer,
                latencies,
            })
        });
        let mut members = self.lock_connections();
        members.live.entry(given.to_string()).or_default().push(actor.clone());
        members.all.push(actor);
        drop(members);
        self.issuer.add_lanes(&[lane]);
    }

    /// Whether the accelerator given as `given` has had data connections in this run (its
    /// samples are the issuer's to re-place, even while it rejoins).
    fn has_connections(&self, given: &str) -> bool {
        self.lock_connections().live.contains_key(given)
    }

    /// Gives up every data connection of `given`: each hands its samples back to the issuer.
    fn abandon(&self, given: &str, why: &str) {
        let conns = self.lock_connections().live.get_mut(given).map(std::mem::take).unwrap_or_default();
        for c in conns {
            c.do_send(Abandon(why.to_string()));
        }
    }

    /// The control session at `given`'s place in the list (an accelerator that rejoins).
    fn replace_client(&self, given: &str, client: Addr<AcceleratorClient>) {
        let at = self.recipe.as_ref().and_then(|r| r.accelerators.iter().position(|g| g == given));
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        match at.filter(|&i| i < clients.len()) {
            Some(i) => clients[i] = client,
            None => clients.push(client),
        }
    }
}

/// Starts the "qdl-supervisor" thread: it reads `inbox` and applies [`decide`] to each report;
/// a failure that ends the run goes to `end_run` (the binary's: it says why and exits). The
/// thread ends when every sink is gone or the cluster is dropped.
pub fn supervise(
    cluster: &Arc<Cluster>,
    inbox: FailureInbox,
    end_run: impl Fn(RunFailure) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let cluster: Weak<Cluster> = Arc::downgrade(cluster);
    std::thread::Builder::new().name("qdl-supervisor".into()).spawn(move || {
        while let Some(failure) = inbox.recv() {
            let Some(cluster) = cluster.upgrade() else { return };
            match decide(&failure, |g| cluster.has_connections(g), cluster.is_over()) {
                Decision::Survive { given, rejoin } => {
                    tracing::error!("{failure}: re-dispatching its samples to the accelerators left");
                    cluster.abandon(&given, &failure.to_string());
                    if rejoin {
                        sessions::rejoin(cluster.clone(), given);
                    }
                }
                Decision::EndRun => end_run(failure),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientError;

    fn lost(given: &str) -> RunFailure {
        RunFailure::AcceleratorLost {
            given: given.into(),
            name: "acc-0".into(),
            error: ClientError::Closed { addr: given.into() },
        }
    }

    #[test]
    fn a_lost_accelerator_is_survived_only_once_its_connections_exist() {
        let has = |g: &str| g == "10.0.0.1:7000";
        assert_eq!(
            decide(&lost("10.0.0.1:7000"), has, false),
            Decision::Survive { given: "10.0.0.1:7000".into(), rejoin: true }
        );
        assert_eq!(decide(&lost("10.0.0.2:7000"), has, false), Decision::EndRun, "lost while connecting");
    }

    #[test]
    fn after_the_test_a_lost_accelerator_is_not_asked_back() {
        assert_eq!(decide(&lost("a:1"), |_| true, true), Decision::Survive { given: "a:1".into(), rejoin: false });
    }

    #[test]
    fn failures_other_than_a_lost_session_end_the_run() {
        for f in [
            RunFailure::NoAcceleratorLeft,
            RunFailure::RedispatchThread(std::io::Error::other("no threads")),
            RunFailure::SampleLoad(crate::qsl::QslError::Dataset { dir: "d".into(), reason: "gone".into() }),
        ] {
            assert_eq!(decide(&f, |_| true, false), Decision::EndRun, "{f}");
        }
    }
}

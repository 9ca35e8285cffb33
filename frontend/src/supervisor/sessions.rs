//! Control sessions and data connections of a network run: connecting every accelerator at the
//! start, attaching one (its data connections and lanes), and bringing a lost one back.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures::future::join_all;
use qdl_shared::config::{ConfigError, FrontendConfig};
use qdl_shared::transport::rdma::{InitiatorSetup, RdmaDevice, RdmaError, RdmaMetrics};
use qdl_shared::transport::tcp::{TcpInitiator, connect_data};
use qdl_shared::transport::{TransportError, TransportMetrics};
use qdl_shared::wire::attach::Attach;
use qdl_shared::wire::message::{DataTransport, RunState, SessionRequest};
use qdl_shared::workload::WorkloadSpec;
use tokio::net::TcpStream;

use super::Cluster;
use crate::client::{
    AcceleratorClient, ClientError, ClientTls, Close as CloseClient, ConnectRdma, Established, SessionParams,
    SetRunState,
};
use crate::report::AcceleratorReport;
use crate::sut::duplicate_names;

/// Why the cluster could not be connected (or an accelerator attached).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration cannot make a session (no accelerator, no secret, bad TLS files).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The shared secret could not be read.
    #[error(transparent)]
    Auth(#[from] qdl_shared::auth::AuthError),
    /// The CA file for TLS could not be used.
    #[error(transparent)]
    Tls(#[from] qdl_shared::tls::TlsError),
    /// An accelerator could not be reached or refused the session.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Two accelerators said the same name (the SUT name lists them).
    #[error("accelerator names must be unique (the SUT name lists them); duplicated: {}", .0.join(", "))]
    DuplicateNames(Vec<String>),
    /// The accelerator granted slots of another size than the workload's samples.
    #[error(
        "accelerator {name} granted slots of {granted_input}/{granted_output} bytes for a workload of {input}/{output} bytes"
    )]
    SlotSize {
        /// The accelerator.
        name: String,
        /// Input and output bytes per slot granted.
        granted_input: u32,
        /// See `granted_input`.
        granted_output: u32,
        /// Input and output bytes per sample of the workload.
        input: usize,
        /// See `input`.
        output: u32,
    },
    /// The configured RDMA device could not be opened.
    #[error("the RDMA device: {0}")]
    RdmaDevice(#[source] RdmaError),
    /// An RDMA data connection could not be set up.
    #[error("RDMA connection {connection} to accelerator {name}: {source}")]
    Rdma {
        /// The accelerator.
        name: String,
        /// The connection index.
        connection: u32,
        /// The verbs failure.
        #[source]
        source: RdmaError,
    },
    /// A TCP data connection could not be opened.
    #[error("data connection {connection} to accelerator {name} ({addr}): {source}")]
    Data {
        /// The accelerator.
        name: String,
        /// Its data address.
        addr: std::net::SocketAddr,
        /// The connection index.
        connection: u32,
        /// What failed.
        #[source]
        source: TransportError,
    },
    /// The accelerator's control actor stopped while a data connection was set up.
    #[error("accelerator {0}: the control session stopped while its data connections were set up")]
    ControlStopped(String),
}

impl ClusterError {
    /// Whether the configuration is at fault (exit status 78, [`qdl_shared::exit::CONFIG`]).
    pub fn is_config(&self) -> bool {
        match self {
            ClusterError::Config(e) => qdl_shared::exit::is_config_error(e),
            ClusterError::Auth(e) => qdl_shared::exit::is_config_error(e),
            ClusterError::Tls(e) => qdl_shared::exit::is_config_error(e),
            _ => false,
        }
    }
}

/// How this run opens and re-opens its control sessions and data connections.
pub struct SessionRecipe {
    /// The accelerators, as given (`frontend.accelerators`), in order.
    pub accelerators: Vec<String>,
    /// What every control session says and asks.
    pub params: SessionParams,
    /// The RDMA device when the data path is RDMA.
    pub rdma: Option<Arc<RdmaDevice>>,
}

impl SessionRecipe {
    /// The recipe for `cfg` and the workload `spec`: opens the RDMA device when configured,
    /// reads the secret and the TLS trust.
    pub fn from_config(cfg: &FrontendConfig, spec: &WorkloadSpec) -> Result<SessionRecipe, ClusterError> {
        let f = &cfg.frontend;
        if f.accelerators.is_empty() {
            return Err(ConfigError::Invalid {
                field: "frontend.accelerators".into(),
                reason: "no accelerator given: pass --accelerator HOST:PORT (or QDL_ACCELERATORS, or \
                         frontend.accelerators in the config), or --local"
                    .into(),
            }
            .into());
        }
        let rdma = RdmaDevice::open_configured(&cfg.transport).map_err(ClusterError::RdmaDevice)?;
        let secret = cfg.auth.secret()?;
        if secret.is_none() {
            tracing::warn!("the control channel is NOT authenticated ([auth] required = false, no secret)");
        }
        let tls = match cfg.tls.enabled {
            false => None,
            true => {
                let ca = cfg.tls.ca_file.as_deref().ok_or_else(|| ConfigError::Invalid {
                    field: "tls.ca_file".into(),
                    reason: "[tls] enabled needs the CA that issued the accelerators' certificates".into(),
                })?;
                Some(ClientTls {
                    config: qdl_shared::tls::client_config(ca)?,
                    server_name: cfg.tls.server_name.clone(),
                })
            }
        };
        let request = SessionRequest {
            workload: spec.clone(),
            connections: f.connections_per_accelerator,
            slots_per_connection: f.slots_per_connection,
            transport: if rdma.is_some() { DataTransport::Rdma } else { DataTransport::Tcp },
        };
        let params = SessionParams {
            node: f.name.clone(),
            request,
            heartbeat: cfg.heartbeat.to_heartbeat(),
            secret,
            tls,
            timeout: Duration::from_millis(f.connect_timeout_ms),
        };
        Ok(SessionRecipe { accelerators: f.accelerators.clone(), params, rdma })
    }
}

impl Cluster {
    /// Opens a control session with every accelerator of the recipe (all at once), then each
    /// one's data connections, whose lanes join the issuer. On any failure every session opened
    /// is closed. Returns what each accelerator granted, in the order given.
    pub async fn connect_network(self: &Arc<Self>) -> Result<Vec<AcceleratorReport>, ClusterError> {
        let recipe = self.recipe.clone().expect("a network cluster has a session recipe");
        let sessions = join_all(
            recipe.accelerators.iter().map(|a| AcceleratorClient::connect(a, &recipe.params, self.failures.clone())),
        )
        .await;
        let mut clients: Vec<(Addr<AcceleratorClient>, Established)> = Vec::new();
        let mut first_error = None;
        for s in sessions {
            match s {
                Ok(c) => clients.push(c),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        let close_all = |clients: &[(Addr<AcceleratorClient>, Established)]| {
            for (c, _) in clients {
                c.do_send(CloseClient);
            }
        };
        if let Some(e) = first_error {
            close_all(&clients);
            return Err(e.into());
        }
        let dups = duplicate_names(&clients.iter().map(|(_, e)| e.name.clone()).collect::<Vec<_>>());
        if !dups.is_empty() {
            close_all(&clients);
            return Err(ClusterError::DuplicateNames(dups));
        }
        let mut reports = Vec::new();
        for ((client, est), given) in clients.iter().zip(&recipe.accelerators) {
            match self.attach(&recipe, given, client, est).await {
                Ok(r) => reports.push(r),
                Err(e) => {
                    close_all(&clients);
                    return Err(e);
                }
            }
        }
        *self.clients.lock().unwrap_or_else(|p| p.into_inner()) = clients.into_iter().map(|(c, _)| c).collect();
        Ok(reports)
    }

    /// Opens the data connections of an established session and starts their actors.
    async fn attach(
        &self,
        recipe: &SessionRecipe,
        given: &str,
        client: &Addr<AcceleratorClient>,
        est: &Established,
    ) -> Result<AcceleratorReport, ClusterError> {
        let (g, workload) = (&est.grant, &recipe.params.request.workload);
        if g.input_slot_bytes as usize != workload.input_bytes() || g.output_slot_bytes != workload.output_bytes {
            return Err(ClusterError::SlotSize {
                name: est.name.clone(),
                granted_input: g.input_slot_bytes,
                granted_output: g.output_slot_bytes,
                input: workload.input_bytes(),
                output: workload.output_bytes,
            });
        }
        let asked = &recipe.params.request;
        if g.slots_per_connection < asked.slots_per_connection || g.connections < asked.connections {
            tracing::warn!(
                accelerator = %est.name,
                "granted {} connections × {} slots (asked {} × {})",
                g.connections,
                g.slots_per_connection,
                asked.connections,
                asked.slots_per_connection
            );
        }
        // Exists at 0 from the first attach, so dashboards see it before the first rejoin.
        let _ = metrics::counter!(qdl_shared::metrics::frontend::REJOINS, "accelerator" => est.name.clone());
        for c in 0..g.connections {
            match &recipe.rdma {
                Some(dev) => self.attach_rdma(dev, given, client, est, c, recipe.params.timeout).await?,
                None => self.attach_tcp(given, est, c, recipe.params.timeout).await?,
            }
        }
        Ok(AcceleratorReport {
            address: est.addr.to_string(),
            name: est.name.clone(),
            connections: g.connections,
            slots_per_connection: g.slots_per_connection,
            backend: g.backend.clone(),
            workers: g.workers,
            max_batch: g.max_batch,
            batch_sizes: Vec::new(),
        })
    }

    async fn attach_tcp(&self, given: &str, est: &Established, c: u32, timeout: Duration) -> Result<(), ClusterError> {
        let (name, out_bytes) = (est.name.clone(), est.grant.output_slot_bytes);
        let data_err = |source| ClusterError::Data { name: name.clone(), addr: est.addr, connection: c, source };
        let attach = Attach { token: est.grant.token, connection: c };
        let stream = connect_data(est.addr, attach, timeout).await.map_err(data_err)?;
        let std_stream = stream
            .into_std()
            .map_err(|e| data_err(TransportError::Io { op: "detaching the data connection", source: e }))?;
        let metrics_name = name.clone();
        self.add_connection(given, &name, c, est.grant.slots_per_connection, out_bytes, move || {
            let stream = TcpStream::from_std(std_stream).expect("I/O arbiters run a tokio runtime with I/O enabled");
            Box::new(TcpInitiator::new(stream, out_bytes, TransportMetrics::for_frontend(&metrics_name)))
        });
        Ok(())
    }

    async fn attach_rdma(
        &self,
        dev: &Arc<RdmaDevice>,
        given: &str,
        client: &Addr<AcceleratorClient>,
        est: &Established,
        c: u32,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let g = &est.grant;
        let rdma_err = |source| ClusterError::Rdma { name: est.name.clone(), connection: c, source };
        let setup = InitiatorSetup::new(
            dev,
            g.slots_per_connection,
            g.input_slot_bytes,
            g.output_slot_bytes,
            RdmaMetrics::registered("frontend"),
        )
        .map_err(rdma_err)?;
        let asked = client.send(ConnectRdma { connection: c, endpoint: setup.endpoint() });
        let peer = tokio::time::timeout(timeout, asked)
            .await
            .map_err(|_| {
                ClusterError::Client(ClientError::Timeout {
                    addr: est.addr.to_string(),
                    what: "the answer to an RDMA connection",
                })
            })?
            .map_err(|_| ClusterError::ControlStopped(est.name.clone()))??;
        let init = setup.connect(&peer, TransportMetrics::for_frontend(&est.name)).map_err(rdma_err)?;
        self.add_connection(given, &est.name, c, g.slots_per_connection, g.output_slot_bytes, move || Box::new(init));
        Ok(())
    }
}

/// Tries, once a second until the test ends, to bring back the accelerator given as `given`: a
/// new session (authenticated as at the start), its data connections, and their lanes added to
/// the issuer. LoadGen is told nothing: the SUT is the same, with its capacity back.
/// One task per accelerator: a session lost while its rejoin attaches leaves the running task to
/// retry.
pub(super) fn rejoin(cluster: Arc<Cluster>, given: String) {
    let Some(recipe) = cluster.recipe.clone() else { return };
    if !cluster.rejoining.lock().unwrap_or_else(|p| p.into_inner()).insert(given.clone()) {
        return;
    }
    let done = |cluster: &Cluster, given: &str| {
        cluster.rejoining.lock().unwrap_or_else(|p| p.into_inner()).remove(given);
    };
    let control = cluster.control.clone();
    control.spawn(async move {
        let mut attempt = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(if attempt == 0 { 200 } else { 1000 })).await;
            attempt += 1;
            if cluster.is_over() {
                return done(&cluster, &given);
            }
            let (client, est) = match AcceleratorClient::connect(&given, &recipe.params, cluster.failures.clone()).await
            {
                Ok(c) => c,
                Err(e) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::info!(accelerator = %given, attempt, "not back yet: {e}");
                    }
                    continue;
                }
            };
            let _ = client.send(SetRunState(RunState::Start)).await;
            match cluster.attach(&recipe, &given, &client, &est).await {
                Ok(report) => {
                    cluster.replace_client(&given, client);
                    metrics::counter!(qdl_shared::metrics::frontend::REJOINS, "accelerator" => est.name.clone())
                        .increment(1);
                    tracing::warn!(
                        accelerator = %est.name,
                        addr = %given,
                        connections = report.connections,
                        "accelerator rejoined the run"
                    );
                    return done(&cluster, &given);
                }
                Err(e) => {
                    tracing::warn!(accelerator = %given, "rejoin failed: {e}");
                    client.do_send(CloseClient);
                }
            }
        }
    });
}

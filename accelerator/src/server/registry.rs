//! Sessions and their data connections: the accelerator's control-plane state, shared by the
//! listener and the control actors behind one mutex (never touched per sample).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::{Message, Recipient};
use qdl_shared::config::LimitsConfig;
use qdl_shared::wire::attach::{Attach, AttachStatus, SessionToken};
use qdl_shared::wire::message::{ErrorCode, Limits, SessionGrant, SessionRequest};
use qdl_shared::workload::WorkloadSpec;

/// Asks a data connection to finish its in-flight samples and close (its session ended, or the
/// node is shutting down). The registry holds each live connection as a `Recipient<Close>`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close {
    /// Why, for the log.
    pub reason: &'static str,
}

/// What a data connection needs once attached.
#[derive(Debug, Clone)]
pub struct AttachGrant {
    /// The session's id (for logs and metric labels).
    pub session: u64,
    /// The session's workload.
    pub spec: Arc<WorkloadSpec>,
    /// Slots in this connection's ring.
    pub slots: u32,
}

enum ConnState {
    Free,
    Attaching,
    Live(Recipient<Close>),
}

struct Session {
    id: u64,
    spec: Arc<WorkloadSpec>,
    grant: SessionGrant,
    conns: Vec<ConnState>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionToken, Session>,
    next_id: u64,
    shutting_down: bool,
}

/// The registry; see the module docs.
pub struct Registry {
    inner: Mutex<Inner>,
    limits: LimitsConfig,
    live: AtomicUsize,
}

/// A refusal of a session request.
pub type Refusal = (ErrorCode, String);

impl Registry {
    /// An empty registry enforcing `limits`.
    pub fn new(limits: LimitsConfig) -> Arc<Registry> {
        Arc::new(Registry { inner: Mutex::new(Inner::default()), limits, live: AtomicUsize::new(0) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limits announced in Welcome.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections_per_session: self.limits.max_connections_per_session,
            max_slots_per_connection: self.limits.max_slots_per_connection,
            max_sample_bytes: self.limits.max_sample_bytes,
            max_output_bytes: self.limits.max_output_bytes,
        }
    }

    /// Opens a session for `req` (already checked against the backend): grants at most what the
    /// limits allow, or refuses with a reason.
    pub fn open(
        &self,
        req: &SessionRequest,
        max_batch: u32,
        backend: &str,
        workers: u32,
    ) -> Result<(u64, SessionGrant), Refusal> {
        let l = &self.limits;
        req.workload.validate().map_err(|r| (ErrorCode::Unsupported, format!("invalid workload: {r}")))?;
        let input = req.workload.input_bytes() as u64;
        if input > l.max_sample_bytes as u64 {
            return Err((
                ErrorCode::LimitExceeded,
                format!("samples of {input} bytes exceed limits.max_sample_bytes = {}", l.max_sample_bytes),
            ));
        }
        if req.workload.output_bytes > l.max_output_bytes {
            return Err((
                ErrorCode::LimitExceeded,
                format!(
                    "outputs of {} bytes exceed limits.max_output_bytes = {}",
                    req.workload.output_bytes, l.max_output_bytes
                ),
            ));
        }
        if req.connections == 0 || req.slots_per_connection == 0 {
            return Err((ErrorCode::Protocol, "a session needs at least one connection and one slot".into()));
        }
        let connections = req.connections.min(l.max_connections_per_session);
        let by_memory = l.max_session_memory_bytes / (connections as u64 * input);
        let slots = (req.slots_per_connection as u64).min(l.max_slots_per_connection as u64).min(by_memory) as u32;
        if slots == 0 {
            return Err((
                ErrorCode::LimitExceeded,
                format!(
                    "one slot per connection needs {} bytes, over limits.max_session_memory_bytes",
                    connections as u64 * input
                ),
            ));
        }
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err((ErrorCode::ShuttingDown, "the accelerator is shutting down".into()));
        }
        if inner.sessions.len() >= l.max_sessions as usize {
            return Err((
                ErrorCode::LimitExceeded,
                format!("already serving limits.max_sessions = {} sessions", l.max_sessions),
            ));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let token = loop {
            let t = SessionToken::random();
            if !inner.sessions.contains_key(&t) {
                break t;
            }
        };
        let grant = SessionGrant {
            token,
            connections,
            slots_per_connection: slots,
            input_slot_bytes: input as u32,
            output_slot_bytes: req.workload.output_bytes,
            max_batch,
            backend: backend.to_string(),
            workers,
        };
        let session = Session {
            id,
            spec: Arc::new(req.workload.clone()),
            grant: grant.clone(),
            conns: (0..connections).map(|_| ConnState::Free).collect(),
        };
        inner.sessions.insert(token, session);
        metrics::gauge!(qdl_shared::metrics::accelerator::SESSIONS).set(inner.sessions.len() as f64);
        Ok((id, grant))
    }

    /// The spec of a live session.
    pub fn spec(&self, token: &SessionToken) -> Option<Arc<WorkloadSpec>> {
        self.lock().sessions.get(token).map(|s| s.spec.clone())
    }

    /// Ends a session; returns its live connections so the caller can close them.
    pub fn close(&self, token: &SessionToken) -> Vec<Recipient<Close>> {
        let mut inner = self.lock();
        let Some(s) = inner.sessions.remove(token) else { return Vec::new() };
        metrics::gauge!(qdl_shared::metrics::accelerator::SESSIONS).set(inner.sessions.len() as f64);
        s.conns
            .into_iter()
            .filter_map(|c| match c {
                ConnState::Live(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    /// Checks an attach block; on success the index is reserved for this connection.
    pub fn attach(&self, attach: &Attach) -> Result<AttachGrant, AttachStatus> {
        let mut inner = self.lock();
        if inner.shutting_down {
            return Err(AttachStatus::ShuttingDown);
        }
        let s = inner.sessions.get_mut(&attach.token).ok_or(AttachStatus::UnknownSession)?;
        let conn = s.conns.get_mut(attach.connection as usize).ok_or(AttachStatus::BadConnectionIndex)?;
        if !matches!(conn, ConnState::Free) {
            return Err(AttachStatus::AlreadyAttached);
        }
        *conn = ConnState::Attaching;
        Ok(AttachGrant { session: s.id, spec: s.spec.clone(), slots: s.grant.slots_per_connection })
    }

    /// Records where to send [`Close`] to an attached connection (called by its actor when it
    /// starts). Returns false if the session ended meanwhile (the actor then closes).
    pub fn set_live(&self, token: &SessionToken, index: u32, addr: Recipient<Close>) -> bool {
        let mut inner = self.lock();
        match inner.sessions.get_mut(token).and_then(|s| s.conns.get_mut(index as usize)) {
            Some(c @ ConnState::Attaching) => {
                *c = ConnState::Live(addr);
                true
            }
            _ => false,
        }
    }

    /// A connection ended: its index may attach again (a reconnecting frontend).
    pub fn detach(&self, token: &SessionToken, index: u32) {
        if let Some(c) = self.lock().sessions.get_mut(token).and_then(|s| s.conns.get_mut(index as usize)) {
            *c = ConnState::Free;
        }
    }

    /// Refuses new sessions and connections from now on.
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
    }

    /// Whether the node is shutting down.
    pub fn shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Live sessions.
    pub fn sessions(&self) -> usize {
        self.lock().sessions.len()
    }

    /// A connection actor started.
    pub fn connection_started(&self) {
        let n = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(qdl_shared::metrics::accelerator::CONNECTIONS).set(n as f64);
    }

    /// A connection actor stopped (its index may attach again).
    pub fn connection_stopped(&self, token: &SessionToken, index: u32) {
        let n = self.live.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(qdl_shared::metrics::accelerator::CONNECTIONS).set(n as f64);
        self.detach(token, index);
    }

    /// Connection actors alive.
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(conns: u32, slots: u32) -> SessionRequest {
        SessionRequest {
            workload: WorkloadSpec::resnet50(),
            connections: conns,
            slots_per_connection: slots,
            transport: Default::default(),
        }
    }

    #[test]
    fn grants_are_capped_by_limits_and_memory() {
        let limits = LimitsConfig {
            max_slots_per_connection: 1000,
            max_connections_per_session: 4,
            max_session_memory_bytes: 150_528 * 4 * 100,
            ..Default::default()
        };
        let r = Registry::new(limits);
        let (_, g) = r.open(&req(8, 8192), 64, "echo", 1).unwrap();
        assert_eq!(
            (g.connections, g.slots_per_connection, g.input_slot_bytes, g.output_slot_bytes),
            (4, 100, 150_528, 4)
        );
    }

    #[test]
    fn refusals_explain_themselves() {
        let r = Registry::new(LimitsConfig { max_sessions: 1, max_sample_bytes: 1000, ..Default::default() });
        let (code, msg) = r.open(&req(1, 1), 1, "echo", 1).unwrap_err();
        assert_eq!(code, ErrorCode::LimitExceeded);
        assert!(msg.contains("limits.max_sample_bytes"), "{msg}");
        let r = Registry::new(LimitsConfig { max_sessions: 1, ..Default::default() });
        r.open(&req(1, 1), 1, "echo", 1).unwrap();
        let (_, msg) = r.open(&req(1, 1), 1, "echo", 1).unwrap_err();
        assert!(msg.contains("max_sessions"), "{msg}");
        let mut bad = req(1, 1);
        bad.workload.output_bytes = 3;
        assert_eq!(r.open(&bad, 1, "echo", 1).unwrap_err().0, ErrorCode::Unsupported);
        r.begin_shutdown();
        assert!(r.shutting_down());
    }

    #[test]
    fn attach_checks_token_index_and_duplicates() {
        let r = Registry::new(LimitsConfig::default());
        let (_, g) = r.open(&req(2, 4), 1, "echo", 1).unwrap();
        let ok = Attach { token: g.token, connection: 1 };
        assert_eq!(r.attach(&ok).unwrap().slots, 4);
        assert_eq!(r.attach(&ok).unwrap_err(), AttachStatus::AlreadyAttached);
        assert_eq!(r.attach(&Attach { token: g.token, connection: 2 }).unwrap_err(), AttachStatus::BadConnectionIndex);
        assert_eq!(
            r.attach(&Attach { token: SessionToken([0; 16]), connection: 0 }).unwrap_err(),
            AttachStatus::UnknownSession
        );
        r.detach(&g.token, 1);
        assert!(r.attach(&ok).is_ok(), "a detached index may attach again");
        assert!(r.close(&g.token).is_empty());
        assert_eq!(r.attach(&ok).unwrap_err(), AttachStatus::UnknownSession);
        r.begin_shutdown();
        let (_, msg) = r.open(&req(1, 1), 1, "echo", 1).unwrap_err();
        assert!(msg.contains("shutting down"));
    }
}

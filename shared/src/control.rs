//! The control connection as a sans-IO state machine: one [`Endpoint`] per side.
//!
//! ```text
//! frontend (client)                         accelerator (server)
//!   preamble + Hello {node, Nc} ───────▶
//!                               ◀───────    preamble (sent on accept)
//!                               ◀───────    Challenge {Ns, server proof}   (crate::auth)
//!   Auth {client proof}         ───────▶    (a wrong proof either way ends it: Unauthorized)
//!                               ◀───────    Welcome {name, limits}
//!   Configure {workload, ...}   ───────▶    → Event::ConfigureRequested → grant()/refuse()
//!                               ◀───────    Configured {token, slots, ...} | Error
//!   QueryName / RunState        ───────▶    Name (answered here) / RunStateAck (by the driver)
//!   RdmaConnect {conn, qp, ring} ──────▶    → Event::RdmaConnectRequested → accept_rdma()/refuse()
//!                               ◀───────    RdmaAccept {qp, ring}  (only on an established session)
//!   Heartbeat / HeartbeatAck    ◀──────▶    every interval, both ways; silence for
//!                                           `misses` intervals = peer dead
//!   Goodbye                     ◀──────▶
//! ```
//!
//! Drivers feed bytes with [`Endpoint::handle_input`] and timer expiries with
//! [`Endpoint::handle_timeout`], then drain [`Endpoint::poll_transmit`], [`Endpoint::poll_event`]
//! and [`Endpoint::poll_timeout`]. Time is passed in; nothing here does I/O.

use std::collections::VecDeque;

use crate::auth::{self, NONCE_LEN, Secret};
use crate::time::Nanos;
use crate::wire::WireError;
use crate::wire::message::{
    self, ErrorCode, Limits, Message, NodeStats, RdmaEndpoint, RunState, SessionGrant, SessionRequest,
};
use crate::wire::preamble::{PREAMBLE_LEN, Preamble, Role};

/// Errors that end a control session.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// Bytes that are not a valid preamble or message (includes a protocol version mismatch).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A valid message at the wrong time.
    #[error("unexpected {got} while {phase}")]
    Unexpected {
        /// The message received.
        got: &'static str,
        /// What the endpoint was waiting for.
        phase: &'static str,
    },
    /// The peer sent nothing for too long.
    #[error("peer silent for {silent_ms} ms ({misses} heartbeat intervals of {interval_ms} ms): declared dead")]
    PeerDead {
        /// How long it was silent.
        silent_ms: u64,
        /// Intervals allowed.
        misses: u32,
        /// The interval.
        interval_ms: u64,
    },
    /// The peer reported an error and closed the session.
    #[error("peer reported {code:?}: {message}")]
    Peer {
        /// The peer's error class.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
    /// We refused the peer's request (server side).
    #[error("refused: {message}")]
    Refused {
        /// The explanation sent to the peer.
        message: String,
    },
    /// An operation that needs an established session was attempted before or after it.
    #[error("the control session is not established")]
    NotEstablished,
    /// The peer did not prove that it knows the shared secret.
    #[error("authentication failed: {0}")]
    Unauthorized(&'static str),
    /// The handshake was not over in time.
    #[error("handshake not completed within {ms} ms")]
    HandshakeTimeout {
        /// The time allowed.
        ms: u64,
    },
}

/// How long a peer has to complete the handshake, authentication included, whatever it sends
/// meanwhile (a peer trickling bytes cannot hold a connection open).
pub const HANDSHAKE_TIMEOUT: Nanos = Nanos(10_000_000_000);

/// Heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Interval between heartbeats (default 1 s).
    pub interval: Nanos,
    /// A peer silent for this many intervals is dead (default 3).
    pub misses: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { interval: Nanos::from_millis(1000), misses: 3 }
    }
}

/// What an endpoint reports to its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// (client) The accelerator introduced itself.
    Welcomed {
        /// Its name.
        name: String,
        /// Its limits.
        limits: Limits,
    },
    /// (client) The session is granted; data connections may attach.
    Established(SessionGrant),
    /// (client) Answer to [`Endpoint::query_name`].
    Name {
        /// The request answered.
        request: u32,
        /// The accelerator's name.
        name: String,
    },
    /// (client) Answer to [`Endpoint::set_run_state`].
    RunStateAck {
        /// The request acknowledged.
        request: u32,
        /// The state reached.
        state: RunState,
    },
    /// (client) Answer to [`Endpoint::query_stats`].
    Stats {
        /// The request answered.
        request: u32,
        /// The accelerator's statistics.
        stats: NodeStats,
    },
    /// (server) The frontend asks for statistics: answer with [`Endpoint::send_stats`].
    StatsRequested {
        /// Correlates the answer.
        request: u32,
    },
    /// (server) A frontend said hello.
    Hello {
        /// The frontend's node name.
        node: String,
    },
    /// (server) The frontend asks for a session: answer with [`Endpoint::grant`] or
    /// [`Endpoint::refuse`].
    ConfigureRequested(SessionRequest),
    /// (server) The run moves to `state`: act, then [`Endpoint::ack_run_state`].
    RunState {
        /// Correlates the acknowledgement.
        request: u32,
        /// The new state.
        state: RunState,
    },
    /// (server) The frontend asks for RDMA data connection `connection`: set it up, then
    /// [`Endpoint::accept_rdma`] (or [`Endpoint::refuse`]).
    RdmaConnectRequested {
        /// Correlates the answer.
        request: u32,
        /// The connection index.
        connection: u32,
        /// The frontend's queue pair and response ring.
        endpoint: RdmaEndpoint,
    },
    /// (client) Answer to [`Endpoint::connect_rdma`].
    RdmaAccepted {
        /// The request answered.
        request: u32,
        /// The accelerator's queue pair and request ring.
        endpoint: RdmaEndpoint,
    },
    /// (both) A heartbeat round trip completed.
    HeartbeatRtt(Nanos),
    /// (both) The peer said goodbye.
    Closed,
    /// (both) The session failed; transmit what is queued, then close.
    Failed(ControlError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitPreamble,
    /// client: Hello sent, waiting for Challenge; server: waiting for Hello.
    Greeting,
    /// client: Auth sent, waiting for Welcome; server: Challenge sent, waiting for Auth.
    Authenticating,
    /// client: Configure sent; server: Welcome sent, waiting for Configure (or for the driver).
    Configuring,
    Established,
    Done,
}

impl Phase {
    /// Whether the peer has proved the shared secret (Welcome sent or received).
    fn authenticated(self) -> bool {
        matches!(self, Phase::Configuring | Phase::Established)
    }

    fn describe(self, server: bool) -> &'static str {
        match (self, server) {
            (Phase::AwaitPreamble, _) => "awaiting the preamble",
            (Phase::Greeting, false) => "awaiting Challenge",
            (Phase::Greeting, true) => "awaiting Hello",
            (Phase::Authenticating, false) => "awaiting Welcome",
            (Phase::Authenticating, true) => "awaiting Auth",
            (Phase::Configuring, false) => "awaiting Configured",
            (Phase::Configuring, true) => "awaiting Configure",
            (Phase::Established, _) => "established",
            (Phase::Done, _) => "closed",
        }
    }
}

/// Which side an endpoint is, with what only that side holds.
enum Side {
    /// The frontend.
    Client {
        /// The session it asks for once welcomed.
        request: SessionRequest,
    },
    /// The accelerator.
    Server {
        /// Its name (Welcome, Name).
        name: String,
        /// What it allows (Welcome).
        limits: Limits,
        /// A Configure was received and awaits [`Endpoint::grant`] (a second one is refused).
        configure_pending: bool,
        /// The frontend's node name, reported once it has proved itself.
        peer_node: String,
        /// The frontend's nonce (from Hello), which its proof covers.
        peer_nonce: [u8; NONCE_LEN],
    },
}

impl Side {
    fn is_server(&self) -> bool {
        matches!(self, Side::Server { .. })
    }
}

/// One side of a control connection; see the module docs.
pub struct Endpoint {
    side: Side,
    phase: Phase,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    events: VecDeque<Event>,
    heartbeat: Heartbeat,
    next_heartbeat: Nanos,
    last_rx: Nanos,
    heartbeat_seq: u64,
    next_request: u32,
    // authentication
    secret: Secret,
    /// The handshake (authentication included) must be over by then.
    handshake_deadline: Nanos,
    handshake_timeout: Nanos,
    /// This side's nonce, passed in at construction (production: [`auth::nonce`]).
    nonce: [u8; NONCE_LEN],
}

impl Endpoint {
    /// The frontend side: queues its preamble and Hello; sends `request` once welcomed.
    /// `nonce` is this session's challenge to the accelerator: fresh OS randomness
    /// ([`auth::nonce`]) in production, fixed in tests that replay a handshake.
    pub fn client(
        node: &str,
        request: SessionRequest,
        heartbeat: Heartbeat,
        now: Nanos,
        nonce: [u8; NONCE_LEN],
    ) -> Endpoint {
        let mut e = Endpoint::new(Side::Client { request }, heartbeat, now, nonce);
        e.outbuf.extend_from_slice(&Preamble::ours(Role::Control).encode());
        e.send(&Message::Hello { node: node.to_string(), nonce: e.nonce });
        e
    }

    /// Gives the peer `timeout` (from this endpoint's creation) to finish the handshake,
    /// authentication included; default [`HANDSHAKE_TIMEOUT`].
    pub fn with_handshake_timeout(mut self, timeout: Nanos) -> Endpoint {
        self.handshake_deadline = self.last_rx + timeout;
        self.handshake_timeout = timeout;
        self
    }

    /// Uses `secret` to authenticate (both sides; see [`crate::auth`]). Without it an endpoint
    /// uses the empty key of nodes that have no secret.
    pub fn with_secret(mut self, secret: Secret) -> Endpoint {
        self.secret = secret;
        self
    }

    /// The accelerator side: queues its preamble (sent on accept, whatever the peer's version).
    /// `nonce` is its challenge to the frontend (see [`Endpoint::client`]).
    pub fn server(name: &str, limits: Limits, heartbeat: Heartbeat, now: Nanos, nonce: [u8; NONCE_LEN]) -> Endpoint {
        let side = Side::Server {
            name: name.to_string(),
            limits,
            configure_pending: false,
            peer_node: String::new(),
            peer_nonce: [0; NONCE_LEN],
        };
        let mut e = Endpoint::new(side, heartbeat, now, nonce);
        e.outbuf.extend_from_slice(&Preamble::ours(Role::Control).encode());
        e
    }

    /// An accelerator-side endpoint whose preamble was already read by the listener (which reads
    /// it to tell control from data connections).
    pub fn server_after_preamble(
        name: &str,
        limits: Limits,
        heartbeat: Heartbeat,
        now: Nanos,
        nonce: [u8; NONCE_LEN],
    ) -> Endpoint {
        let mut e = Endpoint::server(name, limits, heartbeat, now, nonce);
        e.phase = Phase::Greeting;
        e
    }

    fn new(side: Side, heartbeat: Heartbeat, now: Nanos, nonce: [u8; NONCE_LEN]) -> Endpoint {
        Endpoint {
            side,
            phase: Phase::AwaitPreamble,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            events: VecDeque::new(),
            heartbeat,
            next_heartbeat: now + heartbeat.interval,
            last_rx: now,
            heartbeat_seq: 0,
            next_request: 1,
            secret: Secret::none(),
            handshake_deadline: now + HANDSHAKE_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            nonce,
        }
    }

    /// Whether the session is established (data may flow).
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Bytes received but not yet decoded: at most one incomplete frame (its length was checked).
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }

    /// Whether the session is over (closed or failed): close the connection once transmitted.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Bytes received from the peer.
    pub fn handle_input(&mut self, bytes: &[u8], now: Nanos) {
        if self.phase == Phase::Done {
            return;
        }
        self.last_rx = now;
        self.inbuf.extend_from_slice(bytes);
        let mut at = 0;
        while self.phase != Phase::Done {
            let rest = &self.inbuf[at..];
            if self.phase == Phase::AwaitPreamble {
                match Preamble::parse(rest) {
                    Ok(p) if p.role == Role::Control => {
                        at += PREAMBLE_LEN;
                        self.phase = Phase::Greeting;
                    }
                    Ok(_) => {
                        let err = ControlError::Unexpected {
                            got: "a data-connection preamble",
                            phase: "awaiting the preamble",
                        };
                        self.fail(err, false);
                    }
                    Err(e) if e.is_incomplete() => break,
                    // A version mismatch cannot be answered in the peer's message format.
                    Err(e) => self.fail(e.into(), false),
                }
                continue;
            }
            match message::parse(rest) {
                Ok((msg, used)) => {
                    at += used;
                    self.handle_message(msg, now);
                }
                Err(e) if e.is_incomplete() => break,
                Err(e) => self.fail(e.into(), true),
            }
        }
        self.inbuf.drain(..at.min(self.inbuf.len()));
    }

    fn handle_message(&mut self, msg: Message, now: Nanos) {
        let server = self.side.is_server();
        match (&mut self.side, self.phase, msg) {
            // Heartbeats keep only an authenticated session alive: before that, a peer has the
            // handshake deadline and nothing else.
            (_, phase, Message::Heartbeat { seq, sent_ns }) if phase.authenticated() => {
                self.send(&Message::HeartbeatAck { seq, sent_ns })
            }
            (_, phase, Message::HeartbeatAck { sent_ns, .. }) if phase.authenticated() => {
                self.events.push_back(Event::HeartbeatRtt(now.since(Nanos(sent_ns))));
            }
            (_, _, Message::Error { code, message }) => self.fail(ControlError::Peer { code, message }, false),
            (_, _, Message::Goodbye) => {
                self.phase = Phase::Done;
                self.events.push_back(Event::Closed);
            }
            // client
            (Side::Client { .. }, Phase::Greeting, Message::Challenge { nonce, proof }) => {
                if !self.secret.verify(auth::SERVER, &self.nonce, &nonce, &proof) {
                    let why = "the accelerator did not prove that it knows the shared secret (is QDL_SECRET or \
                               [auth] secret_file the same on both nodes?)";
                    self.fail(ControlError::Unauthorized(why), true);
                    return;
                }
                self.send(&Message::Auth { proof: self.secret.proof(auth::CLIENT, &nonce, &self.nonce) });
                self.phase = Phase::Authenticating;
            }
            (Side::Client { request }, Phase::Authenticating, Message::Welcome { name, limits, .. }) => {
                let configure = Message::Configure(request.clone());
                self.events.push_back(Event::Welcomed { name, limits });
                self.send(&configure);
                self.phase = Phase::Configuring;
            }
            (Side::Client { .. }, Phase::Configuring, Message::Configured(grant)) => {
                self.phase = Phase::Established;
                self.events.push_back(Event::Established(grant));
            }
            (Side::Client { .. }, Phase::Established, Message::Name { request, name }) => {
                self.events.push_back(Event::Name { request, name });
            }
            (Side::Client { .. }, Phase::Established, Message::RunStateAck { request, state }) => {
                self.events.push_back(Event::RunStateAck { request, state });
            }
            (Side::Client { .. }, Phase::Established, Message::Stats { request, stats }) => {
                self.events.push_back(Event::Stats { request, stats });
            }
            (Side::Client { .. }, Phase::Established, Message::RdmaAccept { request, endpoint }) => {
                self.events.push_back(Event::RdmaAccepted { request, endpoint });
            }
            // server
            (Side::Server { peer_node, peer_nonce, .. }, Phase::Greeting, Message::Hello { node, nonce }) => {
                // Nothing about this node (name, limits) is said before the peer has proved itself.
                *peer_node = node;
                *peer_nonce = nonce;
                let proof = self.secret.proof(auth::SERVER, &nonce, &self.nonce);
                self.send(&Message::Challenge { nonce: self.nonce, proof });
                self.phase = Phase::Authenticating;
            }
            (
                Side::Server { name, limits, peer_node, peer_nonce, .. },
                Phase::Authenticating,
                Message::Auth { proof },
            ) => {
                if !self.secret.verify(auth::CLIENT, &self.nonce, peer_nonce, &proof) {
                    let why = "the frontend did not prove that it knows the shared secret";
                    self.fail(ControlError::Unauthorized(why), true);
                    return;
                }
                let hb = (self.heartbeat.interval.0 / 1_000_000) as u32;
                let welcome = Message::Welcome { name: name.clone(), limits: *limits, heartbeat_interval_ms: hb };
                self.events.push_back(Event::Hello { node: std::mem::take(peer_node) });
                self.send(&welcome);
                self.phase = Phase::Configuring;
            }
            (Side::Server { configure_pending, .. }, Phase::Configuring, Message::Configure(req))
                if !*configure_pending =>
            {
                // Remember that a request is pending so a second Configure is refused.
                *configure_pending = true;
                self.events.push_back(Event::ConfigureRequested(req));
            }
            (Side::Server { name, .. }, Phase::Established, Message::QueryName { request }) => {
                let answer = Message::Name { request, name: name.clone() };
                self.send(&answer);
            }
            (Side::Server { .. }, Phase::Established, Message::RunState { request, state }) => {
                self.events.push_back(Event::RunState { request, state });
            }
            (Side::Server { .. }, Phase::Established, Message::QueryStats { request }) => {
                self.events.push_back(Event::StatsRequested { request });
            }
            // RDMA parameters (and so rkeys) are exchanged only once the session is established.
            (Side::Server { .. }, Phase::Established, Message::RdmaConnect { request, connection, endpoint }) => {
                self.events.push_back(Event::RdmaConnectRequested { request, connection, endpoint });
            }
            (_, phase, other) => {
                let err = ControlError::Unexpected { got: other.name(), phase: phase.describe(server) };
                self.fail(err, true);
            }
        }
    }

    /// A timer fired (at or after [`Endpoint::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Nanos) {
        if self.phase == Phase::Done {
            return;
        }
        // Before the peer is authenticated only the handshake deadline runs: no heartbeat is
        // sent (the peer would refuse it as out of place) and silence is not yet a death.
        if !self.phase.authenticated() {
            if now >= self.handshake_deadline {
                let err = ControlError::HandshakeTimeout { ms: self.handshake_timeout.0 / 1_000_000 };
                self.fail(err, true);
            }
            return;
        }
        let dead_after = Nanos(self.heartbeat.interval.0 * self.heartbeat.misses as u64);
        let silent = now.since(self.last_rx);
        if silent >= dead_after {
            let err = ControlError::PeerDead {
                silent_ms: silent.0 / 1_000_000,
                misses: self.heartbeat.misses,
                interval_ms: self.heartbeat.interval.0 / 1_000_000,
            };
            self.fail(err, true);
            return;
        }
        if now >= self.next_heartbeat {
            self.heartbeat_seq += 1;
            self.send(&Message::Heartbeat { seq: self.heartbeat_seq, sent_ns: now.0 });
            self.next_heartbeat = now + self.heartbeat.interval;
        }
    }

    /// When [`Endpoint::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        if self.phase == Phase::Done {
            return None;
        }
        if !self.phase.authenticated() {
            return Some(self.handshake_deadline);
        }
        let dead = self.last_rx + Nanos(self.heartbeat.interval.0 * self.heartbeat.misses as u64);
        Some(dead.min(self.next_heartbeat))
    }

    /// Bytes to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbuf.is_empty() { None } else { Some(std::mem::take(&mut self.outbuf)) }
    }

    /// Whether bytes are waiting for [`Endpoint::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// (client) Asks the accelerator for its name; the answer arrives as [`Event::Name`].
    pub fn query_name(&mut self) -> Result<u32, ControlError> {
        self.require_established()?;
        let request = self.take_request_id();
        self.send(&Message::QueryName { request });
        Ok(request)
    }

    /// (client) Moves the run to `state`; the answer arrives as [`Event::RunStateAck`].
    pub fn set_run_state(&mut self, state: RunState) -> Result<u32, ControlError> {
        self.require_established()?;
        let request = self.take_request_id();
        self.send(&Message::RunState { request, state });
        Ok(request)
    }

    /// (client) Asks for the accelerator's statistics; the answer arrives as [`Event::Stats`].
    pub fn query_stats(&mut self) -> Result<u32, ControlError> {
        self.require_established()?;
        let request = self.take_request_id();
        self.send(&Message::QueryStats { request });
        Ok(request)
    }

    /// (client) Asks the accelerator to set up RDMA data connection `connection` with the
    /// frontend's `endpoint`; the answer arrives as [`Event::RdmaAccepted`].
    pub fn connect_rdma(&mut self, connection: u32, endpoint: RdmaEndpoint) -> Result<u32, ControlError> {
        self.require_established()?;
        let request = self.take_request_id();
        self.send(&Message::RdmaConnect { request, connection, endpoint });
        Ok(request)
    }

    /// (server) Answers an RDMA connection request with the accelerator's side.
    pub fn accept_rdma(&mut self, request: u32, endpoint: RdmaEndpoint) -> Result<(), ControlError> {
        self.require_established()?;
        self.send(&Message::RdmaAccept { request, endpoint });
        Ok(())
    }

    /// (server) Answers a statistics request.
    pub fn send_stats(&mut self, request: u32, stats: NodeStats) -> Result<(), ControlError> {
        self.require_established()?;
        self.send(&Message::Stats { request, stats });
        Ok(())
    }

    /// (server) Grants the pending configuration.
    pub fn grant(&mut self, grant: SessionGrant) -> Result<(), ControlError> {
        let pending = matches!(self.side, Side::Server { configure_pending: true, .. });
        if !(pending && self.phase == Phase::Configuring) {
            return Err(ControlError::NotEstablished);
        }
        self.send(&Message::Configured(grant));
        self.phase = Phase::Established;
        Ok(())
    }

    /// (server) Refuses the pending configuration (or anything else) and ends the session.
    pub fn refuse(&mut self, code: ErrorCode, message: String) {
        self.send(&Message::Error { code, message: message.clone() });
        self.phase = Phase::Done;
        self.events.push_back(Event::Failed(ControlError::Refused { message }));
    }

    /// (server) Acknowledges a run state change.
    pub fn ack_run_state(&mut self, request: u32, state: RunState) -> Result<(), ControlError> {
        self.require_established()?;
        self.send(&Message::RunStateAck { request, state });
        Ok(())
    }

    /// Ends the session politely.
    pub fn close(&mut self) {
        if self.phase != Phase::Done {
            self.send(&Message::Goodbye);
            self.phase = Phase::Done;
        }
    }

    fn require_established(&self) -> Result<(), ControlError> {
        if self.phase == Phase::Established { Ok(()) } else { Err(ControlError::NotEstablished) }
    }

    fn take_request_id(&mut self) -> u32 {
        let r = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        r
    }

    fn send(&mut self, msg: &Message) {
        // Our own messages are bounded (names and specs are validated before they get here); an
        // encoding failure is a bug in this node, reported as a failed session, never a panic.
        if let Err(e) = message::encode(msg, &mut self.outbuf) {
            self.phase = Phase::Done;
            self.events.push_back(Event::Failed(e.into()));
        }
    }

    fn fail(&mut self, err: ControlError, tell_peer: bool) {
        if tell_peer && self.phase != Phase::AwaitPreamble {
            let code = match err {
                ControlError::PeerDead { .. } | ControlError::HandshakeTimeout { .. } => ErrorCode::Timeout,
                ControlError::Unauthorized(_) => ErrorCode::Unauthorized,
                _ => ErrorCode::Protocol,
            };
            self.send(&Message::Error { code, message: err.to_string() });
        }
        self.phase = Phase::Done;
        self.events.push_back(Event::Failed(err));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::attach::SessionToken;
    use crate::workload::WorkloadSpec;

    const CLIENT_NONCE: [u8; NONCE_LEN] = [0xc1; NONCE_LEN];
    const SERVER_NONCE: [u8; NONCE_LEN] = [0x5e; NONCE_LEN];

    fn limits() -> Limits {
        Limits {
            max_connections_per_session: 4,
            max_slots_per_connection: 64,
            max_sample_bytes: 1 << 20,
            max_output_bytes: 64,
        }
    }

    fn request() -> SessionRequest {
        SessionRequest {
            workload: WorkloadSpec::bert(),
            connections: 2,
            slots_per_connection: 32,
            transport: Default::default(),
        }
    }

    fn grant() -> SessionGrant {
        SessionGrant {
            token: SessionToken([5; 16]),
            connections: 2,
            slots_per_connection: 32,
            input_slot_bytes: 4608,
            output_slot_bytes: 8,
            max_batch: 16,
            backend: "echo".into(),
            workers: 1,
        }
    }

    fn pump(a: &mut Endpoint, b: &mut Endpoint, now: Nanos) {
        for _ in 0..8 {
            if let Some(bytes) = a.poll_transmit() {
                b.handle_input(&bytes, now);
            }
            if let Some(bytes) = b.poll_transmit() {
                a.handle_input(&bytes, now);
            }
        }
    }

    fn events(e: &mut Endpoint) -> Vec<Event> {
        std::iter::from_fn(|| e.poll_event()).collect()
    }

    #[test]
    fn handshake_name_and_run_state() {
        let t = Nanos::ZERO;
        let mut c = Endpoint::client("fe", request(), Heartbeat::default(), t, CLIENT_NONCE);
        let mut s = Endpoint::server("acc-0", limits(), Heartbeat::default(), t, SERVER_NONCE);
        pump(&mut c, &mut s, t);
        assert_eq!(events(&mut s), vec![Event::Hello { node: "fe".into() }, Event::ConfigureRequested(request())]);
        s.grant(grant()).unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(
            events(&mut c),
            vec![Event::Welcomed { name: "acc-0".into(), limits: limits() }, Event::Established(grant())]
        );
        let q = c.query_name().unwrap();
        let r = c.set_run_state(RunState::Warmup).unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(events(&mut s), vec![Event::RunState { request: r, state: RunState::Warmup }]);
        s.ack_run_state(r, RunState::Warmup).unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(
            events(&mut c),
            vec![
                Event::Name { request: q, name: "acc-0".into() },
                Event::RunStateAck { request: r, state: RunState::Warmup }
            ]
        );
        let q = c.query_stats().unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(events(&mut s), vec![Event::StatsRequested { request: q }]);
        let stats = NodeStats { batch_sizes: vec![(8, 2)] };
        s.send_stats(q, stats.clone()).unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(events(&mut c), vec![Event::Stats { request: q, stats }]);
        c.close();
        pump(&mut c, &mut s, t);
        assert_eq!(events(&mut s), vec![Event::Closed]);
        assert!(c.is_done() && s.is_done());
    }

    fn rdma_endpoint(qp_num: u32) -> RdmaEndpoint {
        RdmaEndpoint { qp_num, psn: 1, gid: [0; 16], lid: 0, mtu: 1024, addr: 4096, rkey: 7, slots: 32, slot_bytes: 64 }
    }

    #[test]
    fn rdma_parameters_flow_only_on_an_established_session() {
        let t = Nanos::ZERO;
        let mut c = Endpoint::client("fe", request(), Heartbeat::default(), t, CLIENT_NONCE);
        let mut s = Endpoint::server("acc-0", limits(), Heartbeat::default(), t, SERVER_NONCE);
        // Before the session is granted the client cannot even queue its parameters.
        assert_eq!(c.connect_rdma(0, rdma_endpoint(1)), Err(ControlError::NotEstablished));
        pump(&mut c, &mut s, t);
        events(&mut s);
        assert_eq!(s.accept_rdma(1, rdma_endpoint(2)), Err(ControlError::NotEstablished), "no rkey before the grant");
        s.grant(grant()).unwrap();
        pump(&mut c, &mut s, t);
        events(&mut c);
        let r = c.connect_rdma(1, rdma_endpoint(11)).unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(
            events(&mut s),
            vec![Event::RdmaConnectRequested { request: r, connection: 1, endpoint: rdma_endpoint(11) }]
        );
        s.accept_rdma(r, rdma_endpoint(22)).unwrap();
        pump(&mut c, &mut s, t);
        assert_eq!(events(&mut c), vec![Event::RdmaAccepted { request: r, endpoint: rdma_endpoint(22) }]);
    }

    #[test]
    fn rdma_connect_before_the_grant_fails_the_session() {
        let t = Nanos::ZERO;
        let mut c = Endpoint::client("fe", request(), Heartbeat::default(), t, CLIENT_NONCE);
        let mut s = Endpoint::server("acc-0", limits(), Heartbeat::default(), t, SERVER_NONCE);
        pump(&mut c, &mut s, t);
        events(&mut s);
        // A peer that skips the handshake and sends RDMA parameters is refused, not answered.
        let mut raw = Vec::new();
        message::encode(&Message::RdmaConnect { request: 1, connection: 0, endpoint: rdma_endpoint(3) }, &mut raw)
            .unwrap();
        s.handle_input(&raw, t);
        let ev = events(&mut s);
        assert!(matches!(&ev[..], [Event::Failed(ControlError::Unexpected { got: "RdmaConnect", .. })]), "{ev:?}");
        assert!(s.is_done());
    }

    #[test]
    fn bytes_may_arrive_one_at_a_time() {
        let t = Nanos::ZERO;
        let mut c = Endpoint::client("fe", request(), Heartbeat::default(), t, CLIENT_NONCE);
        let mut s = Endpoint::server("acc", limits(), Heartbeat::default(), t, SERVER_NONCE);
        let one_by_one = |from: &mut Endpoint, to: &mut Endpoint| {
            for b in from.poll_transmit().unwrap() {
                to.handle_input(&[b], t);
            }
        };
        one_by_one(&mut c, &mut s); // preamble + Hello
        assert_eq!(events(&mut s), vec![], "nothing is reported before the frontend proves itself");
        one_by_one(&mut s, &mut c); // preamble + Challenge
        one_by_one(&mut c, &mut s); // Auth
        assert_eq!(events(&mut s), vec![Event::Hello { node: "fe".into() }]);
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes(), "test").unwrap()
    }

    fn pair(client: &str, server: &str) -> (Endpoint, Endpoint) {
        let t = Nanos::ZERO;
        let c = Endpoint::client("fe", request(), Heartbeat::default(), t, CLIENT_NONCE).with_secret(secret(client));
        let s = Endpoint::server("acc-0", limits(), Heartbeat::default(), t, SERVER_NONCE).with_secret(secret(server));
        (c, s)
    }

    #[test]
    fn both_sides_prove_the_shared_secret() {
        let t = Nanos::ZERO;
        let (mut c, mut s) = pair("the shared secret", "the shared secret");
        pump(&mut c, &mut s, t);
        assert_eq!(events(&mut s), vec![Event::Hello { node: "fe".into() }, Event::ConfigureRequested(request())]);
        assert!(matches!(&events(&mut c)[..], [Event::Welcomed { .. }]));
    }

    #[test]
    fn a_frontend_with_another_secret_is_refused_before_learning_anything() {
        let t = Nanos::ZERO;
        let (mut c, mut s) = pair("not the right secret", "the shared secret");
        let hello = c.poll_transmit().unwrap();
        s.handle_input(&hello, t);
        let challenge = s.poll_transmit().unwrap();
        // The accelerator's first answer is its challenge: no name, no limits.
        let (msg, _) = message::parse(&challenge[PREAMBLE_LEN..]).unwrap();
        assert!(matches!(msg, Message::Challenge { .. }), "{msg:?}");
        assert_eq!(challenge.len(), PREAMBLE_LEN + 4 + 1 + 64);
        // The frontend cannot check a proof made with another key: it refuses the accelerator.
        c.handle_input(&challenge, t);
        let ev = events(&mut c);
        assert!(
            matches!(&ev[..], [Event::Failed(ControlError::Unauthorized(why))] if why.contains("accelerator")),
            "{ev:?}"
        );
        // Had it answered anyway (a frontend that skips the check), its proof fails.
        let mut forged = Vec::new();
        message::encode(&Message::Auth { proof: [0x5a; 32] }, &mut forged).unwrap();
        s.handle_input(&forged, t);
        let ev = events(&mut s);
        assert!(matches!(&ev[..], [Event::Failed(ControlError::Unauthorized(_))]), "{ev:?}");
        let refusal = s.poll_transmit().unwrap();
        let (msg, _) = message::parse(&refusal).unwrap();
        assert!(matches!(msg, Message::Error { code: ErrorCode::Unauthorized, .. }), "{msg:?}");
        assert!(s.is_done());
    }

    #[test]
    fn a_peer_cannot_hold_an_unauthenticated_connection_open() {
        // Trickling a Hello one byte every 500 ms keeps the link busy, but the handshake
        // deadline still ends it.
        let (mut c, _) = pair("the shared secret", "the shared secret");
        let hello = c.poll_transmit().unwrap();
        let mut s = Endpoint::server("acc-0", limits(), Heartbeat::default(), Nanos::ZERO, SERVER_NONCE);
        let mut t = Nanos::ZERO;
        for b in hello.iter().take(PREAMBLE_LEN + 4) {
            s.handle_input(&[*b], t);
            t = t + Nanos::from_millis(500);
            assert!(s.poll_timeout().unwrap() <= HANDSHAKE_TIMEOUT);
            if t >= s.poll_timeout().unwrap() {
                s.handle_timeout(t);
            }
        }
        s.handle_timeout(HANDSHAKE_TIMEOUT);
        let ev = events(&mut s);
        assert!(matches!(&ev[..], [Event::Failed(ControlError::HandshakeTimeout { ms: 10_000 })]), "{ev:?}");
        // Heartbeats do not count as a handshake either.
        let (mut c, mut s) = pair("the shared secret", "the shared secret");
        s.handle_input(&c.poll_transmit().unwrap(), Nanos::ZERO);
        let mut hb = Vec::new();
        message::encode(&Message::Heartbeat { seq: 1, sent_ns: 0 }, &mut hb).unwrap();
        s.handle_input(&hb, Nanos::ZERO);
        let ev = events(&mut s);
        assert!(matches!(&ev[..], [Event::Failed(ControlError::Unexpected { got: "Heartbeat", .. })]), "{ev:?}");
    }

    #[test]
    fn a_replayed_handshake_does_not_pass() {
        let t = Nanos::ZERO;
        // Record a frontend's side of a good handshake...
        let (mut c, mut s) = pair("the shared secret", "the shared secret");
        let hello = c.poll_transmit().unwrap();
        s.handle_input(&hello, t);
        c.handle_input(&s.poll_transmit().unwrap(), t);
        let auth = c.poll_transmit().unwrap();
        // ...and replay it to a new session of the same accelerator: its challenge is new.
        let mut s2 = Endpoint::server("acc-0", limits(), Heartbeat::default(), t, [0x77; NONCE_LEN])
            .with_secret(secret("the shared secret"));
        s2.handle_input(&hello, t);
        s2.handle_input(&auth, t);
        let ev = events(&mut s2);
        assert!(matches!(&ev[..], [Event::Failed(ControlError::Unauthorized(_))]), "{ev:?}");
        // A Configure before the proof is out of order, not served.
        let (_, mut s3) = pair("the shared secret", "the shared secret");
        s3.handle_input(&hello, t);
        let mut configure = Vec::new();
        message::encode(&Message::Configure(request()), &mut configure).unwrap();
        s3.handle_input(&configure, t);
        let ev = events(&mut s3);
        assert!(matches!(&ev[..], [Event::Failed(ControlError::Unexpected { got: "Configure", .. })]), "{ev:?}");
    }

    /// Every byte each side sent, in order, for a handshake with the given nonces.
    fn transcript(client_nonce: [u8; NONCE_LEN], server_nonce: [u8; NONCE_LEN]) -> Vec<(bool, Vec<u8>)> {
        let t = Nanos::ZERO;
        let key = || secret("the shared secret");
        let mut c = Endpoint::client("fe", request(), Heartbeat::default(), t, client_nonce).with_secret(key());
        let mut s = Endpoint::server("acc-0", limits(), Heartbeat::default(), t, server_nonce).with_secret(key());
        let mut sent = Vec::new();
        for _ in 0..6 {
            if let Some(b) = c.poll_transmit() {
                s.handle_input(&b, t);
                sent.push((false, b));
            }
            if let Some(b) = s.poll_transmit() {
                c.handle_input(&b, t);
                sent.push((true, b));
            }
            while let Some(e) = s.poll_event() {
                if matches!(e, Event::ConfigureRequested(_)) {
                    s.grant(grant()).unwrap();
                }
            }
        }
        assert!(c.is_established() && s.is_established());
        sent
    }

    #[test]
    fn a_handshake_replays_byte_for_byte_from_its_nonces() {
        let first = transcript(CLIENT_NONCE, SERVER_NONCE);
        assert_eq!(first, transcript(CLIENT_NONCE, SERVER_NONCE), "same nonces, same bytes");
        // The nonces are what the bytes depend on: another server nonce changes the Challenge
        // (and so the client's proof), not the preamble and Hello.
        let other = transcript(CLIENT_NONCE, [0x77; NONCE_LEN]);
        assert_eq!(first[0], other[0]);
        assert_ne!(first[1], other[1]);
        assert_ne!(first[2], other[2]);
    }

    #[test]
    fn version_mismatch_is_a_clear_failure_on_both_sides() {
        let t = Nanos::ZERO;
        let mut c = Endpoint::client("fe", request(), Heartbeat::default(), t, CLIENT_NONCE);
        let mut s = Endpoint::server("acc", limits(), Heartbeat::default(), t, SERVER_NONCE);
        let mut hello = c.poll_transmit().unwrap();
        hello[4] = 9; // the frontend claims protocol v9
        s.handle_input(&hello, t);
        let ev = events(&mut s);
        assert!(
            matches!(&ev[..], [Event::Failed(ControlError::Wire(WireError::VersionMismatch { peer: 9, .. }))]),
            "{ev:?}"
        );
        // The server still sends its preamble, so the client can say which versions differ.
        let mut back = s.poll_transmit().unwrap();
        back[4] = 9;
        c.handle_input(&back, t);
        let ev = events(&mut c);
        let Event::Failed(err) = &ev[0] else { panic!("{ev:?}") };
        assert!(err.to_string().contains("peer speaks v9"), "{err}");
    }

    #[test]
    fn out_of_order_messages_fail_the_session() {
        let t = Nanos::ZERO;
        let mut s = Endpoint::server("acc", limits(), Heartbeat::default(), t, SERVER_NONCE);
        let mut bytes = Preamble::ours(Role::Control).encode().to_vec();
        message::encode(&Message::QueryName { request: 1 }, &mut bytes).unwrap();
        s.handle_input(&bytes, t);
        let ev = events(&mut s);
        assert!(
            matches!(&ev[..], [Event::Failed(ControlError::Unexpected { got: "QueryName", phase: "awaiting Hello" })]),
            "{ev:?}"
        );
        // And the peer is told why.
        let out = s.poll_transmit().unwrap();
        let (msg, _) = message::parse(&out[PREAMBLE_LEN..]).unwrap();
        assert!(matches!(msg, Message::Error { code: ErrorCode::Protocol, .. }));
        // Further input is ignored, never a panic.
        s.handle_input(&[0xff; 64], t);
        assert!(s.is_done());
    }

    #[test]
    fn malformed_frame_fails_cleanly() {
        let t = Nanos::ZERO;
        let mut s = Endpoint::server("acc", limits(), Heartbeat::default(), t, SERVER_NONCE);
        let mut bytes = Preamble::ours(Role::Control).encode().to_vec();
        bytes.extend_from_slice(&[3, 0, 0, 0, 0, 200, 1]); // Hello with a string longer than the frame
        s.handle_input(&bytes, t);
        assert!(matches!(events(&mut s)[..], [Event::Failed(ControlError::Wire(WireError::Decode(_)))]));
    }

    #[test]
    fn refusal_reaches_the_client() {
        let t = Nanos::ZERO;
        let mut c = Endpoint::client("fe", request(), Heartbeat::default(), t, CLIENT_NONCE);
        let mut s = Endpoint::server("acc", limits(), Heartbeat::default(), t, SERVER_NONCE);
        pump(&mut c, &mut s, t);
        events(&mut s);
        s.refuse(ErrorCode::LimitExceeded, "64 slots at most".into());
        pump(&mut c, &mut s, t);
        let ev = events(&mut c);
        assert!(
            matches!(&ev[1], Event::Failed(ControlError::Peer { code: ErrorCode::LimitExceeded, message }) if message == "64 slots at most"),
            "{ev:?}"
        );
    }

    #[test]
    fn a_handshake_slower_than_a_heartbeat_interval_still_succeeds() {
        // Each hop takes 80 ms; heartbeats are every 50 ms. Found by the frontend's harness:
        // heartbeats sent during the handshake were refused by a peer still awaiting Auth.
        let hb = Heartbeat { interval: Nanos::from_millis(50), misses: 3 };
        let mut c = Endpoint::client("fe", request(), hb, Nanos::ZERO, CLIENT_NONCE);
        let mut s = Endpoint::server("acc", limits(), hb, Nanos::ZERO, SERVER_NONCE);
        let mut t = Nanos::ZERO;
        for _ in 0..12 {
            t = t + Nanos::from_millis(80);
            for e in [&mut c, &mut s] {
                if e.poll_timeout().is_some_and(|x| x <= t) {
                    e.handle_timeout(t);
                }
            }
            while let Some(bytes) = c.poll_transmit() {
                s.handle_input(&bytes, t);
            }
            while let Some(bytes) = s.poll_transmit() {
                c.handle_input(&bytes, t);
            }
            while let Some(ev) = s.poll_event() {
                assert!(!matches!(ev, Event::Failed(_)), "server: {ev:?}");
                if let Event::ConfigureRequested(_) = ev {
                    s.grant(grant()).unwrap();
                }
            }
            while let Some(ev) = c.poll_event() {
                assert!(!matches!(ev, Event::Failed(_)), "client: {ev:?}");
            }
        }
        assert!(c.is_established() && s.is_established());
    }

    #[test]
    fn heartbeats_measure_rtt_and_silence_kills() {
        let hb = Heartbeat { interval: Nanos::from_millis(100), misses: 3 };
        let mut c = Endpoint::client("fe", request(), hb, Nanos::ZERO, CLIENT_NONCE);
        let mut s = Endpoint::server("acc", limits(), hb, Nanos::ZERO, SERVER_NONCE);
        pump(&mut c, &mut s, Nanos::ZERO);
        let t1 = Nanos::from_millis(100);
        assert_eq!(c.poll_timeout(), Some(t1));
        c.handle_timeout(t1);
        let hb_bytes = c.poll_transmit().unwrap();
        s.handle_input(&hb_bytes, Nanos::from_millis(105));
        let ack = s.poll_transmit().unwrap();
        c.handle_input(&ack, Nanos::from_millis(110));
        assert!(events(&mut c).contains(&Event::HeartbeatRtt(Nanos::from_millis(10))));
        // The server hears nothing more: after 3 intervals of silence it declares the client dead.
        s.handle_timeout(Nanos::from_millis(300));
        assert!(!s.is_done());
        s.handle_timeout(Nanos::from_millis(405));
        assert!(matches!(events(&mut s).last(), Some(Event::Failed(ControlError::PeerDead { misses: 3, .. }))));
        assert_eq!(s.poll_timeout(), None);
    }
}

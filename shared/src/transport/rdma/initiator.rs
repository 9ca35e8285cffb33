//! The frontend's end of an RDMA data connection.
//!
//! A request is one RDMA WRITE_WITH_IMM of the sample's bytes, straight from the registered
//! sample buffer (no staging copy; a payload from unregistered memory is copied into a staging
//! slot and counted), into the accelerator's slot; the immediate is the slot index. The response
//! arrives the same way into the same slot of this side's response ring, as a data header
//! followed by the output.
//!
//! A response slot is `[header | output (or error message)]` from offset 0 and, in its last
//! [`FIRST_TOKEN_AREA`] bytes, the first-token area: a generative request's first token arrives
//! there (immediate `slot | FIRST_TOKEN_IMM`, header kind 4, 4 bytes) before its response, and is
//! handed on at once; the slot stays in flight until the response. The response may land while
//! the first token's completion is still unread: they do not share memory, and completions are
//! taken in the order the queue pair delivered them, so the first token is handed on first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::device::{RdmaDevice, SourceRegion};
use super::link::{Link, RemoteRing, Write};
use super::{FIRST_TOKEN_AREA, FIRST_TOKEN_BYTES, FIRST_TOKEN_IMM, RESPONSE_ROOM, RdmaError, RdmaMetrics};
use crate::slots::SlotArena;
use crate::time::Nanos;
use crate::transport::{InitiatorTransport, OnResponse, Payload, TransportError, TransportMetrics, TransportStats};
use crate::wire::data::{DATA_HEADER_LEN, DataHeader, FrameKind};
use crate::wire::message::RdmaEndpoint;

/// Response-ring slot size for outputs of `output_bytes`: a data header, then the output (or an
/// error message of up to [`RESPONSE_ROOM`] bytes), then the [`FIRST_TOKEN_AREA`].
pub fn response_slot_bytes(output_bytes: u32) -> u32 {
    (DATA_HEADER_LEN as u32).saturating_add(output_bytes.max(RESPONSE_ROOM)).saturating_add(FIRST_TOKEN_AREA)
}

/// An initiator whose queue pair is created and whose response ring is registered, waiting for
/// the accelerator's endpoint.
pub struct InitiatorSetup {
    link: Link,
    ring: Arc<SlotArena>,
    ring_mr: Arc<sideway::ibverbs::memory_region::MemoryRegion>,
    slots: u32,
    input_bytes: u32,
}

impl InitiatorSetup {
    /// Creates the queue pair and the response ring for `slots` slots of `input_bytes` requests
    /// and `output_bytes` responses.
    pub fn new(
        device: &Arc<RdmaDevice>,
        slots: u32,
        input_bytes: u32,
        output_bytes: u32,
        metrics: RdmaMetrics,
    ) -> Result<InitiatorSetup, RdmaError> {
        if slots >= FIRST_TOKEN_IMM {
            return Err(RdmaError::Peer(format!(
                "{slots} slots: an RDMA ring holds fewer than 2^31 (the immediate's top bit flags a first token)"
            )));
        }
        let ring = SlotArena::new(slots, response_slot_bytes(output_bytes) as usize)
            .map_err(|e| RdmaError::Register { bytes: 0, reason: e.to_string() })?;
        let (ptr, len) = ring.region();
        // SAFETY: the ring's mapping lives as long as the Arc held beside the region, and the
        // region is dropped first (field order of RdmaInitiator / this struct).
        let ring_mr = unsafe { device.register(ptr, len, true)? };
        let link = Link::create(device, slots, metrics)?;
        Ok(InitiatorSetup { link, ring, ring_mr, slots, input_bytes })
    }

    /// This side's endpoint, to send to the accelerator.
    pub fn endpoint(&self) -> RdmaEndpoint {
        let (ptr, _) = self.ring.region();
        self.link.endpoint(RemoteRing {
            addr: ptr as u64,
            rkey: self.ring_mr.rkey(),
            slots: self.slots,
            slot_bytes: self.ring.slot_bytes() as u32,
        })
    }

    /// Connects to the accelerator's endpoint (after checking it fits the session).
    pub fn connect(mut self, peer: &RdmaEndpoint, transport: TransportMetrics) -> Result<RdmaInitiator, RdmaError> {
        if peer.slots < self.slots || peer.slot_bytes < self.input_bytes {
            return Err(RdmaError::Peer(format!(
                "the accelerator's ring ({} slots of {} bytes) is smaller than the session's ({} of {})",
                peer.slots, peer.slot_bytes, self.slots, self.input_bytes
            )));
        }
        self.link.connect(peer)?;
        let n = self.slots as usize;
        Ok(RdmaInitiator {
            link: self.link,
            _ring_mr: self.ring_mr,
            ring: self.ring,
            staging: None,
            current: None,
            unregistered: None,
            slot_source: (0..n).map(|_| None).collect(),
            sample_ids: vec![0; n],
            in_flight: vec![false; n],
            first_token: vec![false; n],
            out: VecDeque::new(),
            batch: Vec::new(),
            stats: TransportStats::default(),
            metrics: transport,
            sampler: Default::default(),
            input_bytes: self.input_bytes,
        })
    }
}

struct Staging {
    arena: Arc<SlotArena>,
    mr: Arc<sideway::ibverbs::memory_region::MemoryRegion>,
}

struct Queued {
    header: DataHeader,
    payload: Payload,
    queued: Nanos,
}

/// The frontend's end of an RDMA data connection; see the module docs.
pub struct RdmaInitiator {
    // The queue pair goes first: no work request outlives the memory it names.
    link: Link,
    _ring_mr: Arc<sideway::ibverbs::memory_region::MemoryRegion>,
    ring: Arc<SlotArena>,
    staging: Option<Staging>,
    current: Option<Arc<SourceRegion>>,
    /// A source whose registration failed (address, length): not retried per sample.
    unregistered: Option<(usize, usize)>,
    /// The payload source of each in-flight slot, kept registered and alive until its response.
    slot_source: Vec<Option<Arc<SourceRegion>>>,
    sample_ids: Vec<u64>,
    in_flight: Vec<bool>,
    /// Whether the in-flight request of each slot has had its first token.
    first_token: Vec<bool>,
    out: VecDeque<Queued>,
    batch: Vec<Write>,
    stats: TransportStats,
    metrics: TransportMetrics,
    sampler: crate::metrics::Sampler,
    input_bytes: u32,
}

impl RdmaInitiator {
    /// Where a payload is sent from: its registered source, or a staging copy.
    fn source_of(&mut self, slot: u32, payload: &Payload) -> Result<(u64, u32), RdmaError> {
        let bytes = payload.as_slice();
        let src = payload.source().bytes();
        let key = (src.as_ptr() as usize, src.len());
        if self.current.as_ref().is_none_or(|r| !r.contains(bytes)) && self.unregistered != Some(key) {
            // Registration is tried once per source: a source that failed is staged from then on.
            match self.link.device.source_region(payload.source()) {
                Ok(r) => self.current = Some(r),
                Err(e) => {
                    tracing::warn!("cannot register the sample buffer ({e}); copying payloads into staging slots");
                    self.unregistered = Some(key);
                    self.current = None;
                }
            }
        }
        if let Some(r) = self.current.as_ref().filter(|r| r.contains(bytes)) {
            self.slot_source[slot as usize] = Some(r.clone());
            return Ok((bytes.as_ptr() as u64, r.lkey));
        }
        if self.staging.is_none() {
            let arena = SlotArena::new(self.ring.slots(), self.input_bytes.max(1) as usize)
                .map_err(|e| RdmaError::Register { bytes: 0, reason: e.to_string() })?;
            let (ptr, len) = arena.region();
            // SAFETY: the staging arena is kept beside its region in `Staging`, dropped after the
            // link (field order), so no write outlives it.
            let mr = unsafe { self.link.device.register(ptr, len, false)? };
            self.staging = Some(Staging { arena, mr });
        }
        let st = self.staging.as_ref().expect("created above");
        let mut lease = st.arena.try_lease(slot).map_err(|e| RdmaError::Peer(e.to_string()))?;
        let dst = &mut lease.bytes_mut()[..bytes.len()];
        dst.copy_from_slice(bytes);
        self.link.metrics.staged.increment(1);
        Ok((dst.as_ptr() as u64, st.mr.lkey()))
    }

    fn take_responses(&mut self, on_response: &mut OnResponse<'_>) -> Result<usize, TransportError> {
        let mut n = 0;
        let ft_at = self.ring.slot_bytes() - FIRST_TOKEN_AREA as usize;
        while let Some(a) = self.link.arrived.pop_front() {
            let first = a.imm & FIRST_TOKEN_IMM != 0;
            let (what, slot_n) = if first { ("first token", a.imm & !FIRST_TOKEN_IMM) } else { ("response", a.imm) };
            let slot = slot_n as usize;
            if slot >= self.in_flight.len() || !self.in_flight[slot] {
                return Err(TransportError::Protocol(format!("{what} into slot {slot_n} that has no request")));
            }
            let lease = self.ring.try_lease(slot_n)?;
            let bytes = lease.bytes();
            let (area, frame) = if first {
                let area = &bytes[ft_at..];
                let header = DataHeader::parse(area, (area.len() - DATA_HEADER_LEN) as u32).map_err(|e| {
                    TransportError::Protocol(format!("the first-token write into slot {slot_n} holds no frame: {e}"))
                })?;
                if header.kind != FrameKind::FirstToken
                    || header.len != FIRST_TOKEN_BYTES
                    || header.slot != slot_n
                    || a.len as usize != DATA_HEADER_LEN + FIRST_TOKEN_BYTES as usize
                {
                    return Err(TransportError::Protocol(format!(
                        "the first-token write into slot {slot_n} ({} bytes) holds a {:?} frame of slot {} with {} \
                         payload bytes, not a first token of {FIRST_TOKEN_BYTES} bytes",
                        a.len, header.kind, header.slot, header.len
                    )));
                }
                if self.first_token[slot] {
                    return Err(TransportError::Protocol(format!(
                        "a second first token for the request in slot {slot_n}"
                    )));
                }
                self.first_token[slot] = true;
                (area, header)
            } else {
                let area = &bytes[..ft_at];
                let header = DataHeader::parse(area, (area.len() - DATA_HEADER_LEN) as u32)?;
                if header.slot != slot_n || DATA_HEADER_LEN + header.len as usize != a.len as usize {
                    return Err(TransportError::Protocol(format!(
                        "response header (slot {}, {} bytes) does not match its write (slot {slot_n}, {} bytes)",
                        header.slot, header.len, a.len
                    )));
                }
                if !matches!(header.kind, FrameKind::Response | FrameKind::Error) {
                    return Err(TransportError::Protocol(format!(
                        "a {:?} frame written as the response of slot {slot_n} (first tokens carry the \
                         first-token flag in the immediate)",
                        header.kind
                    )));
                }
                self.in_flight[slot] = false;
                self.first_token[slot] = false;
                self.slot_source[slot] = None;
                (area, header)
            };
            let mut header = frame;
            header.sample_id = self.sample_ids[slot];
            self.stats.frames_received += 1;
            self.stats.bytes_received += a.len as u64;
            n += 1;
            on_response(&header, &area[DATA_HEADER_LEN..DATA_HEADER_LEN + header.len as usize])?;
        }
        Ok(n)
    }
}

impl InitiatorTransport for RdmaInitiator {
    fn push_request(&mut self, header: DataHeader, payload: Payload) {
        self.out.push_back(Queued { header, payload, queued: Nanos::now() });
    }

    fn queued(&self) -> usize {
        self.out.len()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        loop {
            let room = (self.link.window.free() as usize).min(self.out.len());
            if room > 0 {
                self.batch.clear();
                for q in self.out.iter().take(room) {
                    let slot = q.header.slot;
                    if slot as usize >= self.in_flight.len() || self.in_flight[slot as usize] {
                        return Poll::Ready(Err(TransportError::Protocol(format!("request into busy slot {slot}"))));
                    }
                    self.batch.push(Write {
                        slot,
                        offset: 0,
                        imm: slot,
                        addr: 0,
                        len: q.payload.len() as u32,
                        lkey: 0,
                    });
                }
                for i in 0..room {
                    let (slot, payload) = (self.out[i].header.slot, self.out[i].payload.clone());
                    let (addr, lkey) = self.source_of(slot, &payload)?;
                    self.batch[i].addr = addr;
                    self.batch[i].lkey = lkey;
                }
                // SAFETY: each write's source is either the registered sample buffer, kept alive
                // by `slot_source` until the slot's response, or the slot's staging copy, which is
                // not rewritten before that response either.
                let posted = unsafe { self.link.post(&self.batch)? };
                let now = Nanos::now();
                for q in self.out.drain(..posted) {
                    let slot = q.header.slot as usize;
                    self.in_flight[slot] = true;
                    self.first_token[slot] = false;
                    self.sample_ids[slot] = q.header.sample_id;
                    self.stats.frames_sent += 1;
                    self.stats.bytes_sent += q.payload.len() as u64;
                    if self.sampler.hit() {
                        self.metrics.send_delay.record(now.since(q.queued).as_secs_f64());
                    }
                }
                if posted > 0 {
                    self.stats.write_calls += 1;
                    self.metrics.frames_per_write.record(posted as f64);
                }
            }
            if self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // The send queue is full: wait for a send completion (responses that come with it
            // are kept for poll_responses).
            match super::link::poll_room(&mut self.link, cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_responses(
        &mut self,
        cx: &mut Context<'_>,
        on_response: &mut OnResponse<'_>,
    ) -> Poll<Result<usize, TransportError>> {
        super::link::poll_arrivals(self, cx, |t| t.take_responses(on_response))
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}

impl super::link::Arrivals for RdmaInitiator {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn count_read(&mut self, got: usize) {
        self.stats.read_calls += 1;
        if got > 0 {
            self.metrics.frames_per_read.record(got as f64);
        }
    }
}

//! The accelerator's end of an RDMA data connection.
//!
//! Requests land in the connection's slot arena (registered for remote writes) by the frontend's
//! write-with-immediate; the receive completion names the slot and the length. A response is
//! copied (header + output) into this slot's response buffer and written into the same slot of
//! the frontend's response ring.
//!
//! Response buffer N has the frontend's slot layout: `[header | output]` from offset 0, and the
//! first-token area in its last [`FIRST_TOKEN_AREA`] bytes. A first-token frame (generative
//! workloads) is copied into the first-token area and written into the same area of the
//! frontend's slot N, with `imm = N | FIRST_TOKEN_IMM`; the response that follows uses the rest of
//! the buffer, so it may be pushed before the first token's write was even posted.
//!
//! Freeing: a slot is busy from its request until its response is queued (the lease), as over
//! TCP. The frontend reuses a slot only after it has received that slot's response, so the next
//! request into slot N is also the acknowledgement that the previous response write from buffer
//! N has completed, and the first-token write before it (same queue pair, delivered in order): no
//! separate ack message is needed (NVIDIA's design sends a zero-length write-with-immediate on a
//! second queue pair for the same purpose).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use sideway::ibverbs::memory_region::MemoryRegion;

use super::device::RdmaDevice;
use super::link::{Link, RemoteRing, Write};
use super::{FIRST_TOKEN_AREA, FIRST_TOKEN_IMM, RdmaError, RdmaMetrics, response_slot_bytes};
use crate::slots::SlotArena;
use crate::transport::{OnRequest, Request, TargetTransport, TransportError, TransportMetrics, TransportStats};
use crate::wire::data::{DATA_HEADER_LEN, DataHeader, FrameKind};
use crate::wire::message::RdmaEndpoint;

/// Smallest response slot a frontend may announce: a header and the whole output, then the
/// first-token area.
fn min_response_slot(output_bytes: u32) -> u32 {
    (DATA_HEADER_LEN as u32).saturating_add(output_bytes).saturating_add(FIRST_TOKEN_AREA)
}

/// Largest response slot a frontend may announce: what [`response_slot_bytes`] asks for (room for
/// an error message beyond a small output), so a peer cannot make this side allocate more.
fn max_response_slot(output_bytes: u32) -> u32 {
    response_slot_bytes(output_bytes)
}

/// [`RdmaTarget::answered`]: the slot's first token was queued.
const SENT_FIRST_TOKEN: u8 = 1;
/// [`RdmaTarget::answered`]: the slot's response (or error) was queued.
const SENT_RESPONSE: u8 = 2;

/// The accelerator's end of an RDMA data connection; see the module docs.
pub struct RdmaTarget {
    link: Link,
    _arena_mr: Arc<MemoryRegion>,
    arena: Arc<SlotArena>,
    resp_mr: Arc<MemoryRegion>,
    responses: Arc<SlotArena>,
    /// What each slot's current request has been answered with ([`SENT_FIRST_TOKEN`],
    /// [`SENT_RESPONSE`]); cleared by the slot's next request.
    answered: Vec<u8>,
    out: VecDeque<Write>,
    queued_bytes: usize,
    batch: Vec<Write>,
    stats: TransportStats,
    metrics: TransportMetrics,
}

impl RdmaTarget {
    /// Sets up the accelerator's side for a frontend `peer`: registers `arena` (the connection's
    /// request slots) for remote writes and a response buffer per slot, creates the queue pair and
    /// connects it (ready to receive before the frontend hears back). Returns the transport and
    /// the endpoint to answer with. Nothing is allocated if the peer's parameters do not fit the
    /// session.
    pub fn accept(
        device: &Arc<RdmaDevice>,
        arena: Arc<SlotArena>,
        output_bytes: u32,
        peer: &RdmaEndpoint,
        rdma_metrics: RdmaMetrics,
        metrics: TransportMetrics,
    ) -> Result<(RdmaTarget, RdmaEndpoint), RdmaError> {
        let slots = arena.slots();
        let min = min_response_slot(output_bytes);
        if slots >= FIRST_TOKEN_IMM
            || peer.slots != slots
            || peer.slot_bytes < min
            || peer.slot_bytes > max_response_slot(output_bytes)
        {
            return Err(RdmaError::Peer(format!(
                "the frontend's response ring ({} slots of {} bytes) does not match the session ({} slots of {} to {} \
                 bytes: a header, the output and a {FIRST_TOKEN_AREA}-byte first-token area)",
                peer.slots,
                peer.slot_bytes,
                slots,
                min,
                max_response_slot(output_bytes)
            )));
        }
        let (ptr, len) = arena.region();
        // SAFETY: the arena's mapping lives as long as the Arc kept beside the region in the
        // returned transport; the peer may write only into it (remote write, bounded by the MR).
        let arena_mr = unsafe { device.register(ptr, len, true)? };
        let responses = SlotArena::new(slots, peer.slot_bytes as usize)
            .map_err(|e| RdmaError::Register { bytes: 0, reason: e.to_string() })?;
        let (rptr, rlen) = responses.region();
        // SAFETY: as above, for the response buffers (local access only).
        let resp_mr = unsafe { device.register(rptr, rlen, false)? };
        let mut link = Link::create(device, slots, rdma_metrics)?;
        link.connect(peer)?;
        let endpoint = link.endpoint(RemoteRing {
            addr: ptr as u64,
            rkey: arena_mr.rkey(),
            slots,
            slot_bytes: arena.slot_bytes() as u32,
        });
        Ok((
            RdmaTarget {
                link,
                _arena_mr: arena_mr,
                arena,
                resp_mr,
                responses,
                answered: vec![0; slots as usize],
                out: VecDeque::new(),
                queued_bytes: 0,
                batch: Vec::new(),
                stats: TransportStats::default(),
                metrics,
            },
            endpoint,
        ))
    }

    fn take_requests(&mut self, on_request: &mut OnRequest<'_>) -> Result<usize, TransportError> {
        let mut n = 0;
        let max = self.arena.slot_bytes();
        while let Some(a) = self.link.arrived.pop_front() {
            // A request's immediate is its slot (an immediate with the first-token flag names no
            // slot of the ring: refused by the lease).
            if a.len as usize > max || a.len == 0 {
                return Err(TransportError::Protocol(format!(
                    "request of {} bytes into slot {} (slots hold {max})",
                    a.len, a.imm
                )));
            }
            // A request into a busy slot is refused here (its bytes may already have overwritten
            // the earlier request's: the connection closes).
            let slot = self.arena.try_lease(a.imm)?;
            self.answered[a.imm as usize] = 0;
            self.stats.frames_received += 1;
            self.stats.bytes_received += a.len as u64;
            n += 1;
            on_request(Request { header: DataHeader::request(a.imm, 0, a.len, 0), slot })?;
        }
        Ok(n)
    }
}

impl TargetTransport for RdmaTarget {
    fn poll_requests(
        &mut self,
        cx: &mut Context<'_>,
        on_request: &mut OnRequest<'_>,
    ) -> Poll<Result<usize, TransportError>> {
        super::link::poll_arrivals(self, cx, |t| t.take_requests(on_request))
    }

    fn push_response(&mut self, header: DataHeader, output: &[u8]) {
        let Ok(mut buf) = self.responses.try_lease(header.slot) else {
            // Not a slot of this ring: the connection's own bug; the frontend will time it out.
            tracing::error!(slot = header.slot, "response for a slot outside the ring");
            return;
        };
        // One first token (before the response) and one response per request: a second answer
        // would rewrite memory a queued write may still be read from (this node's bug; dropped).
        let first = header.kind == FrameKind::FirstToken;
        let answered = &mut self.answered[header.slot as usize];
        let refused = if first { SENT_FIRST_TOKEN | SENT_RESPONSE } else { SENT_RESPONSE };
        if *answered & refused != 0 {
            tracing::error!(slot = header.slot, kind = ?header.kind, "a second answer to one request: dropped");
            return;
        }
        *answered |= if first { SENT_FIRST_TOKEN } else { SENT_RESPONSE };
        let bytes = buf.bytes_mut();
        // Where the frame goes in the slot, and the immediate: a first token into the slot's
        // first-token area, anything else from the start of the slot, before that area.
        let ft_at = bytes.len() - FIRST_TOKEN_AREA as usize;
        let (at, end, imm) =
            if first { (ft_at, bytes.len(), header.slot | FIRST_TOKEN_IMM) } else { (0, ft_at, header.slot) };
        let area = &mut bytes[at..end];
        // A longer first token (this node's bug) is cut to the area and refused by the frontend.
        let len = output.len().min(area.len() - DATA_HEADER_LEN);
        let mut h = header;
        h.len = len as u32;
        area[..DATA_HEADER_LEN].copy_from_slice(&h.encode());
        area[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(&output[..len]);
        let total = DATA_HEADER_LEN + len;
        self.out.push_back(Write {
            slot: header.slot,
            offset: at as u32,
            imm,
            addr: area.as_ptr() as u64,
            len: total as u32,
            lkey: self.resp_mr.lkey(),
        });
        self.queued_bytes += total;
    }

    fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        loop {
            if !self.out.is_empty() {
                self.batch.clear();
                self.batch.extend(self.out.iter().copied());
                // SAFETY: each write's source is a part of its slot's response buffer that no
                // other queued write of the slot shares: the response area (rewritten only for the
                // slot's next response or error) or the first-token area (rewritten only for the
                // slot's next first token). `answered` allows either only after a new request
                // into the slot, which the frontend sends only after this slot's response has
                // landed, and with it every earlier write of the slot (the queue pair delivers
                // in order).
                let posted = unsafe { self.link.post(&self.batch)? };
                for w in self.out.drain(..posted) {
                    self.queued_bytes -= w.len as usize;
                    self.stats.bytes_sent += w.len as u64;
                    self.stats.frames_sent += 1;
                }
                if posted > 0 {
                    self.stats.write_calls += 1;
                    self.metrics.frames_per_write.record(posted as f64);
                }
            }
            if self.out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match super::link::poll_room(&mut self.link, cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}

impl super::link::Arrivals for RdmaTarget {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::rdma::{FIRST_TOKEN_BYTES, RESPONSE_ROOM};

    #[test]
    fn the_frontends_response_slots_fit_the_accelerators_bounds() {
        assert!(FIRST_TOKEN_AREA as usize >= DATA_HEADER_LEN + FIRST_TOKEN_BYTES as usize);
        for out in [0, 4, 8, 255, 256, 257, 1536, 4 * 2048, 1 << 30] {
            let s = response_slot_bytes(out);
            assert!((min_response_slot(out)..=max_response_slot(out)).contains(&s), "{out}: {s}");
            // The whole output (or an error message) fits before the first-token area.
            assert!(s - FIRST_TOKEN_AREA - DATA_HEADER_LEN as u32 >= out.max(RESPONSE_ROOM), "{out}: {s}");
        }
    }
}

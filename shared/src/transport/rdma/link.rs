//! One RC queue pair with its completion queue and (in event mode) completion channel: creation,
//! the INIT → RTR → RTS transitions, chained posting of write-with-immediate requests through the
//! [`SendWindow`], and completion handling (busy polling or events registered with tokio).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll};

use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, CompletionQueue};
use sideway::ibverbs::device_context::Mtu;
use sideway::ibverbs::queue_pair::{
    ExtendedQueuePair, PostSendGuard, QueuePair, QueuePairAttribute, QueuePairState, SetInlineData,
    SetScatterGatherEntry, WorkRequestFlags,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::device::{RdmaDevice, mtu_enum};
use super::window::SendWindow;
use super::{RdmaError, RdmaMetrics};
use crate::config::CompletionMode;
use crate::wire::message::RdmaEndpoint;

/// wr_id of receive work requests (send requests use their window sequence number, from 1).
const RECV_WR_ID: u64 = u64::MAX;
/// Most completions handled per poll before the caller gets control back.
const POLL_BUDGET: usize = 4096;

/// A write-with-immediate to post: `len` bytes at `addr` (inside the region of `lkey`) into the
/// peer's slot `slot`, at `offset` within it, with the immediate `imm` (host order here).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write {
    pub slot: u32,
    pub offset: u32,
    pub imm: u32,
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

/// A receive completion: a peer's write-with-immediate landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// The immediate (host order): the slot, with [`super::FIRST_TOKEN_IMM`] set for a first
    /// token; the owner decodes and checks it.
    pub imm: u32,
    /// Bytes written.
    pub len: u32,
}

struct ChannelFd(Arc<CompletionChannel>);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The peer's ring, as announced in its endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteRing {
    pub addr: u64,
    pub rkey: u32,
    pub slots: u32,
    pub slot_bytes: u32,
}

/// See the module docs.
pub(crate) struct Link {
    // Field order is drop order: the fd is deregistered before the channel closes, the QP is
    // destroyed before its CQ, and the CQ before the channel and the device.
    fd: Option<AsyncFd<ChannelFd>>,
    qp: ExtendedQueuePair,
    cq: Arc<BasicCompletionQueue>,
    channel: Option<Arc<CompletionChannel>>,
    pub(crate) device: Arc<RdmaDevice>,
    armed: bool,
    pub(crate) window: SendWindow,
    recv_posted: u32,
    recv_depth: u32,
    inline_max: u32,
    psn: u32,
    remote: Option<RemoteRing>,
    /// Receive completions taken from the CQ but not yet handed to the owner (at most
    /// `recv_depth`).
    pub(crate) arrived: VecDeque<Arrival>,
    pub(crate) metrics: RdmaMetrics,
    failed: bool,
}

impl Link {
    /// A queue pair in the INIT state with `recv_depth` receives posted.
    pub(crate) fn create(device: &Arc<RdmaDevice>, recv_depth: u32, metrics: RdmaMetrics) -> Result<Link, RdmaError> {
        let cfg = &device.config;
        let send_depth = cfg.send_queue_depth.min(device.max_qp_wr);
        let recv_depth = recv_depth.clamp(1, device.max_qp_wr);
        let channel = match cfg.completion {
            CompletionMode::Event => {
                let ch = CompletionChannel::new(&device.ctx)
                    .map_err(|e| RdmaError::verbs("creating a completion channel", e))?;
                ch.set_nonblocking(true)
                    .map_err(|e| RdmaError::verbs("making the completion channel non-blocking", e))?;
                Some(ch)
            }
            CompletionMode::Poll => None,
        };
        let mut builder = device.ctx.create_cq_builder();
        builder.setup_cqe(send_depth + recv_depth + 16);
        if let Some(ch) = &channel {
            builder.setup_comp_channel(ch, 0);
        }
        let cq = builder.build().map_err(|e| RdmaError::verbs("creating a completion queue", e))?;
        let mut inline_max = cfg.inline_threshold;
        let qp = loop {
            let mut qb = device.pd.create_qp_builder();
            qb.setup_max_send_wr(send_depth)
                .setup_max_recv_wr(recv_depth)
                .setup_max_send_sge(1)
                .setup_max_recv_sge(1)
                .setup_max_inline_data(inline_max)
                .setup_send_cq(cq.clone())
                .setup_recv_cq(cq.clone());
            match qb.build_ex() {
                Ok(qp) => break qp,
                // Devices cap inline data differently; fall back to halving, then to none.
                Err(_) if inline_max > 0 => inline_max = if inline_max > 64 { inline_max / 2 } else { 0 },
                Err(e) => return Err(RdmaError::verbs("creating a queue pair", e)),
            }
        };
        if inline_max < cfg.inline_threshold {
            tracing::debug!(device = device.name(), inline_max, "the device allows less inline data than configured");
        }
        let mut link = Link {
            fd: None,
            qp,
            cq,
            channel,
            device: device.clone(),
            armed: false,
            window: SendWindow::new(send_depth, cfg.signal_every.min(send_depth / 2).max(1)),
            recv_posted: 0,
            recv_depth,
            inline_max,
            psn: rand_psn(),
            remote: None,
            arrived: VecDeque::new(),
            metrics,
            failed: false,
        };
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(device.port)
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteWrite);
        link.qp.modify(&attr).map_err(|e| RdmaError::Transition { state: "INIT", reason: e.to_string() })?;
        link.replenish()?;
        Ok(link)
    }

    /// This side's endpoint for the peer, announcing `ring` (addr, rkey, slots, slot bytes).
    pub(crate) fn endpoint(&self, ring: RemoteRing) -> RdmaEndpoint {
        RdmaEndpoint {
            qp_num: self.qp.qp_number(),
            psn: self.psn,
            gid: self.device.gid,
            lid: self.device.lid,
            mtu: self.device.mtu,
            addr: ring.addr,
            rkey: ring.rkey,
            slots: ring.slots,
            slot_bytes: ring.slot_bytes,
        }
    }

    /// Connects to the peer: RTR then RTS. Afterwards writes go into the peer's ring.
    pub(crate) fn connect(&mut self, peer: &RdmaEndpoint) -> Result<(), RdmaError> {
        if !(256..=4096).contains(&peer.mtu) {
            return Err(RdmaError::Peer(format!("path MTU {} is not between 256 and 4096", peer.mtu)));
        }
        let cfg = &self.device.config;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(Mtu::from(mtu_enum(self.device.mtu.min(peer.mtu))))
            .setup_dest_qp_num(peer.qp_num)
            .setup_rq_psn(peer.psn & 0xff_ffff)
            .setup_max_dest_read_atomic(1)
            .setup_min_rnr_timer(12);
        let mut ah = AddressHandleAttribute::new();
        ah.setup_dest_lid(peer.lid).setup_port(self.device.port).setup_service_level(0);
        if self.device.ethernet || peer.gid != [0; 16] {
            ah.setup_grh_src_gid_index(self.device.gid_index)
                .setup_grh_dest_gid(&Gid { raw: peer.gid })
                .setup_grh_hop_limit(64);
        }
        attr.setup_address_vector(&ah);
        self.qp.modify(&attr).map_err(|e| RdmaError::Transition { state: "RTR", reason: e.to_string() })?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(self.psn)
            .setup_timeout(cfg.ack_timeout)
            .setup_retry_cnt(cfg.retry_count)
            .setup_rnr_retry(7)
            .setup_max_read_atomic(1);
        self.qp.modify(&attr).map_err(|e| RdmaError::Transition { state: "RTS", reason: e.to_string() })?;
        self.remote =
            Some(RemoteRing { addr: peer.addr, rkey: peer.rkey, slots: peer.slots, slot_bytes: peer.slot_bytes });
        Ok(())
    }

    /// Posts as many of `writes` as the send queue has room for, in chains of at most
    /// `max_chain` (one doorbell each; the last of each chain solicited). Returns how many were
    /// posted.
    ///
    /// # Safety
    /// Every write's `addr..addr+len` must lie in the registered region of its `lkey` and stay
    /// valid and unmodified until the write has completed (the owner's slot discipline: a slot's
    /// source is not reused before the peer answered on that slot). Inline writes are copied here.
    pub(crate) unsafe fn post(&mut self, writes: &[Write]) -> Result<usize, RdmaError> {
        let remote = self.remote.ok_or(RdmaError::Peer("the queue pair is not connected".into()))?;
        let cfg = &self.device.config;
        let (max_chain, solicit) = (cfg.max_chain as usize, cfg.solicit);
        let mut done = 0;
        while done < writes.len() {
            let n = (writes.len() - done).min(max_chain).min(self.window.free() as usize);
            if n == 0 {
                break;
            }
            let chain = &writes[done..done + n];
            let mut guard = self.qp.start_post_send();
            for (i, w) in chain.iter().enumerate() {
                if w.slot >= remote.slots || w.offset as u64 + w.len as u64 > remote.slot_bytes as u64 {
                    drop(guard);
                    self.window.untake(i as u32);
                    return Err(RdmaError::Peer(format!(
                        "write of {} bytes at offset {} into slot {} does not fit the peer's ring of {} × {} bytes",
                        w.len, w.offset, w.slot, remote.slots, remote.slot_bytes
                    )));
                }
                let (seq, signalled) = self.window.take().expect("n is bounded by the free entries");
                let mut flags = WorkRequestFlags::none();
                if signalled {
                    flags |= WorkRequestFlags::Signaled;
                    self.metrics.signalled.increment(1);
                } else {
                    self.metrics.unsignalled.increment(1);
                }
                if solicit && i + 1 == n {
                    flags |= WorkRequestFlags::Solicited;
                }
                let inline = w.len <= self.inline_max;
                if inline {
                    // The ibv_wr_* API copies inline data without this flag, but some providers
                    // (rxe) decide how to read the request from it.
                    flags |= WorkRequestFlags::Inline;
                }
                let remote_addr = remote.addr + w.slot as u64 * remote.slot_bytes as u64 + w.offset as u64;
                let h = guard.construct_wr(seq, flags).setup_write_imm(remote.rkey, remote_addr, w.imm.to_be());
                if inline {
                    // SAFETY: the caller guarantees addr..addr+len is valid now; inline data is
                    // copied into the work request before this call returns.
                    let bytes = unsafe { std::slice::from_raw_parts(w.addr as *const u8, w.len as usize) };
                    h.setup_inline_data(bytes);
                    self.metrics.inline.increment(1);
                } else {
                    // SAFETY: the caller guarantees the range is registered under lkey and stays
                    // valid until the write completes.
                    unsafe { h.setup_sge(w.lkey, w.addr, w.len) };
                }
            }
            if let Err(e) = guard.post() {
                self.window.untake(n as u32);
                return Err(RdmaError::verbs("posting writes", e));
            }
            self.metrics.doorbells.increment(1);
            done += n;
        }
        Ok(done)
    }

    /// Keeps `recv_depth` receives posted (a write-with-immediate consumes one; its data goes to
    /// the address the writer names, so receives carry no buffer).
    fn replenish(&mut self) -> Result<(), RdmaError> {
        let missing = self.recv_depth - self.recv_posted;
        if missing == 0 {
            return Ok(());
        }
        let mut guard = self.qp.start_post_recv();
        for _ in 0..missing {
            guard.construct_wr(RECV_WR_ID);
        }
        guard.post().map_err(|e| RdmaError::verbs("posting receives", e))?;
        self.recv_posted = self.recv_depth;
        Ok(())
    }

    /// Drains the completion queue: send completions free window entries, receive completions are
    /// queued in `arrived`. Returns how many completions were handled.
    fn drain(&mut self) -> Result<usize, RdmaError> {
        let mut n = 0;
        let mut error = None;
        let mut stale = None;
        let mut arrivals = 0u32;
        match self.cq.start_poll() {
            Ok(poller) => {
                for wc in poller {
                    n += 1;
                    let status = wc.status();
                    if status != 0 {
                        error.get_or_insert((status, wc.opcode(), wc.vendor_err(), wc.wr_id()));
                        continue;
                    }
                    if wc.wr_id() == RECV_WR_ID {
                        arrivals += 1;
                        self.arrived.push_back(Arrival { imm: u32::from_be(wc.imm_data()), len: wc.byte_len() });
                    } else if let Err(e) = self.window.handle_completion(wc.wr_id()) {
                        stale.get_or_insert(format!("{e} (opcode {})", wc.opcode()));
                    }
                    if n >= POLL_BUDGET {
                        break;
                    }
                }
            }
            Err(sideway::ibverbs::completion::PollCompletionQueueError::CompletionQueueEmpty) => {}
            Err(e) => return Err(RdmaError::verbs("polling the completion queue", e)),
        }
        self.metrics.cq_polls.increment(1);
        if n > 0 {
            self.metrics.completions_per_poll.record(n as f64);
        }
        self.recv_posted = self.recv_posted.saturating_sub(arrivals);
        if let Some(e) = stale {
            self.failed = true;
            return Err(RdmaError::Peer(format!("unexpected send completion: {e}")));
        }
        if let Some((status, opcode, vendor, wr_id)) = error {
            self.failed = true;
            let err = RdmaError::completion(status, opcode, vendor, wr_id == RECV_WR_ID);
            if let RdmaError::Completion { status: s, .. } = &err {
                metrics::counter!(crate::metrics::rdma::WC_ERRORS, "status" => s.clone()).increment(1);
            }
            return Err(err);
        }
        if arrivals > 0 && self.recv_posted <= self.recv_depth / 2 {
            self.replenish()?;
        }
        Ok(n)
    }

    /// Handles completions; `Ready(n)` when some were handled, `Pending` (with this task woken
    /// on the next one) otherwise. In event mode the channel is armed for solicited completions
    /// only, unless the send queue is full and a send completion is awaited.
    pub(crate) fn poll_cq(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, RdmaError>> {
        if self.failed {
            return Poll::Ready(Err(RdmaError::Peer("the queue pair already failed".into())));
        }
        loop {
            let n = self.drain()?;
            if n > 0 {
                if self.recv_posted < self.recv_depth {
                    self.replenish()?;
                }
                return Poll::Ready(Ok(n));
            }
            let Some(channel) = self.channel.clone() else {
                // Busy polling: come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            if !self.armed {
                let solicited_only = self.device.config.solicit && self.window.free() > 0;
                // SAFETY: the CQ is alive (owned by self); arming it has no memory effects.
                let rc = unsafe { rdma_mummy_sys::ibv_req_notify_cq(self.cq.cq().as_ptr(), solicited_only as i32) };
                if rc != 0 {
                    return Poll::Ready(Err(RdmaError::verbs(
                        "arming the completion queue",
                        std::io::Error::from_raw_os_error(rc),
                    )));
                }
                self.armed = true;
                // A completion may have arrived between the drain and the arming: drain again.
                continue;
            }
            if self.fd.is_none() {
                // SAFETY: the fd is the completion channel's, which the ChannelFd keeps open (it
                // holds an Arc of the channel) for as long as the AsyncFd exists.
                let fd = unsafe { AsyncFd::register_with_interest(ChannelFd(channel.clone()), Interest::READABLE) }
                    .map_err(|e| RdmaError::verbs("registering the completion channel with the event loop", e))?;
                self.fd = Some(fd);
            }
            let fd = self.fd.as_ref().expect("set above");
            let mut guard = match fd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(RdmaError::verbs("waiting for completions", e))),
                Poll::Ready(Ok(g)) => g,
            };
            let mut events = 0;
            loop {
                let mut cq = std::ptr::null_mut();
                let mut ctx = std::ptr::null_mut();
                // SAFETY: the channel is alive and non-blocking; the out-pointers are valid locals.
                let rc =
                    unsafe { rdma_mummy_sys::ibv_get_cq_event(channel.comp_channel().as_ptr(), &mut cq, &mut ctx) };
                if rc != 0 {
                    break;
                }
                events += 1;
            }
            if events > 0 {
                // SAFETY: acknowledges exactly the events taken above for this channel's only CQ.
                unsafe { rdma_mummy_sys::ibv_ack_cq_events(self.cq.cq().as_ptr(), events) };
                self.metrics.cq_events.increment(events as u64);
                self.armed = false;
            }
            guard.clear_ready();
        }
    }
}

fn rand_psn() -> u32 {
    let t = crate::wire::attach::SessionToken::random();
    u32::from_le_bytes([t.0[0], t.0[1], t.0[2], 0])
}

/// The send side of a transport whose send queue is full: waits for a send completion.
/// `Ready(Ok)` when room may have been made (try posting again); arrivals taken meanwhile are
/// kept on the link and the task is woken so the receive side reads them.
pub(crate) fn poll_room(link: &mut Link, cx: &mut Context<'_>) -> Poll<Result<(), RdmaError>> {
    match link.poll_cq(cx) {
        Poll::Ready(Ok(_)) => {
            if !link.arrived.is_empty() {
                cx.waker().wake_by_ref();
            }
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// What a transport built on a [`Link`] gives [`poll_arrivals`].
pub(crate) trait Arrivals {
    /// Its link.
    fn link(&mut self) -> &mut Link;
    /// Counts one completion-queue pass that delivered `got` arrivals.
    fn count_read(&mut self, got: usize);
}

/// The receive side of a transport: takes what has arrived (`take`), then polls the completion
/// queue and takes again, at most 4 rounds (then yields, with the task woken, so others run).
pub(crate) fn poll_arrivals<T: Arrivals>(
    t: &mut T,
    cx: &mut Context<'_>,
    mut take: impl FnMut(&mut T) -> Result<usize, crate::transport::TransportError>,
) -> Poll<Result<usize, crate::transport::TransportError>> {
    let mut n = take(t)?;
    for _ in 0..4 {
        match t.link().poll_cq(cx) {
            Poll::Ready(Ok(_)) => {
                let got = take(t)?;
                t.count_read(got);
                n += got;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => return if n > 0 { Poll::Ready(Ok(n)) } else { Poll::Pending },
        }
    }
    // Budget spent with completions still coming: let others run, then come back.
    cx.waker().wake_by_ref();
    if n > 0 { Poll::Ready(Ok(n)) } else { Poll::Pending }
}

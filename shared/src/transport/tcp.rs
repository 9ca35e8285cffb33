//! The TCP transport: frames over a stream socket, with the RDMA semantics of the trait.
//!
//! - Writes are vectored: a frontend sends each request's header and its payload straight from
//!   the sample buffer (no staging copy), up to [`MAX_FRAMES_PER_WRITE`] frames per `writev`.
//! - The accelerator reads a request's payload straight into its slot once the header is known
//!   ("direct placement"): small leftovers come through a 256 KiB read buffer, large tails are
//!   read into the slot itself, so a ResNet-50 sample is copied by the kernel once, like iperf3.
//! - Reading is bounded per poll ([`READS_PER_POLL`]) so one busy connection cannot starve the
//!   others that share its I/O thread.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{
    InitiatorTransport, OnRequest, OnResponse, Payload, Request, RequestSize, TargetTransport, TransportError,
    TransportMetrics, TransportStats,
};
use crate::slots::{SlotArena, SlotLease};
use crate::time::Nanos;
use crate::wire::attach::{ATTACH_REPLY_LEN, Attach, AttachStatus};
use crate::wire::data::{DATA_HEADER_LEN, DataHeader, FrameKind};
use crate::wire::preamble::{PREAMBLE_LEN, Preamble, Role};

/// Size of a connection's read buffer.
pub const READ_BUFFER: usize = 256 * 1024;
/// A payload tail at least this long is read directly into its slot.
pub const DIRECT_PLACEMENT_THRESHOLD: usize = 16 * 1024;
/// Most frames written by one `writev` (two iovecs each; Linux allows 1024).
pub const MAX_FRAMES_PER_WRITE: usize = 256;
/// Most read system calls per poll before yielding to other connections.
pub const READS_PER_POLL: usize = 32;

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
    move |source| TransportError::Io { op, source }
}

/// Sets the socket options qdl wants on every connection (no Nagle: qdl batches itself).
pub fn tune(stream: &TcpStream) -> Result<(), TransportError> {
    stream.set_nodelay(true).map_err(io_err("setting TCP_NODELAY"))
}

/// Opens a data connection to `addr` and attaches it to a session: preamble + attach block out,
/// the accelerator's preamble + status back. A version mismatch or refusal is a clear error.
pub async fn connect_data(addr: SocketAddr, attach: Attach, timeout: Duration) -> Result<TcpStream, TransportError> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io_err("connecting the data connection"))?;
        tune(&stream)?;
        let mut hello = Preamble::ours(Role::Data).encode().to_vec();
        hello.extend_from_slice(&attach.encode());
        stream.write_all(&hello).await.map_err(io_err("sending the attach block"))?;
        let mut pre = [0u8; PREAMBLE_LEN];
        read_exact_or_closed(&mut stream, &mut pre).await?;
        Preamble::parse(&pre)?;
        let mut reply = [0u8; ATTACH_REPLY_LEN];
        read_exact_or_closed(&mut stream, &mut reply).await?;
        match AttachStatus::parse(&reply)? {
            AttachStatus::Accepted => Ok(stream),
            other => Err(TransportError::Refused(other)),
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| TransportError::Timeout("attaching a data connection"))?
}

/// `read_exact` that reports a clean EOF as [`TransportError::Closed`].
pub async fn read_exact_or_closed(stream: &mut TcpStream, buf: &mut [u8]) -> Result<(), TransportError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TransportError::Closed),
        Err(e) => Err(TransportError::Io { op: "reading", source: e }),
    }
}

/// A read buffer with a consumed prefix `start` and a filled end `end`.
struct ReadBuffer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    fn new(size: usize) -> ReadBuffer {
        ReadBuffer { buf: vec![0; size].into_boxed_slice(), start: 0, end: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once into the free tail (compacting first if the tail is small).
    fn poll_fill(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
        stats: &mut TransportStats,
    ) -> Poll<Result<usize, TransportError>> {
        if self.buf.len() - self.end < DATA_HEADER_LEN * 4 && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
        poll_read_into(stream, cx, &mut rb, stats).map_ok(|n| {
            self.end += n;
            n
        })
    }
}

fn poll_read_into(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    rb: &mut ReadBuf<'_>,
    stats: &mut TransportStats,
) -> Poll<Result<usize, TransportError>> {
    match Pin::new(stream).poll_read(cx, rb) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Err(TransportError::Io { op: "reading", source: e })),
        Poll::Ready(Ok(())) => {
            stats.read_calls += 1;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(TransportError::Closed));
            }
            stats.bytes_received += n as u64;
            Poll::Ready(Ok(n))
        }
    }
}

// -------------------------------------------------------------------------------------------
// Frontend side
// -------------------------------------------------------------------------------------------

struct OutFrame {
    header: [u8; DATA_HEADER_LEN],
    payload: Payload,
    queued: Nanos,
}

/// The frontend's end of a TCP data connection.
pub struct TcpInitiator {
    stream: TcpStream,
    out: VecDeque<OutFrame>,
    /// Bytes of `out.front()` already written.
    front_written: usize,
    inbuf: ReadBuffer,
    max_response: u32,
    stats: TransportStats,
    metrics: TransportMetrics,
    sampler: crate::metrics::Sampler,
}

impl TcpInitiator {
    /// Wraps an attached data connection whose responses carry at most `max_response` bytes.
    pub fn new(stream: TcpStream, max_response: u32, metrics: TransportMetrics) -> TcpInitiator {
        let size = READ_BUFFER.max(2 * (DATA_HEADER_LEN + max_response as usize));
        TcpInitiator {
            stream,
            out: VecDeque::new(),
            front_written: 0,
            inbuf: ReadBuffer::new(size),
            max_response,
            stats: TransportStats::default(),
            metrics,
            sampler: Default::default(),
        }
    }

    /// `n` more bytes were written: retires the frames they complete (returns how many).
    fn advance(&mut self, mut n: usize, now: Nanos) -> usize {
        let mut done = 0;
        while n > 0 {
            let front = self.out.front().expect("written bytes belong to queued frames");
            let left = DATA_HEADER_LEN + front.payload.len() - self.front_written;
            if n >= left {
                n -= left;
                if self.sampler.hit() {
                    self.metrics.send_delay.record(now.since(front.queued).as_secs_f64());
                }
                self.out.pop_front();
                self.front_written = 0;
                self.stats.frames_sent += 1;
                done += 1;
            } else {
                self.front_written += n;
                n = 0;
            }
        }
        done
    }
}

impl InitiatorTransport for TcpInitiator {
    fn push_request(&mut self, header: DataHeader, payload: Payload) {
        self.out.push_back(OutFrame { header: header.encode(), payload, queued: Nanos::now() });
    }

    fn queued(&self) -> usize {
        self.out.len()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 2 * MAX_FRAMES_PER_WRITE];
            let mut n = 0;
            for (i, f) in self.out.iter().take(MAX_FRAMES_PER_WRITE).enumerate() {
                let skip = if i == 0 { self.front_written } else { 0 };
                if skip < DATA_HEADER_LEN {
                    iov[n] = IoSlice::new(&f.header[skip..]);
                    n += 1;
                }
                let p = f.payload.as_slice();
                let pskip = skip.saturating_sub(DATA_HEADER_LEN);
                if pskip < p.len() {
                    iov[n] = IoSlice::new(&p[pskip..]);
                    n += 1;
                }
            }
            match Pin::new(&mut self.stream).poll_write_vectored(cx, &iov[..n]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(TransportError::Io { op: "writing requests", source: e }));
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(TransportError::Closed)),
                Poll::Ready(Ok(written)) => {
                    self.stats.write_calls += 1;
                    self.stats.bytes_sent += written as u64;
                    let done = self.advance(written, Nanos::now());
                    self.metrics.frames_per_write.record(done as f64);
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_responses(
        &mut self,
        cx: &mut Context<'_>,
        on_response: &mut OnResponse<'_>,
    ) -> Poll<Result<usize, TransportError>> {
        for _ in 0..READS_PER_POLL {
            let mut delivered = 0;
            loop {
                match DataHeader::parse_frame(self.inbuf.data(), self.max_response) {
                    Ok((h, payload)) => {
                        if h.kind == FrameKind::Request {
                            return Poll::Ready(Err(TransportError::Protocol(
                                "the accelerator sent a request frame".into(),
                            )));
                        }
                        on_response(&h, payload)?;
                        self.stats.frames_received += 1;
                        delivered += 1;
                        let used = DATA_HEADER_LEN + h.len as usize;
                        self.inbuf.consume(used);
                    }
                    Err(e) if e.is_incomplete() => break,
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
            }
            if delivered > 0 {
                self.metrics.frames_per_read.record(delivered as f64);
                return Poll::Ready(Ok(delivered));
            }
            match self.inbuf.poll_fill(&mut self.stream, cx, &mut self.stats) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Ready(Ok(0))
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}

// -------------------------------------------------------------------------------------------
// Accelerator side
// -------------------------------------------------------------------------------------------

struct Partial {
    header: DataHeader,
    lease: SlotLease,
    filled: usize,
}

/// The accelerator's end of a TCP data connection.
pub struct TcpTarget {
    stream: TcpStream,
    arena: Arc<SlotArena>,
    sizes: RequestSize,
    inbuf: ReadBuffer,
    partial: Option<Partial>,
    out: Vec<u8>,
    out_pos: usize,
    out_frames: usize,
    stats: TransportStats,
    metrics: TransportMetrics,
}

impl TcpTarget {
    /// Wraps an attached data connection whose requests fill `arena`'s slots; every request's
    /// size must be one `sizes` accepts (the session's input size, or up to it for generative
    /// workloads). `frames_per_write` counts responses per flush (one or more write calls).
    pub fn new(stream: TcpStream, arena: Arc<SlotArena>, sizes: RequestSize, metrics: TransportMetrics) -> TcpTarget {
        TcpTarget {
            stream,
            arena,
            sizes,
            inbuf: ReadBuffer::new(READ_BUFFER),
            partial: None,
            out: Vec::new(),
            out_pos: 0,
            out_frames: 0,
            stats: TransportStats::default(),
            metrics,
        }
    }

    /// Delivers every complete request in the read buffer (and fills a pending slot from it).
    fn consume(&mut self, on_request: &mut OnRequest<'_>) -> Result<usize, TransportError> {
        let mut n = 0;
        loop {
            if let Some(p) = &mut self.partial {
                let need = p.header.len as usize - p.filled;
                let data = self.inbuf.data();
                let take = need.min(data.len());
                if take > 0 {
                    p.lease.bytes_mut()[p.filled..p.filled + take].copy_from_slice(&data[..take]);
                    p.filled += take;
                    self.inbuf.consume(take);
                }
                if p.filled < p.header.len as usize {
                    return Ok(n);
                }
                let p = self.partial.take().expect("checked above");
                self.stats.frames_received += 1;
                on_request(Request { header: p.header, slot: p.lease })?;
                n += 1;
                continue;
            }
            let h = match DataHeader::parse(self.inbuf.data(), self.sizes.max()) {
                Ok(h) => h,
                Err(e) if e.is_incomplete() => return Ok(n),
                Err(e) => return Err(e.into()),
            };
            if h.kind != FrameKind::Request {
                return Err(TransportError::Protocol(format!("the frontend sent a {:?} frame", h.kind)));
            }
            if !self.sizes.accepts(h.len) {
                return Err(TransportError::Protocol(match self.sizes {
                    RequestSize::Exact(n) => {
                        format!("request of {} bytes in slot {}; this session's samples are {n} bytes", h.len, h.slot)
                    }
                    RequestSize::UpTo { max, multiple_of } => format!(
                        "request of {} bytes in slot {}; this session's samples are 1 to {} units of {multiple_of} bytes",
                        h.len,
                        h.slot,
                        max / multiple_of.max(1)
                    ),
                }));
            }
            let lease = self.arena.try_lease(h.slot)?;
            self.inbuf.consume(DATA_HEADER_LEN);
            self.partial = Some(Partial { header: h, lease, filled: 0 });
        }
    }
}

impl TargetTransport for TcpTarget {
    fn poll_requests(
        &mut self,
        cx: &mut Context<'_>,
        on_request: &mut OnRequest<'_>,
    ) -> Poll<Result<usize, TransportError>> {
        let mut delivered = 0;
        for _ in 0..READS_PER_POLL {
            delivered += match self.consume(on_request) {
                Ok(0) => 0,
                Ok(n) => {
                    self.metrics.frames_per_read.record(n as f64);
                    n
                }
                Err(e) => return Poll::Ready(Err(e)),
            };
            let direct = match &mut self.partial {
                Some(p)
                    if self.inbuf.data().is_empty()
                        && p.header.len as usize - p.filled >= DIRECT_PLACEMENT_THRESHOLD =>
                {
                    Some(p)
                }
                _ => None,
            };
            let read = match direct {
                Some(p) => {
                    let end = p.header.len as usize;
                    let mut rb = ReadBuf::new(&mut p.lease.bytes_mut()[p.filled..end]);
                    let r = poll_read_into(&mut self.stream, cx, &mut rb, &mut self.stats);
                    if let Poll::Ready(Ok(n)) = r {
                        p.filled += n;
                    }
                    r
                }
                None => self.inbuf.poll_fill(&mut self.stream, cx, &mut self.stats),
            };
            match read {
                Poll::Pending => return if delivered > 0 { Poll::Ready(Ok(delivered)) } else { Poll::Pending },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
        }
        // Budget spent: deliver what is complete and ask to be polled again after the others.
        delivered += match self.consume(on_request) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(e)),
        };
        cx.waker().wake_by_ref();
        Poll::Ready(Ok(delivered))
    }

    fn push_response(&mut self, header: DataHeader, output: &[u8]) {
        debug_assert_eq!(header.len as usize, output.len());
        self.out.extend_from_slice(&header.encode());
        self.out.extend_from_slice(output);
        self.stats.frames_sent += 1;
        self.out_frames += 1;
    }

    fn queued_bytes(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while self.out_pos < self.out.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.out[self.out_pos..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(TransportError::Io { op: "writing responses", source: e }));
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(TransportError::Closed)),
                Poll::Ready(Ok(n)) => {
                    self.stats.write_calls += 1;
                    self.stats.bytes_sent += n as u64;
                    self.out_pos += n;
                }
            }
        }
        if self.out_frames > 0 {
            self.metrics.frames_per_write.record(self.out_frames as f64);
            self.out_frames = 0;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{PayloadSource, TransportMetrics};
    use std::future::poll_fn;
    use tokio::net::TcpListener;

    struct Bytes(Vec<u8>);
    impl PayloadSource for Bytes {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Requests of every size class cross, land in the right slots byte for byte, and responses
    /// come back into the initiator's callback.
    #[tokio::test]
    async fn requests_land_in_slots_and_responses_return() {
        for sample in [16usize, 4608, 150_528] {
            let (a, b) = pair().await;
            let arena = SlotArena::new(64, sample).unwrap();
            let mut fe = TcpInitiator::new(a, 8, TransportMetrics::default());
            let mut acc =
                TcpTarget::new(b, arena.clone(), RequestSize::Exact(sample as u32), TransportMetrics::default());
            let data: Vec<u8> = (0..sample * 40).map(|i| (i * 7 % 251) as u8).collect();
            let src: Arc<dyn PayloadSource> = Arc::new(Bytes(data.clone()));
            for i in 0..40u32 {
                let p = Payload::new(src.clone(), i as usize * sample, sample).unwrap();
                fe.push_request(DataHeader::request(i + 3, 1000 + i as u64, sample as u32, i), p);
            }
            let writer = tokio::spawn(async move {
                poll_fn(|cx| fe.poll_flush(cx)).await.unwrap();
                fe
            });
            let mut got = Vec::new();
            while got.len() < 40 {
                poll_fn(|cx| {
                    acc.poll_requests(cx, &mut |r| {
                        got.push(r);
                        Ok(())
                    })
                })
                .await
                .unwrap();
            }
            let mut fe = writer.await.unwrap();
            for (i, r) in got.iter().enumerate() {
                assert_eq!(r.header.slot, i as u32 + 3);
                assert_eq!(r.slot.slot(), i as u32 + 3);
                assert_eq!(r.slot.bytes(), &data[i * sample..(i + 1) * sample], "sample {i} of {sample} bytes");
            }
            for r in &got {
                acc.push_response(
                    DataHeader::response(r.header.slot, r.header.sample_id, 4, 0),
                    &r.header.aux.to_le_bytes(),
                );
            }
            drop(got);
            poll_fn(|cx| acc.poll_flush(cx)).await.unwrap();
            let mut responses = Vec::new();
            while responses.len() < 40 {
                poll_fn(|cx| {
                    fe.poll_responses(cx, &mut |h, p| {
                        responses.push((h.slot, h.sample_id, p.to_vec()));
                        Ok(())
                    })
                })
                .await
                .unwrap();
            }
            assert_eq!(responses[7], (10, 1007, 7u32.to_le_bytes().to_vec()));
            assert!(fe.stats().write_calls < 40, "requests were batched into few writes: {:?}", fe.stats());
            assert_eq!(arena.leased(), 0);
        }
    }

    #[tokio::test]
    async fn busy_slot_wrong_size_and_garbage_are_protocol_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut v = DataHeader::request(1, 1, 8, 0).encode().to_vec();
                    v.extend_from_slice(&[0; 8]);
                    v.extend_from_slice(&DataHeader::request(1, 2, 8, 0).encode());
                    v.extend_from_slice(&[0; 8]);
                    v
                },
                "still busy",
            ),
            (DataHeader::request(1, 1, 4, 0).encode().to_vec(), "samples are 8 bytes"),
            (DataHeader::request(99, 1, 8, 0).encode().to_vec(), "outside the ring"),
            (DataHeader::response(1, 1, 8, 0).encode().to_vec(), "Response frame"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "unknown data frame kind"),
            (
                {
                    let mut h = DataHeader::request(1, 1, 8, 0).encode();
                    h[16] = 0xff;
                    h[17] = 0xff;
                    h.to_vec()
                },
                "exceeds the limit",
            ),
        ];
        for (bytes, expect) in cases {
            let (mut a, b) = pair().await;
            let arena = SlotArena::new(4, 8).unwrap();
            let mut acc = TcpTarget::new(b, arena, RequestSize::Exact(8), TransportMetrics::default());
            a.write_all(&bytes).await.unwrap();
            let mut held = Vec::new();
            let err = loop {
                match poll_fn(|cx| {
                    acc.poll_requests(cx, &mut |r| {
                        held.push(r);
                        Ok(())
                    })
                })
                .await
                {
                    Ok(_) => continue,
                    Err(e) => break e,
                }
            };
            assert!(err.to_string().contains(expect), "{err} (expected {expect:?})");
        }
    }

    #[tokio::test]
    async fn attach_handshake_reports_refusal_and_version_mismatch() {
        for (reply, expect) in [
            (
                [Preamble::ours(Role::Data).encode().to_vec(), AttachStatus::UnknownSession.encode().to_vec()].concat(),
                "no live session",
            ),
            (
                {
                    let mut p = Preamble::ours(Role::Data).encode().to_vec();
                    p[4] = 42;
                    p
                },
                "peer speaks v42",
            ),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; PREAMBLE_LEN + crate::wire::attach::ATTACH_LEN];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&reply).await.unwrap();
            });
            let attach = Attach { token: crate::wire::attach::SessionToken([0; 16]), connection: 0 };
            let err = connect_data(addr, attach, Duration::from_secs(5)).await.unwrap_err();
            assert!(err.to_string().contains(expect), "{err}");
            server.await.unwrap();
        }
    }
}

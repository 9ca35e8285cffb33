//! Drives a sans-IO control [`Endpoint`] over a TCP stream: reads feed `handle_input`, queued
//! bytes are written, and the endpoint's heartbeat/liveness timer is armed on a tokio `Sleep`.
//! The owning actor calls [`ControlLink::poll_io`] from its pump and drains the endpoint's events.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::ControlStream;
use tokio::time::Sleep;

use crate::control::Endpoint;
use crate::time::Nanos;
use crate::transport::TransportError;

/// An endpoint with its socket and timer; see the module docs.
pub struct ControlLink {
    /// The protocol state machine.
    pub endpoint: Endpoint,
    stream: Box<dyn ControlStream>,
    peer: Option<std::net::SocketAddr>,
    rbuf: Box<[u8]>,
    wbuf: Vec<u8>,
    wpos: usize,
    timer: Pin<Box<Sleep>>,
    armed: Option<Nanos>,
}

impl ControlLink {
    /// Wraps a connected stream (must be called inside a tokio runtime).
    pub fn new(stream: TcpStream, endpoint: Endpoint) -> ControlLink {
        let peer = stream.peer_addr().ok();
        ControlLink::over(Box::new(stream), peer, endpoint)
    }

    /// Wraps any control stream (TLS over TCP, say) whose peer is `peer`.
    pub fn over(stream: Box<dyn ControlStream>, peer: Option<std::net::SocketAddr>, endpoint: Endpoint) -> ControlLink {
        ControlLink {
            endpoint,
            stream,
            peer,
            rbuf: vec![0; 16 * 1024].into_boxed_slice(),
            wbuf: Vec::new(),
            wpos: 0,
            timer: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(3600))),
            armed: None,
        }
    }

    /// The peer's address, if known.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// Whether the session is over and everything queued has been written.
    pub fn finished(&self) -> bool {
        self.endpoint.is_done() && !self.endpoint.has_transmit() && self.wpos == self.wbuf.len()
    }

    /// One pass of I/O: reads everything available into the endpoint, writes what it queued,
    /// runs its timer. `Ready(Ok)` if anything happened (drain events, then call again),
    /// `Pending` when idle (wakers registered), `Ready(Err)` when the socket failed or closed.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        let mut progress = false;
        // Read.
        if !self.endpoint.is_done() {
            loop {
                let mut rb = ReadBuf::new(&mut self.rbuf);
                match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(TransportError::Io {
                            op: "reading the control connection",
                            source: e,
                        }));
                    }
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(Err(TransportError::Closed)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.endpoint.handle_input(&self.rbuf[..n], Nanos::now());
                        progress = true;
                        if self.endpoint.is_done() {
                            break;
                        }
                    }
                }
            }
        }
        // Timer.
        if let Some(at) = self.endpoint.poll_timeout() {
            if self.armed != Some(at) {
                self.timer.as_mut().reset(tokio::time::Instant::from_std(at.to_instant()));
                self.armed = Some(at);
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                self.armed = None;
                self.endpoint.handle_timeout(Nanos::now());
                progress = true;
            }
        }
        // Write.
        if let Some(bytes) = self.endpoint.poll_transmit() {
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
            }
            self.wbuf.extend_from_slice(&bytes);
        }
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(TransportError::Io { op: "writing the control connection", source: e }));
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(TransportError::Closed)),
                Poll::Ready(Ok(n)) => {
                    self.wpos += n;
                    progress = true;
                }
            }
        }
        // A TLS stream holds written bytes in its records until flushed (a no-op for TCP).
        if progress && let Poll::Ready(Err(e)) = Pin::new(&mut self.stream).poll_flush(cx) {
            return Poll::Ready(Err(TransportError::Io { op: "writing the control connection", source: e }));
        }
        if progress { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

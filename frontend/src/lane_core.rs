//! The protocol logic of one frontend data connection, sans-IO: [`LaneCore`].
//!
//! It owns the connection's [`TransactionTracker`] and its response ring. The driver (the
//! [`crate::connection::ConnectionActor`] in production, the virtual-clock harness in tests)
//! feeds it and drains it:
//! - [`LaneCore::handle_submission`]: a sample taken from the issuer's lane gets a slot; its
//!   request frame (header + the driver's payload) waits in [`LaneCore::poll_transmit`];
//! - [`LaneCore::handle_response`]: a response frame is validated (slot, sample id, size) and its
//!   output copied into the slot's place in the ring (as an RDMA write would place it); the
//!   completion waits in [`LaneCore::completions`] (LoadGen's token and the output bytes);
//!   each completion frees one credit of the lane;
//! - [`LaneCore::give_up`]: the connection is lost or its accelerator declared dead: every
//!   sample in flight is drained, to be re-dispatched; answers that still arrive are late,
//!   counted and dropped (their samples belong to other connections now).
//!
//! Time is passed in as `now`. Drain [`LaneCore::completions`] before the next submission: a
//! completion's output lives in its slot of the ring until then.

use std::collections::VecDeque;

use qdl_loadgen::ResponseId;
use qdl_shared::time::Nanos;
use qdl_shared::tracker::{TrackerError, TransactionTracker};
use qdl_shared::wire::data::{DataHeader, FrameKind};

/// A sample's token: what answers it (LoadGen's [`ResponseId`] in production) and the id it
/// carries on the wire.
pub trait SampleToken {
    /// The sample id of its request frame (echoed by the response).
    fn wire_id(&self) -> u64;
}

impl SampleToken for ResponseId {
    fn wire_id(&self) -> u64 {
        self.raw()
    }
}

impl SampleToken for u64 {
    fn wire_id(&self) -> u64 {
        *self
    }
}

/// Errors of a lane: each one means the peer broke the protocol and ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// The tracker refused a response (stray, duplicate, wrong sample) or a submission (full).
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    /// A response larger than an output slot.
    #[error("response of {got} bytes; outputs are {max} bytes")]
    Oversized {
        /// The response's payload size.
        got: usize,
        /// The output slot size.
        max: usize,
    },
}

impl From<LaneError> for qdl_shared::transport::TransportError {
    /// A lane error ends the connection as a transport error of the same kind (typed, not text).
    fn from(e: LaneError) -> Self {
        match e {
            LaneError::Tracker(t) => Self::Tracker(t),
            LaneError::Oversized { got, max } => Self::OversizedResponse { got, max },
        }
    }
}

/// A sample waiting for its answer: its token, QSL index and when LoadGen issued it.
#[derive(Debug)]
pub struct Pending<T> {
    /// What answers it.
    pub token: T,
    /// Its QSL index.
    pub index: usize,
    /// When LoadGen issued it.
    pub issued: Nanos,
}

/// What one accepted response tells the driver (for its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// From LoadGen's issue to the response.
    pub end_to_end: Nanos,
    /// From the request being queued here to the response.
    pub round_trip: Nanos,
    /// The accelerator's own time with the sample (as it reported).
    pub residence: Nanos,
    /// The accelerator answered with an error.
    pub error: bool,
}

struct Done<T> {
    token: T,
    slot: u32,
    len: u32,
    error: bool,
}

/// One data connection's protocol state; see the module docs.
pub struct LaneCore<T, P> {
    tracker: TransactionTracker<(T, usize, Nanos)>,
    ring: Vec<u8>,
    output_bytes: usize,
    done: Vec<Done<T>>,
    outgoing: VecDeque<(DataHeader, P)>,
    given_up: bool,
    late: u64,
}

impl<T: SampleToken, P> LaneCore<T, P> {
    /// A core with `slots` slots (the lane's credits) of `output_bytes` output each.
    pub fn new(slots: u32, output_bytes: u32) -> Self {
        let tracker = TransactionTracker::new(slots);
        let slots = tracker.capacity() as usize;
        LaneCore {
            tracker,
            ring: vec![0; slots * output_bytes as usize],
            output_bytes: output_bytes as usize,
            done: Vec::with_capacity(slots),
            outgoing: VecDeque::with_capacity(slots),
            given_up: false,
            late: 0,
        }
    }

    /// Samples in flight.
    pub fn in_flight(&self) -> u32 {
        self.tracker.in_flight()
    }

    /// Free slots.
    pub fn free_slots(&self) -> u32 {
        self.tracker.free_slots()
    }

    /// Late answers dropped since [`LaneCore::give_up`].
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Whether the connection was given up.
    pub fn is_given_up(&self) -> bool {
        self.given_up
    }

    /// A sample from the lane, `len` bytes of input in `payload`: takes a slot and queues its
    /// request frame. Should no slot be free (credits equal slots, so a bug), the sample is
    /// completed as failed, never lost, and the error returned for the driver to report.
    pub fn handle_submission(&mut self, sample: Pending<T>, payload: P, len: u32, now: Nanos) -> Result<(), LaneError> {
        let id = sample.token.wire_id();
        let index = sample.index;
        match self.tracker.handle_submit(id, (sample.token, index, sample.issued), now) {
            Ok(slot) => {
                self.outgoing.push_back((DataHeader::request(slot, id, len, index as u32), payload));
                Ok(())
            }
            Err((e, (token, _, _))) => {
                self.fail_sample(token);
                Err(e.into())
            }
        }
    }

    /// Completes a sample as failed without sending it (e.g. it is not loaded).
    pub fn fail_sample(&mut self, token: T) {
        self.done.push(Done { token, slot: 0, len: 0, error: true });
    }

    /// The next request frame to send.
    pub fn poll_transmit(&mut self) -> Option<(DataHeader, P)> {
        self.outgoing.pop_front()
    }

    /// A response frame: `Ok(None)` when it is late (the connection was given up), dropped.
    pub fn handle_response(
        &mut self,
        h: &DataHeader,
        payload: &[u8],
        now: Nanos,
    ) -> Result<Option<Answered>, LaneError> {
        if self.given_up {
            self.late += 1;
            return Ok(None);
        }
        let error = h.kind == FrameKind::Error;
        if !error && payload.len() > self.output_bytes {
            return Err(LaneError::Oversized { got: payload.len(), max: self.output_bytes });
        }
        let c = self.tracker.handle_response(h.slot, h.sample_id, now)?;
        let (token, _, issued) = c.payload;
        let len = if error { 0 } else { payload.len() };
        let at = c.slot as usize * self.output_bytes;
        self.ring[at..at + len].copy_from_slice(&payload[..len]);
        self.done.push(Done { token, slot: c.slot, len: len as u32, error });
        let residence = if error { Nanos::ZERO } else { Nanos::from_micros(h.aux as u64) };
        Ok(Some(Answered { end_to_end: now.since(issued), round_trip: c.latency, residence, error }))
    }

    /// Completions waiting for the driver: (token, output bytes, failed). Each frees one credit.
    pub fn completions(&mut self) -> impl Iterator<Item = (T, &[u8], bool)> + '_ {
        let (ring, ob) = (&self.ring, self.output_bytes);
        self.done.drain(..).map(move |d| {
            let at = d.slot as usize * ob;
            (d.token, &ring[at..at + d.len as usize], d.error)
        })
    }

    /// Whether completions are waiting.
    pub fn has_completions(&self) -> bool {
        !self.done.is_empty()
    }

    /// Gives the connection up: drops the frames not yet sent and returns every sample in
    /// flight (oldest first) for re-dispatch; answers from now on are late. Completions already
    /// accepted stay, for the driver to hand over.
    pub fn give_up(&mut self) -> Vec<Pending<T>> {
        self.given_up = true;
        self.outgoing.clear();
        self.tracker.drain().into_iter().map(|(_, (token, index, issued))| Pending { token, index, issued }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: u64) -> Pending<u64> {
        Pending { token: id, index: id as usize, issued: Nanos(0) }
    }

    #[test]
    fn a_response_completes_its_sample_with_its_bytes() {
        let mut core: LaneCore<u64, ()> = LaneCore::new(2, 4);
        core.handle_submission(pending(7), (), 16, Nanos(10)).unwrap();
        let (h, ()) = core.poll_transmit().unwrap();
        assert_eq!((h.sample_id, h.len, h.kind), (7, 16, FrameKind::Request));
        let a = core.handle_response(&DataHeader::response(h.slot, 7, 3, 5), &[1, 2, 3], Nanos(30)).unwrap();
        assert_eq!(a.map(|a| (a.end_to_end, a.round_trip)), Some((Nanos(30), Nanos(20))));
        let done: Vec<(u64, Vec<u8>, bool)> = core.completions().map(|(t, b, e)| (t, b.to_vec(), e)).collect();
        assert_eq!(done, vec![(7, vec![1, 2, 3], false)]);
    }

    #[test]
    fn violations_are_typed_and_leave_the_sample_in_flight() {
        let mut core: LaneCore<u64, ()> = LaneCore::new(2, 4);
        core.handle_submission(pending(7), (), 16, Nanos(0)).unwrap();
        let (h, ()) = core.poll_transmit().unwrap();
        let wrong = core.handle_response(&DataHeader::response(h.slot, 8, 1, 0), &[0], Nanos(1));
        assert!(matches!(wrong, Err(LaneError::Tracker(TrackerError::SampleMismatch { .. }))), "{wrong:?}");
        let big = core.handle_response(&DataHeader::response(h.slot, 7, 5, 0), &[0; 5], Nanos(1));
        assert_eq!(big, Err(LaneError::Oversized { got: 5, max: 4 }));
        assert_eq!(core.in_flight(), 1);
    }

    #[test]
    fn give_up_drains_what_is_in_flight_and_later_answers_are_late() {
        let mut core: LaneCore<u64, ()> = LaneCore::new(4, 4);
        for id in 1..=3 {
            core.handle_submission(pending(id), (), 16, Nanos(id)).unwrap();
        }
        let first = core.poll_transmit().unwrap().0;
        core.handle_response(&DataHeader::response(first.slot, 1, 1, 0), &[9], Nanos(5)).unwrap();
        let drained: Vec<u64> = core.give_up().into_iter().map(|p| p.token).collect();
        assert_eq!(drained, vec![2, 3]);
        assert_eq!(core.poll_transmit().map(|(h, _)| h.sample_id), None, "unsent frames are dropped");
        let late = core.handle_response(&DataHeader::response(1, 2, 1, 0), &[9], Nanos(6)).unwrap();
        assert_eq!((late, core.late()), (None, 1));
        // The answer accepted before the give-up is still handed over.
        assert_eq!(core.completions().map(|(t, _, _)| t).collect::<Vec<_>>(), vec![1]);
    }
}

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
//! Generative (LLM) workloads ([`LaneCore::generative`]): a first-token frame is validated like
//! a response (slot, sample id, size) but leaves the sample in flight; the first one for a
//! sample is handed to the driver's `first_token` callback at once (LoadGen's
//! FirstTokenComplete must precede the sample's completion and come from the same thread). A
//! sample re-dispatched after its first token was reported never reports another; a final
//! answer that arrives without any first token reports its first token just before it
//! completes. The final answer's token count is its length / 4.
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
    /// A first-token frame where none may come: a workload that is not generative, a second
    /// one for the same request, or one that is not one int32 token.
    #[error("unexpected first-token frame: {0}")]
    FirstToken(&'static str),
}

impl From<LaneError> for qdl_shared::transport::TransportError {
    /// A lane error ends the connection as a transport error of the same kind (typed, not text).
    fn from(e: LaneError) -> Self {
        match e {
            LaneError::Tracker(t) => Self::Tracker(t),
            LaneError::Oversized { got, max } => Self::OversizedResponse { got, max },
            LaneError::FirstToken(why) => Self::Protocol(format!("unexpected first-token frame: {why}")),
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
    /// Its first token was already reported to LoadGen (by a connection it was taken from).
    pub first_reported: bool,
}

/// What the tracker holds for a sample in flight.
struct InFlight<T> {
    token: T,
    index: usize,
    issued: Nanos,
    first_reported: bool,
    /// When the request was queued on this connection.
    queued: Nanos,
    /// When a first token arrived on this connection (a first-token frame, or the final answer
    /// that reported it).
    first_here: Option<Nanos>,
    /// Of the first token's round trip, the part outside the accelerator.
    first_outside: Option<Nanos>,
}

/// The size of a first-token frame's payload: one int32 token id.
pub const FIRST_TOKEN_BYTES: usize = 4;

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
    /// Generative samples whose first token came on this connection: LoadGen's issue to it.
    pub first_token: Option<Nanos>,
    /// Of that first token's round trip (from the request being queued here), the part outside
    /// the accelerator: the round trip less the accelerator's reported time to the first token.
    pub first_token_outside: Option<Nanos>,
}

struct Done<T> {
    token: T,
    slot: u32,
    len: u32,
    error: bool,
}

/// One data connection's protocol state; see the module docs.
pub struct LaneCore<T, P> {
    tracker: TransactionTracker<InFlight<T>>,
    generative: bool,
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
            generative: false,
            ring: vec![0; slots * output_bytes as usize],
            output_bytes: output_bytes as usize,
            done: Vec::with_capacity(slots),
            outgoing: VecDeque::with_capacity(slots),
            given_up: false,
            late: 0,
        }
    }

    /// A core for a generative workload: first-token frames are expected (see the module docs).
    pub fn generative(slots: u32, output_bytes: u32) -> Self {
        LaneCore { generative: true, ..Self::new(slots, output_bytes) }
    }

    /// Whether first-token frames are expected.
    pub fn is_generative(&self) -> bool {
        self.generative
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
        let entry = InFlight {
            token: sample.token,
            index,
            issued: sample.issued,
            first_reported: sample.first_reported,
            queued: now,
            first_here: None,
            first_outside: None,
        };
        match self.tracker.handle_submit(id, entry, now) {
            Ok(slot) => {
                self.outgoing.push_back((DataHeader::request(slot, id, len, index as u32), payload));
                Ok(())
            }
            Err((e, entry)) => {
                self.fail_sample(entry.token);
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

    /// A response, error or first-token frame: `Ok(None)` when it is late (the connection was
    /// given up) or a first token, neither of which completes a sample. `first_token` receives a
    /// sample's first token (its token and the token's bytes) when LoadGen must be told of it.
    pub fn handle_response(
        &mut self,
        h: &DataHeader,
        payload: &[u8],
        now: Nanos,
        first_token: &mut dyn FnMut(&T, &[u8]),
    ) -> Result<Option<Answered>, LaneError> {
        if self.given_up {
            self.late += 1;
            return Ok(None);
        }
        if h.kind == FrameKind::FirstToken {
            return self.handle_first_token(h, payload, now, first_token).map(|()| None);
        }
        let error = h.kind == FrameKind::Error;
        if !error && payload.len() > self.output_bytes {
            return Err(LaneError::Oversized { got: payload.len(), max: self.output_bytes });
        }
        if self.generative && !error {
            // A final answer without a first token (the accelerator may send both at once when
            // the first token ends the sequence): report it first, as LoadGen requires.
            let e = self.tracker.handle_progress(h.slot, h.sample_id)?;
            if e.first_here.is_none() && payload.len() >= FIRST_TOKEN_BYTES {
                // The first token came with the final answer: its time outside the accelerator
                // is the answer's.
                e.first_here = Some(now);
                e.first_outside = Some(now.since(e.queued).since(Nanos::from_micros(h.aux as u64)));
            }
            if !e.first_reported && payload.len() >= FIRST_TOKEN_BYTES {
                e.first_reported = true;
                first_token(&e.token, &payload[..FIRST_TOKEN_BYTES]);
            }
        }
        let c = self.tracker.handle_response(h.slot, h.sample_id, now)?;
        let InFlight { token, issued, first_here, first_outside, .. } = c.payload;
        let len = if error { 0 } else { payload.len() };
        let at = c.slot as usize * self.output_bytes;
        self.ring[at..at + len].copy_from_slice(&payload[..len]);
        self.done.push(Done { token, slot: c.slot, len: len as u32, error });
        let residence = if error { Nanos::ZERO } else { Nanos::from_micros(h.aux as u64) };
        let first_token = first_here.map(|at| at.since(issued));
        Ok(Some(Answered {
            end_to_end: now.since(issued),
            round_trip: c.latency,
            residence,
            error,
            first_token,
            first_token_outside: first_outside.filter(|_| !error),
        }))
    }

    fn handle_first_token(
        &mut self,
        h: &DataHeader,
        payload: &[u8],
        now: Nanos,
        first_token: &mut dyn FnMut(&T, &[u8]),
    ) -> Result<(), LaneError> {
        if !self.generative {
            return Err(LaneError::FirstToken("the workload is not generative"));
        }
        if payload.len() != FIRST_TOKEN_BYTES {
            return Err(LaneError::FirstToken("its payload is not one int32 token"));
        }
        let e = self.tracker.handle_progress(h.slot, h.sample_id)?;
        if e.first_here.is_some() {
            return Err(LaneError::FirstToken("a second one for the same request"));
        }
        e.first_here = Some(now);
        // The frame's aux is the accelerator's time from the request's arrival to this token, µs.
        e.first_outside = Some(now.since(e.queued).since(Nanos::from_micros(h.aux as u64)));
        if !e.first_reported {
            e.first_reported = true;
            first_token(&e.token, payload);
        }
        Ok(())
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
        self.tracker
            .drain()
            .into_iter()
            .map(|(_, e)| Pending {
                token: e.token,
                index: e.index,
                issued: e.issued,
                first_reported: e.first_reported,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(_: &u64, _: &[u8]) {}

    fn pending(id: u64) -> Pending<u64> {
        Pending { token: id, index: id as usize, issued: Nanos(0), first_reported: false }
    }

    #[test]
    fn a_response_completes_its_sample_with_its_bytes() {
        let mut core: LaneCore<u64, ()> = LaneCore::new(2, 4);
        core.handle_submission(pending(7), (), 16, Nanos(10)).unwrap();
        let (h, ()) = core.poll_transmit().unwrap();
        assert_eq!((h.sample_id, h.len, h.kind), (7, 16, FrameKind::Request));
        let a =
            core.handle_response(&DataHeader::response(h.slot, 7, 3, 5), &[1, 2, 3], Nanos(30), &mut ignore).unwrap();
        assert_eq!(a.map(|a| (a.end_to_end, a.round_trip)), Some((Nanos(30), Nanos(20))));
        let done: Vec<(u64, Vec<u8>, bool)> = core.completions().map(|(t, b, e)| (t, b.to_vec(), e)).collect();
        assert_eq!(done, vec![(7, vec![1, 2, 3], false)]);
    }

    #[test]
    fn violations_are_typed_and_leave_the_sample_in_flight() {
        let mut core: LaneCore<u64, ()> = LaneCore::new(2, 4);
        core.handle_submission(pending(7), (), 16, Nanos(0)).unwrap();
        let (h, ()) = core.poll_transmit().unwrap();
        let wrong = core.handle_response(&DataHeader::response(h.slot, 8, 1, 0), &[0], Nanos(1), &mut ignore);
        assert!(matches!(wrong, Err(LaneError::Tracker(TrackerError::SampleMismatch { .. }))), "{wrong:?}");
        let big = core.handle_response(&DataHeader::response(h.slot, 7, 5, 0), &[0; 5], Nanos(1), &mut ignore);
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
        core.handle_response(&DataHeader::response(first.slot, 1, 1, 0), &[9], Nanos(5), &mut ignore).unwrap();
        let drained: Vec<u64> = core.give_up().into_iter().map(|p| p.token).collect();
        assert_eq!(drained, vec![2, 3]);
        assert_eq!(core.poll_transmit().map(|(h, _)| h.sample_id), None, "unsent frames are dropped");
        let late = core.handle_response(&DataHeader::response(1, 2, 1, 0), &[9], Nanos(6), &mut ignore).unwrap();
        assert_eq!((late, core.late()), (None, 1));
        // The answer accepted before the give-up is still handed over.
        assert_eq!(core.completions().map(|(t, _, _)| t).collect::<Vec<_>>(), vec![1]);
    }

    fn first_tokens_of(
        core: &mut LaneCore<u64, ()>,
        h: &DataHeader,
        payload: &[u8],
    ) -> Result<Vec<(u64, Vec<u8>)>, LaneError> {
        let mut seen = Vec::new();
        core.handle_response(h, payload, Nanos(1), &mut |t, b| seen.push((*t, b.to_vec())))?;
        Ok(seen)
    }

    #[test]
    fn a_first_token_is_reported_once_and_keeps_the_sample_in_flight() {
        let mut core: LaneCore<u64, ()> = LaneCore::generative(2, 16);
        core.handle_submission(pending(7), (), 12, Nanos(0)).unwrap();
        let (h, ()) = core.poll_transmit().unwrap();
        let first = DataHeader::first_token(h.slot, 7, 4, 3);
        assert_eq!(first_tokens_of(&mut core, &first, &[5, 0, 0, 0]).unwrap(), vec![(7, vec![5, 0, 0, 0])]);
        assert_eq!((core.in_flight(), core.has_completions()), (1, false));
        let again = first_tokens_of(&mut core, &first, &[5, 0, 0, 0]);
        assert_eq!(again, Err(LaneError::FirstToken("a second one for the same request")));
        let out = [5, 0, 0, 0, 6, 0, 0, 0, 2, 0, 0, 0];
        let fin = DataHeader::response(h.slot, 7, 12, 9);
        assert_eq!(first_tokens_of(&mut core, &fin, &out).unwrap(), vec![], "reported already");
        let done: Vec<(u64, usize)> = core.completions().map(|(t, b, _)| (t, b.len())).collect();
        assert_eq!(done, vec![(7, 12)]);
    }

    #[test]
    fn first_token_frames_are_checked() {
        let mut fixed: LaneCore<u64, ()> = LaneCore::new(2, 16);
        fixed.handle_submission(pending(1), (), 4, Nanos(0)).unwrap();
        let slot = fixed.poll_transmit().unwrap().0.slot;
        let r = first_tokens_of(&mut fixed, &DataHeader::first_token(slot, 1, 4, 0), &[0; 4]);
        assert_eq!(r, Err(LaneError::FirstToken("the workload is not generative")));
        let mut core: LaneCore<u64, ()> = LaneCore::generative(2, 16);
        core.handle_submission(pending(1), (), 4, Nanos(0)).unwrap();
        let slot = core.poll_transmit().unwrap().0.slot;
        let r = first_tokens_of(&mut core, &DataHeader::first_token(slot, 1, 8, 0), &[0; 8]);
        assert_eq!(r, Err(LaneError::FirstToken("its payload is not one int32 token")));
        let r = first_tokens_of(&mut core, &DataHeader::first_token(slot, 2, 4, 0), &[0; 4]);
        assert!(matches!(r, Err(LaneError::Tracker(TrackerError::SampleMismatch { .. }))), "{r:?}");
        let r = first_tokens_of(&mut core, &DataHeader::first_token(slot + 1, 1, 4, 0), &[0; 4]);
        assert!(matches!(r, Err(LaneError::Tracker(TrackerError::NotInFlight { .. }))), "{r:?}");
    }

    #[test]
    fn a_final_answer_without_a_first_token_reports_it_first() {
        let mut core: LaneCore<u64, ()> = LaneCore::generative(2, 16);
        core.handle_submission(pending(3), (), 4, Nanos(0)).unwrap();
        let slot = core.poll_transmit().unwrap().0.slot;
        let out = [8, 0, 0, 0, 2, 0, 0, 0];
        let seen = first_tokens_of(&mut core, &DataHeader::response(slot, 3, 8, 0), &out).unwrap();
        assert_eq!(seen, vec![(3, vec![8, 0, 0, 0])]);
        assert_eq!(core.completions().count(), 1);
    }

    #[test]
    fn the_first_tokens_time_outside_the_accelerator_is_its_round_trip_less_the_accelerators_time() {
        let us = |v: u64| Nanos(v * 1000);
        // A first-token frame: queued at 1 ms, back at 9 ms, 6.5 ms of it in the accelerator.
        let mut core: LaneCore<u64, ()> = LaneCore::generative(2, 16);
        core.handle_submission(Pending { issued: us(400), ..pending(7) }, (), 4, us(1000)).unwrap();
        let slot = core.poll_transmit().unwrap().0.slot;
        core.handle_response(&DataHeader::first_token(slot, 7, 4, 6500), &[5, 0, 0, 0], us(9000), &mut ignore).unwrap();
        let out = [5, 0, 0, 0, 2, 0, 0, 0];
        let a = core.handle_response(&DataHeader::response(slot, 7, 8, 30_000), &out, us(40_000), &mut ignore);
        let a = a.unwrap().unwrap();
        assert_eq!((a.first_token, a.first_token_outside), (Some(us(8600)), Some(us(1500))));
        // The first token in the final answer: the answer's residence counts.
        core.handle_submission(pending(8), (), 4, us(50_000)).unwrap();
        let slot = core.poll_transmit().unwrap().0.slot;
        let a = core.handle_response(&DataHeader::response(slot, 8, 8, 700), &out, us(51_000), &mut ignore);
        assert_eq!(a.unwrap().unwrap().first_token_outside, Some(us(300)));
        // An error has none.
        core.handle_submission(pending(9), (), 4, us(60_000)).unwrap();
        let slot = core.poll_transmit().unwrap().0.slot;
        let h = DataHeader::error(slot, 9, qdl_shared::wire::data::DataErrorCode::BackendFailed, 0);
        let a = core.handle_response(&h, &[], us(61_000), &mut ignore).unwrap().unwrap();
        assert_eq!((a.first_token, a.first_token_outside), (None, None));
    }

    #[test]
    fn a_redispatched_sample_never_reports_a_second_first_token() {
        let mut a: LaneCore<u64, ()> = LaneCore::generative(2, 16);
        a.handle_submission(pending(4), (), 4, Nanos(0)).unwrap();
        let slot = a.poll_transmit().unwrap().0.slot;
        assert_eq!(first_tokens_of(&mut a, &DataHeader::first_token(slot, 4, 4, 0), &[1, 0, 0, 0]).unwrap().len(), 1);
        let moved = a.give_up();
        assert_eq!(moved.iter().map(|p| (p.token, p.first_reported)).collect::<Vec<_>>(), vec![(4, true)]);
        let mut b: LaneCore<u64, ()> = LaneCore::generative(2, 16);
        b.handle_submission(moved.into_iter().next().unwrap(), (), 4, Nanos(2)).unwrap();
        let slot = b.poll_transmit().unwrap().0.slot;
        assert_eq!(first_tokens_of(&mut b, &DataHeader::first_token(slot, 4, 4, 0), &[1, 0, 0, 0]).unwrap(), vec![]);
        let fin = DataHeader::response(slot, 4, 8, 0);
        assert_eq!(first_tokens_of(&mut b, &fin, &[1, 0, 0, 0, 2, 0, 0, 0]).unwrap(), vec![]);
        assert_eq!(b.completions().count(), 1);
    }
}

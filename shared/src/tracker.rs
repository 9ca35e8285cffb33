//! The frontend's `TransactionTracker`: one per data connection, owned by its `ConnectionActor`,
//! so it needs no lock. It is a ring of slots: a slot is taken when a request is sent and freed
//! only when that request's response has come back (or the transaction is cancelled), as in
//! NVIDIA's design. Free slots are reused in FIFO order, so consecutive requests land in adjacent
//! slots on the accelerator (which lets it gather adjacent slots with one copy).
//!
//! Sans-IO: `handle_*` inputs, queries for outputs, time passed in as `now`.

use crate::time::Nanos;

/// Errors of the tracker: every one of them means the peer sent something it must not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// No slot is free (callers check credits first, so this is a caller bug).
    #[error("all {slots} slots are in flight")]
    Full {
        /// The ring's size.
        slots: u32,
    },
    /// A response names a slot outside the ring.
    #[error("response for slot {slot}, but the ring has {slots} slots")]
    SlotOutOfRange {
        /// The slot named.
        slot: u32,
        /// The ring's size.
        slots: u32,
    },
    /// A response names a slot with no request in flight (a duplicate or a stray response).
    #[error("response for slot {slot}, which has no request in flight")]
    NotInFlight {
        /// The slot named.
        slot: u32,
    },
    /// A response's sample id does not match the request in its slot.
    #[error("response in slot {slot} carries sample id {got:#x}, but the slot holds {expected:#x}")]
    SampleMismatch {
        /// The slot.
        slot: u32,
        /// The id of the request in flight there.
        expected: u64,
        /// The id the response carried.
        got: u64,
    },
}

struct Entry<T> {
    payload: Option<T>,
    sample_id: u64,
    issued: Nanos,
}

/// A completed transaction.
#[derive(Debug)]
pub struct Completed<T> {
    /// What was stored with the request (e.g. LoadGen's response token).
    pub payload: T,
    /// The slot it used (now free).
    pub slot: u32,
    /// From submit to response.
    pub latency: Nanos,
}

/// A ring of in-flight transactions; see the module docs.
pub struct TransactionTracker<T> {
    entries: Box<[Entry<T>]>,
    free: Box<[u32]>,
    free_head: usize,
    free_len: usize,
}

impl<T> TransactionTracker<T> {
    /// A tracker with `slots` slots (at least 1).
    pub fn new(slots: u32) -> Self {
        let slots = slots.max(1);
        TransactionTracker {
            entries: (0..slots).map(|_| Entry { payload: None, sample_id: 0, issued: Nanos::ZERO }).collect(),
            free: (0..slots).collect(),
            free_head: 0,
            free_len: slots as usize,
        }
    }

    /// Slots in the ring.
    pub fn capacity(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Transactions in flight.
    pub fn in_flight(&self) -> u32 {
        (self.entries.len() - self.free_len) as u32
    }

    /// Free slots.
    pub fn free_slots(&self) -> u32 {
        self.free_len as u32
    }

    /// Takes a slot for a request with `sample_id`, storing `payload` until it completes.
    /// On `Full` the payload is handed back.
    pub fn handle_submit(&mut self, sample_id: u64, payload: T, now: Nanos) -> Result<u32, (TrackerError, T)> {
        if self.free_len == 0 {
            return Err((TrackerError::Full { slots: self.capacity() }, payload));
        }
        let slot = self.free[self.free_head];
        self.free_head = (self.free_head + 1) % self.free.len();
        self.free_len -= 1;
        let e = &mut self.entries[slot as usize];
        debug_assert!(e.payload.is_none());
        *e = Entry { payload: Some(payload), sample_id, issued: now };
        Ok(slot)
    }

    /// A response arrived for `slot` carrying `sample_id`: validates it and frees the slot.
    pub fn handle_response(&mut self, slot: u32, sample_id: u64, now: Nanos) -> Result<Completed<T>, TrackerError> {
        let slots = self.capacity();
        let e = self.entries.get_mut(slot as usize).ok_or(TrackerError::SlotOutOfRange { slot, slots })?;
        if e.payload.is_none() {
            return Err(TrackerError::NotInFlight { slot });
        }
        if e.sample_id != sample_id {
            return Err(TrackerError::SampleMismatch { slot, expected: e.sample_id, got: sample_id });
        }
        let payload = e.payload.take().expect("checked above");
        let latency = now.since(e.issued);
        self.release(slot);
        Ok(Completed { payload, slot, latency })
    }

    /// An intermediate answer (a generative sample's first token) arrived for `slot` carrying
    /// `sample_id`: validates it like a response, but the transaction stays in flight; returns
    /// what was stored with the request, to update.
    pub fn handle_progress(&mut self, slot: u32, sample_id: u64) -> Result<&mut T, TrackerError> {
        let slots = self.capacity();
        let e = self.entries.get_mut(slot as usize).ok_or(TrackerError::SlotOutOfRange { slot, slots })?;
        if e.sample_id != sample_id || e.payload.is_none() {
            return Err(match e.payload {
                None => TrackerError::NotInFlight { slot },
                Some(_) => TrackerError::SampleMismatch { slot, expected: e.sample_id, got: sample_id },
            });
        }
        Ok(e.payload.as_mut().expect("checked above"))
    }

    /// Cancels the transaction in `slot` (e.g. to re-dispatch it elsewhere) and frees the slot.
    pub fn cancel(&mut self, slot: u32) -> Option<(u64, T)> {
        let e = self.entries.get_mut(slot as usize)?;
        let payload = e.payload.take()?;
        let id = e.sample_id;
        self.release(slot);
        Some((id, payload))
    }

    /// Slots whose request has been in flight longer than `timeout` at `now`, oldest first.
    pub fn expired(&self, now: Nanos, timeout: Nanos) -> Vec<u32> {
        let mut v: Vec<(Nanos, u32)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.payload.is_some() && now.since(e.issued) > timeout)
            .map(|(i, e)| (e.issued, i as u32))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Cancels every transaction in flight and returns them (sample id, payload), oldest first.
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        let slots = self.expired(Nanos(u64::MAX), Nanos::ZERO);
        slots.into_iter().filter_map(|s| self.cancel(s)).collect()
    }

    fn release(&mut self, slot: u32) {
        let tail = (self.free_head + self.free_len) % self.free.len();
        self.free[tail] = slot;
        self.free_len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_validated_like_a_response_and_keeps_the_slot_busy() {
        let mut t = TransactionTracker::new(2);
        let slot = t.handle_submit(7, 'a', Nanos(0)).unwrap();
        assert_eq!(t.handle_progress(slot, 8).unwrap_err(), TrackerError::SampleMismatch { slot, expected: 7, got: 8 });
        assert_eq!(t.handle_progress(1, 7).unwrap_err(), TrackerError::NotInFlight { slot: 1 });
        assert_eq!(t.handle_progress(9, 7).unwrap_err(), TrackerError::SlotOutOfRange { slot: 9, slots: 2 });
        *t.handle_progress(slot, 7).unwrap() = 'b';
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.handle_response(slot, 7, Nanos(1)).unwrap().payload, 'b');
    }

    #[test]
    fn slots_are_taken_in_ring_order_and_freed_on_response() {
        let mut t = TransactionTracker::new(4);
        let slots: Vec<u32> = (0..4).map(|i| t.handle_submit(100 + i, i, Nanos(i)).unwrap()).collect();
        assert_eq!(slots, vec![0, 1, 2, 3]);
        assert_eq!(t.in_flight(), 4);
        let (err, back) = t.handle_submit(999, 9, Nanos(5)).unwrap_err();
        assert_eq!((err, back), (TrackerError::Full { slots: 4 }, 9));

        let done = t.handle_response(2, 102, Nanos(10)).unwrap();
        assert_eq!((done.payload, done.slot, done.latency), (2, 2, Nanos(8)));
        assert_eq!(t.free_slots(), 1);
        // The freed slot is the next one used.
        assert_eq!(t.handle_submit(200, 20, Nanos(11)).unwrap(), 2);
    }

    #[test]
    fn stray_duplicate_and_mismatched_responses_are_refused() {
        let mut t = TransactionTracker::new(2);
        let s = t.handle_submit(7, "a", Nanos(0)).unwrap();
        assert_eq!(t.handle_response(5, 7, Nanos(1)).unwrap_err(), TrackerError::SlotOutOfRange { slot: 5, slots: 2 });
        assert_eq!(t.handle_response(1, 7, Nanos(1)).unwrap_err(), TrackerError::NotInFlight { slot: 1 });
        assert_eq!(
            t.handle_response(s, 8, Nanos(1)).unwrap_err(),
            TrackerError::SampleMismatch { slot: s, expected: 7, got: 8 }
        );
        // A refused response leaves the real transaction in flight...
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.handle_response(s, 7, Nanos(2)).unwrap().payload, "a");
        // ...and a duplicate of the real one is refused once it completed.
        assert_eq!(t.handle_response(s, 7, Nanos(3)).unwrap_err(), TrackerError::NotInFlight { slot: s });
    }

    #[test]
    fn expiry_cancel_and_drain() {
        let mut t = TransactionTracker::new(8);
        for i in 0..5u64 {
            t.handle_submit(i, i, Nanos(i * 10)).unwrap();
        }
        assert_eq!(t.expired(Nanos(45), Nanos(20)), vec![0, 1, 2]);
        assert_eq!(t.cancel(1), Some((1, 1)));
        assert_eq!(t.cancel(1), None);
        let rest: Vec<u64> = t.drain().into_iter().map(|(id, _)| id).collect();
        assert_eq!(rest, vec![0, 2, 3, 4]);
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.free_slots(), 8);
    }

    #[test]
    fn many_rounds_keep_the_free_ring_consistent() {
        let mut t = TransactionTracker::new(64);
        let mut live = std::collections::VecDeque::new();
        let mut id = 0u64;
        for round in 0..10_000u64 {
            while t.free_slots() > 0 && live.len() < 50 {
                let s = t.handle_submit(id, id, Nanos(round)).unwrap();
                live.push_back((s, id));
                id += 1;
            }
            // Complete out of order: every third from the back, the rest from the front.
            let (s, i) = if round % 3 == 0 { live.pop_back().unwrap() } else { live.pop_front().unwrap() };
            assert_eq!(t.handle_response(s, i, Nanos(round)).unwrap().payload, i);
            assert_eq!(t.in_flight() as usize, live.len());
        }
    }
}

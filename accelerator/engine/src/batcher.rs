//! The dynamic batching policy (Triton's `max_batch_size` + `max_queue_delay_microseconds`), as
//! a sans-IO core: the worker feeds arrivals with `now` and asks for a batch when it is idle.
//!
//! A batch is ready when the run of compatible samples at the head of the queue reaches the
//! largest batch, when the oldest sample has waited the longest allowed delay, or when an
//! incompatible sample follows the run (it cannot grow any more). Samples leave in arrival order.

use std::collections::VecDeque;

use qdl_shared::time::Nanos;

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Largest batch.
    pub max_batch: usize,
    /// Longest the oldest sample waits for the batch to fill.
    pub max_queue_delay: Nanos,
    /// Most samples queued; arrivals beyond are refused.
    pub max_queue: usize,
}

/// A queue of samples waiting for a batch.
pub struct Batcher<T> {
    policy: BatchPolicy,
    queue: VecDeque<(T, Nanos)>,
}

impl<T> Batcher<T> {
    /// An empty batcher.
    pub fn new(policy: BatchPolicy) -> Batcher<T> {
        let policy = BatchPolicy { max_batch: policy.max_batch.max(1), max_queue: policy.max_queue.max(1), ..policy };
        Batcher { policy, queue: VecDeque::new() }
    }

    /// The policy in force.
    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A sample arrived at `now`. A full queue hands it back.
    pub fn handle_arrival(&mut self, item: T, now: Nanos) -> Result<(), T> {
        if self.queue.len() >= self.policy.max_queue {
            return Err(item);
        }
        self.queue.push_back((item, now));
        Ok(())
    }

    /// Length of the run at the head whose items are `compatible` with the head, capped at the
    /// largest batch, and whether the run is closed (an incompatible item follows it).
    fn head_run(&self, compatible: &impl Fn(&T, &T) -> bool) -> (usize, bool) {
        let Some((head, _)) = self.queue.front() else { return (0, false) };
        let mut n = 0;
        for (item, _) in self.queue.iter().take(self.policy.max_batch) {
            if !compatible(head, item) {
                return (n, true);
            }
            n += 1;
        }
        (n, false)
    }

    /// If a batch is ready at `now`, moves it into `out` (with each sample's arrival time) and
    /// returns true. `compatible` says whether two samples may share a batch.
    pub fn poll_batch(&mut self, now: Nanos, compatible: impl Fn(&T, &T) -> bool, out: &mut Vec<(T, Nanos)>) -> bool {
        let (run, closed) = self.head_run(&compatible);
        if run == 0 {
            return false;
        }
        let oldest = self.queue.front().expect("run > 0").1;
        let ready = run >= self.policy.max_batch || closed || now.since(oldest) >= self.policy.max_queue_delay;
        if !ready {
            return false;
        }
        out.extend(self.queue.drain(..run));
        true
    }

    /// When the head's delay expires (the next time a batch may become ready without arrivals).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.queue.front().map(|(_, at)| *at + self.policy.max_queue_delay)
    }

    /// Removes every queued sample (shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = (T, Nanos)> + '_ {
        self.queue.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max_batch: usize, delay_us: u64) -> BatchPolicy {
        BatchPolicy { max_batch, max_queue_delay: Nanos::from_micros(delay_us), max_queue: 100 }
    }

    fn any(_: &u32, _: &u32) -> bool {
        true
    }

    #[test]
    fn full_batch_goes_at_once() {
        let mut b = Batcher::new(policy(4, 1000));
        let mut out = Vec::new();
        for i in 0..3 {
            b.handle_arrival(i, Nanos(0)).unwrap();
        }
        assert!(!b.poll_batch(Nanos(10), any, &mut out));
        b.handle_arrival(3, Nanos(10)).unwrap();
        b.handle_arrival(4, Nanos(10)).unwrap();
        assert!(b.poll_batch(Nanos(10), any, &mut out));
        assert_eq!(out.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn partial_batch_goes_after_the_delay() {
        let mut b = Batcher::new(policy(8, 500));
        let mut out = Vec::new();
        b.handle_arrival(1, Nanos::from_micros(100)).unwrap();
        b.handle_arrival(2, Nanos::from_micros(300)).unwrap();
        assert_eq!(b.poll_timeout(), Some(Nanos::from_micros(600)));
        assert!(!b.poll_batch(Nanos::from_micros(599), any, &mut out));
        assert!(b.poll_batch(Nanos::from_micros(600), any, &mut out));
        assert_eq!(out.len(), 2);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn zero_delay_dispatches_whatever_is_queued() {
        let mut b = Batcher::new(policy(8, 0));
        let mut out = Vec::new();
        b.handle_arrival(1, Nanos(5)).unwrap();
        assert!(b.poll_batch(Nanos(5), any, &mut out));
    }

    #[test]
    fn incompatible_samples_never_share_a_batch() {
        let mut b = Batcher::new(policy(8, 1_000_000));
        let mut out = Vec::new();
        for x in [10, 11, 20, 21, 12] {
            b.handle_arrival(x, Nanos(0)).unwrap();
        }
        let same_decade = |a: &u32, b: &u32| a / 10 == b / 10;
        // The run 10,11 is closed by 20: it goes without waiting.
        assert!(b.poll_batch(Nanos(1), same_decade, &mut out));
        assert_eq!(out.drain(..).map(|x| x.0).collect::<Vec<_>>(), vec![10, 11]);
        assert!(b.poll_batch(Nanos(1), same_decade, &mut out));
        assert_eq!(out.drain(..).map(|x| x.0).collect::<Vec<_>>(), vec![20, 21]);
        // 12 is alone and open: it waits for its delay.
        assert!(!b.poll_batch(Nanos(1), same_decade, &mut out));
    }

    #[test]
    fn full_queue_refuses() {
        let mut b = Batcher::new(BatchPolicy { max_batch: 2, max_queue_delay: Nanos(0), max_queue: 2 });
        b.handle_arrival(1, Nanos(0)).unwrap();
        b.handle_arrival(2, Nanos(0)).unwrap();
        assert_eq!(b.handle_arrival(3, Nanos(0)), Err(3));
        assert_eq!(b.drain().count(), 2);
    }

    proptest! {
        /// Whatever the arrivals and poll times, every sample leaves exactly once, in order, in
        /// batches no larger than the limit, and none waits past its delay when polled.
        #[test]
        fn samples_leave_once_in_order(
            arrivals in proptest::collection::vec((0u64..50, 0u64..3), 1..200),
            max_batch in 1usize..16,
            delay in 0u64..100,
        ) {
            let mut b = Batcher::new(BatchPolicy { max_batch, max_queue_delay: Nanos(delay), max_queue: 1000 });
            let mut now = 0u64;
            let mut next = 0u32;
            let mut seen = Vec::new();
            let mut out = Vec::new();
            for (gap, poll) in arrivals {
                now += gap;
                b.handle_arrival(next, Nanos(now)).unwrap();
                next += 1;
                if poll == 0 {
                    continue;
                }
                while b.poll_batch(Nanos(now), any, &mut out) {
                    prop_assert!(out.len() <= max_batch);
                    seen.extend(out.drain(..).map(|x| x.0));
                }
                // Polled until nothing is ready: what remains is a partial batch within its delay.
                prop_assert!(b.len() < max_batch);
                if let Some((_, at)) = b.queue.front() {
                    prop_assert!(now - at.0 < delay);
                }
            }
            while b.poll_batch(Nanos(u64::MAX / 2), any, &mut out) {
                seen.extend(out.drain(..).map(|x| x.0));
            }
            prop_assert_eq!(seen, (0..next).collect::<Vec<_>>());
        }
    }
}

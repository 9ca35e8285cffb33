//! The accelerator's slot ring for one data connection: one contiguous, page-aligned allocation
//! of `slots × slot_bytes` (so it can be registered once as an RDMA memory region, and adjacent
//! slots form one contiguous range), plus a lease per slot.
//!
//! A [`SlotLease`] is the only way to touch a slot's bytes, and at most one lease per slot exists
//! at a time (an atomic flag per slot). The lease travels with the sample from the connection
//! through the batcher to the worker and back, and is dropped when the response has been queued:
//! "busy" in the protocol sense and "leased" are the same thing, so a request into a busy slot is
//! refused by [`SlotArena::try_lease`].

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Errors leasing or allocating slots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The slot index is outside the ring.
    #[error("slot {slot} is outside the ring of {slots} slots")]
    OutOfRange {
        /// The slot named.
        slot: u32,
        /// The ring's size.
        slots: u32,
    },
    /// The slot already holds a request whose response has not been sent.
    #[error("slot {slot} is still busy with an earlier request")]
    Busy {
        /// The slot named.
        slot: u32,
    },
    /// The ring could not be allocated.
    #[error("cannot allocate {bytes} bytes for {slots} slots")]
    Alloc {
        /// Bytes requested.
        bytes: u64,
        /// Slots requested.
        slots: u32,
    },
}

/// A connection's slot memory; see the module docs.
pub struct SlotArena {
    base: NonNull<u8>,
    len: usize,
    slots: u32,
    slot_bytes: usize,
    leased: Box<[AtomicBool]>,
}

// SAFETY: the arena owns its allocation; its bytes are only reached through `SlotLease`s, and at
// most one lease per slot exists at a time (enforced by the `leased` flags with Acquire/Release
// ordering), so no two threads ever access one slot's bytes concurrently.
unsafe impl Send for SlotArena {}
// SAFETY: see above; shared `&SlotArena` only exposes the lease operations and immutable metadata.
unsafe impl Sync for SlotArena {}

impl SlotArena {
    /// Allocates `slots` slots of `slot_bytes` bytes each as one anonymous mapping: page-aligned,
    /// zeroed lazily by the OS, so slots that are never used cost no resident memory.
    pub fn new(slots: u32, slot_bytes: usize) -> Result<Arc<SlotArena>, SlotError> {
        let err = SlotError::Alloc { bytes: (slots as u64).saturating_mul(slot_bytes as u64), slots };
        let len = (slots as usize)
            .checked_mul(slot_bytes)
            .filter(|&t| t > 0 && t <= isize::MAX as usize / 2)
            .ok_or(err.clone())?;
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err);
        }
        let base = NonNull::new(ptr as *mut u8).ok_or(err)?;
        Ok(Arc::new(SlotArena {
            base,
            len,
            slots,
            slot_bytes,
            leased: (0..slots).map(|_| AtomicBool::new(false)).collect(),
        }))
    }

    /// Slots in the ring.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// The whole region (for registering it with a NIC): base address and length.
    pub fn region(&self) -> (*mut u8, usize) {
        (self.base.as_ptr(), self.len)
    }

    /// Leases slot `slot`, failing if it is out of range or already leased.
    pub fn try_lease(self: &Arc<Self>, slot: u32) -> Result<SlotLease, SlotError> {
        let flag = self.leased.get(slot as usize).ok_or(SlotError::OutOfRange { slot, slots: self.slots })?;
        if flag.swap(true, Ordering::Acquire) {
            return Err(SlotError::Busy { slot });
        }
        Ok(SlotLease { arena: Arc::clone(self), slot })
    }

    /// Slots currently leased (for metrics; O(slots)).
    pub fn leased(&self) -> usize {
        self.leased.iter().filter(|f| f.load(Ordering::Relaxed)).count()
    }
}

impl Drop for SlotArena {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping made in `new`, unmapped exactly once, after the
        // last lease (each holds an `Arc` to the arena) is gone.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// Exclusive access to one slot's bytes until dropped; see the module docs.
pub struct SlotLease {
    arena: Arc<SlotArena>,
    slot: u32,
}

impl std::fmt::Debug for SlotLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotLease({})", self.slot)
    }
}

impl SlotLease {
    /// The slot's index.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The slot's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the slot lies inside the allocation (slot < slots, slots*slot_bytes = size), and
        // this lease is the only one for the slot, so nobody writes these bytes while `&self` lives.
        unsafe {
            std::slice::from_raw_parts(
                self.arena.base.as_ptr().add(self.slot as usize * self.arena.slot_bytes),
                self.arena.slot_bytes,
            )
        }
    }

    /// The slot's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only access through the lease.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.base.as_ptr().add(self.slot as usize * self.arena.slot_bytes),
                self.arena.slot_bytes,
            )
        }
    }

    /// If `leases` are consecutive slots of one arena, in order, the one contiguous range they
    /// cover: a batch gathered without copying slot by slot.
    pub fn contiguous<'a>(leases: impl IntoIterator<Item = &'a SlotLease>) -> Option<&'a [u8]> {
        let mut it = leases.into_iter();
        let first = it.next()?;
        let mut count = 1usize;
        for l in it {
            if !Arc::ptr_eq(&l.arena, &first.arena) || l.slot != first.slot + count as u32 {
                return None;
            }
            count += 1;
        }
        // SAFETY: the caller holds leases on every slot of the range (each consecutive and of the
        // same arena, checked above) for as long as the returned borrow lives, so no one writes it.
        Some(unsafe {
            std::slice::from_raw_parts(
                first.arena.base.as_ptr().add(first.slot as usize * first.arena.slot_bytes),
                count * first.arena.slot_bytes,
            )
        })
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.arena.leased[self.slot as usize].store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lease_per_slot() {
        let a = SlotArena::new(4, 16).unwrap();
        let mut l = a.try_lease(2).unwrap();
        assert_eq!(a.try_lease(2).unwrap_err(), SlotError::Busy { slot: 2 });
        assert_eq!(a.try_lease(4).unwrap_err(), SlotError::OutOfRange { slot: 4, slots: 4 });
        l.bytes_mut().fill(9);
        assert_eq!(a.leased(), 1);
        drop(l);
        let l = a.try_lease(2).unwrap();
        assert_eq!(l.bytes(), &[9u8; 16]);
    }

    #[test]
    fn adjacent_slots_are_one_range() {
        let a = SlotArena::new(8, 4).unwrap();
        let mut ls: Vec<SlotLease> = (3..6).map(|s| a.try_lease(s).unwrap()).collect();
        for l in &mut ls {
            let s = l.slot() as u8;
            l.bytes_mut().fill(s);
        }
        assert_eq!(SlotLease::contiguous(&ls).unwrap(), &[3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5]);
        let gap = [a.try_lease(0).unwrap(), a.try_lease(2).unwrap()];
        assert!(SlotLease::contiguous(&gap).is_none());
        let other = SlotArena::new(8, 4).unwrap();
        let mixed = [other.try_lease(6).unwrap(), a.try_lease(7).unwrap()];
        assert!(SlotLease::contiguous(&mixed).is_none());
        assert!(SlotLease::contiguous(std::iter::empty()).is_none());
    }

    #[test]
    fn impossible_sizes_are_errors_not_aborts() {
        assert!(matches!(SlotArena::new(u32::MAX, usize::MAX / 2), Err(SlotError::Alloc { .. })));
        assert!(matches!(SlotArena::new(0, 16), Err(SlotError::Alloc { .. })));
    }

    #[test]
    fn leases_cross_threads() {
        let a = SlotArena::new(2, 8).unwrap();
        let mut l = a.try_lease(0).unwrap();
        l.bytes_mut().copy_from_slice(b"abcdefgh");
        let h = std::thread::spawn(move || l.bytes().to_vec());
        assert_eq!(h.join().unwrap(), b"abcdefgh");
        assert!(a.try_lease(0).is_ok(), "the lease was released by the other thread");
    }
}

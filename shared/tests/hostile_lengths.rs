//! Hostile lengths inside control frames: a sequence, string or byte length that claims far more
//! than the frame holds must not make the decoder allocate it. A counting global allocator (this
//! test binary's own) records the largest single allocation made while parsing, on the parsing
//! thread only: the test harness and other tests allocate on their own threads meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use qdl_shared::wire::WireError;
use qdl_shared::wire::message::{MAX_CONTROL_FRAME, parse};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// The tests share the allocator's record: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    /// Set while this thread parses: only its allocations count.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn record(size: usize) {
    // `try_with`: the allocator may be called while this thread's locals are torn down.
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to the system allocator unchanged; the counter only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: the caller's contract for `realloc` is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// LEB128 varint, as postcard writes lengths.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Parses `buf` and returns the result and the largest allocation made meanwhile.
fn parse_measured(buf: &[u8]) -> (Result<usize, WireError>, usize) {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    LARGEST.store(0, Ordering::Relaxed);
    MEASURING.with(|m| m.set(true));
    let got = parse(buf).map(|(_, used)| used);
    MEASURING.with(|m| m.set(false));
    (got, LARGEST.load(Ordering::Relaxed))
}

#[test]
fn a_sequence_length_of_2_pow_32_does_not_allocate_gigabytes() {
    // The allocator does see the decoder's allocations: 1000 real entries take 16 kB.
    let mut body = vec![13, 1];
    varint(1000, &mut body);
    body.extend(std::iter::repeat_n([1u8, 1], 1000).flatten());
    let (got, largest) = parse_measured(&frame(&body));
    assert_eq!(got, Ok(4 + body.len()));
    assert!(largest >= 16 * 1000, "{largest}");

    // Stats (variant 13) {request 1, batch_sizes: declared 2^32 entries, two present}.
    let mut body = vec![13, 1];
    varint(1 << 32, &mut body);
    body.extend_from_slice(&[1, 3, 16, 0xac, 0x02]);
    let (got, largest) = parse_measured(&frame(&body));
    assert!(matches!(got, Err(WireError::Decode(_))), "{got:?}");
    assert!(largest < 4096, "the decoder allocated {largest} bytes for a 2^32-entry claim");

    // The same claim in a full 64 KiB frame of real entries: memory grows with the entries that
    // are there (each at least 2 bytes, 16 in memory), never with the claim.
    let mut body = vec![13, 1];
    varint(1 << 32, &mut body);
    while body.len() + 2 <= MAX_CONTROL_FRAME {
        body.extend_from_slice(&[1, 1]);
    }
    let (got, largest) = parse_measured(&frame(&body));
    assert!(matches!(got, Err(WireError::Decode(_))), "{got:?}");
    assert!(largest <= 16 * MAX_CONTROL_FRAME, "the decoder allocated {largest} bytes for a 64 KiB frame");
}

#[test]
fn string_and_nested_lengths_beyond_the_frame_are_refused_before_allocating() {
    // Hello (variant 0) whose node name claims 2^32 bytes.
    let mut body = vec![0];
    varint(1 << 32, &mut body);
    body.extend_from_slice(b"short");
    let (got, largest) = parse_measured(&frame(&body));
    assert!(matches!(got, Err(WireError::Decode(_))), "{got:?}");
    assert!(largest < 4096, "{largest} bytes allocated for a 2^32-byte name");

    // Configure (variant 2): workload name "w", inputs claiming 2^40 tensors.
    let mut body = vec![2, 1, b'w'];
    varint(1 << 40, &mut body);
    body.extend_from_slice(&[1, b'x', 5]);
    varint(1 << 32, &mut body); // that tensor's shape claims 2^32 dimensions
    body.push(2);
    let (got, largest) = parse_measured(&frame(&body));
    assert!(matches!(got, Err(WireError::Decode(_))), "{got:?}");
    assert!(largest < 4096, "{largest} bytes allocated for nested hostile lengths");
}

#[test]
fn the_frame_length_itself_is_checked_before_reading_on() {
    let mut buf = ((MAX_CONTROL_FRAME + 1) as u32).to_le_bytes().to_vec();
    buf.push(0);
    let (got, largest) = parse_measured(&buf);
    assert!(matches!(got, Err(WireError::TooLarge { .. })), "{got:?}");
    assert!(largest < 4096, "{largest}");
}

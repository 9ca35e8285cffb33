//! The RDMA transport on a real device (Soft-RoCE in CI's guest; any RDMA NIC elsewhere): an
//! initiator and a target on one device, connected to each other, move requests and responses
//! with every efficiency knob, and generative answers (a first token, then the response, into
//! one slot); a dead peer, a refused write and a malformed first token are clear errors.
//!
//! Without a device these tests say so and pass, unless `QDL_REQUIRE_RDMA=1` (set in CI's guest),
//! where a missing device fails them.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use qdl_shared::config::{CompletionMode, RdmaConfig};
use qdl_shared::slots::SlotArena;
use qdl_shared::transport::rdma::{InitiatorSetup, RdmaDevice, RdmaError, RdmaMetrics, RdmaTarget};
use qdl_shared::transport::{
    InitiatorTransport, Payload, PayloadSource, Request, TargetTransport, TransportError, TransportMetrics,
};
use qdl_shared::wire::data::{DataErrorCode, DataHeader, FrameKind};

fn device(cfg: &RdmaConfig) -> Option<Arc<RdmaDevice>> {
    let required = std::env::var("QDL_REQUIRE_RDMA").is_ok_and(|v| v == "1");
    match RdmaDevice::open(cfg) {
        Ok(d) => Some(d),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                matches!(e, RdmaError::Unavailable(_) | RdmaError::NoDevice) && msg.contains("transport = \"tcp\""),
                "not a clear 'unavailable' error: {msg}"
            );
            assert!(!required, "QDL_REQUIRE_RDMA=1 but: {msg}");
            eprintln!("skipped: {msg}");
            None
        }
    }
}

struct Samples(Vec<u8>);
impl PayloadSource for Samples {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What the target answers for an input: its length and a checksum, then the input's first bytes.
fn answer(input: &[u8], out: usize) -> Vec<u8> {
    let mut v = (input.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&input.iter().fold(0u32, |a, &b| a.wrapping_mul(31).wrapping_add(b as u32)).to_le_bytes());
    v.extend_from_slice(&input[..input.len().min(out.saturating_sub(8))]);
    v.truncate(out);
    v
}

struct Pair {
    init: Box<dyn InitiatorTransport>,
    target: RdmaTarget,
}

fn connect(dev: &Arc<RdmaDevice>, slots: u32, input: u32, output: u32) -> Pair {
    let setup = InitiatorSetup::new(dev, slots, input, output, RdmaMetrics::default()).unwrap();
    let arena = SlotArena::new(slots, input as usize).unwrap();
    let (target, ep) =
        RdmaTarget::accept(dev, arena, output, &setup.endpoint(), RdmaMetrics::default(), TransportMetrics::default())
            .unwrap();
    let init = setup.connect(&ep, TransportMetrics::default()).unwrap();
    Pair { init: Box::new(init), target }
}

/// Sends `count` samples of `input` bytes through the pair, at most `slots` in flight, the target
/// answering each; checks every answer. Returns the number of responses.
async fn exchange(p: &mut Pair, slots: u32, input: usize, output: usize, count: usize) -> usize {
    let samples = Arc::new(Samples((0..input * 64).map(|i| (i * 7 + i / 251) as u8).collect()));
    let src: Arc<dyn PayloadSource> = samples.clone();
    let mut free: Vec<u32> = (0..slots).rev().collect();
    let (mut sent, mut got) = (0usize, 0usize);
    let mut expected: Vec<Option<Vec<u8>>> = vec![None; slots as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    poll_fn(|cx| {
        assert!(Instant::now() < deadline, "timed out: sent {sent}, got {got}");
        while sent < count {
            let Some(slot) = free.pop() else { break };
            let k = sent % 64;
            let payload = Payload::new(src.clone(), k * input, input).unwrap();
            expected[slot as usize] = Some(answer(payload.as_slice(), output));
            p.init.push_request(DataHeader::request(slot, 1000 + sent as u64, input as u32, k as u32), payload);
            sent += 1;
        }
        if let Poll::Ready(r) = p.init.poll_flush(cx) {
            r.unwrap();
        }
        let mut reqs: Vec<Request> = Vec::new();
        if let Poll::Ready(r) = p.target.poll_requests(cx, &mut |r| {
            reqs.push(r);
            Ok(())
        }) {
            r.unwrap();
        }
        for r in reqs {
            assert_eq!(r.header.len as usize, input);
            let out = answer(&r.slot.bytes()[..input], output);
            p.target.push_response(DataHeader::response(r.header.slot, 0, out.len() as u32, 5), &out);
        }
        if let Poll::Ready(r) = p.target.poll_flush(cx) {
            r.unwrap();
        }
        if let Poll::Ready(r) = p.init.poll_responses(cx, &mut |h, out| {
            assert_eq!(h.kind, FrameKind::Response);
            assert_eq!(h.aux, 5, "the response header travels intact");
            let want = expected[h.slot as usize].take().expect("one response per request");
            assert_eq!(out, &want[..], "output of slot {}", h.slot);
            free.push(h.slot);
            got += 1;
            Ok(())
        }) {
            r.unwrap();
        }
        if got == count {
            return Poll::Ready(());
        }
        // Both ends are polled by this one task: keep it running.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    got
}

/// How the target answers a generative request (chosen per sample, in turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The first token and the response pushed before one flush (the race: both writes queued
    /// at once, the response landing before the first token's completion is read).
    Together,
    /// The first token flushed, the response pushed on the next round.
    Apart,
    /// Only the response (the first token ended the sequence).
    ResponseOnly,
    /// The first token, then an error frame (the backend failed mid-sequence).
    FirstThenError,
}

const ANSWERS: [Answer; 4] = [Answer::Together, Answer::Apart, Answer::ResponseOnly, Answer::FirstThenError];

/// The synthetic output of a prompt: 1 to `max_tokens` int32 tokens, a function of the prompt.
fn tokens_of(prompt: &[u8], max_tokens: usize) -> Vec<u8> {
    let mut h = prompt.iter().fold(0x9E37_79B9u32, |a, &b| a.wrapping_mul(31).wrapping_add(b as u32));
    let n = 1 + h as usize % max_tokens;
    (0..n)
        .flat_map(|_| {
            h = h.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            h.to_le_bytes()
        })
        .collect()
}

/// What the initiator must deliver for the request in a slot.
struct Expected {
    sample_id: u64,
    answer: Answer,
    output: Vec<u8>,
    got_first: bool,
}

/// A generative-shaped session: `count` requests of their true length (a multiple of 4, up to
/// `input` bytes), at most `slots` in flight, each answered as [`ANSWERS`] says in turn; checks
/// that the initiator delivers, per sample, the first token (once, with its bytes) before the
/// response or error, with the right sample id and bytes. Returns (first tokens, final answers).
async fn generate(p: &mut Pair, slots: u32, input: usize, output: usize, count: usize) -> (usize, usize) {
    let samples = Arc::new(Samples((0..input * 64).map(|i| (i * 13 + i / 97) as u8).collect()));
    let src: Arc<dyn PayloadSource> = samples.clone();
    let mut free: Vec<u32> = (0..slots).rev().collect();
    let (mut sent, mut firsts, mut finals) = (0usize, 0usize, 0usize);
    let mut expected: Vec<Option<Expected>> = (0..slots).map(|_| None).collect();
    // The answer of each slot's request, as the target sees it (it learns only the slot).
    let mut answer_of: Vec<Answer> = vec![Answer::Together; slots as usize];
    let mut later: Vec<(Request, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let max_tokens = output / 4;
    poll_fn(|cx| {
        assert!(Instant::now() < deadline, "timed out: sent {sent}, first tokens {firsts}, answers {finals}");
        while sent < count {
            let Some(slot) = free.pop() else { break };
            let k = sent % 64;
            let len = 4 * (1 + (sent * 7) % (input / 4));
            let payload = Payload::new(src.clone(), k * input, len).unwrap();
            let answer = ANSWERS[sent % ANSWERS.len()];
            let sample_id = 5000 + sent as u64;
            expected[slot as usize] = Some(Expected {
                sample_id,
                answer,
                output: tokens_of(payload.as_slice(), max_tokens),
                got_first: false,
            });
            answer_of[slot as usize] = answer;
            p.init.push_request(DataHeader::request(slot, sample_id, len as u32, k as u32), payload);
            sent += 1;
        }
        if let Poll::Ready(r) = p.init.poll_flush(cx) {
            r.unwrap();
        }
        // Responses whose first token went out in an earlier flush.
        for (r, out) in later.drain(..) {
            p.target.push_response(DataHeader::response(r.header.slot, 0, out.len() as u32, 9), &out);
        }
        let mut reqs: Vec<Request> = Vec::new();
        if let Poll::Ready(r) = p.target.poll_requests(cx, &mut |r| {
            reqs.push(r);
            Ok(())
        }) {
            r.unwrap();
        }
        for r in reqs {
            let len = r.header.len as usize;
            assert!(len.is_multiple_of(4) && len <= input, "request of {len} bytes");
            let out = tokens_of(&r.slot.bytes()[..len], max_tokens);
            let slot = r.header.slot;
            let first = DataHeader::first_token(slot, 0, 4, 7);
            match answer_of[slot as usize] {
                Answer::Together => {
                    p.target.push_response(first, &out[..4]);
                    p.target.push_response(DataHeader::response(slot, 0, out.len() as u32, 9), &out);
                }
                Answer::Apart => {
                    p.target.push_response(first, &out[..4]);
                    later.push((r, out));
                }
                Answer::ResponseOnly => {
                    p.target.push_response(DataHeader::response(slot, 0, out.len() as u32, 9), &out);
                }
                Answer::FirstThenError => {
                    p.target.push_response(first, &out[..4]);
                    let msg = format!("backend failed on slot {slot}");
                    p.target.push_response(
                        DataHeader::error(slot, 0, DataErrorCode::BackendFailed, msg.len() as u32),
                        msg.as_bytes(),
                    );
                }
            }
        }
        if let Poll::Ready(r) = p.target.poll_flush(cx) {
            r.unwrap();
        }
        if let Poll::Ready(r) = p.init.poll_responses(cx, &mut |h, out| {
            let slot = h.slot as usize;
            let e = expected[slot]
                .as_mut()
                .unwrap_or_else(|| panic!("{:?} into slot {slot} with nothing expected", h.kind));
            assert_eq!(h.sample_id, e.sample_id, "{:?} of slot {slot}", h.kind);
            match h.kind {
                FrameKind::FirstToken => {
                    assert_ne!(e.answer, Answer::ResponseOnly, "a first token nobody sent, slot {slot}");
                    assert!(!e.got_first, "a second first token, slot {slot}");
                    assert_eq!((h.len, h.aux), (4, 7), "the first-token header travels intact");
                    assert_eq!(out, &e.output[..4], "first token of sample {}", e.sample_id);
                    e.got_first = true;
                    firsts += 1;
                    return Ok(());
                }
                FrameKind::Response => {
                    assert!(matches!(e.answer, Answer::Together | Answer::Apart | Answer::ResponseOnly));
                    assert_eq!(h.aux, 9, "the response header travels intact");
                    assert_eq!(out, &e.output[..], "output of sample {}", e.sample_id);
                }
                FrameKind::Error => {
                    assert_eq!(e.answer, Answer::FirstThenError);
                    assert_eq!(DataErrorCode::from_u32(h.aux), DataErrorCode::BackendFailed);
                    assert_eq!(out, format!("backend failed on slot {slot}").as_bytes());
                }
                FrameKind::Request => panic!("a request delivered as a response"),
            }
            assert_eq!(e.got_first, e.answer != Answer::ResponseOnly, "first token before the answer, slot {slot}");
            expected[slot] = None;
            free.push(h.slot);
            finals += 1;
            Ok(())
        }) {
            r.unwrap();
        }
        if finals == count {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    (firsts, finals)
}

/// Drives both ends, the target answering each request with `answer`, until the initiator fails;
/// returns the failure.
async fn error_with(p: &mut Pair, answer: &mut dyn FnMut(&mut RdmaTarget, Request)) -> TransportError {
    let deadline = Instant::now() + Duration::from_secs(60);
    poll_fn(|cx| {
        assert!(Instant::now() < deadline, "timed out waiting for the initiator to fail");
        if let Poll::Ready(Err(e)) = p.init.poll_flush(cx) {
            return Poll::Ready(e);
        }
        let mut reqs = Vec::new();
        if let Poll::Ready(r) = p.target.poll_requests(cx, &mut |r| {
            reqs.push(r);
            Ok(())
        }) {
            r.unwrap();
        }
        for r in reqs {
            answer(&mut p.target, r);
        }
        if let Poll::Ready(r) = p.target.poll_flush(cx) {
            r.unwrap();
        }
        if let Poll::Ready(Err(e)) = p.init.poll_responses(cx, &mut |_, _| Ok(())) {
            return Poll::Ready(e);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Flushes and reads until the initiator fails; returns the failure.
async fn first_error(init: &mut dyn InitiatorTransport) -> TransportError {
    poll_fn(|cx| {
        if let Poll::Ready(Err(e)) = init.poll_flush(cx) {
            return Poll::Ready(e);
        }
        match init.poll_responses(cx, &mut |_, _| Ok(())) {
            Poll::Ready(Err(e)) => Poll::Ready(e),
            _ => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    })
    .await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn requests_and_responses_with_every_knob() {
    let Some(_) = device(&RdmaConfig::default()) else { return };
    // (completion, inline, signal_every, max_chain, solicit)
    let knobs = [
        (CompletionMode::Event, 256, 64, 256, true),
        (CompletionMode::Poll, 0, 1, 1, false),
        (CompletionMode::Event, 0, 16, 4, false),
        (CompletionMode::Poll, 4096, 8, 64, true),
    ];
    for (completion, inline, every, chain, solicit) in knobs {
        let cfg = RdmaConfig {
            completion,
            inline_threshold: inline,
            signal_every: every,
            max_chain: chain,
            solicit,
            send_queue_depth: 64,
            ..Default::default()
        };
        let dev = device(&cfg).unwrap();
        // BERT-sized and ResNet-sized samples through the same build.
        for (slots, input, output) in [(32u32, 1536usize, 1536usize), (8, 150_528, 4), (16, 24, 64)] {
            let mut pair = connect(&dev, slots, input as u32, output as u32);
            let got = rt().block_on(exchange(&mut pair, slots, input, output, 300));
            assert_eq!(got, 300, "{cfg:?} {input}");
            let (i, t) = (pair.init.stats(), pair.target.stats());
            assert_eq!((i.frames_sent, t.frames_received, t.frames_sent, i.frames_received), (300, 300, 300, 300));
            assert_eq!(t.bytes_received, 300 * input as u64);
        }
    }
}

#[test]
fn a_peer_that_dies_is_a_clear_error() {
    let cfg = RdmaConfig { ack_timeout: 8, retry_count: 1, ..Default::default() };
    let Some(dev) = device(&cfg) else { return };
    let mut pair = connect(&dev, 8, 64, 8);
    // One runtime throughout: a connection's completion channel is registered with its event loop.
    let rt = rt();
    rt.block_on(exchange(&mut pair, 8, 64, 8, 20));
    let Pair { mut init, target } = pair;
    drop(target); // its queue pair is destroyed: writes to it are never acknowledged
    let samples: Arc<dyn PayloadSource> = Arc::new(Samples(vec![1; 64]));
    init.push_request(DataHeader::request(0, 1, 64, 0), Payload::new(samples, 0, 64).unwrap());
    let err = rt.block_on(first_error(init.as_mut()));
    let msg = err.to_string();
    assert!(matches!(err, TransportError::Rdma(RdmaError::Completion { .. })), "{msg}");
    assert!(msg.contains("retry") || msg.contains("flushed"), "{msg}");
}

#[test]
fn a_write_outside_the_peers_ring_is_a_remote_access_error() {
    let Some(dev) = device(&RdmaConfig::default()) else { return };
    let setup = InitiatorSetup::new(&dev, 8, 4096, 8, RdmaMetrics::default()).unwrap();
    let arena = SlotArena::new(4, 4096).unwrap();
    let (_target, mut ep) = RdmaTarget::accept(
        &dev,
        arena,
        8,
        &{
            let mut e = setup.endpoint();
            e.slots = 4;
            e
        },
        RdmaMetrics::default(),
        TransportMetrics::default(),
    )
    .map(|(t, e)| (Some(t), e))
    .unwrap_or_else(|e| panic!("{e}"));
    // Claim a larger ring than the accelerator registered: slot 6 lies outside its region.
    ep.slots = 8;
    let mut init = setup.connect(&ep, TransportMetrics::default()).unwrap();
    let samples: Arc<dyn PayloadSource> = Arc::new(Samples(vec![3; 4096]));
    init.push_request(DataHeader::request(6, 1, 4096, 0), Payload::new(samples, 0, 4096).unwrap());
    let err = rt().block_on(first_error(&mut init));
    assert!(err.to_string().contains("remote access error"), "{err}");
}

#[test]
fn ring_parameters_that_do_not_fit_the_session_are_refused() {
    let Some(dev) = device(&RdmaConfig::default()) else { return };
    let setup = InitiatorSetup::new(&dev, 8, 64, 8, RdmaMetrics::default()).unwrap();
    let mut ep = setup.endpoint();
    ep.slot_bytes = 1 << 30; // would make the accelerator allocate 8 GiB of response buffers
    let arena = SlotArena::new(8, 64).unwrap();
    let err = RdmaTarget::accept(&dev, arena, 8, &ep, RdmaMetrics::default(), TransportMetrics::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("does not match the session"), "{err}");
    // A ring without the first-token area (a header and the output only) is refused too.
    ep.slot_bytes = 24 + 8;
    let arena = SlotArena::new(8, 64).unwrap();
    let err = RdmaTarget::accept(&dev, arena, 8, &ep, RdmaMetrics::default(), TransportMetrics::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("first-token area"), "{err}");
}

#[test]
fn generative_first_tokens_then_responses() {
    let Some(_) = device(&RdmaConfig::default()) else { return };
    // (completion, inline, signal_every, max_chain): inline 0 makes the NIC read every source
    // buffer after the post, so a response overwriting its first token's buffer would show.
    let knobs =
        [(CompletionMode::Event, 256, 16, 64), (CompletionMode::Poll, 0, 1, 1), (CompletionMode::Event, 0, 8, 256)];
    for (completion, inline, every, chain) in knobs {
        let cfg = RdmaConfig {
            completion,
            inline_threshold: inline,
            signal_every: every,
            max_chain: chain,
            send_queue_depth: 64,
            ..Default::default()
        };
        let dev = device(&cfg).unwrap();
        // (slots, prompt bytes, output bytes): outputs below and above the error-message room.
        for (slots, input, output) in [(8u32, 512usize, 256usize), (4, 2048, 4096), (16, 64, 16)] {
            let mut pair = connect(&dev, slots, input as u32, output as u32);
            let count = 400;
            let (firsts, finals) = rt().block_on(generate(&mut pair, slots, input, output, count));
            assert_eq!(finals, count, "{cfg:?} {output}");
            assert_eq!(firsts, count / 4 * 3, "{cfg:?} {output}: every first token sent arrived");
            let (i, t) = (pair.init.stats(), pair.target.stats());
            assert_eq!((i.frames_sent, t.frames_received), (count as u64, count as u64));
            assert_eq!((t.frames_sent, i.frames_received), ((count + firsts) as u64, (count + firsts) as u64));
        }
    }
}

#[test]
fn a_malformed_first_token_closes_the_connection() {
    let Some(dev) = device(&RdmaConfig::default()) else { return };
    let rt = rt();
    let samples: Arc<dyn PayloadSource> = Arc::new(Samples(vec![5; 64]));
    let request = |slot| (DataHeader::request(slot, 1, 64, 0), Payload::new(samples.clone(), 0, 64).unwrap());

    // A first token of 8 bytes.
    let mut pair = connect(&dev, 4, 64, 64);
    let (h, pl) = request(0);
    pair.init.push_request(h, pl);
    let err = rt.block_on(error_with(&mut pair, &mut |t, r| {
        t.push_response(DataHeader::first_token(r.header.slot, 0, 8, 0), &[1; 8]);
    }));
    let msg = err.to_string();
    assert!(matches!(err, TransportError::Protocol(_)), "{msg}");
    assert!(msg.contains("first-token write into slot 0") && msg.contains("8 payload bytes"), "{msg}");

    // A first token for a slot with no request.
    let mut pair = connect(&dev, 4, 64, 64);
    let (h, pl) = request(0);
    pair.init.push_request(h, pl);
    let err = rt.block_on(error_with(&mut pair, &mut |t, _| {
        t.push_response(DataHeader::first_token(3, 0, 4, 0), &[1; 4]);
    }));
    assert!(err.to_string().contains("first token into slot 3 that has no request"), "{err}");

    // An accelerator that places the first-token area elsewhere (it was told of smaller slots):
    // the frontend's first-token area holds no first-token frame (kind 0), and the write is
    // refused rather than read as one.
    let setup = InitiatorSetup::new(&dev, 4, 64, 8, RdmaMetrics::default()).unwrap();
    let mut ep = setup.endpoint();
    ep.slot_bytes = 24 + 8 + 32;
    let arena = SlotArena::new(4, 64).unwrap();
    let (target, ep) =
        RdmaTarget::accept(&dev, arena, 8, &ep, RdmaMetrics::default(), TransportMetrics::default()).unwrap();
    let init = setup.connect(&ep, TransportMetrics::default()).unwrap();
    let mut pair = Pair { init: Box::new(init), target };
    let (h, pl) = request(0);
    pair.init.push_request(h, pl);
    let err = rt.block_on(error_with(&mut pair, &mut |t, r| {
        t.push_response(DataHeader::first_token(r.header.slot, 0, 4, 0), &[1; 4]);
    }));
    let msg = err.to_string();
    assert!(msg.contains("first-token write into slot 0 holds no frame"), "{msg}");
}

//! Entry points for fuzzing the decoders and the handshake with arbitrary bytes: the targets in
//! `shared/fuzz/` (cargo fuzz, libFuzzer) and the property tests below call the same functions.
//! Each checks what must hold for any input: no panic, a clear error or a value that encodes
//! back to the bytes it came from, buffers bounded by the protocol's limits.

use crate::auth::NONCE_LEN;
use crate::control::{Endpoint, Event, Heartbeat};
use crate::time::Nanos;
use crate::wire::attach::{ATTACH_LEN, Attach};
use crate::wire::data::{DATA_HEADER_LEN, DataHeader};
use crate::wire::message::{self, Limits, MAX_CONTROL_FRAME, SessionRequest};
use crate::wire::preamble::{PREAMBLE_LEN, Preamble};
use crate::workload::WorkloadSpec;

/// Control messages: a stream of frames is decoded until an error or "incomplete"; every
/// decoded message encodes back to exactly its frame.
pub fn control_decoder(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match message::parse(&data[at..]) {
            Ok((msg, used)) => {
                assert!(used > 4 && used <= 4 + MAX_CONTROL_FRAME, "a frame is bounded");
                let mut again = Vec::new();
                message::encode(&msg, &mut again).expect("a decoded message encodes");
                assert_eq!(again, &data[at..at + used], "decode then encode gives the same bytes");
                at += used;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
}

/// Data connections: preamble, attach block and data frames (headers with their payload
/// lengths checked against `max_len` before anything is read).
pub fn data_decoder(data: &[u8]) {
    let _ = Preamble::parse(data);
    if data.len() >= ATTACH_LEN
        && let Ok(a) = Attach::parse(&data[..ATTACH_LEN])
    {
        assert_eq!(Attach::parse(&a.encode()).ok(), Some(a));
    }
    let max_len = 1 << 16;
    let mut at = 0;
    while at < data.len() {
        match DataHeader::parse_frame(&data[at..], max_len) {
            Ok((h, payload)) => {
                assert!(h.len <= max_len && payload.len() == h.len as usize, "payload within the limit");
                assert_eq!(DataHeader::parse(&h.encode(), max_len).ok(), Some(h));
                at += DATA_HEADER_LEN + payload.len();
            }
            Err(_) => break,
        }
    }
}

/// The handshake: `data` is cut into chunks (its first byte sets the chunk size) and fed, with
/// time passing, to an accelerator-side endpoint and to a frontend-side one. Whatever arrives,
/// neither panics, each buffers at most one frame's worth of input, and a session never becomes
/// established without the peer's proof of the secret.
pub fn handshake(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let chunk = 1 + first as usize % 64;
    let limits = Limits {
        max_connections_per_session: 4,
        max_slots_per_connection: 64,
        max_sample_bytes: 1 << 20,
        max_output_bytes: 64,
    };
    let request = SessionRequest {
        workload: WorkloadSpec::bert(),
        connections: 1,
        slots_per_connection: 8,
        transport: Default::default(),
    };
    let secret = crate::auth::Secret::new(b"fuzzing secret 0123456789", "fuzz").expect("long enough");
    let mut server = Endpoint::server("acc", limits, Heartbeat::default(), Nanos::ZERO, [0x5e; NONCE_LEN])
        .with_secret(secret.clone());
    let mut client =
        Endpoint::client("fe", request, Heartbeat::default(), Nanos::ZERO, [0xc1; NONCE_LEN]).with_secret(secret);
    let mut t = Nanos::ZERO;
    for piece in rest.chunks(chunk) {
        t = t + Nanos::from_millis(piece[0] as u64);
        for ep in [&mut server, &mut client] {
            ep.handle_input(piece, t);
            if ep.poll_timeout().is_some_and(|d| d <= t) {
                ep.handle_timeout(t);
            }
            while let Some(ev) = ep.poll_event() {
                assert!(!matches!(ev, Event::Established(_)), "no session without the secret");
            }
            let _ = ep.poll_transmit();
        }
        assert!(server.buffered() <= PREAMBLE_LEN + 4 + MAX_CONTROL_FRAME);
        assert!(client.buffered() <= PREAMBLE_LEN + 4 + MAX_CONTROL_FRAME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::Message;
    use crate::wire::preamble::Role;
    use proptest::prelude::*;

    /// A valid stream to mutate: preamble, Hello, Auth, Configure, a heartbeat.
    fn valid_control() -> Vec<u8> {
        let mut v = Preamble::ours(Role::Control).encode().to_vec();
        for m in [
            Message::Hello { node: "fe".into(), nonce: [3; 32] },
            Message::Auth { proof: [4; 32] },
            Message::Configure(SessionRequest {
                workload: WorkloadSpec::resnet50(),
                connections: 2,
                slots_per_connection: 16,
                transport: Default::default(),
            }),
            Message::Heartbeat { seq: 1, sent_ns: 2 },
        ] {
            message::encode(&m, &mut v).unwrap();
        }
        v
    }

    /// Writes valid streams as the fuzz targets' seed corpus (target/fuzz-seeds/<target>/);
    /// run by scripts/fuzz.
    #[test]
    #[ignore = "writes the fuzz seed corpus; run by scripts/fuzz"]
    fn write_seed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-seeds");
        let control = valid_control();
        let mut data = crate::wire::attach::Attach { token: crate::wire::attach::SessionToken([9; 16]), connection: 1 }
            .encode()
            .to_vec();
        for (i, len) in [0u32, 5, 64].into_iter().enumerate() {
            data.extend_from_slice(&DataHeader::request(i as u32, i as u64, len, 0).encode());
            data.extend(std::iter::repeat_n(i as u8, len as usize));
        }
        let mut handshake = vec![7u8];
        handshake.extend_from_slice(&control);
        for (target, seed) in
            [("control_decoder", &control[PREAMBLE_LEN..]), ("data_decoder", &data[..]), ("handshake", &handshake[..])]
        {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("seed-valid"), seed).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn control_decoder_on_arbitrary_and_mutated_input(
            noise in proptest::collection::vec(any::<u8>(), 0..512),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            control_decoder(&noise);
            let mut v = valid_control();
            control_decoder(&v[PREAMBLE_LEN..]);
            for (at, x) in flips {
                let i = at % v.len();
                v[i] ^= x;
            }
            let cut = cut % (v.len() + 1);
            control_decoder(&v[PREAMBLE_LEN.min(cut)..cut]);
            handshake(&v[..cut]);
        }

        #[test]
        fn data_decoder_on_arbitrary_and_mutated_input(
            noise in proptest::collection::vec(any::<u8>(), 0..512),
            len in 0u32..300,
            flip in any::<(usize, u8)>(),
        ) {
            data_decoder(&noise);
            let mut v = DataHeader::request(1, 2, len, 3).encode().to_vec();
            v.extend(std::iter::repeat_n(7u8, len as usize));
            let i = flip.0 % v.len();
            v[i] ^= flip.1;
            data_decoder(&v);
        }

        #[test]
        fn handshake_on_arbitrary_input(noise in proptest::collection::vec(any::<u8>(), 0..1024)) {
            handshake(&noise);
        }
    }
}

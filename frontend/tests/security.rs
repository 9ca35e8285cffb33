//! Security on real processes: the control channel's shared-secret handshake (wrong secret, no
//! secret, a forged proof, a replayed handshake), session tokens on data connections (none, wrong,
//! stale), and a flood of half-open connections. After each, the node goes on serving a real
//! frontend.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use qdl_shared::control::{Endpoint, Event, Heartbeat};
use qdl_shared::time::Nanos;
use qdl_shared::wire::attach::{ATTACH_REPLY_LEN, Attach, AttachStatus, SessionToken};
use qdl_shared::wire::message::{self, DataTransport, ErrorCode, Message, SessionRequest};
use qdl_shared::wire::preamble::{PREAMBLE_LEN, Preamble, Role};
use qdl_shared::workload::WorkloadSpec;

fn addr(acc: &Acc) -> SocketAddr {
    acc.addr.parse().unwrap()
}

/// Reads control messages until one matches or the connection ends; the preamble first.
fn read_messages(s: &mut TcpStream) -> Vec<Message> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut out = Vec::new();
    let mut at = PREAMBLE_LEN.min(buf.len());
    while let Ok((m, used)) = message::parse(&buf[at..]) {
        out.push(m);
        at += used;
    }
    out
}

fn counter(acc: &Acc, line_start: &str) -> f64 {
    acc.scrape()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// A short real run that must pass check-accuracy: the node still serves its real peers.
fn still_serves(acc: &Acc, env_secret: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut cmd = std::process::Command::new(frontend_bin());
    if let Some(s) = env_secret {
        cmd.env("QDL_SECRET", s);
    }
    let o = cmd
        .args(["run", "-a", &acc.addr, "-w", "bert", "--mode", "accuracy", "--total-samples", "200"])
        .args(["--output-dir", out.to_str().unwrap(), "--metrics-listen", "", "--progress", "off"])
        .output()
        .unwrap();
    ok(&o);
    let v = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
    assert!(v.contains("200/200 samples correct"), "{v}");
}

#[test]
fn a_wrong_secret_or_a_forged_proof_is_refused_and_the_node_keeps_serving() {
    let acc = Acc::start(&["--backend", "echo"]);
    // A frontend with another secret: the accelerator cannot prove itself to it.
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(frontend_bin())
        .env("QDL_SECRET", "not the secret the cluster uses")
        .args(["run", "-a", &acc.addr, "-w", "bert", "--mode", "accuracy", "--total-samples", "8"])
        .args(["--output-dir", dir.path().to_str().unwrap(), "--metrics-listen", ""])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("authentication failed") && t.contains("shared secret"), "{t}");

    // A client that answers the challenge with a made-up proof: refused with Unauthorized,
    // before the accelerator has said its name or limits.
    let mut s = TcpStream::connect(addr(&acc)).unwrap();
    s.write_all(&Preamble::ours(Role::Control).encode()).unwrap();
    let mut hello = Vec::new();
    message::encode(&Message::Hello { node: "forger".into(), nonce: [1; 32] }, &mut hello).unwrap();
    message::encode(&Message::Auth { proof: [0x42; 32] }, &mut hello).unwrap();
    s.write_all(&hello).unwrap();
    let got = read_messages(&mut s);
    assert!(matches!(got.first(), Some(Message::Challenge { .. })), "{got:?}");
    assert!(
        matches!(got.get(1), Some(Message::Error { code: ErrorCode::Unauthorized, .. })),
        "the forged proof is refused: {got:?}"
    );
    assert!(!got.iter().any(|m| matches!(m, Message::Welcome { .. })), "no name or limits leaked: {got:?}");
    acc.wait_log("refusing control connection: authentication failed", Duration::from_secs(5));
    assert_eq!(refused(&acc, "unauthorized"), 1.0);
    still_serves(&acc, Some(TEST_SECRET));
}

/// A frontend's control endpoint with the cluster's secret, asking for a small BERT session.
fn client_endpoint(node: &str) -> Endpoint {
    let request = SessionRequest {
        workload: WorkloadSpec::bert(),
        connections: 1,
        slots_per_connection: 8,
        transport: DataTransport::Tcp,
    };
    Endpoint::client(node, request, Heartbeat::default(), Nanos::now(), qdl_shared::auth::nonce())
        .with_secret(test_secret())
}

#[test]
fn a_replayed_handshake_is_refused() {
    let acc = Acc::start(&["--backend", "echo"]);
    // A real frontend's handshake, recorded on the wire...
    let mut ep = client_endpoint("recorded");
    let mut s = TcpStream::connect(addr(&acc)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sent = Vec::new();
    let mut buf = [0u8; 4096];
    let established = loop {
        if let Some(b) = ep.poll_transmit() {
            s.write_all(&b).unwrap();
            sent.extend_from_slice(&b);
        }
        if let Some(ev) = ep.poll_event() {
            match ev {
                Event::Established(_) => break true,
                Event::Failed(e) => panic!("{e}"),
                _ => continue,
            }
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        ep.handle_input(&buf[..n], Nanos::now());
    };
    assert!(established);
    drop(s);
    // ...replayed byte for byte on a new connection: the accelerator's challenge is new, so the
    // recorded proof is worthless.
    let mut r = TcpStream::connect(addr(&acc)).unwrap();
    r.write_all(&sent).unwrap();
    let got = read_messages(&mut r);
    assert!(
        matches!(got.get(1), Some(Message::Error { code: ErrorCode::Unauthorized, .. })),
        "replay refused: {got:?}"
    );
    assert!(!got.iter().any(|m| matches!(m, Message::Configured(_))), "no session for a replay: {got:?}");
    still_serves(&acc, Some(TEST_SECRET));
}

#[test]
fn no_secret_is_a_start_up_error_unless_the_lab_says_so() {
    let o = std::process::Command::new(accelerator_bin())
        .env_remove("QDL_SECRET")
        .env_remove("QDL_SECRET_FILE")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "a missing secret is bad configuration: {}", text(&o));
    assert!(text(&o).contains("no shared secret") && text(&o).contains("QDL_SECRET_FILE"), "{}", text(&o));
    // A secret that is too short is refused too.
    let o = std::process::Command::new(accelerator_bin())
        .env("QDL_SECRET", "short")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .output()
        .unwrap();
    assert!(text(&o).contains("at least 16 are needed"), "{}", text(&o));
    // QDL_SECRET set but empty (compose's `${QDL_SECRET:-}` on a host that never exported it)
    // is refused at start-up, naming the variable, even where no secret is required.
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.toml");
    std::fs::write(&open, "[auth]\nrequired = false\n").unwrap();
    for config in [None, Some(&open)] {
        let mut cmd = std::process::Command::new(accelerator_bin());
        cmd.env("QDL_SECRET", "").env_remove("QDL_SECRET_FILE");
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", ""]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        // A node that starts anyway would serve forever: it gets 20 s to refuse.
        let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{config:?}: the accelerator started with an empty QDL_SECRET");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        assert!(!o.status.success() && text(&o).contains("QDL_SECRET is set but empty"), "{config:?}: {}", text(&o));
    }

    // [auth] required = false: an unauthenticated node, which says so and serves only nodes
    // without a secret.
    let cfg = open;
    let mut cmd = std::process::Command::new(accelerator_bin());
    cmd.env_remove("QDL_SECRET").args(["--config", cfg.to_str().unwrap(), "--backend", "echo"]);
    let acc = Acc::spawn(cmd);
    assert!(acc.log().contains("NOT authenticated"), "{}", acc.log());
    let out = dir.path().join("with-secret");
    let o = run(&[&acc], &out, &["-w", "bert", "--mode", "accuracy", "--total-samples", "8"]);
    assert!(!o.status.success() && text(&o).contains("authentication failed"), "{}", text(&o));
    let fe = dir.path().join("fe.toml");
    std::fs::write(&fe, "[auth]\nrequired = false\n").unwrap();
    let out = dir.path().join("open");
    let o = std::process::Command::new(frontend_bin())
        .env_remove("QDL_SECRET")
        .args(["run", "--config", fe.to_str().unwrap(), "-a", &acc.addr, "-w", "bert", "--mode", "accuracy"])
        .args(["--total-samples", "8", "--output-dir", out.to_str().unwrap(), "--metrics-listen", ""])
        .output()
        .unwrap();
    ok(&o);
}

#[test]
fn data_connections_need_a_live_session_token() {
    let acc = Acc::start(&["--backend", "echo"]);
    let attach = |token: SessionToken| -> Option<AttachStatus> {
        let mut s = TcpStream::connect(addr(&acc)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&Preamble::ours(Role::Data).encode()).unwrap();
        s.write_all(&Attach { token, connection: 0 }.encode()).unwrap();
        let mut reply = [0u8; PREAMBLE_LEN + ATTACH_REPLY_LEN];
        s.read_exact(&mut reply).ok()?;
        AttachStatus::parse(&reply[PREAMBLE_LEN..]).ok()
    };
    // No session at all, a made-up token: refused before any slot is allocated.
    assert!(matches!(attach(SessionToken([7; 16])), Some(AttachStatus::UnknownSession)), "made-up token");
    // A token that was real, once its session has ended (stale): refused the same way.
    let mut ep = client_endpoint("stale");
    let mut s = TcpStream::connect(addr(&acc)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let token = loop {
        if let Some(b) = ep.poll_transmit() {
            s.write_all(&b).unwrap();
        }
        if let Some(Event::Established(g)) = ep.poll_event() {
            break g.token;
        }
        let n = s.read(&mut buf).unwrap();
        ep.handle_input(&buf[..n], Nanos::now());
    };
    ep.close();
    if let Some(b) = ep.poll_transmit() {
        s.write_all(&b).unwrap();
    }
    drop(s);
    let end = Instant::now() + Duration::from_secs(5);
    while !acc.log().contains("frontend said goodbye") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(attach(token), Some(AttachStatus::UnknownSession)), "stale token");
    assert!(refused(&acc, "attach") >= 2.0);
    still_serves(&acc, Some(TEST_SECRET));
}

/// A TCP connection to `target` from the loopback address `source` (127.0.0.2, ...).
fn connect_from(source: &str, target: SocketAddr) -> Option<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&format!("{source}:0").parse::<SocketAddr>().ok()?.into()).ok()?;
    sock.connect_timeout(&target.into(), Duration::from_secs(5)).ok()?;
    Some(sock.into())
}

fn warn_lines(acc: &Acc) -> usize {
    acc.log().lines().filter(|l| l.contains("WARN")).count()
}

fn refused(acc: &Acc, reason: &str) -> f64 {
    counter(acc, &format!("qdl_accelerator_connections_refused_total{{reason=\"{reason}\"}}"))
}

#[test]
fn a_flood_of_half_open_connections_is_bounded_and_real_peers_still_run() {
    let config = "[limits]\nmax_connections_per_peer = 16\nmax_pending_per_peer = 16\nmax_pending_handshakes = 64\n\
                  preamble_timeout_ms = 6000\nhandshake_timeout_ms = 8000\n";
    let acc = Acc::start_with_config(Some(config), &["--backend", "echo"]);
    let target = addr(&acc);
    // 200 connections from another local address that say nothing (or half a preamble).
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|i| {
            let mut s = connect_from("127.0.0.2", target)?;
            if i % 2 == 0 {
                let _ = s.write_all(&Preamble::ours(Role::Control).encode()[..3]);
            }
            Some(s)
        })
        .collect();
    assert_eq!(flood.len(), 200, "the flood connected (the kernel accepts before the node decides)");
    // All but 16 are refused at once, counted, and not logged one by one.
    let end = Instant::now() + Duration::from_secs(5);
    while refused(&acc, "peer-limit") < 184.0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(refused(&acc, "peer-limit"), 184.0);
    // Meanwhile a real frontend (another address) runs and passes.
    still_serves(&acc, Some(TEST_SECRET));
    // The 16 admitted ones are closed once their preamble time (6 s: long enough that none
    // expires while the flood is still being accepted on a loaded machine) is up.
    let end = Instant::now() + Duration::from_secs(20);
    let mut closed = 0;
    for mut s in flood {
        s.set_read_timeout(Some(end.saturating_duration_since(Instant::now()).max(Duration::from_millis(10)))).unwrap();
        let mut b = [0u8; 64];
        loop {
            match s.read(&mut b) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue, // a preamble answer before the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    assert_eq!(closed, 200, "every flood connection was closed by the node");
    assert_eq!(refused(&acc, "preamble-timeout"), 16.0, "{}", acc.scrape());
    assert!(warn_lines(&acc) < 5, "no log flood:\n{}", acc.log());
}

#[test]
fn a_flood_from_several_addresses_within_the_limits_cannot_keep_a_frontend_out() {
    // Fewer pending places than the flood holds (5 × max_pending_per_peer = 80 > 64), so the
    // gate's eviction is what lets the frontend in.
    let config = "[limits]\nmax_pending_handshakes = 64\n";
    let acc = Acc::start_with_config(Some(config), &["--backend", "echo"]);
    let target = addr(&acc);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Half-open connections from 127.0.0.2..6, 60 from each (under max_connections_per_peer),
    // opened anew every 500 ms (the preamble deadline would clear a flood that stood still)
    // until the frontend is done: at most 20 rounds (6000 connections).
    let half_open = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut opened = 0;
            for _round in 0..20 {
                let mut held = Vec::new();
                for i in 0..300 {
                    if let Some(mut s) = connect_from(&format!("127.0.0.{}", 2 + i % 5), target) {
                        if i % 2 == 0 {
                            let _ = s.write_all(b"QDL");
                        }
                        held.push(s);
                    }
                }
                opened += held.len();
                std::thread::sleep(Duration::from_millis(500));
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
            opened
        })
    };
    // 200 garbage connections from 127.0.0.7..8, one after another.
    let garbage = std::thread::spawn(move || {
        let mut sent = 0;
        for i in 0..200 {
            let Some(mut s) = connect_from(&format!("127.0.0.{}", 7 + i % 2), target) else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_ok() {
                sent += 1;
            }
            let mut b = [0u8; 64];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(300));
    // The frontend connects (control and data connections) and completes an accuracy run.
    still_serves(&acc, Some(TEST_SECRET));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = half_open.join().unwrap();
    assert_eq!(garbage.join().unwrap(), 200);
    assert!(opened >= 300, "{opened}");
    let end = Instant::now() + Duration::from_secs(5);
    while refused(&acc, "bad-preamble") < 200.0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = acc.scrape();
    // (A garbage connection evicted before its bytes were read counts as evicted instead.)
    assert!(refused(&acc, "bad-preamble") >= 190.0, "{metrics}");
    assert!(refused(&acc, "evicted") > 0.0, "the gate made room by eviction: {metrics}");
    // Counted by reason, logged in a few lines: one per reason, then summaries.
    let warns = warn_lines(&acc);
    eprintln!(
        "flood: {opened} half-open + 200 garbage connections, {warns} WARN lines:\n{}",
        acc.log().lines().filter(|l| l.contains("WARN")).collect::<Vec<_>>().join("\n")
    );
    assert!(warns <= 10, "no log flood:\n{}", acc.log());
}

#[test]
fn a_refused_frontend_is_told_why() {
    // Long deadlines: the two silent connections below must hold their places through the run.
    let config = "[limits]\nmax_connections_per_peer = 2\npreamble_timeout_ms = 10000\nhandshake_timeout_ms = 10000\n";
    let acc = Acc::start_with_config(Some(config), &["--backend", "echo"]);
    let target = addr(&acc);
    // Two silent connections from 127.0.0.1 fill its places; a qdl peer is told which limit.
    let _held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(target).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[&acc], dir.path(), &["-w", "bert", "--mode", "accuracy", "--total-samples", "8"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("too many connections from 127.0.0.1: limit 2 (limits.max_connections_per_peer)"), "{t}");
    // A data connection is answered with its own status; garbage is closed without a word.
    let mut s = TcpStream::connect(target).unwrap();
    s.write_all(&Preamble::ours(Role::Data).encode()).unwrap();
    s.write_all(&Attach { token: SessionToken([1; 16]), connection: 0 }.encode()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = [0u8; PREAMBLE_LEN + ATTACH_REPLY_LEN];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(AttachStatus::parse(&reply[PREAMBLE_LEN..]), Ok(AttachStatus::LimitReached));
    let mut g = TcpStream::connect(target).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = Vec::new();
    let _ = g.read_to_end(&mut b);
    assert!(b.is_empty(), "{b:?}");
    assert!(refused(&acc, "peer-limit") >= 3.0, "{}", acc.scrape());
}

/// A CA and an accelerator certificate for localhost / 127.0.0.1, in `dir`: (ca, cert, key).
fn tls_files(dir: &std::path::Path, tag: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let p = |n: &str| dir.join(format!("{tag}-{n}.pem"));
    std::fs::write(p("ca"), ca.pem()).unwrap();
    std::fs::write(p("cert"), leaf.pem()).unwrap();
    std::fs::write(p("key"), key.serialize_pem()).unwrap();
    (p("ca"), p("cert"), p("key"))
}

#[test]
fn the_control_channel_can_run_in_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path(), "good");
    let (other_ca, _, _) = tls_files(dir.path(), "other");
    let acc_cfg = format!("[tls]\nenabled = true\ncert_file = {:?}\nkey_file = {:?}\n", cert.display(), key.display());
    let acc = Acc::start_with_config(Some(&acc_cfg), &["--backend", "echo"]);
    assert!(acc.log().contains("control channel in TLS"), "{}", acc.log());
    let fe = |name: &str, body: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let good = fe("good.toml", format!("[tls]\nenabled = true\nca_file = {:?}\n", ca.display()));
    let wrong_ca = fe("wrong.toml", format!("[tls]\nenabled = true\nca_file = {:?}\n", other_ca.display()));
    let args = |cfg: &std::path::Path| {
        vec![
            "--config".to_string(),
            cfg.display().to_string(),
            "-w".into(),
            "bert".into(),
            "--mode".into(),
            "accuracy".into(),
            "--total-samples".into(),
            "200".into(),
        ]
    };
    // The right CA: a normal run, inside TLS.
    let out = dir.path().join("tls-run");
    let a = args(&good);
    let o = run(&[&acc], &out, &a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&o);
    let v = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
    assert!(v.contains("200/200 samples correct"), "{v}");
    // A certificate from another CA: refused by the frontend.
    let a = args(&wrong_ca);
    let o = run(&[&acc], &dir.path().join("wrong"), &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success() && text(&o).contains("TLS handshake failed"), "{}", text(&o));
    // A frontend without TLS: told that the accelerator requires it.
    let o = run(&[&acc], &dir.path().join("plain"), &["-w", "bert", "--mode", "accuracy", "--total-samples", "8"]);
    assert!(!o.status.success() && text(&o).contains("requires TLS"), "{}", text(&o));
    // A TLS frontend against an accelerator without TLS: a clear failure too.
    let plain = Acc::start(&["--backend", "echo"]);
    let a = args(&good);
    let o = run(&[&plain], &dir.path().join("mismatch"), &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success() && text(&o).contains("TLS handshake failed"), "{}", text(&o));
    // After the refusals the TLS accelerator still serves its real peers.
    let out = dir.path().join("tls-again");
    let a = args(&good);
    ok(&run(&[&acc], &out, &a.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(ok(&frontend(&["check-accuracy", out.to_str().unwrap()])).contains("200/200 samples correct"));
    assert!(refused(&acc, "tls") >= 2.0);
}

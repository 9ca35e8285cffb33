//! Bad peers and bad input: a protocol-version mismatch, malformed frames on either side,
//! duplicate accelerator names, an unreachable accelerator, invalid config. Each is refused with
//! a clear error; nothing crashes; the accelerator keeps serving its real peers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use qdl_shared::control::{Endpoint, Event, Heartbeat};
use qdl_shared::time::Nanos;
use qdl_shared::transport::tcp::connect_data;
use qdl_shared::wire::attach::{Attach, AttachStatus, SessionToken};
use qdl_shared::wire::data::{DATA_HEADER_LEN, DataHeader, FrameKind};
use qdl_shared::wire::message::{SessionGrant, SessionRequest};
use qdl_shared::wire::preamble::{PREAMBLE_LEN, Preamble, Role};
use qdl_shared::workload::{WorkloadSpec, reference_output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Drives a client control endpoint over `stream` until `stop` says so.
async fn drive(stream: &mut TcpStream, ep: &mut Endpoint, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(b) = ep.poll_transmit() {
            stream.write_all(&b).await.unwrap();
        }
        while let Some(ev) = ep.poll_event() {
            let done = stop(&ev);
            seen.push(ev);
            if done {
                return seen;
            }
        }
        let n =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.expect("control reply").unwrap();
        assert!(n > 0, "control connection closed; events so far: {seen:?}");
        ep.handle_input(&buf[..n], Nanos::now());
    }
}

async fn establish(addr: SocketAddr, spec: WorkloadSpec) -> (TcpStream, Endpoint, SessionGrant) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = SessionRequest { workload: spec, connections: 2, slots_per_connection: 8, transport: Default::default() };
    let mut ep = Endpoint::client("test", req, Heartbeat::default(), Nanos::now(), qdl_shared::auth::nonce())
        .with_secret(test_secret());
    let events = drive(&mut stream, &mut ep, |e| matches!(e, Event::Established(_) | Event::Failed(_))).await;
    match events.last() {
        Some(Event::Established(g)) => {
            let g = g.clone();
            (stream, ep, g)
        }
        other => panic!("no session: {other:?}"),
    }
}

#[test]
fn protocol_version_mismatch_is_refused_clearly_on_both_sides() {
    let mut acc = Acc::start(&["--backend", "echo"]);
    let addr: SocketAddr = acc.addr.parse().unwrap();
    rt().block_on(async {
        // A "frontend" of protocol v99: the accelerator answers with its own preamble and closes.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut pre = Preamble::ours(Role::Control).encode();
        pre[4] = 99;
        s.write_all(&pre).await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await.unwrap().unwrap();
        assert_eq!(back.len(), PREAMBLE_LEN, "only the accelerator's preamble, then close");
        assert_eq!(Preamble::parse(&back).unwrap().version, qdl_shared::wire::PROTOCOL_VERSION);
    });
    acc.wait_log("protocol version mismatch: the peer speaks v99", Duration::from_secs(5));

    // An "accelerator" of protocol v7: the frontend says so and exits non-zero.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (mut s, _) = fake.accept().unwrap();
        let mut p = Preamble::ours(Role::Control).encode();
        p[4] = 7;
        std::io::Write::write_all(&mut s, &p).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let dir = tempfile::tempdir().unwrap();
    let o = frontend(&[
        "run",
        "-a",
        &fake_addr,
        "--output-dir",
        dir.path().to_str().unwrap(),
        "--metrics-listen",
        "",
        "--progress",
        "off",
    ]);
    t.join().unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("protocol version mismatch") && t.contains("peer speaks v7"), "{t}");

    // The real accelerator is unharmed and still serves.
    assert!(acc.alive());
    let out = dir.path().join("after");
    ok(&run(&[&acc], &out, &["-w", "bert", "-m", "accuracy", "--total-samples", "20", "--expected-qps", "1000"]));
}

#[test]
fn malformed_data_frame_closes_only_that_connection() {
    let mut acc = Acc::start(&["--backend", "echo"]);
    let addr: SocketAddr = acc.addr.parse().unwrap();
    rt().block_on(async {
        let spec = WorkloadSpec::bert();
        let (mut control, mut ep, grant) = establish(addr, spec.clone()).await;
        assert_eq!(grant.connections, 2);

        // Data connection 0 sends garbage: the accelerator closes it.
        let mut bad =
            connect_data(addr, Attach { token: grant.token, connection: 0 }, Duration::from_secs(5)).await.unwrap();
        let mut frame = DataHeader::request(0, 1, spec.input_bytes() as u32, 0).encode();
        frame[4] = 9; // unknown kind
        bad.write_all(&frame).await.unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut sink)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the malformed connection is closed");

        // A request larger than the session's samples is refused the same way, before reading it.
        let mut big =
            connect_data(addr, Attach { token: grant.token, connection: 0 }, Duration::from_secs(5)).await.unwrap();
        big.write_all(&DataHeader::request(0, 1, 1 << 30, 0).encode()).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut sink)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))));

        // A wrong token never gets a connection, nor any buffer.
        let refused =
            connect_data(addr, Attach { token: SessionToken([7; 16]), connection: 1 }, Duration::from_secs(5)).await;
        assert!(
            matches!(refused, Err(qdl_shared::transport::TransportError::Refused(AttachStatus::UnknownSession))),
            "{refused:?}"
        );

        // Data connection 1 of the same session still works, byte for byte.
        let mut good =
            connect_data(addr, Attach { token: grant.token, connection: 1 }, Duration::from_secs(5)).await.unwrap();
        let input: Vec<u8> = (0..spec.input_bytes()).map(|i| (i % 199) as u8).collect();
        let mut req = DataHeader::request(5, 0xabc, input.len() as u32, 0).encode().to_vec();
        req.extend_from_slice(&input);
        good.write_all(&req).await.unwrap();
        let mut resp = vec![0u8; DATA_HEADER_LEN + 8];
        tokio::time::timeout(Duration::from_secs(5), good.read_exact(&mut resp)).await.unwrap().unwrap();
        let (h, out) = DataHeader::parse_frame(&resp, 8).unwrap();
        assert_eq!((h.kind, h.slot, h.sample_id), (FrameKind::Response, 5, 0xabc));
        let mut want = [0u8; 8];
        reference_output(spec.output_kind, &input, &mut want);
        assert_eq!(out, want);

        // And the control session answers.
        ep.query_name().unwrap();
        let ev = drive(&mut control, &mut ep, |e| matches!(e, Event::Name { .. })).await;
        assert!(matches!(ev.last(), Some(Event::Name { .. })));
    });
    acc.wait_log("unknown data frame kind 9", Duration::from_secs(5));
    acc.wait_log("exceeds the limit", Duration::from_secs(5));
    assert!(acc.alive());
}

/// A fake accelerator that speaks the control protocol correctly, accepts data connections,
/// then answers the first request with garbage.
async fn lying_accelerator(listener: TcpListener) {
    let spec_bytes;
    let (mut control, _) = listener.accept().await.unwrap();
    let mut pre = [0u8; PREAMBLE_LEN];
    control.read_exact(&mut pre).await.unwrap();
    let limits = qdl_shared::wire::message::Limits {
        max_connections_per_session: 1,
        max_slots_per_connection: 16,
        max_sample_bytes: 1 << 20,
        max_output_bytes: 64,
    };
    let mut ep =
        Endpoint::server_after_preamble("liar", limits, Heartbeat::default(), Nanos::now(), qdl_shared::auth::nonce())
            .with_secret(test_secret());
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(b) = ep.poll_transmit() {
            control.write_all(&b).await.unwrap();
        }
        let mut granted = false;
        while let Some(ev) = ep.poll_event() {
            match ev {
                Event::ConfigureRequested(req) => {
                    ep.grant(SessionGrant {
                        token: SessionToken([1; 16]),
                        connections: 1,
                        slots_per_connection: 16,
                        input_slot_bytes: req.workload.input_bytes() as u32,
                        output_slot_bytes: req.workload.output_bytes,
                        max_batch: 1,
                        backend: "liar".into(),
                        workers: 1,
                    })
                    .unwrap();
                    granted = true;
                }
                Event::RunState { request, state } => ep.ack_run_state(request, state).unwrap(),
                _ => {}
            }
        }
        if let Some(b) = ep.poll_transmit() {
            control.write_all(&b).await.unwrap();
        }
        if granted {
            spec_bytes = WorkloadSpec::bert().input_bytes();
            break;
        }
        let n = control.read(&mut buf).await.unwrap();
        ep.handle_input(&buf[..n], Nanos::now());
    }
    let (mut data, _) = listener.accept().await.unwrap();
    let mut attach = [0u8; PREAMBLE_LEN + 24];
    data.read_exact(&mut attach).await.unwrap();
    let mut reply = Preamble::ours(Role::Data).encode().to_vec();
    reply.extend_from_slice(&AttachStatus::Accepted.encode());
    data.write_all(&reply).await.unwrap();
    // Keep the control session answering (warm-up, start) while the data connection lies.
    tokio::spawn(async move {
        loop {
            let n = match control.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            ep.handle_input(&buf[..n], Nanos::now());
            while let Some(ev) = ep.poll_event() {
                if let Event::RunState { request, state } = ev {
                    ep.ack_run_state(request, state).unwrap();
                }
            }
            if let Some(b) = ep.poll_transmit() {
                let _ = control.write_all(&b).await;
            }
        }
    });
    let mut req = vec![0u8; DATA_HEADER_LEN + spec_bytes];
    data.read_exact(&mut req).await.unwrap();
    let h = DataHeader::parse(&req, u32::MAX).unwrap();
    // A response for a slot that holds a different sample.
    let mut lie = DataHeader::response(h.slot, h.sample_id ^ 1, 8, 0).encode().to_vec();
    lie.extend_from_slice(&[0; 8]);
    data.write_all(&lie).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
}

#[test]
fn a_lying_accelerator_ends_the_run_with_a_clear_error() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(lying_accelerator(listener));
    let dir = tempfile::tempdir().unwrap();
    let o = frontend(&[
        "run",
        "-a",
        &addr,
        "-w",
        "bert",
        "-m",
        "accuracy",
        "--total-samples",
        "10",
        "--expected-qps",
        "100",
        "--output-dir",
        dir.path().to_str().unwrap(),
        "--metrics-listen",
        "",
        "--progress",
        "off",
    ]);
    assert_eq!(o.status.code(), Some(3), "a failed run exits 3: {}", text(&o));
    let t = text(&o);
    assert!(t.contains("run failed") && t.contains("carries sample id"), "{t}");
}

#[test]
fn duplicate_names_unreachable_accelerators_and_bad_config_are_clear_errors() {
    let a = Acc::start(&["--backend", "echo", "--name", "twin"]);
    let b = Acc::start(&["--backend", "echo", "--name", "twin"]);
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[&a, &b], &dir.path().join("dup"), &["-w", "bert"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("names must be unique") && text(&o).contains("twin"), "{}", text(&o));

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = frontend(&[
        "run",
        "-a",
        &format!("127.0.0.1:{port}"),
        "--output-dir",
        dir.path().to_str().unwrap(),
        "--metrics-listen",
        "",
        "--progress",
        "off",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot connect to accelerator"), "{}", text(&o));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[frontend]\nslots_per_connection = 0\n").unwrap();
    let o = frontend(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78), "bad configuration is EX_CONFIG: {}", text(&o));
    assert!(text(&o).contains("frontend.slots_per_connection"), "{}", text(&o));

    std::fs::write(&bad, "[batcher]\nmax_batch = 0\n").unwrap();
    let o = std::process::Command::new(accelerator_bin()).arg("--config").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("batcher.max_batch"), "{}", text(&o));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let acc = Acc::start(&["--backend", "echo"]);
    let dir = tempfile::tempdir().unwrap();
    ok(&run(
        &[&acc],
        &dir.path().join("r"),
        &["-w", "bert", "-m", "accuracy", "--total-samples", "20", "--expected-qps", "1000"],
    ));
    let (status, log) = acc.terminate();
    assert!(status.success(), "{status}");
    assert!(log.contains("shutting down") && log.contains("stopped"), "{log}");
}

/// Starts a long Server run against `acc`, waits until its test has begun, sends `signal` and
/// returns the frontend's exit status and stderr.
fn interrupt_a_run(acc: &Acc, signal: i32) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(frontend_bin())
        .env("QDL_SECRET", TEST_SECRET)
        .args([
            "run",
            "-a",
            &acc.addr,
            "-w",
            "bert",
            "-s",
            "server",
            "--target-qps",
            "500",
            "--min-duration-ms",
            "60000",
        ])
        .args(["--output-dir", dir.path().to_str().unwrap(), "--metrics-listen", "", "--progress", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sessions = acc.log().matches("state=Start").count();
    let end = Instant::now() + Duration::from_secs(20);
    while acc.log().matches("state=Start").count() == sessions {
        assert!(Instant::now() < end, "the run never started:\n{}", acc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "exits promptly");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn an_interrupted_frontend_drains_says_goodbye_and_exits_143_or_130() {
    let mut acc = Acc::start(&["--backend", "echo"]);
    let (code, err) = interrupt_a_run(&acc, libc::SIGTERM);
    assert_eq!(code, Some(143), "SIGTERM: an interrupted test is not a success: {err}");
    assert!(err.contains("interrupted") && err.contains("samples issued before the signal answered"), "{err}");
    // "N of the N samples": everything in flight was answered.
    let line = err.lines().find(|l| l.contains("before the signal answered")).unwrap();
    let nums: Vec<&str> = line.split_whitespace().filter(|w| w.parse::<u64>().is_ok()).collect();
    assert_eq!(nums.first(), nums.get(1), "{line}");
    acc.wait_log("frontend said goodbye", Duration::from_secs(5));
    acc.wait_log("session closed", Duration::from_secs(5));
    assert!(acc.alive());

    let (code, err) = interrupt_a_run(&acc, libc::SIGINT);
    assert_eq!(code, Some(130), "SIGINT (Ctrl-C): {err}");
    assert!(err.contains("samples issued before the signal answered"), "drained as well: {err}");
    assert!(acc.alive());
}

#[test]
fn killing_one_of_two_accelerators_mid_run_loses_no_sample() {
    let a = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "fault-a"]);
    let mut b = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "fault-b"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = spawn_run(
        &[&a, &b],
        &out,
        &["-w", "bert", "-s", "offline", "--mode", "accuracy", "--total-samples", "6000", "--slots", "256"],
    );
    // Once b is busy, kill it outright (no goodbye, no drain).
    wait_busy(&b, 500.0);
    kill_now(&mut b);
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "the run survives the loss: {t}");
    assert!(t.contains("re-dispatching") || t.contains("re-dispatch"), "the loss is reported: {t}");
    let v = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
    assert!(v.contains("6000/6000 samples correct"), "every sample exactly once, every output right: {v}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let redispatched = report["frontend"]["redispatched"].as_u64().unwrap();
    assert!(redispatched > 0, "b's samples were re-dispatched: {}", report["frontend"]);
    assert_eq!(report["frontend"]["samples_completed"], 6000);
}

#[test]
fn losing_every_accelerator_ends_the_run_with_a_clear_error() {
    let mut a = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "only"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child =
        spawn_run(&[&a], &out, &["-w", "bert", "-s", "offline", "--mode", "accuracy", "--total-samples", "6000"]);
    wait_busy(&a, 200.0);
    a.child.kill().unwrap();
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "no accelerator left: the run failed: {t}");
    assert!(t.contains("no accelerator connection is left") || t.contains("failed with"), "{t}");
    assert!(t.contains("LoadGen's logs in"), "says where the logs are: {t}");
    assert!(out.join("mlperf_log_detail.txt").is_file(), "LoadGen's logs so far are kept");
}

#[test]
fn a_frozen_accelerator_is_declared_dead_by_heartbeats_and_its_samples_move() {
    let a = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "alive"]);
    let mut b = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "frozen"]);
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every 200 ms, dead after 3 silent intervals.
    let cfg = dir.path().join("fe.toml");
    std::fs::write(&cfg, "[heartbeat]\ninterval_ms = 200\nmisses = 3\n").unwrap();
    let out = dir.path().join("run");
    let mut child = spawn_run(
        &[&a, &b],
        &out,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "-w",
            "bert",
            "-s",
            "offline",
            "--mode",
            "accuracy",
            "--total-samples",
            "6000",
            "--slots",
            "256",
        ],
    );
    wait_busy(&b, 500.0);
    // SIGSTOP: the process and its connections stay, but it answers nothing, heartbeats included.
    // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGSTOP) };
    // Thawed once the frontend has declared it dead, while its connections are still read: the
    // samples it then answers were re-dispatched already, so its answers are late.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let end = Instant::now() + Duration::from_secs(15);
    while let Ok(line) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        if line.contains("declared dead") {
            break;
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGCONT) };
    let status = child.wait().unwrap();
    let t = reader.join().unwrap();
    assert!(status.success(), "{t}");
    assert!(t.contains("declared dead") && t.contains("re-dispatching"), "{t}");
    let v = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
    assert!(v.contains("6000/6000 samples correct"), "never reported twice: {v}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    eprintln!("late responses dropped: {}", report["frontend"]["late_responses"]);
    assert!(report["frontend"]["late_responses"].as_u64().unwrap() > 0, "{}", report["frontend"]);
    let _ = b.alive();
}

#[test]
fn a_restarted_accelerator_rejoins_the_running_test() {
    let a = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "steady"]);
    let listen = Acc::free_addr();
    let mut b = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "phoenix", "--listen", &listen]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let child = spawn_run(
        &[&a, &b],
        &out,
        &["-w", "bert", "-s", "offline", "--mode", "accuracy", "--total-samples", "12000", "--slots", "256"],
    );
    wait_busy(&b, 500.0);
    kill_now(&mut b);
    // The same node comes back on the same address while the test goes on.
    let back = Acc::start_with_config(Some(TEST_SYNTHETIC), &["--name", "phoenix", "--listen", &listen]);
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("accelerator rejoined the run"), "{t}");
    assert!(received(&back) > 0.0, "the restarted accelerator took work again");
    let v = ok(&frontend(&["check-accuracy", out.to_str().unwrap()]));
    assert!(v.contains("12000/12000 samples correct"), "{v}");
    let d = std::fs::read_to_string(out.join("mlperf_log_detail.txt")).unwrap();
    let names: Vec<&str> = d.lines().filter(|l| l.contains("Network SUT")).collect();
    assert!(
        names.last().is_some_and(|l| l.contains("qdl Network SUT (steady, phoenix)")),
        "the SUT name is whole again at the end: {names:?}"
    );
}

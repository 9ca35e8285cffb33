//! The `qdl-accelerator` binary: start-up errors are clear, the ready line is printed, and
//! SIGTERM ends an idle node with status 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qdl-accelerator"));
    c.env("QDL_SECRET", "qdl test secret: 0123456789abcdef");
    c
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn start_up_errors_name_their_cause() {
    let o = bin().args(["--listen", "not-an-address"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("accelerator.listen"), "{}", text(&o));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = bin().args(["--listen", &addr, "--metrics-listen", ""]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot listen on") && text(&o).contains(&addr), "{}", text(&o));

    let o = bin().args(["--listen", "127.0.0.1:0", "--metrics-listen", &addr]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot serve metrics"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("a.toml");
    std::fs::write(&cfg, "[workers]\ncount = 0\n").unwrap();
    let o = bin().arg("--config").arg(&cfg).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("workers.count"), "{}", text(&o));
}

#[test]
fn ready_line_then_sigterm_exits_zero() {
    let mut child = bin()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--name",
            "cli-test",
            "--backend",
            "echo",
            "--workers",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("qdl-accelerator ready name=cli-test listen=127.0.0.1:"), "{line}");
    assert!(line.contains("backend=echo workers=2"), "{line}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// A notify socket in `dir` (reads time out after 20 s) and an echo accelerator told of it,
/// with `env` besides.
fn notified_node(dir: &std::path::Path, env: &[(&str, &std::ffi::OsStr)]) -> (std::os::unix::net::UnixDatagram, Child) {
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut cmd = bin();
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "", "--backend", "echo"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (sock, cmd.spawn().unwrap())
}

#[test]
fn tells_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, mut child) = notified_node(dir.path(), &[]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"), "{msg}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

/// Where RDMA cannot be used (no device here; or, with `unshare`, no libibverbs at all), selecting
/// it is a clear start-up error that points at the TCP transport, never a panic; TCP is unaffected.
#[test]
fn rdma_without_a_device_or_library_is_a_clear_error() {
    let has_device = std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some());
    if has_device {
        eprintln!("skipped: this machine has an RDMA device (the guest tests cover it)");
        return;
    }
    let args = ["--listen", "127.0.0.1:0", "--metrics-listen", "", "--transport", "rdma"];
    let o = bin().args(args).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("RDMA transport unavailable") && t.contains("transport = \"tcp\""), "{t}");
    assert!(!t.contains("panicked"), "{t}");

    // The library itself hidden: a private mount namespace binds /dev/null over libibverbs.
    let lib = ["/usr/lib/x86_64-linux-gnu/libibverbs.so.1", "/usr/lib/aarch64-linux-gnu/libibverbs.so.1"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let root = unsafe { libc::geteuid() } == 0;
    let Some(lib) = lib.filter(|_| root) else {
        eprintln!("library check skipped: needs root and an installed libibverbs to hide");
        return;
    };
    let script = format!("mount --bind /dev/null {lib} && exec \"$0\" \"$@\"");
    let o = Command::new("unshare")
        .env("QDL_SECRET", "qdl test secret: 0123456789abcdef")
        .args(["--mount", "sh", "-c", &script, env!("CARGO_BIN_EXE_qdl-accelerator")])
        .args(args)
        .output()
        .unwrap();
    let t = text(&o);
    if t.contains("unshare failed") || t.contains("Operation not permitted") {
        eprintln!("library check skipped: {t}");
        return;
    }
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("libibverbs cannot be loaded") && t.contains("transport = \"tcp\""), "{t}");
}

/// Kills the child when a test fails half-way (also when it is stopped).
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recv_text(sock: &std::os::unix::net::UnixDatagram) -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Empties the socket, then returns what arrives within the next `quiet`.
fn drain_then_listen(sock: &std::os::unix::net::UnixDatagram, quiet: Duration) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    while recv_text(sock).is_ok() {}
    sock.set_nonblocking(false).unwrap();
    let end = Instant::now() + quiet;
    let mut got = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left)).unwrap();
        got.extend(recv_text(sock).ok());
    }
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    got
}

/// Whether every thread of `pid` is stopped (state T in /proc/PID/task/*/stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With WATCHDOG_USEC (as systemd's WatchdogSec= sets it) the node pings WATCHDOG=1 after
/// READY=1, from its event loop: the pings stop while the whole process is stopped (SIGSTOP)
/// and, in a debug build, while only the event loop is wedged (QDL_DEBUG_WEDGE_FILE), and
/// resume after.
#[test]
fn watchdog_pings_stop_while_the_event_loop_is_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let wedge = dir.path().join("wedge");
    let (sock, child) =
        notified_node(dir.path(), &[("WATCHDOG_USEC", "200000".as_ref()), ("QDL_DEBUG_WEDGE_FILE", wedge.as_os_str())]);
    let mut child = Reap(child);
    let pid = child.0.id();
    assert!(recv_text(&sock).expect("READY=1 within 20 s").starts_with("READY=1"));
    for _ in 0..3 {
        assert_eq!(recv_text(&sock).expect("pings every 100 ms"), "WATCHDOG=1");
    }

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_for("the node to stop", || all_threads_stopped(pid));
    let during = drain_then_listen(&sock, Duration::from_secs(1));
    assert!(during.is_empty(), "pings from a stopped process: {during:?}");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert_eq!(recv_text(&sock).expect("pings resume after SIGCONT"), "WATCHDOG=1");

    if cfg!(debug_assertions) {
        std::fs::write(&wedge, b"").unwrap();
        let marker = dir.path().join("wedge.wedged");
        wait_for("the event loop to wedge", || marker.exists());
        let during = drain_then_listen(&sock, Duration::from_secs(1));
        assert!(during.is_empty(), "pings from a wedged event loop: {during:?}");
        assert!(!all_threads_stopped(pid), "only the loop is wedged; the process runs");
        assert!(child.0.try_wait().unwrap().is_none(), "the node is still there");
        std::fs::remove_file(&wedge).unwrap();
        assert_eq!(recv_text(&sock).expect("pings resume with the loop"), "WATCHDOG=1");
    }

    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopping = std::iter::from_fn(|| recv_text(&sock).ok()).take(1000).find(|m| m != "WATCHDOG=1");
    assert!(stopping.as_deref().is_some_and(|m| m.starts_with("STOPPING=1")), "{stopping:?}");
    assert!(child.0.wait().unwrap().success());
}

/// WATCHDOG_PID naming another process (variables inherited from a supervised parent): no pings.
#[test]
fn no_watchdog_pings_for_another_processs_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let ours = std::process::id().to_string();
    let (sock, child) =
        notified_node(dir.path(), &[("WATCHDOG_USEC", "200000".as_ref()), ("WATCHDOG_PID", ours.as_ref())]);
    let mut child = Reap(child);
    assert!(recv_text(&sock).expect("READY=1 within 20 s").starts_with("READY=1"));
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let got = recv_text(&sock);
    assert!(got.is_err(), "a ping for another process's watchdog: {got:?}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert!(recv_text(&sock).expect("STOPPING=1").starts_with("STOPPING=1"));
    assert!(child.0.wait().unwrap().success());
}

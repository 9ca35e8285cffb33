//! The `qdl-accelerator` binary: start-up errors are clear, the ready line is printed, and
//! SIGTERM ends an idle node with status 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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

#[test]
fn tells_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "", "--backend", "echo"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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

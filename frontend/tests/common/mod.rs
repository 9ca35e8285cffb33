//! Helpers for tests that run real `qdl-accelerator` and `qdl-frontend` processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The frontend binary under test.
pub fn frontend_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qdl-frontend"))
}

/// The accelerator binary of the same build (built on demand when this package is tested alone).
pub fn accelerator_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let p = frontend_bin().with_file_name("qdl-accelerator");
            if !p.is_file() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let release = frontend_bin().parent().is_some_and(|d| d.ends_with("release"));
                let mut cmd = Command::new(cargo);
                cmd.args(["build", "-p", "qdl-accelerator", "--bin", "qdl-accelerator"]);
                if release {
                    cmd.arg("--release");
                }
                assert!(cmd.status().expect("cargo").success(), "building qdl-accelerator");
            }
            p
        })
        .clone()
}

/// The shared secret the tests' nodes use (given to every child process as `QDL_SECRET`).
pub const TEST_SECRET: &str = "qdl test secret: 0123456789abcdef";

/// The test secret, as the control endpoints take it.
pub fn test_secret() -> qdl_shared::auth::Secret {
    qdl_shared::auth::Secret::new(TEST_SECRET.as_bytes(), "tests").unwrap()
}

/// `QDL_PYTHON` for child processes: the caller's, else the project's environment (target/python,
/// made by scripts/setup) if it exists, so the onnx backend finds ONNX Runtime there.
pub fn python() -> Option<PathBuf> {
    std::env::var_os("QDL_PYTHON").map(PathBuf::from).or_else(|| {
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python/bin/python3")).filter(|p| p.is_file())
    })
}

/// A running accelerator; killed when dropped.
pub struct Acc {
    pub child: Child,
    pub addr: String,
    pub metrics: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Acc {
    /// Starts an accelerator with extra flags (e.g. `--backend echo --name x`).
    pub fn start(extra: &[&str]) -> Acc {
        Acc::start_with_config(None, extra)
    }

    /// A free local address (for a node that must come back on the same one).
    pub fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    /// Starts an accelerator with a config file's contents.
    pub fn start_with_config(config: Option<&str>, extra: &[&str]) -> Acc {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(accelerator_bin());
        cmd.env("QDL_SECRET", TEST_SECRET).env_remove("QDL_CONFIG");
        if let Some(text) = config {
            let p = dir.path().join("acc.toml");
            std::fs::write(&p, text).unwrap();
            cmd.arg("--config").arg(p);
        }
        cmd.args(extra);
        Acc::spawn_in(cmd, dir)
    }

    /// Starts the accelerator `cmd` describes (listen and metrics addresses are added).
    pub fn spawn(cmd: Command) -> Acc {
        Acc::spawn_in(cmd, tempfile::tempdir().unwrap())
    }

    fn spawn_in(mut cmd: Command, dir: tempfile::TempDir) -> Acc {
        let log = dir.path().join("acc.log");
        if let Some(py) = python() {
            cmd.env("QDL_PYTHON", py);
        }
        if !cmd.get_args().any(|a| a == "--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start qdl-accelerator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("qdl-accelerator ready"),
            "unexpected first line {line:?}; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap().to_string();
        Acc { addr: field("listen="), metrics: field("metrics="), child, log, _dir: dir }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (or panics after `timeout`).
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("accelerator log never said {needle:?}:\n{}", self.log());
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Fetches the Prometheus text of its metrics endpoint.
    pub fn scrape(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// Sends SIGTERM and returns the exit status and the log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, self.log());
            }
            assert!(Instant::now() < end, "accelerator did not exit after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Acc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `qdl-frontend` with `args`; metrics off, progress off.
pub fn frontend(args: &[&str]) -> Output {
    let mut cmd = Command::new(frontend_bin());
    // The caller's QDL_CONFIG / QDL_ACCELERATORS would change what the tests run.
    cmd.env("QDL_SECRET", TEST_SECRET).env_remove("QDL_CONFIG").env_remove("QDL_ACCELERATORS");
    if let Some(py) = python() {
        cmd.env("QDL_PYTHON", py);
    }
    cmd.args(args).env("RUST_LOG", "warn").output().expect("run qdl-frontend")
}

/// Runs `qdl-frontend run` against `accs` with `args`, writing into `out`.
pub fn run(accs: &[&Acc], out: &Path, args: &[&str]) -> Output {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--output-dir".into(),
        out.display().to_string(),
        "--metrics-listen".into(),
        "".into(),
        "--progress".into(),
        "off".into(),
    ];
    for acc in accs {
        a.push("--accelerator".into());
        a.push(acc.addr.clone());
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    frontend(&refs)
}

/// Asserts the process succeeded, showing its output otherwise.
pub fn ok(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "status {}\nstdout:\n{stdout}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// Both output streams.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A synthetic accelerator of known capacity for tests: a batch of 16 takes 1 ms + 16 × 0.5 ms
/// = 9 ms, so one accelerator does about 1,780 samples/s whatever the machine; an LLM engine step
/// takes 1 ms + 0.5 µs per prompt token + 5 µs per sequence.
pub const TEST_SYNTHETIC: &str = "[batcher]\nmax_batch = 16\nmax_queue_delay_us = 500\n[backend]\nkind = \"synthetic\"\n[backend.synthetic.default]\nfixed_us = 1000.0\nper_sample_us = 500.0\n[backend.synthetic.tokens]\nfixed_us = 1000.0\nper_prefill_token_us = 0.5\nper_sequence_us = 5.0\n";

/// Starts `qdl-frontend run` against `accs` without waiting for it.
pub fn spawn_run(accs: &[&Acc], out: &std::path::Path, args: &[&str]) -> std::process::Child {
    let mut cmd = std::process::Command::new(frontend_bin());
    cmd.env("QDL_SECRET", TEST_SECRET).arg("run");
    for a in accs {
        cmd.args(["-a", &a.addr]);
    }
    cmd.args(args)
        .args(["--output-dir", out.to_str().unwrap(), "--metrics-listen", "", "--progress", "off"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The samples `acc` has received so far (from its metrics).
pub fn received(acc: &Acc) -> f64 {
    acc.scrape()
        .lines()
        .find(|l| l.starts_with("qdl_accelerator_samples_received_total "))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `acc` has received `n` samples (20 s at most).
pub fn wait_busy(acc: &Acc, n: f64) {
    let end = Instant::now() + Duration::from_secs(20);
    while received(acc) < n {
        assert!(Instant::now() < end, "accelerator never got busy");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// kill -9, and reap.
pub fn kill_now(acc: &mut Acc) {
    acc.child.kill().unwrap();
    acc.child.wait().unwrap();
}

/// SmolLM2-135M's GGUF file (`scripts/models` fetches it into `$QDL_MODELS/smollm2`, default
/// `target/models`), or `None`: the caller's test says "skipped" and passes, unless
/// `QDL_REQUIRE_LLAMA=1` (CI), where a missing model fails it.
pub fn smollm2() -> Option<PathBuf> {
    let dir = std::env::var_os("QDL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models"));
    let path = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("QDL_REQUIRE_LLAMA").as_deref() != Ok("1"),
        "QDL_REQUIRE_LLAMA=1 but {} is missing",
        path.display()
    );
    eprintln!("skipped: no {} (scripts/models fetches it)", path.display());
    None
}

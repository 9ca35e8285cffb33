//! Local clusters for `lab` and `bench`: real `qdl-accelerator` processes on loopback, and each
//! LoadGen test in its own `qdl-frontend run` process (LoadGen applies mlperf.conf once per
//! process, so one test per process is the only correct way).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use qdl_frontend::report::RunReport;

/// Finds the `qdl-accelerator` binary: `QDL_ACCELERATOR_BIN`, else beside this executable.
pub fn accelerator_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("QDL_ACCELERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating qdl-frontend")?;
    let p = me.with_file_name("qdl-accelerator");
    if p.is_file() {
        Ok(p)
    } else {
        bail!("{} not found: build the whole workspace (cargo build --release) or set QDL_ACCELERATOR_BIN", p.display())
    }
}

/// `127.0.0.1:port` if that port is free now, else an ephemeral port (`127.0.0.1:0`): fixed
/// ports let a Prometheus watch the lab (grafana/prometheus-local.yml) without clashing with
/// anything else that runs.
pub fn preferred_metrics(port: u16) -> String {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => format!("127.0.0.1:{port}"),
        Err(_) => "127.0.0.1:0".into(),
    }
}

/// Accelerator processes on loopback; stopped (SIGTERM) when dropped.
pub struct Accelerators {
    children: Vec<Child>,
    /// Their "127.0.0.1:port" addresses.
    pub addrs: Vec<String>,
    /// Their metrics addresses ("off" if disabled).
    pub metrics: Vec<String>,
}

impl Accelerators {
    /// Starts `n` accelerators named `{prefix}-{i}` with `config`, logging into `log_dir`;
    /// accelerator `i` serves metrics on `metrics[i]` (ephemeral if absent, "" for none).
    pub fn start(
        n: usize,
        config: &Path,
        prefix: &str,
        metrics: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Accelerators> {
        let bin = accelerator_binary()?;
        let mut acc = Accelerators { children: Vec::new(), addrs: Vec::new(), metrics: Vec::new() };
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
            let mut child = Command::new(&bin)
                .envs(lab_secret())
                .env_remove("QDL_CONFIG")
                .args(["--config"])
                .arg(config)
                .args(["--listen", "127.0.0.1:0", "--name", &name, "--metrics-listen"])
                .arg(metrics.get(i).map(String::as_str).unwrap_or("127.0.0.1:0"))
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let stdout = child.stdout.take().expect("piped");
            super::signals::track_child(child.id());
            acc.children.push(child);
            let line = read_ready_line(stdout, Duration::from_secs(30))
                .with_context(|| format!("{name} did not start; see {}/{name}.log", log_dir.display()))?;
            let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string);
            acc.addrs.push(field("listen=").ok_or_else(|| anyhow!("bad ready line {line:?}"))?);
            acc.metrics.push(field("metrics=").unwrap_or_else(|| "off".into()));
        }
        Ok(acc)
    }

    /// Stops every accelerator with SIGTERM (they drain and exit 0) and waits.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        for c in &mut self.children {
            // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for mut c in self.children.drain(..) {
            super::signals::untrack_child(c.id());
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match c.try_wait()? {
                    Some(s) if s.success() => break,
                    Some(s) => {
                        failures.push(format!("accelerator {} exited with {s}", c.id()));
                        break;
                    }
                    None if Instant::now() > deadline => {
                        let _ = c.kill();
                        failures.push(format!("accelerator {} did not stop within 15 s", c.id()));
                        break;
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(anyhow!(failures.join("; "))) }
    }
}

impl Drop for Accelerators {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

fn read_ready_line(stdout: std::process::ChildStdout, timeout: Duration) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("qdl-accelerator ready") {
                let _ = tx.send(line.trim().to_string());
                // Keep draining so the child never blocks on a full pipe.
                let mut sink = String::new();
                while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
                return;
            }
            line.clear();
        }
    });
    rx.recv_timeout(timeout).map_err(|_| anyhow!("no ready line within {timeout:?}"))
}

/// Live figures of a running test, from its JSON progress lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    /// Seconds since the test started.
    pub elapsed_s: f64,
    /// Samples completed.
    pub completed: u64,
}

/// The secret of the nodes a lab or bench starts: the environment's (`QDL_SECRET` or
/// `QDL_SECRET_FILE`, inherited), else a random one made for this process.
fn lab_secret() -> Option<(&'static str, String)> {
    static SECRET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let own = SECRET.get_or_init(|| {
        let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
        if set(qdl_shared::auth::SECRET_ENV) || set(qdl_shared::auth::SECRET_FILE_ENV) {
            None
        } else {
            Some(qdl_shared::auth::nonce().iter().map(|b| format!("{b:02x}")).collect())
        }
    });
    own.clone().map(|s| (qdl_shared::auth::SECRET_ENV, s))
}

/// Runs `qdl-frontend run <args> --output-dir <out> --metrics-listen <metrics>` in a child
/// process; its log goes to `<out>/frontend.log`, its progress to `on_progress`. Returns its
/// report.
pub fn run_test(
    args: &[String],
    out: &Path,
    metrics: &str,
    on_progress: &(dyn Fn(Live) + Sync),
) -> anyhow::Result<RunReport> {
    run_test_in(args, out, metrics, on_progress, None)
}

/// [`run_test`] with the child's working directory `cwd` (this process's when `None`): LoadGen
/// reads `audit.config` from its working directory, so a compliance run gets its own.
pub fn run_test_in(
    args: &[String],
    out: &Path,
    metrics: &str,
    on_progress: &(dyn Fn(Live) + Sync),
    cwd: Option<&Path>,
) -> anyhow::Result<RunReport> {
    std::fs::create_dir_all(out)?;
    let me = std::env::current_exe()?;
    let mut command = Command::new(me);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let mut child = command
        .envs(lab_secret())
        // The lab's tests take their config and accelerators from their own arguments only.
        .env_remove("QDL_CONFIG")
        .env_remove("QDL_ACCELERATORS")
        .arg("run")
        .args(args)
        .arg("--output-dir")
        .arg(out)
        .args(["--progress", "json", "--metrics-listen", metrics])
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qdl-frontend run")?;
    super::signals::track_child(child.id());
    let log = Arc::new(Mutex::new(std::fs::File::create(out.join("frontend.log"))?));
    let stderr = child.stderr.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let summary = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut s);
        s
    });
    std::thread::scope(|scope| {
        let log = log.clone();
        scope.spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let progress =
                    serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v.get("progress").cloned());
                match progress {
                    Some(p) => on_progress(Live {
                        elapsed_s: p.get("elapsed_s").and_then(|v| v.as_f64()).unwrap_or(0.0),
                        completed: p.get("completed").and_then(|v| v.as_u64()).unwrap_or(0),
                    }),
                    None => {
                        let _ = writeln!(log.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
                    }
                }
            }
        });
    });
    let status = child.wait()?;
    super::signals::untrack_child(child.id());
    let summary = summary.join().unwrap_or_default();
    let _ = writeln!(log.lock().unwrap_or_else(|p| p.into_inner()), "{summary}");
    if !status.success() {
        bail!("the test failed ({status}); see {}", out.join("frontend.log").display());
    }
    RunReport::read(out).map_err(anyhow::Error::from)
}

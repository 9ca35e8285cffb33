//! Progress output during a run: a live line on a terminal, JSON lines for a parent process
//! (`--progress json`, used by the lab), or nothing.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live line when stderr is a terminal, nothing otherwise.
    Auto,
    /// One JSON object per second on stderr: `{"progress": {"elapsed_s", "issued", "completed"}}`.
    Json,
    /// Nothing.
    Off,
}

/// A running progress reporter; stops when dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `counts()` = (issued, completed) under `label`.
    pub fn start(mode: ProgressMode, label: String, counts: impl Fn() -> (u64, u64) + Send + 'static) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let thread = match mode {
            ProgressMode::Off => None,
            ProgressMode::Auto if !terminal => None,
            ProgressMode::Auto => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || {
                    let bar = indicatif::ProgressBar::new_spinner();
                    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
                    let started = Instant::now();
                    let mut last = (Instant::now(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(200));
                        let (issued, done) = counts();
                        let now = Instant::now();
                        let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
                        last = (now, done);
                        bar.set_message(format!(
                            "{label}  {:>5.1} s  {} issued  {} completed  {}/s",
                            started.elapsed().as_secs_f64(),
                            thousands(issued),
                            thousands(done),
                            thousands(rate as u64)
                        ));
                        bar.tick();
                    }
                    bar.finish_and_clear();
                }))
            }
            ProgressMode::Json => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..5 {
                            std::thread::sleep(Duration::from_millis(200));
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                        let (issued, done) = counts();
                        let line = serde_json::json!({"progress": {"elapsed_s": started.elapsed().as_secs_f64(), "issued": issued, "completed": done}});
                        let mut err = std::io::stderr().lock();
                        let _ = writeln!(err, "{line}");
                    }
                }))
            }
        };
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}

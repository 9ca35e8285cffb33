//! `process_*` metrics with the names, units and meanings of the Prometheus client libraries'
//! process collector, read from Linux's `/proc/self` once a second by a background thread
//! ([`start`]; the exporter offers no hook at scrape time, and a 1 s scrape sees values at most
//! 1 s old). `metrics-exporter-prometheus` exports none of them by itself.
//!
//! `process_cpu_seconds_total` is exported with `# TYPE gauge`: the `metrics` crate's counters
//! hold integers, and whole seconds would make `rate()` useless at a 1 s scrape. Its value is the
//! conventional one (user + system CPU seconds, monotonic), so `rate()` applies as usual.

use std::time::Duration;

/// Gauge (s): user and system CPU time spent, monotonic (see the module's note on its type).
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Gauge (bytes): resident memory size.
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// Gauge (bytes): virtual memory size.
pub const VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// Gauge: open file descriptors.
pub const OPEN_FDS: &str = "process_open_fds";
/// Gauge: the soft limit on open file descriptors.
pub const MAX_FDS: &str = "process_max_fds";
/// Gauge (s since the Unix epoch): when the process started.
pub const START_TIME: &str = "process_start_time_seconds";

/// How often [`start`]'s thread reads `/proc`.
pub const PERIOD: Duration = Duration::from_secs(1);

/// One reading of the process' figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: f64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: f64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: f64,
    /// Soft limit on open file descriptors (`None`: unlimited or unknown).
    pub max_fds: Option<f64>,
}

/// The fields of `/proc/<pid>/stat` that matter here, in clock ticks, bytes and pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// User-mode CPU time, clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time, clock ticks.
    pub stime: u64,
    /// Start time after boot, clock ticks.
    pub starttime: u64,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set size, pages.
    pub rss: u64,
}

/// Parses `/proc/<pid>/stat` (the command name, in parentheses, may hold spaces and parentheses:
/// fields are counted after the last `)`). `None` if it is not in that format.
pub fn parse_stat(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is rest's first; utime is field 14.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(StatFields { utime: at(14)?, stime: at(15)?, starttime: at(22)?, vsize: at(23)?, rss: at(24)? })
}

/// The soft "Max open files" of `/proc/<pid>/limits`; `None` if unlimited or absent.
pub fn parse_max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse::<f64>().ok()
}

/// The boot time (`btime`, seconds since the epoch) of `/proc/stat`.
pub fn parse_boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

/// Reads this process' figures from `/proc/self`; `None` where `/proc` is not Linux's.
pub fn read() -> Option<ProcessStats> {
    // SAFETY: sysconf only reads a system constant; it takes and returns plain integers.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (if ticks > 0 { ticks as f64 } else { 100.0 }, if page > 0 { page as f64 } else { 4096.0 });
    let s = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let boot = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_boot_time).unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0);
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(parse_max_open_files);
    Some(ProcessStats {
        cpu_seconds: (s.utime + s.stime) as f64 / ticks,
        resident_bytes: s.rss as f64 * page,
        virtual_bytes: s.vsize as f64,
        start_time_seconds: boot + s.starttime as f64 / ticks,
        open_fds,
        max_fds,
    })
}

/// Registers the descriptions of the `process_*` metrics.
pub fn describe() {
    use metrics::{Unit, describe_gauge};
    describe_gauge!(CPU_SECONDS, Unit::Seconds, "Total user and system CPU time spent in seconds");
    describe_gauge!(RESIDENT_MEMORY, Unit::Bytes, "Resident memory size in bytes");
    describe_gauge!(VIRTUAL_MEMORY, Unit::Bytes, "Virtual memory size in bytes");
    describe_gauge!(OPEN_FDS, Unit::Count, "Number of open file descriptors");
    describe_gauge!(MAX_FDS, Unit::Count, "Maximum number of open file descriptors");
    describe_gauge!(START_TIME, Unit::Seconds, "Start time of the process since unix epoch in seconds");
}

/// Publishes one reading.
pub fn publish(s: &ProcessStats) {
    metrics::gauge!(CPU_SECONDS).set(s.cpu_seconds);
    metrics::gauge!(RESIDENT_MEMORY).set(s.resident_bytes);
    metrics::gauge!(VIRTUAL_MEMORY).set(s.virtual_bytes);
    metrics::gauge!(OPEN_FDS).set(s.open_fds);
    if let Some(m) = s.max_fds {
        metrics::gauge!(MAX_FDS).set(m);
    }
    metrics::gauge!(START_TIME).set(s.start_time_seconds);
}

/// Starts the thread that publishes the process' figures every [`PERIOD`] for the rest of the
/// process' life; nothing (and no thread) where `/proc/self` cannot be read.
pub fn start() -> std::io::Result<()> {
    let Some(first) = read() else {
        tracing::warn!("process_* metrics are off: /proc/self cannot be read");
        return Ok(());
    };
    publish(&first);
    std::thread::Builder::new().name("qdl-process-metrics".into()).spawn(|| {
        loop {
            std::thread::sleep(PERIOD);
            if let Some(s) = read() {
                publish(&s);
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_holds_spaces_and_parentheses() {
        let line = "4242 (qdl (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 123456 \
                    987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s, StatFields { utime: 250, stime: 75, starttime: 123456, vsize: 987654321, rss: 2048 });
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn parses_limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63439                63439                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024.0));
        assert_eq!(parse_max_open_files("Max open files            unlimited            unlimited files"), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1.7e9));
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = read().expect("Linux's /proc");
        assert!(s.cpu_seconds >= 0.0 && s.resident_bytes > 0.0 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.open_fds >= 3.0, "stdin, stdout, stderr at least: {}", s.open_fds);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds > now - 86_400.0 * 365.0 && s.start_time_seconds <= now + 1.0, "{s:?}");
    }
}

//! # qdl-loadgen: a safe Rust API over the official MLCommons LoadGen
//!
//! # Layout
//! - `build.rs` fetches the hash-pinned `mlcommons-loadgen` sdist (or uses `QDL_LOADGEN_SRC`) and
//!   compiles LoadGen's C++ plus qdl's own extern "C" shim (`shim/qdl_loadgen_shim.cc`).
//! - `ffi` (private): the shim's raw declarations.
//! - This file: [`TestSettings`] (with [`TestSettings::llm_bounds`] for the LLM token bounds),
//!   [`LogSettings`], the [`SystemUnderTest`] and [`QuerySampleLibrary`] traits whose callbacks
//!   LoadGen calls, [`start_test`], [`Completions`] (the safe face of `QuerySamplesComplete`,
//!   with [`Completions::push_tokens`] for token counts), and [`first_token_complete`] /
//!   [`FirstTokenBuffer`] / [`FirstTokens`] (the safe face of `FirstTokenComplete`).
//!
//! # LLM benchmarks (token latencies)
//! With [`TestSettings::use_token_latencies`] (mlperf.conf sets it for the LLM models) LoadGen
//! judges a Server run by time to first token (TTFT) and time per output token (TPOT) at
//! `server_target_latency_percentile`, against [`TestSettings::server_ttft_latency`] and
//! [`TestSettings::server_tpot_latency`], instead of by the sample latency. The SUT then:
//! 1. reports each sample's first token while the sample is in flight, with
//!    [`first_token_complete`] or a [`FirstTokens`] batch (required in every scenario but
//!    Offline; LoadGen logs an error for a completion without one). This borrows the
//!    [`ResponseId`], so it can only happen before the completion, which consumes it;
//! 2. completes the sample with [`Completions::push_tokens`], `n_tokens` being the number of
//!    output tokens (at least 2: LoadGen computes TPOT as (latency − TTFT) / (n_tokens − 1) and logs
//!    an error for 0, 1 or a negative count).
//!
//! LoadGen has no Interactive scenario: MLPerf's "Interactive" is the Server scenario run with the
//! `<model>-interactive` keys of mlperf.conf (tighter TTFT/TPOT bounds), i.e.
//! `apply_mlperf_conf("llama3_1-8b-interactive", Scenario::Server)`.
//!
//! # Ownership and thread-safety (as LoadGen's headers state them)
//! - [`start_test`] blocks the calling thread for the whole test. The SUT and QSL are borrowed for
//!   exactly that long; LoadGen calls them from its own threads: `issue_query` from its issue
//!   thread, `name`/`flush_queries` and the QSL's load/unload from the thread that called
//!   [`start_test`]. Both traits therefore require `Sync`.
//! - Every [`ResponseId`] LoadGen hands out is a pointer into LoadGen's own bookkeeping. It is a
//!   move-only token here: it can only be obtained from an issued [`QuerySample`] and is consumed
//!   by [`Completions::push`] / [`Completions::push_tokens`], so safe code can neither forge an id
//!   nor complete one twice. A first token ([`first_token_complete`], [`FirstTokens`]) only
//!   borrows the id: an id that can still be borrowed has not been completed, so its sample is in
//!   flight and LoadGen (which waits for every issued sample) still holds its bookkeeping.
//! - `QuerySamplesComplete` and `FirstTokenComplete` are thread-safe and may be called from any
//!   thread, but a thread that calls them must outlive [`start_test`]: LoadGen's logger keeps
//!   per-thread buffers and a thread that exits early crashes it (mlcommons/inference #1337).
//! - Only one test may run at a time in a process, and `TestSettings::FromConfig` applies the
//!   compiled-in mlperf.conf only on its first call in a process: run one test per process.
//! - LoadGen queues the record of a first token and of a completion in a per-thread buffer that its
//!   logging thread reads one thread at a time. Report a sample's first token and its completion
//!   from the same thread: from two threads the completion's record can be read first, and LoadGen
//!   then logs "Attempted to record token latency after sample was completed" for that sample.

#![warn(missing_docs)]

mod ffi;

use std::ffi::{CStr, CString, c_char, c_void};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Errors of the LoadGen binding.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// `TestSettings::FromConfig` rejected a file or could not open it (LoadGen's own code).
    #[error("LoadGen could not apply {what}: error code {code}{detail}")]
    Config {
        /// Which configuration was being applied.
        what: String,
        /// LoadGen's return code (negative errno) or -1000 for a C++ exception.
        code: i32,
        /// Exception text, if any.
        detail: String,
    },
    /// A string passed to LoadGen contained an interior NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    /// Another test is already running in this process.
    #[error("a LoadGen test is already running in this process")]
    Busy,
    /// LoadGen threw a C++ exception out of StartTest.
    #[error("LoadGen StartTest failed: {0}")]
    StartTest(String),
    /// The log output directory could not be created.
    #[error("cannot create the LoadGen log directory {path}: {source}")]
    LogDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The LoadGen version compiled into this binary (e.g. "6.0.17").
pub fn version() -> String {
    // SAFETY: the shim returns a pointer to a function-local static std::string that lives for the
    // whole process and is NUL-terminated.
    unsafe { CStr::from_ptr(ffi::qdl_lg_version()) }.to_string_lossy().into_owned()
}

/// LoadGen's four scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// One sample per query, the next issued when the previous completes.
    SingleStream = 0,
    /// `multi_stream_samples_per_query` samples per query, issued back to back.
    MultiStream = 1,
    /// Poisson-distributed single-sample queries at `server_target_qps`.
    Server = 2,
    /// All samples in one query.
    Offline = 3,
}

impl Scenario {
    /// The name LoadGen's config files use (`model.Scenario.key`).
    pub fn config_name(self) -> &'static str {
        match self {
            Scenario::SingleStream => "SingleStream",
            Scenario::MultiStream => "MultiStream",
            Scenario::Server => "Server",
            Scenario::Offline => "Offline",
        }
    }

    fn from_raw(v: i32) -> Scenario {
        match v {
            0 => Scenario::SingleStream,
            1 => Scenario::MultiStream,
            2 => Scenario::Server,
            _ => Scenario::Offline,
        }
    }
}

/// LoadGen's test modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestMode {
    /// Accuracy then performance (LoadGen's "SubmissionRun").
    SubmissionRun = 0,
    /// Every sample once, responses logged to mlperf_log_accuracy.json.
    AccuracyOnly = 1,
    /// Timed run judged VALID or INVALID.
    PerformanceOnly = 2,
    /// Server-only search for the peak QPS.
    FindPeakPerformance = 3,
}

impl TestMode {
    fn from_raw(v: i32) -> TestMode {
        match v {
            0 => TestMode::SubmissionRun,
            1 => TestMode::AccuracyOnly,
            3 => TestMode::FindPeakPerformance,
            _ => TestMode::PerformanceOnly,
        }
    }
}

/// How LoadGen writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoggingMode {
    /// A background thread writes logs while the test runs (LoadGen's default).
    #[default]
    AsyncPoll = 0,
    /// Logs are written when the test ends.
    EndOfTestOnly = 1,
    /// Logs are written synchronously.
    Synchronous = 2,
}

macro_rules! settings {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty => $conv:ident ),* $(,)?) => {
        /// Every `mlperf::TestSettings` field, with LoadGen's own defaults (see [`Default`]).
        /// Units are LoadGen's: nanoseconds for latencies, milliseconds for durations, fractions
        /// (0.99) for percentiles.
        #[derive(Debug, Clone, PartialEq)]
        pub struct TestSettings {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl TestSettings {
            fn to_raw(&self) -> ffi::RawTestSettings {
                ffi::RawTestSettings { $( $field: conv::$conv::to(self.$field), )* }
            }

            fn from_raw(raw: &ffi::RawTestSettings) -> Self {
                TestSettings { $( $field: conv::$conv::from(raw.$field), )* }
            }
        }
    };
}

mod conv {
    //! Field conversions between the Rust and the C mirror of TestSettings.
    use super::{Scenario, TestMode};
    pub struct Same;
    impl Same {
        pub fn to<T>(v: T) -> T {
            v
        }
        pub fn from<T>(v: T) -> T {
            v
        }
    }
    pub struct Flag;
    impl Flag {
        pub fn to(v: bool) -> u8 {
            v as u8
        }
        pub fn from(v: u8) -> bool {
            v != 0
        }
    }
    pub struct Scen;
    impl Scen {
        pub fn to(v: Scenario) -> i32 {
            v as i32
        }
        pub fn from(v: i32) -> Scenario {
            Scenario::from_raw(v)
        }
    }
    pub struct Mode;
    impl Mode {
        pub fn to(v: TestMode) -> i32 {
            v as i32
        }
        pub fn from(v: i32) -> TestMode {
            TestMode::from_raw(v)
        }
    }
}

settings! {
    /// The scenario to run.
    scenario: Scenario => Scen,
    /// The test mode.
    mode: TestMode => Mode,
    /// SingleStream: expected latency of one query, ns (sizes the query count).
    single_stream_expected_latency_ns: f64 => Same,
    /// SingleStream: the latency percentile reported (0.90).
    single_stream_target_latency_percentile: f64 => Same,
    /// MultiStream: expected latency of one query, ns.
    multi_stream_expected_latency_ns: f64 => Same,
    /// MultiStream: the latency percentile reported (0.99).
    multi_stream_target_latency_percentile: f64 => Same,
    /// MultiStream: samples per query (8).
    multi_stream_samples_per_query: u64 => Same,
    /// Server: target queries per second.
    server_target_qps: f64 => Same,
    /// Server: latency bound, ns (ResNet-50 15 ms, BERT 130 ms in mlperf.conf).
    server_target_latency_ns: u64 => Same,
    /// Server: percentile that must meet the bound (0.99).
    server_target_latency_percentile: f64 => Same,
    /// Server: let LoadGen coalesce queries that are due together.
    server_coalesce_queries: bool => Flag,
    /// Server FindPeakPerformance: decimals of precision.
    server_find_peak_qps_decimals_of_precision: i32 => Same,
    /// Server FindPeakPerformance: boundary step size.
    server_find_peak_qps_boundary_step_size: f64 => Same,
    /// Server: maximum outstanding queries (0 = unbounded).
    server_max_async_queries: u64 => Same,
    /// Server: SUT-registered issue threads (0 = LoadGen's own thread).
    server_num_issue_query_threads: u64 => Same,
    /// Offline: expected samples per second (sizes the single query).
    offline_expected_qps: f64 => Same,
    /// Equal-issue mode for non-uniform inputs.
    sample_concatenate_permutation: bool => Flag,
    /// Minimum test duration, ms.
    min_duration_ms: u64 => Same,
    /// Maximum test duration, ms (0 = unbounded).
    max_duration_ms: u64 => Same,
    /// Minimum query count.
    min_query_count: u64 => Same,
    /// Maximum query count (0 = unbounded).
    max_query_count: u64 => Same,
    /// Seed for QSL sample selection.
    qsl_rng_seed: u64 => Same,
    /// Seed for sample index selection.
    sample_index_rng_seed: u64 => Same,
    /// Seed for the Server schedule.
    schedule_rng_seed: u64 => Same,
    /// Seed for accuracy-log sampling in performance mode.
    accuracy_log_rng_seed: u64 => Same,
    /// Probability of logging a response in performance mode.
    accuracy_log_probability: f64 => Same,
    /// Target number of responses logged in performance mode.
    accuracy_log_sampling_target: u64 => Same,
    /// Compliance TEST05 (alternate seeds).
    test05: bool => Flag,
    /// TEST05 QSL seed.
    test05_qsl_rng_seed: u64 => Same,
    /// TEST05 sample index seed.
    test05_sample_index_rng_seed: u64 => Same,
    /// TEST05 schedule seed.
    test05_schedule_rng_seed: u64 => Same,
    /// Print timestamps in the detail log.
    print_timestamps: bool => Flag,
    /// Issue each performance sample once (compliance).
    performance_issue_unique: bool => Flag,
    /// Issue the same sample every time (compliance).
    performance_issue_same: bool => Flag,
    /// Which sample `performance_issue_same` uses.
    performance_issue_same_index: u64 => Same,
    /// Overrides the QSL's performance sample count (0 = use the QSL's).
    performance_sample_count_override: u64 => Same,
    /// Limits accuracy mode to this many samples (0 = all).
    accuracy_sample_count_override: u64 => Same,
    /// LLM benchmarks: measure TTFT and TPOT (and count the `n_tokens` of each completion); in
    /// Server they replace the sample latency as the run's constraint. mlperf.conf sets it for the
    /// LLM models (llama2-70b, llama3_1-8b, llama3_1-405b, mixtral-8x7b, deepseek-r1, gpt-oss-120b,
    /// and their `-interactive` variants). See the crate docs for what the SUT must then do.
    use_token_latencies: bool => Flag,
    /// With `use_token_latencies`, the Server time-to-first-token bound, ns (LoadGen's default
    /// 100 ms). mlperf.conf gives it in ms as `<model>.Server.ttft_latency` and FromConfig reads it
    /// from the Server section whatever the scenario (llama3_1-8b 2000 ms, -interactive 500 ms).
    server_ttft_latency: u64 => Same,
    /// With `use_token_latencies`, the Server time-per-output-token bound, ns (LoadGen's default
    /// 100 ms). mlperf.conf gives it in ms as `<model>.Server.tpot_latency` (llama3_1-8b 100 ms,
    /// -interactive 30 ms).
    server_tpot_latency: u64 => Same,
    /// Infer token latencies from sample latencies.
    infer_token_latencies: bool => Flag,
    /// Scaling factor for inferred token latencies.
    token_latency_scaling_factor: u64 => Same,
}

impl Default for TestSettings {
    /// LoadGen's defaults, read from a value-initialised `mlperf::TestSettings`.
    fn default() -> Self {
        let mut raw = ffi::RawTestSettings::default();
        // SAFETY: `raw` is a valid, writable RawTestSettings whose layout the shim's struct mirrors.
        unsafe { ffi::qdl_lg_settings_default(&mut raw) };
        TestSettings::from_raw(&raw)
    }
}

/// The LLM token-latency bounds of a Server run (see [`TestSettings::llm_bounds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LlmBounds {
    /// Time to first token bound (`server_ttft_latency`).
    pub ttft: Duration,
    /// Time per output token bound (`server_tpot_latency`).
    pub tpot: Duration,
}

/// Guards LoadGen's process-wide FromConfig state (it counts calls in a static).
static FROM_CONFIG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TestSettings {
    /// Applies the mlperf.conf compiled into LoadGen for `model` (e.g. "resnet50", "bert") and
    /// `scenario`. Sets the official seeds, latency bounds and sample counts. It does not count as
    /// a conf file for the once-per-process rule of [`TestSettings::apply_user_conf`].
    ///
    /// For an LLM it also sets `use_token_latencies` and the TTFT/TPOT bounds (read via
    /// [`TestSettings::llm_bounds`]) with `server_target_latency_ns` 0. MLPerf's Interactive
    /// category is `model` + "-interactive" in [`Scenario::Server`], e.g.
    /// `apply_mlperf_conf("llama3_1-8b-interactive", Scenario::Server)`.
    pub fn apply_mlperf_conf(&mut self, model: &str, scenario: Scenario) -> Result<(), LoadgenError> {
        self.apply_config(None, model, scenario, 0)
    }

    /// Applies a user.conf. On the first call in a process LoadGen applies its mlperf.conf first;
    /// a later call in the same process does not (LoadGen logs "Multiple conf files are used").
    pub fn apply_user_conf(&mut self, path: &Path, model: &str, scenario: Scenario) -> Result<(), LoadgenError> {
        self.apply_config(Some(path), model, scenario, 1)
    }

    /// The TTFT/TPOT bounds LoadGen judges a Server run by, or `None` when
    /// `use_token_latencies` is off (LoadGen then ignores them).
    pub fn llm_bounds(&self) -> Option<LlmBounds> {
        self.use_token_latencies.then(|| LlmBounds {
            ttft: Duration::from_nanos(self.server_ttft_latency),
            tpot: Duration::from_nanos(self.server_tpot_latency),
        })
    }

    fn apply_config(
        &mut self,
        path: Option<&Path>,
        model: &str,
        scenario: Scenario,
        conf_type: i32,
    ) -> Result<(), LoadgenError> {
        let what = match path {
            Some(p) => format!("user.conf {}", p.display()),
            None => format!("mlperf.conf for {model}.{}", scenario.config_name()),
        };
        let c_path = CString::new(path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
            .map_err(|_| LoadgenError::Nul("config path"))?;
        let c_model = CString::new(model).map_err(|_| LoadgenError::Nul("model name"))?;
        let c_scenario = CString::new(scenario.config_name()).expect("static scenario names have no NUL");
        let mut raw = self.to_raw();
        let mut err = [0 as c_char; 256];
        let _guard = FROM_CONFIG_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: every pointer is valid for the call: `raw` is writable and mirrors the shim's
        // struct, the strings are NUL-terminated CStrings alive until the call returns, and `err`
        // is a writable buffer of the length passed.
        let code = unsafe {
            ffi::qdl_lg_settings_from_config(
                &mut raw,
                c_path.as_ptr(),
                c_model.as_ptr(),
                c_scenario.as_ptr(),
                conf_type,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if code != 0 {
            // SAFETY: the shim NUL-terminates `err` (it is zero-initialised and strncpy'd to cap-1).
            let detail = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
            return Err(LoadgenError::Config { what, code, detail });
        }
        *self = TestSettings::from_raw(&raw);
        Ok(())
    }
}

/// Where and how LoadGen writes mlperf_log_summary.txt, mlperf_log_detail.txt,
/// mlperf_log_accuracy.json and mlperf_log_trace.json.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Output directory (created if missing).
    pub outdir: PathBuf,
    /// File name prefix ("mlperf_log_").
    pub prefix: String,
    /// File name suffix ("").
    pub suffix: String,
    /// Prefix file names with the date and time.
    pub prefix_with_datetime: bool,
    /// Copy the detail log to stdout.
    pub copy_detail_to_stdout: bool,
    /// Copy the summary to stdout.
    pub copy_summary_to_stdout: bool,
    /// When logs are written.
    pub mode: LoggingMode,
    /// Write the trace (mlperf_log_trace.json). Costly at high rates; off by default here.
    pub enable_trace: bool,
    /// The audit config LoadGen reads if it exists ("audit.config" in the working directory).
    pub audit_config: PathBuf,
}

impl LogSettings {
    /// Settings that write LoadGen's standard file names into `outdir`, without a trace.
    pub fn new(outdir: impl Into<PathBuf>) -> Self {
        LogSettings {
            outdir: outdir.into(),
            prefix: "mlperf_log_".into(),
            suffix: String::new(),
            prefix_with_datetime: false,
            copy_detail_to_stdout: false,
            copy_summary_to_stdout: false,
            mode: LoggingMode::AsyncPoll,
            enable_trace: false,
            audit_config: PathBuf::from("audit.config"),
        }
    }
}

/// LoadGen's id for one issued sample: a move-only token (see the crate docs).
#[repr(transparent)]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ResponseId(usize);

impl ResponseId {
    /// The raw value, e.g. to carry on the wire as a correlation tag. A raw value can never be
    /// turned back into a `ResponseId`.
    pub fn raw(&self) -> u64 {
        self.0 as u64
    }
}

/// One sample of an issued query: who to answer (`id`) and which QSL sample (`index`).
#[derive(Debug)]
pub struct QuerySample {
    /// The token to complete.
    pub id: ResponseId,
    /// The QSL index of the sample's data.
    pub index: usize,
}

/// The samples of one `IssueQuery` call, yielded by value. Each must eventually be completed
/// exactly once through [`Completions`]; Offline delivers all of a run's samples in one call.
pub struct IssuedSamples<'a> {
    raw: std::slice::Iter<'a, ffi::RawQuerySample>,
}

impl Iterator for IssuedSamples<'_> {
    type Item = QuerySample;
    fn next(&mut self) -> Option<QuerySample> {
        self.raw.next().map(|s| QuerySample { id: ResponseId(s.id), index: s.index })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.raw.size_hint()
    }
}

impl ExactSizeIterator for IssuedSamples<'_> {}

/// The system under test, as LoadGen sees it.
pub trait SystemUnderTest: Sync {
    /// The SUT's name, logged by LoadGen; called a few times per test, timed by LoadGen
    /// (`get_sut_name_duration_ns`).
    fn name(&self) -> String;
    /// A query: called from LoadGen's issue thread. Blocking here delays LoadGen's schedule,
    /// which LoadGen measures; that is how a SUT applies back-pressure.
    fn issue_query(&self, samples: IssuedSamples<'_>);
    /// LoadGen has issued everything it will issue for now.
    fn flush_queries(&self);
}

/// The query sample library: the data LoadGen picks samples from.
pub trait QuerySampleLibrary: Sync {
    /// The QSL's name.
    fn name(&self) -> String;
    /// How many samples exist.
    fn total_sample_count(&self) -> usize;
    /// How many samples fit in RAM at once (the performance set).
    fn performance_sample_count(&self) -> usize;
    /// Load these samples; called on the StartTest thread while no sample is in flight.
    fn load_samples_to_ram(&self, indices: &[usize]);
    /// Unload these samples; called on the StartTest thread after all their queries completed.
    fn unload_samples_from_ram(&self, indices: &[usize]);
}

#[repr(C)]
struct RawResponse {
    id: ResponseId,
    data: usize,
    size: usize,
    n_tokens: i64,
}

/// A reusable buffer of completed samples, handed to `QuerySamplesComplete` in one call.
#[derive(Default)]
pub struct CompletionBuffer {
    raw: Vec<RawResponse>,
}

impl CompletionBuffer {
    /// A buffer with room for `capacity` responses before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        CompletionBuffer { raw: Vec::with_capacity(capacity) }
    }

    /// Starts a batch whose response data borrow `'d`.
    pub fn batch<'d>(&mut self) -> Completions<'_, 'd> {
        // Only a leaked (`mem::forget`) batch leaves entries behind, and their data borrows have
        // ended: never hand those to LoadGen. (Their samples stay uncompleted; LoadGen waits.)
        self.raw.clear();
        Completions { buf: &mut self.raw, _data: PhantomData }
    }
}

/// One batch of completions. The responses' bytes must live until the batch is finished, which
/// the `'d` lifetime enforces. Finishing (or dropping) the batch calls `QuerySamplesComplete` once
/// for all of them; LoadGen copies the bytes it logs before returning.
pub struct Completions<'b, 'd> {
    buf: &'b mut Vec<RawResponse>,
    _data: PhantomData<&'d [u8]>,
}

impl<'d> Completions<'_, 'd> {
    /// Adds a completed sample with its response bytes (and no token count: `n_tokens` 0, which
    /// LoadGen reports as an error when `use_token_latencies` is set; use [`Self::push_tokens`]).
    pub fn push(&mut self, id: ResponseId, data: &'d [u8]) {
        self.push_tokens(id, data, 0);
    }

    /// Adds a completed sample with its response bytes and its output token count.
    ///
    /// With `use_token_latencies` LoadGen expects `n_tokens` = the number of output tokens in
    /// `data`, at least 2 (it computes TPOT as (latency − TTFT) / (n_tokens − 1) and logs an error
    /// for 0, 1 or a negative count), and, in every scenario but Offline, the sample's first token
    /// reported before via [`first_token_complete`] or [`FirstTokens`]. Offline only sums the
    /// counts (tokens per second). Without `use_token_latencies` LoadGen only logs the count with
    /// accuracy records.
    pub fn push_tokens(&mut self, id: ResponseId, data: &'d [u8], n_tokens: i64) {
        self.buf.push(RawResponse { id, data: data.as_ptr() as usize, size: data.len(), n_tokens });
    }

    /// How many completions the batch holds.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Hands the batch to LoadGen (also done on drop).
    pub fn finish(self) {}

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // SAFETY: every entry's id is a `ResponseId` LoadGen issued (only the binding constructs
        // them, from IssueQuery) and is moved in here exactly once; `data` points at `size` bytes
        // that outlive this call through the `'d` borrow. `RawResponse` is layout-identical to
        // `mlperf::QuerySampleResponse` (repr(C), transparent id; the shim static_asserts the
        // C++ side).
        unsafe { ffi::qdl_lg_query_samples_complete(self.buf.as_mut_ptr() as *mut c_void, self.buf.len()) };
        // The ids were consumed by LoadGen; clear without running any destructor logic (there is none).
        self.buf.clear();
    }
}

impl Drop for Completions<'_, '_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `mlperf::QuerySampleResponse` for a sample that stays in flight: the id is a copy of a borrowed
/// [`ResponseId`]'s value.
#[repr(C)]
struct RawToken {
    id: usize,
    data: usize,
    size: usize,
    n_tokens: i64,
}

impl RawToken {
    fn new(id: &ResponseId, data: &[u8]) -> Self {
        // LoadGen ignores n_tokens in FirstTokenComplete.
        RawToken { id: id.0, data: data.as_ptr() as usize, size: data.len(), n_tokens: 0 }
    }
}

/// # Safety
/// Every entry must come from [`RawToken::new`] with a [`ResponseId`] that is still borrowed (so
/// not yet completed) and data bytes still borrowed, for the whole call.
unsafe fn report_first_tokens(tokens: &mut [RawToken]) {
    if tokens.is_empty() {
        return;
    }
    // SAFETY: `RawToken` is layout-identical to `mlperf::QuerySampleResponse` (repr(C), same field
    // types as `RawResponse`, which the shim static_asserts). The caller guarantees each id is
    // live: LoadGen issued it (only the binding constructs a ResponseId) and has not been told it
    // completed, because completing consumes the ResponseId, which is borrowed across this call.
    // A sample LoadGen has not seen completed keeps StartTest waiting, so the bookkeeping the id
    // points at is alive. The data bytes are borrowed across the call and LoadGen copies the ones
    // it keeps before returning.
    unsafe { ffi::qdl_lg_first_token_complete(tokens.as_mut_ptr() as *mut c_void, tokens.len()) }
}

/// Reports the first token of one sample that is still in flight (`mlperf::FirstTokenComplete`):
/// LoadGen takes the time now as its time to first token, and copies `data` (the first token's
/// bytes) when it logs the response (accuracy mode, or the sampled performance responses).
///
/// The id is only borrowed: the sample is completed later, once, through [`Completions`], which
/// the borrow makes impossible before this call returns. Call it at most once per sample (LoadGen
/// logs a second call as an error) and from the thread that will complete the sample (see the
/// crate docs). Required before the completion when `use_token_latencies` is set, except in
/// Offline; without `use_token_latencies` LoadGen ignores it but for the accuracy log.
pub fn first_token_complete(id: &ResponseId, data: &[u8]) {
    let mut raw = [RawToken::new(id, data)];
    // SAFETY: `id` and `data` are borrowed for the whole call.
    unsafe { report_first_tokens(&mut raw) }
}

/// A reusable buffer of first tokens, handed to `FirstTokenComplete` in one call.
#[derive(Default)]
pub struct FirstTokenBuffer {
    raw: Vec<RawToken>,
}

impl FirstTokenBuffer {
    /// A buffer with room for `capacity` first tokens before it reallocates.
    pub fn with_capacity(capacity: usize) -> Self {
        FirstTokenBuffer { raw: Vec::with_capacity(capacity) }
    }

    /// Starts a batch that borrows its ids for `'i` and their first tokens' bytes for `'d`.
    pub fn batch<'i, 'd>(&mut self) -> FirstTokens<'_, 'i, 'd> {
        // A leaked batch's entries may name samples completed since: never hand them to LoadGen.
        self.raw.clear();
        FirstTokens { buf: &mut self.raw, _borrows: PhantomData }
    }
}

/// One batch of first tokens (see [`first_token_complete`]). It borrows every [`ResponseId`] and
/// data slice it holds until it is finished (or dropped), which calls `FirstTokenComplete` once
/// for all of them; so none of its samples can be completed before their first token is reported:
///
/// ```compile_fail
/// # use qdl_loadgen::{CompletionBuffer, FirstTokenBuffer, QuerySample};
/// fn answer(first: &mut FirstTokenBuffer, done: &mut CompletionBuffer, sample: QuerySample) {
///     let mut tokens = first.batch();
///     tokens.push(&sample.id, b"tok1");
///     done.batch().push_tokens(sample.id, b"tok1tok2", 2); // error: `sample.id` is still borrowed
///     tokens.finish();
/// }
/// ```
pub struct FirstTokens<'b, 'i, 'd> {
    buf: &'b mut Vec<RawToken>,
    _borrows: PhantomData<(&'i ResponseId, &'d [u8])>,
}

impl<'i, 'd> FirstTokens<'_, 'i, 'd> {
    /// Adds the first token of a sample still in flight.
    pub fn push(&mut self, id: &'i ResponseId, data: &'d [u8]) {
        self.buf.push(RawToken::new(id, data));
    }

    /// How many first tokens the batch holds.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Hands the batch to LoadGen (also done on drop).
    pub fn finish(self) {}
}

impl Drop for FirstTokens<'_, '_, '_> {
    fn drop(&mut self) {
        // SAFETY: every entry was pushed with an id borrowed for `'i` and bytes borrowed for `'d`,
        // both of which outlive `self`.
        unsafe { report_first_tokens(self.buf) };
        self.buf.clear();
    }
}

/// Asks LoadGen to stop the running test (`mlperf::AbortTest`): it ends LoadGen's issue and
/// logging threads. Results of an aborted test are not valid.
pub fn abort_test() {
    // SAFETY: AbortTest takes no arguments and only stops LoadGen's own threads.
    unsafe { ffi::qdl_lg_abort_test() }
}

static TEST_RUNNING: AtomicBool = AtomicBool::new(false);

struct Callbacks<'a> {
    sut: &'a dyn SystemUnderTest,
    qsl: &'a dyn QuerySampleLibrary,
}

/// Runs one LoadGen test and blocks until it has finished and its logs are written.
pub fn start_test(
    sut: &dyn SystemUnderTest,
    qsl: &dyn QuerySampleLibrary,
    settings: &TestSettings,
    log: &LogSettings,
) -> Result<(), LoadgenError> {
    std::fs::create_dir_all(&log.outdir).map_err(|source| LoadgenError::LogDir { path: log.outdir.clone(), source })?;
    if TEST_RUNNING.swap(true, Ordering::AcqRel) {
        return Err(LoadgenError::Busy);
    }
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            TEST_RUNNING.store(false, Ordering::Release);
        }
    }
    let _running = Running;

    let cstr = |s: &str, what| CString::new(s).map_err(|_| LoadgenError::Nul(what));
    let outdir = cstr(&log.outdir.to_string_lossy(), "log directory")?;
    let prefix = cstr(&log.prefix, "log prefix")?;
    let suffix = cstr(&log.suffix, "log suffix")?;
    let audit = cstr(&log.audit_config.to_string_lossy(), "audit config path")?;
    let qsl_name = cstr(&qsl.name(), "QSL name")?;
    let raw_log = ffi::RawLogSettings {
        outdir: outdir.as_ptr(),
        prefix: prefix.as_ptr(),
        suffix: suffix.as_ptr(),
        prefix_with_datetime: log.prefix_with_datetime as u8,
        copy_detail_to_stdout: log.copy_detail_to_stdout as u8,
        copy_summary_to_stdout: log.copy_summary_to_stdout as u8,
        log_mode: log.mode as i32,
        enable_trace: log.enable_trace as u8,
    };
    let raw_settings = settings.to_raw();
    let mut callbacks = Callbacks { sut, qsl };
    let ctx = &mut callbacks as *mut Callbacks<'_> as *mut c_void;

    // SAFETY: `ctx` points at `callbacks`, which outlives both objects (they are freed below,
    // after StartTest returned); the trampolines only read through it.
    let sut_ptr = unsafe { ffi::qdl_lg_sut_new(ctx, name_trampoline, issue_trampoline, flush_trampoline) };
    // SAFETY: as above; `qsl_name` is copied into a std::string by the constructor.
    let qsl_ptr = unsafe {
        ffi::qdl_lg_qsl_new(
            qsl_name.as_ptr(),
            qsl.total_sample_count(),
            qsl.performance_sample_count(),
            ctx,
            load_trampoline,
            unload_trampoline,
        )
    };
    let mut err = [0 as c_char; 512];
    let rc = if sut_ptr.is_null() || qsl_ptr.is_null() {
        -1
    } else {
        // SAFETY: both objects were just created by the shim and are freed only after this call;
        // all strings referenced by `raw_log` and `audit` live until the end of this function.
        unsafe {
            ffi::qdl_lg_start_test(
                sut_ptr,
                qsl_ptr,
                &raw_settings,
                &raw_log,
                audit.as_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        }
    };
    // SAFETY: the pointers came from the matching constructors (null is accepted by delete) and
    // LoadGen no longer uses them once StartTest has returned.
    unsafe {
        ffi::qdl_lg_sut_free(sut_ptr);
        ffi::qdl_lg_qsl_free(qsl_ptr);
    }
    if rc != 0 {
        // SAFETY: zero-initialised buffer, NUL-terminated by the shim.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(LoadgenError::StartTest(if msg.is_empty() {
            "could not create the SUT or QSL".into()
        } else {
            msg
        }));
    }
    Ok(())
}

/// Runs a callback body; a panic cannot unwind into C++, so it aborts the process after printing.
fn guard<R>(what: &str, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "qdl-loadgen: panic inside the LoadGen {what} callback; aborting (a panic cannot unwind into LoadGen)"
            );
            std::process::abort();
        }
    }
}

/// # Safety
/// `ctx` must be the `Callbacks` pointer passed to the shim by [`start_test`].
unsafe fn callbacks<'a>(ctx: *mut c_void) -> &'a Callbacks<'a> {
    // SAFETY: guaranteed by the caller (LoadGen only calls back during StartTest).
    unsafe { &*(ctx as *const Callbacks<'a>) }
}

unsafe extern "C" fn name_trampoline(ctx: *mut c_void, out: *mut c_void) {
    guard("SUT::Name", || {
        // SAFETY: called by the shim with the ctx given in start_test.
        let name = unsafe { callbacks(ctx) }.sut.name();
        // SAFETY: `out` is the std::string the shim passed; the bytes are valid for `len`.
        unsafe { ffi::qdl_lg_string_assign(out, name.as_ptr() as *const c_char, name.len()) };
    })
}

unsafe extern "C" fn issue_trampoline(ctx: *mut c_void, samples: *const ffi::RawQuerySample, count: usize) {
    guard("SUT::IssueQuery", || {
        let raw = if count == 0 {
            &[][..]
        } else {
            // SAFETY: the shim passes the vector's data pointer and size; the vector outlives this call.
            unsafe { std::slice::from_raw_parts(samples, count) }
        };
        // SAFETY: called by the shim with the ctx given in start_test.
        unsafe { callbacks(ctx) }.sut.issue_query(IssuedSamples { raw: raw.iter() });
    })
}

unsafe extern "C" fn flush_trampoline(ctx: *mut c_void) {
    // SAFETY: called by the shim with the ctx given in start_test.
    guard("SUT::FlushQueries", || unsafe { callbacks(ctx) }.sut.flush_queries())
}

unsafe fn indices<'a>(ptr: *const usize, count: usize) -> &'a [usize] {
    if count == 0 {
        &[]
    } else {
        // SAFETY: the shim passes a vector's data pointer and size, valid for the callback.
        unsafe { std::slice::from_raw_parts(ptr, count) }
    }
}

unsafe extern "C" fn load_trampoline(ctx: *mut c_void, ptr: *const usize, count: usize) {
    guard("QSL::LoadSamplesToRam", || {
        // SAFETY: see `indices` and `callbacks`.
        unsafe { callbacks(ctx).qsl.load_samples_to_ram(indices(ptr, count)) }
    })
}

unsafe extern "C" fn unload_trampoline(ctx: *mut c_void, ptr: *const usize, count: usize) {
    guard("QSL::UnloadSamplesFromRam", || {
        // SAFETY: see `indices` and `callbacks`.
        unsafe { callbacks(ctx).qsl.unload_samples_from_ram(indices(ptr, count)) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_pinned_one() {
        assert_eq!(version(), "6.0.17");
    }

    #[test]
    fn defaults_come_from_loadgen() {
        let s = TestSettings::default();
        assert_eq!(s.scenario, Scenario::SingleStream);
        assert_eq!(s.mode, TestMode::PerformanceOnly);
        assert_eq!(s.min_duration_ms, 10_000);
        assert_eq!(s.min_query_count, 100);
        assert_eq!(s.multi_stream_samples_per_query, 8);
        assert_eq!(s.token_latency_scaling_factor, 0, "value-initialised, not garbage");
    }

    #[test]
    fn raw_mirror_is_lossless() {
        let s = TestSettings {
            scenario: Scenario::Server,
            mode: TestMode::AccuracyOnly,
            server_target_qps: 1234.5,
            server_coalesce_queries: true,
            max_query_count: 77,
            accuracy_sample_count_override: 9,
            ..Default::default()
        };
        assert_eq!(TestSettings::from_raw(&s.to_raw()), s);
    }

    const MS: u64 = 1_000_000;

    /// `apply_mlperf_conf` for `model`/`scenario` on LoadGen's defaults.
    fn conf(model: &str, scenario: Scenario) -> TestSettings {
        let mut s = TestSettings { scenario, ..Default::default() };
        s.apply_mlperf_conf(model, scenario).unwrap();
        s
    }

    /// What mlperf.conf 6.0.17 says for an LLM Server run (its times are ms; LoadGen stores ns).
    fn assert_llm_server(s: &TestSettings, ttft_ms: u64, tpot_ms: u64, sample_count: u64) {
        assert!(s.use_token_latencies);
        assert_eq!(s.server_ttft_latency, ttft_ms * MS);
        assert_eq!(s.server_tpot_latency, tpot_ms * MS);
        assert_eq!(
            s.llm_bounds(),
            Some(LlmBounds { ttft: Duration::from_millis(ttft_ms), tpot: Duration::from_millis(tpot_ms) })
        );
        assert_eq!(s.server_target_latency_ns, 0, "only TTFT and TPOT are judged");
        assert!((s.server_target_latency_percentile - 0.99).abs() < 1e-12);
        assert_eq!(s.performance_sample_count_override, sample_count);
        assert!(s.sample_concatenate_permutation);
        assert_eq!(s.min_duration_ms, 600_000);
        assert!(!s.infer_token_latencies);
    }

    #[test]
    fn mlperf_conf_llama3_1_8b_server_and_interactive() {
        assert_llm_server(&conf("llama3_1-8b", Scenario::Server), 2000, 100, 13368);
        assert_llm_server(&conf("llama3_1-8b-interactive", Scenario::Server), 500, 30, 13368);
    }

    #[test]
    fn mlperf_conf_llama2_70b_server_and_interactive() {
        assert_llm_server(&conf("llama2-70b", Scenario::Server), 2000, 200, 24576);
        assert_llm_server(&conf("llama2-70b-interactive", Scenario::Server), 450, 40, 24576);
    }

    #[test]
    fn mlperf_conf_llama3_1_8b_offline() {
        let s = conf("llama3_1-8b", Scenario::Offline);
        assert!(s.use_token_latencies);
        assert_eq!(s.performance_sample_count_override, 13368);
        assert_eq!(s.min_query_count, 13368);
        assert_eq!(s.min_duration_ms, 600_000);
        // FromConfig reads the bounds from the Server section whatever the scenario; Offline does
        // not judge them.
        assert_eq!(s.server_ttft_latency, 2000 * MS);
        assert_eq!(s.server_tpot_latency, 100 * MS);
    }

    #[test]
    fn non_llm_models_have_no_token_bounds() {
        let s = conf("resnet50", Scenario::Server);
        assert!(!s.use_token_latencies);
        assert_eq!(s.llm_bounds(), None);
        assert_eq!(s.server_target_latency_ns, 15 * MS);
        // LoadGen's defaults are left alone.
        assert_eq!(s.server_ttft_latency, 100 * MS);
        assert_eq!(s.server_tpot_latency, 100 * MS);
    }

    #[test]
    fn token_responses_mirror_query_sample_response() {
        // The shim static_asserts RawResponse's C twin against mlperf::QuerySampleResponse;
        // RawToken must match RawResponse.
        assert_eq!(std::mem::size_of::<RawToken>(), std::mem::size_of::<RawResponse>());
        assert_eq!(std::mem::offset_of!(RawToken, data), std::mem::offset_of!(RawResponse, data));
        assert_eq!(std::mem::offset_of!(RawToken, size), std::mem::offset_of!(RawResponse, size));
        assert_eq!(std::mem::offset_of!(RawToken, n_tokens), std::mem::offset_of!(RawResponse, n_tokens));
    }
}

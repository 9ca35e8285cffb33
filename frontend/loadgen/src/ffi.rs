//! Raw declarations of qdl's extern "C" shim (`shim/qdl_loadgen_shim.cc`). Nothing here is public:
//! the safe API in `lib.rs` is the only user.

use std::ffi::{c_char, c_void};

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawTestSettings {
    pub scenario: i32,
    pub mode: i32,
    pub single_stream_expected_latency_ns: f64,
    pub single_stream_target_latency_percentile: f64,
    pub multi_stream_expected_latency_ns: f64,
    pub multi_stream_target_latency_percentile: f64,
    pub multi_stream_samples_per_query: u64,
    pub server_target_qps: f64,
    pub server_target_latency_ns: u64,
    pub server_target_latency_percentile: f64,
    pub server_coalesce_queries: u8,
    pub server_find_peak_qps_decimals_of_precision: i32,
    pub server_find_peak_qps_boundary_step_size: f64,
    pub server_max_async_queries: u64,
    pub server_num_issue_query_threads: u64,
    pub offline_expected_qps: f64,
    pub sample_concatenate_permutation: u8,
    pub min_duration_ms: u64,
    pub max_duration_ms: u64,
    pub min_query_count: u64,
    pub max_query_count: u64,
    pub qsl_rng_seed: u64,
    pub sample_index_rng_seed: u64,
    pub schedule_rng_seed: u64,
    pub accuracy_log_rng_seed: u64,
    pub accuracy_log_probability: f64,
    pub accuracy_log_sampling_target: u64,
    pub test05: u8,
    pub test05_qsl_rng_seed: u64,
    pub test05_sample_index_rng_seed: u64,
    pub test05_schedule_rng_seed: u64,
    pub print_timestamps: u8,
    pub performance_issue_unique: u8,
    pub performance_issue_same: u8,
    pub performance_issue_same_index: u64,
    pub performance_sample_count_override: u64,
    pub accuracy_sample_count_override: u64,
    pub use_token_latencies: u8,
    pub server_ttft_latency: u64,
    pub server_tpot_latency: u64,
    pub infer_token_latencies: u8,
    pub token_latency_scaling_factor: u64,
}

#[repr(C)]
pub(crate) struct RawLogSettings {
    pub outdir: *const c_char,
    pub prefix: *const c_char,
    pub suffix: *const c_char,
    pub prefix_with_datetime: u8,
    pub copy_detail_to_stdout: u8,
    pub copy_summary_to_stdout: u8,
    pub log_mode: i32,
    pub enable_trace: u8,
}

/// Layout-identical to `mlperf::QuerySample` (checked by static_asserts in the shim).
#[repr(C)]
pub(crate) struct RawQuerySample {
    pub id: usize,
    pub index: usize,
}

pub(crate) type NameCb = unsafe extern "C" fn(ctx: *mut c_void, string_out: *mut c_void);
pub(crate) type IssueCb = unsafe extern "C" fn(ctx: *mut c_void, samples: *const RawQuerySample, count: usize);
pub(crate) type FlushCb = unsafe extern "C" fn(ctx: *mut c_void);
pub(crate) type SamplesCb = unsafe extern "C" fn(ctx: *mut c_void, indices: *const usize, count: usize);

unsafe extern "C" {
    pub(crate) fn qdl_lg_version() -> *const c_char;
    pub(crate) fn qdl_lg_string_assign(string_out: *mut c_void, data: *const c_char, len: usize);
    pub(crate) fn qdl_lg_settings_default(out: *mut RawTestSettings);
    pub(crate) fn qdl_lg_settings_from_config(
        io: *mut RawTestSettings,
        path: *const c_char,
        model: *const c_char,
        scenario: *const c_char,
        conf_type: i32,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32;
    pub(crate) fn qdl_lg_sut_new(ctx: *mut c_void, name: NameCb, issue: IssueCb, flush: FlushCb) -> *mut c_void;
    pub(crate) fn qdl_lg_sut_free(sut: *mut c_void);
    pub(crate) fn qdl_lg_qsl_new(
        name: *const c_char,
        total: usize,
        performance: usize,
        ctx: *mut c_void,
        load: SamplesCb,
        unload: SamplesCb,
    ) -> *mut c_void;
    pub(crate) fn qdl_lg_qsl_free(qsl: *mut c_void);
    pub(crate) fn qdl_lg_start_test(
        sut: *mut c_void,
        qsl: *mut c_void,
        settings: *const RawTestSettings,
        log: *const RawLogSettings,
        audit_config: *const c_char,
        err: *mut c_char,
        err_cap: usize,
    ) -> i32;
    pub(crate) fn qdl_lg_query_samples_complete(responses: *mut c_void, count: usize);
    pub(crate) fn qdl_lg_first_token_complete(responses: *mut c_void, count: usize);
    pub(crate) fn qdl_lg_abort_test();
}

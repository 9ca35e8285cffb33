// qdl's own extern "C" shim over the official MLCommons LoadGen C++ API.
//
// LoadGen's bundled bindings/c_api.h is C++ and marked "not tested"; this shim is the only C ABI the
// Rust binding (src/ffi.rs) uses. Rules it keeps:
// - No C++ exception crosses the boundary: every entry point that can throw catches and reports,
//   or, where nobody can take a report (completions of in-flight samples), aborts with a message.
// - Plain structs with fixed-width fields mirror TestSettings / LogSettings field by field; the
//   defaults come from a value-initialised mlperf::TestSettings, so they never drift from LoadGen's.
// - Callbacks carry an opaque `ctx` pointer owned by the Rust side for the duration of StartTest.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "loadgen.h"
#include "query_sample.h"
#include "query_sample_library.h"
#include "system_under_test.h"
#include "test_settings.h"
#include "version.h"

extern "C" {

typedef struct {
  uintptr_t id;
  size_t index;
} qdl_query_sample;

typedef struct {
  uintptr_t id;
  uintptr_t data;
  size_t size;
  int64_t n_tokens;
} qdl_query_sample_response;

typedef struct {
  int32_t scenario;
  int32_t mode;
  double single_stream_expected_latency_ns;
  double single_stream_target_latency_percentile;
  double multi_stream_expected_latency_ns;
  double multi_stream_target_latency_percentile;
  uint64_t multi_stream_samples_per_query;
  double server_target_qps;
  uint64_t server_target_latency_ns;
  double server_target_latency_percentile;
  uint8_t server_coalesce_queries;
  int32_t server_find_peak_qps_decimals_of_precision;
  double server_find_peak_qps_boundary_step_size;
  uint64_t server_max_async_queries;
  uint64_t server_num_issue_query_threads;
  double offline_expected_qps;
  uint8_t sample_concatenate_permutation;
  uint64_t min_duration_ms;
  uint64_t max_duration_ms;
  uint64_t min_query_count;
  uint64_t max_query_count;
  uint64_t qsl_rng_seed;
  uint64_t sample_index_rng_seed;
  uint64_t schedule_rng_seed;
  uint64_t accuracy_log_rng_seed;
  double accuracy_log_probability;
  uint64_t accuracy_log_sampling_target;
  uint8_t test05;
  uint64_t test05_qsl_rng_seed;
  uint64_t test05_sample_index_rng_seed;
  uint64_t test05_schedule_rng_seed;
  uint8_t print_timestamps;
  uint8_t performance_issue_unique;
  uint8_t performance_issue_same;
  uint64_t performance_issue_same_index;
  uint64_t performance_sample_count_override;
  uint64_t accuracy_sample_count_override;
  uint8_t use_token_latencies;
  uint64_t server_ttft_latency;
  uint64_t server_tpot_latency;
  uint8_t infer_token_latencies;
  uint64_t token_latency_scaling_factor;
} qdl_test_settings;

typedef struct {
  const char* outdir;
  const char* prefix;
  const char* suffix;
  uint8_t prefix_with_datetime;
  uint8_t copy_detail_to_stdout;
  uint8_t copy_summary_to_stdout;
  int32_t log_mode;
  uint8_t enable_trace;
} qdl_log_settings;

typedef void (*qdl_name_cb)(void* ctx, void* string_out);
typedef void (*qdl_issue_cb)(void* ctx, const qdl_query_sample* samples, size_t count);
typedef void (*qdl_flush_cb)(void* ctx);
typedef void (*qdl_qsl_samples_cb)(void* ctx, const size_t* indices, size_t count);

}  // extern "C"

static_assert(sizeof(qdl_query_sample) == sizeof(mlperf::QuerySample), "QuerySample layout");
static_assert(offsetof(qdl_query_sample, index) == offsetof(mlperf::QuerySample, index),
              "QuerySample layout");
static_assert(sizeof(qdl_query_sample_response) == sizeof(mlperf::QuerySampleResponse),
              "QuerySampleResponse layout");
static_assert(offsetof(qdl_query_sample_response, data) ==
                  offsetof(mlperf::QuerySampleResponse, data),
              "QuerySampleResponse layout");
static_assert(offsetof(qdl_query_sample_response, size) ==
                  offsetof(mlperf::QuerySampleResponse, size),
              "QuerySampleResponse layout");
static_assert(offsetof(qdl_query_sample_response, n_tokens) ==
                  offsetof(mlperf::QuerySampleResponse, n_tokens),
              "QuerySampleResponse layout");

namespace {

void copy_error(const char* what, char* err, size_t cap) {
  if (err == nullptr || cap == 0) return;
  std::strncpy(err, what, cap - 1);
  err[cap - 1] = '\0';
}

[[noreturn]] void die_in(const char* where, const char* what) {
  std::fprintf(stderr, "qdl-loadgen: C++ exception in LoadGen %s: %s; aborting\n", where, what);
  std::abort();
}

mlperf::TestSettings to_cpp(const qdl_test_settings& s) {
  // Value-initialise first: token_latency_scaling_factor has no default initialiser in LoadGen.
  mlperf::TestSettings t{};
  t.scenario = static_cast<mlperf::TestScenario>(s.scenario);
  t.mode = static_cast<mlperf::TestMode>(s.mode);
  t.single_stream_expected_latency_ns = s.single_stream_expected_latency_ns;
  t.single_stream_target_latency_percentile = s.single_stream_target_latency_percentile;
  t.multi_stream_expected_latency_ns = s.multi_stream_expected_latency_ns;
  t.multi_stream_target_latency_percentile = s.multi_stream_target_latency_percentile;
  t.multi_stream_samples_per_query = s.multi_stream_samples_per_query;
  t.server_target_qps = s.server_target_qps;
  t.server_target_latency_ns = s.server_target_latency_ns;
  t.server_target_latency_percentile = s.server_target_latency_percentile;
  t.server_coalesce_queries = s.server_coalesce_queries != 0;
  t.server_find_peak_qps_decimals_of_precision = s.server_find_peak_qps_decimals_of_precision;
  t.server_find_peak_qps_boundary_step_size = s.server_find_peak_qps_boundary_step_size;
  t.server_max_async_queries = s.server_max_async_queries;
  t.server_num_issue_query_threads = s.server_num_issue_query_threads;
  t.offline_expected_qps = s.offline_expected_qps;
  t.sample_concatenate_permutation = s.sample_concatenate_permutation != 0;
  t.min_duration_ms = s.min_duration_ms;
  t.max_duration_ms = s.max_duration_ms;
  t.min_query_count = s.min_query_count;
  t.max_query_count = s.max_query_count;
  t.qsl_rng_seed = s.qsl_rng_seed;
  t.sample_index_rng_seed = s.sample_index_rng_seed;
  t.schedule_rng_seed = s.schedule_rng_seed;
  t.accuracy_log_rng_seed = s.accuracy_log_rng_seed;
  t.accuracy_log_probability = s.accuracy_log_probability;
  t.accuracy_log_sampling_target = s.accuracy_log_sampling_target;
  t.test05 = s.test05 != 0;
  t.test05_qsl_rng_seed = s.test05_qsl_rng_seed;
  t.test05_sample_index_rng_seed = s.test05_sample_index_rng_seed;
  t.test05_schedule_rng_seed = s.test05_schedule_rng_seed;
  t.print_timestamps = s.print_timestamps != 0;
  t.performance_issue_unique = s.performance_issue_unique != 0;
  t.performance_issue_same = s.performance_issue_same != 0;
  t.performance_issue_same_index = s.performance_issue_same_index;
  t.performance_sample_count_override = s.performance_sample_count_override;
  t.accuracy_sample_count_override = s.accuracy_sample_count_override;
  t.use_token_latencies = s.use_token_latencies != 0;
  t.server_ttft_latency = s.server_ttft_latency;
  t.server_tpot_latency = s.server_tpot_latency;
  t.infer_token_latencies = s.infer_token_latencies != 0;
  t.token_latency_scaling_factor = s.token_latency_scaling_factor;
  return t;
}

void from_cpp(const mlperf::TestSettings& t, qdl_test_settings* s) {
  s->scenario = static_cast<int32_t>(t.scenario);
  s->mode = static_cast<int32_t>(t.mode);
  s->single_stream_expected_latency_ns = t.single_stream_expected_latency_ns;
  s->single_stream_target_latency_percentile = t.single_stream_target_latency_percentile;
  s->multi_stream_expected_latency_ns = t.multi_stream_expected_latency_ns;
  s->multi_stream_target_latency_percentile = t.multi_stream_target_latency_percentile;
  s->multi_stream_samples_per_query = t.multi_stream_samples_per_query;
  s->server_target_qps = t.server_target_qps;
  s->server_target_latency_ns = t.server_target_latency_ns;
  s->server_target_latency_percentile = t.server_target_latency_percentile;
  s->server_coalesce_queries = t.server_coalesce_queries ? 1 : 0;
  s->server_find_peak_qps_decimals_of_precision = t.server_find_peak_qps_decimals_of_precision;
  s->server_find_peak_qps_boundary_step_size = t.server_find_peak_qps_boundary_step_size;
  s->server_max_async_queries = t.server_max_async_queries;
  s->server_num_issue_query_threads = t.server_num_issue_query_threads;
  s->offline_expected_qps = t.offline_expected_qps;
  s->sample_concatenate_permutation = t.sample_concatenate_permutation ? 1 : 0;
  s->min_duration_ms = t.min_duration_ms;
  s->max_duration_ms = t.max_duration_ms;
  s->min_query_count = t.min_query_count;
  s->max_query_count = t.max_query_count;
  s->qsl_rng_seed = t.qsl_rng_seed;
  s->sample_index_rng_seed = t.sample_index_rng_seed;
  s->schedule_rng_seed = t.schedule_rng_seed;
  s->accuracy_log_rng_seed = t.accuracy_log_rng_seed;
  s->accuracy_log_probability = t.accuracy_log_probability;
  s->accuracy_log_sampling_target = t.accuracy_log_sampling_target;
  s->test05 = t.test05 ? 1 : 0;
  s->test05_qsl_rng_seed = t.test05_qsl_rng_seed;
  s->test05_sample_index_rng_seed = t.test05_sample_index_rng_seed;
  s->test05_schedule_rng_seed = t.test05_schedule_rng_seed;
  s->print_timestamps = t.print_timestamps ? 1 : 0;
  s->performance_issue_unique = t.performance_issue_unique ? 1 : 0;
  s->performance_issue_same = t.performance_issue_same ? 1 : 0;
  s->performance_issue_same_index = t.performance_issue_same_index;
  s->performance_sample_count_override = t.performance_sample_count_override;
  s->accuracy_sample_count_override = t.accuracy_sample_count_override;
  s->use_token_latencies = t.use_token_latencies ? 1 : 0;
  s->server_ttft_latency = t.server_ttft_latency;
  s->server_tpot_latency = t.server_tpot_latency;
  s->infer_token_latencies = t.infer_token_latencies ? 1 : 0;
  s->token_latency_scaling_factor = t.token_latency_scaling_factor;
}

class RustSut final : public mlperf::SystemUnderTest {
 public:
  RustSut(void* ctx, qdl_name_cb name, qdl_issue_cb issue, qdl_flush_cb flush)
      : ctx_(ctx), name_cb_(name), issue_cb_(issue), flush_cb_(flush) {}

  // LoadGen keeps the returned reference only until the next call; each call asks Rust again, so
  // the name can involve a network round trip (the Network division requires one).
  const std::string& Name() override {
    std::string fresh;
    name_cb_(ctx_, &fresh);
    name_.swap(fresh);
    return name_;
  }

  void IssueQuery(const std::vector<mlperf::QuerySample>& samples) override {
    issue_cb_(ctx_, reinterpret_cast<const qdl_query_sample*>(samples.data()), samples.size());
  }

  void FlushQueries() override { flush_cb_(ctx_); }

 private:
  void* ctx_;
  qdl_name_cb name_cb_;
  qdl_issue_cb issue_cb_;
  qdl_flush_cb flush_cb_;
  std::string name_;
};

class RustQsl final : public mlperf::QuerySampleLibrary {
 public:
  RustQsl(const char* name, size_t total, size_t performance, void* ctx, qdl_qsl_samples_cb load,
          qdl_qsl_samples_cb unload)
      : name_(name), total_(total), performance_(performance), ctx_(ctx), load_(load),
        unload_(unload) {}

  const std::string& Name() override { return name_; }
  size_t TotalSampleCount() override { return total_; }
  size_t PerformanceSampleCount() override { return performance_; }
  void LoadSamplesToRam(const std::vector<mlperf::QuerySampleIndex>& samples) override {
    load_(ctx_, samples.data(), samples.size());
  }
  void UnloadSamplesFromRam(const std::vector<mlperf::QuerySampleIndex>& samples) override {
    unload_(ctx_, samples.data(), samples.size());
  }

 private:
  std::string name_;
  size_t total_;
  size_t performance_;
  void* ctx_;
  qdl_qsl_samples_cb load_;
  qdl_qsl_samples_cb unload_;
};

}  // namespace

extern "C" {

const char* qdl_lg_version(void) { return mlperf::LoadgenVersion().c_str(); }

void qdl_lg_string_assign(void* string_out, const char* data, size_t len) {
  static_cast<std::string*>(string_out)->assign(data, len);
}

void qdl_lg_settings_default(qdl_test_settings* out) {
  mlperf::TestSettings t{};
  from_cpp(t, out);
}

// conf_type 0: the mlperf.conf compiled into LoadGen (path ignored); 1: a user.conf, which on the
// first call in a process also applies mlperf.conf first; 2: a config file without that rule.
// Returns LoadGen's own code (0 = ok, negative errno otherwise) or -1000 on a C++ exception.
int32_t qdl_lg_settings_from_config(qdl_test_settings* io, const char* path, const char* model,
                                    const char* scenario, int32_t conf_type, char* err,
                                    size_t err_cap) {
  try {
    mlperf::TestSettings t = to_cpp(*io);
    int rc = t.FromConfig(path, model, scenario, conf_type);
    from_cpp(t, io);
    return rc;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_cap);
    return -1000;
  } catch (...) {
    copy_error("unknown C++ exception in TestSettings::FromConfig", err, err_cap);
    return -1000;
  }
}

void* qdl_lg_sut_new(void* ctx, qdl_name_cb name, qdl_issue_cb issue, qdl_flush_cb flush) {
  try {
    return new RustSut(ctx, name, issue, flush);
  } catch (...) {
    return nullptr;
  }
}

void qdl_lg_sut_free(void* sut) { delete static_cast<RustSut*>(sut); }

void* qdl_lg_qsl_new(const char* name, size_t total, size_t performance, void* ctx,
                     qdl_qsl_samples_cb load, qdl_qsl_samples_cb unload) {
  try {
    return new RustQsl(name, total, performance, ctx, load, unload);
  } catch (...) {
    return nullptr;
  }
}

void qdl_lg_qsl_free(void* qsl) { delete static_cast<RustQsl*>(qsl); }

int32_t qdl_lg_start_test(void* sut, void* qsl, const qdl_test_settings* settings,
                          const qdl_log_settings* log, const char* audit_config, char* err,
                          size_t err_cap) {
  try {
    mlperf::TestSettings t = to_cpp(*settings);
    mlperf::LogSettings l;
    l.log_output.outdir = log->outdir;
    l.log_output.prefix = log->prefix;
    l.log_output.suffix = log->suffix;
    l.log_output.prefix_with_datetime = log->prefix_with_datetime != 0;
    l.log_output.copy_detail_to_stdout = log->copy_detail_to_stdout != 0;
    l.log_output.copy_summary_to_stdout = log->copy_summary_to_stdout != 0;
    l.log_mode = static_cast<mlperf::LoggingMode>(log->log_mode);
    l.enable_trace = log->enable_trace != 0;
    mlperf::StartTest(static_cast<RustSut*>(sut), static_cast<RustQsl*>(qsl), t, l, audit_config);
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_cap);
    return -1;
  } catch (...) {
    copy_error("unknown C++ exception in StartTest", err, err_cap);
    return -1;
  }
}

// QuerySamplesComplete and FirstTokenComplete can only throw std::bad_alloc (LoadGen copies
// response bytes and queues a log record). The samples are in flight and there is no one to report
// a failure to, so instead of letting the exception cross into Rust the shim aborts with a message.
void qdl_lg_query_samples_complete(qdl_query_sample_response* responses, size_t count) {
  try {
    mlperf::QuerySamplesComplete(reinterpret_cast<mlperf::QuerySampleResponse*>(responses), count);
  } catch (const std::exception& e) {
    die_in("QuerySamplesComplete", e.what());
  } catch (...) {
    die_in("QuerySamplesComplete", "unknown C++ exception");
  }
}

// Reports the first token of samples that are still in flight. LoadGen records the time, keeps a
// copy of the bytes when it logs the response (accuracy mode or sampled), and ignores n_tokens.
void qdl_lg_first_token_complete(qdl_query_sample_response* responses, size_t count) {
  try {
    mlperf::FirstTokenComplete(reinterpret_cast<mlperf::QuerySampleResponse*>(responses), count);
  } catch (const std::exception& e) {
    die_in("FirstTokenComplete", e.what());
  } catch (...) {
    die_in("FirstTokenComplete", "unknown C++ exception");
  }
}

void qdl_lg_abort_test(void) { mlperf::AbortTest(); }

}  // extern "C"

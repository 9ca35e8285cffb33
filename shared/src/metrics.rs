//! Metric names shared by both nodes, with their descriptions. `docs/metrics.md` lists them with
//! types, labels and units. Labels are bounded: accelerator, connection and worker labels name
//! configured resources, workload/scenario/mode labels name the run, never samples.

pub mod process;

/// Metrics both nodes export.
pub mod common {
    /// Gauge = 1, labels `version` (the crate's version) and `node` ("frontend", "accelerator").
    pub const BUILD_INFO: &str = "qdl_build_info";
}

/// Per-sample breakdown histograms (stages, residence, queue delay, send delay) record one sample
/// in this many, which keeps their cost low at hundreds of thousands of samples per second; the
/// end-to-end latency histogram and every counter see every sample.
pub const SAMPLE_EVERY: u64 = 8;

/// Picks the samples a breakdown histogram records: every [`SAMPLE_EVERY`]-th. One per owner
/// (actor, worker, transport); never shared between threads.
#[derive(Debug, Default)]
pub struct Sampler(u64);

impl Sampler {
    /// Whether to record this sample.
    #[inline]
    pub fn hit(&mut self) -> bool {
        self.0 = self.0.wrapping_add(1);
        self.0.is_multiple_of(SAMPLE_EVERY)
    }
}

/// Histogram buckets for latencies in seconds (50 µs to 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.13, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Histogram buckets for batch sizes and frames per system call.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// RDMA transport metric names (both nodes; label `role` is "frontend" or "accelerator").
pub mod rdma {
    /// Counter: completion-queue polls.
    pub const CQ_POLLS: &str = "qdl_rdma_cq_polls_total";
    /// Histogram: completions per non-empty poll.
    pub const COMPLETIONS_PER_POLL: &str = "qdl_rdma_completions_per_poll";
    /// Counter: completion-channel events (event mode).
    pub const CQ_EVENTS: &str = "qdl_rdma_cq_events_total";
    /// Counter, label `kind` (signalled, unsignalled): writes posted.
    pub const POSTS: &str = "qdl_rdma_posts_total";
    /// Counter: writes posted inline.
    pub const INLINE_POSTS: &str = "qdl_rdma_inline_posts_total";
    /// Counter: doorbells (chains of writes posted at once).
    pub const DOORBELLS: &str = "qdl_rdma_doorbells_total";
    /// Counter: payloads copied into a staging slot because their memory was not registered.
    pub const STAGED: &str = "qdl_rdma_staged_total";
    /// Counter, label `status`: work completions with an error status.
    pub const WC_ERRORS: &str = "qdl_rdma_wc_errors_total";
}

/// Frontend metric names.
pub mod frontend {
    /// Counter: samples LoadGen issued to the QDL.
    pub const SAMPLES_ISSUED: &str = "qdl_frontend_samples_issued_total";
    /// Counter: samples completed back to LoadGen.
    pub const SAMPLES_COMPLETED: &str = "qdl_frontend_samples_completed_total";
    /// Counter, label `kind`: samples that failed (accelerator error frames, lost connections).
    pub const SAMPLE_ERRORS: &str = "qdl_frontend_sample_errors_total";
    /// Counter, label `accelerator`: bytes written on data connections.
    pub const BYTES_SENT: &str = "qdl_frontend_sent_bytes_total";
    /// Counter, label `accelerator`: bytes read on data connections.
    pub const BYTES_RECEIVED: &str = "qdl_frontend_received_bytes_total";
    /// Counter, label `accelerator`: write system calls on data connections.
    pub const WRITE_CALLS: &str = "qdl_frontend_write_calls_total";
    /// Counter, label `accelerator`: read system calls on data connections (TCP's "polls").
    pub const READ_CALLS: &str = "qdl_frontend_read_calls_total";
    /// Gauge, labels `accelerator`, `connection`: samples in flight.
    pub const IN_FLIGHT: &str = "qdl_frontend_inflight";
    /// Gauge, labels `accelerator`, `connection`: free slots.
    pub const FREE_SLOTS: &str = "qdl_frontend_free_slots";
    /// Histogram (s): request sent to response received, per sample.
    pub const LATENCY: &str = "qdl_frontend_latency_seconds";
    /// Counter: times LoadGen's issue thread waited because every slot was in flight.
    pub const ISSUE_WAITS: &str = "qdl_frontend_issue_waits_total";
    /// Counter: samples of a lost connection placed again on another one.
    pub const REDISPATCHED: &str = "qdl_frontend_redispatched_total";
    /// Counter: responses that arrived on a given-up connection after its samples were
    /// re-dispatched; dropped, never reported to LoadGen.
    pub const LATE_RESPONSES: &str = "qdl_frontend_late_responses_total";
    /// Counter, per accelerator: times a lost accelerator came back into a running test.
    pub const REJOINS: &str = "qdl_frontend_rejoins_total";
    /// Gauge, label `accelerator`: last heartbeat round trip, s.
    pub const HEARTBEAT_RTT: &str = "qdl_frontend_heartbeat_rtt_seconds";
    /// Gauge, label `accelerator`: 1 while the control session is up.
    pub const ACCELERATOR_UP: &str = "qdl_frontend_accelerator_up";
    /// Counter, label `kind`: connection-level errors (protocol, io, closed).
    pub const CONNECTION_ERRORS: &str = "qdl_frontend_connection_errors_total";
    /// Histogram (s), label `stage`: per-sample stages: `issue` (LoadGen issued → request queued
    /// on a connection), `send` (queued → last byte written), `network` (round trip minus the
    /// accelerator's residence: both hosts' stacks and the wire, send included), `accelerator`
    /// (the accelerator's residence, from the response header).
    pub const STAGE: &str = "qdl_frontend_stage_seconds";
    /// Histogram (s): duration of one QuerySamplesComplete call (a batch of completions).
    pub const COMPLETE: &str = "qdl_frontend_complete_seconds";
    /// Histogram, label `accelerator`: request frames completed per write system call.
    pub const FRAMES_PER_WRITE: &str = "qdl_frontend_frames_per_write";
    /// Histogram, label `accelerator`: response frames delivered per read system call.
    pub const FRAMES_PER_READ: &str = "qdl_frontend_frames_per_read";
    /// Gauge, labels `accelerator`, `connection`: 1 while the data connection is up.
    pub const CONNECTION_UP: &str = "qdl_frontend_connection_up";
    /// Gauge, labels `workload`, `scenario`, `mode`: 1 while LoadGen runs the test, 0 after.
    pub const TEST_RUNNING: &str = "qdl_frontend_test_running";
    /// Gauge (s), labels `workload`, `scenario`, `quantile`: the scenario's latency bound (Server:
    /// LoadGen's target latency at its target percentile); absent where the scenario has none.
    pub const LATENCY_BOUND: &str = "qdl_frontend_latency_bound_seconds";
    /// Histogram (s), label `accelerator`: generative samples, LoadGen's issue → first token
    /// received (what LoadGen measures as TTFT, without its own overhead).
    pub const TIME_TO_FIRST_TOKEN: &str = "qdl_frontend_time_to_first_token_seconds";
    /// Histogram (s), label `accelerator`: generative samples, the part of the first token's round
    /// trip spent outside the accelerator (round trip from the request being queued, less the
    /// accelerator's reported time to the first token): what the network adds to TTFT.
    pub const FIRST_TOKEN_OUTSIDE: &str = "qdl_frontend_first_token_outside_accelerator_seconds";
    /// Histogram (s), label `accelerator`: generative samples, (completion − first token) /
    /// (tokens − 1).
    pub const TIME_PER_OUTPUT_TOKEN: &str = "qdl_frontend_time_per_output_token_seconds";
    /// Counter, label `accelerator`: output tokens of completed generative samples.
    pub const COMPLETED_TOKENS: &str = "qdl_frontend_completed_tokens_total";
}

/// Accelerator metric names.
pub mod accelerator {
    /// Gauge = 1, label `accelerator`: this accelerator's name, the value of the frontend's
    /// `accelerator` label (join on `job, instance` to name an accelerator's other series).
    pub const INFO: &str = "qdl_accelerator_info";
    /// Gauge, 1 per worker: what it runs (labels worker, backend, provider, device).
    pub const BACKEND_INFO: &str = "qdl_accelerator_backend_info";
    /// Counter: requests received.
    pub const SAMPLES_RECEIVED: &str = "qdl_accelerator_samples_received_total";
    /// Counter: responses queued.
    pub const SAMPLES_COMPLETED: &str = "qdl_accelerator_samples_completed_total";
    /// Counter, label `kind`: samples answered with an error frame.
    pub const SAMPLE_ERRORS: &str = "qdl_accelerator_sample_errors_total";
    /// Counter: bytes read on data connections.
    pub const BYTES_RECEIVED: &str = "qdl_accelerator_received_bytes_total";
    /// Counter: bytes written on data connections.
    pub const BYTES_SENT: &str = "qdl_accelerator_sent_bytes_total";
    /// Histogram, labels `worker`, `workload`: batch sizes formed.
    pub const BATCH_SIZE: &str = "qdl_accelerator_batch_size";
    /// Histogram (s), labels `worker`, `workload`: time samples waited in the batcher's queue.
    pub const QUEUE_DELAY: &str = "qdl_accelerator_queue_delay_seconds";
    /// Gauge, label `worker`: samples waiting in the batcher's queue.
    pub const QUEUE_DEPTH: &str = "qdl_accelerator_queue_depth";
    /// Histogram (s), labels `worker`, `workload`: backend time per batch (gather included).
    pub const INFERENCE: &str = "qdl_accelerator_inference_seconds";
    /// Gauge: live sessions.
    pub const SESSIONS: &str = "qdl_accelerator_sessions";
    /// Gauge: attached data connections.
    pub const CONNECTIONS: &str = "qdl_accelerator_connections";
    /// Counter, label `kind`: errors of established data connections (protocol, io, closed).
    pub const CONNECTION_ERRORS: &str = "qdl_accelerator_connection_errors_total";
    /// Counter, label `reason`: connections refused, evicted or timed out before their handshake
    /// completed (admission limits, bad preamble, TLS, attach, authentication).
    pub const CONNECTIONS_REFUSED: &str = "qdl_accelerator_connections_refused_total";
    /// The `reason` labels of [`CONNECTIONS_REFUSED`].
    pub const CONNECTIONS_REFUSED_REASONS: &[&str] = &[
        "max-connections",
        "peer-limit",
        "peer-pending-limit",
        "evicted",
        "preamble-timeout",
        "handshake-timeout",
        "bad-preamble",
        "tls",
        "attach",
        "unauthorized",
        "handshake",
    ];
    /// Histogram (s): per sample, request read → response queued.
    pub const RESIDENCE: &str = "qdl_accelerator_residence_seconds";
    /// Histogram: response frames per write system call.
    pub const FRAMES_PER_WRITE: &str = "qdl_accelerator_frames_per_write";
    /// Histogram: request frames completed per read system call.
    pub const FRAMES_PER_READ: &str = "qdl_accelerator_frames_per_read";
    /// Histogram (s), label `worker`: generative samples, request read → first token sampled
    /// (the accelerator's share of TTFT).
    pub const TIME_TO_FIRST_TOKEN: &str = "qdl_accelerator_time_to_first_token_seconds";
    /// Histogram (s), label `worker`: generative samples, time per output token after the first
    /// ((finished − first token) / (tokens − 1)).
    pub const TIME_PER_OUTPUT_TOKEN: &str = "qdl_accelerator_time_per_output_token_seconds";
    /// Counter, label `worker`: output tokens generated.
    pub const TOKENS_GENERATED: &str = "qdl_accelerator_generated_tokens_total";
    /// Counter, label `worker`: prompt tokens prefilled.
    pub const TOKENS_PREFILLED: &str = "qdl_accelerator_prefilled_tokens_total";
    /// Gauge, label `worker`: sequences running in the engine (prefilling or decoding).
    pub const RUNNING_SEQUENCES: &str = "qdl_accelerator_running_sequences";
    /// Gauge, label `worker`: generative requests waiting for admission.
    pub const QUEUED_REQUESTS: &str = "qdl_accelerator_queued_requests";
    /// Gauge, label `worker`: context (KV) tokens reserved by the running sequences.
    pub const KV_TOKENS_USED: &str = "qdl_accelerator_kv_tokens_used";
    /// Gauge, label `worker`: the context (KV) budget, tokens (`generation.kv_tokens`).
    pub const KV_TOKENS_BUDGET: &str = "qdl_accelerator_kv_tokens_budget";
    /// Histogram (s), labels `worker`, `kind` (`prefill`: the step holds prompt tokens,
    /// `decode`: decode tokens only): engine step times.
    pub const STEP: &str = "qdl_accelerator_step_seconds";
}

/// Registers descriptions and units of every frontend metric with the installed recorder.
pub fn describe_frontend() {
    describe_common("frontend");
    use frontend::*;
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SAMPLES_ISSUED, Unit::Count, "Samples LoadGen issued to the QDL");
    describe_counter!(SAMPLES_COMPLETED, Unit::Count, "Samples completed back to LoadGen");
    describe_counter!(SAMPLE_ERRORS, Unit::Count, "Samples that failed, by kind");
    describe_counter!(BYTES_SENT, Unit::Bytes, "Bytes written on data connections");
    describe_counter!(BYTES_RECEIVED, Unit::Bytes, "Bytes read on data connections");
    describe_counter!(WRITE_CALLS, Unit::Count, "Write system calls on data connections");
    describe_counter!(READ_CALLS, Unit::Count, "Read system calls on data connections");
    describe_gauge!(IN_FLIGHT, Unit::Count, "Samples in flight per connection");
    describe_gauge!(FREE_SLOTS, Unit::Count, "Free slots per connection");
    describe_histogram!(LATENCY, Unit::Seconds, "Request sent to response received");
    describe_counter!(ISSUE_WAITS, Unit::Count, "Times the issue thread waited for a free slot");
    describe_counter!(REDISPATCHED, Unit::Count, "Samples of a lost connection placed again on another one");
    describe_counter!(LATE_RESPONSES, Unit::Count, "Late responses of re-dispatched samples, dropped");
    describe_counter!(REJOINS, Unit::Count, "Times a lost accelerator came back into a running test");
    describe_histogram!(TIME_TO_FIRST_TOKEN, Unit::Seconds, "Generative samples: LoadGen's issue to the first token");
    describe_histogram!(
        FIRST_TOKEN_OUTSIDE,
        Unit::Seconds,
        "Generative samples: the first token's round trip less the accelerator's time to it"
    );
    describe_histogram!(
        TIME_PER_OUTPUT_TOKEN,
        Unit::Seconds,
        "Generative samples: time per output token after the first"
    );
    describe_counter!(COMPLETED_TOKENS, Unit::Count, "Output tokens of completed generative samples");
    describe_gauge!(HEARTBEAT_RTT, Unit::Seconds, "Last control heartbeat round trip");
    describe_gauge!(ACCELERATOR_UP, Unit::Count, "1 while the accelerator's control session is up");
    describe_counter!(CONNECTION_ERRORS, Unit::Count, "Connection-level errors, by kind");
    describe_histogram!(STAGE, Unit::Seconds, "Per-sample stages: issue, send, network, accelerator");
    describe_histogram!(COMPLETE, Unit::Seconds, "Duration of one QuerySamplesComplete call");
    describe_histogram!(FRAMES_PER_WRITE, Unit::Count, "Request frames completed per write system call");
    describe_histogram!(FRAMES_PER_READ, Unit::Count, "Response frames delivered per read system call");
    describe_gauge!(CONNECTION_UP, Unit::Count, "1 while the data connection is up");
    describe_gauge!(TEST_RUNNING, Unit::Count, "1 while LoadGen runs the test (labels: workload, scenario, mode)");
    describe_gauge!(LATENCY_BOUND, Unit::Seconds, "The scenario's latency bound at its quantile (Server)");
    // Error counters exist from the start (at 0), so dashboards and alerts see them before the
    // first error.
    for kind in ["closed", "io", "protocol", "accelerator-lost"] {
        let _ = metrics::counter!(CONNECTION_ERRORS, "kind" => kind);
    }
    let _ = metrics::counter!(SAMPLE_ERRORS, "kind" => "accelerator");
}

/// Registers descriptions and units of every accelerator metric with the installed recorder;
/// `name` is the accelerator's (`qdl_accelerator_info`).
pub fn describe_accelerator(name: &str) {
    describe_common("accelerator");
    use accelerator::*;
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(INFO, "1: this accelerator's name (label accelerator), as frontends label its series");
    metrics::gauge!(INFO, "accelerator" => name.to_string()).set(1.0);
    describe_counter!(SAMPLES_RECEIVED, Unit::Count, "Requests received");
    describe_counter!(SAMPLES_COMPLETED, Unit::Count, "Responses queued");
    describe_counter!(SAMPLE_ERRORS, Unit::Count, "Samples answered with an error, by kind");
    describe_counter!(BYTES_RECEIVED, Unit::Bytes, "Bytes read on data connections");
    describe_counter!(BYTES_SENT, Unit::Bytes, "Bytes written on data connections");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Batch sizes formed");
    describe_histogram!(QUEUE_DELAY, Unit::Seconds, "Time samples waited for a batch");
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "Samples waiting in the batcher's queue");
    describe_histogram!(INFERENCE, Unit::Seconds, "Backend time per batch, gather included");
    describe_gauge!(BACKEND_INFO, Unit::Count, "1 per worker: its backend, execution provider and device");
    describe_gauge!(SESSIONS, Unit::Count, "Live sessions");
    describe_gauge!(CONNECTIONS, Unit::Count, "Attached data connections");
    describe_counter!(CONNECTION_ERRORS, Unit::Count, "Connection-level errors, by kind");
    describe_histogram!(RESIDENCE, Unit::Seconds, "Per sample, request read to response queued");
    describe_histogram!(FRAMES_PER_WRITE, Unit::Count, "Response frames per write system call");
    describe_histogram!(FRAMES_PER_READ, Unit::Count, "Request frames completed per read system call");
    describe_histogram!(TIME_TO_FIRST_TOKEN, Unit::Seconds, "Generative samples: request read to first token sampled");
    describe_histogram!(
        TIME_PER_OUTPUT_TOKEN,
        Unit::Seconds,
        "Generative samples: time per output token after the first"
    );
    describe_counter!(TOKENS_GENERATED, Unit::Count, "Output tokens generated");
    describe_counter!(TOKENS_PREFILLED, Unit::Count, "Prompt tokens prefilled");
    describe_gauge!(RUNNING_SEQUENCES, Unit::Count, "Sequences running in the engine");
    describe_gauge!(QUEUED_REQUESTS, Unit::Count, "Generative requests waiting for admission");
    describe_gauge!(KV_TOKENS_USED, Unit::Count, "Context (KV) tokens reserved by running sequences");
    describe_gauge!(KV_TOKENS_BUDGET, Unit::Count, "Context (KV) token budget per worker");
    describe_histogram!(STEP, Unit::Seconds, "Engine step times, by kind (prefill, decode)");
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connections refused before their handshake completed, by reason"
    );
    for kind in ["closed", "io", "protocol"] {
        let _ = metrics::counter!(CONNECTION_ERRORS, "kind" => kind);
    }
    for reason in CONNECTIONS_REFUSED_REASONS {
        let _ = metrics::counter!(CONNECTIONS_REFUSED, "reason" => *reason);
    }
    for kind in ["overloaded", "backend", "shutdown"] {
        let _ = metrics::counter!(SAMPLE_ERRORS, "kind" => kind);
    }
    metrics::gauge!(SESSIONS).set(0.0);
    metrics::gauge!(CONNECTIONS).set(0.0);
}

/// Both nodes: build information, `process_*` and the RDMA transport's metrics.
fn describe_common(node: &'static str) {
    metrics::describe_gauge!(common::BUILD_INFO, "1: this node's version (label version) and kind (label node)");
    metrics::gauge!(common::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "node" => node).set(1.0);
    process::describe();
    describe_rdma();
}

fn describe_rdma() {
    use rdma as r;
    metrics::describe_counter!(r::CQ_POLLS, "RDMA completion-queue polls");
    metrics::describe_histogram!(r::COMPLETIONS_PER_POLL, "RDMA completions per non-empty poll");
    metrics::describe_counter!(r::CQ_EVENTS, "RDMA completion-channel events");
    metrics::describe_counter!(r::POSTS, "RDMA writes posted, by kind (signalled, unsignalled)");
    metrics::describe_counter!(r::INLINE_POSTS, "RDMA writes posted inline");
    metrics::describe_counter!(r::DOORBELLS, "RDMA doorbells (chains of writes posted at once)");
    metrics::describe_counter!(r::STAGED, "RDMA payloads copied into staging slots (unregistered memory)");
    metrics::describe_counter!(r::WC_ERRORS, "RDMA work completions with an error status, by status");
}

#[cfg(test)]
mod tests {
    /// Every metric name the code declares is documented in docs/metrics.md.
    #[test]
    fn every_metric_is_documented() {
        let code = include_str!("metrics.rs");
        let docs = include_str!("../../docs/metrics.md");
        let names: Vec<&str> = code
            .lines()
            .filter(|l| l.trim_start().starts_with("pub const") && l.contains("&str = \"qdl_"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(names.len() > 40, "{} names found", names.len());
        let missing: Vec<&&str> = names.iter().filter(|n| !docs.contains(&format!("`{n}`"))).collect();
        assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    }
}

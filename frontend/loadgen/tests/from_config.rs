//! FromConfig goes through LoadGen's own C++ parser. It keeps process-wide state (mlperf.conf is
//! applied only on the first user.conf of a process), so this file holds exactly one test.

use qdl_loadgen::{Scenario, TestSettings};

#[test]
fn user_conf_applies_mlperf_conf_first_then_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("user.conf");
    std::fs::write(&user, "resnet50.Server.target_qps = 4321\n*.Server.min_duration = 2500\n").unwrap();
    let mut s = TestSettings { scenario: Scenario::Server, ..Default::default() };
    s.apply_user_conf(&user, "resnet50", Scenario::Server).unwrap();
    // From the compiled-in mlperf.conf:
    assert_eq!(s.server_target_latency_ns, 15_000_000, "resnet50 Server bound is 15 ms");
    assert_eq!(s.performance_sample_count_override, 1024);
    assert_eq!(s.qsl_rng_seed, 2085463073848966840);
    // From user.conf:
    assert_eq!(s.server_target_qps, 4321.0);
    assert_eq!(s.min_duration_ms, 2500);

    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "resnet50.Server.target_qps = fast\n").unwrap();
    let err = s.apply_user_conf(&bad, "resnet50", Scenario::Server).unwrap_err();
    assert!(err.to_string().contains("bad.conf"), "{err}");

    let missing = dir.path().join("missing.conf");
    assert!(s.apply_user_conf(&missing, "resnet50", Scenario::Server).is_err());
}

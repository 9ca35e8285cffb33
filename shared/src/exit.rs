//! The exit statuses of both binaries, decided for the whole project (README "Exit codes"), and
//! how an error maps to one.
//!
//! | status | `qdl-frontend` | `qdl-accelerator` |
//! |---|---|---|
//! | 0 | the test finished (LoadGen's verdict is reported; INVALID too, unless `--require-valid`) | stopped by SIGTERM/SIGINT after the drain |
//! | 1 | runtime error | runtime error |
//! | 2 | command-line usage (clap) | command-line usage |
//! | 3 | the run failed: no accelerator left, or lost mid-test | - |
//! | 4 | LoadGen said INVALID and `--require-valid` was given | - |
//! | 5 | `check-accuracy` found a wrong or missing answer | - |
//! | 78 | bad configuration (EX_CONFIG): unreadable or invalid config, user.conf or secret | the same |
//! | 130 | interrupted by SIGINT (after the drain) | - |
//! | 143 | interrupted by SIGTERM (after the drain) | - |

/// The test finished (or the node stopped normally).
pub const OK: i32 = 0;
/// A runtime error.
pub const RUNTIME: i32 = 1;
/// Command-line usage error (clap's own status).
pub const USAGE: i32 = 2;
/// The run failed: no accelerator connection left, or the run could not go on.
pub const RUN_FAILED: i32 = 3;
/// LoadGen judged the run INVALID and `--require-valid` was given.
pub const INVALID: i32 = 4;
/// `check-accuracy` found a wrong, missing or duplicated answer.
pub const ACCURACY: i32 = 5;
/// Bad configuration (sysexits' EX_CONFIG).
pub const CONFIG: i32 = 78;
/// Interrupted by SIGINT, after the drain (128 + 2).
pub const SIGINT: i32 = 130;
/// Interrupted by SIGTERM, after the drain (128 + 15).
pub const SIGTERM: i32 = 143;

/// The exit-status table for `--help` (`after_help`) of `qdl-frontend`.
pub const FRONTEND_HELP: &str = "Exit status:
  0    the test finished (LoadGen's verdict is in the summary; INVALID too, unless --require-valid)
  1    runtime error
  2    command-line usage error
  3    the run failed: no accelerator left, or one lost mid-test that could not be replaced
  4    LoadGen said INVALID and --require-valid was given
  5    check-accuracy found a wrong, missing or duplicated answer
  78   bad configuration: unreadable or invalid config, user.conf or secret
  130  interrupted by SIGINT (Ctrl-C), after the drain
  143  interrupted by SIGTERM (systemctl stop), after the drain";

/// The exit-status table for `--help` (`after_help`) of `qdl-accelerator`.
pub const ACCELERATOR_HELP: &str = "Exit status:
  0    stopped by SIGTERM or SIGINT after the drain (a service's normal stop)
  1    runtime error
  2    command-line usage error
  78   bad configuration: unreadable or invalid config, TLS files or secret";

/// Whether `e`, or an error it was caused by, is a configuration error of this crate: a config
/// file that cannot be read or is invalid ([`crate::config::ConfigError`]), a missing or bad
/// secret ([`crate::auth::AuthError`]), unusable TLS files ([`crate::tls::TlsError`]), or a log
/// filter or metrics address that does not parse ([`crate::telemetry::TelemetryError`]; a
/// metrics port that is taken is a runtime error).
pub fn is_config_error(e: &(dyn std::error::Error + 'static)) -> bool {
    use crate::telemetry::TelemetryError;
    let mut cur = Some(e);
    while let Some(e) = cur {
        let telemetry = matches!(
            e.downcast_ref::<TelemetryError>(),
            Some(TelemetryError::Filter { .. } | TelemetryError::Address(_))
        );
        if telemetry
            || e.is::<crate::config::ConfigError>()
            || e.is::<crate::auth::AuthError>()
            || e.is::<crate::tls::TlsError>()
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The status for a signal that ended a process after its drain: 128 + the signal's number.
pub fn for_signal(signal: crate::signals::Signal) -> i32 {
    match signal {
        crate::signals::Signal::Interrupt => SIGINT,
        crate::signals::Signal::Terminate => SIGTERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapper(#[source] crate::config::ConfigError);

    #[test]
    fn config_errors_are_found_through_their_causes() {
        let inner = crate::config::ConfigError::Invalid { field: "x".into(), reason: "y".into() };
        assert!(is_config_error(&Wrapper(inner)));
        assert!(is_config_error(&crate::auth::AuthError::NoSecret));
        assert!(!is_config_error(&std::io::Error::other("not a config error")));
    }

    #[test]
    fn signals_map_to_128_plus_their_number() {
        assert_eq!(for_signal(crate::signals::Signal::Interrupt), 128 + libc::SIGINT);
        assert_eq!(for_signal(crate::signals::Signal::Terminate), 128 + libc::SIGTERM);
    }
}

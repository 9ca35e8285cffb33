//! Optional TLS (rustls) on the control channel.
//!
//! With `[tls] enabled = true` a frontend sends its 8-byte preamble in the clear with the TLS flag
//! (so the accelerator's listener can still tell control from data connections, and refuse a
//! mismatch clearly), then runs a TLS handshake; the whole control protocol, the shared-secret
//! challenge included, runs inside. The accelerator presents `cert_file` / `key_file`; the
//! frontend verifies it against `ca_file` and the accelerator's host name (or IP address, or
//! `server_name`). Data connections stay in the clear: they carry only sample bytes, attach with
//! the token of an authenticated session, and their speed is the point of the exercise.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

/// Errors setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// "certificate", "private key", "CA certificates".
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The name to verify the accelerator's certificate against is not a valid DNS name or IP.
    #[error("{0:?} is not a host name or IP address to verify a certificate against")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Pem { what, path: path.display().to_string(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(certs)
}

/// The accelerator's side: its certificate chain and key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(cert_file, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Pem {
        what: "private key",
        path: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The frontend's side: the CA certificates accelerators' certificates must chain to.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_file, "CA certificates")? {
        roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name to verify an accelerator at `addr` ("host:port") against: `override_name`, else
/// the host part.
pub fn server_name(addr: &str, override_name: Option<&str>) -> Result<ServerName<'static>, TlsError> {
    let host = match override_name {
        Some(n) => n.to_string(),
        None => {
            let h = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
            h.trim_start_matches('[').trim_end_matches(']').to_string()
        }
    };
    ServerName::try_from(host.clone()).map_err(|_| TlsError::ServerName(host))
}

/// A byte stream the control link can run over: plain TCP or TLS.
pub trait ControlStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ControlStream for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_address_or_the_override() {
        assert!(matches!(server_name("acc-0:7070", None), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("10.0.0.1:7070", None), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]:7070", None), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("10.0.0.1:7070", Some("acc-0.lab")), Ok(ServerName::DnsName(_))));
        assert!(server_name("bad name:1", None).is_err());
    }

    #[test]
    fn unreadable_or_empty_pem_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(&empty).unwrap_err().to_string();
        assert!(e.contains("CA certificates") && e.contains("no certificate"), "{e}");
        let e = server_config(&dir.path().join("none.pem"), &empty).unwrap_err().to_string();
        assert!(e.contains("certificate") && e.contains("none.pem"), "{e}");
        // A real pair loads; a key that does not match is refused.
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key, other) = (dir.path().join("c.pem"), dir.path().join("k.pem"), dir.path().join("o.pem"));
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, a.key_pair.serialize_pem()).unwrap();
        std::fs::write(&other, b.key_pair.serialize_pem()).unwrap();
        server_config(&cert, &key).unwrap();
        client_config(&cert).unwrap();
        assert!(server_config(&cert, &other).is_err());
    }
}

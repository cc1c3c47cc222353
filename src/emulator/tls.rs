//! HTTPS for the emulator (`--tls-cert FILE --tls-key FILE`): a rustls acceptor from PEM
//! files, so that certificates, private CAs and name checks are tested end to end.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use super::EmulatorError;

/// An acceptor serving the certificate chain of `cert` (PEM, leaf first) with the private
/// key of `key` (PEM: PKCS#8, PKCS#1 or SEC1), for HTTP/1.1.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, EmulatorError> {
    let bad = |path: &Path, what: String| {
        EmulatorError::Options(format!("TLS file {}: {what}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|err| bad(cert, err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(cert, err.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "holds no PEM certificate".to_string()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|err| bad(key, err.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| EmulatorError::Options(format!("TLS: {err}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|err| bad(cert, format!("does not go with the key: {err}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

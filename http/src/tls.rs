//! TLS termination with rustls (ring), for servers that face the internet directly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::HttpError;

/// A certificate chain and its key, ready to accept TLS connections.
#[derive(Clone)]
pub struct Tls(TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, HttpError> {
        let err = |what, path: &Path, reason: String| HttpError::Tls {
            what,
            path: path.display().to_string(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| err("certificate", cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err("certificate", cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(err("certificate", cert, "holds no PEM certificate".into()));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| err("key", key, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err("certificate", cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| err("key", key, format!("does not fit the certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls(TlsAcceptor::from(Arc::new(config))))
    }

    /// The handshake on `tcp`, or `None` if it failed or took longer than `within`
    /// (a client that stalls its handshake is treated like one that stalls its headers).
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
        within: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(within, self.0.accept(tcp)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

//! TLS on the data server (`serve --tls-cert --tls-key`), with rustls.
//!
//! The certificate lives in an `ArcSwap` behind rustls' certificate resolver: SIGHUP loads
//! the files again and swaps it, so new handshakes get the new certificate while open
//! connections go on with the one they started with.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::listen::Accept;

#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// Reads the chain and the key, and checks they belong together.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "--tls-cert {}: no PEM certificate in it",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("--tls-key {}: {e}", self.key.display()))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| format!("--tls-cert and --tls-key do not go together: {e}"))?;
        Ok(Arc::new(certified))
    }
}

#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl Resolver {
    pub fn new(first: Arc<CertifiedKey>) -> Arc<Resolver> {
        Arc::new(Resolver {
            current: ArcSwap::new(first),
        })
    }

    pub fn replace(&self, next: Arc<CertifiedKey>) {
        self.current.store(next);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Accepts TLS connections, with the resolver's certificate of the moment.
#[derive(Clone)]
pub struct Tls(tokio_rustls::TlsAcceptor);

impl Tls {
    pub fn new(resolver: Arc<Resolver>) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}

impl Accept for Tls {
    type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn accept(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Self::Stream> {
        self.0.accept(tcp).await
    }
}

/// Whether a path was given for both halves.
pub fn files(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<Option<CertFiles>, String> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(CertFiles {
            cert: c.clone(),
            key: k.clone(),
        })),
        (None, None) => Ok(None),
        _ => Err("--tls-cert and --tls-key go together: give both or neither".to_owned()),
    }
}

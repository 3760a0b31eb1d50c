//! TLS on the listener, with rustls: a certificate and key read from PEM
//! files, offered with ALPN `h2` and `http/1.1`, and reloaded from the same
//! files on demand (the command reloads on `SIGHUP`). A reload changes
//! what new handshakes present; connections already open keep theirs and
//! are not dropped.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The listener's TLS: where its certificate comes from, and the
/// acceptor that presents the latest one loaded.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<Current>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.current.cert)
            .field("key", &self.current.key)
            .finish_non_exhaustive()
    }
}

/// The certificate handshakes present, swapped whole on reload.
#[derive(Debug)]
struct Current {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole certificate: swaps are one
        // assignment.
        Some(match self.loaded.read() {
            Ok(loaded) => loaded.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

impl Tls {
    /// Reads the certificate chain at `cert` and the private key at `key`
    /// (PEM); an error names the file and what is wrong with it.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, String> {
        // ring, as the library's `tls-rustls`: rustls marks its provider
        // deprecated for lacking post-quantum key exchange; aws-lc-rs, which
        // has it, needs cmake and a C toolchain to build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(&provider, cert, key)?;
        let current = Arc::new(Current {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider: provider.clone(),
            loaded: RwLock::new(Arc::new(loaded)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            current,
        })
    }

    /// Reads the certificate and key again from their files: later
    /// handshakes present them. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let current = &self.current;
        let loaded = load(&current.provider, &current.cert, &current.key)?;
        match current.loaded.write() {
            Ok(mut slot) => *slot = Arc::new(loaded),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(loaded),
        }
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// The certificate chain and key in the files, checked to belong together.
fn load(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no private key read: {e}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(certified)
}

//! Helpers shared by the proxy's TLS and HTTP/2 tests: a certificate
//! authority made for the test, and a proxy started in-process from a
//! command line.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A certificate authority made for one test.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// Its certificate, PEM.
    pub pem: String,
}

/// A certificate the authority issued, and its key.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A new certificate for 127.0.0.1.
    pub fn issue(&self) -> Leaf {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Leaf {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// A client configuration that trusts this authority alone, offering
    /// `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(self.pem.as_bytes()).unwrap();
        roots.add(der).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

/// ring, as the proxy uses (deprecated by rustls for lacking post-quantum
/// key exchange; aws-lc-rs needs cmake to build).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A directory of its own for one test's files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coalesce-proxy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `leaf`'s certificate and key as `cert.pem` and `key.pem` in `dir`.
pub fn write_leaf(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &leaf.pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

/// Starts the proxy the command line `args` describes on a loopback port,
/// as the command would (TLS on the listener if the arguments ask).
pub async fn start(
    args: &[String],
) -> (
    SocketAddr,
    coalesce_proxy::ProxyLayer,
    Option<coalesce_proxy::Tls>,
) {
    let args = coalesce_proxy::Args::parse(args.iter().cloned()).unwrap();
    let coalesce_proxy::Built { proxy, layer, .. } = coalesce_proxy::build(&args).await.unwrap();
    let tls = args
        .tls
        .as_ref()
        .map(|(cert, key)| coalesce_proxy::Tls::from_files(cert, key).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listening = coalesce_proxy::ListenOptions {
        tls: tls.clone(),
        max_connections: args.max_connections,
        access_log: args.access_log,
        connections: args.connections.clone(),
    };
    tokio::spawn(coalesce_proxy::serve_with(
        listener,
        proxy,
        listening,
        std::future::pending(),
    ));
    (addr, layer, tls)
}

/// `args` as owned strings.
pub fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

//! The upstream: where requests go, and how the proxy connects to it
//! (plain TCP or TLS, HTTP/1.1 or HTTP/2).

use http::header::HeaderValue;
use http::uri::{Authority, Scheme};
use http::Uri;
use http_body_util::Limited;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

/// Where requests go: the upstream's scheme and authority, and the `Host`
/// header that names it.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    pub(crate) host: HeaderValue,
}

impl Upstream {
    pub(crate) fn new(uri: &Uri) -> Result<Self, String> {
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            Some(s) => return Err(format!("scheme {s} is not supported, only http and https")),
            None => return Err("expected http://host:port or https://host:port".into()),
        };
        let authority = uri
            .authority()
            .ok_or("expected http://host:port or https://host:port")?
            .clone();
        if uri.path() != "/" || uri.query().is_some() {
            return Err("requests keep their own path; give no path or query".into());
        }
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        Ok(Self {
            scheme,
            authority,
            host,
        })
    }

    /// The client requests to this upstream go through: plain TCP for
    /// `http://` (HTTP/2 with prior knowledge if `options` ask), TLS with
    /// ALPN for `https://`. `http1`: HTTP/1.1 only, whatever `options` say
    /// (a protocol upgrade exists in HTTP/1.1 alone).
    pub(crate) fn client<B>(
        &self,
        options: &UpstreamOptions,
        http1: bool,
    ) -> Result<Client<Connector, Limited<B>>, String>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A black-holed upstream would otherwise hold requests for the
        // operating system's connect timeout, minutes on Linux.
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // The TLS connector hands it `https://` URIs too.
        connector.enforce_http(false);
        let https = self.scheme == Scheme::HTTPS;
        let tls = tls_config(options.ca.as_deref(), https)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let connector = if https && !http1 {
            builder.enable_http2().wrap_connector(connector)
        } else {
            builder.wrap_connector(connector)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(options.http2 && !https && !http1)
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(20))
            .build(connector);
        Ok(client)
    }
}

/// How the proxy speaks to its upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// How long the upstream may take to start answering (its head); past
    /// it the request is answered `504`.
    pub timeout: Duration,
    /// The largest request body sent on: a larger declared length is
    /// answered `413` at once, a chunked body cut off past it and answered
    /// `413`.
    pub max_request_body: u64,
    /// Speak HTTP/2 to an `http://` upstream, with prior knowledge (h2c).
    /// An `https://` upstream is offered HTTP/2 and HTTP/1.1 by ALPN
    /// whatever this says.
    pub http2: bool,
    /// A PEM file of the certificate authorities an `https://` upstream's
    /// certificate is verified against, instead of the system's roots.
    pub ca: Option<std::path::PathBuf>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_request_body: 16 * 1024 * 1024,
            http2: false,
            ca: None,
        }
    }
}

/// The TLS settings for an `https://` upstream: the operator's CA file, or
/// the system's roots; for an `http://` one (`https` false), none are read.
fn tls_config(ca: Option<&std::path::Path>, https: bool) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    // ring, as the library's `tls-rustls`: rustls marks its provider
    // deprecated for lacking post-quantum key exchange; aws-lc-rs, which
    // has it, needs cmake and a C toolchain to build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    if https {
        match ca {
            Some(path) => {
                let shown = path.display();
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read {shown}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{shown}: a certificate rustls refuses: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!("{shown}: no certificate in it"));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // One unreadable system certificate is no reason to fail.
                    let _ = roots.add(cert);
                }
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The connector to the upstream: plain TCP for `http://`, TLS with ALPN for
/// `https://`.
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

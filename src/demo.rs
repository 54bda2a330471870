//! `sitewatch demo`: loopback targets that show every metric move, with no network.
//!
//! Targets (all on 127.0.0.1): a healthy shop, a slow page that times out, a flaky page that
//! alternates 200 and 503, a maintenance page that fails its regex, a page answering 500, a
//! redirect to the shop, and an HTTPS page whose certificate (from a demo CA) expires in 10 days.
//! The helpers here also serve the integration tests' targets.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A socket or file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificate generation failed.
    #[error("generating the demo certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The TLS server config was rejected.
    #[error("TLS server config: {0}")]
    Tls(#[from] rustls::Error),
}

/// A CA and a leaf certificate it signed, for a TLS target on 127.0.0.1 / localhost.
pub struct TestCertificate {
    /// The CA certificate, PEM: what a probe's `ca_file` must trust.
    pub ca_pem: String,
    /// The leaf certificate, DER.
    pub leaf: CertificateDer<'static>,
    /// The leaf's private key.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The leaf's `notAfter`, unix seconds.
    pub not_after: i64,
}

impl TestCertificate {
    /// Generates a CA and a leaf for `localhost` and 127.0.0.1 that expires at `not_after` (unix seconds).
    pub fn generate(not_after: i64) -> Result<Self, DemoError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "sitewatch test CA");
        ca.not_after = time::OffsetDateTime::from_unix_timestamp(not_after + 365 * 86_400)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let ca_cert = ca.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        leaf.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
        let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            leaf: leaf_cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_after,
        })
    }

    /// A rustls server config presenting the leaf, with ALPN `h2` and `http/1.1`.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, DemoError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.leaf.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A response with a status and a text body.
pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("valid response parts")
}

/// Serves `handler` on `listener` (over TLS when `tls` is set) until the task is dropped.
pub async fn serve_target<F, Fut>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// A 200 response with a JSON body.
fn json(body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response parts")
}

/// The demo's targets, running, and the configuration that probes them.
pub struct Demo {
    /// The directory holding `sitewatch-demo.yaml` and `demo-ca.pem`.
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

/// Starts the demo targets on 127.0.0.1 and writes a config probing them into `dir`.
pub async fn start(dir: &Path) -> Result<Demo, DemoError> {
    std::fs::create_dir_all(dir)?;
    let http = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let https = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let http_port = http.local_addr()?.port();
    let https_port = https.local_addr()?.port();

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let cert = TestCertificate::generate(now + 10 * 86_400)?;
    let ca_path = dir.join("demo-ca.pem");
    std::fs::write(&ca_path, &cert.ca_pem)?;
    let tls = cert.server_config()?;

    let hits = Arc::new(AtomicU64::new(0));
    tokio::spawn(serve_target(http, None, move |req| {
        let hits = hits.clone();
        async move {
            match req.uri().path() {
                "/shop" => respond(200, "<h1>Demo shop</h1><button>Add to cart</button>"),
                "/slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    respond(200, "finally")
                }
                "/flaky" => {
                    if hits.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                        respond(200, "fine this time")
                    } else {
                        respond(503, "overloaded")
                    }
                }
                "/maintenance" => respond(200, "<h1>Down for maintenance</h1>"),
                "/health" => json(
                    r#"{"status":"UP","checks":[{"name":"db","ok":true},{"name":"queue","ok":true}],"replicas":[1,2,3]}"#,
                ),
                "/health-degraded" => json(
                    r#"{"status":"UP","checks":[{"name":"db","ok":true},{"name":"queue","ok":false}],"replicas":[1]}"#,
                ),
                "/error" => respond(500, "internal error"),
                "/old-shop" => Response::builder()
                    .status(301)
                    .header(http::header::LOCATION, "/shop")
                    .body(Full::new(Bytes::new()))
                    .expect("valid response parts"),
                _ => respond(404, "not found"),
            }
        }
    }));
    tokio::spawn(serve_target(https, Some(tls), |_req| async {
        respond(200, "<h1>Secure demo</h1>")
    }));

    let config = format!(
        r#"# Written by `sitewatch demo`: every target is on 127.0.0.1.
defaults:
  interval: 5s
  timeout: 2s
sites:
  - id: demo-shop
    url: http://127.0.0.1:{http_port}/shop
    regex: "Add to cart"
    labels: {{ team: web }}
  - id: demo-old-shop
    url: http://127.0.0.1:{http_port}/old-shop
    regex: "Add to cart"
  - id: demo-slow
    url: http://127.0.0.1:{http_port}/slow
  - id: demo-flaky             # probe_success flaps; sitewatch_site_up waits for 3 failures in a row
    url: http://127.0.0.1:{http_port}/flaky
    failure_threshold: 3
  - id: demo-health
    url: http://127.0.0.1:{http_port}/health
    fail_if_header_not_matches: [{{ header: Content-Type, regex: "^application/json" }}]
    json_conditions: ['$.status == "UP"', '$.checks[*].ok == true', 'len($.replicas) >= 2']
  - id: demo-health-degraded    # the failing condition is named in /api/v1/sites
    url: http://127.0.0.1:{http_port}/health-degraded
    json_conditions: ['$.status == "UP"', '$.checks[*].ok == true', 'len($.replicas) >= 2']
  - id: demo-maintenance
    url: http://127.0.0.1:{http_port}/maintenance
    regex: "Add to cart"
    regex_absent: "maintenance"
  - id: demo-error
    url: http://127.0.0.1:{http_port}/error
  - id: demo-tls-expiring
    url: https://127.0.0.1:{https_port}/
    tls: {{ ca_file: {ca} }}
    fail_if_cert_expires_within: 14d
  - id: demo-refused
    url: http://127.0.0.1:1/
"#,
        ca = ca_path.display()
    );
    let config_path = dir.join("sitewatch-demo.yaml");
    std::fs::write(&config_path, config)?;
    Ok(Demo {
        dir: dir.to_path_buf(),
        config: config_path,
    })
}

//! `--web.config.file`: TLS and basic auth for the exporter's own endpoints, in the Prometheus
//! exporter-toolkit format, so the file Prometheus users already have works here.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_ca_file: ca.crt                       # optional: with client_auth_type below
//!   client_auth_type: RequireAndVerifyClientCert # or NoClientCert (default)
//! basic_auth_users:
//!   prometheus: $2y$10$...                       # bcrypt hashes (htpasswd -nBC 10)
//! ```
//!
//! Paths are relative to the file. Fields of the toolkit format this exporter does not
//! implement are errors, not silently ignored.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Why a web config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file could not be read.
    #[error("cannot read web config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("web config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
}

/// TLS and basic auth for the endpoints.
pub struct WebConfig {
    /// TLS, when `tls_server_config` is set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Option<BasicAuth>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.auth.is_some())
            .finish()
    }
}

/// Users and their bcrypt hashes; verified credentials are remembered (as SHA-256 digests) so
/// that a scrape every 15 s does not cost a bcrypt round each time.
struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// Whether a request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Served.
    Granted,
    /// Answered 401 with a `WWW-Authenticate` challenge.
    Denied,
}

impl WebConfig {
    /// Reads and checks a web config file, loading its certificates.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| WebConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig {
                tls_server_config: None,
                basic_auth_users: BTreeMap::new(),
            }
        } else {
            serde_norway::from_str(&text).map_err(|e| {
                invalid(format!(
                    "{e} (supported: tls_server_config.cert_file, key_file, client_ca_file, client_auth_type; basic_auth_users)"
                ))
            })?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = raw
            .tls_server_config
            .map(|t| acceptor(dir, t).map_err(invalid))
            .transpose()?;
        for (user, hash) in &raw.basic_auth_users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(invalid(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 {user}`)"
                )));
            }
        }
        let auth = (!raw.basic_auth_users.is_empty()).then(|| BasicAuth {
            users: raw.basic_auth_users,
            verified: Mutex::default(),
        });
        Ok(Self { tls, auth })
    }

    /// Checks a request's `Authorization` header against `basic_auth_users`. May run bcrypt
    /// (tens of milliseconds by design): call [`WebConfig::check_cached`] first on a runtime
    /// thread, and this one off it.
    pub fn check(&self, authorization: Option<&http::HeaderValue>) -> Access {
        match self.credentials(authorization) {
            Credentials::Decided(access) => access,
            Credentials::Verify {
                password,
                hash,
                key,
            } => {
                let Some(auth) = &self.auth else {
                    return Access::Granted;
                };
                if bcrypt::verify(&password, hash).unwrap_or(false) {
                    let mut cache = auth.verified.lock().expect("auth cache");
                    // Bounded: a flood of distinct valid passwords cannot exist, but stay safe.
                    if cache.len() > 1024 {
                        cache.clear();
                    }
                    cache.insert(key);
                    Access::Granted
                } else {
                    Access::Denied
                }
            }
        }
    }

    /// The answer when it needs no bcrypt: no users configured, a missing or malformed header,
    /// an unknown user, or credentials verified before. `None` when [`WebConfig::check`] must
    /// verify a password.
    pub fn check_cached(&self, authorization: Option<&http::HeaderValue>) -> Option<Access> {
        match self.credentials(authorization) {
            Credentials::Decided(access) => Some(access),
            Credentials::Verify { .. } => None,
        }
    }

    fn credentials(&self, authorization: Option<&http::HeaderValue>) -> Credentials<'_> {
        let Some(auth) = &self.auth else {
            return Credentials::Decided(Access::Granted);
        };
        let Some((user, password)) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
        else {
            return Credentials::Decided(Access::Denied);
        };
        let Some(hash) = auth.users.get(&user) else {
            return Credentials::Decided(Access::Denied);
        };
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            user.as_bytes(),
            b"\0",
            password.as_bytes(),
            b"\0",
            hash.as_bytes(),
        ] {
            ctx.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        if auth.verified.lock().expect("auth cache").contains(&key) {
            return Credentials::Decided(Access::Granted);
        }
        Credentials::Verify {
            password,
            hash,
            key,
        }
    }
}

/// What a request's credentials need: an answer already, or a bcrypt verification.
enum Credentials<'a> {
    Decided(Access),
    Verify {
        password: String,
        hash: &'a str,
        key: [u8; 32],
    },
}

fn acceptor(dir: &Path, raw: RawTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    let rel = |p: &Path| {
        if p.is_relative() {
            dir.join(p)
        } else {
            p.to_path_buf()
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate =
        RotatingCert::load(rel(&raw.cert_file), rel(&raw.key_file), provider.clone())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let require_client = match raw.client_auth_type.as_deref() {
        None | Some("NoClientCert") => false,
        Some("RequireAndVerifyClientCert") => true,
        Some(other) => {
            return Err(format!(
                "tls_server_config.client_auth_type {other:?} is not supported (NoClientCert or RequireAndVerifyClientCert)"
            ))
        }
    };
    let builder = match (require_client, raw.client_ca_file) {
        (true, Some(ca)) => {
            let ca = rel(&ca);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls_server_config.client_ca_file {}: {e}", ca.display()))?
            {
                roots.add(cert).map_err(|e| {
                    format!("tls_server_config.client_ca_file {}: {e}", ca.display())
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        (true, None) => return Err(
            "tls_server_config.client_auth_type RequireAndVerifyClientCert needs client_ca_file"
                .into(),
        ),
        (false, _) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(certificate));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The server certificate, read again when its files change (as cert-manager and other
/// rotators replace them) so a rotation needs no restart. Each handshake compares the files'
/// modification times and sizes with those of the pair in use; a pair that does not load (a
/// half-written file, a key that does not match) leaves the old one in use, with a warning.
#[derive(Debug)]
struct RotatingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<(FileStamps, Arc<rustls::sign::CertifiedKey>)>,
}

/// Modification time and length of the certificate and key files.
type FileStamps = [Option<(std::time::SystemTime, u64)>; 2];

impl RotatingCert {
    fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let stamps = stamps(&cert_file, &key_file);
        let key = certified_key(&cert_file, &key_file, &provider)?;
        Ok(Self {
            cert_file,
            key_file,
            provider,
            current: Mutex::new((stamps, Arc::new(key))),
        })
    }
}

fn stamps(cert_file: &Path, key_file: &Path) -> FileStamps {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [stamp(cert_file), stamp(key_file)]
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("tls_server_config.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.cert_file {}: no certificate",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls_server_config.key_file {}: {e}", key_file.display()))?;
    rustls::sign::CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("tls_server_config: certificate and key do not match: {e}"))
}

impl rustls::server::ResolvesServerCert for RotatingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let now = stamps(&self.cert_file, &self.key_file);
        let mut current = self.current.lock().expect("certificate lock");
        if now != current.0 {
            match certified_key(&self.cert_file, &self.key_file, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert_file = %self.cert_file.display(), "web certificate reloaded");
                    *current = (now, Arc::new(key));
                }
                Err(e) => {
                    // Remember the stamps so a broken pair is not re-read on every handshake;
                    // the next change to either file is tried again.
                    tracing::warn!(error = %e, "web certificate changed but cannot be loaded; keeping the one in use");
                    current.0 = now;
                }
            }
        }
        Some(current.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn basic_auth_checks_bcrypt_hashes_and_caches_successes() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let path = write(
            dir.path(),
            "web.yml",
            &format!("basic_auth_users:\n  prom: '{hash}'\n"),
        );
        let web = WebConfig::load(&path).unwrap();
        let header = |user: &str, pw: &str| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            http::HeaderValue::from_str(&format!("Basic {token}")).unwrap()
        };
        assert_eq!(web.check(None), Access::Denied);
        // Without bcrypt: no header, an unknown user; a known user's password needs it once.
        assert_eq!(web.check_cached(None), Some(Access::Denied));
        assert_eq!(
            web.check_cached(Some(&header("other", "s3cret"))),
            Some(Access::Denied)
        );
        assert_eq!(web.check_cached(Some(&header("prom", "s3cret"))), None);
        assert_eq!(web.check(Some(&header("prom", "wrong"))), Access::Denied);
        assert_eq!(web.check(Some(&header("other", "s3cret"))), Access::Denied);
        assert_eq!(web.check(Some(&header("prom", "s3cret"))), Access::Granted);
        assert_eq!(
            web.check_cached(Some(&header("prom", "s3cret"))),
            Some(Access::Granted)
        );
        assert_eq!(web.check(Some(&header("prom", "s3cret"))), Access::Granted);
        // A wrong password is never remembered.
        assert_eq!(web.check_cached(Some(&header("prom", "wrong"))), None);
        assert_eq!(web.check(Some(&header("prom", "s3cret2"))), Access::Denied);
        let bearer = http::HeaderValue::from_static("Bearer s3cret");
        assert_eq!(web.check(Some(&bearer)), Access::Denied);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let bad_hash = write(
            dir.path(),
            "a.yml",
            "basic_auth_users:\n  prom: plaintext\n",
        );
        let e = WebConfig::load(&bad_hash).unwrap_err().to_string();
        assert!(
            e.contains("a.yml") && e.contains("basic_auth_users.prom") && e.contains("bcrypt"),
            "{e}"
        );
        let unknown = write(dir.path(), "b.yml", "http_server_config:\n  http2: false\n");
        let e = WebConfig::load(&unknown).unwrap_err().to_string();
        assert!(
            e.contains("b.yml") && e.contains("http_server_config"),
            "{e}"
        );
        let missing = write(
            dir.path(),
            "c.yml",
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
        );
        let e = WebConfig::load(&missing).unwrap_err().to_string();
        assert!(
            e.contains("tls_server_config.cert_file") && e.contains("nope.crt"),
            "{e}"
        );
        // No auth, no TLS: everything is served.
        let empty = write(dir.path(), "d.yml", "");
        assert_eq!(
            WebConfig::load(&empty).unwrap().check(None),
            Access::Granted
        );
    }
}

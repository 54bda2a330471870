//! TLS for probes: rustls client configs built once per distinct setting, and certificate facts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A site's TLS settings, as configured. Equal settings share one client config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsSettings {
    /// Skip certificate verification (the expiry is still reported).
    pub insecure_skip_verify: bool,
    /// Trust these CA certificates instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Name sent in SNI and verified, instead of the URL's host.
    pub server_name: Option<String>,
}

/// A [`TlsSettings`] with its ready client config (compared by settings only).
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The settings this was built from.
    pub settings: TlsSettings,
    /// The rustls config, ALPN `h2` and `http/1.1`.
    pub config: Arc<ClientConfig>,
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl std::ops::Deref for TlsClient {
    type Target = TlsSettings;
    fn deref(&self) -> &TlsSettings {
        &self.settings
    }
}

/// Builds each distinct client config once per configuration load.
#[derive(Debug, Default)]
pub struct ClientCache {
    built: HashMap<TlsSettings, Arc<TlsClient>>,
}

impl ClientCache {
    /// The client for these settings, building it on first use.
    pub fn get(&mut self, settings: &TlsSettings) -> Result<Arc<TlsClient>, String> {
        if let Some(c) = self.built.get(settings) {
            return Ok(c.clone());
        }
        let config = build_client_config(settings)?;
        let client = Arc::new(TlsClient {
            settings: settings.clone(),
            config,
        });
        self.built.insert(settings.clone(), client.clone());
        Ok(client)
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::ring::default_provider();
            // Offer AES-128 first, as Go and browsers do: as strong for a health check, and its
            // SHA-256 key schedule costs less per handshake than AES-256's SHA-384 (profiled).
            p.cipher_suites.sort_by_key(|s| match s.suite() {
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 2,
                _ => 3,
            });
            Arc::new(p)
        })
        .clone()
}

/// The system's trust anchors, loaded once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system certificate only costs that one anchor.
                let _ = store.add(cert);
            }
            Arc::new(store)
        })
        .clone()
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM in CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in CA file {}", path.display()));
    }
    Ok(certs)
}

/// Checks that a CA file exists and holds at least one PEM certificate.
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    read_ca_file(path).map(drop)
}

fn build_client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let roots = match &settings.ca_file {
            Some(path) => {
                let mut store = RootCertStore::empty();
                for cert in read_ca_file(path)? {
                    store
                        .add(cert)
                        .map_err(|e| format!("unusable CA in {}: {e}", path.display()))?;
                }
                Arc::new(store)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The earliest `notAfter` of a presented chain, in unix seconds.
pub fn earliest_expiry(chain: &[CertificateDer<'_>]) -> Option<i64> {
    chain
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .min()
}

/// What `probe_ssl_last_chain_info` and `probe_ssl_last_chain_expiry_timestamp_seconds` report
/// of the last chain a server presented, as blackbox_exporter labels them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// SHA-256 of the leaf certificate, lower-case hex.
    pub fingerprint_sha256: String,
    /// The leaf's subject, RFC 4514 style (`CN=shop.example`).
    pub subject: String,
    /// The leaf's issuer.
    pub issuer: String,
    /// The leaf's DNS subject alternative names, comma-separated.
    pub subject_alternative: String,
    /// The leaf's serial number, lower-case hex.
    pub serial_number: String,
    /// Earliest expiry along the leaf's issuing path within the presented chain, unix
    /// seconds: a stale extra certificate the server also sends, but that does not sign the
    /// leaf's path, does not count (it does in `probe_ssl_earliest_cert_expiry`).
    pub last_chain_expiry: i64,
}

/// The leaf's details and its path's expiry. The path is followed by issuer name from the
/// leaf through the presented certificates; rustls does not expose the chain it verified, so
/// the trust anchor itself counts only if the server sent it.
pub fn chain_info(chain: &[CertificateDer<'_>]) -> Option<ChainInfo> {
    let certs: Vec<_> = chain
        .iter()
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c)
        })
        .collect();
    let leaf = certs.first()?;
    let mut expiry = leaf.validity().not_after.timestamp();
    let mut current = leaf;
    let mut used = vec![0usize];
    while current.subject().as_raw() != current.issuer().as_raw() {
        let Some(i) = (0..certs.len()).find(|i| {
            !used.contains(i) && certs[*i].subject().as_raw() == current.issuer().as_raw()
        }) else {
            break;
        };
        used.push(i);
        current = &certs[i];
        expiry = expiry.min(current.validity().not_after.timestamp());
    }
    let sans = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &chain[0]);
    Some(ChainInfo {
        fingerprint_sha256: hex(digest.as_ref()),
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        subject_alternative: sans,
        // As Go's `%x` of `big.Int.Bytes()`: no leading zero bytes.
        serial_number: hex(match leaf.raw_serial().iter().position(|b| *b != 0) {
            Some(i) => &leaf.raw_serial()[i..],
            None => &[],
        }),
        last_chain_expiry: expiry,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `version` label of `probe_tls_version_info`, as blackbox_exporter writes it.
pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2",
        rustls::ProtocolVersion::TLSv1_1 => "TLS 1.1",
        rustls::ProtocolVersion::TLSv1_0 => "TLS 1.0",
        _ => "unknown",
    }
}

/// Accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    const T0: i64 = 1_900_000_000;

    fn params(cn: &str, ca: bool, not_after: i64) -> CertificateParams {
        let mut p = CertificateParams::new(if ca {
            Vec::new()
        } else {
            vec![format!("{cn}.example"), format!("www.{cn}.example")]
        })
        .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        p
    }

    #[test]
    fn chain_info_follows_the_leafs_issuing_path_only() {
        let root_key = KeyPair::generate().unwrap();
        let root = params("root", true, T0 + 900)
            .self_signed(&root_key)
            .unwrap();
        let mid_key = KeyPair::generate().unwrap();
        let mid = params("mid", true, T0 + 300)
            .signed_by(&mid_key, &root, &root_key)
            .unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params("shop", false, T0 + 600)
            .signed_by(&leaf_key, &mid, &mid_key)
            .unwrap();
        // An unrelated, already expiring certificate the server also sends.
        let stray_key = KeyPair::generate().unwrap();
        let stray = params("stray", true, T0 + 100)
            .self_signed(&stray_key)
            .unwrap();
        let chain = vec![leaf.der().clone(), stray.der().clone(), mid.der().clone()];
        let info = chain_info(&chain).unwrap();
        assert_eq!(
            info.last_chain_expiry,
            T0 + 300,
            "the intermediate's expiry"
        );
        assert_eq!(earliest_expiry(&chain), Some(T0 + 100), "the stray's");
        assert_eq!(info.subject, "CN=shop");
        assert_eq!(info.issuer, "CN=mid");
        assert_eq!(info.subject_alternative, "shop.example,www.shop.example");
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.der());
        let want: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(info.fingerprint_sha256, want);
        assert!(!info.serial_number.is_empty() && !info.serial_number.starts_with("00"));
        assert_eq!(chain_info(&[]), None);
    }
}

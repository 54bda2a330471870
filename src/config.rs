//! Configuration: a pure function from YAML text to a validated [`Config`] or every error found.
//!
//! Loading happens in two steps. [`load_path`] reads a file or a directory of `*.yaml`
//! files; [`parse_sources`] turns their text into a [`Config`] and never touches the
//! environment itself: secrets come through the [`Secrets`] it is given, so tests
//! never set environment variables.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_norway::Value;
use url::Url;

use crate::checks::{AddressMode, Checks};
use crate::tls::{self, TlsSettings};

mod checks;
mod schema;
use crate::checks::Compression;
use checks::{take_checks, with_check_fields, RawHeaderCheck};
pub use schema::json_schema;

/// Label names a site may not set itself: the exporter sets them.
const RESERVED_LABELS: &[&str] = &[
    "site", "url", "tenant", "location", "phase", "result", "le", "job", "instance",
];

/// Most memory one compiled `regex`/`regex_absent` may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Default number of redirects followed before a probe fails.
const DEFAULT_MAX_REDIRECTS: u32 = 10;

/// One problem found in a configuration, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The 1-based line, where it could be found.
    pub line: Option<usize>,
    /// The id of the site, for problems inside a site.
    pub site: Option<String>,
    /// The field, as a dotted path (`tls.ca_file`).
    pub field: Option<String>,
    /// What is wrong, in lower case.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(":")?;
        if let Some(site) = &self.site {
            write!(f, " site {site:?}:")?;
        }
        if let Some(field) = &self.field {
            write!(f, " field `{field}`:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The text was read but is not a valid configuration.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// Where secrets referenced by the configuration come from.
pub trait Secrets {
    /// The value of an environment variable.
    fn env(&self, name: &str) -> Option<String>;
    /// The contents of a file.
    fn file(&self, path: &Path) -> std::io::Result<String>;
}

/// Secrets from the real process environment and file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemSecrets;

impl Secrets for SystemSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// How a probe authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic {
        /// User name (not secret).
        username: String,
        /// Password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
}

/// Which address family to probe.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IpVersion {
    /// Addresses in the resolver's order (IPv6 asked for only when there is no IPv4 address,
    /// unless every address is probed).
    #[default]
    Auto,
    /// IPv4 addresses only.
    Ipv4,
    /// IPv6 addresses only.
    Ipv6,
    /// Both families, IPv4 first (blackbox_exporter's `preferred_ip_protocol: ip4` with
    /// `ip_protocol_fallback`).
    PreferIpv4,
    /// Both families, IPv6 first.
    PreferIpv6,
}

impl IpVersion {
    /// Whether an address of this family may be probed.
    pub fn admits(self, ip: &std::net::IpAddr) -> bool {
        match self {
            IpVersion::Ipv4 => ip.is_ipv4(),
            IpVersion::Ipv6 => ip.is_ipv6(),
            _ => true,
        }
    }

    /// The family's name in messages.
    pub fn family(self) -> &'static str {
        match self {
            IpVersion::Ipv4 => "IPv4",
            IpVersion::Ipv6 => "IPv6",
            _ => "IP",
        }
    }
}

/// Which resolver turns names into addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResolverSetting {
    /// The system's configuration (`/etc/resolv.conf`, `/etc/hosts`).
    #[default]
    System,
    /// These name servers, in order.
    Servers(Vec<SocketAddr>),
}

/// A site's exceptions to the `network` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SiteNetwork {
    /// Ranges this site may reach although `network.deny` (or a non-empty `network.allow`)
    /// would refuse them. Never past `--network.multi-tenant`.
    pub allow: Vec<IpNet>,
    /// Ranges this site may not reach, on top of `network.deny`.
    pub deny: Vec<IpNet>,
}

/// The `network` section: where probes may connect and how names resolve.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    /// Ranges never connected to.
    pub deny: Vec<IpNet>,
    /// When non-empty, the only ranges connected to.
    pub allow: Vec<IpNet>,
    /// Address family preference.
    pub ip_version: IpVersion,
    /// Name resolution.
    pub resolver: ResolverSetting,
    /// Deny [`crate::resolve::MULTI_TENANT_DENY`] too (`--network.multi-tenant`: set by the
    /// operator's flag, never by a config file, which a tenant may have written).
    pub multi_tenant: bool,
}

/// A remote-write destination: where probe samples are pushed, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWrite {
    /// Names the destination in logs and in the `destination` label of its metrics;
    /// defaults to the URL.
    pub name: String,
    /// The receiver's URL.
    pub url: Url,
    /// Labels added to every series that does not already carry the label, sorted by name.
    pub external_labels: Vec<(String, String)>,
    /// Extra request headers (a tenant header such as `X-Scope-OrgID`, for example).
    pub headers: HeaderMap,
    /// Authentication.
    pub auth: Option<Auth>,
    /// TLS settings for `https://` receivers.
    pub tls: Arc<tls::TlsClient>,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Queueing, batching and retries.
    pub queue: QueueSettings,
}

/// The queue of one remote-write destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Samples held while the receiver is slow or down; beyond it new samples are dropped.
    pub capacity: usize,
    /// Samples in one request at most.
    pub max_samples_per_send: usize,
    /// How long a partial batch waits for more samples before it is sent.
    pub batch_send_deadline: Duration,
    /// First wait before a retry; doubled after each failure, with jitter.
    pub min_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            max_samples_per_send: 2_000,
            batch_send_deadline: Duration::from_secs(5),
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Headers the remote-write protocol sets itself, or that have their own setting.
const RESERVED_REMOTE_WRITE_HEADERS: &[&str] = &[
    "content-encoding",
    "content-type",
    "content-length",
    "x-prometheus-remote-write-version",
    "authorization",
    "user-agent",
    "host",
];

/// Which optional per-site series are exported: series are what users pay for downstream.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// `probe_http_duration_seconds{phase}` (5 series a site).
    pub phases: bool,
    /// `sitewatch_probe_duration_seconds` histogram.
    pub histogram: bool,
    /// Upper bounds of the histogram's buckets, in seconds (sites may set their own).
    pub histogram_buckets: Arc<[f64]>,
    /// `probe_tls_version_info`, `probe_ssl_last_chain_info` and
    /// `probe_ssl_last_chain_expiry_timestamp_seconds` (3 series a TLS site).
    pub tls_details: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            phases: true,
            histogram: true,
            // Internet latencies, 50 ms (nearby) to 10 s (struggling); eight buckets keep a
            // site's series near blackbox_exporter's count.
            histogram_buckets: Arc::from([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            tls_details: true,
        }
    }
}

/// A regular expression compared by its source text.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::bytes::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// An inclusive range of accepted status codes.
pub type StatusRange = std::ops::RangeInclusive<u16>;

/// One validated site: everything a probe needs, nothing left to parse.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// The id, unique in the configuration.
    pub id: String,
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// The URL probed first.
    pub url: Url,
    /// Extra metric labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Request method.
    pub method: http::Method,
    /// Request headers (defaults merged with the site's).
    pub headers: HeaderMap,
    /// Request body.
    pub body: Option<bytes::Bytes>,
    /// Authentication.
    pub auth: Option<Auth>,
    /// TLS settings (compared by value; the client config is built from them).
    pub tls: Arc<tls::TlsClient>,
    /// HTTP proxy.
    pub proxy: Option<Url>,
    /// The site's own network exceptions; used only when the operator runs with
    /// `--network.site-overrides`, refused otherwise.
    pub network: Option<SiteNetwork>,
    /// Time between probe starts.
    pub interval: Duration,
    /// Deadline of one probe.
    pub timeout: Duration,
    /// Accepted final status codes.
    pub valid_status: Vec<StatusRange>,
    /// Whether redirects are followed.
    pub follow_redirects: bool,
    /// How many redirects are followed before failing.
    pub max_redirects: u32,
    /// Body bytes read before the probe fails with `body_too_large`.
    pub max_body_bytes: u64,
    /// Body must match.
    pub regex: Option<Pattern>,
    /// Body must not match.
    pub regex_absent: Option<Pattern>,
    /// Header, JSON, protocol, encoding and time checks.
    pub checks: Checks,
    /// Which of the name's addresses are probed.
    pub addresses: AddressMode,
    /// Address family preference, if the site overrides `network.ip_version`.
    pub ip_version: Option<IpVersion>,
    /// Consecutive failures before `sitewatch_site_up` turns 0.
    pub failure_threshold: u32,
    /// Consecutive successes before `sitewatch_site_up` turns 1 again.
    pub success_threshold: u32,
    /// The site's own histogram buckets, if it overrides `metrics.histogram_buckets`.
    pub histogram_buckets: Option<Arc<[f64]>>,
    /// The file this site came from.
    pub source: PathBuf,
}

impl Site {
    /// The key that identifies the site: tenant and id. URLs are not keys.
    pub fn key(&self) -> String {
        match &self.tenant {
            Some(t) => format!("{t}/{}", self.id),
            None => self.id.clone(),
        }
    }
}

/// A whole validated configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Sites in file order.
    pub sites: Vec<Arc<Site>>,
    /// Network policy and resolver.
    pub network: Network,
    /// Remote-write destinations.
    pub remote_write: Vec<RemoteWrite>,
    /// Optional series.
    pub metrics: MetricsSettings,
}

// ---------------------------------------------------------------------------
// Raw, as written.

/// A sitewatch configuration file: the sites to probe and how.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "sitewatch configuration")]
struct RawFile {
    /// Settings every site of this file inherits unless it sets its own.
    #[serde(default)]
    defaults: Option<RawDefaults>,
    /// Where probes may connect and how names resolve (one file of a directory only).
    #[serde(default)]
    network: Option<RawNetwork>,
    /// Prometheus remote-write destinations (one file of a directory only).
    #[serde(default)]
    remote_write: Option<Vec<RawRemoteWrite>>,
    /// Which optional per-site series are exported (one file of a directory only).
    #[serde(default)]
    metrics: Option<RawMetrics>,
    /// The sites to probe. Ids are unique across every file.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawSite>>")]
    sites: Option<Vec<Value>>,
}

with_check_fields! {
/// Settings every site of the file inherits unless it sets its own.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    /// Time between probe starts, e.g. `30s` (default `30s`).
    interval: Option<String>,
    /// Deadline of one probe, e.g. `10s` (default `10s`); at most `interval`.
    timeout: Option<String>,
    /// Request method (default `GET`).
    method: Option<String>,
    /// Accepted final status codes: codes, ranges (`200-299`) or classes (`2xx`).
    #[serde(default)]
    #[schemars(schema_with = "schema::valid_status")]
    valid_status: Option<Vec<Value>>,
    /// Whether redirects are followed (default true).
    follow_redirects: Option<bool>,
    /// Redirects followed before the probe fails (default 10).
    max_redirects: Option<u32>,
    /// Body bytes read before the probe fails with `body_too_large`: bytes or `1MiB`.
    #[serde(default)]
    #[schemars(schema_with = "schema::size")]
    max_body_bytes: Option<Value>,
    /// Request headers; a site's headers replace these by name.
    headers: Option<BTreeMap<String, String>>,
    /// TLS settings.
    tls: Option<RawTls>,
    /// An `http://` proxy for every request.
    proxy: Option<String>,
}
}

/// Where probes may connect and how names resolve.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    /// CIDR ranges never connected to, checked against the resolved address.
    #[serde(default)]
    deny: Vec<String>,
    /// When non-empty, the only CIDR ranges connected to.
    #[serde(default)]
    allow: Vec<String>,
    /// Address family preference of every site (a site may override it).
    #[serde(default)]
    ip_version: IpVersion,
    /// `system`, or a list of name servers (`127.0.0.1:5353`).
    #[serde(default)]
    #[schemars(schema_with = "schema::resolver")]
    resolver: Option<Value>,
}

/// One remote-write destination.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRemoteWrite {
    /// The receiver's write endpoint.
    url: String,
    /// A name for this destination's metrics (default: the URL).
    name: Option<String>,
    /// Labels added to every pushed series that lacks them.
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Basic authentication.
    basic_auth: Option<RawBasicAuth>,
    /// File holding a bearer token.
    bearer_token_file: Option<PathBuf>,
    /// Environment variable holding a bearer token.
    bearer_token_env: Option<String>,
    /// TLS settings.
    tls: Option<RawTls>,
    /// Deadline of one push (default `30s`).
    timeout: Option<String>,
    /// Queueing and retry settings.
    queue: Option<RawQueue>,
}

/// Queueing and retry settings of a remote-write destination.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    /// Samples held while the receiver is slow or down.
    capacity: Option<usize>,
    /// Samples per request.
    max_samples_per_send: Option<usize>,
    /// Longest a sample waits for a batch to fill.
    batch_send_deadline: Option<String>,
    /// First retry delay.
    min_backoff: Option<String>,
    /// Longest retry delay.
    max_backoff: Option<String>,
}

/// Which optional per-site series are exported.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// `probe_http_duration_seconds{phase}` (default true).
    phases: Option<bool>,
    /// `sitewatch_probe_duration_seconds` histogram (default true).
    histogram: Option<bool>,
    /// Default histogram bucket bounds in seconds.
    histogram_buckets: Option<Vec<f64>>,
    /// `probe_tls_version_info`, `probe_ssl_last_chain_info` and
    /// `probe_ssl_last_chain_expiry_timestamp_seconds` (default true).
    tls_details: Option<bool>,
}

with_check_fields! {
/// One site to probe.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawSite {
    /// The key: unique within the tenant. URLs may repeat.
    #[schemars(with = "String")]
    id: Option<String>,
    /// The `http://` or `https://` URL probed.
    #[schemars(with = "String")]
    url: Option<String>,
    /// The body must match this regular expression.
    regex: Option<String>,
    /// The body must not match this regular expression.
    regex_absent: Option<String>,
    /// The tenant the site belongs to.
    tenant: Option<String>,
    /// Extra labels on every series of the site.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Request method.
    method: Option<String>,
    /// Request headers.
    headers: Option<BTreeMap<String, String>>,
    /// Request body.
    body: Option<String>,
    /// Basic authentication.
    basic_auth: Option<RawBasicAuth>,
    /// File holding a bearer token.
    bearer_token_file: Option<PathBuf>,
    /// Environment variable holding a bearer token.
    bearer_token_env: Option<String>,
    /// TLS settings.
    tls: Option<RawTls>,
    /// An `http://` proxy.
    proxy: Option<String>,
    /// The site's exceptions to `network` (needs `--network.site-overrides`).
    network: Option<RawSiteNetwork>,
    /// Time between probe starts.
    interval: Option<String>,
    /// Deadline of one probe.
    timeout: Option<String>,
    /// Accepted final status codes.
    #[serde(default)]
    #[schemars(schema_with = "schema::valid_status")]
    valid_status: Option<Vec<Value>>,
    /// Whether redirects are followed.
    follow_redirects: Option<bool>,
    /// Redirects followed before the probe fails.
    max_redirects: Option<u32>,
    /// Body bytes read before the probe fails with `body_too_large`.
    #[serde(default)]
    #[schemars(schema_with = "schema::size")]
    max_body_bytes: Option<Value>,
}
}

/// A site's exceptions to the `network` section.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawSiteNetwork {
    /// Ranges this site may reach although `network` refuses them.
    #[serde(default)]
    allow: Vec<String>,
    /// Ranges this site may not reach.
    #[serde(default)]
    deny: Vec<String>,
}

/// HTTP basic authentication; the password comes from a file or the environment.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    /// User name.
    username: String,
    /// File holding the password.
    password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    password_env: Option<String>,
}

/// TLS settings.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// Skip certificate verification (the expiry is still reported).
    #[serde(default)]
    insecure_skip_verify: bool,
    /// Trust these CA certificates (PEM) instead of the system's.
    ca_file: Option<PathBuf>,
    /// Name sent in SNI and verified, instead of the URL's host.
    server_name: Option<String>,
}

// ---------------------------------------------------------------------------
// Loading.

/// Reads a file, or every `*.yaml`/`*.yml` file of a directory (sorted by name), and parses it.
pub fn load_path(path: &Path, secrets: &dyn Secrets) -> Result<Config, LoadError> {
    let sources = read_sources(path)?;
    parse_sources(&sources, secrets).map_err(LoadError::Invalid)
}

/// Reads the text of a config file or of every YAML file in a config directory.
pub fn read_sources(path: &Path) -> Result<Vec<(PathBuf, String)>, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_dir() {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        return Ok(vec![(path.to_path_buf(), text)]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Kubernetes ConfigMap volumes hold `..data` and `..2024_…` entries beside the links.
        if name.starts_with('.') {
            continue;
        }
        let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if yaml && std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(io(&p))?;
            Ok((p, text))
        })
        .collect()
}

/// Parses and validates configuration text; returns every error found, not just the first.
///
/// One exception: a bad value in a file's `defaults` is reported once, and that file's sites
/// are not checked further, since each of them would repeat it.
pub fn parse_sources(
    sources: &[(PathBuf, String)],
    secrets: &dyn Secrets,
) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut config = Config::default();
    let mut seen: HashMap<String, (PathBuf, Option<usize>)> = HashMap::new();
    let mut global_from: HashMap<&'static str, PathBuf> = HashMap::new();
    let mut tls_cache = tls::ClientCache::default();

    for (file, text) in sources {
        let mut ctx = Ctx {
            file,
            lines: text.lines().collect(),
            site_items: std::cell::OnceCell::new(),
            errors: &mut errors,
        };
        let raw: RawFile = match parse_file(text) {
            Ok(raw) => raw,
            Err((line, field, message)) => {
                ctx.push(line, None, field.as_deref(), message);
                continue;
            }
        };
        for (section, present) in [
            ("network", raw.network.is_some()),
            ("remote_write", raw.remote_write.is_some()),
            ("metrics", raw.metrics.is_some()),
        ] {
            if !present {
                continue;
            }
            if let Some(first) = global_from.get(section) {
                let line = ctx.top_level_line(section);
                ctx.push(
                    line,
                    None,
                    Some(section),
                    format!(
                        "already set in {}; set it in one file only",
                        first.display()
                    ),
                );
            } else {
                global_from.insert(section, file.clone());
            }
        }
        if let Some(n) = raw.network {
            config.network = ctx.network(n);
        }
        if let Some(rw) = raw.remote_write {
            config.remote_write = ctx.remote_write(rw, secrets, &mut tls_cache);
        }
        if let Some(m) = raw.metrics {
            config.metrics = ctx.metrics(m);
        }
        let mut defaults = raw.defaults.unwrap_or_default();
        let default_checks = take_checks!(defaults);
        let default_errors = ctx.errors.len();
        ctx.check_defaults(&defaults, &default_checks);
        if ctx.errors.len() > default_errors {
            // Every site would repeat the same error; report it once.
            continue;
        }
        let sites = raw.sites.unwrap_or_default();
        if sites.len() > MAX_SITES_PER_FILE {
            let line = ctx.top_level_line("sites");
            ctx.push(
                line,
                None,
                Some("sites"),
                format!(
                    "{} sites in one file; at most {MAX_SITES_PER_FILE} (split them over several files of a config directory)",
                    sites.len()
                ),
            );
            continue;
        }
        for (index, value) in sites.into_iter().enumerate() {
            let Some(site) = ctx.site(
                index,
                value,
                &defaults,
                &default_checks,
                secrets,
                &mut tls_cache,
            ) else {
                continue;
            };
            let line = ctx.site_field_line(index, "id");
            if let Some((first_file, first_line)) = seen.get(&site.key()) {
                let at = match first_line {
                    Some(l) => format!("{}:{l}", first_file.display()),
                    None => first_file.display().to_string(),
                };
                ctx.push(
                    line,
                    Some(&site.id),
                    Some("id"),
                    format!("duplicate site id (first defined at {at})"),
                );
                continue;
            }
            seen.insert(site.key(), (file.clone(), line));
            config.sites.push(Arc::new(site));
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Most sites one file may list: bounds what one (possibly tenant-written) file can cost.
pub const MAX_SITES_PER_FILE: usize = 200_000;

/// Longest URL accepted, as most servers and proxies limit them.
pub const MAX_URL_BYTES: usize = 8192;

/// Largest config file read: 100,000 sites take about 5 MiB.
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// Deepest nesting of flow collections (`[`, `{`) accepted. The YAML parser refuses more than
/// 128 levels anyway, but only after scanning the whole unclosed run, which takes time
/// quadratic in its length (200 KiB of `{a: ` took 8 s): checking first makes such a file a
/// fast error. A block scalar holding more unbalanced brackets than this is refused too.
const MAX_FLOW_DEPTH: usize = 100;

/// The line where flow collections nest deeper than [`MAX_FLOW_DEPTH`], ignoring quoted
/// strings and comments.
fn flow_too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut single, mut double, mut comment, mut escaped) = (false, false, false, false);
    let mut prev = '\n';
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
            // Plain YAML quotes do not span lines in configs; a stray one must not hide the rest.
            single = false;
            double = false;
        } else if comment {
        } else if double {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                double = false;
            }
        } else if single {
            if c == '\'' {
                single = false;
            }
        } else {
            match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' => double = true,
                '\'' => single = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(line);
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = c;
    }
    None
}

fn parse_file(text: &str) -> Result<RawFile, (Option<usize>, Option<String>, String)> {
    if text.trim().is_empty() {
        return Ok(RawFile::default());
    }
    if text.len() > MAX_FILE_BYTES {
        return Err((
            None,
            None,
            format!("file is larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    if let Some(line) = flow_too_deep(text) {
        return Err((
            Some(line),
            None,
            format!("[ and {{ nest deeper than {MAX_FLOW_DEPTH} levels"),
        ));
    }
    let value: Value = serde_norway::from_str(text)
        .map_err(|e| (e.location().map(|l| l.line()), None, e.to_string()))?;
    if value.is_null() {
        return Ok(RawFile::default());
    }
    let mut track = serde_path_to_error::Track::new();
    RawFile::deserialize(serde_path_to_error::Deserializer::new(value, &mut track)).map_err(|e| {
        let field = serde_field(&track.path().to_string(), &e.to_string());
        let lines: Vec<&str> = text.lines().collect();
        let line = line_of_path(&lines, 0, lines.len(), &field);
        let field = (!field.is_empty()).then_some(field);
        (
            line,
            field,
            e.to_string().replace("invalid type: ", "wrong type: "),
        )
    })
}

/// The dotted path of a serde error: the tracked path, plus the name of an unknown field.
fn serde_field(tracked: &str, message: &str) -> String {
    let tracked = if tracked == "." { "" } else { tracked };
    match unknown_field(message) {
        Some(name) if tracked.is_empty() => name,
        Some(name) if tracked.ends_with(&name) => tracked.to_string(),
        Some(name) => format!("{tracked}.{name}"),
        None => tracked.to_string(),
    }
}

/// Pulls the field name out of serde's "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<String> {
    let start = message.find("unknown field `")? + "unknown field `".len();
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_string())
}

struct Ctx<'a> {
    file: &'a Path,
    /// The file's lines, split once: line lookups index into them.
    lines: Vec<&'a str>,
    /// Start lines of the items of `sites:`, and the end of the section; found on first use.
    site_items: std::cell::OnceCell<Option<(Vec<usize>, usize)>>,
    errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    fn push(
        &mut self,
        line: Option<usize>,
        site: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            site: site.map(str::to_string),
            field: field.map(str::to_string),
            message: message.into(),
        });
    }

    /// A path from the config, relative to the directory of the file that names it.
    fn relative(&self, path: &Path) -> PathBuf {
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The 1-based line of a top-level key.
    fn top_level_line(&self, key: &str) -> Option<usize> {
        let prefix = format!("{key}:");
        self.lines
            .iter()
            .position(|l| l.starts_with(&prefix))
            .map(|i| i + 1)
    }

    /// The 0-based line range of a top-level section.
    fn section(&self, key: &str) -> Option<(usize, usize)> {
        let lines = &self.lines;
        let start = self.top_level_line(key)? - 1;
        let end = (start + 1..lines.len())
            .find(|&i| {
                let l = lines[i];
                !l.is_empty() && !l.starts_with([' ', '\t', '#', '-'])
            })
            .unwrap_or(lines.len());
        Some((start, end))
    }

    /// The 0-based line range of the `index`-th item of `sites:`.
    fn site_block(&self, index: usize) -> Option<(usize, usize)> {
        let (items, end) = self
            .site_items
            .get_or_init(|| self.item_starts("sites"))
            .as_ref()?;
        let first = *items.get(index)?;
        let last = items.get(index + 1).copied().unwrap_or(*end);
        Some((first, last))
    }

    fn site_field_line(&self, index: usize, field: &str) -> Option<usize> {
        let (start, end) = self.site_block(index)?;
        line_of_path(&self.lines, start, end, field)
    }

    fn defaults_field_line(&self, field: &str) -> Option<usize> {
        let (start, end) = self.section("defaults")?;
        line_of_path(&self.lines, start + 1, end, field)
    }

    fn network(&mut self, raw: RawNetwork) -> Network {
        let line = |ctx: &Self, f: &str| {
            ctx.section("network")
                .and_then(|(s, e)| line_of_key(&ctx.lines, s, e, f))
        };
        let cidrs = |ctx: &mut Self, field: &str, list: Vec<String>| -> Vec<IpNet> {
            list.into_iter()
                .filter_map(|s| match parse_cidr(&s) {
                    Ok(net) => Some(net),
                    Err(e) => {
                        let l = line(ctx, field);
                        ctx.push(l, None, Some(&format!("network.{field}")), e);
                        None
                    }
                })
                .collect()
        };
        let deny = cidrs(self, "deny", raw.deny);
        let allow = cidrs(self, "allow", raw.allow);
        let resolver = match raw.resolver {
            None => ResolverSetting::System,
            Some(Value::String(s)) if s == "system" => ResolverSetting::System,
            Some(Value::Sequence(items)) => {
                let mut servers = Vec::new();
                for item in items {
                    match item.as_str().and_then(|s| parse_name_server(s).ok()) {
                        Some(addr) => servers.push(addr),
                        None => {
                            let l = line(self, "resolver");
                            self.push(
                                l,
                                None,
                                Some("network.resolver"),
                                format!(
                                    "{} is not a name server address (IP or IP:port)",
                                    value_text(&item)
                                ),
                            );
                        }
                    }
                }
                if servers.is_empty() {
                    ResolverSetting::System
                } else {
                    ResolverSetting::Servers(servers)
                }
            }
            Some(other) => {
                let l = line(self, "resolver");
                self.push(
                    l,
                    None,
                    Some("network.resolver"),
                    format!(
                        "expected `system` or a list of name servers, got {}",
                        value_text(&other)
                    ),
                );
                ResolverSetting::System
            }
        };
        Network {
            deny,
            allow,
            ip_version: raw.ip_version,
            resolver,
            multi_tenant: false,
        }
    }

    /// The 0-based start lines of the items of a top-level list section, and its end.
    fn item_starts(&self, section: &str) -> Option<(Vec<usize>, usize)> {
        let (start, end) = self.section(section)?;
        let lines = &self.lines;
        let indent = |i: usize| lines[i].len() - lines[i].trim_start().len();
        let items: Vec<usize> = (start + 1..end)
            .filter(|&i| lines[i].trim_start().starts_with("- "))
            .collect();
        let top = items.iter().map(|&i| indent(i)).min()?;
        let items = items.into_iter().filter(|&i| indent(i) == top).collect();
        Some((items, end))
    }

    /// The 0-based line range of the `index`-th item of a top-level list section.
    fn item_block(&self, section: &str, index: usize) -> Option<(usize, usize)> {
        let (items, end) = self.item_starts(section)?;
        let first = *items.get(index)?;
        Some((first, items.get(index + 1).copied().unwrap_or(end)))
    }

    fn remote_write(
        &mut self,
        raw: Vec<RawRemoteWrite>,
        secrets: &dyn Secrets,
        tls_cache: &mut tls::ClientCache,
    ) -> Vec<RemoteWrite> {
        let mut out: Vec<RemoteWrite> = Vec::new();
        for (index, rw) in raw.into_iter().enumerate() {
            let before = self.errors.len();
            let err = |ctx: &mut Self, field: &str, message: String| {
                let line = ctx
                    .item_block("remote_write", index)
                    .and_then(|(s, e)| line_of_path(&ctx.lines, s, e, field))
                    .or_else(|| ctx.item_block("remote_write", index).map(|(s, _)| s + 1));
                ctx.push(
                    line,
                    None,
                    Some(&format!("remote_write[{index}].{field}")),
                    message,
                );
            };
            let url = match parse_http_url(&rw.url) {
                Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                    let msg = "credentials in the URL are not allowed: use basic_auth with password_file or password_env";
                    err(self, "url", msg.into());
                    None
                }
                Ok(u) => Some(u),
                Err(e) => {
                    err(self, "url", e);
                    None
                }
            };
            let name = rw
                .name
                .clone()
                .or_else(|| url.as_ref().map(Url::to_string))
                .unwrap_or_default();
            if rw.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                err(self, "name", "must not be empty".into());
            } else if out.iter().any(|o| o.name == name) {
                let msg = format!("two destinations are named {name:?}; give each a distinct name");
                err(self, "name", msg);
            }
            let mut external_labels = Vec::new();
            for (k, v) in rw.external_labels {
                if !valid_label_name(&k) {
                    err(
                        self,
                        "external_labels",
                        format!("{k:?} is not a valid label name"),
                    );
                } else {
                    external_labels.push((k, v));
                }
            }
            let headers = match parse_headers(&rw.headers) {
                Ok(h) => h,
                Err(e) => {
                    err(self, "headers", e);
                    HeaderMap::new()
                }
            };
            for name in headers.keys() {
                if RESERVED_REMOTE_WRITE_HEADERS.contains(&name.as_str()) {
                    let msg = format!("header {name:?} is set by sitewatch itself (use basic_auth or a bearer token for Authorization)");
                    err(self, "headers", msg);
                }
            }
            let auth = self.auth(
                secrets,
                rw.basic_auth,
                rw.bearer_token_file,
                rw.bearer_token_env,
                &err,
            );
            let raw_tls = rw.tls.unwrap_or_default();
            let tls = self.tls_client(raw_tls, tls_cache, &err);
            let duration =
                |ctx: &mut Self, field: &str, v: Option<String>, default: Duration| match v
                    .map(|v| parse_duration(&v))
                {
                    None => default,
                    Some(Ok(d)) if !d.is_zero() => d,
                    Some(Ok(_)) => {
                        err(ctx, field, "must be greater than zero".into());
                        default
                    }
                    Some(Err(e)) => {
                        err(ctx, field, e);
                        default
                    }
                };
            let timeout = duration(self, "timeout", rw.timeout, Duration::from_secs(30));
            let raw_queue = rw.queue.unwrap_or_default();
            let d = QueueSettings::default();
            let queue = QueueSettings {
                capacity: raw_queue.capacity.unwrap_or(d.capacity),
                max_samples_per_send: raw_queue
                    .max_samples_per_send
                    .unwrap_or(d.max_samples_per_send),
                batch_send_deadline: duration(
                    self,
                    "queue.batch_send_deadline",
                    raw_queue.batch_send_deadline,
                    d.batch_send_deadline,
                ),
                min_backoff: duration(
                    self,
                    "queue.min_backoff",
                    raw_queue.min_backoff,
                    d.min_backoff,
                ),
                max_backoff: duration(
                    self,
                    "queue.max_backoff",
                    raw_queue.max_backoff,
                    d.max_backoff,
                ),
            };
            if queue.max_samples_per_send == 0 {
                err(
                    self,
                    "queue.max_samples_per_send",
                    "must be at least 1".into(),
                );
            } else if queue.capacity < queue.max_samples_per_send {
                let msg = format!(
                    "capacity {} is smaller than max_samples_per_send {}",
                    queue.capacity, queue.max_samples_per_send
                );
                err(self, "queue.capacity", msg);
            }
            if queue.min_backoff > queue.max_backoff {
                err(
                    self,
                    "queue.min_backoff",
                    "is longer than queue.max_backoff".into(),
                );
            }
            if self.errors.len() > before {
                continue;
            }
            let (Some(url), Some(tls)) = (url, tls) else {
                continue;
            };
            out.push(RemoteWrite {
                name,
                url,
                external_labels,
                headers,
                auth,
                tls,
                timeout,
                queue,
            });
        }
        out
    }

    /// Authentication from `basic_auth` or a bearer token, each secret from a file or the
    /// environment; `err` reports a field relative to the enclosing item.
    fn auth(
        &mut self,
        secrets: &dyn Secrets,
        basic_auth: Option<RawBasicAuth>,
        bearer_token_file: Option<PathBuf>,
        bearer_token_env: Option<String>,
        err: &dyn Fn(&mut Self, &str, String),
    ) -> Option<Auth> {
        // `base` is `basic_auth.password` or `bearer_token`; the field named is the form used.
        let read = |ctx: &mut Self, base: &str, file: Option<PathBuf>, env: Option<String>| match (
            file, env,
        ) {
            (Some(_), Some(_)) => {
                let msg = "set either the _file or the _env form, not both".to_string();
                err(ctx, &format!("{base}_env"), msg);
                None
            }
            (Some(path), None) => {
                let full = ctx.relative(&path);
                match secrets.file(&full) {
                    Ok(s) => Some(Secret(s.trim_end_matches(['\n', '\r']).to_string())),
                    Err(e) => {
                        let msg = format!("cannot read secret file {}: {e}", full.display());
                        err(ctx, &format!("{base}_file"), msg);
                        None
                    }
                }
            }
            (None, Some(name)) => secrets.env(&name).map(Secret).or_else(|| {
                let msg = format!("environment variable {name} is not set");
                err(ctx, &format!("{base}_env"), msg);
                None
            }),
            (None, None) => None,
        };
        let bearer_field = if bearer_token_file.is_some() {
            "bearer_token_file"
        } else {
            "bearer_token_env"
        };
        let basic = basic_auth.map(|b| {
            let password = read(self, "basic_auth.password", b.password_file, b.password_env);
            (b.username, password)
        });
        let bearer = read(self, "bearer_token", bearer_token_file, bearer_token_env);
        match (basic, bearer) {
            (Some(_), Some(_)) => {
                err(
                    self,
                    bearer_field,
                    "set either basic_auth or a bearer token, not both".into(),
                );
                None
            }
            (Some((username, Some(password))), None) => Some(Auth::Basic { username, password }),
            (Some((username, None)), None) => Some(Auth::Basic {
                username,
                password: Secret(String::new()),
            }),
            (None, Some(token)) => Some(Auth::Bearer(token)),
            (None, None) => None,
        }
    }

    /// The TLS client for a `tls:` block (paths relative to the file).
    fn tls_client(
        &mut self,
        raw: RawTls,
        tls_cache: &mut tls::ClientCache,
        err: &dyn Fn(&mut Self, &str, String),
    ) -> Option<Arc<tls::TlsClient>> {
        let settings = TlsSettings {
            insecure_skip_verify: raw.insecure_skip_verify,
            ca_file: raw.ca_file.map(|p| self.relative(&p)),
            server_name: raw.server_name,
        };
        if let Some(name) = &settings.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                err(
                    self,
                    "tls.server_name",
                    format!("{name:?} is not a valid server name"),
                );
            }
        }
        match tls_cache.get(&settings) {
            Ok(s) => Some(s),
            Err(e) => {
                err(self, "tls.ca_file", e);
                None
            }
        }
    }

    fn metrics(&mut self, raw: RawMetrics) -> MetricsSettings {
        let mut m = MetricsSettings::default();
        m.phases = raw.phases.unwrap_or(m.phases);
        m.histogram = raw.histogram.unwrap_or(m.histogram);
        m.tls_details = raw.tls_details.unwrap_or(m.tls_details);
        if let Some(b) = raw.histogram_buckets {
            if let Err(e) = checks::check_buckets(&b) {
                let line = self
                    .section("metrics")
                    .and_then(|(s, e)| line_of_key(&self.lines, s, e, "histogram_buckets"));
                self.push(line, None, Some("metrics.histogram_buckets"), e);
            } else {
                m.histogram_buckets = b.into();
            }
        }
        m
    }

    fn check_defaults(&mut self, d: &RawDefaults, checks: &checks::RawChecks) {
        let report = |ctx: &mut Self, field: &str, r: Result<(), String>| {
            if let Err(e) = r {
                let line = ctx.defaults_field_line(field);
                ctx.push(line, None, Some(&format!("defaults.{field}")), e);
            }
        };
        self.checks(checks.clone(), &|ctx: &mut Self, field: &str, e: String| {
            report(ctx, field, Err(e))
        });
        if let Some(v) = &d.interval {
            report(self, "interval", parse_duration(v).map(drop));
        }
        if let Some(v) = &d.timeout {
            report(self, "timeout", parse_duration(v).map(drop));
        }
        if let Some(v) = &d.method {
            report(self, "method", parse_method(v).map(drop));
        }
        if let Some(v) = &d.valid_status {
            report(self, "valid_status", parse_valid_status(v).map(drop));
        }
        if let Some(v) = &d.max_body_bytes {
            report(self, "max_body_bytes", parse_size(v).map(drop));
        }
        if let Some(v) = &d.headers {
            report(self, "headers", parse_headers(v).map(drop));
        }
        if let Some(v) = &d.proxy {
            report(self, "proxy", parse_proxy_url(v).map(drop));
        }
        if let Some(ca) = d.tls.as_ref().and_then(|t| t.ca_file.as_deref()) {
            report(self, "tls.ca_file", tls::check_ca_file(&self.relative(ca)));
        }
    }

    fn site(
        &mut self,
        index: usize,
        value: Value,
        defaults: &RawDefaults,
        default_checks: &checks::RawChecks,
        secrets: &dyn Secrets,
        tls_cache: &mut tls::ClientCache,
    ) -> Option<Site> {
        let id_hint = value
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", index + 1));
        let mut track = serde_path_to_error::Track::new();
        let mut raw =
            match RawSite::deserialize(serde_path_to_error::Deserializer::new(value, &mut track)) {
                Ok(raw) => raw,
                Err(e) => {
                    let msg = e.to_string();
                    let field = serde_field(&track.path().to_string(), &msg);
                    let line = self.site_field_line(index, &field);
                    self.push(
                        line,
                        Some(&id_hint),
                        Some(&field),
                        msg.replace("invalid type: ", "wrong type: "),
                    );
                    return None;
                }
            };
        let before = self.errors.len();
        let err = |ctx: &mut Self, field: &str, message: String| {
            // A value from `defaults` or a missing field has no line of its own in the site:
            // point at the site.
            let line = ctx
                .site_field_line(index, field)
                .or_else(|| ctx.site_block(index).map(|(start, _)| start + 1));
            ctx.push(line, Some(&id_hint), Some(field), message);
        };

        let id = match raw.id {
            Some(id) if valid_id(&id) => id,
            Some(id) => {
                err(
                    self,
                    "id",
                    format!("{id:?} is not a valid id (letters, digits, `-`, `_`, `.`, `:`)"),
                );
                id
            }
            None => {
                err(self, "id", "missing: every site needs a unique id".into());
                String::new()
            }
        };
        let url = match raw.url.as_deref().map(parse_http_url) {
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                err(self, "url", e);
                None
            }
            None => {
                err(self, "url", "missing".into());
                None
            }
        };
        let compile = |ctx: &mut Self, field: &str, src: Option<String>| {
            checks::compile_pattern(&src?)
                .map_err(|e| err(ctx, field, e))
                .ok()
        };
        let regex = compile(self, "regex", raw.regex);
        let regex_absent = compile(self, "regex_absent", raw.regex_absent);
        let site_checks = self.checks(take_checks!(raw).or(default_checks), &err);

        if let Some(t) = &raw.tenant {
            if !valid_id(t) {
                err(self, "tenant", format!("{t:?} is not a valid tenant name"));
            }
        }
        let mut labels = Vec::new();
        for (k, v) in raw.labels {
            if !valid_label_name(&k) {
                err(
                    self,
                    &format!("labels.{k}"),
                    "not a valid Prometheus label name".into(),
                );
            } else if RESERVED_LABELS.contains(&k.as_str()) {
                err(
                    self,
                    &format!("labels.{k}"),
                    "reserved: the exporter sets this label".into(),
                );
            } else {
                labels.push((k, v));
            }
        }

        let pick = |site: Option<String>, def: &Option<String>, builtin: &str| {
            site.or_else(|| def.clone())
                .unwrap_or_else(|| builtin.to_string())
        };
        let interval_s = pick(raw.interval, &defaults.interval, "30s");
        let timeout_s = pick(raw.timeout, &defaults.timeout, "10s");
        let method_s = pick(raw.method, &defaults.method, "GET");
        let interval = parse_duration(&interval_s)
            .map_err(|e| err(self, "interval", e))
            .ok();
        let timeout = parse_duration(&timeout_s)
            .map_err(|e| err(self, "timeout", e))
            .ok();
        if let (Some(i), Some(t)) = (interval, timeout) {
            if i.is_zero() {
                err(self, "interval", "must be greater than zero".into());
            }
            if t.is_zero() {
                err(self, "timeout", "must be greater than zero".into());
            }
            if t > i {
                err(
                    self,
                    "timeout",
                    format!("timeout {timeout_s} is longer than interval {interval_s}"),
                );
            }
        }
        let method = parse_method(&method_s)
            .map_err(|e| err(self, "method", e))
            .ok();
        let valid_status = match raw.valid_status.as_ref().or(defaults.valid_status.as_ref()) {
            Some(v) => parse_valid_status(v)
                .map_err(|e| err(self, "valid_status", e))
                .unwrap_or_default(),
            None => vec![200..=299],
        };
        let max_body_bytes = match raw
            .max_body_bytes
            .as_ref()
            .or(defaults.max_body_bytes.as_ref())
        {
            Some(v) => parse_size(v)
                .map_err(|e| err(self, "max_body_bytes", e))
                .unwrap_or_default(),
            None => 1024 * 1024,
        };
        let mut header_src = defaults.headers.clone().unwrap_or_default();
        // Site headers replace default headers of the same name, whatever the case.
        for (k, v) in raw.headers.unwrap_or_default() {
            header_src.retain(|dk, _| !dk.eq_ignore_ascii_case(&k));
            header_src.insert(k, v);
        }
        let mut headers = parse_headers(&header_src)
            .map_err(|e| err(self, "headers", e))
            .unwrap_or_default();
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(crate::USER_AGENT),
            );
        }
        let proxy = match raw.proxy.as_ref().or(defaults.proxy.as_ref()) {
            Some(p) => parse_proxy_url(p).map_err(|e| err(self, "proxy", e)).ok(),
            None => None,
        };
        if let Some(c) = site_checks.checks.compression {
            if !headers.contains_key(http::header::ACCEPT_ENCODING) {
                headers.insert(
                    http::header::ACCEPT_ENCODING,
                    HeaderValue::from_static(c.token()),
                );
            }
        }
        if proxy.is_some() && site_checks.addresses != AddressMode::First {
            err(
                self,
                "addresses",
                "only `first` works with a proxy: the proxy resolves the site's name".into(),
            );
        }
        if let (Some(max), Some(t)) = (site_checks.checks.max_duration, timeout) {
            if max > t {
                err(
                    self,
                    "max_duration",
                    format!(
                        "{} is longer than timeout {timeout_s}: a probe that slow times out",
                        humantime::format_duration(max)
                    ),
                );
            }
        }

        let auth = self.auth(
            secrets,
            raw.basic_auth,
            raw.bearer_token_file,
            raw.bearer_token_env,
            &err,
        );
        if let Some(u) = &url {
            if !u.username().is_empty() || u.password().is_some() {
                err(
                    self,
                    "url",
                    "credentials in the URL are not allowed: use basic_auth with password_file or password_env".into(),
                );
            }
        }

        let raw_tls = raw.tls.or_else(|| defaults.tls.clone()).unwrap_or_default();
        let tls = self.tls_client(raw_tls, tls_cache, &err);
        let network = raw.network.map(|n| {
            let mut cidrs = |field: &str, list: Vec<String>| -> Vec<IpNet> {
                list.into_iter()
                    .filter_map(|c| parse_cidr(&c).map_err(|e| err(self, field, e)).ok())
                    .collect()
            };
            SiteNetwork {
                allow: cidrs("network.allow", n.allow),
                deny: cidrs("network.deny", n.deny),
            }
        });
        if self.errors.len() > before {
            return None;
        }
        Some(Site {
            id,
            tenant: raw.tenant,
            url: url?,
            labels,
            method: method?,
            headers,
            body: raw.body.map(bytes::Bytes::from),
            auth,
            tls: tls?,
            proxy,
            network,
            interval: interval?,
            timeout: timeout?,
            valid_status,
            follow_redirects: raw
                .follow_redirects
                .or(defaults.follow_redirects)
                .unwrap_or(true),
            max_redirects: raw
                .max_redirects
                .or(defaults.max_redirects)
                .unwrap_or(DEFAULT_MAX_REDIRECTS),
            max_body_bytes,
            regex,
            regex_absent,
            checks: site_checks.checks,
            addresses: site_checks.addresses,
            ip_version: site_checks.ip_version,
            failure_threshold: site_checks.failure_threshold,
            success_threshold: site_checks.success_threshold,
            histogram_buckets: site_checks.histogram_buckets,
            source: self.file.to_path_buf(),
        })
    }
}

/// The 1-based line of a dotted path (`tls.ca_file`, `remote_write[0].url`) within 0-based
/// lines `[start, end)`: each part is searched from the line of the part before it.
fn line_of_path(lines: &[&str], start: usize, end: usize, path: &str) -> Option<usize> {
    let mut from = start;
    let mut found = None;
    for part in path.split('.') {
        let key = part.split('[').next().unwrap_or(part);
        if key.is_empty() {
            continue;
        }
        let line = line_of_key(lines, from, end, key)?;
        from = line - 1;
        found = Some(line);
    }
    found
}

/// The 1-based line, within 0-based lines `[start, end)`, where `key:` is written.
fn line_of_key(lines: &[&str], start: usize, end: usize, key: &str) -> Option<usize> {
    if key.is_empty() || key == "." {
        return None;
    }
    let needle = format!("{key}:");
    let end = end.min(lines.len());
    (start.min(end)..end)
        .find(|&i| {
            let l = lines[i];
            l.match_indices(&needle).any(|(at, _)| {
                at == 0 || matches!(l.as_bytes()[at - 1], b' ' | b'\t' | b'{' | b',' | b'-')
            })
        })
        .map(|i| i + 1)
}

fn value_text(v: &Value) -> String {
    serde_norway::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// Parses a humantime duration (`500ms`, `1m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_method(s: &str) -> Result<http::Method, String> {
    let upper = s.trim().to_ascii_uppercase();
    http::Method::from_bytes(upper.as_bytes())
        .ok()
        .filter(|_| !upper.is_empty() && upper.chars().all(|c| c.is_ascii_uppercase()))
        .ok_or_else(|| format!("invalid HTTP method {s:?}"))
}

/// Parses a size: a number of bytes, or with a unit (`512KiB`, `1MiB`, `2MB`).
pub fn parse_size(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("invalid size {n}: must be a whole number of bytes")),
        Value::String(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("invalid size {s:?}: {e}")),
        other => Err(format!("invalid size {}", value_text(other))),
    }
}

/// Parses `valid_status`: codes (`200`), ranges (`200-299`) or classes (`2xx`).
fn parse_valid_status(items: &[Value]) -> Result<Vec<StatusRange>, String> {
    let code = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("{s:?} is not a status code (100-599)"))
    };
    if items.is_empty() {
        return Err("must list at least one status code or range".into());
    }
    items
        .iter()
        .map(|item| match item {
            Value::Number(n) => {
                let c = code(&n.to_string())?;
                Ok(c..=c)
            }
            Value::String(s) => {
                let s = s.trim();
                if let Some(class) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
                    let d = class
                        .parse::<u16>()
                        .ok()
                        .filter(|d| (1..=5).contains(d))
                        .ok_or_else(|| format!("{s:?} is not a status class (1xx-5xx)"))?;
                    return Ok(d * 100..=d * 100 + 99);
                }
                match s.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (code(a)?, code(b)?);
                        if a > b {
                            return Err(format!("range {s:?} is empty"));
                        }
                        Ok(a..=b)
                    }
                    None => {
                        let c = code(s)?;
                        Ok(c..=c)
                    }
                }
            }
            other => Err(format!(
                "{} is not a status code or range",
                value_text(other)
            )),
        })
        .collect()
}

fn parse_headers(src: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in src {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("{k:?} is not a valid header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("value of header {k:?} is not a valid header value"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// A URL as error messages may show it: a password written into it is replaced by `***`.
fn redacted(s: &str) -> String {
    let s = s.trim();
    let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
        return s.to_string();
    };
    let authority_end = s[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| scheme_end + i);
    match s[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &s[scheme_end..scheme_end + at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{}{shown}{}", &s[..scheme_end], &s[scheme_end + at..])
        }
        None => s.to_string(),
    }
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    if s.len() > MAX_URL_BYTES {
        return Err(format!(
            "URL is {} bytes long; at most {MAX_URL_BYTES}",
            s.len()
        ));
    }
    let shown = redacted(s);
    let url = Url::parse(s.trim()).map_err(|e| format!("invalid URL {shown:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("URL {shown:?} must use http or https"));
    }
    if url.host().is_none() {
        return Err(format!("URL {shown:?} has no host"));
    }
    Ok(url)
}

/// A proxy is spoken to in plain HTTP (absolute-form requests, `CONNECT` tunnels) and
/// without proxy authentication, so anything else would be silently wrong.
fn parse_proxy_url(s: &str) -> Result<Url, String> {
    let url = parse_http_url(s)?;
    if url.scheme() != "http" {
        return Err(format!(
            "proxy {:?} must be an http:// URL (TLS to the proxy is not supported)",
            redacted(s)
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "proxy credentials are not supported; remove user:password from the proxy URL".into(),
        );
    }
    Ok(url)
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse::<IpNet>()
        .or_else(|_| s.trim().parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR range or address"))
}

fn parse_name_server(s: &str) -> Result<SocketAddr, ()> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(drop)
}

#[cfg(test)]
mod tests;

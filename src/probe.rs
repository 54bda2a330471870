//! One probe of one site: a fresh connection per probe, every phase timed, every failure classified.
//!
//! The flow of a probe is `resolve -> policy check -> connect -> (proxy CONNECT) -> TLS ->
//! request -> response headers -> body`, repeated for each redirect hop. Phase times add up
//! over hops, as blackbox_exporter reports them.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, HOST, LOCATION};
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use url::{Host, Url};

use crate::checks::{self, AddressMode, Compression};
use crate::config::{Auth, Network, Site};
use crate::resolve::{Policy, ResolveError, Resolver};
use crate::tls;

/// The class of a probe's outcome: the `result` label of `sitewatch_probes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResultClass {
    /// Every check passed.
    Success,
    /// The name did not resolve.
    DnsError,
    /// The TCP connection failed.
    ConnectError,
    /// The TLS handshake failed (including certificate verification).
    TlsError,
    /// The probe ran past its timeout.
    Timeout,
    /// The final status code is not in `valid_status`.
    HttpStatus,
    /// `regex` did not match or `regex_absent` did.
    Regex,
    /// The body was longer than `max_body_bytes`.
    BodyTooLarge,
    /// A `fail_if_header_matches` / `fail_if_header_not_matches` check failed.
    Header,
    /// A `json_conditions` entry failed, or the body is not JSON.
    Json,
    /// The response was not in the `compression` asked for, or did not decode.
    Compression,
    /// `fail_if_ssl` or `fail_if_not_ssl` failed.
    Ssl,
    /// The final response's HTTP version is not in `valid_http_versions`.
    HttpVersion,
    /// A certificate expires within `fail_if_cert_expires_within`.
    CertExpiring,
    /// Every check passed, but the probe took longer than `max_duration`.
    Slow,
    /// The network policy forbade the address.
    Denied,
    /// Anything else: protocol errors, redirect loops, bad redirects.
    Error,
}

impl ResultClass {
    /// Every class, in label order.
    pub const ALL: [ResultClass; 17] = [
        ResultClass::Success,
        ResultClass::DnsError,
        ResultClass::ConnectError,
        ResultClass::TlsError,
        ResultClass::Timeout,
        ResultClass::HttpStatus,
        ResultClass::Regex,
        ResultClass::BodyTooLarge,
        ResultClass::Header,
        ResultClass::Json,
        ResultClass::Compression,
        ResultClass::Ssl,
        ResultClass::HttpVersion,
        ResultClass::CertExpiring,
        ResultClass::Slow,
        ResultClass::Denied,
        ResultClass::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultClass::Success => "success",
            ResultClass::DnsError => "dns_error",
            ResultClass::ConnectError => "connect_error",
            ResultClass::TlsError => "tls_error",
            ResultClass::Timeout => "timeout",
            ResultClass::HttpStatus => "http_status",
            ResultClass::Regex => "regex",
            ResultClass::BodyTooLarge => "body_too_large",
            ResultClass::Header => "header",
            ResultClass::Json => "json",
            ResultClass::Compression => "compression",
            ResultClass::Ssl => "ssl",
            ResultClass::HttpVersion => "http_version",
            ResultClass::CertExpiring => "cert_expiring",
            ResultClass::Slow => "slow",
            ResultClass::Denied => "denied",
            ResultClass::Error => "error",
        }
    }

    /// Position in [`ResultClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResultClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time spent in each phase, summed over redirect hops.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    /// Name resolution.
    pub resolve: Duration,
    /// TCP connect (and proxy CONNECT).
    pub connect: Duration,
    /// TLS handshake.
    pub tls: Duration,
    /// Request sent until response headers arrived.
    pub processing: Duration,
    /// Response body read.
    pub transfer: Duration,
}

impl Phases {
    /// `(phase label, duration)` pairs in a fixed order.
    pub fn labeled(&self) -> [(&'static str, Duration); 5] {
        [
            ("resolve", self.resolve),
            ("connect", self.connect),
            ("tls", self.tls),
            ("processing", self.processing),
            ("transfer", self.transfer),
        ]
    }
}

/// A wall-clock time as unix seconds (0 before 1970).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Everything one probe measured: the type that flows from the prober to metrics and the result stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// When the probe started (wall clock).
    pub started_at: SystemTime,
    /// Wall time of the whole probe.
    pub duration: Duration,
    /// The outcome class.
    pub class: ResultClass,
    /// What went wrong, in words; `None` on success.
    pub error: Option<String>,
    /// Phase times.
    pub phases: Phases,
    /// Final status code, 0 if none.
    pub status_code: u16,
    /// Body bytes read from the final response.
    pub content_length: u64,
    /// Redirects followed.
    pub redirects: u32,
    /// Whether the final URL used TLS.
    pub ssl: bool,
    /// HTTP version of the final response (1.0, 1.1, 2), 0 if none.
    pub http_version: f64,
    /// Earliest certificate expiry of the last TLS chain seen, unix seconds.
    pub cert_expiry: Option<i64>,
    /// Whether `regex` or `regex_absent` failed.
    pub failed_due_to_regex: bool,
    /// The address connected to last.
    pub address: Option<IpAddr>,
    /// TLS version of the last handshake (`TLS 1.3`).
    pub tls_version: Option<&'static str>,
    /// The last chain a server presented.
    pub chain: Option<Arc<tls::ChainInfo>>,
    /// Length of the decoded body, when it was decoded (`compression`, or body checks on an
    /// encoded response).
    pub uncompressed_length: Option<u64>,
    /// With `addresses: all`, each address's own outcome, in resolver order.
    pub addresses: Vec<AddressResult>,
}

/// One address's outcome when every address of a name is probed.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressResult {
    /// The address.
    pub ip: IpAddr,
    /// Its outcome.
    pub class: ResultClass,
    /// Its probe's wall time (after the shared lookup).
    pub duration: Duration,
}

impl ProbeResult {
    /// A result for unit tests: `class`, started at `started_at`, taking `duration`; status
    /// 200 on success and 0 otherwise, everything else empty.
    #[cfg(test)]
    pub(crate) fn for_test(class: ResultClass, started_at: SystemTime, duration: Duration) -> Self {
        ProbeResult {
            duration,
            class,
            status_code: if class == ResultClass::Success {
                200
            } else {
                0
            },
            http_version: 1.1,
            ..empty_result(started_at)
        }
    }

    /// Whether every check passed.
    pub fn success(&self) -> bool {
        self.class == ResultClass::Success
    }
}

/// What every probe shares: the resolver and the network policy of the current configuration.
#[derive(Debug, Clone)]
pub struct Prober {
    resolver: Resolver,
    policy: Policy,
    network: Network,
}

/// A failed step: its class and a message.
#[derive(Debug)]
struct Failure {
    class: ResultClass,
    message: String,
}

impl Failure {
    fn new(class: ResultClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

/// What a probe has measured so far; survives a timeout that drops the probe's future.
struct Trace {
    stage: &'static str,
    /// The address the site's own host is pinned to (`addresses: all`): an input, not a
    /// measurement.
    pin: Option<IpAddr>,
    /// The result being filled in; its outcome, times and error are set when the probe ends.
    r: ProbeResult,
}

/// Aborts the connection task when the probe is done with it (or is dropped by its timeout).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Prober {
    /// A prober for a configuration's `network` section.
    pub fn new(network: &Network) -> Result<Self, ResolveError> {
        Ok(Self {
            resolver: Resolver::new(network)?,
            policy: Policy::new(network),
            network: network.clone(),
        })
    }

    /// Probes a site once, within its timeout. Never panics, never returns an error: every
    /// failure is a classified [`ProbeResult`].
    pub async fn probe(&self, site: &Site) -> ProbeResult {
        let every = site.addresses == AddressMode::All
            && site.proxy.is_none()
            && matches!(site.url.host(), Some(Host::Domain(_)));
        let mut result = if every {
            self.probe_every_address(site).await
        } else {
            self.probe_via(site, None, site.timeout).await
        };
        mark_slow(&mut result, site);
        result
    }

    /// `addresses: all`: one lookup, then every address probed at once, each within what is
    /// left of the timeout. The site passes only if every address passes; the result shown is
    /// the first failing address's (or the slowest one's), its error prefixed with the address.
    async fn probe_every_address(&self, site: &Site) -> ProbeResult {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let Some(Host::Domain(name)) = site.url.host() else {
            return self.probe_via(site, None, site.timeout).await;
        };
        let version = site.ip_version.unwrap_or(self.network.ip_version);
        let lookup =
            tokio::time::timeout(site.timeout, self.resolver.lookup_all(name, version, true)).await;
        let resolve = start.elapsed();
        let failed = |class, error: String| ProbeResult {
            started_at,
            duration: start.elapsed(),
            class,
            error: Some(error),
            phases: Phases {
                resolve,
                ..Phases::default()
            },
            ..empty_result(started_at)
        };
        let ips = match lookup {
            Ok(Ok(mut ips)) => {
                ips.truncate(MAX_ADDRESSES);
                ips
            }
            Ok(Err(e)) => return failed(ResultClass::DnsError, e.to_string()),
            Err(_) => {
                return failed(
                    ResultClass::Timeout,
                    format!(
                        "timed out after {} during resolve",
                        humantime::format_duration(site.timeout)
                    ),
                )
            }
        };
        let budget = site.timeout.saturating_sub(resolve);
        let results = futures_util::future::join_all(
            ips.iter().map(|ip| self.probe_via(site, Some(*ip), budget)),
        )
        .await;
        let addresses: Vec<AddressResult> = ips
            .iter()
            .zip(&results)
            .map(|(ip, r)| {
                let mut r = r.clone();
                r.duration += resolve;
                mark_slow(&mut r, site);
                AddressResult {
                    ip: *ip,
                    class: r.class,
                    duration: r.duration,
                }
            })
            .collect();
        let shown = results
            .iter()
            .position(|r| !r.success())
            .unwrap_or_else(|| {
                (0..results.len())
                    .max_by_key(|i| results[*i].duration)
                    .unwrap_or(0)
            });
        let mut result = results[shown].clone();
        result.started_at = started_at;
        result.duration = start.elapsed();
        result.phases.resolve += resolve;
        if let Some(e) = &mut result.error {
            *e = format!(
                "{}: {e} ({} of {} addresses failed)",
                ips[shown],
                results.iter().filter(|r| !r.success()).count(),
                ips.len()
            );
        }
        result.addresses = addresses;
        result
    }

    /// One probe, connecting to `pin` for the site's own host when given.
    async fn probe_via(&self, site: &Site, pin: Option<IpAddr>, budget: Duration) -> ProbeResult {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let mut trace = Trace {
            stage: "start",
            pin,
            r: empty_result(started_at),
        };
        let outcome = tokio::time::timeout(budget, self.run(site, &mut trace)).await;
        let (class, error) = match outcome {
            Ok(Ok(())) => (ResultClass::Success, None),
            Ok(Err(f)) => (f.class, Some(f.message)),
            Err(_) => (
                ResultClass::Timeout,
                Some(format!(
                    "timed out after {} during {}",
                    humantime::format_duration(site.timeout),
                    trace.stage
                )),
            ),
        };
        ProbeResult {
            duration: start.elapsed(),
            class,
            error,
            ..trace.r
        }
    }

    async fn run(&self, site: &Site, t: &mut Trace) -> Result<(), Failure> {
        let mut url = site.url.clone();
        let mut method = site.method.clone();
        let mut body = site.body.clone();
        let mut send_auth = true;
        let mut visited = HashSet::from([url.to_string()]);
        loop {
            let (response, _conn) = self.hop(site, &url, &method, &body, send_auth, t).await?;
            let status = response.status();
            t.r.status_code = status.as_u16();
            t.r.ssl = url.scheme() == "https";
            t.r.http_version = match response.version() {
                Version::HTTP_09 => 0.9,
                Version::HTTP_10 => 1.0,
                Version::HTTP_2 => 2.0,
                Version::HTTP_3 => 3.0,
                _ => 1.1,
            };
            let location = response.headers().get(LOCATION).cloned();
            if site.follow_redirects && status.is_redirection() {
                if let Some(location) = location {
                    let next = redirect_target(&url, &location)?;
                    if t.r.redirects >= site.max_redirects {
                        return Err(Failure::new(
                            ResultClass::Error,
                            format!("too many redirects (limit {})", site.max_redirects),
                        ));
                    }
                    if !visited.insert(next.to_string()) {
                        return Err(Failure::new(
                            ResultClass::Error,
                            format!("redirect loop: {next} was already visited"),
                        ));
                    }
                    t.r.redirects += 1;
                    // Credentials go only to the origin they were configured for.
                    send_auth &= next.origin() == site.url.origin();
                    if status == http::StatusCode::SEE_OTHER
                        || (matches!(status.as_u16(), 301 | 302) && method == Method::POST)
                    {
                        method = Method::GET;
                        body = None;
                    }
                    url = next;
                    continue;
                }
            }
            return self.check_final(site, response, t).await;
        }
    }

    async fn check_final(
        &self,
        site: &Site,
        response: Response<Incoming>,
        t: &mut Trace,
    ) -> Result<(), Failure> {
        let checks = &site.checks;
        let version = response.version();
        let head_check = check_head(site, version, response.headers(), t.r.ssl);
        let encoding = response
            .headers()
            .get(CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        t.stage = "transfer";
        let start = Instant::now();
        let keep = site.regex.is_some() || site.regex_absent.is_some() || checks.need_body();
        let mut buf = Vec::new();
        let mut too_large = false;
        let mut incoming = response.into_body();
        let read = loop {
            match incoming.frame().await {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        t.r.content_length += data.len() as u64;
                        if t.r.content_length > site.max_body_bytes {
                            too_large = true;
                            break Ok(());
                        }
                        if keep {
                            buf.extend_from_slice(&data);
                        }
                    }
                }
            }
        };
        t.r.phases.transfer += start.elapsed();
        if let Err(e) = read {
            return Err(Failure::new(
                ResultClass::Error,
                format!("reading the body failed: {}", error_chain(&e)),
            ));
        }
        let status = t.r.status_code;
        if !site.valid_status.iter().any(|r| r.contains(&status)) {
            let ranges: Vec<String> = site
                .valid_status
                .iter()
                .map(|r| {
                    if r.start() == r.end() {
                        r.start().to_string()
                    } else {
                        format!("{}-{}", r.start(), r.end())
                    }
                })
                .collect();
            return Err(Failure::new(
                ResultClass::HttpStatus,
                format!(
                    "status {status} is not in valid_status [{}]",
                    ranges.join(", ")
                ),
            ));
        }
        if let Err(f) = head_check {
            if f.class == ResultClass::Header {
                t.r.failed_due_to_regex = true;
            }
            return Err(f);
        }
        if too_large {
            return Err(Failure::new(
                ResultClass::BodyTooLarge,
                format!(
                    "body is larger than max_body_bytes ({} bytes)",
                    site.max_body_bytes
                ),
            ));
        }
        let buf = if keep {
            self.decoded(site, encoding.as_deref(), buf, t)?
        } else {
            buf
        };
        if let Some(re) = &site.regex {
            if !re.0.is_match(&buf) {
                t.r.failed_due_to_regex = true;
                return Err(Failure::new(
                    ResultClass::Regex,
                    format!("body does not match regex {:?}", re.0.as_str()),
                ));
            }
        }
        if let Some(re) = &site.regex_absent {
            if re.0.is_match(&buf) {
                t.r.failed_due_to_regex = true;
                return Err(Failure::new(
                    ResultClass::Regex,
                    format!("body matches regex_absent {:?}", re.0.as_str()),
                ));
            }
        }
        if !checks.json.is_empty() {
            let fail = |m: String| Failure::new(ResultClass::Json, m);
            let value: serde_json::Value =
                serde_json::from_slice(&buf).map_err(|e| fail(format!("body is not JSON: {e}")))?;
            for c in &checks.json {
                c.check(&value).map_err(|why| {
                    fail(format!("json condition {:?} failed: {why}", c.as_str()))
                })?;
            }
        }
        if let (Some(within), Some(expiry)) = (checks.cert_expires_within, t.r.cert_expiry) {
            let left = expiry - unix_seconds(SystemTime::now()) as i64;
            if left < within.as_secs() as i64 {
                let when = httpdate::fmt_http_date(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(expiry.max(0) as u64),
                );
                let how = if left <= 0 {
                    "expired".to_string()
                } else {
                    format!(
                        "expires in {}",
                        humantime::format_duration(Duration::from_secs(left as u64))
                    )
                };
                return Err(Failure::new(
                    ResultClass::CertExpiring,
                    format!(
                        "a certificate of the chain {how} ({when}), within fail_if_cert_expires_within {}",
                        humantime::format_duration(within)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The body as the checks see it: decoded from its `Content-Encoding` when that is one
    /// sitewatch knows, and in the encoding `compression` asks for.
    fn decoded(
        &self,
        site: &Site,
        encoding: Option<&str>,
        body: Vec<u8>,
        t: &mut Trace,
    ) -> Result<Vec<u8>, Failure> {
        let fail = |m: String| Failure::new(ResultClass::Compression, m);
        let found = encoding.map_or(Some(Compression::Identity), Compression::from_header);
        if let Some(want) = site.checks.compression {
            if found != Some(want) {
                return Err(fail(format!(
                    "response is not {}-encoded (Content-Encoding: {})",
                    want.token(),
                    encoding.unwrap_or("none")
                )));
            }
        }
        let Some(found) = found else {
            // An encoding sitewatch cannot decode: the checks see the bytes as sent.
            return Ok(body);
        };
        if found == Compression::Identity && site.checks.compression.is_none() {
            return Ok(body);
        }
        match checks::decode(found, &body, site.max_body_bytes) {
            Ok(out) => {
                t.r.uncompressed_length = Some(out.len() as u64);
                Ok(out)
            }
            Err(checks::DecodeError::TooLarge(limit)) => Err(Failure::new(
                ResultClass::BodyTooLarge,
                format!("decoded body is larger than max_body_bytes ({limit} bytes)"),
            )),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// One request on a fresh connection; returns the response with its body unread.
    async fn hop(
        &self,
        site: &Site,
        url: &Url,
        method: &Method,
        body: &Option<Bytes>,
        send_auth: bool,
        t: &mut Trace,
    ) -> Result<(Response<Incoming>, AbortOnDrop), Failure> {
        // A pinned address serves the site's own host, also after a redirect back to it.
        let pinned = t
            .pin
            .filter(|_| site.proxy.is_none() && url.host_str() == site.url.host_str());
        let https = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(80);
        let (connect_url, connect_port) = match &site.proxy {
            Some(p) => (p, p.port_or_known_default().unwrap_or(3128)),
            None => (url, port),
        };
        let ips = match pinned {
            Some(ip) => vec![ip],
            None => self.resolve(site, connect_url, t).await?,
        };
        // Every address tried is checked first: the first denied one is the error when none
        // is allowed.
        let mut allowed = Vec::with_capacity(ips.len());
        let mut denied = None;
        for ip in ips {
            match self.policy.check_site(ip, site.network.as_ref()) {
                Ok(()) => allowed.push(ip),
                Err(m) => {
                    denied.get_or_insert(m);
                }
            }
            if site.addresses != AddressMode::HappyEyeballs || pinned.is_some() {
                break;
            }
        }
        if allowed.is_empty() {
            let m = denied.unwrap_or_else(|| "no address to connect to".into());
            return Err(Failure::new(ResultClass::Denied, m));
        }

        t.stage = "connect";
        let start = Instant::now();
        let (mut tcp, ip) = connect_any(&allowed, connect_port).await?;
        t.r.address = Some(ip);
        let _ = tcp.set_nodelay(true);
        let tunnel = site.proxy.is_some() && https;
        if tunnel {
            connect_tunnel(&mut tcp, url, port).await?;
        }
        t.r.phases.connect += start.elapsed();

        let host = url.host_str().unwrap_or_default();
        let (io, h2): (Box<dyn IoBox>, bool) = if https {
            t.stage = "tls";
            let start = Instant::now();
            let name = site.tls.server_name.as_deref().unwrap_or(host);
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let server_name =
                rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| {
                    Failure::new(
                        ResultClass::TlsError,
                        format!("bad server name {name:?}: {e}"),
                    )
                })?;
            let connector = tokio_rustls::TlsConnector::from(site.tls.config.clone());
            let stream = connector.connect(server_name, tcp).await.map_err(|e| {
                Failure::new(
                    ResultClass::TlsError,
                    format!("TLS handshake failed: {}", error_chain(&e)),
                )
            })?;
            t.r.phases.tls += start.elapsed();
            let session = stream.get_ref().1;
            if let Some(chain) = session.peer_certificates() {
                t.r.cert_expiry = tls::earliest_expiry(chain);
                t.r.chain = tls::chain_info(chain).map(Arc::new);
            }
            t.r.tls_version = session.protocol_version().map(tls::version_name);
            let h2 = session.alpn_protocol() == Some(b"h2");
            (Box::new(stream), h2)
        } else {
            (Box::new(tcp), false)
        };

        let request = build_request(
            site,
            url,
            method,
            body,
            send_auth,
            h2,
            site.proxy.is_some() && !https,
        )?;
        t.stage = "processing";
        let start = Instant::now();
        let (response, conn) = exchange(io, h2, request).await.map_err(|e| {
            Failure::new(
                ResultClass::Error,
                format!("HTTP request failed: {}", error_chain(&e)),
            )
        })?;
        t.r.phases.processing += start.elapsed();
        Ok((response, conn))
    }

    /// The addresses to try for `url`'s host, preferred first: one unless the site fails
    /// over between addresses.
    async fn resolve(&self, site: &Site, url: &Url, t: &mut Trace) -> Result<Vec<IpAddr>, Failure> {
        t.stage = "resolve";
        let ips = match url.host() {
            Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(Host::Domain(name)) => {
                let start = Instant::now();
                let version = site.ip_version.unwrap_or(self.network.ip_version);
                let every = site.addresses == AddressMode::HappyEyeballs && site.proxy.is_none();
                let found = self.resolver.lookup_all(name, version, every).await;
                t.r.phases.resolve += start.elapsed();
                found.map_err(|e| Failure::new(ResultClass::DnsError, e.to_string()))?
            }
            None => {
                return Err(Failure::new(
                    ResultClass::Error,
                    format!("{url} has no host"),
                ))
            }
        };
        t.r.address = ips.first().copied();
        let mut ips = ips;
        ips.truncate(MAX_ADDRESSES);
        Ok(ips)
    }
}

/// Most addresses of one name a probe connects to (`addresses: all`) or tries
/// (`happy_eyeballs`): a name with hundreds of records must not turn one probe into hundreds
/// of connections.
pub const MAX_ADDRESSES: usize = 16;

/// Failover delay between connection attempts (RFC 8305's recommended 250 ms).
const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to the first address that answers: addresses are tried in turn, families
/// interleaved, each after the previous one failed or has been pending for
/// [`CONNECTION_ATTEMPT_DELAY`] (RFC 8305 "happy eyeballs"). One address is a plain connect.
async fn connect_any(ips: &[IpAddr], port: u16) -> Result<(TcpStream, IpAddr), Failure> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    if let [ip] = ips {
        return TcpStream::connect((*ip, port))
            .await
            .map(|tcp| (tcp, *ip))
            .map_err(|e| {
                Failure::new(
                    ResultClass::ConnectError,
                    format!("connect to {} failed: {e}", fmt_addr(*ip, port)),
                )
            });
    }
    let ips = interleave(ips);
    let attempt = |ip: IpAddr| async move { (ip, TcpStream::connect((ip, port)).await) };
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut errors = Vec::new();
    loop {
        if next < ips.len() {
            pending.push(attempt(ips[next]));
            next += 1;
        }
        if pending.is_empty() {
            return Err(Failure::new(ResultClass::ConnectError, errors.join("; ")));
        }
        let more = next < ips.len();
        tokio::select! {
            Some((ip, outcome)) = pending.next() => match outcome {
                Ok(tcp) => return Ok((tcp, ip)),
                Err(e) => errors.push(format!("connect to {} failed: {e}", fmt_addr(ip, port))),
            },
            _ = tokio::time::sleep(CONNECTION_ATTEMPT_DELAY), if more => {}
        }
    }
}

/// Addresses in preference order with the families alternating, starting with the family of
/// the first (RFC 8305 section 4).
fn interleave(ips: &[IpAddr]) -> Vec<IpAddr> {
    let Some(first) = ips.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (VecDeque<IpAddr>, VecDeque<IpAddr>) =
        ips.iter().partition(|ip| ip.is_ipv4() == first.is_ipv4());
    let mut out = Vec::with_capacity(ips.len());
    while !same.is_empty() || !other.is_empty() {
        out.extend(same.pop_front());
        out.extend(other.pop_front());
    }
    out
}

/// Checks of the final response's head: protocol, TLS use and headers.
fn check_head(
    site: &Site,
    version: Version,
    headers: &http::HeaderMap,
    ssl: bool,
) -> Result<(), Failure> {
    let checks = &site.checks;
    if !checks.http_versions.is_empty() && !checks.http_versions.contains(&version) {
        let wanted: Vec<&str> = checks
            .http_versions
            .iter()
            .map(|v| checks::version_name(*v))
            .collect();
        return Err(Failure::new(
            ResultClass::HttpVersion,
            format!(
                "{} is not in valid_http_versions [{}]",
                checks::version_name(version),
                wanted.join(", ")
            ),
        ));
    }
    if checks.fail_if_ssl && ssl {
        return Err(Failure::new(
            ResultClass::Ssl,
            "the final URL used TLS (fail_if_ssl)",
        ));
    }
    if checks.fail_if_not_ssl && !ssl {
        return Err(Failure::new(
            ResultClass::Ssl,
            "the final URL did not use TLS (fail_if_not_ssl)",
        ));
    }
    checks::check_headers(checks, headers).map_err(|m| Failure::new(ResultClass::Header, m))
}

/// A probe that passed every check but ran longer than `max_duration` fails as `slow`.
fn mark_slow(result: &mut ProbeResult, site: &Site) {
    if let Some(max) = site.checks.max_duration {
        if result.success() && result.duration > max {
            result.class = ResultClass::Slow;
            result.error = Some(format!(
                "took {:.3}s, longer than max_duration {}",
                result.duration.as_secs_f64(),
                humantime::format_duration(max)
            ));
        }
    }
}

/// A result with nothing measured.
fn empty_result(started_at: SystemTime) -> ProbeResult {
    ProbeResult {
        started_at,
        duration: Duration::ZERO,
        class: ResultClass::Error,
        error: None,
        phases: Phases::default(),
        status_code: 0,
        content_length: 0,
        redirects: 0,
        ssl: false,
        http_version: 0.0,
        cert_expiry: None,
        failed_due_to_regex: false,
        address: None,
        tls_version: None,
        chain: None,
        uncompressed_length: None,
        addresses: Vec::new(),
    }
}

trait IoBox: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: Io> IoBox for T {}

fn fmt_addr(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Follows a `Location` header relative to the current URL.
fn redirect_target(current: &Url, location: &HeaderValue) -> Result<Url, Failure> {
    let bad = |why: String| Failure::new(ResultClass::Error, why);
    let text = location
        .to_str()
        .map_err(|_| bad("redirect Location header is not valid text".into()))?;
    let next = current
        .join(text)
        .map_err(|e| bad(format!("redirect to invalid URL {text:?}: {e}")))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(bad(format!("redirect to unsupported scheme: {next}")));
    }
    Ok(next)
}

fn build_request(
    site: &Site,
    url: &Url,
    method: &Method,
    body: &Option<Bytes>,
    send_auth: bool,
    h2: bool,
    absolute_form: bool,
) -> Result<Request<Full<Bytes>>, Failure> {
    let bad =
        |e: http::Error| Failure::new(ResultClass::Error, format!("cannot build request: {e}"));
    let target = if h2 || absolute_form {
        url.as_str().to_string()
    } else {
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        path
    };
    let mut request = Request::builder()
        .method(method.clone())
        .uri(target)
        .version(if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .body(Full::new(body.clone().unwrap_or_default()))
        .map_err(bad)?;
    let headers = request.headers_mut();
    *headers = site.headers.clone();
    if !h2 && !headers.contains_key(HOST) {
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&host) {
            headers.insert(HOST, v);
        }
    }
    if h2 {
        headers.remove(HOST);
    }
    if send_auth {
        let value = match &site.auth {
            Some(Auth::Basic { username, password }) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()))
            )),
            Some(Auth::Bearer(token)) => Some(format!("Bearer {}", token.expose())),
            None => None,
        };
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            let mut v = v;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
    }
    Ok(request)
}

/// Sends one request over a fresh connection and returns the response with its connection task.
async fn exchange(
    io: Box<dyn IoBox>,
    h2: bool,
    request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, AbortOnDrop), hyper::Error> {
    let io = TokioIo::new(io);
    if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        let task = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let response = sender.send_request(request).await?;
        Ok((response, task))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        let task = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let response = sender.send_request(request).await?;
        Ok((response, task))
    }
}

/// Opens a tunnel through an HTTP proxy with `CONNECT host:port`.
async fn connect_tunnel(tcp: &mut TcpStream, url: &Url, port: u16) -> Result<(), Failure> {
    let fail = |m: String| Failure::new(ResultClass::ConnectError, m);
    let authority = format!("{}:{port}", url.host_str().unwrap_or_default());
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| fail(format!("proxy CONNECT failed: {e}")))?;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Read byte by byte so nothing past the proxy's header is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(fail("proxy CONNECT answer too long".into()));
        }
        let n = tcp
            .read(&mut byte)
            .await
            .map_err(|e| fail(format!("proxy CONNECT failed: {e}")))?;
        if n == 0 {
            return Err(fail("proxy closed the connection during CONNECT".into()));
        }
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default();
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if !ok {
        return Err(fail(format!("proxy refused CONNECT: {status_line}")));
    }
    Ok(())
}

/// An error with its sources, `a: b: c`, for messages people read.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// A shared prober, swapped whole when the network section changes.
pub type SharedProber = Arc<Prober>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_order_interleaves_families_from_the_first() {
        let ips: Vec<IpAddr> = ["::1", "::2", "::3", "127.0.0.1", "127.0.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let order: Vec<String> = interleave(&ips).iter().map(IpAddr::to_string).collect();
        assert_eq!(order, ["::1", "127.0.0.1", "::2", "127.0.0.2", "::3"]);
        assert!(interleave(&[]).is_empty());
    }

    #[tokio::test]
    async fn failover_moves_past_refused_addresses_and_reports_all_when_none_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ips: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let (_, ip) = connect_any(&ips, port).await.unwrap();
        assert_eq!(ip, ips[1]);
        drop(listener);
        let f = connect_any(&ips, port).await.unwrap_err();
        assert_eq!(f.class, ResultClass::ConnectError);
        assert!(
            f.message.contains("127.0.0.2:") && f.message.contains("127.0.0.3:"),
            "{}",
            f.message
        );
    }
}

//! Metrics: per-site series computed at scrape time from each site's last [`ProbeResult`],
//! exporter health metrics, and the standard `process_*` metrics.
//!
//! Per-site series live in one table keyed by site key. Removing a site from the table removes
//! every one of its series at once, and a scrape encodes the table in one pass, so memory and
//! scrape cost grow with the number of sites, not with a hash map per metric.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::{MetricsSettings, Site};
use crate::probe::{unix_seconds, ProbeResult, ResultClass};

/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The NaN Prometheus uses as a staleness marker (`value.StaleNaN`).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Buckets of `sitewatch_schedule_lag_seconds`.
const LAG_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The labels every series of a site carries: `site`, `url`, `tenant`, `location`, then its own.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SiteLabels(Vec<(String, String)>);

impl EncodeLabelSet for SiteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.as_slice().encode(encoder)
    }
}

impl EncodeLabelSet for &SiteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.as_slice().encode(encoder)
    }
}

/// One site's measurements between scrapes.
#[derive(Debug, Clone)]
struct SiteState {
    last: Option<ProbeResult>,
    /// Probes per [`ResultClass`], by [`ResultClass::index`].
    counts: [u64; ResultClass::ALL.len()],
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: Vec<u64>,
    sum: f64,
    finished_at: Option<SystemTime>,
    /// When the site's confirmed up/down state last changed (or its first probe finished).
    since: Option<SystemTime>,
    /// The last 32 outcomes, newest in bit 0 (1 = success): the status page's bar.
    history: u32,
    /// How many bits of `history` are real (at most 32).
    history_len: u8,
    /// Upper bounds of `buckets` (the site's own, or the global default).
    bounds: Arc<[f64]>,
    /// Whether `bounds` are the site's own rather than `metrics.histogram_buckets`.
    own_bounds: bool,
    /// The confirmed state, `sitewatch_site_up`: changes only after `failure_threshold`
    /// failures or `success_threshold` successes in a row. Starts up.
    up: bool,
    /// Consecutive probes that disagree with `up`.
    streak: u32,
    /// `failure_threshold` and `success_threshold`.
    thresholds: (u32, u32),
    /// Series the previous probe had and the last one does not (a rotated certificate's
    /// labels, an address gone from DNS): remote-write marks them stale, as a scrape would.
    gone: Vec<Optional>,
}

/// A per-site series that only some results have, or whose labels come from the result.
#[derive(Debug, Clone, PartialEq)]
enum Optional {
    CertExpiry,
    IpProtocol,
    TlsVersion(&'static str),
    Chain(Arc<crate::tls::ChainInfo>),
    Uncompressed,
    Address(std::net::IpAddr),
}

/// The optional series a result has (no allocation: `record` runs this for every probe).
fn optional_series(r: &ProbeResult) -> impl Iterator<Item = Optional> + '_ {
    r.cert_expiry
        .map(|_| Optional::CertExpiry)
        .into_iter()
        .chain(r.address.map(|_| Optional::IpProtocol))
        .chain(r.tls_version.map(Optional::TlsVersion))
        .chain(r.chain.clone().map(Optional::Chain))
        .chain(r.uncompressed_length.map(|_| Optional::Uncompressed))
        .chain(r.addresses.iter().map(|a| Optional::Address(a.ip)))
}

impl SiteState {
    fn set_bounds(&mut self, bounds: Arc<[f64]>, own: bool) {
        self.buckets = vec![0; bounds.len() + 1];
        self.sum = 0.0;
        self.bounds = bounds;
        self.own_bounds = own;
    }

    /// Counts a probe toward the confirmed state: it flips after enough probes in a row
    /// disagree with it.
    fn confirm(&mut self, success: bool) {
        if success == self.up {
            self.streak = 0;
            return;
        }
        self.streak += 1;
        let (failures, successes) = self.thresholds;
        let needed = if self.up { failures } else { successes };
        if self.streak >= needed {
            self.up = success;
            self.streak = 0;
        }
    }
}

/// What the status page shows of a site.
#[derive(Debug, Clone)]
pub struct SiteStatus {
    /// The last probe's result.
    pub last: ProbeResult,
    /// When the site's up/down state last changed.
    pub since: SystemTime,
    /// Recent outcomes, oldest first (true = success), at most 32.
    pub recent: Vec<bool>,
    /// The confirmed state, `sitewatch_site_up`.
    pub up: bool,
}

#[derive(Debug)]
struct SiteSeries {
    labels: SiteLabels,
    state: Mutex<SiteState>,
}

/// The per-site series of every site this exporter probes.
#[derive(Debug)]
pub struct SiteTable {
    sites: RwLock<BTreeMap<String, Arc<SiteSeries>>>,
    settings: RwLock<MetricsSettings>,
    location: Option<String>,
}

impl SiteTable {
    fn new(location: Option<String>) -> Self {
        Self {
            sites: RwLock::default(),
            settings: RwLock::default(),
            location,
        }
    }

    fn labels_for(&self, site: &Site) -> SiteLabels {
        let mut labels = vec![
            ("site".to_string(), site.id.clone()),
            ("url".to_string(), site.url.to_string()),
        ];
        if let Some(t) = &site.tenant {
            labels.push(("tenant".into(), t.clone()));
        }
        if let Some(l) = &self.location {
            labels.push(("location".into(), l.clone()));
        }
        labels.extend(site.labels.iter().cloned());
        SiteLabels(labels)
    }

    /// Replaces the optional-series settings (a histogram resets when its buckets change).
    pub fn set_settings(&self, settings: &MetricsSettings) {
        let mut current = self.settings.write().expect("settings lock");
        if current.histogram_buckets != settings.histogram_buckets {
            for s in self.sites.read().expect("sites lock").values() {
                let mut st = s.state.lock().expect("site lock");
                if !st.own_bounds {
                    st.set_bounds(settings.histogram_buckets.clone(), false);
                }
            }
        }
        *current = settings.clone();
    }

    /// Starts exporting a site (or keeps its series if its labels did not change; a changed
    /// bucket layout resets only its histogram).
    pub fn insert(&self, site: &Site) {
        let labels = self.labels_for(site);
        let key = site.key();
        let (bounds, own) = match &site.histogram_buckets {
            Some(b) => (b.clone(), true),
            None => (
                self.settings
                    .read()
                    .expect("settings lock")
                    .histogram_buckets
                    .clone(),
                false,
            ),
        };
        let thresholds = (site.failure_threshold, site.success_threshold);
        let mut sites = self.sites.write().expect("sites lock");
        if let Some(s) = sites.get(&key).filter(|s| s.labels == labels) {
            let mut st = s.state.lock().expect("site lock");
            st.thresholds = thresholds;
            if st.bounds != bounds {
                st.set_bounds(bounds, own);
            }
            st.own_bounds = own;
            return;
        }
        let state = SiteState {
            last: None,
            counts: [0; ResultClass::ALL.len()],
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
            finished_at: None,
            since: None,
            history: 0,
            history_len: 0,
            bounds,
            own_bounds: own,
            up: true,
            streak: 0,
            thresholds,
            gone: Vec::new(),
        };
        sites.insert(
            key,
            Arc::new(SiteSeries {
                labels,
                state: Mutex::new(state),
            }),
        );
    }

    /// Whether `site` is exported now under labels other than those it would get: inserting it
    /// replaces its series.
    pub fn relabels(&self, site: &Site) -> bool {
        let labels = self.labels_for(site);
        self.sites
            .read()
            .expect("sites lock")
            .get(&site.key())
            .is_some_and(|s| s.labels != labels)
    }

    /// Staleness markers for every series of a site that is going away (removed, or
    /// relabeled): what a scraping Prometheus would record when the series disappear, so a
    /// remote-write receiver stops showing the last value five minutes later. `None` if the
    /// site was never probed.
    pub fn stale_markers(&self, key: &str) -> Option<ProbeSamples> {
        let mut s = self.samples(key)?;
        for sample in &mut s.samples {
            sample.value = f64::from_bits(STALE_NAN_BITS);
        }
        s.timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
            .max(s.timestamp_ms + 1);
        Some(s)
    }

    /// Stops exporting a site: all its series disappear from the next scrape.
    pub fn remove(&self, key: &str) {
        self.sites.write().expect("sites lock").remove(key);
    }

    /// Records a finished probe.
    pub fn record(&self, key: &str, result: &ProbeResult) {
        let Some(series) = self.sites.read().expect("sites lock").get(key).cloned() else {
            return;
        };
        let secs = result.duration.as_secs_f64();
        let mut st = series.state.lock().expect("site lock");
        let i = st
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(st.bounds.len());
        let was_up = st.up;
        st.confirm(result.success());
        st.counts[result.class.index()] += 1;
        if let Some(b) = st.buckets.get_mut(i) {
            *b += 1;
        }
        st.sum += secs;
        let finished = result.started_at + result.duration;
        st.finished_at = Some(finished);
        // The state shown with its age is the confirmed one.
        if st.last.is_none() || st.up != was_up {
            st.since = Some(finished);
        }
        st.history = (st.history << 1) | u32::from(result.success());
        st.history_len = st.history_len.saturating_add(1).min(32);
        st.gone = match &st.last {
            // Collecting an empty iterator allocates nothing: the usual case costs no heap.
            Some(prev) => optional_series(prev)
                .filter(|k| !optional_series(result).any(|n| n == *k))
                .collect(),
            None => Vec::new(),
        };
        st.last = Some(result.clone());
    }

    /// The last result of a site, if it has been probed.
    pub fn last(&self, key: &str) -> Option<ProbeResult> {
        let series = self.sites.read().expect("sites lock").get(key).cloned()?;
        let st = series.state.lock().expect("site lock");
        st.last.clone()
    }

    /// The last result, the time of the last up/down change and the recent outcomes of a
    /// site; `None` before its first probe.
    pub fn status(&self, key: &str) -> Option<SiteStatus> {
        let series = self.sites.read().expect("sites lock").get(key).cloned()?;
        let st = series.state.lock().expect("site lock");
        let last = st.last.clone()?;
        let recent = (0..st.history_len)
            .rev()
            .map(|i| st.history >> i & 1 == 1)
            .collect();
        Some(SiteStatus {
            since: st.since.unwrap_or(last.started_at),
            last,
            recent,
            up: st.up,
        })
    }

    /// Number of sites exported.
    pub fn len(&self) -> usize {
        self.sites.read().expect("sites lock").len()
    }

    /// Whether no site is exported.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sample of a site after a probe, for remote-write: the metric name (with its `_total`,
/// `_bucket`, `_sum`, `_count` suffix), at most one label beyond the site's, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct PushSample {
    /// Metric name as stored by Prometheus.
    pub name: &'static str,
    /// Labels beyond the site's: `phase`, `result`, `le`, `address`, `version`, or the
    /// certificate labels of `probe_ssl_last_chain_info`.
    pub extra: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// Every series of one site after a probe, timestamped when the probe finished: what a scrape
/// right after the probe would have seen of this site.
#[derive(Debug, Clone)]
pub struct ProbeSamples {
    series: Arc<SiteSeries>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The samples.
    pub samples: Vec<PushSample>,
}

impl ProbeSamples {
    /// The labels every sample carries: `site`, `url`, `tenant`, `location`, the site's own.
    pub fn labels(&self) -> &[(String, String)] {
        &self.series.labels.0
    }
}

/// A histogram bound as the exposition writes it (`0.005`, `1.0`, `+Inf`), so a pushed `le`
/// equals a scraped one.
fn bound_label(b: f64) -> String {
    if b == f64::INFINITY {
        "+Inf".into()
    } else {
        dtoa::Buffer::new().format(b).to_string()
    }
}

impl SiteTable {
    /// The samples of a site as they stand after its last probe; `None` before its first
    /// probe or for an unknown site.
    pub fn samples(&self, key: &str) -> Option<ProbeSamples> {
        let series = self.sites.read().expect("sites lock").get(key).cloned()?;
        let settings = self.settings.read().expect("settings lock").clone();
        let st = series.state.lock().expect("site lock").clone();
        let r = st.last.as_ref()?;
        let finished = st.finished_at?;
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let mut out = Vec::with_capacity(32);
        let mut push = |name: &'static str, extra: Vec<(&'static str, String)>, value: f64| {
            out.push(PushSample { name, extra, value });
        };
        push("probe_success", vec![], b(r.success()));
        push("probe_duration_seconds", vec![], r.duration.as_secs_f64());
        if settings.phases {
            for (phase, d) in r.phases.labeled() {
                push(
                    "probe_http_duration_seconds",
                    vec![("phase", phase.to_string())],
                    d.as_secs_f64(),
                );
            }
        }
        push("probe_http_status_code", vec![], f64::from(r.status_code));
        push("probe_http_content_length", vec![], r.content_length as f64);
        push("probe_http_redirects", vec![], f64::from(r.redirects));
        push("probe_http_ssl", vec![], b(r.ssl));
        push("probe_http_version", vec![], r.http_version);
        if let Some(t) = r.cert_expiry {
            push("probe_ssl_earliest_cert_expiry", vec![], t as f64);
        }
        push(
            "probe_failed_due_to_regex",
            vec![],
            b(r.failed_due_to_regex),
        );
        if let Some(ip) = r.address {
            push("probe_ip_protocol", vec![], ip_protocol(ip));
        }
        if settings.tls_details {
            if let Some(v) = r.tls_version {
                push(
                    "probe_tls_version_info",
                    vec![("version", v.to_string())],
                    1.0,
                );
            }
            if let Some(c) = &r.chain {
                push("probe_ssl_last_chain_info", chain_labels(c), 1.0);
                push(
                    "probe_ssl_last_chain_expiry_timestamp_seconds",
                    vec![],
                    c.last_chain_expiry as f64,
                );
            }
        }
        if let Some(n) = r.uncompressed_length {
            push("probe_http_uncompressed_body_length", vec![], n as f64);
        }
        push(
            "probe_dns_lookup_time_seconds",
            vec![],
            r.phases.resolve.as_secs_f64(),
        );
        if settings.histogram {
            let mut cumulative = 0;
            let bounds = st.bounds.iter().copied();
            for (bound, n) in bounds.chain([f64::INFINITY]).zip(&st.buckets) {
                cumulative += n;
                push(
                    "sitewatch_probe_duration_seconds_bucket",
                    vec![("le", bound_label(bound))],
                    cumulative as f64,
                );
            }
            push("sitewatch_probe_duration_seconds_sum", vec![], st.sum);
            push(
                "sitewatch_probe_duration_seconds_count",
                vec![],
                cumulative as f64,
            );
        }
        for class in ResultClass::ALL {
            let n = st.counts[class.index()];
            if n == 0 && class != ResultClass::Success {
                continue;
            }
            push(
                "sitewatch_probes_total",
                vec![("result", class.as_str().to_string())],
                n as f64,
            );
        }
        push("sitewatch_site_up", vec![], b(st.up));
        for a in &r.addresses {
            let address = vec![("address", a.ip.to_string())];
            let ok = b(a.class == ResultClass::Success);
            push("sitewatch_address_probe_success", address.clone(), ok);
            push(
                "sitewatch_address_probe_duration_seconds",
                address,
                a.duration.as_secs_f64(),
            );
        }
        push(
            "sitewatch_probe_last_timestamp_seconds",
            vec![],
            unix_seconds(finished),
        );
        // What the last probe no longer has goes stale now, not five minutes from now.
        let stale = f64::from_bits(STALE_NAN_BITS);
        for k in &st.gone {
            match k {
                Optional::CertExpiry => push("probe_ssl_earliest_cert_expiry", vec![], stale),
                Optional::IpProtocol => push("probe_ip_protocol", vec![], stale),
                Optional::Uncompressed => {
                    push("probe_http_uncompressed_body_length", vec![], stale)
                }
                Optional::TlsVersion(v) if settings.tls_details => push(
                    "probe_tls_version_info",
                    vec![("version", v.to_string())],
                    stale,
                ),
                Optional::Chain(c) if settings.tls_details => {
                    push("probe_ssl_last_chain_info", chain_labels(c), stale);
                    // The expiry has no labels of its own: it goes only with the last chain.
                    if r.chain.is_none() {
                        push(
                            "probe_ssl_last_chain_expiry_timestamp_seconds",
                            vec![],
                            stale,
                        );
                    }
                }
                Optional::Address(ip) => {
                    let address = vec![("address", ip.to_string())];
                    push("sitewatch_address_probe_success", address.clone(), stale);
                    push("sitewatch_address_probe_duration_seconds", address, stale);
                }
                _ => {}
            }
        }
        let timestamp_ms = finished
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Some(ProbeSamples {
            series,
            timestamp_ms,
            samples: out,
        })
    }
}

/// `probe_ip_protocol`: 4 or 6, as blackbox_exporter reports it.
fn ip_protocol(ip: std::net::IpAddr) -> f64 {
    if ip.is_ipv4() {
        4.0
    } else {
        6.0
    }
}

/// The labels of `probe_ssl_last_chain_info`, named as blackbox_exporter names them.
fn chain_labels(c: &crate::tls::ChainInfo) -> Vec<(&'static str, String)> {
    vec![
        ("fingerprint_sha256", c.fingerprint_sha256.clone()),
        ("subject", c.subject.clone()),
        ("issuer", c.issuer.clone()),
        ("subjectalternative", c.subject_alternative.clone()),
        ("serialnumber", c.serial_number.clone()),
    ]
}

/// Encodes a gauge family whose series carry labels beyond the site's; `values` gives each
/// site's `(labels, value)` pairs. Returns the series count.
fn labeled_family(
    encoder: &mut DescriptorEncoder,
    snapshot: &Snapshot,
    name: &str,
    help: &str,
    values: impl Fn(&SiteState) -> Vec<(Vec<(&'static str, String)>, f64)>,
) -> Result<usize, std::fmt::Error> {
    let mut rows = snapshot
        .iter()
        .flat_map(|(s, st)| values(st).into_iter().map(move |v| (s, v)))
        .peekable();
    if rows.peek().is_none() {
        return Ok(0);
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    let mut n = 0;
    for (site, (extra, v)) in rows {
        family
            .encode_family(&(&site.labels, extra))?
            .encode_gauge(&v)?;
        n += 1;
    }
    Ok(n)
}

type Snapshot = Vec<(Arc<SiteSeries>, SiteState)>;

/// Encodes one gauge family over every site that has a value for it; returns the series count.
fn gauge_family(
    encoder: &mut DescriptorEncoder,
    snapshot: &Snapshot,
    name: &str,
    help: &str,
    value: impl Fn(&SiteState) -> Option<f64>,
) -> Result<usize, std::fmt::Error> {
    let mut values = snapshot
        .iter()
        .filter_map(|(s, st)| value(st).map(|v| (s, v)))
        .peekable();
    if values.peek().is_none() {
        return Ok(0);
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    let mut n = 0;
    for (s, v) in values {
        family.encode_family(&s.labels)?.encode_gauge(&v)?;
        n += 1;
    }
    Ok(n)
}

impl prometheus_client::collector::Collector for SiteTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let settings = self.settings.read().expect("settings lock").clone();
        let snapshot: Snapshot = self
            .sites
            .read()
            .expect("sites lock")
            .values()
            .map(|s| (s.clone(), s.state.lock().expect("site lock").clone()))
            .collect();
        let mut series = 0usize;
        let e = &mut encoder;
        let s = &snapshot;
        let b = |v: bool| if v { 1.0 } else { 0.0 };

        series += gauge_family(
            e,
            s,
            "probe_success",
            "Whether the last probe passed every check.",
            |st| st.last.as_ref().map(|r| b(r.success())),
        )?;
        series += gauge_family(
            e,
            s,
            "probe_duration_seconds",
            "Wall time of the last probe in seconds.",
            |st| st.last.as_ref().map(|r| r.duration.as_secs_f64()),
        )?;
        if settings.phases {
            let with_last: Vec<_> = s.iter().filter(|(_, st)| st.last.is_some()).collect();
            if !with_last.is_empty() {
                let mut family = e.encode_descriptor(
                    "probe_http_duration_seconds",
                    "Duration of each phase of the last probe's HTTP requests in seconds.",
                    None,
                    MetricType::Gauge,
                )?;
                for (site, st) in with_last {
                    let r = st.last.as_ref().expect("filtered");
                    for (phase, d) in r.phases.labeled() {
                        let labels = (&site.labels, [("phase", phase)]);
                        family
                            .encode_family(&labels)?
                            .encode_gauge(&d.as_secs_f64())?;
                        series += 1;
                    }
                }
            }
        }
        series += gauge_family(
            e,
            s,
            "probe_http_status_code",
            "Final status code of the last probe, 0 if none.",
            |st| st.last.as_ref().map(|r| f64::from(r.status_code)),
        )?;
        series += gauge_family(
            e,
            s,
            "probe_http_content_length",
            "Body bytes read by the last probe.",
            |st| st.last.as_ref().map(|r| r.content_length as f64),
        )?;
        series += gauge_family(
            e,
            s,
            "probe_http_redirects",
            "Redirects followed by the last probe.",
            |st| st.last.as_ref().map(|r| f64::from(r.redirects)),
        )?;
        series += gauge_family(
            e,
            s,
            "probe_http_ssl",
            "Whether the last probe's final URL used TLS.",
            |st| st.last.as_ref().map(|r| b(r.ssl)),
        )?;
        series += gauge_family(
            e,
            s,
            "probe_http_version",
            "HTTP version of the last probe's final response.",
            |st| st.last.as_ref().map(|r| r.http_version),
        )?;
        series += gauge_family(
            e,
            s,
            "probe_ssl_earliest_cert_expiry",
            "Unix time in seconds when the first certificate of the last presented chain expires.",
            |st| {
                st.last
                    .as_ref()
                    .and_then(|r| r.cert_expiry)
                    .map(|t| t as f64)
            },
        )?;
        series += gauge_family(
            e,
            s,
            "probe_failed_due_to_regex",
            "Whether a regex check of the last probe failed.",
            |st| st.last.as_ref().map(|r| b(r.failed_due_to_regex)),
        )?;
        series += gauge_family(
            e,
            s,
            "probe_ip_protocol",
            "IP protocol (4 or 6) of the address the last probe connected to.",
            |st| st.last.as_ref().and_then(|r| r.address).map(ip_protocol),
        )?;
        if settings.tls_details {
            series += labeled_family(
                e,
                s,
                "probe_tls_version_info",
                "TLS version of the last probe's last handshake.",
                |st| {
                    st.last
                        .as_ref()
                        .and_then(|r| r.tls_version)
                        .map(|v| (vec![("version", v.to_string())], 1.0))
                        .into_iter()
                        .collect()
                },
            )?;
            series += labeled_family(
                e,
                s,
                "probe_ssl_last_chain_info",
                "Leaf certificate of the last chain the server presented.",
                |st| {
                    st.last
                        .as_ref()
                        .and_then(|r| r.chain.as_ref())
                        .map(|c| (chain_labels(c), 1.0))
                        .into_iter()
                        .collect()
                },
            )?;
            series += gauge_family(
                e,
                s,
                "probe_ssl_last_chain_expiry_timestamp_seconds",
                "Unix time in seconds when the first certificate of the leaf's issuing path expires.",
                |st| {
                    st.last
                        .as_ref()
                        .and_then(|r| r.chain.as_ref())
                        .map(|c| c.last_chain_expiry as f64)
                },
            )?;
        }
        series += gauge_family(
            e,
            s,
            "probe_http_uncompressed_body_length",
            "Length of the last probe's decoded body.",
            |st| {
                st.last
                    .as_ref()
                    .and_then(|r| r.uncompressed_length)
                    .map(|n| n as f64)
            },
        )?;
        series += gauge_family(
            e,
            s,
            "probe_dns_lookup_time_seconds",
            "DNS lookup time of the last probe in seconds.",
            |st| st.last.as_ref().map(|r| r.phases.resolve.as_secs_f64()),
        )?;

        if settings.histogram && !s.is_empty() {
            let mut family = e.encode_descriptor(
                "sitewatch_probe_duration_seconds",
                "Duration of every probe in seconds.",
                None,
                MetricType::Histogram,
            )?;
            for (site, st) in s {
                let count: u64 = st.buckets.iter().sum();
                let buckets: Vec<(f64, u64)> = st
                    .bounds
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(st.buckets.iter().copied())
                    .collect();
                family
                    .encode_family(&site.labels)?
                    .encode_histogram::<NoLabelSet>(st.sum, count, &buckets, None)?;
                series += buckets.len() + 2;
            }
        }
        if !s.is_empty() {
            let mut family = e.encode_descriptor(
                "sitewatch_probes",
                "Probes by result class. Classes that never happened are left out, except success.",
                None,
                MetricType::Counter,
            )?;
            for (site, st) in s {
                for class in ResultClass::ALL {
                    let n = st.counts[class.index()];
                    if n == 0 && class != ResultClass::Success {
                        continue;
                    }
                    let labels = (&site.labels, [("result", class.as_str())]);
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, f64>(&n, None)?;
                    series += 1;
                }
            }
        }
        series += gauge_family(
            e,
            s,
            "sitewatch_site_up",
            "Confirmed state: 0 after failure_threshold failed probes in a row, 1 after success_threshold good ones.",
            |st| st.last.as_ref().map(|_| b(st.up)),
        )?;
        series += labeled_family(
            e,
            s,
            "sitewatch_address_probe_success",
            "With addresses: all, whether the last probe of each address passed every check.",
            |st| {
                st.last.as_ref().map_or_else(Vec::new, |r| {
                    r.addresses
                        .iter()
                        .map(|a| {
                            let ok = b(a.class == ResultClass::Success);
                            (vec![("address", a.ip.to_string())], ok)
                        })
                        .collect()
                })
            },
        )?;
        series += labeled_family(
            e,
            s,
            "sitewatch_address_probe_duration_seconds",
            "With addresses: all, wall time of the last probe of each address in seconds.",
            |st| {
                st.last.as_ref().map_or_else(Vec::new, |r| {
                    r.addresses
                        .iter()
                        .map(|a| {
                            let d = a.duration.as_secs_f64();
                            (vec![("address", a.ip.to_string())], d)
                        })
                        .collect()
                })
            },
        )?;
        series += gauge_family(
            e,
            s,
            "sitewatch_probe_last_timestamp_seconds",
            "Unix time in seconds when the last probe finished.",
            |st| st.finished_at.map(unix_seconds),
        )?;

        e.encode_descriptor(
            "sitewatch_series",
            "Per-site series in this scrape: what the sites cost downstream.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(series as u64))?;
        Ok(())
    }
}

/// Labels of `sitewatch_config_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of `sitewatch_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// Exporter health metrics, updated by the scheduler and the config loader.
#[derive(Debug, Clone)]
pub struct Health {
    /// `sitewatch_sites`.
    pub sites: Gauge,
    /// `sitewatch_probes_in_flight`.
    pub in_flight: Gauge,
    /// `sitewatch_schedule_lag_seconds`.
    pub schedule_lag: Histogram,
    /// `sitewatch_probes_skipped_total`.
    pub skipped: Counter,
    /// `sitewatch_config_last_reload_successful`.
    pub reload_ok: Gauge,
    /// `sitewatch_config_last_reload_success_timestamp_seconds`.
    pub reload_timestamp: Gauge<f64, AtomicU64>,
    /// `sitewatch_config_reloads_total{result}`.
    pub reloads: Family<ReloadLabels, Counter>,
    /// `sitewatch_config_sites`: sites in the configuration, every shard's.
    pub config_sites: Gauge,
    /// `sitewatch_shard_index`.
    pub shard_index: Gauge,
    /// `sitewatch_shards`.
    pub shard_count: Gauge,
}

impl Health {
    /// Records the outcome of a configuration load.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.reload_ok.set(i64::from(ok));
        if ok {
            self.reload_timestamp.set(unix_seconds(SystemTime::now()));
        }
    }
}

/// The `process_*` metrics of the running process, read from `/proc` at scrape time.
#[derive(Debug, Default)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let Ok(stat) = me.stat() else {
            return Ok(());
        };
        let tps = procfs::ticks_per_second() as f64;
        let page = procfs::page_size();
        let mut gauge = |name: &str, help: &str, v: f64| -> Result<(), std::fmt::Error> {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&v)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            (stat.rss * page) as f64,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stat.vsize as f64,
        )?;
        gauge(
            "process_threads",
            "Number of OS threads in the process.",
            stat.num_threads as f64,
        )?;
        if let Ok(boot) = procfs::boot_time_secs() {
            gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.starttime as f64 / tps,
            )?;
        }
        if let Ok(fds) = me.fd_count() {
            gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                fds as f64,
            )?;
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(v) = limits.max_open_files.soft_limit {
                gauge(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    v as f64,
                )?;
            }
        }
        encoder
            .encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, f64, f64>(&((stat.utime + stat.stime) as f64 / tps), None)
    }
}

/// The series of one probe alone, as blackbox_exporter's `/probe` answers: the per-site
/// series of `site` after `result`, and nothing else.
pub fn encode_one(
    site: &Site,
    result: &ProbeResult,
    settings: &MetricsSettings,
    location: Option<String>,
    openmetrics: bool,
) -> String {
    let table = Arc::new(SiteTable::new(location));
    table.set_settings(settings);
    table.insert(site);
    table.record(&site.key(), result);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(table));
    let mut out = String::new();
    let written = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    written.expect("encoding metrics into a String");
    out
}

/// The registry and the handles that feed it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Per-site series.
    pub sites: Arc<SiteTable>,
    /// Exporter health.
    pub health: Health,
    /// Remote-write counters per destination.
    pub remote_write: Arc<crate::remote_write::StatsTable>,
}

impl Metrics {
    /// A registry with every metric of the exporter; `location` labels every probe series.
    pub fn new(location: Option<String>) -> Self {
        let mut registry = Registry::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: crate::REVISION,
            })
            .set(1);
        registry.register("sitewatch_build_info", "Build information; always 1", build);
        let health = Health {
            sites: Gauge::default(),
            in_flight: Gauge::default(),
            schedule_lag: Histogram::new(LAG_BUCKETS),
            skipped: Counter::default(),
            reload_ok: Gauge::default(),
            reload_timestamp: Gauge::default(),
            reloads: Family::default(),
            config_sites: Gauge::default(),
            shard_index: Gauge::default(),
            shard_count: Gauge::default(),
        };
        health.shard_count.set(1);
        registry.register(
            "sitewatch_sites",
            "Sites probed by this exporter",
            health.sites.clone(),
        );
        registry.register(
            "sitewatch_config_sites",
            "Sites in the configuration, those of other shards included",
            health.config_sites.clone(),
        );
        registry.register(
            "sitewatch_shard_sites",
            "Sites this shard owns and probes",
            health.sites.clone(),
        );
        registry.register(
            "sitewatch_shard_index",
            "This replica's shard index (0-based)",
            health.shard_index.clone(),
        );
        registry.register(
            "sitewatch_shards",
            "Replicas the sites are sharded over",
            health.shard_count.clone(),
        );
        registry.register(
            "sitewatch_probes_in_flight",
            "Probes running now",
            health.in_flight.clone(),
        );
        registry.register(
            "sitewatch_schedule_lag_seconds",
            "How late probes started after they were due, in seconds",
            health.schedule_lag.clone(),
        );
        registry.register(
            "sitewatch_probes_skipped",
            "Probes not started because the site's previous probe was still running or the exporter was overloaded",
            health.skipped.clone(),
        );
        registry.register(
            "sitewatch_config_last_reload_successful",
            "Whether the last configuration load succeeded",
            health.reload_ok.clone(),
        );
        registry.register(
            "sitewatch_config_last_reload_success_timestamp_seconds",
            "Unix time in seconds of the last successful configuration load",
            health.reload_timestamp.clone(),
        );
        registry.register(
            "sitewatch_config_reloads",
            "Configuration loads by result",
            health.reloads.clone(),
        );
        let sites = Arc::new(SiteTable::new(location));
        registry.register_collector(Box::new(sites.clone()));
        registry.register_collector(Box::new(ProcessCollector));
        let remote_write = Arc::new(crate::remote_write::StatsTable::default());
        registry.register_collector(Box::new(remote_write.clone()));
        Self {
            registry,
            sites,
            health,
            remote_write,
        }
    }

    /// Writes the whole exposition, in OpenMetrics or Prometheus text format, to `out`.
    /// `/metrics` streams it in chunks: at 100,000 sites it is over 200 MiB of text, which
    /// should not sit in memory whole.
    pub fn encode_to<W: std::fmt::Write>(
        &self,
        out: &mut W,
        openmetrics: bool,
    ) -> std::fmt::Result {
        if openmetrics {
            prometheus_client::encoding::text::encode(out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
        }
    }

    /// The whole exposition as one string (tests, small registries).
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an error here is a bug in a collector.
        self.encode_to(&mut out, openmetrics)
            .expect("encoding metrics into a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(thresholds: (u32, u32)) -> SiteState {
        SiteState {
            last: None,
            counts: [0; ResultClass::ALL.len()],
            buckets: Vec::new(),
            sum: 0.0,
            finished_at: None,
            since: None,
            history: 0,
            history_len: 0,
            bounds: Arc::from([]),
            own_bounds: false,
            up: true,
            streak: 0,
            thresholds,
            gone: Vec::new(),
        }
    }

    /// `sitewatch_site_up` after each probe of `outcomes` (`+` good, `-` failed).
    fn confirmed(thresholds: (u32, u32), outcomes: &str) -> String {
        let mut st = state(thresholds);
        outcomes
            .chars()
            .map(|c| {
                st.confirm(c == '+');
                if st.up {
                    '1'
                } else {
                    '0'
                }
            })
            .collect()
    }

    #[test]
    fn confirmation_needs_consecutive_probes_each_way() {
        // Default thresholds: the confirmed state is the raw one.
        assert_eq!(confirmed((1, 1), "+-+--+"), "101001");
        // Down after two failures in a row; a success in between resets the count.
        assert_eq!(confirmed((2, 1), "-+-+--+"), "1111101");
        // Up again after three successes in a row.
        assert_eq!(confirmed((1, 3), "-++-+++"), "0000001");
        assert_eq!(confirmed((3, 2), "---+-++--"), "110000111");
    }

    #[test]
    fn tls_details_can_be_dropped() {
        let config = crate::config::parse_sources(
            &[(
                "a.yaml".into(),
                "sites:\n  - { id: a, url: 'https://127.0.0.1:9/' }\n".into(),
            )],
            &crate::config::SystemSecrets,
        )
        .unwrap();
        let result = ProbeResult {
            tls_version: Some("TLS 1.3"),
            chain: Some(Arc::new(crate::tls::ChainInfo {
                fingerprint_sha256: "ab".into(),
                subject: "CN=a".into(),
                issuer: "CN=ca".into(),
                subject_alternative: "a".into(),
                serial_number: "1".into(),
                last_chain_expiry: 2_000_000_000,
            })),
            cert_expiry: Some(2_000_000_000),
            ..ProbeResult::for_test(ResultClass::Success, SystemTime::now(), Duration::ZERO)
        };
        let text = |tls_details: bool| {
            let m = Metrics::new(None);
            m.sites.set_settings(&MetricsSettings {
                tls_details,
                ..MetricsSettings::default()
            });
            m.sites.insert(&config.sites[0]);
            m.sites.record("a", &result);
            m.encode(false)
        };
        let details = [
            "probe_tls_version_info{",
            "probe_ssl_last_chain_info{",
            "probe_ssl_last_chain_expiry_timestamp_seconds{",
        ];
        let on = text(true);
        let off = text(false);
        for name in details {
            assert!(on.contains(name), "{name} missing:\n{on}");
            assert!(!off.contains(name), "{name} not dropped:\n{off}");
        }
        // The expiry every alert uses stays.
        assert!(off.contains("probe_ssl_earliest_cert_expiry{"));
    }

    #[test]
    fn a_site_keeps_its_own_buckets_and_a_changed_layout_resets_only_it() {
        let config = crate::config::parse_sources(
            &[(
                "a.yaml".into(),
                "sites:\n  - { id: own, url: 'http://127.0.0.1:9/', histogram_buckets: [0.5] }\n  - { id: shared, url: 'http://127.0.0.1:9/' }\n"
                    .into(),
            )],
            &crate::config::SystemSecrets,
        )
        .unwrap();
        let table = SiteTable::new(None);
        for s in &config.sites {
            table.insert(s);
            let r = ProbeResult::for_test(
                ResultClass::Success,
                SystemTime::now(),
                Duration::from_millis(200),
            );
            table.record(&s.key(), &r);
        }
        let buckets = |key: &str| {
            let sites = table.sites.read().unwrap();
            let st = sites[key].state.lock().unwrap();
            (st.bounds.to_vec(), st.buckets.clone())
        };
        assert_eq!(buckets("own"), (vec![0.5], vec![1, 0]));
        assert_eq!(buckets("shared").1.iter().sum::<u64>(), 1);
        // A new global layout resets the sites that use it, not the one with its own.
        table.set_settings(&MetricsSettings {
            histogram_buckets: Arc::from([1.0]),
            ..MetricsSettings::default()
        });
        assert_eq!(buckets("own"), (vec![0.5], vec![1, 0]));
        assert_eq!(buckets("shared"), (vec![1.0], vec![0, 0]));
        // Re-inserting with new thresholds keeps the series and takes the thresholds.
        let mut own = (*config.sites[0]).clone();
        own.failure_threshold = 4;
        table.insert(&own);
        assert_eq!(buckets("own"), (vec![0.5], vec![1, 0]));
        assert_eq!(
            table.sites.read().unwrap()["own"]
                .state
                .lock()
                .unwrap()
                .thresholds,
            (4, 1)
        );
    }
}

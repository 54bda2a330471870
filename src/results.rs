//! The recent-results log: every probe result with a sequence number, for followers such as
//! the keeper.
//!
//! A bounded ring buffer: the oldest results fall off when it is full. Sequence numbers start
//! at 1 and increase by one per result; with the exporter's random instance id they let a
//! follower resume exactly where it stopped, notice results it missed (`first_seq` moved past
//! what it asked for) and notice an exporter restart (a new instance id).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::Site;
use crate::probe::ProbeResult;

/// Default number of results kept.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// One probe result as followers see it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Position in the log.
    pub seq: u64,
    /// The site as it was configured when probed.
    pub site: Arc<Site>,
    /// What the probe measured.
    pub result: ProbeResult,
}

/// What one page of the log holds.
#[derive(Debug, Clone)]
pub struct Page {
    /// The exporter's instance id.
    pub instance: String,
    /// The oldest sequence number still held (0 when empty).
    pub first_seq: u64,
    /// The newest sequence number written so far (0 when none).
    pub last_seq: u64,
    /// Records after the requested sequence number, oldest first.
    pub records: Vec<Record>,
}

struct Inner {
    records: VecDeque<Record>,
    next_seq: u64,
}

/// The log. Cheap to share: appends take a short lock, readers copy out a page.
pub struct ResultLog {
    instance: String,
    location: Option<String>,
    capacity: usize,
    inner: Mutex<Inner>,
    /// The last sequence number written; long-polling readers wait on it.
    written: watch::Sender<u64>,
}

impl std::fmt::Debug for ResultLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultLog")
            .field("instance", &self.instance)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ResultLog {
    /// An empty log holding at most `capacity` results, with a fresh instance id.
    pub fn new(capacity: usize, location: Option<String>) -> Self {
        Self {
            instance: new_instance_id(),
            location,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                records: VecDeque::new(),
                next_seq: 1,
            }),
            written: watch::channel(0).0,
        }
    }

    /// This exporter run's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The `location` label of this exporter, if any.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// Appends a result and wakes waiting readers.
    pub fn push(&self, site: &Arc<Site>, result: ProbeResult) {
        let seq = {
            let mut inner = self.inner.lock().expect("results lock");
            let seq = inner.next_seq;
            inner.next_seq += 1;
            if inner.records.len() == self.capacity {
                inner.records.pop_front();
            }
            inner.records.push_back(Record {
                seq,
                site: site.clone(),
                result,
            });
            seq
        };
        self.written.send_replace(seq);
    }

    /// Up to `limit` records with a sequence number above `after`.
    pub fn page(&self, after: u64, limit: usize) -> Page {
        let inner = self.inner.lock().expect("results lock");
        let first_seq = inner.records.front().map_or(0, |r| r.seq);
        let last_seq = inner.next_seq - 1;
        // Sequence numbers are contiguous, so the start is an index computation.
        let skip = after.saturating_sub(first_seq.saturating_sub(1)) as usize;
        let records = inner
            .records
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect();
        Page {
            instance: self.instance.clone(),
            first_seq,
            last_seq,
            records,
        }
    }

    /// Like [`ResultLog::page`], but waits up to `wait` for a record after `after` to exist.
    pub async fn wait_page(&self, after: u64, limit: usize, wait: Duration) -> Page {
        let mut rx = self.written.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|last| *last > after)).await;
        self.page(after, limit)
    }
}

fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixed with time and pid it is unique per run.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// The JSON form of a record: one line of `/api/v1/results`.
#[derive(Serialize)]
pub struct RecordJson<'a> {
    seq: u64,
    instance: &'a str,
    site: &'a str,
    tenant: Option<&'a str>,
    url: &'a str,
    location: Option<&'a str>,
    labels: std::collections::BTreeMap<&'a str, &'a str>,
    regex: Option<&'a str>,
    #[serde(flatten)]
    result: ResultJson<'a>,
}

/// The JSON form of a probe result (also the `last_result` of `/api/v1/sites`).
#[derive(Serialize)]
pub struct ResultJson<'a> {
    started_at: f64,
    duration_seconds: f64,
    result: &'a str,
    success: bool,
    error: Option<&'a str>,
    phases: PhasesJson,
    status_code: u16,
    content_length: u64,
    redirects: u32,
    ssl: bool,
    http_version: f64,
    cert_expiry: Option<i64>,
    failed_due_to_regex: bool,
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uncompressed_length: Option<u64>,
    /// With `addresses: all`: each address's outcome.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<AddressJson>,
}

/// One address's outcome in [`ResultJson`].
#[derive(Serialize)]
struct AddressJson {
    address: String,
    result: &'static str,
    duration_seconds: f64,
}

#[derive(Serialize)]
struct PhasesJson {
    resolve: f64,
    connect: f64,
    tls: f64,
    processing: f64,
    transfer: f64,
}

impl<'a> ResultJson<'a> {
    /// The JSON view of a result.
    pub fn new(r: &'a ProbeResult) -> Self {
        Self {
            started_at: crate::probe::unix_seconds(r.started_at),
            duration_seconds: r.duration.as_secs_f64(),
            result: r.class.as_str(),
            success: r.success(),
            error: r.error.as_deref(),
            phases: PhasesJson {
                resolve: r.phases.resolve.as_secs_f64(),
                connect: r.phases.connect.as_secs_f64(),
                tls: r.phases.tls.as_secs_f64(),
                processing: r.phases.processing.as_secs_f64(),
                transfer: r.phases.transfer.as_secs_f64(),
            },
            status_code: r.status_code,
            content_length: r.content_length,
            redirects: r.redirects,
            ssl: r.ssl,
            http_version: r.http_version,
            cert_expiry: r.cert_expiry,
            failed_due_to_regex: r.failed_due_to_regex,
            address: r.address.map(|a| a.to_string()),
            tls_version: r.tls_version,
            uncompressed_length: r.uncompressed_length,
            addresses: r
                .addresses
                .iter()
                .map(|a| AddressJson {
                    address: a.ip.to_string(),
                    result: a.class.as_str(),
                    duration_seconds: a.duration.as_secs_f64(),
                })
                .collect(),
        }
    }
}

impl<'a> RecordJson<'a> {
    /// The JSON view of a record.
    pub fn new(log: &'a ResultLog, record: &'a Record) -> Self {
        let site = &record.site;
        Self {
            seq: record.seq,
            instance: log.instance(),
            site: &site.id,
            tenant: site.tenant.as_deref(),
            url: site.url.as_str(),
            location: log.location(),
            labels: site
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            regex: site.regex.as_ref().map(|r| r.0.as_str()),
            result: ResultJson::new(&record.result),
        }
    }
}

/// The JSON form of a site for `/api/v1/sites`: its configuration without secrets (header
/// values and credentials are left out: header values often are credentials).
#[derive(Serialize)]
pub struct SiteJson<'a> {
    id: &'a str,
    tenant: Option<&'a str>,
    url: &'a str,
    labels: std::collections::BTreeMap<&'a str, &'a str>,
    method: &'a str,
    header_names: Vec<&'a str>,
    auth: Option<&'static str>,
    interval_seconds: f64,
    timeout_seconds: f64,
    valid_status: Vec<String>,
    follow_redirects: bool,
    max_redirects: u32,
    max_body_bytes: u64,
    regex: Option<&'a str>,
    regex_absent: Option<&'a str>,
    proxy: Option<&'a str>,
    tls_insecure_skip_verify: bool,
    tls_server_name: Option<&'a str>,
    checks: ChecksJson<'a>,
    last_result: Option<ResultJson<'a>>,
    /// The confirmed state (`sitewatch_site_up`), once probed.
    #[serde(skip_serializing_if = "Option::is_none")]
    up: Option<bool>,
    /// Unix seconds of the last up/down change (what the status page shows as "since").
    #[serde(skip_serializing_if = "Option::is_none")]
    state_since: Option<f64>,
    /// The last outcomes, oldest first, at most 32 (true = success).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    recent: Vec<bool>,
}

/// The checks of a site in [`SiteJson`]; settings left at their defaults are left out.
#[derive(Serialize)]
struct ChecksJson<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fail_if_header_matches: Vec<HeaderCheckJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fail_if_header_not_matches: Vec<HeaderCheckJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    json_conditions: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_if_cert_expires_within_seconds: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    fail_if_ssl: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    fail_if_not_ssl: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    valid_http_versions: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compression: Option<&'static str>,
    addresses: crate::checks::AddressMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_version: Option<crate::config::IpVersion>,
    failure_threshold: u32,
    success_threshold: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    histogram_buckets: Option<&'a [f64]>,
}

#[derive(Serialize)]
struct HeaderCheckJson<'a> {
    header: &'a str,
    regex: &'a str,
    allow_missing: bool,
}

impl<'a> ChecksJson<'a> {
    fn new(site: &'a Site) -> Self {
        let c = &site.checks;
        let headers = |list: &'a [crate::checks::HeaderCheck]| {
            list.iter()
                .map(|h| HeaderCheckJson {
                    header: h.header.as_str(),
                    regex: h.regex.0.as_str(),
                    allow_missing: h.allow_missing,
                })
                .collect()
        };
        Self {
            fail_if_header_matches: headers(&c.fail_if_header_matches),
            fail_if_header_not_matches: headers(&c.fail_if_header_not_matches),
            json_conditions: c.json.iter().map(|j| j.as_str()).collect(),
            max_duration_seconds: c.max_duration.map(|d| d.as_secs_f64()),
            fail_if_cert_expires_within_seconds: c.cert_expires_within.map(|d| d.as_secs()),
            fail_if_ssl: c.fail_if_ssl,
            fail_if_not_ssl: c.fail_if_not_ssl,
            valid_http_versions: c
                .http_versions
                .iter()
                .map(|v| crate::checks::version_name(*v))
                .collect(),
            compression: c.compression.map(|c| c.token()),
            addresses: site.addresses,
            ip_version: site.ip_version,
            failure_threshold: site.failure_threshold,
            success_threshold: site.success_threshold,
            histogram_buckets: site.histogram_buckets.as_deref(),
        }
    }
}

impl<'a> SiteJson<'a> {
    /// The JSON view of a site and its last result.
    pub fn new(site: &'a Site, last: Option<&'a ProbeResult>) -> Self {
        Self {
            id: &site.id,
            tenant: site.tenant.as_deref(),
            url: site.url.as_str(),
            labels: site
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            method: site.method.as_str(),
            header_names: site.headers.keys().map(|k| k.as_str()).collect(),
            auth: site.auth.as_ref().map(|a| match a {
                crate::config::Auth::Basic { .. } => "basic",
                crate::config::Auth::Bearer(_) => "bearer",
            }),
            interval_seconds: site.interval.as_secs_f64(),
            timeout_seconds: site.timeout.as_secs_f64(),
            valid_status: site
                .valid_status
                .iter()
                .map(|r| format!("{}-{}", r.start(), r.end()))
                .collect(),
            follow_redirects: site.follow_redirects,
            max_redirects: site.max_redirects,
            max_body_bytes: site.max_body_bytes,
            regex: site.regex.as_ref().map(|r| r.0.as_str()),
            regex_absent: site.regex_absent.as_ref().map(|r| r.0.as_str()),
            proxy: site.proxy.as_ref().map(|p| p.as_str()),
            tls_insecure_skip_verify: site.tls.insecure_skip_verify,
            tls_server_name: site.tls.server_name.as_deref(),
            checks: ChecksJson::new(site),
            last_result: last.map(ResultJson::new),
            up: None,
            state_since: None,
            recent: Vec::new(),
        }
    }

    /// Adds what the status page shows: the time of the last change and recent outcomes.
    pub fn with_status(mut self, status: Option<&crate::metrics::SiteStatus>) -> Self {
        if let Some(st) = status {
            self.state_since = Some(crate::probe::unix_seconds(st.since));
            self.up = Some(st.up);
            self.recent = st.recent.clone();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_sources, Secrets};

    struct NoSecrets;
    impl Secrets for NoSecrets {
        fn env(&self, _: &str) -> Option<String> {
            None
        }
        fn file(&self, _: &std::path::Path) -> std::io::Result<String> {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }

    fn site() -> Arc<Site> {
        let text = "sites:\n  - id: a\n    url: http://127.0.0.1:1/\n".to_string();
        parse_sources(&[("t.yaml".into(), text)], &NoSecrets)
            .unwrap()
            .sites[0]
            .clone()
    }

    fn result() -> ProbeResult {
        ProbeResult {
            content_length: 2,
            ..ProbeResult::for_test(
                crate::probe::ResultClass::Success,
                SystemTime::UNIX_EPOCH,
                Duration::from_millis(5),
            )
        }
    }

    #[test]
    fn pages_resume_after_a_sequence_number_and_show_what_fell_off() {
        let log = ResultLog::new(3, None);
        let (s, r) = (site(), result());
        assert_eq!(log.page(0, 10).records.len(), 0);
        for _ in 0..5 {
            log.push(&s, r.clone());
        }
        let p = log.page(0, 10);
        // 1 and 2 fell off: a follower that asked after 0 missed them.
        assert_eq!((p.first_seq, p.last_seq), (3, 5));
        assert_eq!(
            p.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(
            log.page(3, 10)
                .records
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [4, 5]
        );
        assert_eq!(
            log.page(4, 1)
                .records
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [5]
        );
        assert!(log.page(5, 10).records.is_empty());
        assert!(log.page(99, 10).records.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_wakes_on_the_next_result() {
        let log = Arc::new(ResultLog::new(10, None));
        let reader = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_page(0, 10, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        log.push(&site(), result());
        let page = reader.await.unwrap();
        assert_eq!(page.records.len(), 1);
        // With nothing new, the wait ends at its deadline with an empty page.
        let empty = log.wait_page(1, 10, Duration::from_secs(5)).await;
        assert!(empty.records.is_empty());
    }

    #[test]
    fn instance_ids_differ_between_runs() {
        assert_ne!(
            ResultLog::new(1, None).instance(),
            ResultLog::new(1, None).instance()
        );
    }
}

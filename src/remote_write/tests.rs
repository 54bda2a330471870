use super::*;

use crate::config::{parse_sources, Config, Secrets};
use crate::metrics::Metrics;
use crate::probe::{Phases, ProbeResult, ResultClass};

struct NoSecrets;

impl Secrets for NoSecrets {
    fn env(&self, _: &str) -> Option<String> {
        None
    }
    fn file(&self, path: &std::path::Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.display().to_string(),
        ))
    }
}

fn config(text: &str) -> Config {
    parse_sources(&[("/etc/sw/a.yaml".into(), text.into())], &NoSecrets).expect("valid config")
}

fn result(class: ResultClass, ms: u64) -> ProbeResult {
    ProbeResult {
        phases: Phases {
            connect: Duration::from_millis(1),
            ..Phases::default()
        },
        content_length: 4096,
        ..ProbeResult::for_test(
            class,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            Duration::from_millis(ms),
        )
    }
}

/// The samples of one probe of the first site of `text`.
fn samples(text: &str, location: Option<&str>, r: &ProbeResult) -> ProbeSamples {
    let c = config(text);
    let m = Metrics::new(location.map(str::to_string));
    m.sites.set_settings(&c.metrics);
    let site = &c.sites[0];
    m.sites.insert(site);
    m.sites.record(&site.key(), r);
    m.sites
        .samples(&site.key())
        .expect("probed site has samples")
}

const ONE_SITE: &str = "sites:\n  - id: shop\n    url: http://127.0.0.1:9/\n    tenant: acme\n    labels: { team: web }\n";

fn label<'a>(ts: &'a TimeSeries, name: &str) -> Option<&'a str> {
    ts.labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

#[test]
fn request_has_sorted_labels_name_and_probe_timestamp() {
    let s = samples(ONE_SITE, Some("eu-1"), &result(ResultClass::Success, 250));
    let req = write_request(&[Arc::new(s)], &[]);
    let success = req
        .timeseries
        .iter()
        .find(|t| label(t, "__name__") == Some("probe_success"))
        .expect("probe_success pushed");
    let names: Vec<&str> = success.labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["__name__", "location", "site", "team", "tenant", "url"]
    );
    assert_eq!(success.samples.len(), 1);
    assert_eq!(success.samples[0].value, 1.0);
    // Finished at start + duration, in milliseconds.
    assert_eq!(success.samples[0].timestamp, 1_700_000_000_250);
    for ts in &req.timeseries {
        let mut sorted = ts.labels.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(sorted, ts.labels, "labels sorted by name");
    }
}

#[test]
fn external_labels_never_override_series_labels() {
    let s = samples(ONE_SITE, None, &result(ResultClass::Success, 10));
    let external = vec![
        ("cluster".to_string(), "eu1".to_string()),
        ("team".to_string(), "platform".to_string()),
    ];
    let req = write_request(&[Arc::new(s)], &external);
    for ts in &req.timeseries {
        assert_eq!(label(ts, "cluster"), Some("eu1"));
        assert_eq!(label(ts, "team"), Some("web"), "the site's own label wins");
        assert_eq!(ts.labels.iter().filter(|l| l.name == "team").count(), 1);
    }
}

#[test]
fn histogram_buckets_are_cumulative_with_sum_and_count() {
    let text = "metrics:\n  histogram_buckets: [0.1, 0.5, 1]\nsites:\n  - id: a\n    url: http://127.0.0.1:9/\n";
    let c = config(text);
    let m = Metrics::new(None);
    m.sites.set_settings(&c.metrics);
    let site = &c.sites[0];
    m.sites.insert(site);
    for ms in [50, 300, 700, 2000] {
        m.sites
            .record(&site.key(), &result(ResultClass::Success, ms));
    }
    let s = m.sites.samples(&site.key()).unwrap();
    let bucket = |le: &str| {
        s.samples
            .iter()
            .find(|p| {
                p.name == "sitewatch_probe_duration_seconds_bucket"
                    && p.extra.first().map(|(_, v)| v.as_str()) == Some(le)
            })
            .map(|p| p.value)
    };
    assert_eq!(bucket("0.1"), Some(1.0));
    assert_eq!(bucket("0.5"), Some(2.0));
    assert_eq!(bucket("1.0"), Some(3.0));
    assert_eq!(bucket("+Inf"), Some(4.0));
    let value = |name: &str| s.samples.iter().find(|p| p.name == name).map(|p| p.value);
    assert_eq!(value("sitewatch_probe_duration_seconds_count"), Some(4.0));
    let sum = value("sitewatch_probe_duration_seconds_sum").unwrap();
    assert!((sum - 3.05).abs() < 1e-9, "sum {sum}");
}

#[test]
fn pushed_samples_match_the_exposition() {
    // Every pushed series is a series of /metrics with the same value: one source of truth.
    let rich = ProbeResult {
        address: Some("::1".parse().unwrap()),
        tls_version: Some("TLS 1.3"),
        chain: Some(Arc::new(crate::tls::ChainInfo {
            fingerprint_sha256: "ab01".into(),
            subject: "CN=shop.example".into(),
            issuer: "CN=Test CA,O=Test".into(),
            subject_alternative: "shop.example,www.shop.example".into(),
            serial_number: "1f".into(),
            last_chain_expiry: 1_800_000_000,
        })),
        cert_expiry: Some(1_790_000_000),
        uncompressed_length: Some(9000),
        addresses: vec![
            crate::probe::AddressResult {
                ip: "::1".parse().unwrap(),
                class: ResultClass::Success,
                duration: Duration::from_millis(20),
            },
            crate::probe::AddressResult {
                ip: "127.0.0.2".parse().unwrap(),
                class: ResultClass::Json,
                duration: Duration::from_millis(30),
            },
        ],
        ..result(ResultClass::Json, 40)
    };
    exposition_matches(&result(ResultClass::Timeout, 1500));
    let names = exposition_matches(&rich);
    for name in [
        "probe_ip_protocol",
        "probe_tls_version_info",
        "probe_ssl_last_chain_info",
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "probe_http_uncompressed_body_length",
        "sitewatch_site_up",
        "sitewatch_address_probe_success",
        "sitewatch_address_probe_duration_seconds",
    ] {
        assert!(names.contains(name), "{name} not pushed");
    }
}

fn chain(fingerprint: &str, expiry: i64) -> Option<Arc<crate::tls::ChainInfo>> {
    Some(Arc::new(crate::tls::ChainInfo {
        fingerprint_sha256: fingerprint.into(),
        subject: "CN=shop.example".into(),
        issuer: "CN=Test CA".into(),
        subject_alternative: "shop.example".into(),
        serial_number: "1f".into(),
        last_chain_expiry: expiry,
    }))
}

fn address(ip: &str) -> crate::probe::AddressResult {
    crate::probe::AddressResult {
        ip: ip.parse().unwrap(),
        class: ResultClass::Success,
        duration: Duration::from_millis(20),
    }
}

#[test]
fn series_a_probe_no_longer_has_are_pushed_stale() {
    let c = config(ONE_SITE);
    let m = Metrics::new(None);
    m.sites.set_settings(&c.metrics);
    let site = &c.sites[0];
    m.sites.insert(site);
    let before = ProbeResult {
        address: Some("::1".parse().unwrap()),
        tls_version: Some("TLS 1.2"),
        chain: chain("old", 1_800_000_000),
        cert_expiry: Some(1_800_000_000),
        uncompressed_length: Some(10),
        addresses: vec![address("::1"), address("127.0.0.2")],
        ..result(ResultClass::Success, 40)
    };
    // The certificate was rotated, TLS 1.3 negotiated, one address left DNS.
    let after = ProbeResult {
        tls_version: Some("TLS 1.3"),
        chain: chain("new", 1_900_000_000),
        cert_expiry: Some(1_900_000_000),
        uncompressed_length: None,
        addresses: vec![address("::1")],
        ..before.clone()
    };
    m.sites.record(&site.key(), &before);
    m.sites.record(&site.key(), &after);
    let s = m.sites.samples(&site.key()).unwrap();
    let stale: Vec<String> = s
        .samples
        .iter()
        .filter(|p| p.value.to_bits() == crate::metrics::STALE_NAN_BITS)
        .map(|p| {
            let extra: Vec<String> = p.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}{{{}}}", p.name, extra.join(","))
        })
        .collect();
    assert_eq!(
        stale,
        [
            "probe_tls_version_info{version=TLS 1.2}",
            "probe_ssl_last_chain_info{fingerprint_sha256=old,subject=CN=shop.example,issuer=CN=Test CA,subjectalternative=shop.example,serialnumber=1f}",
            "probe_http_uncompressed_body_length{}",
            "sitewatch_address_probe_success{address=127.0.0.2}",
            "sitewatch_address_probe_duration_seconds{address=127.0.0.2}",
        ]
    );
    // The new chain's series are pushed with values.
    let expiry = s
        .samples
        .iter()
        .find(|p| p.name == "probe_ssl_last_chain_expiry_timestamp_seconds")
        .unwrap();
    assert_eq!(expiry.value, 1_900_000_000.0);
    // A probe that reaches no TLS at all makes every TLS series stale.
    let refused = ProbeResult {
        address: Some("::1".parse().unwrap()),
        ..result(ResultClass::ConnectError, 1)
    };
    m.sites.record(&site.key(), &refused);
    let s = m.sites.samples(&site.key()).unwrap();
    let stale_names: Vec<&str> = s
        .samples
        .iter()
        .filter(|p| p.value.to_bits() == crate::metrics::STALE_NAN_BITS)
        .map(|p| p.name)
        .collect();
    for name in [
        "probe_ssl_earliest_cert_expiry",
        "probe_tls_version_info",
        "probe_ssl_last_chain_info",
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "sitewatch_address_probe_success",
    ] {
        assert!(
            stale_names.contains(&name),
            "{name} not stale: {stale_names:?}"
        );
    }
    assert!(!stale_names.contains(&"probe_ip_protocol"));
}

/// Checks one probe's pushed series against the exposition; returns the names pushed.
fn exposition_matches(r: &ProbeResult) -> std::collections::HashSet<String> {
    let s = samples(ONE_SITE, Some("eu-1"), r);
    let c = config(ONE_SITE);
    let m = Metrics::new(Some("eu-1".into()));
    m.sites.set_settings(&c.metrics);
    m.sites.insert(&c.sites[0]);
    m.sites.record(&c.sites[0].key(), r);
    // OpenMetrics, as Prometheus negotiates it: its `le` is written `1.0`, as Prometheus 3
    // also normalizes the classic format's `1`.
    let text = m.encode(true);
    let req = write_request(&[Arc::new(s)], &[]);
    assert!(
        req.timeseries.len() >= 20,
        "{} series",
        req.timeseries.len()
    );
    for ts in &req.timeseries {
        let name = label(ts, "__name__").unwrap();
        let labels: Vec<String> = ts
            .labels
            .iter()
            .filter(|l| l.name != "__name__")
            .map(|l| format!("{}=\"{}\"", l.name, l.value))
            .collect();
        let line = text
            .lines()
            .find(|line| {
                line.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|l| line.contains(l.as_str()))
                    && line.matches("=\"").count() == labels.len()
            })
            .unwrap_or_else(|| panic!("{name} {labels:?} not in the exposition"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let le = label(ts, "le").unwrap_or("");
        assert_eq!(value, ts.samples[0].value, "{name} le={le}");
    }
    // And the other way round: no per-site series of the exposition is left out.
    let site_lines = text.lines().filter(|l| l.contains("site=\"shop\"")).count();
    assert_eq!(site_lines, req.timeseries.len());
    req.timeseries
        .iter()
        .map(|ts| label(ts, "__name__").unwrap().to_string())
        .collect()
}

#[test]
fn body_is_snappy_block_protobuf() {
    let s = samples(ONE_SITE, None, &result(ResultClass::Success, 10));
    let req = write_request(&[Arc::new(s)], &[]);
    let body = proto::encode(&req).unwrap();
    assert_eq!(proto::decode(&body).unwrap(), req);
    // The framed snappy format starts with a stream identifier chunk; the block format the
    // protocol wants does not.
    assert_ne!(&body[..4], b"\xff\x06\x00\x00");
}

#[test]
fn retryable_errors_are_5xx_429_and_transport() {
    let status = |status| SendError::Status {
        status,
        body: String::new(),
        retry_after: None,
    };
    assert!(status(500).retryable());
    assert!(status(503).retryable());
    assert!(status(429).retryable());
    assert!(!status(400).retryable());
    assert!(!status(401).retryable());
    assert!(!status(404).retryable());
    assert!(SendError::Transport("refused".into()).retryable());
}

#[test]
fn retry_after_takes_seconds_or_a_date() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    let later = SystemTime::now() + Duration::from_secs(120);
    let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
    assert!(
        d > Duration::from_secs(100) && d <= Duration::from_secs(120),
        "{d:?}"
    );
    assert_eq!(parse_retry_after("soon"), None);
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_maximum() {
    let c = config("remote_write:\n  - url: http://127.0.0.1:9/w\n    queue: { min_backoff: 100ms, max_backoff: 1s }\n");
    let rw = &c.remote_write[0];
    let mut current = None;
    let expected = [100, 200, 400, 800, 1000, 1000];
    for full in expected {
        let wait = next_backoff(&mut current, rw);
        let full = Duration::from_millis(full);
        assert!(
            wait >= full / 2 && wait <= full,
            "{wait:?} not in [{:?}, {full:?}]",
            full / 2
        );
    }
}

fn probe_samples(n: usize) -> Arc<ProbeSamples> {
    let mut s = samples(ONE_SITE, None, &result(ResultClass::Success, 10));
    s.samples.truncate(n);
    Arc::new(s)
}

#[tokio::test(start_paused = true)]
async fn queue_batches_by_count_then_by_deadline() {
    let q = Queue::new(Arc::default(), 100, 10);
    for _ in 0..3 {
        q.push(&probe_samples(4));
    }
    // 12 samples queued; a batch holds whole probes up to 10 samples: two probes.
    let (batch, n) = q.next_batch(Duration::from_secs(5)).await.unwrap();
    assert_eq!((batch.len(), n), (2, 8));
    // The rest is a partial batch: it goes when the deadline passes.
    let started = Instant::now();
    let (batch, n) = q.next_batch(Duration::from_secs(5)).await.unwrap();
    assert_eq!((batch.len(), n), (1, 4));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(q.pending(), 12, "in flight until done");
    q.done(8);
    q.done(4);
    assert_eq!(q.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn full_queue_drops_and_counts_new_samples() {
    let stats = Arc::new(DestinationStats::default());
    let q = Queue::new(stats.clone(), 10, 10);
    q.push(&probe_samples(4));
    q.push(&probe_samples(4));
    q.push(&probe_samples(4));
    assert_eq!(q.pending(), 8);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 4);
    // A closed queue hands out what it holds at once, then ends.
    q.close();
    let (_, n) = q.next_batch(Duration::from_secs(60)).await.unwrap();
    assert_eq!(n, 8);
    q.done(n);
    assert!(q.next_batch(Duration::from_secs(60)).await.is_none());
}

#[tokio::test]
async fn close_reports_what_could_not_be_sent() {
    // Port 9 on loopback: nothing listens, every attempt is refused and retried.
    let c = config("remote_write:\n  - url: http://127.0.0.1:9/api/v1/write\n    name: nowhere\n    queue: { batch_send_deadline: 10ms, min_backoff: 10ms, max_backoff: 20ms }\n");
    let m = Metrics::new(None);
    let w = RemoteWriter::new(m.remote_write.clone());
    w.apply(&c.remote_write);
    assert!(w.is_active());
    w.push((*probe_samples(5)).clone());
    let reports = w.close(Duration::from_millis(300)).await;
    assert_eq!(
        reports,
        [FlushReport {
            name: "nowhere".into(),
            sent: 0,
            failed: 0,
            dropped: 5,
        }]
    );
    assert!(!reports[0].complete());
    assert!(!w.is_active());
}

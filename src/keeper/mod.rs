//! `sitewatch keeper`: follows an exporter's `/api/v1/results` and mirrors sites and probe
//! results into SQL (`sites`, `stats`).
//!
//! Three tasks share one bounded queue:
//! - the follower long-polls the exporter after the last sequence number it has, notices
//!   results that fell off the exporter's buffer (a gap) and exporter restarts (a new
//!   instance id), and counts both as lost;
//! - the writer takes batches from the queue and writes each in one transaction with the
//!   sequence number it ends at, retrying with backoff while the database is away;
//! - the site syncer mirrors `/api/v1/sites` into `sites`, marking removed sites.
//!
//! **The queue is bounded** and the follower only fetches what fits, so a slow or absent
//! database leaves results waiting in the exporter's buffer; what falls off that buffer is
//! counted lost (`sitewatch_keeper_rows_lost_total`). Rows of a failed batch that no longer fit
//! the queue are dropped and counted (`sitewatch_keeper_rows_dropped_total`), never silently.

pub mod store;

use base64::Engine as _;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use store::{Store, StoreError};

/// One probe result as a `stats` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Exporter sequence number.
    pub seq: u64,
    /// Exporter instance id.
    pub instance: String,
    /// Tenant ('' for none): with `site`, the site key.
    pub tenant: String,
    /// Site id.
    pub site: String,
    /// Probe start, unix seconds.
    pub started_at: f64,
    /// Probe duration in seconds.
    pub duration: f64,
    /// resolve, connect, tls, processing, transfer, in seconds.
    pub phases: [f64; 5],
    /// Final status code (0 if none).
    pub status_code: u16,
    /// Regex result: `None` when the site has no regex check or the probe never got a body.
    pub regex_ok: Option<bool>,
    /// Result class.
    pub result: String,
    /// Error text.
    pub error: Option<String>,
    /// The exporter's location.
    pub location: Option<String>,
}

/// A site as mirrored into `sites`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteRow {
    /// Tenant ('' for none).
    pub tenant: String,
    /// Site id.
    pub site: String,
    /// URL.
    pub url: String,
    /// Body regex, if any.
    pub regex: Option<String>,
    /// Labels as a JSON object.
    pub labels: String,
}

#[derive(Deserialize)]
struct RecordIn {
    seq: u64,
    instance: String,
    site: String,
    tenant: Option<String>,
    location: Option<String>,
    regex: Option<String>,
    started_at: f64,
    duration_seconds: f64,
    result: String,
    error: Option<String>,
    phases: PhasesIn,
    status_code: u16,
    failed_due_to_regex: bool,
}

#[derive(Deserialize)]
struct PhasesIn {
    resolve: f64,
    connect: f64,
    tls: f64,
    processing: f64,
    transfer: f64,
}

impl From<RecordIn> for Row {
    fn from(r: RecordIn) -> Self {
        // A regex verdict exists only when the probe got far enough to check the body.
        let checked = r.regex.is_some() && matches!(r.result.as_str(), "success" | "regex");
        Row {
            seq: r.seq,
            instance: r.instance,
            tenant: r.tenant.unwrap_or_default(),
            site: r.site,
            started_at: r.started_at,
            duration: r.duration_seconds,
            phases: [
                r.phases.resolve,
                r.phases.connect,
                r.phases.tls,
                r.phases.processing,
                r.phases.transfer,
            ],
            status_code: r.status_code,
            regex_ok: checked.then_some(!r.failed_due_to_regex),
            result: r.result,
            error: r.error,
            location: r.location,
        }
    }
}

#[derive(Deserialize)]
struct SitesIn {
    sites: Vec<SiteIn>,
    /// Absent from exporters older than sharding: one shard.
    #[serde(default)]
    shard: Option<ShardIn>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
struct ShardIn {
    index: u32,
    count: u32,
}

#[derive(Deserialize)]
struct SiteIn {
    id: String,
    tenant: Option<String>,
    url: String,
    regex: Option<String>,
    labels: serde_json::Map<String, serde_json::Value>,
}

/// Why the keeper stopped.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// The database could not be reached or prepared at start.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The exporter's CA file or password file could not be used.
    #[error("source access: {0}")]
    Source(String),
}

/// How the keeper runs.
#[derive(Debug, Clone)]
pub struct KeeperOptions {
    /// The exporter's base URL.
    pub source: String,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// Most rows written in one transaction.
    pub batch_size: usize,
    /// Most rows held while the database is slow or away.
    pub max_queue: usize,
    /// How often `sites` is synchronized.
    pub sites_interval: Duration,
    /// How to reach an exporter behind `--web.config.file`.
    pub source_access: SourceAccess,
}

/// TLS trust and basic-auth credentials for an exporter behind `--web.config.file`.
#[derive(Debug, Clone, Default)]
pub struct SourceAccess {
    /// PEM CA certificates to trust for the exporter's TLS (besides the system's).
    pub ca_file: Option<std::path::PathBuf>,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// File holding the basic-auth password (trailing newline ignored).
    pub password_file: Option<std::path::PathBuf>,
}

impl SourceAccess {
    /// The HTTP client the keeper talks to its exporter with.
    fn client(&self) -> Result<reqwest::Client, KeeperError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| KeeperError::Source(format!("{}: {e}", path.display())))
        };
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(70));
        if let Some(path) = &self.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(path)?)
                .map_err(|e| KeeperError::Source(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(KeeperError::Source(format!(
                    "{}: no PEM certificate in it",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&self.username, &self.password_file) {
            (Some(user), password_file) => {
                let password = match password_file {
                    Some(path) => String::from_utf8_lossy(&read(path)?)
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                    None => String::new(),
                };
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                let mut value =
                    http::HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                        KeeperError::Source("the user name is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                let mut headers = http::HeaderMap::new();
                headers.insert(http::header::AUTHORIZATION, value);
                builder = builder.default_headers(headers);
            }
            (None, Some(_)) => {
                return Err(KeeperError::Source(
                    "--source.password-file needs --source.username".into(),
                ))
            }
            (None, None) => {}
        }
        builder
            .build()
            .map_err(|e| KeeperError::Source(format!("cannot build the HTTP client: {e}")))
    }
}

/// The keeper's own metrics.
#[derive(Debug, Clone, Default)]
pub struct KeeperMetrics {
    written: Counter,
    dropped: Counter,
    lost: Counter,
    restarts: Counter,
    write_errors: Counter,
    queue: Gauge,
    lag: Gauge<f64, AtomicU64>,
    batch: Option<Histogram>,
}

impl KeeperMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = KeeperMetrics {
            batch: Some(Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])),
            ..Default::default()
        };
        registry.register(
            "sitewatch_keeper_rows_written",
            "Result rows committed to the database",
            m.written.clone(),
        );
        registry.register(
            "sitewatch_keeper_rows_dropped",
            "Result rows dropped because the queue was full while the database was slow or away",
            m.dropped.clone(),
        );
        registry.register(
            "sitewatch_keeper_rows_lost",
            "Results the exporter no longer held when the keeper asked for them",
            m.lost.clone(),
        );
        registry.register(
            "sitewatch_keeper_exporter_restarts",
            "Times the exporter's instance id changed",
            m.restarts.clone(),
        );
        registry.register(
            "sitewatch_keeper_write_errors",
            "Failed database writes (each is retried)",
            m.write_errors.clone(),
        );
        registry.register(
            "sitewatch_keeper_queue_rows",
            "Result rows waiting to be written",
            m.queue.clone(),
        );
        registry.register(
            "sitewatch_keeper_lag_seconds",
            "Age of the newest committed result when it was committed",
            m.lag.clone(),
        );
        registry.register(
            "sitewatch_keeper_batch_duration_seconds",
            "Time to write one batch",
            m.batch.clone().expect("set above"),
        );
        m
    }
}

/// Rows waiting for the database, bounded.
struct Queue {
    rows: Mutex<VecDeque<Row>>,
    cap: usize,
    /// Rows taken by the writer and not yet committed: they may come back on failure.
    writing: AtomicUsize,
    /// Rows arrived: wakes the writer.
    ready: Notify,
    /// Rows left: wakes the follower.
    space: Notify,
}

impl Queue {
    fn push(&self, rows: Vec<Row>, metrics: &KeeperMetrics) {
        let mut q = self.rows.lock().expect("queue lock");
        let mut dropped = 0u64;
        for r in rows {
            if q.len() == self.cap {
                q.pop_front();
                dropped += 1;
            }
            q.push_back(r);
        }
        metrics.queue.set(q.len() as i64);
        drop(q);
        if dropped > 0 {
            metrics.dropped.inc_by(dropped);
            warn!(rows = dropped, "queue full: dropped the oldest result rows");
        }
        self.ready.notify_one();
    }
}

fn unix_now() -> f64 {
    crate::probe::unix_seconds(SystemTime::now())
}

/// Runs the keeper until `shutdown`, serving its `/metrics` on `listener`.
pub async fn run(
    options: KeeperOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KeeperError> {
    let client = options.source_access.client()?;
    let store = Store::connect(&options.database_url).await?;
    let version = store.migrate().await?;
    let source = options.source.trim_end_matches('/').to_string();
    let resume = store.resume_point(&source).await?;
    info!(source = %source, schema_version = version, resume = ?resume, "keeper started");

    let mut registry = Registry::default();
    let metrics = KeeperMetrics::register(&mut registry);
    let registry = Arc::new(registry);
    let queue = Arc::new(Queue {
        rows: Mutex::new(VecDeque::new()),
        cap: options.max_queue.max(1),
        writing: AtomicUsize::new(0),
        ready: Notify::new(),
        space: Notify::new(),
    });
    let stop = CancellationToken::new();
    let follower = tokio::spawn(follow(
        client.clone(),
        source.clone(),
        resume,
        queue.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let writer = tokio::spawn(write_loop(
        store.clone(),
        source.clone(),
        options.batch_size.max(1),
        queue.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let syncer = tokio::spawn(sync_sites(
        client,
        source,
        store,
        options.sites_interval,
        stop.clone(),
    ));
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "listening");
    }
    serve_metrics(listener, registry, shutdown).await;
    stop.cancel();
    let _ = tokio::join!(follower, syncer);
    // The writer flushes what is queued before it returns (bounded by its own retries).
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    Ok(())
}

async fn follow(
    client: reqwest::Client,
    source: String,
    resume: Option<(String, u64)>,
    queue: Arc<Queue>,
    metrics: KeeperMetrics,
    stop: CancellationToken,
) {
    let (mut instance, mut after) = match resume {
        Some((i, s)) => (Some(i), s),
        None => (None, 0),
    };
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        // Backpressure: fetch only what the queue has room for. While the database is slow or
        // away the results wait in the exporter's buffer; what falls off there is counted lost.
        let room = loop {
            let held = queue.rows.lock().expect("queue lock").len()
                + queue.writing.load(Ordering::Acquire);
            let room = queue.cap.saturating_sub(held);
            if room > 0 {
                break room;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = queue.space.notified() => {}
            }
        };
        let limit = room.min(10_000);
        let url = format!("{source}/api/v1/results?after={after}&limit={limit}&wait=10s");
        let response = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.get(&url).send() => r,
        };
        let response = match response.and_then(|r| r.error_for_status()) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the exporter's results; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let this = header("x-sitewatch-instance").unwrap_or_default();
        let first: u64 = header("x-sitewatch-first-seq")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if instance.as_deref() != Some(this.as_str()) {
            if instance.is_some() {
                metrics.restarts.inc();
                warn!(old = ?instance, new = %this, "exporter restarted: following its new results from the start");
            }
            instance = Some(this);
            after = 0;
            // Ask again: this page was computed for the old instance's sequence numbers.
            continue;
        }
        let Ok(body) = response.text().await else {
            continue;
        };
        let rows: Vec<Row> = body
            .lines()
            .filter_map(|l| serde_json::from_str::<RecordIn>(l).ok())
            .map(Row::from)
            .collect();
        // Results between what we had and the oldest the exporter still holds are gone.
        if first > after + 1 {
            let lost = first - after - 1;
            metrics.lost.inc_by(lost);
            warn!(
                lost,
                "results fell off the exporter's buffer before the keeper read them"
            );
        }
        if let Some(last) = rows.last() {
            after = last.seq;
            queue.push(rows, &metrics);
        }
    }
}

async fn write_loop(
    store: Store,
    source: String,
    batch_size: usize,
    queue: Arc<Queue>,
    metrics: KeeperMetrics,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let batch: Vec<Row> = {
            let mut q = queue.rows.lock().expect("queue lock");
            let n = q.len().min(batch_size);
            queue.writing.store(n, Ordering::Release);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            if stop.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = queue.ready.notified() => {}
                _ = stop.cancelled() => {}
            }
            continue;
        }
        let last = batch.last().expect("non-empty");
        let started = Instant::now();
        match store.write(&source, &batch, &last.instance, last.seq).await {
            Ok(()) => {
                queue.writing.store(0, Ordering::Release);
                queue.space.notify_one();
                backoff = Duration::from_millis(100);
                metrics.written.inc_by(batch.len() as u64);
                if let Some(h) = &metrics.batch {
                    h.observe(started.elapsed().as_secs_f64());
                }
                let newest = batch
                    .iter()
                    .map(|r| r.started_at + r.duration)
                    .fold(0.0, f64::max);
                metrics.lag.set((unix_now() - newest).max(0.0));
                let q = queue.rows.lock().expect("queue lock");
                metrics.queue.set(q.len() as i64);
            }
            Err(e) => {
                metrics.write_errors.inc();
                warn!(error = %e, rows = batch.len(), "database write failed; keeping the rows and retrying");
                // Put the batch back in front; rows beyond the cap are dropped and counted.
                {
                    let mut q = queue.rows.lock().expect("queue lock");
                    for r in batch.into_iter().rev() {
                        q.push_front(r);
                    }
                    queue.writing.store(0, Ordering::Release);
                    let over = q.len().saturating_sub(queue.cap);
                    for _ in 0..over {
                        q.pop_front();
                    }
                    if over > 0 {
                        metrics.dropped.inc_by(over as u64);
                    }
                    metrics.queue.set(q.len() as i64);
                }
                if stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn sync_sites(
    client: reqwest::Client,
    source: String,
    store: Store,
    every: Duration,
    stop: CancellationToken,
) {
    let mut last: Option<Vec<SiteRow>> = None;
    let mut synced_at = Instant::now();
    loop {
        let fetched = async {
            let r = client
                .get(format!("{source}/api/v1/sites"))
                .send()
                .await?
                .error_for_status()?;
            r.bytes().await
        }
        .await;
        match fetched.map(|b| serde_json::from_slice::<SitesIn>(&b)) {
            Ok(Ok(list)) => {
                let shard = list
                    .shard
                    .and_then(|s| crate::shard::Shard::new(s.index, s.count).ok())
                    .unwrap_or_default();
                let rows: Vec<SiteRow> = list
                    .sites
                    .into_iter()
                    .map(|s| SiteRow {
                        tenant: s.tenant.unwrap_or_default(),
                        site: s.id,
                        url: s.url,
                        regex: s.regex,
                        labels: serde_json::Value::Object(s.labels).to_string(),
                    })
                    .collect();
                // Unchanged lists are written again only now and then, to move last_seen.
                let stale = synced_at.elapsed() > Duration::from_secs(600);
                if last.as_ref() != Some(&rows) || stale {
                    match store.sync_sites(&rows, shard).await {
                        Ok(()) => {
                            last = Some(rows);
                            synced_at = Instant::now();
                        }
                        Err(e) => warn!(error = %e, "cannot write sites; retrying"),
                    }
                }
            }
            Ok(Err(e)) => warn!(error = %e, "exporter sent an unreadable site list"),
            Err(e) => warn!(error = %e, "cannot read the exporter's sites; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move {
                    let (status, ct, body) = match req.uri().path() {
                        "/metrics" => {
                            let mut out = String::new();
                            let _ = prometheus_client::encoding::prometheus_text::encode(
                                &mut out, &registry,
                            );
                            (200, crate::metrics::PROMETHEUS_CONTENT_TYPE, out)
                        }
                        "/-/healthy" | "/-/ready" => (200, "text/plain", "OK\n".to_string()),
                        _ => (404, "text/plain", "Not found.\n".to_string()),
                    };
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(status)
                            .header(http::header::CONTENT_TYPE, ct)
                            .body(Full::new(bytes::Bytes::from(body)))
                            .expect("static parts"),
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod source_access_tests {
    use super::*;

    #[test]
    fn bad_source_access_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let err = |a: SourceAccess| a.client().unwrap_err().to_string();
        let e = err(SourceAccess {
            password_file: Some(dir.path().join("pw")),
            ..SourceAccess::default()
        });
        assert!(
            e.contains("--source.password-file needs --source.username"),
            "{e}"
        );
        let e = err(SourceAccess {
            ca_file: Some(dir.path().join("missing.pem")),
            ..SourceAccess::default()
        });
        assert!(e.contains("missing.pem"), "{e}");
        let e = err(SourceAccess {
            ca_file: Some(not_pem),
            ..SourceAccess::default()
        });
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = err(SourceAccess {
            username: Some("keeper".into()),
            password_file: Some(dir.path().join("missing-pw")),
            ..SourceAccess::default()
        });
        assert!(e.contains("missing-pw"), "{e}");
        assert!(SourceAccess::default().client().is_ok());
    }
}

//! Remote-write: pushes every probe's samples to Prometheus-compatible receivers
//! (Prometheus, Mimir, VictoriaMetrics, Thanos Receive), one bounded queue and one sender
//! per destination, for places where Prometheus cannot scrape.
//!
//! A probe's samples ([`ProbeSamples`]) are queued once per destination, batched by count
//! and deadline, encoded as a remote-write 1.0 `WriteRequest` (protobuf, snappy) and sent.
//! 5xx, 429 and transport errors are retried with exponential backoff and jitter, honouring
//! `Retry-After`; any other 4xx drops the batch, since sending it again cannot succeed.
//! While a destination retries, its queue fills; samples beyond its capacity are dropped and
//! counted, never silently lost.

pub mod proto;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Auth, RemoteWrite};
use crate::metrics::ProbeSamples;
use proto::{Label, Sample, TimeSeries, WriteRequest};

/// The longest `Retry-After` honoured: a receiver asking for more is retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why one request to a receiver failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer: connection refused or reset, timeout, TLS failure.
    #[error("request failed: {0}")]
    Transport(String),
    /// The receiver answered with an error status.
    #[error("receiver answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the response body, for the log.
        body: String,
        /// The receiver's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The request could not be built.
    #[error("cannot build the request: {0}")]
    Build(String),
}

impl SendError {
    /// Whether sending the same batch again may succeed: 5xx, 429 and transport errors.
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Transport(_) => true,
            SendError::Status { status, .. } => *status == 429 || *status >= 500,
            SendError::Build(_) => false,
        }
    }
}

/// Counters of one destination, read by `/metrics` and by `once`.
#[derive(Debug, Default)]
pub struct DestinationStats {
    /// Samples the receiver accepted.
    pub sent: AtomicU64,
    /// Samples the receiver rejected for good (a 4xx other than 429).
    pub failed: AtomicU64,
    /// Samples dropped: the queue was full, or the exporter stopped before they were sent.
    pub dropped: AtomicU64,
    /// Samples sent again after a retryable failure (counted per attempt).
    pub retried: AtomicU64,
    /// Samples waiting in the queue or in the request being sent.
    pub pending: AtomicUsize,
    /// The queue's capacity in samples.
    pub capacity: AtomicUsize,
    /// Milliseconds since the Unix epoch of the last accepted request; 0 before the first.
    pub last_success_ms: AtomicU64,
}

/// The remote-write metrics of every destination, encoded at scrape time.
#[derive(Debug, Default)]
pub struct StatsTable {
    destinations: RwLock<BTreeMap<String, Arc<DestinationStats>>>,
}

impl StatsTable {
    fn insert(&self, name: &str) -> Arc<DestinationStats> {
        self.destinations
            .write()
            .expect("stats lock")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn remove(&self, name: &str) {
        self.destinations.write().expect("stats lock").remove(name);
    }
}

impl prometheus_client::collector::Collector for StatsTable {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dests: Vec<(String, Arc<DestinationStats>)> = self
            .destinations
            .read()
            .expect("stats lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if dests.is_empty() {
            return Ok(());
        }
        type Read = fn(&DestinationStats) -> u64;
        let counters: [(&str, &str, Read); 4] = [
            (
                "sitewatch_remote_write_samples_sent",
                "Samples the remote-write receiver accepted.",
                |s| s.sent.load(Ordering::Relaxed),
            ),
            (
                "sitewatch_remote_write_samples_failed",
                "Samples the remote-write receiver rejected with a non-retryable error.",
                |s| s.failed.load(Ordering::Relaxed),
            ),
            (
                "sitewatch_remote_write_samples_dropped",
                "Samples dropped because the queue was full or the exporter stopped first.",
                |s| s.dropped.load(Ordering::Relaxed),
            ),
            (
                "sitewatch_remote_write_samples_retried",
                "Samples sent again after a retryable failure.",
                |s| s.retried.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (dest, s) in &dests {
                family
                    .encode_family(&[("destination", dest.as_str())])?
                    .encode_counter::<NoLabelSet, u64, f64>(&read(s), None)?;
            }
        }
        let gauges: [(&str, &str, Read); 2] = [
            (
                "sitewatch_remote_write_queue_samples",
                "Samples waiting to be sent, the request in flight included.",
                |s| s.pending.load(Ordering::Relaxed) as u64,
            ),
            (
                "sitewatch_remote_write_queue_capacity_samples",
                "Samples the queue holds before it drops new ones.",
                |s| s.capacity.load(Ordering::Relaxed) as u64,
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (dest, s) in &dests {
                family
                    .encode_family(&[("destination", dest.as_str())])?
                    .encode_gauge(&(read(s) as i64))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sitewatch_remote_write_last_success_timestamp_seconds",
            "Unix time in seconds of the last request the receiver accepted.",
            None,
            MetricType::Gauge,
        )?;
        for (dest, s) in &dests {
            let ms = s.last_success_ms.load(Ordering::Relaxed);
            if ms > 0 {
                family
                    .encode_family(&[("destination", dest.as_str())])?
                    .encode_gauge(&(ms as f64 / 1000.0))?;
            }
        }
        Ok(())
    }
}

/// The queue of one destination: probe samples in arrival order, bounded in samples.
#[derive(Debug)]
struct Queue {
    inner: Mutex<QueueInner>,
    /// Wakes the sender: first samples after empty, a full batch, or closing.
    wake: Notify,
    /// Wakes flushers when nothing is pending any more.
    idle: Notify,
    stats: Arc<DestinationStats>,
}

#[derive(Debug, Default)]
struct QueueInner {
    items: VecDeque<Arc<ProbeSamples>>,
    queued: usize,
    in_flight: usize,
    /// Set by `close`: send what is queued without waiting for full batches, then stop.
    closing: bool,
    /// Samples per request, so pushes know when a batch is full.
    batch: usize,
}

impl Queue {
    fn new(stats: Arc<DestinationStats>, capacity: usize, batch: usize) -> Self {
        stats.capacity.store(capacity, Ordering::Relaxed);
        Self {
            inner: Mutex::new(QueueInner {
                batch,
                ..QueueInner::default()
            }),
            wake: Notify::new(),
            idle: Notify::new(),
            stats,
        }
    }

    fn push(&self, item: &Arc<ProbeSamples>) {
        let n = item.samples.len();
        let capacity = self.stats.capacity.load(Ordering::Relaxed);
        let mut q = self.inner.lock().expect("queue lock");
        if q.closing || q.queued + n > capacity {
            self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        let before = q.queued;
        q.items.push_back(item.clone());
        q.queued += n;
        self.stats
            .pending
            .store(q.queued + q.in_flight, Ordering::Relaxed);
        // Waking the sender for every probe would cost a wakeup per probe; it only needs to
        // know when a batch starts and when one is full.
        if before == 0 || (before < q.batch && q.queued >= q.batch) {
            self.wake.notify_one();
        }
    }

    /// The next batch: waits for a first sample, then until the batch is full, the deadline
    /// passes or the queue closes. `None` when closed and empty.
    async fn next_batch(&self, deadline: Duration) -> Option<(Vec<Arc<ProbeSamples>>, usize)> {
        loop {
            {
                let q = self.inner.lock().expect("queue lock");
                if q.queued > 0 {
                    break;
                }
                if q.closing {
                    return None;
                }
            }
            self.wake.notified().await;
        }
        let until = Instant::now() + deadline;
        loop {
            {
                let q = self.inner.lock().expect("queue lock");
                if q.queued >= q.batch || q.closing {
                    break;
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let mut q = self.inner.lock().expect("queue lock");
        let mut batch = Vec::new();
        let mut n = 0;
        while let Some(front) = q.items.front() {
            let k = front.samples.len();
            if n > 0 && n + k > q.batch {
                break;
            }
            n += k;
            batch.extend(q.items.pop_front());
        }
        q.queued -= n;
        q.in_flight += n;
        Some((batch, n))
    }

    /// Marks a batch as done (sent, rejected or dropped).
    fn done(&self, n: usize) {
        let mut q = self.inner.lock().expect("queue lock");
        q.in_flight -= n;
        let pending = q.queued + q.in_flight;
        self.stats.pending.store(pending, Ordering::Relaxed);
        if pending == 0 {
            self.idle.notify_waiters();
        }
    }

    fn pending(&self) -> usize {
        let q = self.inner.lock().expect("queue lock");
        q.queued + q.in_flight
    }

    /// Waits until nothing is pending, up to `until`; whether that happened.
    async fn wait_idle(&self, until: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.pending() == 0;
            }
        }
    }

    fn close(&self) {
        self.inner.lock().expect("queue lock").closing = true;
        self.wake.notify_one();
    }

    /// Empties the queue after a hard stop; returns how many samples were dropped.
    fn abandon(&self) -> usize {
        let mut q = self.inner.lock().expect("queue lock");
        let n = q.queued + q.in_flight;
        q.items.clear();
        q.queued = 0;
        q.in_flight = 0;
        self.stats.pending.store(0, Ordering::Relaxed);
        self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
        self.idle.notify_waiters();
        n
    }
}

/// One running destination.
struct Destination {
    config: watch::Sender<Arc<RemoteWrite>>,
    queue: Arc<Queue>,
    /// Stops the sender at once, even mid-retry.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What a flush achieved for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// The destination's name.
    pub name: String,
    /// Samples accepted since the writer started.
    pub sent: u64,
    /// Samples rejected for good.
    pub failed: u64,
    /// Samples dropped, those still pending at the deadline included.
    pub dropped: u64,
}

impl FlushReport {
    /// Whether every sample reached the receiver.
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.dropped == 0
    }
}

/// Every remote-write destination of the running configuration.
pub struct RemoteWriter {
    destinations: Mutex<BTreeMap<String, Destination>>,
    stats: Arc<StatsTable>,
    active: AtomicBool,
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .destinations
            .lock()
            .expect("destinations lock")
            .keys()
            .cloned()
            .collect();
        f.debug_struct("RemoteWriter")
            .field("destinations", &names)
            .finish()
    }
}

impl RemoteWriter {
    /// A writer with no destinations; its metrics go to `stats`.
    pub fn new(stats: Arc<StatsTable>) -> Self {
        Self {
            destinations: Mutex::default(),
            stats,
            active: AtomicBool::new(false),
        }
    }

    /// Whether any destination is configured: probes only build samples when one is.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Applies the destinations of a (re)loaded configuration. A destination whose name
    /// stays keeps its queue and takes the new settings with its next request; a removed
    /// one stops, dropping what it still held; a new one starts. Must run inside a Tokio
    /// runtime.
    pub fn apply(&self, configs: &[RemoteWrite]) {
        let mut dests = self.destinations.lock().expect("destinations lock");
        let removed: Vec<String> = dests
            .keys()
            .filter(|name| !configs.iter().any(|c| &c.name == *name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(d) = dests.remove(&name) {
                d.stop.cancel();
                let dropped = d.queue.abandon();
                self.stats.remove(&name);
                info!(destination = %name, dropped, "remote-write destination removed");
            }
        }
        for cfg in configs {
            match dests.get(&cfg.name) {
                Some(d) => {
                    if **d.config.borrow() != *cfg {
                        d.queue
                            .stats
                            .capacity
                            .store(cfg.queue.capacity, Ordering::Relaxed);
                        d.queue.inner.lock().expect("queue lock").batch =
                            cfg.queue.max_samples_per_send;
                        d.config.send_replace(Arc::new(cfg.clone()));
                        info!(destination = %cfg.name, "remote-write destination updated");
                    }
                }
                None => {
                    let stats = self.stats.insert(&cfg.name);
                    let queue = Arc::new(Queue::new(
                        stats,
                        cfg.queue.capacity,
                        cfg.queue.max_samples_per_send,
                    ));
                    let (tx, rx) = watch::channel(Arc::new(cfg.clone()));
                    let stop = CancellationToken::new();
                    let task = tokio::spawn(sender(rx, queue.clone(), stop.clone()));
                    info!(destination = %cfg.name, url = %cfg.url, "remote-write destination started");
                    dests.insert(
                        cfg.name.clone(),
                        Destination {
                            config: tx,
                            queue,
                            stop,
                            task,
                        },
                    );
                }
            }
        }
        self.active.store(!dests.is_empty(), Ordering::Relaxed);
    }

    /// Queues a probe's samples for every destination.
    pub fn push(&self, samples: ProbeSamples) {
        let item = Arc::new(samples);
        for d in self
            .destinations
            .lock()
            .expect("destinations lock")
            .values()
        {
            d.queue.push(&item);
        }
    }

    /// Sends everything queued, without waiting for full batches, and stops every
    /// destination; what is still pending after `grace` is dropped. Returns a report per
    /// destination.
    pub async fn close(&self, grace: Duration) -> Vec<FlushReport> {
        let until = Instant::now() + grace;
        let dests: Vec<(String, Destination)> =
            std::mem::take(&mut *self.destinations.lock().expect("destinations lock"))
                .into_iter()
                .collect();
        self.active.store(false, Ordering::Relaxed);
        for (_, d) in &dests {
            d.queue.close();
        }
        let mut reports = Vec::new();
        for (name, d) in dests {
            let idle = d.queue.wait_idle(until).await;
            d.stop.cancel();
            let _ = d.task.await;
            let dropped_now = d.queue.abandon();
            if !idle {
                warn!(destination = %name, dropped = dropped_now, "remote-write samples still pending at the end of the grace period were dropped");
            }
            let s = &d.queue.stats;
            reports.push(FlushReport {
                name,
                sent: s.sent.load(Ordering::Relaxed),
                failed: s.failed.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
            });
        }
        reports
    }
}

/// The sender of one destination: batches, encodes, sends, retries.
async fn sender(
    mut config: watch::Receiver<Arc<RemoteWrite>>,
    queue: Arc<Queue>,
    stop: CancellationToken,
) {
    let mut client: Option<(Arc<RemoteWrite>, reqwest::Client)> = None;
    loop {
        let deadline = config.borrow_and_update().queue.batch_send_deadline;
        let next = tokio::select! {
            b = queue.next_batch(deadline) => b,
            _ = stop.cancelled() => return,
        };
        let Some((batch, n)) = next else {
            return;
        };
        let mut backoff: Option<Duration> = None;
        let mut body: Option<(Arc<RemoteWrite>, bytes::Bytes)> = None;
        loop {
            let cfg = config.borrow_and_update().clone();
            // A reload may have changed the URL, credentials or external labels mid-retry.
            if !client.as_ref().is_some_and(|(c, _)| Arc::ptr_eq(c, &cfg)) {
                match build_client(&cfg) {
                    Ok(c) => client = Some((cfg.clone(), c)),
                    Err(e) => {
                        error!(destination = %cfg.name, error = %e, "cannot build the remote-write client; dropping the batch");
                        queue.stats.failed.fetch_add(n as u64, Ordering::Relaxed);
                        break;
                    }
                }
            }
            if !body.as_ref().is_some_and(|(c, _)| Arc::ptr_eq(c, &cfg)) {
                match proto::encode(&write_request(&batch, &cfg.external_labels)) {
                    Ok(b) => body = Some((cfg.clone(), b.into())),
                    Err(e) => {
                        error!(destination = %cfg.name, error = %e, "cannot encode a remote-write request; dropping the batch");
                        queue.stats.failed.fetch_add(n as u64, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let (Some((_, http)), Some((_, payload))) = (&client, &body) else {
                unreachable!("client and body were just built");
            };
            let result = tokio::select! {
                r = send(http, &cfg, payload.clone()) => r,
                _ = stop.cancelled() => return,
            };
            match result {
                Ok(()) => {
                    queue.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
                    queue
                        .stats
                        .last_success_ms
                        .store(now_ms(), Ordering::Relaxed);
                    debug!(destination = %cfg.name, samples = n, "remote-write batch sent");
                    break;
                }
                Err(e) if e.retryable() => {
                    let wait = next_backoff(&mut backoff, &cfg);
                    let wait = match &e {
                        SendError::Status {
                            retry_after: Some(after),
                            ..
                        } => (*after).min(MAX_RETRY_AFTER),
                        _ => wait,
                    };
                    warn!(destination = %cfg.name, error = %e, retry_in = ?wait, samples = n, "remote-write request failed; retrying");
                    queue.stats.retried.fetch_add(n as u64, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    error!(destination = %cfg.name, error = %e, samples = n, "remote-write receiver rejected a batch; not retrying");
                    queue.stats.failed.fetch_add(n as u64, Ordering::Relaxed);
                    break;
                }
            }
        }
        queue.done(n);
    }
}

/// The next wait between retries: doubling from `min_backoff` up to `max_backoff`, each with
/// jitter in [half, full] so that many exporters do not retry in step.
fn next_backoff(current: &mut Option<Duration>, cfg: &RemoteWrite) -> Duration {
    let q = &cfg.queue;
    let next = match *current {
        None => q.min_backoff,
        Some(d) => (d * 2).min(q.max_backoff),
    };
    *current = Some(next);
    let half = next / 2;
    half + half.mul_f64(fastrand::f64())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The request for a batch: one series per sample, labels sorted by name, external labels
/// added where a series does not carry the label already (as Prometheus does).
pub fn write_request(batch: &[Arc<ProbeSamples>], external: &[(String, String)]) -> WriteRequest {
    let mut timeseries = Vec::with_capacity(batch.iter().map(|b| b.samples.len()).sum());
    for probe in batch {
        let site = probe.labels();
        for sample in &probe.samples {
            let mut labels = Vec::with_capacity(site.len() + external.len() + 2);
            labels.push(Label {
                name: "__name__".into(),
                value: sample.name.into(),
            });
            labels.extend(site.iter().map(|(k, v)| Label {
                name: k.clone(),
                value: v.clone(),
            }));
            labels.extend(sample.extra.iter().map(|(k, v)| Label {
                name: (*k).into(),
                value: v.clone(),
            }));
            for (k, v) in external {
                if !labels.iter().any(|l| &l.name == k) {
                    labels.push(Label {
                        name: k.clone(),
                        value: v.clone(),
                    });
                }
            }
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            timeseries.push(TimeSeries {
                labels,
                samples: vec![Sample {
                    value: sample.value,
                    timestamp: probe.timestamp_ms,
                }],
            });
        }
    }
    WriteRequest { timeseries }
}

fn build_client(cfg: &RemoteWrite) -> Result<reqwest::Client, SendError> {
    // The probe TLS config offers h2; this client speaks HTTP/1.1 only.
    let mut tls = (*cfg.tls.config).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .timeout(cfg.timeout)
        .no_proxy()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| SendError::Build(e.to_string()))
}

/// One POST of an encoded `WriteRequest`.
async fn send(
    client: &reqwest::Client,
    cfg: &RemoteWrite,
    body: bytes::Bytes,
) -> Result<(), SendError> {
    let mut req = client
        .post(cfg.url.clone())
        .headers(cfg.headers.clone())
        .header(http::header::CONTENT_ENCODING, "snappy")
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body);
    req = match &cfg.auth {
        Some(Auth::Basic { username, password }) => {
            req.basic_auth(username, Some(password.expose()))
        }
        Some(Auth::Bearer(token)) => req.bearer_auth(token.expose()),
        None => req,
    };
    let resp = req
        .send()
        .await
        .map_err(|e| SendError::Transport(error_chain(&e)))?;
    let status = resp.status();
    if status.is_success() {
        // Drain the body so the connection can be reused.
        let _ = resp.bytes().await;
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let text = resp.text().await.unwrap_or_default();
    let body: String = text.trim().chars().take(256).collect();
    Err(SendError::Status {
        status: status.as_u16(),
        body,
        retry_after,
    })
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// An error with its sources, which is where reqwest says what actually went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests;

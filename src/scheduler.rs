//! The scheduler: one task per site, each on its own interval, under a global bound on probes in flight.
//!
//! A site's first probe is placed at a stable offset within its interval (a hash of the site
//! key against the wall clock), so a restart keeps each site's phase and a large config does
//! not start with a thundering herd. A site never has two probes at once: a probe that ends
//! after the next one was due makes the scheduler skip that slot and count it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::{Config, Site};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::remote_write::RemoteWriter;
use crate::results::ResultLog;

/// Default bound on probes in flight across all sites.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

struct Running {
    site: Arc<Site>,
    cancel: CancellationToken,
}

struct Shared {
    prober: RwLock<Arc<Prober>>,
    metrics: Arc<Metrics>,
    results: Arc<ResultLog>,
    remote: Arc<RemoteWriter>,
    permits: Semaphore,
    /// Stops new probes; probes in flight finish.
    stop: CancellationToken,
}

/// Runs every site of the current configuration.
pub struct Scheduler {
    shared: Arc<Shared>,
    running: Mutex<HashMap<String, Running>>,
    tracker: TaskTracker,
}

impl Scheduler {
    /// A scheduler with no sites yet.
    pub fn new(
        metrics: Arc<Metrics>,
        results: Arc<ResultLog>,
        remote: Arc<RemoteWriter>,
        prober: Prober,
        max_in_flight: usize,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                prober: RwLock::new(Arc::new(prober)),
                metrics,
                results,
                remote,
                permits: Semaphore::new(max_in_flight.max(1)),
                stop: CancellationToken::new(),
            }),
            running: Mutex::default(),
            tracker: TaskTracker::new(),
        }
    }

    /// Makes the running sites those of `config`: unchanged sites keep their schedule and
    /// series, changed sites restart, removed sites stop and lose their series.
    pub fn apply(&self, config: &Config, prober: Prober) {
        *self.shared.prober.write().expect("prober lock") = Arc::new(prober);
        let metrics = &self.shared.metrics;
        metrics.sites.set_settings(&config.metrics);
        let mut running = self.running.lock().expect("running lock");
        let wanted: HashMap<String, &Arc<Site>> =
            config.sites.iter().map(|s| (s.key(), s)).collect();
        let remote = &self.shared.remote;
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|s| ***s == *r.site);
            if !keep {
                r.cancel.cancel();
                let gone = match wanted.get(key) {
                    None => true,
                    Some(site) => metrics.sites.relabels(site),
                };
                if gone && remote.is_active() {
                    if let Some(stale) = metrics.sites.stale_markers(key) {
                        remote.push(stale);
                    }
                }
                if !wanted.contains_key(key) {
                    metrics.sites.remove(key);
                }
            }
            keep
        });
        for (key, site) in wanted {
            if running.contains_key(&key) || self.shared.stop.is_cancelled() {
                continue;
            }
            metrics.sites.insert(site);
            let cancel = CancellationToken::new();
            let first = Instant::now() + first_delay(&key, site.interval, SystemTime::now());
            self.tracker.spawn(site_loop(
                site.clone(),
                key.clone(),
                self.shared.clone(),
                cancel.clone(),
                first,
            ));
            running.insert(
                key,
                Running {
                    site: site.clone(),
                    cancel,
                },
            );
        }
        metrics.health.sites.set(running.len() as i64);
    }

    /// The prober of the running configuration (its resolver and network policy).
    pub fn prober(&self) -> Arc<Prober> {
        self.shared.prober.read().expect("prober lock").clone()
    }

    /// Stops scheduling and waits up to `grace` for probes in flight. Returns whether they all finished.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shared.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// How long from `now` until the site's first probe: its stable offset within the interval.
pub fn first_delay(key: &str, interval: Duration, now: SystemTime) -> Duration {
    let interval_ns = interval.as_nanos().max(1);
    let offset = u128::from(fnv1a(key.as_bytes())) % interval_ns;
    let now_ns = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let phase = now_ns % interval_ns;
    let wait = (offset + interval_ns - phase) % interval_ns;
    Duration::from_nanos(wait as u64)
}

/// FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The next slot strictly after `now`, and how many slots were missed on the way.
pub fn next_due(due: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
    let mut next = due + interval;
    let mut missed = 0;
    if next <= now {
        let behind = now - next;
        let n = (behind.as_nanos() / interval.as_nanos().max(1)) as u64 + 1;
        missed = n;
        next += interval * u32::try_from(n).unwrap_or(u32::MAX);
    }
    (next, missed)
}

async fn site_loop(
    site: Arc<Site>,
    key: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    first: Instant,
) {
    let health = &shared.metrics.health;
    let mut due = first;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = shared.stop.cancelled() => return,
            p = shared.permits.acquire() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let started = Instant::now();
        health
            .schedule_lag
            .observe(started.saturating_duration_since(due).as_secs_f64());
        let prober = shared.prober.read().expect("prober lock").clone();
        health.in_flight.inc();
        let result = tokio::select! {
            // A removed or changed site drops its probe at once; shutdown lets it finish.
            _ = cancel.cancelled() => {
                health.in_flight.dec();
                return;
            }
            // Boxed: an idle site's task then holds only its small loop state, not the space
            // of a whole probe (connections, TLS, HTTP state): memory per site is what scales.
            r = Box::pin(prober.probe(&site)) => r,
        };
        health.in_flight.dec();
        drop(permit);
        debug!(site = %site.id, result = %result.class, duration = ?result.duration, error = result.error.as_deref().unwrap_or(""), "probe finished");
        shared.metrics.sites.record(&key, &result);
        if shared.remote.is_active() {
            if let Some(samples) = shared.metrics.sites.samples(&key) {
                shared.remote.push(samples);
            }
        }
        shared.results.push(&site, result);
        let (next, missed) = next_due(due, site.interval, Instant::now());
        if missed > 0 {
            health.skipped.inc_by(missed);
        }
        due = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_delay_is_stable_and_within_interval() {
        let interval = Duration::from_secs(30);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = first_delay("shop-home", interval, now);
        assert!(a < interval);
        assert_eq!(a, first_delay("shop-home", interval, now));
        // One second later the same site is due one second sooner (same phase).
        let later = first_delay("shop-home", interval, now + Duration::from_secs(1));
        assert_eq!(
            (a + interval - later).as_nanos() % interval.as_nanos(),
            1_000_000_000
        );
    }

    #[test]
    fn first_delays_spread_over_the_interval() {
        let interval = Duration::from_secs(60);
        let now = SystemTime::UNIX_EPOCH;
        let mut buckets = [0u32; 6];
        for i in 0..6000 {
            let d = first_delay(&format!("site-{i}"), interval, now);
            buckets[(d.as_secs() / 10) as usize] += 1;
        }
        // Every 10 s slice gets a fair share (1000 expected).
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn next_due_counts_missed_slots() {
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        assert_eq!(next_due(t0, i, t0 + Duration::from_secs(3)), (t0 + i, 0));
        assert_eq!(
            next_due(t0, i, t0 + Duration::from_secs(10)),
            (t0 + Duration::from_secs(20), 1)
        );
        assert_eq!(
            next_due(t0, i, t0 + Duration::from_secs(25)),
            (t0 + Duration::from_secs(30), 2)
        );
    }
}

//! sitewatch: a Prometheus-native website availability monitor.
//!
//! # Layout
//! - [`config`]: YAML text -> validated [`config::Config`] (or every error found).
//! - [`tls`], [`resolve`]: client TLS configs and certificate facts; name resolution and the network policy.
//! - [`probe`]: one probe of one [`config::Site`] -> [`probe::ProbeResult`].
//! - [`scheduler`]: one task per site, on its interval, under a global bound on probes in flight.
//! - [`metrics`]: per-site series from the last [`probe::ProbeResult`], exporter health, `process_*`.
//! - [`remote_write`]: pushes each probe's samples to remote-write receivers, queued per destination.
//! - [`results`]: the recent-results log with sequence numbers, for followers (the keeper).
//! - [`status`]: the status page at `/`.
//! - [`shard`]: which sites this replica probes (rendezvous hashing of the site key).
//! - [`server`]: `/metrics`, `/-/healthy`, `/-/ready`, `/-/reload`.
//! - [`webconfig`]: `--web.config.file`, TLS and basic auth for the endpoints (exporter-toolkit format).
//! - [`watch`]: reloads when the config file or directory changes (notify, debounced).
//! - [`keeper`]: `sitewatch keeper`, the SQL mirror of sites and results.
//! - [`once`]: `sitewatch once`, every site probed once with a report and an exit status.
//! - [`demo`]: built-in loopback targets for `sitewatch demo`.
//! - [`cli`]: the command line; `main.rs` only calls it.
//!
//! [`run`] is the entry point: it takes a bound listener, the config path and a shutdown
//! future, so tests run the real exporter on port 0.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod checks;
pub mod cli;
pub mod config;
pub mod demo;
pub mod jsoncheck;
pub mod keeper;
pub mod metrics;
pub mod once;
pub mod probe;
pub mod remote_write;
pub mod resolve;
pub mod results;
pub mod scheduler;
pub mod server;
pub mod shard;
pub mod status;
pub mod tls;
pub mod watch;
pub mod webconfig;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::config::{Config, LoadError, SystemSecrets};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::scheduler::Scheduler;

/// Called after each configuration load: the binary sets it to return the allocator's
/// retained memory to the system (the library itself does no unsafe calls).
static MEMORY_TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets the function run after each configuration load to give freed memory back.
pub fn set_memory_trim(f: fn()) {
    let _ = MEMORY_TRIM.set(f);
}

/// The `User-Agent` probes send unless a site sets its own.
pub const USER_AGENT: &str = concat!("sitewatch/", env!("CARGO_PKG_VERSION"));

/// The source revision this binary was built from.
pub const REVISION: &str = match option_env!("SITEWATCH_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// Why the exporter could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The first configuration did not load.
    #[error("{0}")]
    Config(#[from] LoadError),
    /// The resolver of the configuration could not be built.
    #[error("{0}")]
    Resolver(#[from] resolve::ResolveError),
}

/// How the exporter runs, besides its listener.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Config file or directory.
    pub config: PathBuf,
    /// `location` label on every probe series.
    pub location: Option<String>,
    /// Bound on probes in flight.
    pub max_in_flight: usize,
    /// How long probes in flight may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Probe results kept for `/api/v1/results`.
    pub results_capacity: usize,
    /// Which sites this replica probes.
    pub shard: shard::Shard,
    /// Whether `POST /-/reload` is served.
    pub enable_lifecycle: bool,
    /// Deny [`resolve::MULTI_TENANT_DENY`] whatever the config says.
    pub multi_tenant: bool,
    /// Whether sites may carry their own `network` exceptions.
    pub site_overrides: bool,
    /// Whether `/probe` is served.
    pub enable_probe: bool,
    /// TLS and basic auth for the endpoints.
    pub web: Option<Arc<webconfig::WebConfig>>,
}

impl RunOptions {
    /// Options with defaults for a config path.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Self {
            config: config.into(),
            location: None,
            max_in_flight: scheduler::DEFAULT_MAX_IN_FLIGHT,
            shutdown_grace: Duration::from_secs(15),
            results_capacity: results::DEFAULT_CAPACITY,
            shard: shard::Shard::ALL,
            enable_lifecycle: false,
            multi_tenant: false,
            site_overrides: false,
            enable_probe: false,
            web: None,
        }
    }
}

/// The running exporter: what the endpoints and the reload triggers share.
pub struct App {
    options: RunOptions,
    metrics: Arc<Metrics>,
    results: Arc<results::ResultLog>,
    remote: Arc<remote_write::RemoteWriter>,
    scheduler: Scheduler,
    ready: AtomicBool,
    state: Mutex<ReloadState>,
}

/// What the last load saw and what runs now.
#[derive(Default)]
struct ReloadState {
    /// The configuration running now.
    current: Option<Arc<Config>>,
    /// The text (or read error) of the last load attempt.
    fingerprint: Option<u64>,
}

impl App {
    fn new(options: RunOptions) -> Result<Self, RunError> {
        let metrics = Arc::new(Metrics::new(options.location.clone()));
        metrics
            .health
            .shard_index
            .set(i64::from(options.shard.index()));
        metrics
            .health
            .shard_count
            .set(i64::from(options.shard.count()));
        let prober = Prober::new(&config::Network::default())?;
        let results = Arc::new(results::ResultLog::new(
            options.results_capacity,
            options.location.clone(),
        ));
        let remote = Arc::new(remote_write::RemoteWriter::new(
            metrics.remote_write.clone(),
        ));
        let scheduler = Scheduler::new(
            metrics.clone(),
            results.clone(),
            remote.clone(),
            prober,
            options.max_in_flight,
        );
        Ok(Self {
            options,
            metrics,
            results,
            remote,
            scheduler,
            ready: AtomicBool::new(false),
            state: Mutex::default(),
        })
    }

    /// The configuration running now.
    pub fn current(&self) -> Option<Arc<Config>> {
        self.state.lock().expect("reload lock").current.clone()
    }

    /// TLS and basic auth for the endpoints, if configured.
    pub fn web(&self) -> Option<&Arc<webconfig::WebConfig>> {
        self.options.web.as_ref()
    }

    /// Probes `target` once now, with the settings of the site `module` (by key) or the
    /// defaults, under the running network policy. `Err` says what is wrong with the request.
    pub async fn probe_now(
        &self,
        target: &str,
        module: Option<&str>,
    ) -> Result<(Arc<config::Site>, probe::ProbeResult, Arc<Config>), String> {
        if !self.options.enable_probe {
            return Err("disabled".into());
        }
        let current = self.current().ok_or("no configuration loaded yet")?;
        // Validate the target as a site URL is validated: scheme, host, no credentials.
        let yaml = format!(
            "sites:\n  - id: probe\n    url: {}\n",
            serde_json::to_string(target).map_err(|e| e.to_string())?
        );
        let parsed = config::parse_sources(&[(PathBuf::from("probe"), yaml)], &SystemSecrets)
            .map_err(|errors| {
                errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        let base = parsed.sites[0].clone();
        let site = match module {
            None => base,
            Some(key) => {
                let module = current
                    .sites
                    .iter()
                    .find(|s| s.key() == key)
                    .ok_or_else(|| format!("no site {key:?} to take the settings from"))?;
                let mut s = (**module).clone();
                s.url = base.url.clone();
                Arc::new(s)
            }
        };
        let result = self.scheduler.prober().probe(&site).await;
        Ok((site, result, current))
    }

    /// The `location` label of probe series.
    pub fn location(&self) -> Option<String> {
        self.options.location.clone()
    }

    /// Whether `POST /-/reload` is served.
    pub fn lifecycle_enabled(&self) -> bool {
        self.options.enable_lifecycle
    }

    /// Which sites this replica probes.
    pub fn shard(&self) -> shard::Shard {
        self.options.shard
    }

    /// Whether a configuration has been loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Loads the configuration again and applies it; a bad one leaves the running one in place.
    /// Returns the number of sites. (`SIGHUP`, `POST /-/reload` and start-up.)
    pub fn reload(&self) -> Result<usize, RunError> {
        let loaded = self
            .load(true)
            .unwrap_or_else(|| unreachable!("a forced load always loads"));
        trim_memory();
        loaded
    }

    /// Reloads only when the config files' text changed since the last attempt: the file
    /// watcher calls this for every burst of events, most of which change nothing.
    pub fn reload_if_changed(&self) -> Option<Result<usize, RunError>> {
        let loaded = self.load(false);
        if loaded.is_some() {
            trim_memory();
        }
        loaded
    }

    fn load(&self, force: bool) -> Option<Result<usize, RunError>> {
        let path = &self.options.config;
        // One load at a time: the watcher, SIGHUP and /-/reload may fire together.
        let mut state = self.state.lock().expect("reload lock");
        let sources = config::read_sources(path);
        let fingerprint = fingerprint(&sources);
        if !force && state.fingerprint == Some(fingerprint) {
            return None;
        }
        state.fingerprint = Some(fingerprint);
        let loaded = sources
            .and_then(|s| config::parse_sources(&s, &SystemSecrets).map_err(LoadError::Invalid))
            .map_err(RunError::from)
            .and_then(|mut c| {
                c.network.multi_tenant = self.options.multi_tenant;
                if !self.options.site_overrides {
                    refuse_site_overrides(&c)?;
                }
                Ok(c)
            })
            .and_then(|c| Ok((Prober::new(&c.network)?, c)));
        Some(match loaded {
            Ok((prober, mut config)) => {
                // Sites another shard owns are not probed and export nothing here.
                let total = config.sites.len();
                let shard = self.options.shard;
                config.sites.retain(|s| shard.owns(&s.key()));
                let n = config.sites.len();
                self.metrics.health.config_sites.set(total as i64);
                // `apply` is a diff already: comparing whole configs first would compare every
                // site twice whenever something changed.
                self.scheduler.apply(&config, prober);
                self.remote.apply(&config.remote_write);
                state.current = Some(Arc::new(config));
                self.metrics.health.reloaded(true);
                self.ready.store(true, Ordering::Release);
                info!(config = %path.display(), sites = n, shard = %shard, sites_in_config = total, "configuration loaded");
                Ok(n)
            }
            Err(e) => {
                self.metrics.health.reloaded(false);
                error!(config = %path.display(), "configuration rejected; the previous one keeps running");
                for line in e.to_string().lines() {
                    error!(config = %path.display(), "{line}");
                }
                Err(e)
            }
        })
    }
}

/// Sites with their own `network` exceptions, when the operator did not allow them
/// (`run` without `--network.site-overrides`, and `check-config` the same way).
pub fn refuse_site_overrides(config: &Config) -> Result<(), RunError> {
    let errors: Vec<config::ConfigError> = config
        .sites
        .iter()
        .filter(|s| s.network.is_some())
        .map(|s| config::ConfigError {
            file: s.source.clone(),
            line: None,
            site: Some(s.id.clone()),
            field: Some("network".into()),
            message: "per-site network exceptions are disabled; the operator enables them with --network.site-overrides".into(),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RunError::Config(LoadError::Invalid(errors)))
    }
}

/// A load frees a whole parsed configuration (the YAML tree, the old sites) at once: give it
/// back rather than keep it for reuse.
fn trim_memory() {
    if let Some(trim) = MEMORY_TRIM.get() {
        trim();
    }
}

/// A hash of what was read, or of why reading failed.
fn fingerprint(sources: &Result<Vec<(PathBuf, String)>, LoadError>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match sources {
        Ok(files) => files.hash(&mut h),
        Err(e) => e.to_string().hash(&mut h),
    }
    h.finish()
}

/// Runs the exporter on `listener` until `shutdown` resolves, then drains probes in flight.
pub async fn run(
    listener: TcpListener,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let grace = options.shutdown_grace;
    let app = Arc::new(App::new(options)?);
    app.reload()?;
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "listening");
    }
    let reloader = spawn_sighup_reloader(app.clone());
    let watcher = watch::spawn(app.clone(), watch::DEBOUNCE);
    server::serve(listener, app.clone(), shutdown).await;
    reloader.abort();
    watcher.abort();
    info!("shutting down: no new probes, waiting for probes in flight");
    let until = tokio::time::Instant::now() + grace;
    if !app.scheduler.shutdown(grace).await {
        warn!(grace = ?grace, "probes still in flight at the end of the grace period were dropped");
    }
    // What probes produced is pushed within what is left of the same grace period, so the
    // whole stop fits the one budget an orchestrator gives.
    let left = until.saturating_duration_since(tokio::time::Instant::now());
    app.remote.close(left.max(Duration::from_secs(1))).await;
    Ok(())
}

fn spawn_sighup_reloader(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let app = app.clone();
            let _ = tokio::task::spawn_blocking(move || app.reload()).await;
        }
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutdown signal received");
}

//! The command line: flags in the Prometheus exporter style, one subcommand per job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::{self, LoadError, SystemSecrets};
use crate::{demo, run, shutdown_signal, RunOptions};

/// Exit code for a configuration that does not load (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;
/// Bad flags (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// sitewatch: a Prometheus-native website availability monitor.
#[derive(Debug, Parser)]
#[command(name = "sitewatch", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long = "log.format", value_enum, default_value_t = LogFormat::Text, global = true, env = "SITEWATCH_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(
        long = "log.level",
        default_value = "info",
        global = true,
        env = "SITEWATCH_LOG_LEVEL"
    )]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags shared by the commands that serve.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to serve /metrics and the API on (`:9898` means every interface).
    #[arg(
        long = "web.listen-address",
        default_value = ":9898",
        env = "SITEWATCH_LISTEN_ADDRESS"
    )]
    pub listen_address: String,
    /// Adds a `location` label to every probe series.
    #[arg(long, env = "SITEWATCH_LOCATION")]
    pub location: Option<String>,
    /// At most this many probes run at once.
    #[arg(long = "probes.max-in-flight", default_value_t = crate::scheduler::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Probe results kept for followers of /api/v1/results (the keeper).
    #[arg(long = "results.buffer-size", default_value_t = crate::results::DEFAULT_CAPACITY)]
    pub results_capacity: usize,
    /// Time probes in flight get to finish at shutdown.
    #[arg(long = "shutdown.grace", default_value = "15s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: std::time::Duration,
    /// TLS and basic auth for the endpoints, in the Prometheus exporter-toolkit format
    /// (`tls_server_config`, `basic_auth_users` with bcrypt hashes).
    #[arg(long = "web.config.file", env = "SITEWATCH_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Deny what a site list written by someone else must never reach, whatever the config
    /// says: this host (loopback), link-local addresses and the cloud metadata endpoints
    /// (README, "Multi-tenant use").
    #[arg(long = "network.multi-tenant", env = "SITEWATCH_MULTI_TENANT")]
    pub multi_tenant: bool,
    /// Let sites carry their own `network: { allow, deny }` exceptions to the `network`
    /// section (never past --network.multi-tenant). Off: a site that has them is refused.
    #[arg(
        long = "network.site-overrides",
        env = "SITEWATCH_NETWORK_SITE_OVERRIDES"
    )]
    pub site_overrides: bool,
    /// Serve `/probe?target=URL&module=SITE` (blackbox_exporter style): one probe now, its
    /// series as the answer. Off by default, since it lets callers make the exporter fetch
    /// URLs; the network policy applies as to every probe.
    #[arg(long = "web.enable-probe", env = "SITEWATCH_ENABLE_PROBE")]
    pub enable_probe: bool,
    /// Allow `POST /-/reload` (as Prometheus' flag of the same name). Off by default: anyone
    /// who can reach the port could otherwise make the exporter reread its files. SIGHUP and
    /// file changes reload either way.
    #[arg(long = "web.enable-lifecycle", env = "SITEWATCH_ENABLE_LIFECYCLE")]
    pub enable_lifecycle: bool,
    /// This replica's shard, 0-based; when absent and --shard.count is above 1, the ordinal
    /// at the end of the pod name (POD_NAME, HOSTNAME or the host name, e.g. `sitewatch-3`).
    #[arg(long = "shard.index", env = "SITEWATCH_SHARD_INDEX")]
    pub shard_index: Option<u32>,
    /// How many replicas share the sites (rendezvous hashing on the site key).
    #[arg(
        long = "shard.count",
        env = "SITEWATCH_SHARD_COUNT",
        default_value_t = 1
    )]
    pub shard_count: u32,
}

/// The name a StatefulSet ordinal is read from: `POD_NAME`, `HOSTNAME`, or the host name.
fn pod_name() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Probe the configured sites and serve their metrics.
    Run {
        /// Config file, or directory of *.yaml files.
        #[arg(long, env = "SITEWATCH_CONFIG")]
        config: PathBuf,
        /// Serving flags.
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Validate a config file or directory; print every error; exit 1 if any.
    CheckConfig {
        /// Config file, or directory of *.yaml files.
        path: PathBuf,
        /// Accept sites' own `network` exceptions, as `run --network.site-overrides` does.
        #[arg(long = "network.site-overrides")]
        site_overrides: bool,
    },
    /// Probe every site once, print a report, exit 0 only if every site passed.
    Once {
        /// Config file, or directory of *.yaml files.
        #[arg(long, env = "SITEWATCH_CONFIG")]
        config: PathBuf,
        /// Report format.
        #[arg(long, value_enum, default_value_t = crate::once::Output::Table)]
        output: crate::once::Output,
        /// At most this many probes at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Adds a `location` label to every pushed series.
        #[arg(long)]
        location: Option<String>,
        /// How long to wait for remote-write receivers to accept the samples.
        #[arg(long = "push.timeout", default_value = "30s", value_parser = humantime::parse_duration)]
        push_timeout: std::time::Duration,
    },
    /// Mirror an exporter's sites and probe results into SQL tables `sites` and `stats`.
    Keeper {
        /// The exporter's base URL.
        #[arg(
            long,
            env = "SITEWATCH_SOURCE",
            default_value = "http://127.0.0.1:9898"
        )]
        source: String,
        /// `sqlite://PATH` (created if missing) or `postgres://user@host/db`.
        #[arg(long = "database-url", env = "SITEWATCH_DATABASE_URL")]
        database_url: String,
        /// Address of the keeper's own /metrics.
        #[arg(
            long = "web.listen-address",
            default_value = ":9899",
            env = "SITEWATCH_KEEPER_LISTEN_ADDRESS"
        )]
        listen_address: String,
        /// Most rows written in one transaction.
        #[arg(long = "batch-size", default_value_t = 5000)]
        batch_size: usize,
        /// Most rows held while the database is slow or away; older ones are dropped and counted.
        #[arg(long = "queue.max-rows", default_value_t = 50_000)]
        max_queue: usize,
        /// How often the `sites` table is synchronized.
        #[arg(long = "sites.interval", default_value = "15s", value_parser = humantime::parse_duration)]
        sites_interval: std::time::Duration,
        /// CA certificates (PEM) to trust for an exporter served over TLS (`--web.config.file`).
        #[arg(long = "source.ca-file", env = "SITEWATCH_SOURCE_CA_FILE")]
        source_ca_file: Option<std::path::PathBuf>,
        /// Basic-auth user for an exporter behind `--web.config.file`.
        #[arg(long = "source.username", env = "SITEWATCH_SOURCE_USERNAME")]
        source_username: Option<String>,
        /// File holding that user's password.
        #[arg(long = "source.password-file", env = "SITEWATCH_SOURCE_PASSWORD_FILE")]
        source_password_file: Option<std::path::PathBuf>,
    },
    /// Exit 0 if URL answers 2xx within 5 s: the container image's HEALTHCHECK (it has no curl).
    Healthcheck {
        /// The URL to check.
        #[arg(default_value = "http://127.0.0.1:9898/-/healthy")]
        url: String,
    },
    /// Start built-in targets on 127.0.0.1 and an exporter probing them (no network needed).
    Demo {
        /// Serving flags.
        #[command(flatten)]
        serve: ServeArgs,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses `:9898`, `0.0.0.0:9898`, `[::1]:9898` or `localhost:9898`.
async fn bind(address: &str) -> std::io::Result<TcpListener> {
    if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| std::io::Error::other(format!("invalid port in {address:?}")))?;
        // Every interface: IPv6 and IPv4 where the host has IPv6, IPv4 otherwise.
        return match TcpListener::bind(SocketAddr::from(([0u16; 8], port))).await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind(SocketAddr::from(([0u8; 4], port))).await,
        };
    }
    TcpListener::bind(address).await
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::CheckConfig {
            path,
            site_overrides,
        } => check_config(&path, site_overrides),
        Command::Run { config, serve } => serve_exporter(config, serve).await,
        Command::Once {
            config,
            output,
            concurrency,
            location,
            push_timeout,
        } => once(&config, output, concurrency, location, push_timeout).await,
        Command::Keeper {
            source,
            database_url,
            listen_address,
            batch_size,
            max_queue,
            sites_interval,
            source_ca_file,
            source_username,
            source_password_file,
        } => {
            let listener = match bind(&listen_address).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("cannot listen on {listen_address}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let options = crate::keeper::KeeperOptions {
                source,
                database_url,
                batch_size,
                max_queue,
                sites_interval,
                source_access: crate::keeper::SourceAccess {
                    ca_file: source_ca_file,
                    username: source_username,
                    password_file: source_password_file,
                },
            };
            match crate::keeper::run(options, listener, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sitewatch keeper: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { url } => healthcheck(&url).await,
        Command::Demo { serve } => {
            let dir = std::env::temp_dir().join(format!("sitewatch-demo-{}", std::process::id()));
            let demo = match demo::start(&dir).await {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("sitewatch demo: {e}");
                    return ExitCode::FAILURE;
                }
            };
            eprintln!(
                "sitewatch demo: targets on 127.0.0.1, config in {}\n  try: curl -s localhost{}/metrics | grep -E '^(probe_success|sitewatch_probes_total)'",
                demo.config.display(),
                serve.listen_address.trim_start_matches(|c: char| c != ':'),
            );
            let code = serve_exporter(demo.config.clone(), serve).await;
            let _ = std::fs::remove_dir_all(&demo.dir);
            code
        }
    }
}

async fn serve_exporter(config: PathBuf, serve: ServeArgs) -> ExitCode {
    let shard =
        match crate::shard::Shard::from_flags(serve.shard_index, serve.shard_count, &pod_name()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sitewatch: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
    let web = match &serve.web_config_file {
        Some(path) => match crate::webconfig::WebConfig::load(path) {
            Ok(w) => Some(std::sync::Arc::new(w)),
            Err(e) => {
                eprintln!("sitewatch: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => None,
    };
    let listener = match bind(&serve.listen_address).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", serve.listen_address);
            return ExitCode::FAILURE;
        }
    };
    let options = RunOptions {
        location: serve.location,
        max_in_flight: serve.max_in_flight,
        shutdown_grace: serve.shutdown_grace,
        results_capacity: serve.results_capacity,
        shard,
        enable_lifecycle: serve.enable_lifecycle,
        multi_tenant: serve.multi_tenant,
        site_overrides: serve.site_overrides,
        enable_probe: serve.enable_probe,
        web,
        ..RunOptions::new(config)
    };
    match run(listener, options, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn once(
    path: &std::path::Path,
    output: crate::once::Output,
    concurrency: usize,
    location: Option<String>,
    push_timeout: std::time::Duration,
) -> ExitCode {
    let config = match config::load_path(path, &SystemSecrets) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let results = match crate::once::probe_all(&config, concurrency).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let pushes = crate::once::push(&config, &results, location, push_timeout).await;
    match crate::once::report(&mut std::io::stdout().lock(), &results, &pushes, output) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck(url: &str) -> ExitCode {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .build();
    let answer = match client {
        Ok(c) => c.get(url).send().await,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match answer {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path, site_overrides: bool) -> ExitCode {
    let loaded = config::load_path(path, &SystemSecrets).and_then(|c| {
        if site_overrides {
            return Ok(c);
        }
        match crate::refuse_site_overrides(&c) {
            Err(crate::RunError::Config(e)) => Err(e),
            _ => Ok(c),
        }
    });
    match loaded {
        Ok(c) => {
            println!("{}: OK, {} sites", path.display(), c.sites.len());
            ExitCode::SUCCESS
        }
        Err(LoadError::Invalid(errors)) => {
            for e in &errors {
                println!("{e}");
            }
            println!("{}: {} errors", path.display(), errors.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

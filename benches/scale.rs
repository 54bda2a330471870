//! Scale and cost, side by side with blackbox_exporter. Run with `bench/run` (or
//! `cargo bench --bench scale`); knobs are environment variables:
//!
//! - `CPU_ROWS=1,3`: only those rows of the CPU table.
//! - `QUICK=1`: small sizes and short windows, to check the harness itself (~2 min).
//! - `PARTS=cpu,scale,soak`: which parts to run (default all).
//! - `SOAK_MINUTES=60`: the hour-long soak (default 2 minutes).
//! - `BLACKBOX=/path/to/blackbox_exporter` (default: `prometheus-blackbox-exporter` on PATH).
//! - `EXPORTER_CPU=1`, `FARM_CPU=0`: the cores the exporters and the targets run on.
//!
//! The farm: HTTP listeners on 127.0.0.1-127.0.0.4 (4 ports each) and HTTPS listeners on
//! 127.0.0.1 (4 ports), serving a 4 KiB page. The site mix: 80% fast pages, 10% slow (20-300 ms),
//! 5% answering 500, 5% hanging past the 2 s timeout. Every request the farm receives is
//! counted; an exporter's CPU time (utime + stime from /proc) divided by the requests it made
//! is its CPU per probe. Both exporters are pinned to the same core and get the same targets.
//! Traffic stays on loopback.

mod support;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sitewatch::demo::{respond, serve_target, TestCertificate};
use support::{context_switches, cpu_seconds, rss_mib, start_sitewatch, Proc};
use tokio::net::TcpListener;

const PAGE: [u8; 4096] = [b'x'; 4096];

struct Farm {
    http: Vec<SocketAddr>,
    https: Vec<SocketAddr>,
    hits: Arc<AtomicU64>,
    ca: std::path::PathBuf,
}

async fn farm(dir: &Path) -> Farm {
    let hits = Arc::new(AtomicU64::new(0));
    let not_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 90 * 86_400;
    let cert = TestCertificate::generate(not_after).unwrap();
    let ca = dir.join("farm-ca.pem");
    std::fs::write(&ca, &cert.ca_pem).unwrap();
    let tls = cert.server_config().unwrap();
    let mut http = Vec::new();
    let mut https = Vec::new();
    for host in 1..=4u8 {
        for _ in 0..4 {
            let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))
                .await
                .unwrap();
            http.push(l.local_addr().unwrap());
            tokio::spawn(serve_target(l, None, handler(hits.clone())));
        }
    }
    for _ in 0..4 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        https.push(l.local_addr().unwrap());
        tokio::spawn(serve_target(l, Some(tls.clone()), handler(hits.clone())));
    }
    Farm {
        http,
        https,
        hits,
        ca,
    }
}

type Reply = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>> + Send,
    >,
>;

fn handler(
    hits: Arc<AtomicU64>,
) -> impl Fn(http::Request<hyper::body::Incoming>) -> Reply + Clone + Send + Sync + 'static {
    move |req| {
        hits.fetch_add(1, Ordering::Relaxed);
        let path = req.uri().path().to_string();
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Box::pin(async move {
            match path.as_str() {
                "/slow" | "/hang" => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    respond(200, &PAGE[..])
                }
                "/err" => respond(500, "error"),
                _ => respond(200, &PAGE[..]),
            }
        })
    }
}

/// The path of site `i` in the realistic mix (only fast pages when `fast_only`).
fn mix_path(i: usize, fast_only: bool) -> String {
    if fast_only {
        return "/ok".into();
    }
    match i % 100 {
        0..=79 => "/ok".into(),
        80..=89 => format!("/slow?ms={}", 20 + (i * 37) % 280),
        90..=94 => "/err".into(),
        _ => "/hang?ms=10000".into(),
    }
}

fn target_url(farm: &Farm, i: usize, tls: bool, fast_only: bool) -> String {
    let path = mix_path(i, fast_only);
    if tls {
        format!("https://{}{}", farm.https[i % farm.https.len()], path)
    } else {
        format!("http://{}{}", farm.http[i % farm.http.len()], path)
    }
}

/// What the checks row asks of every page, on both exporters: a header regex, a body regex that
/// must match and one that must not.
const SITEWATCH_CHECKS: &str = "    fail_if_header_not_matches: [{ header: Content-Type, regex: '^text/html' }]\n    regex: 'x{64}'\n    regex_absent: maintenance\n";

fn sitewatch_config(farm: &Farm, n: usize, interval: &str, tls: bool, fast_only: bool) -> String {
    sitewatch_config_with(farm, n, interval, tls, fast_only, "")
}

fn sitewatch_config_with(
    farm: &Farm,
    n: usize,
    interval: &str,
    tls: bool,
    fast_only: bool,
    per_site: &str,
) -> String {
    let mut out = String::with_capacity(n * 80);
    let _ = write!(
        out,
        "defaults: {{ interval: {interval}, timeout: {timeout}, tls: {{ ca_file: {} }} }}\nsites:\n",
        farm.ca.display(),
        // A timeout may not exceed the interval.
        timeout = if interval == "1s" { "1s" } else { "2s" }
    );
    for i in 0..n {
        let _ = writeln!(
            out,
            "  - id: s{i}\n    url: {}",
            target_url(farm, i, tls, fast_only)
        );
        out.push_str(per_site);
    }
    out
}

fn exporter_cpu() -> String {
    std::env::var("EXPORTER_CPU").unwrap_or_else(|_| "1".into())
}

fn start_blackbox(bin: &str, dir: &Path, ca: &Path) -> Option<Proc> {
    let config = dir.join("blackbox.yml");
    std::fs::write(
        &config,
        format!(
            "modules:\n  http_2xx:\n    prober: http\n    timeout: 2s\n    http:\n      preferred_ip_protocol: ip4\n\
             \x20 https_2xx:\n    prober: http\n    timeout: 2s\n    http:\n      preferred_ip_protocol: ip4\n      tls_config:\n        ca_file: {}\n\
             \x20 http_checks:\n    prober: http\n    timeout: 2s\n    http:\n      preferred_ip_protocol: ip4\n\
             \x20     fail_if_header_not_matches: [{{ header: Content-Type, regexp: '^text/html' }}]\n\
             \x20     fail_if_body_not_matches_regexp: ['x{{64}}']\n      fail_if_body_matches_regexp: [maintenance]\n",
            ca.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new("taskset")
        .args(["-c", &exporter_cpu(), bin])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Proc { child, addr })
}

async fn wait_http(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not come up");
}

/// One CPU-per-probe measurement.
#[derive(Clone, Copy, Default)]
struct Cpu {
    probes_per_s: f64,
    cpu_per_probe_us: f64,
    core_share: f64,
    switches_per_probe: f64,
}

async fn measure_cpu(pid: u32, hits: &AtomicU64, window: Duration) -> Cpu {
    let (c0, s0, h0, t0) = (
        cpu_seconds(pid),
        context_switches(pid),
        hits.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let (c1, s1, h1, secs) = (
        cpu_seconds(pid),
        context_switches(pid),
        hits.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let probes = (h1 - h0) as f64;
    Cpu {
        probes_per_s: probes / secs,
        cpu_per_probe_us: (c1 - c0) / probes.max(1.0) * 1e6,
        core_share: (c1 - c0) / secs,
        switches_per_probe: s1.saturating_sub(s0) as f64 / probes.max(1.0),
    }
}

struct Sizes {
    quick: bool,
}

impl Sizes {
    /// CPU measurement window. At 100 probes/s an exporter uses a few percent of a core, a
    /// few hundred clock ticks a minute: a minute keeps tick rounding and bursts of hanging
    /// probes under 1% of the figure.
    fn window(&self, saturate: bool) -> Duration {
        match (self.quick, saturate) {
            (true, _) => Duration::from_secs(5),
            (false, false) => Duration::from_secs(60),
            (false, true) => Duration::from_secs(20),
        }
    }
}

async fn sitewatch_cpu(
    farm: &Farm,
    dir: &Path,
    (tls, saturate, checks): (bool, bool, bool),
    s: &Sizes,
) -> Cpu {
    // Fixed: 100 probes/s of the realistic mix. Saturation: fast pages, far more than one core can do.
    let (n, interval, fast) = match (saturate, s.quick) {
        (false, _) => (1000, "10s", false),
        (true, false) => (if tls { 6000 } else { 16000 }, "1s", true),
        (true, true) => (2000, "1s", true),
    };
    let path = dir.join("cpu.yaml");
    let per_site = if checks { SITEWATCH_CHECKS } else { "" };
    std::fs::write(
        &path,
        sitewatch_config_with(farm, n, interval, tls, fast, per_site),
    )
    .unwrap();
    let p = start_sitewatch(&path, &exporter_cpu());
    // Sites start spread over one interval; measure after the first one.
    tokio::time::sleep(parse_secs(interval) + Duration::from_secs(2)).await;
    measure_cpu(p.child.id(), &farm.hits, s.window(saturate)).await
}

fn parse_secs(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap()
}

async fn blackbox_cpu(
    farm: &Farm,
    bb: &Proc,
    (tls, saturate, checks): (bool, bool, bool),
    s: &Sizes,
) -> Cpu {
    let module = match (tls, checks) {
        (_, true) => "http_checks",
        (true, false) => "https_2xx",
        (false, false) => "http_2xx",
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    let url = |i: usize| {
        format!(
            "http://{}/probe?module={module}&target={}",
            bb.addr,
            target_url(farm, i, tls, saturate)
        )
    };
    if saturate {
        // Closed loop: 256 concurrent callers, each probing as fast as blackbox answers.
        for w in 0..256 {
            let (client, stop) = (client.clone(), stop.clone());
            let urls: Vec<String> = (0..64).map(|k| url(w * 64 + k)).collect();
            tasks.push(tokio::spawn(async move {
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    let _ = client
                        .get(&urls[k % urls.len()])
                        .send()
                        .await
                        .map(|r| r.bytes());
                    k += 1;
                }
            }));
        }
    } else {
        // Open loop at 100 probes/s, as Prometheus scraping 1000 targets every 10 s would.
        let (client, stop) = (client.clone(), stop.clone());
        let urls: Vec<String> = (0..1000).map(url).collect();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (client, u) = (client.clone(), urls[k % urls.len()].clone());
                tokio::spawn(async move {
                    if let Ok(r) = client.get(&u).send().await {
                        let _ = r.bytes().await;
                    }
                });
                k += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = measure_cpu(bb.child.id(), &farm.hits, s.window(saturate)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    // Let hanging probes drain before the next measurement.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cpu
}

/// Median time and size of a `/metrics` scrape.
async fn scrape(addr: &str) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        times.push(t.elapsed());
        size = body.len();
    }
    times.sort();
    (times[1], size)
}

/// Scrapes only the exporter's own metrics (skipping per-site series) from a full scrape.
async fn health(addr: &str) -> String {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| {
            l.starts_with("sitewatch_schedule_lag") || l.starts_with("sitewatch_probes_skipped")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `(le, cumulative count)` of the lag histogram, and the skipped counter.
fn lag_buckets(text: &str) -> (Vec<(f64, f64)>, f64) {
    let mut buckets = Vec::new();
    let mut skipped = 0.0;
    for l in text.lines() {
        let Some((series, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = v.parse().unwrap_or(0.0);
        if let Some(le) = series.strip_prefix("sitewatch_schedule_lag_seconds_bucket{le=\"") {
            let le = le.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(0.0)
            };
            buckets.push((le, v));
        } else if series == "sitewatch_probes_skipped_total" {
            skipped = v;
        }
    }
    (buckets, skipped)
}

/// A quantile from cumulative buckets (upper bound of the bucket holding it).
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
}

fn diff(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    b.iter().zip(a).map(|(x, y)| (x.0, x.1 - y.1)).collect()
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: only build them then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::var("QUICK").is_ok_and(|v| v == "1");
    let soak_minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 2 });
    let bb_bin =
        std::env::var("BLACKBOX").unwrap_or_else(|_| "prometheus-blackbox-exporter".into());
    let sizes = Sizes { quick };
    let parts = std::env::var("PARTS").unwrap_or_else(|_| "cpu,scale,soak".into());
    let run = |part: &str| parts.split(',').any(|p| p.trim() == part);
    let dir = tempfile::tempdir().unwrap();
    let farm = farm(dir.path()).await;
    let mut out = String::new();
    let date = Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "sitewatch scale benchmark, {date}, quick={quick}, exporters on CPU {}",
        exporter_cpu()
    );

    // 1 and 2: CPU per probe, side by side.
    let _ = writeln!(out, "\n| CPU per probe | sitewatch probes/s | sitewatch µs/probe | sitewatch switches/probe | blackbox probes/s | blackbox µs/probe | blackbox switches/probe | sitewatch / blackbox |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let bb = if run("cpu") {
        start_blackbox(&bb_bin, dir.path(), &farm.ca)
    } else {
        None
    };
    if let Some(bb) = &bb {
        wait_http(&format!("http://{}/metrics", bb.addr)).await;
    }
    let cpu_runs = if run("cpu") { 5 } else { 0 };
    // CPU_ROWS=2,4: only those rows of the CPU table (1-based), e.g. to profile one of them.
    let cpu_rows: Option<Vec<usize>> = std::env::var("CPU_ROWS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect());
    for (tls, saturate, checks, label) in [
        (false, false, false, "HTTP, 100 probes/s, realistic mix"),
        (false, true, false, "HTTP, saturation, fast pages"),
        (
            true,
            false,
            false,
            "HTTPS (full handshake), 100 probes/s, realistic mix",
        ),
        (
            true,
            true,
            false,
            "HTTPS (full handshake), saturation, fast pages",
        ),
        (
            false,
            true,
            true,
            "HTTP, saturation, header + body regex checks",
        ),
    ]
    .into_iter()
    .take(cpu_runs)
    .enumerate()
    .filter(|(i, _)| {
        cpu_rows
            .as_ref()
            .map_or(true, |rows| rows.contains(&(i + 1)))
    })
    .map(|(_, row)| row)
    {
        let row = (tls, saturate, checks);
        let sw = sitewatch_cpu(&farm, dir.path(), row, &sizes).await;
        let bbc = match &bb {
            Some(bb) => Some(blackbox_cpu(&farm, bb, row, &sizes).await),
            None => None,
        };
        let (bps, bcpu, bsw, ratio) = match bbc {
            Some(b) => (
                format!("{:.0}", b.probes_per_s),
                format!(
                    "{:.0} ({:.0}% of a core)",
                    b.cpu_per_probe_us,
                    b.core_share * 100.0
                ),
                format!("{:.1}", b.switches_per_probe),
                format!("{:.2}", sw.cpu_per_probe_us / b.cpu_per_probe_us),
            ),
            None => (
                "not run".into(),
                "blackbox_exporter not installed".into(),
                "-".into(),
                "-".into(),
            ),
        };
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} ({:.0}% of a core) | {:.1} | {bps} | {bcpu} | {bsw} | {ratio} |",
            sw.probes_per_s,
            sw.cpu_per_probe_us,
            sw.core_share * 100.0,
            sw.switches_per_probe
        );
        eprint!("{out}");
        out.clear();
    }
    let bb_rss = bb.as_ref().map(|b| rss_mib(b.child.id()));
    drop(bb);

    // 3, 4, 5: memory, scrape, schedule at 1k, 10k, 100k sites with a 60 s interval.
    let _ = writeln!(out, "\n| sites (60 s interval, realistic mix) | RSS | RSS per 1,000 sites | /metrics time | /metrics size | lag p50 | lag p99 | skipped | CPU |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let counts: &[usize] = if !run("scale") {
        &[]
    } else if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    for &n in counts {
        let path = dir.join_sites(n);
        std::fs::write(&path, sitewatch_config(&farm, n, "60s", false, false)).unwrap();
        let p = start_sitewatch(&path, &exporter_cpu());
        let pid = p.child.id();
        // One full interval so every site has probed, then a second one to measure the schedule.
        let settle = if quick {
            Duration::from_secs(15)
        } else {
            Duration::from_secs(62)
        };
        tokio::time::sleep(settle).await;
        let (b0, s0) = lag_buckets(&health(&p.addr).await);
        let c0 = cpu_seconds(pid);
        let t0 = Instant::now();
        tokio::time::sleep(if quick {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(60)
        })
        .await;
        let (b1, s1) = lag_buckets(&health(&p.addr).await);
        let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
        let rss = rss_mib(pid);
        let (t, size) = scrape(&p.addr).await;
        let lag = diff(&b0, &b1);
        let _ = writeln!(
            out,
            "| {n} | {rss:.0} MiB | {:.1} MiB | {:.0} ms | {:.1} MiB | ≤ {} s | ≤ {} s | {} | {:.0}% of a core |",
            rss / n as f64 * 1000.0,
            t.as_secs_f64() * 1e3,
            size as f64 / (1 << 20) as f64,
            quantile(&lag, 0.5),
            quantile(&lag, 0.99),
            s1 - s0,
            cpu * 100.0
        );
    }
    if let Some(rss) = bb_rss {
        let _ = writeln!(out, "| blackbox_exporter (no per-site state; RSS after the CPU runs) | {rss:.0} MiB | - | - | - | - | - | - | - |");
    }
    eprint!("{out}");
    out.clear();

    // 6: soak.
    if !run("soak") {
        return;
    }
    let n = 10_000;
    let path = dir.join_sites(n);
    std::fs::write(&path, sitewatch_config(&farm, n, "30s", false, false)).unwrap();
    let p = start_sitewatch(&path, &exporter_cpu());
    let step = if quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(60)
    };
    let steps = soak_minutes * 60 / step.as_secs();
    let mut samples = Vec::new();
    for _ in 0..steps {
        tokio::time::sleep(step).await;
        samples.push(rss_mib(p.child.id()));
        eprintln!(
            "soak: {} MiB after {} s",
            samples.last().unwrap(),
            samples.len() as u64 * step.as_secs()
        );
    }
    let tenth = samples[(samples.len() / 6).min(samples.len() - 1)];
    let last = *samples.last().unwrap();
    let _ = writeln!(
        out,
        "\nsoak: {n} sites, 30 s interval, {soak_minutes} min: RSS at 1/6 of the run {tenth:.0} MiB, at the end {last:.0} MiB ({:+.1}%); samples: {}",
        (last - tenth) / tenth * 100.0,
        samples.iter().map(|s| format!("{s:.0}")).collect::<Vec<_>>().join(" ")
    );
    eprint!("{out}");
}

trait JoinSites {
    fn join_sites(&self, n: usize) -> std::path::PathBuf;
}

impl JoinSites for tempfile::TempDir {
    fn join_sites(&self, n: usize) -> std::path::PathBuf {
        self.path().join(format!("sites-{n}.yaml"))
    }
}

//! Reload cost at scale: a config of N sites (default 100,000) where one site changes.
//!
//! Run: `cargo bench --bench reload` (or `SITES=10000 cargo bench --bench reload`).
//!
//! It starts a loopback target that timestamps every request, runs the real `sitewatch`
//! binary against N sites probing that target, then changes one site and reloads several
//! times. It prints how long start-up and each reload took and whether probing paused: the
//! longest gap between probe arrivals at the target during the reloads, next to the longest
//! gap in a quiet window of the same length before them. Traffic stays on 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sitewatch::demo::{respond, serve_target};
use support::{rss_mib, start_sitewatch};
use tokio::net::TcpListener;

const RELOADS: usize = 5;

fn config(n: usize, target: SocketAddr, changed: usize) -> String {
    let mut out = String::with_capacity(n * 64);
    out.push_str(
        "defaults: { interval: 10m, timeout: 5s }\nmetrics: { histogram: false }\nsites:\n",
    );
    for i in 0..n {
        let version = if i == 0 { changed } else { 0 };
        out.push_str(&format!(
            "  - id: s{i}\n    url: http://{target}/s{i}?v={version}\n"
        ));
    }
    out
}

/// The longest gap between consecutive arrivals within `[from, to]`.
fn max_gap(arrivals: &[Instant], from: Instant, to: Instant) -> (Duration, usize) {
    let inside: Vec<Instant> = arrivals
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let gap = inside
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (gap, inside.len())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: only build them then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("SITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(1 << 16)));
    let log = arrivals.clone();
    tokio::spawn(serve_target(listener, None, move |_req| {
        log.lock().unwrap().push(Instant::now());
        async { respond(200, "ok") }
    }));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sites.yaml");
    std::fs::write(&path, config(n, target, 0)).unwrap();

    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let exporter = start_sitewatch(&path, &format!("0-{}", cpus - 1));
    let startup = started.elapsed();
    let (addr, pid) = (exporter.addr.clone(), exporter.child.id());

    // Let the schedule settle, then measure a quiet window as the baseline.
    let window = Duration::from_secs(10);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet_from = Instant::now();
    tokio::time::sleep(window).await;
    let quiet_to = Instant::now();

    let client = reqwest::Client::new();
    let mut times = Vec::new();
    let reload_from = Instant::now();
    for r in 1..=RELOADS {
        std::fs::write(&path, config(n, target, r)).unwrap();
        let t = Instant::now();
        let resp = client
            .post(format!("http://{addr}/-/reload"))
            .send()
            .await
            .expect("reload request");
        assert!(
            resp.status().is_success(),
            "reload failed: {}",
            resp.text().await.unwrap_or_default()
        );
        times.push(t.elapsed());
        tokio::time::sleep(window / RELOADS as u32).await;
    }
    let reload_to = Instant::now();
    let rss = rss_mib(pid);

    let all = arrivals.lock().unwrap().clone();
    let (quiet_gap, quiet_probes) = max_gap(&all, quiet_from, quiet_to);
    let (reload_gap, reload_probes) = max_gap(&all, reload_from, reload_to);
    drop(exporter);

    println!("sitewatch reload benchmark: {n} sites, interval 10m, one site changed per reload");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| start-up to listening (load + schedule {n} sites) | {:.2} s |",
        startup.as_secs_f64()
    );
    println!(
        "| reload via POST /-/reload, median of {RELOADS} | {:.0} ms |",
        median(times.clone()).as_secs_f64() * 1e3
    );
    println!(
        "| reload via POST /-/reload, slowest | {:.0} ms |",
        times.iter().max().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "| probes arriving, quiet window ({:.0} s) | {quiet_probes} |",
        (quiet_to - quiet_from).as_secs_f64()
    );
    println!(
        "| probes arriving, reload window ({:.0} s) | {reload_probes} |",
        (reload_to - reload_from).as_secs_f64()
    );
    println!(
        "| longest gap between probes, quiet window | {:.0} ms |",
        quiet_gap.as_secs_f64() * 1e3
    );
    println!(
        "| longest gap between probes, during reloads | {:.0} ms |",
        reload_gap.as_secs_f64() * 1e3
    );
    println!("| exporter resident memory after reloads | {rss:.0} MiB |");
}

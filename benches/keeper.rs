//! Keeper ingest into PostgreSQL: `cargo bench --bench keeper`.
//!
//! A loopback stand-in for the exporter serves `/api/v1/results` pages of synthetic results as
//! fast as the keeper asks (and `/api/v1/sites` with 1,000 sites), so the figure is the keeper's
//! and the database's, not the probes'. It runs the real `sitewatch keeper` against a fresh
//! database on the PostgreSQL at `SITEWATCH_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`) for `SECONDS` (default 30) and prints rows/s and the
//! keeper's resident memory over time.

mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use sitewatch::demo::serve_target;
use sqlx::postgres::PgPoolOptions;
use support::rss_mib;
use tokio::net::TcpListener;

const SITES: u64 = 1_000;

fn page(after: u64, limit: u64) -> String {
    let mut out = String::with_capacity(limit as usize * 420);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for seq in after + 1..=after + limit {
        let site = seq % SITES;
        let (result, code, error) = match seq % 20 {
            0 => (
                "http_status",
                500,
                "\"status 500 is not in valid_status [200-299]\"",
            ),
            1 => ("timeout", 0, "\"timed out after 10s during processing\""),
            _ => ("success", 200, "null"),
        };
        let _ = writeln!(
            out,
            r#"{{"seq":{seq},"instance":"bench000000000001","site":"s{site}","tenant":"t{t}","url":"http://127.0.0.1:1/s{site}","location":null,"labels":{{}},"regex":null,"started_at":{now},"duration_seconds":0.0{d:03},"result":"{result}","success":{ok},"error":{error},"phases":{{"resolve":0.0,"connect":0.0001,"tls":0.0,"processing":0.004,"transfer":0.0002}},"status_code":{code},"content_length":4096,"redirects":0,"ssl":false,"http_version":1.1,"cert_expiry":null,"failed_due_to_regex":false,"address":"127.0.0.1"}}"#,
            t = site % 10,
            d = seq % 1000,
            ok = result == "success",
        );
    }
    out
}

fn sites() -> String {
    let list: Vec<String> = (0..SITES)
        .map(|s| format!(r#"{{"id":"s{s}","tenant":"t{}","url":"http://127.0.0.1:1/s{s}","regex":null,"labels":{{}}}}"#, s % 10))
        .collect();
    format!(r#"{{"sites":[{}]}}"#, list.join(","))
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let base = std::env::var("SITEWATCH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL");
    let db = "sitewatch_bench_keeper";
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&admin)
        .await;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |req| async move {
        let q = req.uri().query().unwrap_or("");
        let param = |name: &str| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let (body, last) = if req.uri().path() == "/api/v1/sites" {
            (sites(), 0)
        } else {
            let after = param("after=").unwrap_or(0);
            let limit = param("limit=").unwrap_or(10_000).min(10_000);
            (page(after, limit), after + limit)
        };
        http::Response::builder()
            .header("content-type", "application/x-ndjson")
            .header("x-sitewatch-instance", "bench000000000001")
            .header("x-sitewatch-first-seq", "1")
            .header("x-sitewatch-last-seq", last)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }));

    let database_url = format!("{base}/{db}");
    let keeper = support::spawn_announcing(
        std::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .args([
                "keeper",
                "--source",
                &format!("http://{source}"),
                "--database-url",
                &database_url,
            ])
            .args([
                "--web.listen-address",
                "127.0.0.1:0",
                "--log.level",
                "warn,sitewatch=info",
            ]),
    );
    let pid = keeper.child.id();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM stats")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    // Warm up until the schema exists and rows flow.
    let warm = Instant::now();
    while count().await == 0 && warm.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (c0, t0) = (count().await, Instant::now());
    let mut rss = Vec::new();
    for _ in 0..seconds / 5 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        rss.push(rss_mib(pid));
    }
    let (c1, secs) = (count().await, t0.elapsed().as_secs_f64());
    drop(keeper);
    println!("keeper ingest into PostgreSQL, {seconds} s, batches of the default size");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| rows committed per second | {:.0} |",
        (c1 - c0) as f64 / secs
    );
    println!("| rows committed in the window | {} |", c1 - c0);
    println!(
        "| keeper RSS every 5 s (MiB) | {} |",
        rss.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

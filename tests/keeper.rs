//! The keeper against a real SQLite file and a real PostgreSQL: rows, sites, resume without
//! duplicates or holes, exporter restarts. Waits are conditions with deadlines.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{loopback, Exporter, DEADLINE};
use sitewatch::demo::{respond, serve_target};
use sqlx::any::AnyPoolOptions;
use sqlx::Row;

async fn target() -> SocketAddr {
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |req| async move {
        match req.uri().path() {
            "/ok" => respond(200, "fine"),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                respond(200, "late")
            }
            _ => respond(500, "broken"),
        }
    }));
    addr
}

fn sites(t: SocketAddr, refused: u16, with_bad: bool) -> String {
    let mut s = format!(
        "defaults: {{ interval: 1s, timeout: 500ms }}\nsites:\n\
         \x20 - id: good\n    url: http://{t}/ok\n    regex: fine\n    tenant: acme\n    labels: {{ team: web }}\n\
         \x20 - id: good-again\n    url: http://{t}/ok\n    tenant: acme\n\
         \x20 - id: refused\n    url: http://127.0.0.1:{refused}/\n"
    );
    if with_bad {
        s.push_str(&format!(
            "  - id: bad\n    url: http://{t}/fail\n\
             \x20 - id: wrong\n    url: http://{t}/ok\n    regex: absent-text\n\
             \x20 - id: slow\n    url: http://{t}/slow\n"
        ));
    }
    s
}

/// A database for one test: a SQLite file, or a fresh PostgreSQL database.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keeper.db").display());
    Db {
        url,
        _dir: Some(dir),
    }
}

/// A new database on the PostgreSQL the test script provides; `None` (skip) outside CI when
/// none is reachable.
async fn postgres(name: &str) -> Option<Db> {
    sqlx::any::install_default_drivers();
    let base = std::env::var("SITEWATCH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let admin = match AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "PostgreSQL is required in CI: {e}"
            );
            eprintln!("SKIPPED: no PostgreSQL at {base}: {e}");
            return None;
        }
    };
    // Databases left by earlier runs of this test go first.
    let stale = sqlx::query(&format!(
        "SELECT datname FROM pg_database WHERE datname LIKE 'sitewatch_test_{name}_%'"
    ))
    .fetch_all(&admin)
    .await
    .unwrap_or_default();
    for row in stale {
        let old: String = row.get(0);
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    let db = format!("sitewatch_test_{name}_{}", std::process::id());
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute(&admin)
        .await;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    Some(Db {
        url: format!("{base}/{db}"),
        _dir: None,
    })
}

/// Rows of `sql`, every column cast to text by the query.
async fn query(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap_or_default();
    pool.close().await;
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        })
        .collect()
}

async fn wait_query(
    url: &str,
    sql: &str,
    what: &str,
    ok: impl Fn(&[Vec<Option<String>>]) -> bool,
) -> Vec<Vec<Option<String>>> {
    let start = Instant::now();
    loop {
        let rows = query(url, sql).await;
        if ok(&rows) {
            return rows;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn keeper(source: &str, db: &str) -> Exporter {
    common::keeper(source, db, &[])
}

fn keeper_with(source: &str, db: &str, extra: &[&str]) -> Exporter {
    common::keeper(source, db, extra)
}

fn one(rows: &[Vec<Option<String>>]) -> String {
    rows[0][0].clone().unwrap_or_default()
}

async fn rows_and_sites_arrive(db: Db) {
    let t = target().await;
    let refused = common::refused_port().await;
    let ex = Exporter::start(&sites(t, refused, true));
    let k = keeper(&format!("http://{}", ex.addr), &db.url);
    let sql = "SELECT site_id, CAST(status_code AS TEXT), result, CAST(regex_ok AS TEXT), error, tenant, CAST(duration_seconds > 0 AS TEXT) FROM stats ORDER BY seq";
    let rows = wait_query(&db.url, sql, "a row of every site", |rows| {
        ["good", "good-again", "refused", "bad", "wrong", "slow"]
            .iter()
            .all(|id| rows.iter().any(|r| r[0].as_deref() == Some(*id)))
    })
    .await;
    let of = |id: &str| {
        rows.iter()
            .find(|r| r[0].as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let truthy = |v: &Option<String>| matches!(v.as_deref(), Some("true" | "1"));
    let good = of("good");
    assert_eq!(good[1].as_deref(), Some("200"));
    assert_eq!(good[2].as_deref(), Some("success"));
    assert!(truthy(&good[3]), "regex_ok {good:?}");
    assert_eq!(good[4], None);
    assert_eq!(good[5].as_deref(), Some("acme"));
    assert!(truthy(&good[6]));
    let bad = of("bad");
    assert_eq!(bad[1].as_deref(), Some("500"));
    assert_eq!(bad[2].as_deref(), Some("http_status"));
    assert_eq!(bad[3], None, "no regex configured");
    assert!(bad[4].as_deref().unwrap().contains("status 500"));
    assert_eq!(bad[5].as_deref(), Some(""));
    let refused_row = of("refused");
    assert_eq!(refused_row[1].as_deref(), Some("0"));
    assert_eq!(refused_row[2].as_deref(), Some("connect_error"));
    let wrong = of("wrong");
    assert_eq!(wrong[2].as_deref(), Some("regex"));
    assert!(
        matches!(wrong[3].as_deref(), Some("false" | "0")),
        "regex_ok {wrong:?}"
    );
    let slow = of("slow");
    assert_eq!(slow[2].as_deref(), Some("timeout"));
    assert!(slow[4].as_deref().unwrap().contains("timed out"));

    // Sites: the same URL under two ids is two sites; labels and regex mirrored.
    let site_rows = wait_query(
        &db.url,
        "SELECT site_id, url, regex, CAST(labels AS TEXT), tenant FROM sites ORDER BY site_id",
        "six sites",
        |rows| rows.len() == 6,
    )
    .await;
    let site = |id: &str| {
        site_rows
            .iter()
            .find(|r| r[0].as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let (good_site, again) = (site("good"), site("good-again"));
    assert_eq!(good_site[1], again[1]);
    assert_eq!(good_site[2].as_deref(), Some("fine"));
    assert!(good_site[3].as_deref().unwrap().contains("\"team\""));

    // A removed site keeps its rows and gets removed_at.
    std::fs::write(ex.config_path(), sites(t, refused, false)).unwrap();
    wait_query(
        &db.url,
        "SELECT site_id FROM sites WHERE removed_at IS NOT NULL",
        "bad, wrong and slow marked removed",
        |rows| rows.len() == 3 && rows.iter().any(|r| r[0].as_deref() == Some("bad")),
    )
    .await;
    let kept = query(
        &db.url,
        "SELECT CAST(COUNT(*) AS TEXT) FROM stats WHERE site_id = 'bad'",
    )
    .await;
    assert!(one(&kept).parse::<u64>().unwrap() >= 1);
    let m = k.scrape().await;
    assert!(m.get("sitewatch_keeper_rows_written_total", &[]).unwrap() >= 4.0);
    assert_eq!(m.get("sitewatch_keeper_rows_dropped_total", &[]), Some(0.0));
}

#[tokio::test]
async fn sqlite_rows_and_sites_arrive_with_their_values() {
    rows_and_sites_arrive(sqlite()).await;
}

#[tokio::test]
async fn postgres_rows_and_sites_arrive_with_their_values() {
    if let Some(db) = postgres("rows").await {
        rows_and_sites_arrive(db).await;
    }
}

/// Count, distinct count, min and max of `seq` for one instance.
async fn seq_stats(url: &str) -> (u64, u64, u64, u64) {
    let r = query(
        url,
        "SELECT CAST(COUNT(*) AS TEXT), CAST(COUNT(DISTINCT seq) AS TEXT), CAST(MIN(seq) AS TEXT), CAST(MAX(seq) AS TEXT) FROM stats",
    )
    .await;
    let n = |i: usize| r[0][i].as_deref().unwrap_or("0").parse::<u64>().unwrap();
    (n(0), n(1), n(2), n(3))
}

async fn restart_resumes_without_duplicates_or_holes(db: Db) {
    let t = target().await;
    let refused = common::refused_port().await;
    let ex = Exporter::start(&sites(t, refused, true));
    let source = format!("http://{}", ex.addr);
    let mut k = keeper(&source, &db.url);
    wait_query(
        &db.url,
        "SELECT CAST(seq AS TEXT) FROM stats",
        "some rows",
        |r| r.len() >= 8,
    )
    .await;
    // Killed mid-stream: no chance to flush.
    k.child.kill().unwrap();
    k.child.wait().unwrap();
    let (_, _, _, before) = seq_stats(&db.url).await;
    let _k2 = keeper(&source, &db.url);
    let start = Instant::now();
    loop {
        let (count, distinct, min, max) = seq_stats(&db.url).await;
        assert_eq!(count, distinct, "duplicate rows after a restart");
        if max >= before + 8 {
            assert_eq!(min, 1);
            assert_eq!(
                count,
                max - min + 1,
                "a hole in the sequence after a restart"
            );
            break;
        }
        assert!(start.elapsed() < DEADLINE, "no progress after restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sqlite_keeper_restart_resumes_exactly() {
    restart_resumes_without_duplicates_or_holes(sqlite()).await;
}

#[tokio::test]
async fn postgres_keeper_restart_resumes_exactly() {
    if let Some(db) = postgres("resume").await {
        restart_resumes_without_duplicates_or_holes(db).await;
    }
}

#[tokio::test]
async fn an_exporter_restart_is_detected() {
    let db = sqlite();
    let t = target().await;
    let refused = common::refused_port().await;
    // Both exporter runs listen on the same port, as a restarted pod would.
    let port = common::refused_port().await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("sites.yaml");
    std::fs::write(&config, sites(t, refused, true)).unwrap();
    let start_exporter = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitewatch"));
        cmd.args(["run", "--config"])
            .arg(&config)
            .args(["--web.listen-address", &format!("127.0.0.1:{port}")]);
        Exporter::spawn(cmd, tempfile::tempdir().unwrap())
    };
    let ex = start_exporter();
    let k = keeper(&format!("http://127.0.0.1:{port}"), &db.url);
    wait_query(
        &db.url,
        "SELECT CAST(seq AS TEXT) FROM stats",
        "rows",
        |r| r.len() >= 4,
    )
    .await;
    drop(ex);
    let _ex2 = start_exporter();
    let rows = wait_query(
        &db.url,
        "SELECT DISTINCT instance FROM stats",
        "rows from the second exporter run",
        |r| r.len() == 2,
    )
    .await;
    assert_ne!(rows[0][0], rows[1][0]);
    let m = k.scrape().await;
    assert_eq!(
        m.get("sitewatch_keeper_exporter_restarts_total", &[]),
        Some(1.0)
    );
}

/// The exporter's newest sequence number.
async fn exporter_last_seq(ex: &Exporter) -> u64 {
    let r = reqwest::get(ex.url("/api/v1/results?after=0&limit=1"))
        .await
        .unwrap();
    r.headers()["x-sitewatch-last-seq"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Makes the database unreachable for the keeper (connections refused and the open ones
/// killed) until `until` says the outage has lasted long enough, then restores it.
async fn outage(db: &Db, until: impl std::future::Future<Output = ()>) {
    let (base, name) = db.url.rsplit_once('/').unwrap();
    let admin = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "SELECT CAST(pg_terminate_backend(pid) AS TEXT) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .fetch_all(&admin)
    .await
    .unwrap();
    until.await;
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&admin)
        .await
        .unwrap();
}

async fn database_outage(
    exporter_buffer: &str,
    results_during_outage: u64,
) -> Option<(u64, f64, f64)> {
    let db = postgres(&format!("outage{exporter_buffer}")).await?;
    let t = target().await;
    let refused = common::refused_port().await;
    let ex = Exporter::start_with(
        &sites(t, refused, true),
        &["--results.buffer-size", exporter_buffer],
        &[],
    );
    let k = keeper_with(
        &format!("http://{}", ex.addr),
        &db.url,
        &["--queue.max-rows", "5", "--batch-size", "3"],
    );
    wait_query(
        &db.url,
        "SELECT CAST(seq AS TEXT) FROM stats",
        "rows",
        |r| r.len() >= 4,
    )
    .await;
    let at_start = exporter_last_seq(&ex).await;
    outage(&db, async {
        let start = Instant::now();
        while exporter_last_seq(&ex).await < at_start + results_during_outage {
            assert!(start.elapsed() < DEADLINE);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let target_seq = exporter_last_seq(&ex).await;
    let start = Instant::now();
    loop {
        let (count, distinct, min, max) = seq_stats(&db.url).await;
        let m = k.scrape().await;
        let queued = m.get("sitewatch_keeper_queue_rows", &[]).unwrap_or(1.0);
        if max >= target_seq && queued == 0.0 {
            assert_eq!(count, distinct, "duplicates after the outage");
            assert_eq!(min, 1);
            let dropped = m.get("sitewatch_keeper_rows_dropped_total", &[]).unwrap();
            let lost = m.get("sitewatch_keeper_rows_lost_total", &[]).unwrap();
            assert!(m.get("sitewatch_keeper_write_errors_total", &[]).unwrap() >= 1.0);
            // Every result is written, or counted as dropped or lost.
            assert_eq!(
                count as f64 + dropped + lost,
                max as f64,
                "{count} {dropped} {lost} {max}"
            );
            return Some((count, dropped, lost));
        }
        assert!(
            start.elapsed() < DEADLINE * 2,
            "keeper did not catch up after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_database_outage_that_fits_the_buffers_loses_nothing() {
    // The keeper's queue holds 5 rows; the exporter's buffer holds the rest of the outage.
    if let Some((_, dropped, lost)) = database_outage("100000", 12).await {
        assert_eq!(dropped, 0.0);
        assert_eq!(lost, 0.0);
    }
}

#[tokio::test]
async fn a_database_outage_longer_than_the_buffers_counts_what_it_lost() {
    if let Some((_, dropped, lost)) = database_outage("6", 24).await {
        assert!(dropped + lost >= 10.0, "dropped {dropped}, lost {lost}");
    }
}

#[tokio::test]
async fn a_slow_database_slows_only_the_keeper() {
    let Some(db) = postgres("slow").await else {
        return;
    };
    let t = target().await;
    let refused = common::refused_port().await;
    let ex = Exporter::start(&sites(t, refused, true));
    let k = keeper_with(
        &format!("http://{}", ex.addr),
        &db.url,
        &["--batch-size", "2"],
    );
    wait_query(
        &db.url,
        "SELECT CAST(seq AS TEXT) FROM stats",
        "rows",
        |r| r.len() >= 4,
    )
    .await;
    // Every INSERT statement now takes 300 ms longer.
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION slow_down() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER slow_down AFTER INSERT ON stats FOR EACH STATEMENT EXECUTE FUNCTION slow_down();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let from = exporter_last_seq(&ex).await;
    // The exporter goes on probing whatever the database does (it never waits for the keeper).
    ex.wait_for("30 more results", |s| {
        let total = s.total_probes();
        (total >= from as f64 + 30.0).then_some(())
    })
    .await;
    let target_seq = exporter_last_seq(&ex).await;
    let deadline = Instant::now() + DEADLINE * 2;
    loop {
        let (count, distinct, min, max) = seq_stats(&db.url).await;
        if max >= target_seq {
            assert_eq!((count, min), (distinct, 1));
            assert_eq!(count, max, "no hole");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keeper did not keep up with a slow database"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = k.scrape().await;
    let slow_batches = m
        .get(
            "sitewatch_keeper_batch_duration_seconds_bucket",
            &[("le", "0.25")],
        )
        .unwrap()
        < m.get("sitewatch_keeper_batch_duration_seconds_count", &[])
            .unwrap();
    assert!(slow_batches, "the slowdown shows in the batch durations");
    assert_eq!(m.get("sitewatch_keeper_rows_dropped_total", &[]), Some(0.0));
}

#[tokio::test]
async fn sharded_keepers_share_one_database_without_marking_each_others_sites_removed() {
    let Some(db) = postgres("shards").await else {
        return;
    };
    let t = target().await;
    let site = |i: usize| {
        format!("  - id: s{i}\n    url: http://{t}/ok\n    interval: 1s\n    timeout: 900ms\n")
    };
    let all: String = (0..20).map(site).collect();
    let shard = |i: &str| {
        Exporter::start_with(
            &format!("sites:\n{all}"),
            &["--shard.count", "2", "--shard.index", i],
            &[],
        )
    };
    let (ex0, ex1) = (shard("0"), shard("1"));
    let _k0 = keeper(&format!("http://{}", ex0.addr), &db.url);
    let _k1 = keeper(&format!("http://{}", ex1.addr), &db.url);
    wait_query(
        &db.url,
        "SELECT CAST(count(*) AS TEXT) FROM sites WHERE removed_at IS NULL",
        "both shards' sites",
        |r| one(r) == "20",
    )
    .await;
    // Shard 0 drops one of its sites: its keeper marks that one removed, and none of shard 1's.
    let gone = (0..20)
        .find(|i| sitewatch::shard::owner(&format!("s{i}"), 2) == 0)
        .expect("shard 0 owns a site");
    let kept: String = (0..20).filter(|i| *i != gone).map(site).collect();
    std::fs::write(ex0.config_path(), format!("sites:\n{kept}")).unwrap();
    let removed = wait_query(
        &db.url,
        "SELECT site_id FROM sites WHERE removed_at IS NOT NULL ORDER BY site_id",
        "the dropped site marked removed",
        |r| !r.is_empty(),
    )
    .await;
    assert_eq!(removed, vec![vec![Some(format!("s{gone}"))]]);
    let live = query(
        &db.url,
        "SELECT CAST(count(*) AS TEXT) FROM sites WHERE removed_at IS NULL",
    )
    .await;
    assert_eq!(one(&live), "19");
}

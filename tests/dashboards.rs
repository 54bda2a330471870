//! The Grafana dashboards and the Prometheus rules, proven against real data: a real
//! `prometheus` scrapes a real exporter (probing loopback targets, failing ones included) and
//! a real keeper, and every query of every dashboard must parse and return data. The alert
//! rules pass `promtool test rules`; the dashboards match `@grafana/schema`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, loopback, require_tool, Exporter, DEADLINE};
use sitewatch::demo::{respond, serve_target, TestCertificate};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs a command in the repository; fails the test with its output if it fails.
fn check(cmd: &mut Command) {
    let out = cmd
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboards_are_what_the_generator_writes() {
    if !require_tool("python3") {
        return;
    }
    check(Command::new("python3").args(["grafana/generate.py", "--check"]));
}

#[test]
fn dashboards_match_the_grafana_schema() {
    if !require_tool("node") {
        return;
    }
    let modules = repo("grafana/schema-check/node_modules/@grafana/schema");
    if !modules.exists() {
        // scripts/test installs them (npm ci); a bare `cargo test` may not have.
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("grafana/schema-check/node_modules is missing: scripts/test runs npm ci there");
        }
        eprintln!("SKIPPED: run `npm ci --prefix grafana/schema-check` (scripts/test does)");
        return;
    }
    check(Command::new("node").arg("grafana/schema-check/check.mjs"));
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    if !require_tool("promtool") {
        return;
    }
    check(Command::new("promtool").args([
        "check",
        "rules",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/rules.yml",
    ]));
    check(Command::new("promtool").args(["check", "config", "deploy/prometheus/prometheus.yml"]));
    check(Command::new("promtool").args(["test", "rules", "deploy/prometheus/alerts.test.yml"]));
}

/// Every PromQL expression of a dashboard: panel targets, and query variables (as
/// `count by (label) (metric)`, which returns data exactly when `label_values` has a value).
fn expressions(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap().to_string();
            out.push((title, t["expr"].as_str().unwrap().to_string()));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q:?} is not label_values(metric, label)"));
        let (metric, label) = inner.rsplit_once(',').unwrap();
        out.push((
            format!("variable {}", var["name"]),
            format!("count by ({}) ({})", label.trim(), metric.trim()),
        ));
    }
    out
}

/// Template variables as a user would have them: every tenant and location, the flaky TLS
/// site, the test's jobs.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$__interval", "15s")
        .replace("$tenant", ".*")
        .replace("$location", ".*")
        .replace("$site", "tls-flaky")
        .replace("$keeper_job", "sitewatch-keeper")
        .replace("$job", "sitewatch")
        .replace("$instance", ".*")
}

/// Names of the exported metrics an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b((?:probe|sitewatch|process)_[a-z0-9_]+)").unwrap();
    re.captures_iter(expr).map(|c| c[1].to_string()).collect()
}

async fn instant_query(client: &reqwest::Client, port: u16, expr: &str) -> Result<usize, String> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if body["status"] != "success" {
        return Err(format!("query failed: {text}"));
    }
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !require_tool("prometheus") {
        return;
    }
    // Targets: healthy, failing, a maintenance page (content check), and a TLS site that fails
    // every other probe (status, phases, certificate and failures all have data).
    let listener = loopback([127, 0, 0, 1]).await;
    let http = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |req| async move {
        match req.uri().path() {
            "/ok" => respond(200, "all good"),
            "/maintenance" => respond(200, "down for maintenance"),
            _ => respond(500, "broken"),
        }
    }));
    let now = common::unix_now();
    let cert = TestCertificate::generate(now + 10 * 86_400).unwrap();
    let listener = loopback([127, 0, 0, 1]).await;
    let https = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(serve_target(
        listener,
        Some(cert.server_config().unwrap()),
        move |_req| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            async move {
                if n % 2 == 0 {
                    respond(200, "secure")
                } else {
                    respond(503, "flaky")
                }
            }
        },
    ));
    // A remote-write receiver that accepts everything.
    let listener = loopback([127, 0, 0, 1]).await;
    let rw = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |_req| async {
        respond(204, "")
    }));

    let fixtures = tempfile::tempdir().unwrap();
    let ca = common::write_file(fixtures.path(), "ca.pem", &cert.ca_pem);
    let site = |id: &str, url: String, extra: &str| {
        format!("  - id: {id}\n    url: {url}\n    interval: 1s\n    timeout: 900ms\n{extra}")
    };
    let config = format!(
        "remote_write:\n  - url: http://{rw}/api/v1/write\n    name: rx\n    queue: {{ batch_send_deadline: 100ms }}\nsites:\n{}{}{}{}",
        site("up", format!("http://{http}/ok"), "    tenant: acme\n"),
        site("down", format!("http://{http}/fail"), ""),
        site(
            "maintenance",
            format!("http://{http}/maintenance"),
            "    regex_absent: maintenance\n"
        ),
        site(
            "tls-flaky",
            format!("https://127.0.0.1:{}/", https.port()),
            &format!("    tls: {{ ca_file: {} }}\n", ca.display())
        ),
    );
    let ex = Exporter::start_with(&config, &["--location", "lab"], &[]);
    let db = fixtures.path().join("keeper.db");
    let keeper = common::keeper(
        &format!("http://{}", ex.addr),
        &format!("sqlite://{}", db.display()),
        &[],
    );

    // Prometheus scraping both every second.
    let prom_dir = tempfile::tempdir().unwrap();
    let prom_config = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: sitewatch\n    static_configs: [{{ targets: ['{}'] }}]\n  - job_name: sitewatch-keeper\n    static_configs: [{{ targets: ['{}'] }}]\n",
            ex.addr, keeper.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prom = Kill(&mut prom);

    // Every metric a dashboard names must be one the exporter or the keeper exports.
    let exposition = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect()
    };
    let client = reqwest::Client::new();
    ex.probed_all(&["up", "down", "maintenance", "tls-flaky"])
        .await;
    let mut exported = exposition(&common::get_text(&ex.url("/metrics")).await);
    exported.extend(exposition(&common::get_text(&keeper.url("/metrics")).await));

    let mut all = Vec::new();
    for file in ["overview.json", "site.json", "exporter.json"] {
        let text = std::fs::read_to_string(repo("grafana/dashboards").join(file)).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        // No hard-coded datasource: every reference goes through the variable.
        for (i, _) in text.match_indices("\"uid\": \"") {
            let rest = &text[i + 8..];
            let uid = &rest[..rest.find('"').unwrap()];
            assert!(
                uid == "${datasource}" || uid.starts_with("sitewatch-"),
                "{file}: hard-coded uid {uid:?}"
            );
        }
        for (title, expr) in expressions(&dashboard) {
            for name in metric_names(&expr) {
                assert!(
                    exported.contains(&name),
                    "{file}: panel {title:?} uses {name}, which neither the exporter nor the keeper exports"
                );
            }
            all.push((file, title, substitute(&expr)));
        }
    }
    assert!(all.len() > 40, "{} expressions", all.len());

    // Every expression parses and returns data, once Prometheus has scraped for a while.
    let start = Instant::now();
    loop {
        let mut empty = Vec::new();
        for (file, title, expr) in &all {
            match instant_query(&client, port, expr).await {
                Ok(0) => empty.push(format!("{file}: {title}: {expr}")),
                Ok(_) => {}
                Err(e) if e.contains("connection") || e.contains("error sending") => {
                    empty.push(format!("prometheus not up yet: {e}"));
                    break;
                }
                Err(e) => panic!("{file}: panel {title:?}: {expr}\n{e}"),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE * 2,
            "queries without data:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! The exporter as a whole: endpoints, exposition formats checked by independent parsers,
//! reload safety, graceful shutdown, `check-config` and `demo`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{loopback, require_tool, Exporter, DEADLINE};
use sitewatch::demo::{respond, serve_target};

async fn healthy_target() -> std::net::SocketAddr {
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |req| async move {
        match req.uri().path() {
            "/" => respond(200, "ok"),
            _ => respond(500, "no"),
        }
    }));
    addr
}

fn two_sites(t: std::net::SocketAddr) -> String {
    format!(
        "defaults: {{ interval: 1s, timeout: 500ms }}\nsites:\n\
         \x20 - id: up\n    url: http://{t}/\n    labels: {{ note: 'quote \" and \\ backslash' }}\n\
         \x20 - id: down\n    url: http://{t}/fail\n"
    )
}

#[tokio::test]
async fn metrics_pass_promtool_check_metrics() {
    let t = healthy_target().await;
    let ex = Exporter::start(&two_sites(t));
    ex.probed_all(&["up", "down"]).await;
    let resp = reqwest::get(ex.url("/metrics")).await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    // The spec's three groups are all there.
    for name in [
        "probe_success",
        "probe_duration_seconds",
        "probe_http_duration_seconds",
        "probe_http_status_code",
        "probe_http_content_length",
        "probe_http_redirects",
        "probe_http_ssl",
        "probe_http_version",
        "probe_failed_due_to_regex",
        "probe_dns_lookup_time_seconds",
        "sitewatch_probe_duration_seconds_bucket",
        "sitewatch_probes_total",
        "sitewatch_probe_last_timestamp_seconds",
        "sitewatch_build_info",
        "sitewatch_sites",
        "sitewatch_probes_in_flight",
        "sitewatch_schedule_lag_seconds_bucket",
        "sitewatch_probes_skipped_total",
        "sitewatch_config_last_reload_successful",
        "sitewatch_config_last_reload_success_timestamp_seconds",
        "sitewatch_config_reloads_total",
        "sitewatch_series",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
    // Label values are escaped.
    assert!(
        text.contains(r#"note="quote \" and \\ backslash""#),
        "{text}"
    );
    common::assert_promtool_clean(&text);
}

#[tokio::test]
async fn openmetrics_is_served_when_negotiated_and_parses() {
    let t = healthy_target().await;
    let ex = Exporter::start(&two_sites(t));
    ex.probed("up").await;
    let resp = reqwest::Client::new()
        .get(ex.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE sitewatch_probes counter\n"));
    if !require_tool("python3") {
        return;
    }
    // An independent parser: the Python client's strict OpenMetrics parser.
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
                  fams = list(p(sys.stdin.read()))\nprint(len(fams))\n";
    let (ok, out) = common::pipe(Command::new("python3").args(["-c", script]), &text);
    if !ok && out.contains("No module named 'prometheus_client'") {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "python prometheus_client is required in CI"
        );
        eprintln!("SKIPPED: python prometheus_client not installed; run scripts/test");
        return;
    }
    assert!(
        ok,
        "OpenMetrics parser rejected the output:\n{out}\n---\n{text}"
    );
    assert!(out.trim().parse::<u32>().unwrap() > 20, "{out}");
}

#[tokio::test]
async fn health_and_readiness_endpoints() {
    let t = healthy_target().await;
    let ex = Exporter::start(&two_sites(t));
    for path in ["/-/healthy", "/-/ready"] {
        let r = reqwest::get(ex.url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = reqwest::get(ex.url("/no-such-page")).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::get(ex.url("/-/reload")).await.unwrap();
    assert_eq!(r.status(), 405);
    // Without --web.enable-lifecycle nobody who reaches the port can trigger a reload.
    let r = reqwest::Client::new()
        .post(ex.url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("--web.enable-lifecycle"));
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_config_and_a_good_one_applies() {
    let t = healthy_target().await;
    let ex = Exporter::start_with(&two_sites(t), &["--web.enable-lifecycle"], &[]);
    ex.probed_all(&["up", "down"]).await;
    let client = reqwest::Client::new();

    std::fs::write(ex.config_path(), "sites:\n  - id: up\n    url: not a url\n").unwrap();
    let r = client.post(ex.url("/-/reload")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("site \"up\"") && body.contains("field `url`"),
        "{body}"
    );
    let s = ex.scrape().await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        s.get("sitewatch_config_reloads_total", &[("result", "failure")]),
        Some(1.0)
    );
    assert_eq!(s.get("sitewatch_sites", &[]), Some(2.0));
    // Probing goes on with the old configuration.
    let before = s.probes("up", "success");
    ex.wait_for("another probe of the old config", |s| {
        (s.probes("up", "success") > before).then_some(())
    })
    .await;

    // Remove `down`: its series disappear, `up` keeps its counters.
    std::fs::write(
        ex.config_path(),
        format!("defaults: {{ interval: 1s, timeout: 500ms }}\nsites:\n  - id: up\n    url: http://{t}/\n    labels: {{ note: 'quote \" and \\ backslash' }}\n"),
    )
    .unwrap();
    let before = ex.scrape().await.probes("up", "success");
    let r = client.post(ex.url("/-/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let s = ex.scrape().await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(s.get("sitewatch_sites", &[]), Some(1.0));
    assert!(s.of_site("down").is_empty(), "{}", s.text);
    assert!(
        s.probes("up", "success") >= before,
        "an unchanged site keeps its series"
    );
}

#[test]
fn sigterm_drains_and_exits_zero_within_the_grace_period() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(healthy_target());
    let mut ex = Exporter::start_with(&two_sites(t), &["--shutdown.grace", "3s"], &[]);
    rt.block_on(ex.probed("up"));
    let pid = ex.child.id().to_string();
    let started = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(status) = ex.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}\n{}", ex.logs());
    // Well inside the grace period plus start-up slack.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(ex.logs().contains("shutting down"));
}

fn check_config(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_config_lists_every_error_with_file_site_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "sites:\n  - id: one\n    url: http://127.0.0.1:1/\n  - id: two\n    url: ftp://x/\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "sites:\n  - id: one\n    url: http://127.0.0.1:1/\n  - id: three\n    url: http://127.0.0.1:1/\n    regex: '(unclosed'\n    timeout: 1m\n    interval: 30s\n",
    )
    .unwrap();
    let (code, out) = check_config(dir.path());
    assert_eq!(code, 1, "{out}");
    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("b.yaml").display().to_string();
    assert!(
        out.contains(&format!("{a}:5: site \"two\": field `url`")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{b}:2: site \"one\": field `id`: duplicate site id"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{b}:6: site \"three\": field `regex`")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{b}:7: site \"three\": field `timeout`")),
        "{out}"
    );
    assert!(out.contains("4 errors"), "{out}");
}

#[test]
fn shipped_example_configs_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let (code, out) = check_config(&dir);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");
}

#[tokio::test]
async fn demo_shows_successes_failures_and_a_certificate_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitewatch"));
    cmd.args(["demo", "--web.listen-address", "127.0.0.1:0"]);
    let ex = Exporter::spawn(cmd, dir);
    let s = ex
        .wait_for("the demo's probes", |s| {
            let done = [
                "demo-shop",
                "demo-slow",
                "demo-maintenance",
                "demo-error",
                "demo-tls-expiring",
                "demo-refused",
                "demo-health",
                "demo-health-degraded",
            ]
            .iter()
            .all(|id| s.site(id, "probe_success").is_some());
            done.then(|| s.clone())
        })
        .await;
    assert_eq!(s.site("demo-shop", "probe_success"), Some(1.0));
    assert!(s.probes("demo-slow", "timeout") >= 1.0);
    assert!(s.probes("demo-maintenance", "regex") >= 1.0);
    assert!(s.probes("demo-error", "http_status") >= 1.0);
    assert!(s.probes("demo-refused", "connect_error") >= 1.0);
    assert_eq!(
        s.site("demo-health", "probe_success"),
        Some(1.0),
        "{}",
        s.text
    );
    assert!(s.probes("demo-health-degraded", "json") >= 1.0);
    // The certificate's 10 days are within the site's 14-day limit.
    assert!(s.probes("demo-tls-expiring", "cert_expiring") >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = s
        .site("demo-tls-expiring", "probe_ssl_earliest_cert_expiry")
        .unwrap();
    let days = (expiry - now) / 86_400.0;
    assert!((9.9..10.1).contains(&days), "{days}");
}

#[tokio::test]
async fn operators_can_drop_phase_and_histogram_series() {
    let t = healthy_target().await;
    let ex = Exporter::start(&format!(
        "metrics: {{ phases: false, histogram: false }}\n\
         defaults: {{ interval: 1s, timeout: 500ms }}\n\
         sites:\n  - id: lean\n    url: http://{t}/\n"
    ));
    let s = ex.probed("lean").await;
    assert_eq!(s.site("lean", "probe_success"), Some(1.0));
    assert!(
        !s.text.contains("probe_http_duration_seconds{"),
        "{}",
        s.text
    );
    assert!(
        !s.text.contains("sitewatch_probe_duration_seconds_bucket"),
        "{}",
        s.text
    );
    // 11 gauges (with probe_ip_protocol and sitewatch_site_up), one result counter, one
    // timestamp.
    assert_eq!(s.of_site("lean").len(), 13, "{}", s.text);
    assert_eq!(s.get("sitewatch_series", &[]), Some(13.0));
}

#[test]
fn a_bad_config_at_start_exits_78_naming_the_error() {
    let (code, err) = common::run_expecting_exit(
        "sites:\n  - id: x\n    url: http://127.0.0.1:1/\n    interval: soon\n",
        &[],
    );
    assert_eq!(code, Some(78));
    assert!(
        err.contains("site \"x\": field `interval`: invalid duration"),
        "{err}"
    );
}

#[tokio::test]
async fn location_labels_every_probe_series() {
    let t = healthy_target().await;
    let ex = Exporter::start_with(&two_sites(t), &["--location", "eu-west-1"], &[]);
    let s = ex.probed("up").await;
    let of_up = s.of_site("up");
    assert!(!of_up.is_empty());
    for sample in of_up {
        assert_eq!(
            sample.labels.get("location").map(String::as_str),
            Some("eu-west-1"),
            "{sample:?}"
        );
    }
}

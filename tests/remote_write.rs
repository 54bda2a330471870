//! Remote-write against real receivers started on loopback (Prometheus with its
//! remote-write receiver, VictoriaMetrics), and against a loopback receiver whose answers
//! the test chooses (400, 500, 429 with Retry-After).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, loopback, require_tool, Exporter, Receiver, ReceiverKind, StoredSeries};
use http_body_util::BodyExt;
use sitewatch::demo::{respond, serve_target, TestCertificate};
use sitewatch::remote_write::proto::{self, WriteRequest};

/// A target answering 200 on `/ok` and 500 elsewhere.
async fn target() -> std::net::SocketAddr {
    common::ok_or_fail_target(500).await
}

/// Runs `sitewatch once --output json` off the test's runtime (the targets live on it).
async fn once_json(config: String, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.yaml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .args(["once", "--output", "json", "--config"])
            .arg(&path)
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), doc)
    })
    .await
    .unwrap()
}

fn one<'a>(series: &'a [StoredSeries], what: &str) -> &'a StoredSeries {
    assert_eq!(
        series.len(),
        1,
        "exactly one series for {what}: {series:#?}"
    );
    &series[0]
}

/// `once` pushes one probe of each site; the receiver stores exactly what the report says.
async fn once_pushes_what_it_measured(kind: ReceiverKind) {
    let receiver = Receiver::start(kind, free_port()).await;
    let t = target().await;
    let config = format!(
        "metrics:\n  histogram_buckets: [0.001, 1, 60]\n\
         remote_write:\n  - url: {}\n    external_labels: {{ cluster: test-1 }}\n\
         sites:\n  - id: up\n    url: http://{t}/ok\n    labels: {{ team: web }}\n  - id: down\n    url: http://{t}/fail\n    tenant: acme\n",
        receiver.write_url()
    );
    let (code, report) = once_json(config, &["--location", "lab"]).await;
    assert_eq!(code, Some(1), "one site failed: {report:#}");
    let push = &report["remote_write"][0];
    assert_eq!(push["failed"], 0, "{report:#}");
    assert_eq!(push["dropped"], 0, "{report:#}");
    let sent = push["sent"].as_u64().unwrap();
    assert!(sent >= 40, "two sites' series: {report:#}");

    let up = &report["sites"][0];
    assert_eq!(up["site"], "up");
    let duration = up["duration_seconds"].as_f64().unwrap();
    let finished_ms = ((up["started_at"].as_f64().unwrap() + duration) * 1000.0) as i64;

    let found = receiver
        .wait_for("probe_duration_seconds{site=\"up\"}", |s| {
            (!s.is_empty()).then(|| s.to_vec())
        })
        .await;
    let series = one(&found, "probe_duration_seconds of up");
    let expected: BTreeMap<String, String> = [
        ("__name__", "probe_duration_seconds"),
        ("cluster", "test-1"),
        ("location", "lab"),
        ("site", "up"),
        ("team", "web"),
        ("url", &format!("http://{t}/ok")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(series.labels, expected);
    assert_eq!(series.samples.len(), 1, "{series:#?}");
    let (ts, value) = series.samples[0];
    assert_eq!(value, duration, "the value the exporter measured");
    assert!(
        (ts - finished_ms).abs() <= 1,
        "stamped when the probe finished: {ts} vs {finished_ms}"
    );

    // The failed site: its status code and result class, under its tenant.
    let all = receiver.series("{site=\"down\"}").await;
    let value_of = |name: &str, extra: Option<(&str, &str)>| {
        all.iter()
            .find(|s| {
                s.labels["__name__"] == name
                    && extra.map_or(true, |(k, v)| {
                        s.labels.get(k).map(String::as_str) == Some(v)
                    })
            })
            .map(|s| s.samples[0].1)
            .unwrap_or_else(|| panic!("{name} {extra:?} of down not stored: {all:#?}"))
    };
    assert_eq!(value_of("probe_success", None), 0.0);
    assert_eq!(value_of("probe_http_status_code", None), 500.0);
    assert_eq!(
        value_of("sitewatch_probes_total", Some(("result", "http_status"))),
        1.0
    );
    assert!(all.iter().all(|s| s.labels["tenant"] == "acme"));
    // Every series pushed was stored: the count the report gives.
    let stored_up = receiver.series("{site=\"up\"}").await.len();
    assert_eq!((stored_up + all.len()) as u64, sent);

    // The histogram of `up`: cumulative buckets by `le`, sum and count, as the exposition has them.
    let buckets = receiver
        .series("sitewatch_probe_duration_seconds_bucket{site=\"up\"}")
        .await;
    let by_le: BTreeMap<String, f64> = buckets
        .iter()
        .map(|s| (s.labels["le"].clone(), s.samples[0].1))
        .collect();
    let expect = |bound: f64| if duration <= bound { 1.0 } else { 0.0 };
    let expected: BTreeMap<String, f64> = [
        ("0.001".to_string(), expect(0.001)),
        ("1.0".to_string(), expect(1.0)),
        ("60.0".to_string(), expect(60.0)),
        ("+Inf".to_string(), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_le, expected);
    let count = receiver
        .series("sitewatch_probe_duration_seconds_count{site=\"up\"}")
        .await;
    assert_eq!(one(&count, "count").samples[0].1, 1.0);
    let sum = receiver
        .series("sitewatch_probe_duration_seconds_sum{site=\"up\"}")
        .await;
    assert_eq!(one(&sum, "sum").samples[0].1, duration);
}

#[tokio::test]
async fn once_pushes_what_it_measured_to_prometheus() {
    if !require_tool("prometheus") {
        return;
    }
    once_pushes_what_it_measured(ReceiverKind::Prometheus).await;
}

#[tokio::test]
async fn once_pushes_what_it_measured_to_victoria_metrics() {
    if !require_tool("victoria-metrics") {
        return;
    }
    once_pushes_what_it_measured(ReceiverKind::VictoriaMetrics).await;
}

#[tokio::test]
async fn once_exit_status_includes_the_push() {
    // Every site passes, but nothing listens where the samples should go.
    let t = target().await;
    let port = common::refused_port().await;
    let config = format!(
        "remote_write:\n  - url: http://127.0.0.1:{port}/api/v1/write\n    name: gone\n\
         sites:\n  - id: up\n    url: http://{t}/ok\n"
    );
    let (code, report) = once_json(config, &["--push.timeout", "300ms"]).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["success"], false);
    assert_eq!(report["sites"][0]["success"], true);
    assert_eq!(report["remote_write"][0]["destination"], "gone");
    assert_eq!(report["remote_write"][0]["sent"], 0);
    assert!(report["remote_write"][0]["dropped"].as_u64().unwrap() > 0);
}

/// A receiver down at first, then up: nothing that fit the queue is lost.
async fn outage_loses_nothing(kind: ReceiverKind) {
    let t = target().await;
    let port = free_port();
    let config = format!(
        "remote_write:\n  - url: http://127.0.0.1:{port}/api/v1/write\n    name: rx\n    \
         queue: {{ batch_send_deadline: 100ms, min_backoff: 50ms, max_backoff: 200ms }}\n\
         sites:\n  - id: up\n    url: http://{t}/ok\n    interval: 100ms\n    timeout: 90ms\n"
    );
    let mut ex = Exporter::start(&config);
    // Down: pushes fail and are retried while the queue grows.
    let rx = [("destination", "rx")];
    let backlog = ex
        .wait_for("failed pushes being retried with samples queued", |s| {
            let retried = s.get("sitewatch_remote_write_samples_retried_total", &rx)?;
            let queued = s.get("sitewatch_remote_write_queue_samples", &rx)?;
            (retried > 0.0 && queued > 500.0).then_some(queued)
        })
        .await;
    let receiver = Receiver::start(kind, port).await;
    // Up: the backlog goes out.
    ex.wait_for("the backlog sent", |s| {
        let sent = s.get("sitewatch_remote_write_samples_sent_total", &rx)?;
        (sent >= backlog).then_some(())
    })
    .await;
    // Stopping flushes what is left within the grace period.
    ex.stop_gracefully().await;
    let logs = ex.logs();
    // Every probe left a sample of probe_success: as many as the last pushed probe counter says.
    let (count, probes) = receiver
        .wait_for(
            "{site=\"up\",__name__=~\"probe_success|sitewatch_probes_total\"}",
            |found| {
                let success = found
                    .iter()
                    .find(|s| s.labels["__name__"] == "probe_success")?;
                let counter = found
                    .iter()
                    .find(|s| s.labels["__name__"] == "sitewatch_probes_total")?;
                let last = counter.samples.iter().map(|(_, v)| *v).fold(0.0, f64::max);
                (success.samples.len() as f64 == last).then_some((success.samples.len(), last))
            },
        )
        .await;
    assert!(count > 10, "{count} probes, {probes}; logs:\n{logs}");
    assert!(!logs.contains("dropped"), "{logs}");
}

#[tokio::test]
async fn prometheus_down_then_up_loses_nothing() {
    if !require_tool("prometheus") {
        return;
    }
    outage_loses_nothing(ReceiverKind::Prometheus).await;
}

#[tokio::test]
async fn victoria_metrics_down_then_up_loses_nothing() {
    if !require_tool("victoria-metrics") {
        return;
    }
    outage_loses_nothing(ReceiverKind::VictoriaMetrics).await;
}

/// What a scripted receiver saw: each request's arrival time, headers and decoded body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, http::HeaderMap, WriteRequest)>>>);

/// A receiver answering each request with the next status of `script` (the last repeats),
/// with `Retry-After: 1` on 429.
async fn scripted_receiver(script: Vec<u16>) -> (String, Seen) {
    scripted_receiver_tls(script, None).await
}

/// [`scripted_receiver`] over TLS when `tls` is set.
async fn scripted_receiver_tls(
    script: Vec<u16>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (String, Seen) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let log = seen.clone();
    let script = Arc::new(script);
    tokio::spawn(serve_target(listener, tls, move |req| {
        let (log, script) = (log.clone(), script.clone());
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let decoded = proto::decode(&bytes).expect("a valid remote-write body");
            let n = {
                let mut seen = log.0.lock().unwrap();
                seen.push((Instant::now(), parts.headers, decoded));
                seen.len()
            };
            let status = script[(n - 1).min(script.len() - 1)];
            let mut resp = respond(status, "scripted");
            if status == 429 {
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, "1".parse().unwrap());
            }
            resp
        }
    }));
    (format!("{scheme}://{addr}/api/v1/write"), seen)
}

fn config_for(url: &str, t: std::net::SocketAddr, extra: &str, interval: &str) -> String {
    format!(
        "remote_write:\n  - url: {url}\n    name: rx\n    headers: {{ X-Scope-OrgID: acme }}\n    \
         queue: {{ max_samples_per_send: 10000, batch_send_deadline: 50ms, min_backoff: 20ms, max_backoff: 100ms }}\n{extra}\
         sites:\n  - id: up\n    url: http://{t}/ok\n    interval: {interval}\n    timeout: 500ms\n"
    )
}

#[tokio::test]
async fn receiver_answering_400_is_not_retried() {
    let t = target().await;
    let (url, seen) = scripted_receiver(vec![400]).await;
    let (code, report) = once_json(config_for(&url, t, "", "1m"), &[]).await;
    assert_eq!(code, Some(1), "the push failed: {report:#}");
    assert_eq!(report["sites"][0]["success"], true);
    let push = &report["remote_write"][0];
    assert_eq!(
        (&push["sent"], &push["dropped"]),
        (&0.into(), &0.into()),
        "{report:#}"
    );
    let requests = seen.0.lock().unwrap();
    assert_eq!(requests.len(), 1, "sent once, never again");
    assert_eq!(push["failed"], requests[0].2.timeseries.len() as u64);
    let headers = &requests[0].1;
    assert_eq!(headers["content-encoding"], "snappy");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(headers["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(headers["x-scope-orgid"], "acme");
    assert!(headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("sitewatch/"));
}

#[tokio::test]
async fn receiver_answering_500_is_retried_until_it_accepts() {
    let t = target().await;
    let (url, seen) = scripted_receiver(vec![500, 503, 204]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = common::write_file(dir.path(), "token", "s3cret\n");
    let extra = format!("    bearer_token_file: {}\n", token.display());
    let (code, report) = once_json(config_for(&url, t, &extra, "1m"), &[]).await;
    assert_eq!(code, Some(0), "{report:#}");
    let push = &report["remote_write"][0];
    assert_eq!(
        (&push["failed"], &push["dropped"]),
        (&0.into(), &0.into()),
        "{report:#}"
    );
    let requests = seen.0.lock().unwrap();
    assert_eq!(requests.len(), 3);
    // The same batch each time, with the credentials.
    assert_eq!(requests[0].2, requests[2].2);
    assert_eq!(push["sent"], requests[2].2.timeseries.len() as u64);
    assert_eq!(requests[2].1["authorization"], "Bearer s3cret");
}

#[tokio::test]
async fn https_receiver_with_its_ca_and_basic_auth() {
    let now = common::unix_now();
    let cert = TestCertificate::generate(now + 86_400).unwrap();
    let (url, seen) = scripted_receiver_tls(vec![204], Some(cert.server_config().unwrap())).await;
    let t = target().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = common::write_file(dir.path(), "ca.pem", &cert.ca_pem);
    let pw = common::write_file(dir.path(), "pw", "hunter2\n");
    let auth = format!(
        "    basic_auth: {{ username: writer, password_file: {} }}\n",
        pw.display()
    );
    // Trusting the receiver's CA: accepted, with the credentials.
    let trusted = format!("{auth}    tls: {{ ca_file: {} }}\n", ca.display());
    let (code, report) = once_json(config_for(&url, t, &trusted, "1m"), &[]).await;
    assert_eq!(code, Some(0), "{report:#}");
    {
        let requests = seen.0.lock().unwrap();
        assert_eq!(requests.len(), 1);
        // base64("writer:hunter2")
        assert_eq!(requests[0].1["authorization"], "Basic d3JpdGVyOmh1bnRlcjI=");
    }
    // Without it the certificate is refused: nothing is delivered and the exit status says so.
    let (code, report) = once_json(
        config_for(&url, t, &auth, "1m"),
        &["--push.timeout", "500ms"],
    )
    .await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["remote_write"][0]["sent"], 0);
    assert_eq!(
        seen.0.lock().unwrap().len(),
        1,
        "no request got through TLS"
    );
}

#[tokio::test]
async fn receiver_answering_429_is_retried_after_its_retry_after() {
    let t = target().await;
    let (url, seen) = scripted_receiver(vec![429, 204]).await;
    let (code, report) = once_json(config_for(&url, t, "", "1m"), &[]).await;
    assert_eq!(code, Some(0), "{report:#}");
    let requests = seen.0.lock().unwrap();
    assert_eq!(requests.len(), 2);
    // The backoff alone would have retried within 100 ms; Retry-After said one second.
    let gap = requests[1].0 - requests[0].0;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test]
async fn exporter_counts_retries_and_failures_in_its_metrics() {
    // 500 twice, then 400 for good: the first batch is retried twice and then rejected.
    let t = target().await;
    let (url, seen) = scripted_receiver(vec![500, 500, 400]).await;
    let ex = Exporter::start(&config_for(&url, t, "", "1s"));
    let s = ex
        .wait_for("a rejected batch", |s| {
            s.get(
                "sitewatch_remote_write_samples_failed_total",
                &[("destination", "rx")],
            )
            .filter(|v| *v > 0.0)
            .map(|_| s.clone())
        })
        .await;
    let first = seen.0.lock().unwrap()[0].2.timeseries.len() as f64;
    let get = |name: &str| s.get(name, &[("destination", "rx")]).unwrap();
    assert!(get("sitewatch_remote_write_samples_retried_total") >= 2.0 * first);
    assert!(get("sitewatch_remote_write_samples_failed_total") >= first);
    assert_eq!(get("sitewatch_remote_write_samples_sent_total"), 0.0);
    assert_eq!(get("sitewatch_remote_write_samples_dropped_total"), 0.0);
    assert_eq!(
        get("sitewatch_remote_write_queue_capacity_samples"),
        100_000.0
    );
    assert!(s
        .get(
            "sitewatch_remote_write_last_success_timestamp_seconds",
            &[("destination", "rx")]
        )
        .is_none());
}

#[tokio::test]
async fn reload_moves_samples_to_the_new_destination() {
    let t = target().await;
    let (first, first_seen) = scripted_receiver(vec![204]).await;
    let (second, second_seen) = scripted_receiver(vec![204]).await;
    let sites = format!(
        "sites:\n  - id: up\n    url: http://{t}/ok\n    interval: 200ms\n    timeout: 150ms\n"
    );
    let ex = Exporter::start(&format!(
        "remote_write:\n  - url: {first}\n    name: one\n    queue: {{ batch_send_deadline: 50ms }}\n{sites}"
    ));
    ex.wait_for("samples sent to one", |s| {
        s.get(
            "sitewatch_remote_write_samples_sent_total",
            &[("destination", "one")],
        )
        .filter(|v| *v > 0.0)
    })
    .await;
    std::fs::write(
        ex.config_path(),
        format!("remote_write:\n  - url: {second}\n    name: two\n    queue: {{ batch_send_deadline: 50ms }}\n{sites}"),
    )
    .unwrap();
    ex.wait_for("samples sent to two, one gone", |s| {
        let two = s.get(
            "sitewatch_remote_write_samples_sent_total",
            &[("destination", "two")],
        )?;
        let one = s.get(
            "sitewatch_remote_write_samples_sent_total",
            &[("destination", "one")],
        );
        (two > 0.0 && one.is_none()).then_some(())
    })
    .await;
    let before = first_seen.0.lock().unwrap().len();
    ex.wait_for("more samples sent to two", |s| {
        s.get(
            "sitewatch_remote_write_samples_sent_total",
            &[("destination", "two")],
        )
        .filter(|v| *v > 100.0)
    })
    .await;
    assert_eq!(
        first_seen.0.lock().unwrap().len(),
        before,
        "the removed destination gets nothing more"
    );
    assert!(!second_seen.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn remote_write_metrics_pass_promtool() {
    if !require_tool("promtool") {
        return;
    }
    let t = target().await;
    let (url, _seen) = scripted_receiver(vec![204]).await;
    let ex = Exporter::start(&config_for(&url, t, "", "1s"));
    ex.wait_for("a push", |s| {
        s.get(
            "sitewatch_remote_write_samples_sent_total",
            &[("destination", "rx")],
        )
        .filter(|v| *v > 0.0)
    })
    .await;
    let text = common::get_text(&ex.url("/metrics")).await;
    common::assert_promtool_clean(&text);
}

#[tokio::test]
async fn removed_site_goes_stale_in_prometheus_at_once() {
    if !require_tool("prometheus") {
        return;
    }
    let receiver = Receiver::start(ReceiverKind::Prometheus, free_port()).await;
    let t = target().await;
    let site = |id: &str| {
        format!("  - id: {id}\n    url: http://{t}/ok\n    interval: 200ms\n    timeout: 150ms\n")
    };
    let head = format!(
        "remote_write:\n  - url: {}\n    queue: {{ batch_send_deadline: 50ms }}\nsites:\n",
        receiver.write_url()
    );
    let ex = Exporter::start(&format!("{head}{}{}", site("stays"), site("goes")));
    let sites = |found: Vec<BTreeMap<String, String>>| -> Vec<String> {
        let mut ids: Vec<String> = found.into_iter().map(|l| l["site"].clone()).collect();
        ids.sort();
        ids
    };
    let start = Instant::now();
    while sites(receiver.instant("probe_success").await) != ["goes", "stays"] {
        assert!(
            start.elapsed() < common::DEADLINE,
            "both sites never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(ex.config_path(), format!("{head}{}", site("stays"))).unwrap();
    // Without a staleness marker Prometheus would show the last value for five minutes.
    let start = Instant::now();
    while sites(receiver.instant("probe_success").await) != ["stays"] {
        assert!(
            start.elapsed() < common::DEADLINE,
            "the removed site did not go stale; logs:\n{}",
            ex.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sites(
            receiver
                .instant("sitewatch_probe_duration_seconds_count")
                .await
        ),
        ["stays"]
    );
}

#[tokio::test]
async fn sigterm_with_an_unreachable_receiver_exits_within_the_grace_period() {
    let t = target().await;
    let port = common::refused_port().await;
    let mut ex = Exporter::start_with(
        &format!(
            "remote_write:\n  - url: http://127.0.0.1:{port}/api/v1/write\n    name: gone\n\
             sites:\n  - id: up\n    url: http://{t}/ok\n    interval: 200ms\n    timeout: 150ms\n"
        ),
        &["--shutdown.grace", "1s"],
        &[],
    );
    ex.wait_for("retries", |s| {
        s.get(
            "sitewatch_remote_write_samples_retried_total",
            &[("destination", "gone")],
        )
        .filter(|v| *v > 0.0)
    })
    .await;
    let started = Instant::now();
    ex.stop_gracefully().await;
    // The one-second grace, plus slack for a loaded test machine; never the retry loop.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        ex.logs()
            .contains("still pending at the end of the grace period were dropped"),
        "{}",
        ex.logs()
    );
}

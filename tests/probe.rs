//! End-to-end probes: the real binary against targets this test starts on loopback.
//! Each test asserts the exact metric values a user would see on /metrics.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{dns_server, loopback, refused_port, Exporter, Scrape};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use sitewatch::demo::{respond, serve_target, TestCertificate};

const HEALTHY_BODY: &str = "<h1>Shop</h1><button>Add to cart</button>";

/// The target every HTTP test probes: one path per behaviour.
async fn target(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let redirect = |to: &str| {
        Response::builder()
            .status(302)
            .header("location", to)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    match req.uri().path() {
        "/healthy" => respond(200, HEALTHY_BODY),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            respond(200, "too late")
        }
        "/error" => respond(500, "boom"),
        "/maintenance" => respond(200, "<h1>Down for maintenance</h1>"),
        "/r1" => redirect("/r2"),
        "/r2" => redirect("r3"),
        "/r3" => redirect("/healthy"),
        "/loop-a" => redirect("/loop-b"),
        "/loop-b" => redirect("/loop-a"),
        "/large" => respond(200, vec![b'x'; 64 * 1024]),
        "/auth" => {
            let ok = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                == Some("Basic cHJvYmU6czNjcjN0"); // probe:s3cr3t
            if ok {
                respond(200, "welcome")
            } else {
                respond(401, "who are you")
            }
        }
        "/bearer" => {
            let ok = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                == Some("Bearer tok-123");
            respond(if ok { 200 } else { 401 }, "")
        }
        "/echo-method" => {
            let body = format!(
                "method={} ua={:?}",
                req.method(),
                req.headers().get("user-agent")
            );
            respond(200, body)
        }
        _ => respond(404, "not found"),
    }
}

async fn start_target() -> SocketAddr {
    common::serve(target).await
}

fn config(sites: &str) -> String {
    format!("defaults:\n  interval: 1s\n  timeout: 800ms\nsites:\n{sites}")
}

#[tokio::test]
async fn healthy_site_reports_every_probe_gauge() {
    let t = start_target().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: shop\n    url: http://{t}/healthy\n    regex: Add to cart\n    tenant: acme\n    labels: {{ team: web }}\n"
    )));
    let s = ex.probed("shop").await;
    let v = |name| {
        s.site("shop", name)
            .unwrap_or_else(|| panic!("{name} missing:\n{}", s.text))
    };
    assert_eq!(v("probe_success"), 1.0);
    assert_eq!(v("probe_http_status_code"), 200.0);
    assert_eq!(v("probe_http_content_length"), HEALTHY_BODY.len() as f64);
    assert_eq!(v("probe_http_redirects"), 0.0);
    assert_eq!(v("probe_http_ssl"), 0.0);
    assert_eq!(v("probe_http_version"), 1.1);
    assert_eq!(v("probe_failed_due_to_regex"), 0.0);
    // An IP literal needs no DNS.
    assert_eq!(v("probe_dns_lookup_time_seconds"), 0.0);
    assert!(v("probe_duration_seconds") > 0.0);
    assert!(s.probes("shop", "success") >= 1.0);
    assert_eq!(s.site("shop", "probe_ssl_earliest_cert_expiry"), None);
    // Every series carries the site's labels.
    let url = format!("http://{t}/healthy");
    for sample in s.of_site("shop") {
        assert_eq!(sample.labels.get("url"), Some(&url), "{sample:?}");
        assert_eq!(
            sample.labels.get("tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(sample.labels.get("team").map(String::as_str), Some("web"));
    }
    for phase in ["resolve", "connect", "tls", "processing", "transfer"] {
        let d = s
            .get(
                "probe_http_duration_seconds",
                &[("site", "shop"), ("phase", phase)],
            )
            .unwrap_or_else(|| panic!("phase {phase} missing"));
        assert!(d >= 0.0);
    }
    assert!(
        s.get(
            "probe_http_duration_seconds",
            &[("site", "shop"), ("phase", "connect")]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        s.get(
            "probe_http_duration_seconds",
            &[("site", "shop"), ("phase", "tls")]
        ),
        Some(0.0)
    );
    // The histogram counts every probe.
    let count = s
        .site("shop", "sitewatch_probe_duration_seconds_count")
        .unwrap();
    let inf = s
        .get(
            "sitewatch_probe_duration_seconds_bucket",
            &[("site", "shop"), ("le", "+Inf")],
        )
        .unwrap();
    assert_eq!(count, inf);
    assert_eq!(count, s.probes("shop", "success"));
    // What one plain-HTTP site costs downstream: 16 gauges (with probe_ip_protocol and
    // sitewatch_site_up), 11 histogram series, one result counter, one timestamp.
    assert_eq!(s.of_site("shop").len(), 29, "{}", s.text);
    assert_eq!(s.get("sitewatch_series", &[]), Some(29.0));
    assert_eq!(v("probe_ip_protocol"), 4.0);
    assert_eq!(v("sitewatch_site_up"), 1.0);
}

#[tokio::test]
async fn failures_are_classified() {
    let t = start_target().await;
    let refused = refused_port().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: slow\n    url: http://{t}/slow\n\
         \x20 - id: error\n    url: http://{t}/error\n\
         \x20 - id: wrong-content\n    url: http://{t}/maintenance\n    regex: Add to cart\n\
         \x20 - id: absent\n    url: http://{t}/maintenance\n    regex_absent: '(?i)maintenance'\n\
         \x20 - id: refused\n    url: http://127.0.0.1:{refused}/\n\
         \x20 - id: large\n    url: http://{t}/large\n    max_body_bytes: 1KiB\n\
         \x20 - id: missing\n    url: http://{t}/nothing-here\n\
         \x20 - id: not-found-ok\n    url: http://{t}/nothing-here\n    valid_status: [404]\n"
    )));
    let sites = [
        "slow",
        "error",
        "wrong-content",
        "absent",
        "refused",
        "large",
        "missing",
        "not-found-ok",
    ];
    let s = ex.probed_all(&sites).await;
    let expect = |id: &str, result: &str| {
        assert_eq!(s.site(id, "probe_success"), Some(0.0), "{id}");
        assert!(
            s.probes(id, result) >= 1.0,
            "{id} should count {result}:\n{}",
            s.text
        );
        assert_eq!(s.probes(id, "success"), 0.0, "{id}");
    };
    expect("slow", "timeout");
    assert_eq!(s.site("slow", "probe_http_status_code"), Some(0.0));
    expect("error", "http_status");
    assert_eq!(s.site("error", "probe_http_status_code"), Some(500.0));
    assert_eq!(s.site("error", "probe_http_content_length"), Some(4.0));
    expect("wrong-content", "regex");
    assert_eq!(
        s.site("wrong-content", "probe_failed_due_to_regex"),
        Some(1.0)
    );
    expect("absent", "regex");
    assert_eq!(s.site("absent", "probe_failed_due_to_regex"), Some(1.0));
    expect("refused", "connect_error");
    expect("large", "body_too_large");
    assert!(s.site("large", "probe_http_content_length").unwrap() > 1024.0);
    expect("missing", "http_status");
    assert_eq!(s.site("missing", "probe_http_status_code"), Some(404.0));
    assert_eq!(s.site("not-found-ok", "probe_success"), Some(1.0));
    assert_eq!(s.site("error", "probe_failed_due_to_regex"), Some(0.0));
}

#[tokio::test]
async fn redirects_are_followed_counted_and_loops_detected() {
    let t = start_target().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: chain\n    url: http://{t}/r1\n    regex: Add to cart\n\
         \x20 - id: loop\n    url: http://{t}/loop-a\n\
         \x20 - id: limited\n    url: http://{t}/r1\n    max_redirects: 2\n\
         \x20 - id: not-followed\n    url: http://{t}/r1\n    follow_redirects: false\n    valid_status: [302]\n"
    )));
    let s = ex
        .probed_all(&["chain", "loop", "limited", "not-followed"])
        .await;
    assert_eq!(s.site("chain", "probe_success"), Some(1.0));
    assert_eq!(s.site("chain", "probe_http_redirects"), Some(3.0));
    assert_eq!(s.site("chain", "probe_http_status_code"), Some(200.0));
    assert_eq!(
        s.site("chain", "probe_http_content_length"),
        Some(HEALTHY_BODY.len() as f64)
    );
    assert_eq!(s.site("loop", "probe_success"), Some(0.0));
    assert!(s.probes("loop", "error") >= 1.0);
    assert_eq!(s.site("loop", "probe_http_redirects"), Some(1.0));
    assert_eq!(s.site("limited", "probe_success"), Some(0.0));
    assert!(s.probes("limited", "error") >= 1.0);
    assert_eq!(s.site("limited", "probe_http_redirects"), Some(2.0));
    assert_eq!(s.site("not-followed", "probe_success"), Some(1.0));
    assert_eq!(s.site("not-followed", "probe_http_redirects"), Some(0.0));
    assert_eq!(
        s.site("not-followed", "probe_http_status_code"),
        Some(302.0)
    );
}

#[tokio::test]
async fn tls_expiry_is_reported_to_the_second() {
    let now = common::unix_now();
    let not_after = now + 20 * 86_400 + 17;
    let cert = TestCertificate::generate(not_after).unwrap();
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_target(
        listener,
        Some(cert.server_config().unwrap()),
        |_req| async { respond(200, "secure") },
    ));
    let fixtures = tempfile::tempdir().unwrap();
    let ca = common::write_file(fixtures.path(), "ca.pem", &cert.ca_pem);
    let port = addr.port();
    let ex = Exporter::start(&config(&format!(
        "  - id: trusted\n    url: https://127.0.0.1:{port}/\n    tls: {{ ca_file: {ca} }}\n\
         \x20 - id: by-name\n    url: https://127.0.0.1:{port}/\n    tls: {{ ca_file: {ca}, server_name: localhost }}\n\
         \x20 - id: untrusted\n    url: https://127.0.0.1:{port}/\n\
         \x20 - id: insecure\n    url: https://127.0.0.1:{port}/\n    tls: {{ insecure_skip_verify: true }}\n\
         \x20 - id: wrong-name\n    url: https://127.0.0.1:{port}/\n    tls: {{ ca_file: {ca}, server_name: other.example }}\n",
        ca = ca.display()
    )));
    let s = ex
        .probed_all(&["trusted", "by-name", "untrusted", "insecure", "wrong-name"])
        .await;
    for id in ["trusted", "by-name", "insecure"] {
        assert_eq!(s.site(id, "probe_success"), Some(1.0), "{id}:\n{}", s.text);
        assert_eq!(
            s.site(id, "probe_ssl_earliest_cert_expiry"),
            Some(not_after as f64),
            "{id}"
        );
        assert_eq!(s.site(id, "probe_http_ssl"), Some(1.0));
        // ALPN negotiates HTTP/2 with a server that offers it.
        assert_eq!(s.site(id, "probe_http_version"), Some(2.0));
        assert!(
            s.get(
                "probe_http_duration_seconds",
                &[("site", id), ("phase", "tls")]
            )
            .unwrap()
                > 0.0
        );
    }
    for id in ["untrusted", "wrong-name"] {
        assert_eq!(s.site(id, "probe_success"), Some(0.0), "{id}");
        assert!(s.probes(id, "tls_error") >= 1.0, "{id}:\n{}", s.text);
    }
}

#[tokio::test]
async fn basic_auth_and_bearer_tokens_come_from_files_and_env() {
    let t = start_target().await;
    let fixtures = tempfile::tempdir().unwrap();
    let good = common::write_file(fixtures.path(), "good", "s3cr3t\n");
    let bad = common::write_file(fixtures.path(), "bad", "wrong");
    let ex = Exporter::start_with(
        &config(&format!(
            "  - id: auth-ok\n    url: http://{t}/auth\n    basic_auth: {{ username: probe, password_file: {} }}\n\
             \x20 - id: auth-refused\n    url: http://{t}/auth\n    basic_auth: {{ username: probe, password_file: {} }}\n\
             \x20 - id: auth-env\n    url: http://{t}/auth\n    basic_auth: {{ username: probe, password_env: PROBE_PW }}\n\
             \x20 - id: bearer\n    url: http://{t}/bearer\n    bearer_token_env: PROBE_TOKEN\n\
             \x20 - id: no-auth\n    url: http://{t}/auth\n",
            good.display(),
            bad.display()
        )),
        &[],
        &[("PROBE_PW", "s3cr3t"), ("PROBE_TOKEN", "tok-123")],
    );
    let ids = ["auth-ok", "auth-refused", "auth-env", "bearer", "no-auth"];
    let s = ex.probed_all(&ids).await;
    for id in ["auth-ok", "auth-env", "bearer"] {
        assert_eq!(s.site(id, "probe_success"), Some(1.0), "{id}");
    }
    for id in ["auth-refused", "no-auth"] {
        assert_eq!(s.site(id, "probe_http_status_code"), Some(401.0), "{id}");
        assert!(s.probes(id, "http_status") >= 1.0);
    }
    // The secrets appear nowhere in what the exporter shows.
    for secret in ["s3cr3t", "tok-123", "cHJvYmU6czNjcjN0"] {
        assert!(!s.text.contains(secret));
        assert!(!ex.logs().contains(secret));
    }
}

#[tokio::test]
async fn names_resolve_through_the_configured_name_server() {
    let t = start_target().await;
    let (dns, queries) = dns_server().await;
    let port = t.port();
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\n\
         network:\n  resolver: [\"{dns}\"]\n  ip_version: ipv4\n\
         sites:\n\
         \x20 - id: by-name\n    url: http://shop.sitewatch.test:{port}/healthy\n\
         \x20 - id: nxdomain\n    url: http://missing.sitewatch.test:{port}/healthy\n"
    ));
    let s = ex.probed_all(&["by-name", "nxdomain"]).await;
    assert_eq!(
        s.site("by-name", "probe_success"),
        Some(1.0),
        "{}",
        ex.logs()
    );
    assert!(s.site("by-name", "probe_dns_lookup_time_seconds").unwrap() > 0.0);
    assert_eq!(s.site("nxdomain", "probe_success"), Some(0.0));
    assert!(s.probes("nxdomain", "dns_error") >= 1.0);
    let asked = queries.lock().unwrap().clone();
    assert!(
        asked.iter().any(|q| q == "shop.sitewatch.test"),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(|q| q == "missing.sitewatch.test"),
        "{asked:?}"
    );
}

#[tokio::test]
async fn denied_addresses_open_no_socket() {
    // A target on 127.0.0.2 that counts connections; the policy denies it.
    let (addr, accepted) = common::counting_listener([127, 0, 0, 2]).await;
    let t = start_target().await;
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\n\
         network:\n  deny: [127.0.0.2/32]\n\
         sites:\n\
         \x20 - id: denied\n    url: http://{addr}/\n\
         \x20 - id: allowed\n    url: http://{t}/healthy\n"
    ));
    let s = ex
        .wait_for("two probes of the denied site", |s| {
            (s.probes("denied", "denied") >= 2.0 && s.site("allowed", "probe_success").is_some())
                .then(|| s.clone())
        })
        .await;
    assert_eq!(s.site("denied", "probe_success"), Some(0.0));
    assert_eq!(s.site("allowed", "probe_success"), Some(1.0));
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn multi_tenant_switch_denies_this_host_whatever_the_config_says() {
    // A site list may name the exporter's own host; with --network.multi-tenant it is denied
    // even though the config's own network section allows it, and no connection is made.
    let (addr, accepted) = common::counting_listener([127, 0, 0, 1]).await;
    let ex = Exporter::start_with(
        &format!(
            "defaults: {{ interval: 1s, timeout: 800ms }}\n\
             network:\n  allow: [127.0.0.0/8]\n\
             sites:\n\
             \x20 - id: self\n    url: http://{addr}/\n"
        ),
        &["--network.multi-tenant"],
        &[],
    );
    ex.wait_for("two denied probes", |s| {
        (s.probes("self", "denied") >= 2.0).then_some(())
    })
    .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    let sites = common::get_text(&ex.url("/api/v1/sites")).await;
    assert!(
        sites.contains("is denied by --network.multi-tenant (127.0.0.0/8)"),
        "{sites}"
    );
}

#[tokio::test]
async fn a_target_trickling_its_body_cannot_hold_a_probe_past_its_timeout() {
    // Headers at once, then one byte of a promised megabyte every 50 ms, for ever.
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
                if sock.write_all(head).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if sock.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let ex = Exporter::start(&config(&format!(
        "  - id: trickle\n    url: http://{addr}/\n    interval: 1s\n    timeout: 500ms\n"
    )));
    let s = ex
        .wait_for("a probe of the trickling target", |s| {
            (s.probes("trickle", "timeout") >= 1.0).then(|| s.clone())
        })
        .await;
    let took = s.site("trickle", "probe_duration_seconds").unwrap();
    // Ended by the timeout, not by the body: a little over 500 ms, far below the 50 s the
    // whole body would take.
    assert!((0.5..5.0).contains(&took), "probe took {took} s");
    assert_eq!(s.site("trickle", "probe_success"), Some(0.0));
}

#[tokio::test]
async fn a_site_may_have_network_exceptions_only_when_the_operator_allows_them() {
    let listener = loopback([127, 0, 0, 2]).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |_req| async {
        respond(200, "ok")
    }));
    let config = format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\n\
         network:\n  deny: [127.0.0.2/32]\n\
         sites:\n\
         \x20 - id: excepted\n    url: http://{addr}/\n    network: {{ allow: [127.0.0.2/32] }}\n\
         \x20 - id: plain\n    url: http://{addr}/\n"
    );
    // Without the operator's flag the config is refused, naming the site and the field.
    let (code, err) = common::run_expecting_exit(&config, &[]);
    assert_eq!(code, Some(78));
    assert!(
        err.contains(
            "site \"excepted\": field `network`: per-site network exceptions are disabled"
        ),
        "{err}"
    );
    // check-config judges the same way, and accepts it with the same flag.
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_file(dir.path(), "sites.yaml", &config);
    let check = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .arg("check-config")
            .arg(&path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("field `network`"));
    assert!(check(&["--network.site-overrides"]).status.success());
    // With it, the exception opens the denied address for that site only.
    let ex = Exporter::start_with(&config, &["--network.site-overrides"], &[]);
    let s = ex.probed_all(&["excepted", "plain"]).await;
    assert_eq!(s.site("excepted", "probe_success"), Some(1.0));
    assert!(s.probes("plain", "denied") >= 1.0);
}

#[tokio::test]
async fn method_headers_and_user_agent_are_sent() {
    let t = start_target().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: post\n    url: http://{t}/echo-method\n    method: POST\n    body: '{{\"ping\":1}}'\n    regex: 'method=POST ua=Some\\(\"sitewatch/'\n\
         \x20 - id: custom-ua\n    url: http://{t}/echo-method\n    headers: {{ user-agent: probe-bot }}\n    regex: 'ua=Some\\(\"probe-bot\"\\)'\n"
    )));
    let s: Scrape = ex.probed_all(&["post", "custom-ua"]).await;
    assert_eq!(s.site("post", "probe_success"), Some(1.0), "{}", s.text);
    assert_eq!(
        s.site("custom-ua", "probe_success"),
        Some(1.0),
        "{}",
        s.text
    );
}

#[tokio::test]
async fn ipv6_loopback_targets_are_probed() {
    let listener = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("IPv6 loopback");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, target));
    let ex = Exporter::start(&config(&format!(
        "  - id: v6\n    url: http://[::1]:{}/healthy\n",
        addr.port()
    )));
    let s = ex.probed_all(&["v6"]).await;
    assert_eq!(s.site("v6", "probe_success"), Some(1.0), "{}", s.text);
    assert_eq!(
        s.site("v6", "probe_http_content_length"),
        Some(HEALTHY_BODY.len() as f64)
    );
}

//! The checks beyond status and body regex, end to end: the real binary against targets this
//! test starts on loopback, asserting the exact metrics and result classes.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{dns_server, loopback, Exporter, Scrape};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use sitewatch::demo::{respond, serve_target, TestCertificate};

const UP_JSON: &str = r#"{"status":"UP","latency_ms":12,"checks":[{"name":"db","ok":true},{"name":"cache","ok":true}],"items":[1,2,3]}"#;
const DEGRADED_JSON: &str = r#"{"status":"UP","latency_ms":480,"checks":[{"name":"db","ok":true},{"name":"cache","ok":false}],"items":[]}"#;

fn with_headers(body: &str, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(200);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    gz.finish().unwrap()
}

/// One path per check.
async fn target(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let accepts = |enc: &str| {
        req.headers()
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(enc))
    };
    match req.uri().path() {
        "/json/up" => with_headers(UP_JSON, &[("content-type", "application/json")]),
        "/json/degraded" => with_headers(DEGRADED_JSON, &[("content-type", "application/json")]),
        "/html" => respond(200, "<h1>not json</h1>"),
        "/deep-json" => respond(200, "[".repeat(100_000)),
        "/headers" => with_headers(
            "ok",
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("server", "nginx/1.0.15"),
                ("x-frame-options", "DENY"),
                ("cache-control", "no-store"),
                ("cache-control", "private"),
            ],
        ),
        "/gzip" if accepts("gzip") => Response::builder()
            .header("content-encoding", "gzip")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(gzip(UP_JSON.as_bytes()))))
            .unwrap(),
        "/gzip" => with_headers(UP_JSON, &[("content-type", "application/json")]),
        "/br" => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(UP_JSON.as_bytes()).unwrap();
            drop(w);
            Response::builder()
                .header("content-encoding", "br")
                .body(Full::new(Bytes::from(out)))
                .unwrap()
        }
        "/bomb" => Response::builder()
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(gzip(&vec![b'a'; 4 << 20]))))
            .unwrap(),
        "/slowish" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            respond(200, "late but fine")
        }
        _ => respond(404, "not found"),
    }
}

async fn start_target() -> SocketAddr {
    common::serve(target).await
}

fn config(sites: &str) -> String {
    format!("defaults:\n  interval: 1s\n  timeout: 900ms\nsites:\n{sites}")
}

/// A site as the API shows it.
async fn site_json(ex: &Exporter, id: &str) -> serde_json::Value {
    let text = common::get_text(&ex.url(&format!("/api/v1/sites/{id}"))).await;
    serde_json::from_str(&text).unwrap()
}

/// The last result of a site as the API shows it.
async fn last_result(ex: &Exporter, id: &str) -> serde_json::Value {
    site_json(ex, id).await["last_result"].clone()
}

fn assert_class(s: &Scrape, id: &str, class: &str) {
    assert_eq!(s.site(id, "probe_success"), Some(0.0), "{id}:\n{}", s.text);
    assert!(
        s.probes(id, class) >= 1.0,
        "{id} has no {class}:\n{}",
        s.text
    );
}

#[tokio::test]
async fn json_conditions_pass_and_each_failure_names_its_condition() {
    let t = start_target().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: up\n    url: http://{t}/json/up\n    json_conditions:\n\
         \x20     - '$.status == \"UP\"'\n      - '$.checks[*].ok == true'\n\
         \x20     - '$.latency_ms < 250'\n      - 'len($.items) > 0'\n      - 'has($.error) == false'\n\
         \x20 - id: degraded\n    url: http://{t}/json/degraded\n    json_conditions:\n\
         \x20     - '$.status == UP'\n      - '$.checks[*].ok == true'\n\
         \x20 - id: slow-backend\n    url: http://{t}/json/degraded\n    json_conditions: ['$.latency_ms < 250']\n\
         \x20 - id: empty\n    url: http://{t}/json/degraded\n    json_conditions: ['len($.items) > 0']\n\
         \x20 - id: html\n    url: http://{t}/html\n    json_conditions: ['$.status == \"UP\"']\n\
         \x20 - id: deep\n    url: http://{t}/deep-json\n    json_conditions: ['$.status == \"UP\"']\n"
    )));
    let ids = ["up", "degraded", "slow-backend", "empty", "html", "deep"];
    let s = ex.probed_all(&ids).await;
    assert_eq!(s.site("up", "probe_success"), Some(1.0), "{}", s.text);
    for id in &ids[1..] {
        assert_class(&s, id, "json");
        // A failed JSON check is not a failed regex.
        assert_eq!(s.site(id, "probe_failed_due_to_regex"), Some(0.0));
    }
    // The API lists a site's checks with its config.
    let up = site_json(&ex, "up").await;
    assert_eq!(
        up["checks"]["json_conditions"][2], "$.latency_ms < 250",
        "{up}"
    );
    assert_eq!(up["checks"]["addresses"], "first");
    assert_eq!(up["up"], true);
    let error = |r: serde_json::Value| r["error"].as_str().unwrap_or_default().to_string();
    let e = error(last_result(&ex, "degraded").await);
    assert!(
        e.starts_with("json condition \"$.checks[*].ok == true\" failed: $.checks[1].ok is false"),
        "{e}"
    );
    let e = error(last_result(&ex, "slow-backend").await);
    assert!(
        e.contains("\"$.latency_ms < 250\"") && e.contains("480"),
        "{e}"
    );
    let e = error(last_result(&ex, "empty").await);
    assert!(e.contains("len($.items) > 0"), "{e}");
    let e = error(last_result(&ex, "html").await);
    assert!(e.starts_with("body is not JSON"), "{e}");
    // 100,000 unclosed brackets hit the parser's nesting limit: an error, not a crash.
    let e = error(last_result(&ex, "deep").await);
    assert!(
        e.starts_with("body is not JSON: recursion limit exceeded"),
        "{e}"
    );
}

#[tokio::test]
async fn header_checks_match_every_value_and_honour_allow_missing() {
    let t = start_target().await;
    let site =
        |id: &str, checks: &str| format!("  - id: {id}\n    url: http://{t}/headers\n{checks}");
    let ex = Exporter::start(&config(&[
        site("json-type", "    fail_if_header_not_matches: [{ header: Content-Type, regex: '^application/json' }]\n"),
        site("old-nginx", "    fail_if_header_matches: [{ header: server, regex: 'nginx/1\\.0\\.' }]\n"),
        site("no-hsts", "    fail_if_header_not_matches: [{ header: Strict-Transport-Security, regex: 'max-age' }]\n"),
        site("no-hsts-ok", "    fail_if_header_not_matches: [{ header: Strict-Transport-Security, regex: 'max-age', allow_missing: true }]\n"),
        site("second-value", "    fail_if_header_matches: [{ header: cache-control, regex: private }]\n"),
        site("absent-ok", "    fail_if_header_matches: [{ header: x-debug, regex: '.', allow_missing: true }]\n"),
    ].concat()));
    let ids = [
        "json-type",
        "old-nginx",
        "no-hsts",
        "no-hsts-ok",
        "second-value",
        "absent-ok",
    ];
    let s = ex.probed_all(&ids).await;
    for id in ["json-type", "no-hsts-ok", "absent-ok"] {
        assert_eq!(s.site(id, "probe_success"), Some(1.0), "{id}:\n{}", s.text);
        assert_eq!(s.site(id, "probe_failed_due_to_regex"), Some(0.0));
    }
    for id in ["old-nginx", "no-hsts", "second-value"] {
        assert_class(&s, id, "header");
        // As blackbox_exporter reports a failed header regex.
        assert_eq!(s.site(id, "probe_failed_due_to_regex"), Some(1.0), "{id}");
    }
    let e = last_result(&ex, "old-nginx").await["error"].clone();
    assert_eq!(
        e,
        "header server: \"nginx/1.0.15\" matches fail_if_header_matches \"nginx/1\\\\.0\\\\.\""
    );
    let e = last_result(&ex, "no-hsts").await["error"].clone();
    assert_eq!(e, "header strict-transport-security is missing");
}

#[tokio::test]
async fn compression_is_asked_for_required_and_decoded_for_the_checks() {
    let t = start_target().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: gzip\n    url: http://{t}/gzip\n    compression: gzip\n    regex: '\"status\":\"UP\"'\n    json_conditions: ['$.status == UP']\n\
         \x20 - id: br\n    url: http://{t}/br\n    compression: br\n    json_conditions: ['len($.items) == 3']\n\
         \x20 - id: wants-br\n    url: http://{t}/gzip\n    compression: br\n\
         \x20 - id: plain\n    url: http://{t}/gzip\n\
         \x20 - id: bomb\n    url: http://{t}/bomb\n    compression: gzip\n"
    )));
    let s = ex
        .probed_all(&["gzip", "br", "wants-br", "plain", "bomb"])
        .await;
    let compressed = gzip(UP_JSON.as_bytes()).len() as f64;
    assert_eq!(s.site("gzip", "probe_success"), Some(1.0), "{}", s.text);
    assert_eq!(
        s.site("gzip", "probe_http_content_length"),
        Some(compressed)
    );
    assert_eq!(
        s.site("gzip", "probe_http_uncompressed_body_length"),
        Some(UP_JSON.len() as f64)
    );
    assert_eq!(s.site("br", "probe_success"), Some(1.0), "{}", s.text);
    assert_eq!(
        s.site("br", "probe_http_uncompressed_body_length"),
        Some(UP_JSON.len() as f64)
    );
    // Asked for br, the target answered with what it has: identity.
    assert_class(&s, "wants-br", "compression");
    let e = last_result(&ex, "wants-br").await["error"].clone();
    assert_eq!(e, "response is not br-encoded (Content-Encoding: none)");
    // Without `compression` nothing is asked for, decoded or reported.
    assert_eq!(s.site("plain", "probe_success"), Some(1.0));
    assert_eq!(
        s.site("plain", "probe_http_content_length"),
        Some(UP_JSON.len() as f64)
    );
    assert_eq!(s.site("plain", "probe_http_uncompressed_body_length"), None);
    // 4 MiB of zeros in a few KiB of gzip: decoding stops at max_body_bytes (1 MiB).
    assert_class(&s, "bomb", "body_too_large");
}

#[tokio::test]
async fn a_slow_probe_fails_as_slow_and_its_duration_is_still_recorded() {
    let t = start_target().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: slowish\n    url: http://{t}/slowish\n    max_duration: 100ms\n\
         \x20 - id: patient\n    url: http://{t}/slowish\n    max_duration: 800ms\n"
    )));
    let s = ex.probed_all(&["slowish", "patient"]).await;
    assert_class(&s, "slowish", "slow");
    assert!(s.site("slowish", "probe_duration_seconds").unwrap() >= 0.3);
    // The histogram counts the slow probe in its own bucket.
    assert_eq!(
        s.get(
            "sitewatch_probe_duration_seconds_bucket",
            &[("site", "slowish"), ("le", "0.25")]
        ),
        Some(0.0)
    );
    assert!(
        s.site("slowish", "sitewatch_probe_duration_seconds_count")
            .unwrap()
            >= 1.0
    );
    assert_eq!(s.site("slowish", "probe_http_status_code"), Some(200.0));
    // A 300 ms answer within an 800 ms limit passes (waited for: one probe on a loaded
    // machine may take longer).
    ex.wait_for("a passing probe of patient", |s| {
        (s.probes("patient", "success") >= 1.0).then_some(())
    })
    .await;
    let e = last_result(&ex, "slowish").await["error"].clone();
    assert!(
        e.as_str()
            .unwrap()
            .ends_with("longer than max_duration 100ms"),
        "{e}"
    );
}

#[tokio::test]
async fn tls_details_versions_and_certificate_expiry_checks() {
    let now = common::unix_now();
    let not_after = now + 20 * 86_400;
    let cert = TestCertificate::generate(not_after).unwrap();
    let listener = loopback([127, 0, 0, 1]).await;
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_target(
        listener,
        Some(cert.server_config().unwrap()),
        |_req| async { respond(200, "secure") },
    ));
    let plain = start_target().await;
    let fixtures = tempfile::tempdir().unwrap();
    let ca = common::write_file(fixtures.path(), "ca.pem", &cert.ca_pem);
    let https = format!(
        "    url: https://127.0.0.1:{port}/\n    tls: {{ ca_file: {} }}\n",
        ca.display()
    );
    let ex = Exporter::start(&config(&format!(
        "  - id: tls\n{https}    fail_if_not_ssl: true\n    fail_if_cert_expires_within: 10d\n    valid_http_versions: [HTTP/2]\n\
         \x20 - id: expiring\n{https}    fail_if_cert_expires_within: 30d\n\
         \x20 - id: h1-only\n{https}    valid_http_versions: [HTTP/1.1]\n\
         \x20 - id: no-tls-wanted\n{https}    fail_if_ssl: true\n\
         \x20 - id: plain\n    url: http://{plain}/html\n    fail_if_not_ssl: true\n"
    )));
    let ids = ["tls", "expiring", "h1-only", "no-tls-wanted", "plain"];
    let s = ex.probed_all(&ids).await;
    assert_eq!(s.site("tls", "probe_success"), Some(1.0), "{}", s.text);
    assert_class(&s, "expiring", "cert_expiring");
    assert_class(&s, "h1-only", "http_version");
    assert_class(&s, "no-tls-wanted", "ssl");
    assert_class(&s, "plain", "ssl");
    let e = last_result(&ex, "expiring").await["error"].clone();
    assert!(
        e.as_str()
            .unwrap()
            .contains("within fail_if_cert_expires_within 30days"),
        "{e}"
    );
    let e = last_result(&ex, "h1-only").await["error"].clone();
    assert_eq!(e, "HTTP/2 is not in valid_http_versions [HTTP/1.1]");

    // TLS details, labelled as blackbox_exporter labels them.
    assert_eq!(
        s.get(
            "probe_tls_version_info",
            &[("site", "tls"), ("version", "TLS 1.3")]
        ),
        Some(1.0),
        "{}",
        s.text
    );
    let (_, leaf) = x509_parser::parse_x509_certificate(&cert.leaf).unwrap();
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, &cert.leaf)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // As Go prints `big.Int.Bytes()` with %x: no leading zero bytes.
    let raw = leaf.raw_serial();
    let serial: String = raw[raw.iter().position(|b| *b != 0).unwrap_or(raw.len())..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        s.get(
            "probe_ssl_last_chain_info",
            &[
                ("site", "tls"),
                ("fingerprint_sha256", &fingerprint),
                ("subject", "CN=localhost"),
                ("issuer", "CN=sitewatch test CA"),
                ("subjectalternative", "localhost"),
                ("serialnumber", &serial),
            ]
        ),
        Some(1.0),
        "{}",
        s.text
    );
    assert_eq!(
        s.site("tls", "probe_ssl_last_chain_expiry_timestamp_seconds"),
        Some(not_after as f64)
    );
    common::assert_promtool_clean(&common::get_text(&ex.url("/metrics")).await);
    assert_eq!(s.site("plain", "probe_tls_version_info"), None);
    assert_eq!(s.site("plain", "probe_ssl_last_chain_info"), None);
}

/// Listeners on `ips`, all on one port, each answering with its own address.
async fn same_port_targets(ips: &[[u8; 4]]) -> u16 {
    'retry: for _ in 0..50 {
        let first = loopback(ips[0]).await;
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match tokio::net::TcpListener::bind(SocketAddr::from((*ip, port))).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'retry,
            }
        }
        for l in listeners {
            let me = l.local_addr().unwrap().ip().to_string();
            tokio::spawn(serve_target(l, None, move |_req| {
                let me = me.clone();
                async move { respond(200, me) }
            }));
        }
        return port;
    }
    panic!("no port free on every address of {ips:?}");
}

#[tokio::test]
async fn every_address_of_a_name_can_be_probed_or_failed_over() {
    // 127.0.0.2 and .3 serve; nothing listens on .4 of the same port.
    let port = same_port_targets(&[[127, 0, 0, 2], [127, 0, 0, 3]]).await;
    let (dns, _) = dns_server().await;
    let healthy = "v4-127-0-0-2.v4-127-0-0-3.pool.sitewatch.test";
    let broken = "v4-127-0-0-4.v4-127-0-0-2.v4-127-0-0-3.pool.sitewatch.test";
    // 127.0.0.5 is denied by the network policy: checked per address before any connect.
    let denied = "v4-127-0-0-5.v4-127-0-0-2.pool.sitewatch.test";
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 900ms }}\n\
         network:\n  resolver: [\"{dns}\"]\n  deny: [127.0.0.5/32]\n\
         sites:\n\
         \x20 - id: all-denied-one\n    url: http://{denied}:{port}/\n    addresses: all\n\
         \x20 - id: failover-denied\n    url: http://{denied}:{port}/\n    addresses: happy_eyeballs\n\
         \x20 - id: all-good\n    url: http://{healthy}:{port}/\n    addresses: all\n\
         \x20 - id: all-one-down\n    url: http://{broken}:{port}/\n    addresses: all\n\
         \x20 - id: first\n    url: http://{broken}:{port}/\n\
         \x20 - id: failover\n    url: http://{broken}:{port}/\n    addresses: happy_eyeballs\n    regex: '^127\\.0\\.0\\.2$'\n"
    ));
    let s = ex
        .probed_all(&[
            "all-good",
            "all-one-down",
            "first",
            "failover",
            "all-denied-one",
            "failover-denied",
        ])
        .await;
    let addr = |id: &str, ip: &str| {
        s.get(
            "sitewatch_address_probe_success",
            &[("site", id), ("address", ip)],
        )
    };
    assert_eq!(s.site("all-good", "probe_success"), Some(1.0), "{}", s.text);
    assert_eq!(addr("all-good", "127.0.0.2"), Some(1.0));
    assert_eq!(addr("all-good", "127.0.0.3"), Some(1.0));
    assert!(s
        .get(
            "sitewatch_address_probe_duration_seconds",
            &[("site", "all-good"), ("address", "127.0.0.3")]
        )
        .is_some_and(|d| d > 0.0));
    // One dead address fails the site, and says which.
    assert_class(&s, "all-one-down", "connect_error");
    assert_eq!(addr("all-one-down", "127.0.0.4"), Some(0.0));
    assert_eq!(addr("all-one-down", "127.0.0.2"), Some(1.0));
    assert_eq!(addr("all-one-down", "127.0.0.3"), Some(1.0));
    let e = last_result(&ex, "all-one-down").await;
    let error = e["error"].as_str().unwrap();
    assert!(
        error.starts_with("127.0.0.4: connect to 127.0.0.4:")
            && error.ends_with("(1 of 3 addresses failed)"),
        "{error}"
    );
    assert_eq!(e["addresses"].as_array().map(Vec::len), Some(3), "{e}");
    // The default is the first address, as blackbox_exporter does.
    assert_class(&s, "first", "connect_error");
    assert_eq!(addr("first", "127.0.0.4"), None);
    // Happy eyeballs moves on to the next address, and the body proves which one answered.
    assert_eq!(s.site("failover", "probe_success"), Some(1.0), "{}", s.text);
    assert_eq!(s.site("failover", "probe_ip_protocol"), Some(4.0));
    assert_eq!(last_result(&ex, "failover").await["address"], "127.0.0.2");
    common::assert_promtool_clean(&common::get_text(&ex.url("/metrics")).await);
    // The policy applies to every address: `all` reports the denied one as denied, failover
    // skips it and connects to the allowed one.
    assert_class(&s, "all-denied-one", "denied");
    assert_eq!(addr("all-denied-one", "127.0.0.5"), Some(0.0));
    assert_eq!(addr("all-denied-one", "127.0.0.2"), Some(1.0));
    assert_eq!(
        s.site("failover-denied", "probe_success"),
        Some(1.0),
        "{}",
        s.text
    );
    assert_eq!(
        last_result(&ex, "failover-denied").await["address"],
        "127.0.0.2"
    );
}

/// A listener on `ip:port` whose accept queue is full: the kernel drops further SYNs, so a
/// connection to it hangs instead of being refused. Keep what it returns to keep it full.
async fn black_hole(
    ip: [u8; 4],
    port: u16,
) -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, port))).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    // A backlog of 1 holds two connections; more may be needed on other kernels.
    for _ in 0..4 {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(c)) => held.push(c),
            _ => break,
        }
    }
    (listener, held)
}

#[tokio::test]
async fn happy_eyeballs_moves_on_from_an_address_that_does_not_answer() {
    let port = same_port_targets(&[[127, 0, 0, 2]]).await;
    let _held = black_hole([127, 0, 0, 6], port).await;
    let (dns, _) = dns_server().await;
    let name = "v4-127-0-0-6.v4-127-0-0-2.hole.sitewatch.test";
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 900ms }}\nnetwork:\n  resolver: [\"{dns}\"]\n\
         sites:\n\
         \x20 - id: failover\n    url: http://{name}:{port}/\n    addresses: happy_eyeballs\n\
         \x20 - id: first\n    url: http://{name}:{port}/\n"
    ));
    let s = ex.probed_all(&["failover", "first"]).await;
    // The first address never answers: the first-address probe times out during connect...
    assert_class(&s, "first", "timeout");
    let e = last_result(&ex, "first").await["error"].clone();
    assert_eq!(e, "timed out after 900ms during connect");
    // ...while failover starts the next address after 250 ms and connects there.
    assert_eq!(s.site("failover", "probe_success"), Some(1.0), "{}", s.text);
    assert_eq!(last_result(&ex, "failover").await["address"], "127.0.0.2");
    let connect = s
        .get(
            "probe_http_duration_seconds",
            &[("site", "failover"), ("phase", "connect")],
        )
        .unwrap();
    assert!(
        connect >= 0.25,
        "connect took {connect} s, less than the attempt delay"
    );
}

#[tokio::test]
async fn every_address_stops_at_sixteen() {
    let (dns, _) = dns_server().await;
    let port = common::refused_port().await;
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 900ms }}\nnetwork:\n  resolver: [\"{dns}\"]\n\
         sites:\n  - id: crowd\n    url: http://v4range-127-0-0-10-29.sitewatch.test:{port}/\n    addresses: all\n"
    ));
    let s = ex.probed("crowd").await;
    let probed: Vec<&str> = s
        .of_site("crowd")
        .iter()
        .filter(|x| x.name == "sitewatch_address_probe_success")
        .map(|x| x.labels["address"].as_str())
        .collect();
    assert_eq!(probed.len(), sitewatch::probe::MAX_ADDRESSES, "{}", s.text);
    assert!(
        probed.contains(&"127.0.0.25") && !probed.contains(&"127.0.0.26"),
        "{probed:?}"
    );
    assert_class(&s, "crowd", "connect_error");
}

#[tokio::test]
async fn ip_version_picks_the_family_and_probe_ip_protocol_reports_it() {
    // The same port on 127.0.0.1 and ::1.
    let (port, v4, v6) = 'found: {
        for _ in 0..50 {
            let v4 = loopback([127, 0, 0, 1]).await;
            let port = v4.local_addr().unwrap().port();
            if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
                break 'found (port, v4, v6);
            }
        }
        panic!("no port free on both 127.0.0.1 and ::1");
    };
    let serve = |l: tokio::net::TcpListener| {
        let me: IpAddr = l.local_addr().unwrap().ip();
        tokio::spawn(serve_target(l, None, move |_req| async move {
            respond(200, me.to_string())
        }));
    };
    serve(v4);
    serve(v6);
    let (dns, _) = dns_server().await;
    let name = "v4-127-0-0-1.v6-loopback.dual.sitewatch.test";
    let site = |id: &str, version: &str| {
        format!("  - id: {id}\n    url: http://{name}:{port}/\n    ip_version: {version}\n")
    };
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 900ms }}\nnetwork:\n  resolver: [\"{dns}\"]\nsites:\n{}{}{}{}",
        site("v4", "ipv4"),
        site("v6", "ipv6"),
        site("prefer-v6", "prefer_ipv6"),
        site("prefer-v4", "prefer_ipv4"),
    ));
    let s = ex.probed_all(&["v4", "v6", "prefer-v6", "prefer-v4"]).await;
    for (id, proto, address) in [
        ("v4", 4.0, "127.0.0.1"),
        ("v6", 6.0, "::1"),
        ("prefer-v6", 6.0, "::1"),
        ("prefer-v4", 4.0, "127.0.0.1"),
    ] {
        assert_eq!(s.site(id, "probe_success"), Some(1.0), "{id}:\n{}", s.text);
        assert_eq!(s.site(id, "probe_ip_protocol"), Some(proto), "{id}");
        assert_eq!(last_result(&ex, id).await["address"], address, "{id}");
    }
}

#[tokio::test]
async fn confirmation_thresholds_hold_a_flapping_site_up_until_failures_persist() {
    // Mode 0: every other request to /flappy fails; 1: all fail; 2: all pass.
    let mode = Arc::new(AtomicUsize::new(0));
    let count = Arc::new(AtomicUsize::new(0));
    let listener = loopback([127, 0, 0, 1]).await;
    let t = listener.local_addr().unwrap();
    let (m, c) = (mode.clone(), count.clone());
    tokio::spawn(serve_target(
        listener,
        None,
        move |req: Request<Incoming>| {
            let alternate = req.uri().path() == "/flappy";
            let ok = match m.load(Ordering::SeqCst) {
                0 => !alternate || c.fetch_add(1, Ordering::SeqCst) % 2 == 0,
                1 => false,
                _ => true,
            };
            async move { respond(if ok { 200 } else { 503 }, "") }
        },
    ));
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 200ms, timeout: 150ms }}\nsites:\n\
         \x20 - id: flappy\n    url: http://{t}/flappy\n    failure_threshold: 2\n    success_threshold: 3\n\
         \x20 - id: raw\n    url: http://{t}/raw\n"
    ));
    // Flapping: raw probes fail half the time, the confirmed state never drops.
    let s = ex
        .wait_for("several flaps", |s| {
            // Stop on a success, so the failures after this scrape start a new streak.
            (s.probes("flappy", "http_status") >= 3.0
                && s.probes("flappy", "success") >= 3.0
                && s.site("flappy", "probe_success") == Some(1.0))
            .then(|| s.clone())
        })
        .await;
    assert_eq!(
        s.site("flappy", "sitewatch_site_up"),
        Some(1.0),
        "{}",
        s.text
    );
    // Persistent failure: down after two failures in a row.
    mode.store(1, Ordering::SeqCst);
    let failures_before = s.probes("flappy", "http_status");
    let s = ex
        .wait_for("flappy confirmed down", |s| {
            (s.site("flappy", "sitewatch_site_up") == Some(0.0)).then(|| s.clone())
        })
        .await;
    assert!(s.probes("flappy", "http_status") >= failures_before + 2.0);
    let api = site_json(&ex, "flappy").await;
    assert_eq!(api["checks"]["failure_threshold"], 2, "{api}");
    assert_eq!(api["up"], false, "{api}");
    assert_eq!(s.site("flappy", "probe_success"), Some(0.0));
    // Recovery: up again only after three good probes in a row. No probe succeeds in mode 1,
    // so the count now is the count before recovery.
    let successes_before = s.probes("flappy", "success");
    mode.store(2, Ordering::SeqCst);
    let s = ex
        .wait_for("flappy confirmed up", |s| {
            (s.site("flappy", "sitewatch_site_up") == Some(1.0)).then(|| s.clone())
        })
        .await;
    assert!(
        s.probes("flappy", "success") >= successes_before + 3.0,
        "{}",
        s.text
    );
    // Without thresholds, site_up follows every probe.
    assert_eq!(
        s.site("raw", "sitewatch_site_up"),
        s.site("raw", "probe_success")
    );
}

#[tokio::test]
async fn a_site_may_bring_its_own_histogram_buckets() {
    let t = start_target().await;
    let ex = Exporter::start(&config(&format!(
        "  - id: own\n    url: http://{t}/html\n    histogram_buckets: [0.0001, 30]\n\
         \x20 - id: default\n    url: http://{t}/html\n"
    )));
    let s = ex.probed_all(&["own", "default"]).await;
    let les = |id: &str| -> Vec<f64> {
        s.of_site(id)
            .iter()
            .filter(|x| x.name == "sitewatch_probe_duration_seconds_bucket")
            .map(|x| match x.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            })
            .collect()
    };
    assert_eq!(les("own"), [0.0001, 30.0, f64::INFINITY], "{}", s.text);
    assert_eq!(
        les("default"),
        [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, f64::INFINITY]
    );
    // Every probe of a loopback target takes less than 30 s.
    let count = s
        .site("own", "sitewatch_probe_duration_seconds_count")
        .unwrap();
    assert_eq!(
        s.get(
            "sitewatch_probe_duration_seconds_bucket",
            &[("site", "own"), ("le", "30")]
        ),
        Some(count)
    );
}

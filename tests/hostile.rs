//! Hostile input, table-driven, each with the clear error or result it must give and the proof
//! that nothing else broke: bad configs are refused by a reload while the old config keeps
//! probing; hostile targets each end in their result class while a healthy site beside them
//! keeps succeeding. Only loopback: "denied" addresses are loopback addresses in the deny list.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{dns_server, loopback, Exporter};
use sitewatch::demo::{respond, serve_target, TestCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts connections and hands each socket to `f` after reading the request head.
async fn raw_target(
    ip: [u8; 4],
    f: impl Fn(tokio::net::TcpStream) -> futures_util::future::BoxFuture<'static, ()>
        + Send
        + Sync
        + 'static,
) -> std::net::SocketAddr {
    let listener = loopback(ip).await;
    let addr = listener.local_addr().unwrap();
    let f = Arc::new(f);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                f(sock).await;
            });
        }
    });
    addr
}

/// An HTTP/2 server over TLS (ALPN h2) that resets every stream it is sent.
async fn h2_resetting(cert: &TestCertificate) -> std::net::SocketAddr {
    let listener = loopback([127, 0, 0, 3]).await;
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn hostile_targets_each_end_in_their_class_and_healthy_sites_go_on() {
    let now = common::unix_now();
    // Healthy, and the redirects, on 127.0.0.3 (127.0.0.1 and .2 are denied below).
    let listener = loopback([127, 0, 0, 3]).await;
    let t = listener.local_addr().unwrap();
    let denied = loopback([127, 0, 0, 2]).await.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, move |req| async move {
        match req.uri().path() {
            "/ok" => respond(200, "fine"),
            "/loop-a" => redirect("/loop-b"),
            "/loop-b" => redirect("/loop-a"),
            "/to-denied" => redirect(&format!("http://{denied}/")),
            _ => respond(404, "no"),
        }
    }));
    fn redirect(to: &str) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let mut r = respond(302, "");
        r.headers_mut().insert("location", to.parse().unwrap());
        r
    }
    // An endless fast body, and a slow-loris that sends its headers a byte at a time.
    let endless = raw_target([127, 0, 0, 3], |mut sock| {
        Box::pin(async move {
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            while sock.write_all(chunk.as_bytes()).await.is_ok() {}
        })
    })
    .await;
    let loris = raw_target([127, 0, 0, 3], |mut sock| {
        Box::pin(async move {
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: "
                .iter()
                .chain(std::iter::repeat(&b'a'))
            {
                if sock.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    })
    .await;
    // Too many response headers (hyper's limit is 100).
    let headers = raw_target([127, 0, 0, 3], |mut sock| {
        Box::pin(async move {
            let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
            for i in 0..500 {
                head.push_str(&format!("X-Header-{i}: value\r\n"));
            }
            head.push_str("\r\n");
            let _ = sock.write_all(head.as_bytes()).await;
        })
    })
    .await;
    // Certificates: from an unknown CA, expired, and an HTTP/2 server resetting its streams.
    let good = TestCertificate::generate(now + 86_400).unwrap();
    let expired = TestCertificate::generate(now - 86_400).unwrap();
    let serve_tls = |cert: &TestCertificate| {
        let config = cert.server_config().unwrap();
        async move {
            let l = loopback([127, 0, 0, 3]).await;
            let a = l.local_addr().unwrap();
            tokio::spawn(serve_target(l, Some(config), |_req| async {
                respond(200, "tls")
            }));
            a
        }
    };
    let untrusted = serve_tls(&TestCertificate::generate(now + 86_400).unwrap()).await;
    let expired_at = serve_tls(&expired).await;
    let reset = h2_resetting(&good).await;
    let (dns, _) = dns_server().await;

    let dir = tempfile::tempdir().unwrap();
    let good_ca = common::write_file(dir.path(), "good.pem", &good.ca_pem);
    let expired_ca = common::write_file(dir.path(), "expired.pem", &expired.ca_pem);
    let site =
        |id: &str, url: String, extra: &str| format!("  - id: {id}\n    url: {url}\n{extra}");
    let config = format!(
        "defaults: {{ interval: 1s, timeout: 800ms, max_body_bytes: 64KiB }}\n\
         network:\n  deny: [127.0.0.1/32, 127.0.0.2/32]\n  resolver: [\"{dns}\"]\n  ip_version: ipv4\n\
         sites:\n{}{}{}{}{}{}{}{}{}{}",
        site("healthy", format!("http://{t}/ok"), ""),
        site("redirect-loop", format!("http://{t}/loop-a"), ""),
        site("redirect-to-denied", format!("http://{t}/to-denied"), ""),
        site("name-to-denied", format!("http://shop.sitewatch.test:{}/ok", t.port()), ""),
        site("endless-body", format!("http://{endless}/"), ""),
        site("slow-loris", format!("http://{loris}/"), ""),
        site("too-many-headers", format!("http://{headers}/"), ""),
        site("untrusted-cert", format!("https://127.0.0.3:{}/", untrusted.port()), &format!("    tls: {{ ca_file: {} }}\n", good_ca.display())),
        // The test certificates name localhost and 127.0.0.1; the targets listen on 127.0.0.3.
        site("expired-cert", format!("https://127.0.0.3:{}/", expired_at.port()), &format!("    tls: {{ ca_file: {}, server_name: localhost }}\n", expired_ca.display())),
        site("h2-reset", format!("https://127.0.0.3:{}/", reset.port()), &format!("    tls: {{ ca_file: {}, server_name: localhost }}\n", good_ca.display())),
    );
    let ex = Exporter::start(&config);
    let expected = [
        ("redirect-loop", "error"),
        ("redirect-to-denied", "denied"),
        ("name-to-denied", "denied"),
        ("endless-body", "body_too_large"),
        ("slow-loris", "timeout"),
        ("too-many-headers", "error"),
        ("untrusted-cert", "tls_error"),
        ("expired-cert", "tls_error"),
        ("h2-reset", "error"),
    ];
    let s = ex
        .wait_for("every hostile site failing in its class, twice", |s| {
            let all = expected
                .iter()
                .all(|(id, class)| s.probes(id, class) >= 2.0);
            (all && s.probes("healthy", "success") >= 2.0).then(|| s.clone())
        })
        .await;
    for (id, class) in expected {
        assert_eq!(s.site(id, "probe_success"), Some(0.0), "{id}");
        assert!(s.probes(id, class) >= 2.0, "{id} is not {class}");
    }
    assert_eq!(s.site("healthy", "probe_success"), Some(1.0));
    assert_eq!(s.get("sitewatch_probes_skipped_total", &[]), Some(0.0));
    let sites = common::get_text(&ex.url("/api/v1/sites")).await;
    for reason in [
        "denied by network.deny 127.0.0.2/32",
        "denied by network.deny 127.0.0.1/32",
        "redirect loop",
    ] {
        assert!(sites.contains(reason), "no {reason:?} in {sites}");
    }
}

#[tokio::test]
async fn bad_configs_are_refused_and_the_old_one_keeps_probing() {
    let listener = loopback([127, 0, 0, 1]).await;
    let t = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |_req| async {
        respond(200, "ok")
    }));
    let good = format!(
        "sites:\n  - id: up\n    url: http://{t}/\n    interval: 500ms\n    timeout: 400ms\n"
    );
    let ex = Exporter::start_with(&good, &["--web.enable-lifecycle"], &[]);
    ex.probed("up").await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed YAML", b"sites: [\n  - id: x\n".to_vec(), "did not find expected"),
        ("huge file", {
            let mut v = b"sites: []\n".to_vec();
            v.extend(std::iter::repeat_n(b"# padding padding padding padding padding padding\n".as_slice(), 1_400_000).flatten());
            v
        }, "larger than 64 MiB"),
        ("deep nesting", format!("x: {}\n", "[".repeat(5_000)).into_bytes(), "nest deeper than 100 levels"),
        ("invalid UTF-8", b"sites:\n  - id: \xff\xfe\n".to_vec(), "UTF-8"),
        ("regex bomb", format!("sites:\n  - id: bomb\n    url: http://{t}/\n    regex: '(a{{1000}}){{1000}}'\n").into_bytes(), "exceeds size limit"),
        ("unknown field", format!("sites:\n  - id: x\n    url: http://{t}/\n    intervall: 1s\n").into_bytes(), "unknown field `intervall`"),
        ("alias bomb", b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n".to_vec(), "repetition limit exceeded"),
    ];
    let client = reqwest::Client::new();
    for (name, bytes, message) in cases {
        std::fs::write(ex.config_path(), &bytes).unwrap();
        let r = client.post(ex.url("/-/reload")).send().await.unwrap();
        assert_eq!(r.status(), 500, "{name}");
        let body = r.text().await.unwrap();
        assert!(body.contains(message), "{name}: {body}");
        assert!(
            body.contains("sitewatch.yaml"),
            "{name} names the file: {body}"
        );
        // The old config runs on.
        let before = ex.scrape().await.probes("up", "success");
        let s = ex
            .wait_for(&format!("a probe after the {name} reload"), |s| {
                (s.probes("up", "success") > before).then(|| s.clone())
            })
            .await;
        assert_eq!(
            s.get("sitewatch_config_last_reload_successful", &[]),
            Some(0.0),
            "{name}"
        );
        assert_eq!(s.get("sitewatch_sites", &[]), Some(1.0), "{name}");
    }
    std::fs::write(ex.config_path(), &good).unwrap();
    let r = client.post(ex.url("/-/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

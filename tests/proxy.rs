//! Probes through an HTTP proxy: absolute-form requests for `http://`, a `CONNECT` tunnel for
//! `https://`, refused tunnels, and the network policy applied to the proxy's own address.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{dns_server, loopback, refused_port, Exporter};
use sitewatch::demo::{respond, serve_target, TestCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a proxy saw: one entry per request or request line.
type Seen = Arc<Mutex<Vec<String>>>;

/// What an HTTP proxy saw: each request's URI and `Host` header.
type Requests = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Reads a request head byte by byte up to and including the blank line, so nothing after it
/// (the start of a tunneled TLS handshake) is consumed. `None` if the peer closed first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A CONNECT proxy on 127.0.0.1 that records each request line and tunnels only to `allowed`;
/// any other request gets `403`.
async fn connect_proxy(allowed: SocketAddr) -> (SocketAddr, Seen) {
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let expected = format!("CONNECT {allowed} HTTP/1.1");
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            let expected = expected.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                let line = head.lines().next().unwrap_or_default().to_string();
                log.lock().unwrap().push(line.clone());
                if line != expected {
                    let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(allowed).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, seen)
}

/// A proxy on 127.0.0.1 that records each request line and refuses everything with `403`.
async fn refusing_proxy() -> (SocketAddr, Seen) {
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                if let Some(head) = read_head(&mut client).await {
                    let line = head.lines().next().unwrap_or_default().to_string();
                    log.lock().unwrap().push(line);
                    let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn http_through_proxy_uses_absolute_form() {
    let listener = loopback([127, 0, 0, 1]).await;
    let proxy = listener.local_addr().unwrap();
    let seen: Requests = Arc::default();
    let log = seen.clone();
    tokio::spawn(serve_target(listener, None, move |req| {
        let log = log.clone();
        async move {
            let host = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            log.lock().unwrap().push((req.uri().to_string(), host));
            respond(200, "via proxy")
        }
    }));
    // A loopback name server: if the exporter wrongly resolved the target, it would ask here.
    let (dns, queries) = dns_server().await;
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\n\
         network:\n  resolver: [\"{dns}\"]\n\
         sites:\n\
         \x20 - id: proxied\n    url: http://shop.sitewatch.test:8080/page?q=1\n    proxy: http://{proxy}\n"
    ));
    let s = ex
        .wait_for("a successful probe through the proxy", |s| {
            (s.probes("proxied", "success") >= 1.0).then(|| s.clone())
        })
        .await;
    assert_eq!(
        s.site("proxied", "probe_success"),
        Some(1.0),
        "{}\n{}",
        s.text,
        ex.logs()
    );
    assert_eq!(s.site("proxied", "probe_http_status_code"), Some(200.0));
    assert_eq!(
        s.site("proxied", "probe_http_content_length"),
        Some("via proxy".len() as f64)
    );
    assert_eq!(s.site("proxied", "probe_http_ssl"), Some(0.0));
    // Only the proxy's IP literal is "resolved": no lookup time, no query.
    assert_eq!(
        s.site("proxied", "probe_dns_lookup_time_seconds"),
        Some(0.0)
    );
    assert!(queries.lock().unwrap().is_empty(), "{:?}", queries.lock());
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for (uri, host) in &seen {
        assert_eq!(uri, "http://shop.sitewatch.test:8080/page?q=1");
        assert_eq!(host.as_deref(), Some("shop.sitewatch.test:8080"));
    }
}

#[tokio::test]
async fn https_through_connect_tunnel() {
    let now = common::unix_now();
    let not_after = now + 30 * 86_400 + 41;
    let cert = TestCertificate::generate(not_after).unwrap();
    let listener = loopback([127, 0, 0, 1]).await;
    let target = listener.local_addr().unwrap();
    tokio::spawn(serve_target(
        listener,
        Some(cert.server_config().unwrap()),
        |_req| async { respond(200, "secure via tunnel") },
    ));
    let (proxy, seen) = connect_proxy(target).await;
    let fixtures = tempfile::tempdir().unwrap();
    let ca = common::write_file(fixtures.path(), "ca.pem", &cert.ca_pem);
    let port = target.port();
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\n\
         sites:\n\
         \x20 - id: tunneled\n    url: https://127.0.0.1:{port}/\n    tls: {{ ca_file: {ca} }}\n    proxy: http://{proxy}\n",
        ca = ca.display()
    ));
    let s = ex
        .wait_for("a probe through the tunnel", |s| {
            s.site("tunneled", "probe_success").map(|_| s.clone())
        })
        .await;
    assert_eq!(
        s.site("tunneled", "probe_success"),
        Some(1.0),
        "{}\n{}",
        s.text,
        ex.logs()
    );
    assert_eq!(
        s.site("tunneled", "probe_ssl_earliest_cert_expiry"),
        Some(not_after as f64)
    );
    assert_eq!(s.site("tunneled", "probe_http_ssl"), Some(1.0));
    assert_eq!(s.site("tunneled", "probe_http_status_code"), Some(200.0));
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for line in &seen {
        assert_eq!(line, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1"));
    }
}

#[tokio::test]
async fn proxy_refusing_connect_is_a_connect_error() {
    let (proxy, seen) = refusing_proxy().await;
    // Nothing listens on the target; the proxy refuses before anyone would connect to it.
    let port = refused_port().await;
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\n\
         sites:\n\
         \x20 - id: refused\n    url: https://127.0.0.1:{port}/\n    proxy: http://{proxy}\n"
    ));
    let s = ex
        .wait_for("a probe refused by the proxy", |s| {
            s.site("refused", "probe_success").map(|_| s.clone())
        })
        .await;
    assert_eq!(s.site("refused", "probe_success"), Some(0.0));
    assert!(
        s.probes("refused", "connect_error") >= 1.0,
        "{}\n{}",
        s.text,
        ex.logs()
    );
    assert_eq!(s.probes("refused", "success"), 0.0);
    assert_eq!(s.site("refused", "probe_http_status_code"), Some(0.0));
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for line in &seen {
        assert_eq!(line, &format!("CONNECT 127.0.0.1:{port} HTTP/1.1"));
    }
}

#[tokio::test]
async fn denied_proxy_address_is_denied() {
    // A proxy on 127.0.0.3 that only counts connections; the policy denies its address.
    let listener: TcpListener = loopback([127, 0, 0, 3]).await;
    let proxy = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (dns, queries) = dns_server().await;
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\n\
         network:\n  deny: [127.0.0.3/32]\n  resolver: [\"{dns}\"]\n\
         sites:\n\
         \x20 - id: via-denied\n    url: http://shop.sitewatch.test/\n    proxy: http://{proxy}\n\
         \x20 - id: tls-via-denied\n    url: https://shop.sitewatch.test/\n    proxy: http://{proxy}\n"
    ));
    let s = ex
        .wait_for("two denied probes of each site", |s| {
            (s.probes("via-denied", "denied") >= 2.0 && s.probes("tls-via-denied", "denied") >= 2.0)
                .then(|| s.clone())
        })
        .await;
    for id in ["via-denied", "tls-via-denied"] {
        assert_eq!(s.site(id, "probe_success"), Some(0.0), "{id}");
        assert_eq!(s.probes(id, "success"), 0.0, "{id}");
        assert_eq!(s.probes(id, "connect_error"), 0.0, "{id}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert!(queries.lock().unwrap().is_empty(), "{:?}", queries.lock());
}

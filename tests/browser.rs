//! The status page in a real headless Chromium, driven over WebDriver (chromedriver): the
//! up/down state and text of the sites, a site going down shown after a refresh, and a
//! screenshot (`target/status-page.png`; `UPDATE_SCREENSHOT=1` writes `docs/status-page.png`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, loopback, require_tool, Exporter, DEADLINE};
use serde_json::{json, Value};
use sitewatch::demo::{respond, serve_target, TestCertificate};

async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    let text = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A chromedriver process and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while client.get(format!("{url}/status")).send().await.is_err() {
            assert!(start.elapsed() < DEADLINE, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
            }
        }}});
        let session = post_json(&client, &format!("{url}/session"), &caps).await;
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        Browser {
            driver,
            base: format!("{url}/session/{id}"),
            client,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let text = req.send().await.unwrap().text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn refresh(&self) {
        self.cmd(reqwest::Method::POST, "/refresh", json!({})).await;
    }

    /// The visible text of every element matching a CSS selector.
    async fn texts(&self, css: &str) -> Vec<String> {
        let found = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        let mut out = Vec::new();
        for el in found.as_array().cloned().unwrap_or_default() {
            let id = el
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let text = self
                .cmd(
                    reqwest::Method::GET,
                    &format!("/element/{id}/text"),
                    Value::Null,
                )
                .await;
            out.push(text.as_str().unwrap_or_default().to_string());
        }
        out
    }

    async fn screenshot(&self) -> Vec<u8> {
        let b64 = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }
}

#[tokio::test]
async fn status_page_in_a_real_browser() {
    if !require_tool("chromedriver") || !require_tool("chromium") {
        return;
    }
    let listener = loopback([127, 0, 0, 1]).await;
    let t = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |req| async move {
        match req.uri().path() {
            "/maintenance" => respond(200, "down for maintenance"),
            "/fail" => respond(503, "unavailable"),
            _ => respond(200, "fine"),
        }
    }));
    let cert = TestCertificate::generate(common::unix_now() + 12 * 86_400).unwrap();
    let tls = loopback([127, 0, 0, 1]).await;
    let tls_addr = tls.local_addr().unwrap();
    tokio::spawn(serve_target(
        tls,
        Some(cert.server_config().unwrap()),
        |_req| async { respond(200, "secure") },
    ));
    let dir = tempfile::tempdir().unwrap();
    let ca = common::write_file(dir.path(), "ca.pem", &cert.ca_pem);
    let sites = |checkout_path: &str| {
        format!(
            "defaults: {{ interval: 1s, timeout: 800ms }}\nsites:\n\
             \x20 - id: shop-home\n    url: http://{t}/\n    tenant: acme\n\
             \x20 - id: checkout\n    url: http://{t}{checkout_path}\n    tenant: acme\n\
             \x20 - id: api\n    url: https://127.0.0.1:{}/\n    tenant: globex\n    tls: {{ ca_file: {} }}\n\
             \x20 - id: blog\n    url: http://{t}/maintenance\n    tenant: globex\n    regex_absent: maintenance\n\
             \x20 - id: status\n    url: http://{t}/\n",
            tls_addr.port(),
            ca.display()
        )
    };
    let ex = Exporter::start(&sites("/checkout"));
    ex.probed_all(&["shop-home", "checkout", "api", "blog", "status"])
        .await;

    let browser = Browser::start().await;
    browser.open(&ex.url("/")).await;
    let banner = browser.texts("p.banner").await;
    assert_eq!(banner, ["1 of 5 sites down"]);
    let headings = browser.texts("h2").await;
    assert_eq!(headings, ["globex", "acme", "Sites without a tenant"]);
    let rows = browser.texts("tbody tr").await;
    assert!(rows[0].starts_with("blog DOWN"), "{rows:?}");
    assert!(rows[0].contains("regex_absent"), "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("api UP") && r.contains("expires in 11 d")),
        "{rows:?}"
    );

    // checkout starts failing: after a refresh the page shows it.
    std::fs::write(ex.config_path(), sites("/fail")).unwrap();
    ex.wait_for("checkout failing", |s| {
        (s.site("checkout", "probe_success") == Some(0.0)).then_some(())
    })
    .await;
    browser.refresh().await;
    assert_eq!(browser.texts("p.banner").await, ["2 of 5 sites down"]);
    let rows = browser.texts("tbody tr").await;
    assert!(
        rows.iter()
            .any(|r| r.starts_with("checkout DOWN") && r.contains("503")),
        "{rows:?}"
    );

    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = if std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        target.join("docs/status-page.png")
    } else {
        target.join("target/status-page.png")
    };
    std::fs::write(&path, png).unwrap();
}

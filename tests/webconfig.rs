//! `--web.config.file`: the endpoints behind TLS and basic auth, scraped by a real Prometheus
//! with the matching `tls_config` and `basic_auth` (and refused with the wrong password).

mod common;

use rustls_pki_types::pem::PemObject;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, require_tool, Exporter, DEADLINE};
use sitewatch::demo::TestCertificate;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A web config in `dir` serving TLS with a fresh test certificate, with basic auth for
/// `(user, password)` when given (paths relative to the file). Returns the certificate, the CA
/// file and the web config file.
fn tls_web_config(
    dir: &std::path::Path,
    user: Option<(&str, &str)>,
) -> (TestCertificate, std::path::PathBuf, std::path::PathBuf) {
    let cert = TestCertificate::generate(common::unix_now() + 86_400).unwrap();
    write_pair(dir, &cert, &cert, 0);
    let ca = common::write_file(dir, "ca.crt", &cert.ca_pem);
    let mut text =
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n".to_string();
    if let Some((user, password)) = user {
        let hash = bcrypt::hash(password, 4).unwrap();
        text += &format!("basic_auth_users:\n  {user}: '{hash}'\n");
    }
    let web = common::write_file(dir, "web.yml", &text);
    (cert, ca, web)
}

#[tokio::test]
async fn endpoints_need_tls_and_the_right_password() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, ca, web) = tls_web_config(dir.path(), Some(("prometheus", "scrape-pw")));
    let ex = Exporter::start_with(
        "sites: []\n",
        &["--web.config.file", web.to_str().unwrap()],
        &[],
    );
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/metrics", ex.addr.port());
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"sitewatch\"");
    let r = client
        .get(&url)
        .basic_auth("prometheus", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&url)
        .basic_auth("prometheus", Some("scrape-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("sitewatch_build_info"));
    // Plain HTTP gets no answer.
    assert!(reqwest::get(format!("http://{}/metrics", ex.addr))
        .await
        .is_err());

    if !require_tool("prometheus") {
        return;
    }
    let prom_dir = tempfile::tempdir().unwrap();
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config: {{ ca_file: {ca}, server_name: localhost }}\n    basic_auth: {{ username: prometheus, password: {password} }}\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n",
            ca = ca.display(),
            port = ex.addr.port()
        )
    };
    let config = common::write_file(
        prom_dir.path(),
        "prometheus.yml",
        &format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n{}{}",
            job("right", "scrape-pw"),
            job("wrong", "nope")
        ),
    );
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let up = loop {
        let answer = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", "up")])
            .send()
            .await;
        if let Ok(r) = answer {
            let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            let up: Vec<(String, String)> = body["data"]["result"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            (
                                s["metric"]["job"].as_str().unwrap().to_string(),
                                s["value"][1].as_str().unwrap().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if up.len() == 2 {
                break up;
            }
        }
        assert!(start.elapsed() < DEADLINE, "Prometheus never scraped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = prom.kill();
    let _ = prom.wait();
    let mut up = up;
    up.sort();
    assert_eq!(
        up,
        [
            ("right".to_string(), "1".to_string()),
            ("wrong".to_string(), "0".to_string())
        ]
    );
}

#[test]
fn a_bad_web_config_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let web = common::write_file(
        dir.path(),
        "web.yml",
        "basic_auth_users:\n  prometheus: plaintext\n",
    );
    let config = common::write_file(dir.path(), "sites.yaml", "sites: []\n");
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args([
            "run",
            "--web.listen-address",
            "127.0.0.1:0",
            "--web.config.file",
        ])
        .arg(&web)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web.yml") && err.contains("basic_auth_users.prometheus"),
        "{err}"
    );
}

#[tokio::test]
async fn a_keeper_follows_an_exporter_behind_tls_and_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (_cert, ca, web) = tls_web_config(dir.path(), Some(("keeper", "keeper-pw")));
    let right = common::write_file(dir.path(), "right-pw", "keeper-pw\n");
    let wrong = common::write_file(dir.path(), "wrong-pw", "guess\n");
    let target = common::ok_or_fail_target(500).await;
    let ex = Exporter::start_with(
        &format!("defaults: {{ interval: 1s, timeout: 500ms }}\nsites:\n  - id: shop\n    url: http://{target}/ok\n"),
        &["--web.config.file", web.to_str().unwrap()],
        &[],
    );
    let source = format!("https://localhost:{}", ex.addr.port());
    let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let access = |password: &std::path::Path| {
        vec![
            "--source.ca-file".to_string(),
            ca.display().to_string(),
            "--source.username".into(),
            "keeper".into(),
            "--source.password-file".into(),
            password.display().to_string(),
        ]
    };
    let args = access(&right);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let keeper = common::keeper(&source, &db("right.db"), &args);
    keeper
        .wait_for("rows written through TLS and basic auth", |s| {
            s.get("sitewatch_keeper_rows_written_total", &[])
                .filter(|n| *n > 0.0)
        })
        .await;
    // The wrong password gets 401s, and says so, and writes nothing.
    let args = access(&wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = common::keeper(&source, &db("wrong.db"), &args);
    refused.wait_for_log("401 Unauthorized").await;
    let s = refused.scrape().await;
    assert_eq!(s.get("sitewatch_keeper_rows_written_total", &[]), Some(0.0));
    assert!(!refused.logs().contains("guess"), "the password was logged");
}

/// The leaf certificate the server on `port` presents to a fresh handshake.
async fn served_leaf(port: u16, roots: &[&TestCertificate]) -> Vec<u8> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(c.ca_pem.as_bytes()) {
            store.add(der.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Writes a certificate and key pair, stamped `age_s` seconds into the future so a rewrite in
/// the same clock tick still counts as a change.
fn write_pair(dir: &std::path::Path, cert: &TestCertificate, key_of: &TestCertificate, age_s: u64) {
    for (name, text) in [
        ("server.crt", pem("CERTIFICATE", &cert.leaf)),
        (
            "server.key",
            pem("PRIVATE KEY", key_of.key.secret_pkcs8_der()),
        ),
    ] {
        let path = common::write_file(dir, name, &text);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(age_s))
            .unwrap();
    }
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _ca, web) = tls_web_config(dir.path(), None);
    let now = common::unix_now();
    let second = TestCertificate::generate(now + 2 * 86_400).unwrap();
    let third = TestCertificate::generate(now + 3 * 86_400).unwrap();
    let ex = Exporter::start_with(
        "sites: []\n",
        &["--web.config.file", web.to_str().unwrap()],
        &[],
    );
    let port = ex.addr.port();
    let roots = [&first, &second, &third];
    assert_eq!(served_leaf(port, &roots).await, first.leaf.to_vec());
    // cert-manager writes the new pair: the next handshake gets it.
    write_pair(dir.path(), &second, &second, 10);
    assert_eq!(served_leaf(port, &roots).await, second.leaf.to_vec());
    // A pair whose key does not match (a rotation caught half-way) keeps the one in use...
    write_pair(dir.path(), &third, &second, 20);
    assert_eq!(served_leaf(port, &roots).await, second.leaf.to_vec());
    ex.wait_for_log("keeping the one in use").await;
    // ...until the pair is whole again.
    write_pair(dir.path(), &third, &third, 30);
    assert_eq!(served_leaf(port, &roots).await, third.leaf.to_vec());
}

//! A planted secret must not come out of any surface: logs at trace level, `/metrics` in both
//! formats, the API, `check-config` and reload errors, `once` reports, pushed samples and the
//! keeper's SQL tables. The secrets do reach the places they are for (the target, the
//! remote-write receiver), which proves the test is looking at the right data.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{loopback, Exporter};
use http_body_util::BodyExt;
use sitewatch::demo::{respond, serve_target};

const MARK: &str = "S3CRET";

#[tokio::test]
async fn planted_secrets_stay_out_of_every_output() {
    // The target records the Authorization headers it is sent.
    let seen_auth = Arc::new(Mutex::new(Vec::<String>::new()));
    let listener = loopback([127, 0, 0, 1]).await;
    let t = listener.local_addr().unwrap();
    let log = seen_auth.clone();
    tokio::spawn(serve_target(listener, None, move |req| {
        if let Some(v) = req.headers().get("authorization") {
            log.lock()
                .unwrap()
                .push(v.to_str().unwrap_or("").to_string());
        }
        async { respond(200, "fine") }
    }));
    // The remote-write receiver records its headers and the decoded samples.
    let pushed = Arc::new(Mutex::new(Vec::<String>::new()));
    let listener = loopback([127, 0, 0, 1]).await;
    let rw = listener.local_addr().unwrap();
    let log = pushed.clone();
    tokio::spawn(serve_target(listener, None, move |req| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let decoded = sitewatch::remote_write::proto::decode(&bytes).unwrap();
            let auth = parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            log.lock().unwrap().push(format!("{auth:?} {decoded:?}"));
            respond(204, "")
        }
    }));

    let dir = tempfile::tempdir().unwrap();
    let pw = common::write_file(dir.path(), "pw", &format!("{MARK}-basic\n"));
    let rw_token = common::write_file(dir.path(), "rw-token", &format!("{MARK}-push\n"));
    let config = format!(
        "remote_write:\n  - url: http://{rw}/api/v1/write\n    bearer_token_file: {rw_token}\n    queue: {{ batch_send_deadline: 100ms }}\n\
         sites:\n\
         \x20 - id: basic\n    url: http://{t}/a\n    interval: 500ms\n    timeout: 400ms\n    basic_auth: {{ username: probe, password_file: {pw} }}\n\
         \x20 - id: bearer\n    url: http://{t}/b\n    interval: 500ms\n    timeout: 400ms\n    bearer_token_env: PROBE_TOKEN\n",
        rw_token = rw_token.display(),
        pw = pw.display(),
    );
    let token = format!("{MARK}-bearer");
    // Logs at trace level, every crate's.
    let ex_dir = tempfile::tempdir().unwrap();
    std::fs::write(ex_dir.path().join("sitewatch.yaml"), &config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitewatch"));
    cmd.args([
        "run",
        "--web.listen-address",
        "127.0.0.1:0",
        "--log.level",
        "trace",
    ])
    .args(["--web.enable-lifecycle", "--config"])
    .arg(ex_dir.path().join("sitewatch.yaml"))
    .env("PROBE_TOKEN", &token);
    let ex = Exporter::spawn(cmd, ex_dir);
    let db = dir.path().join("keeper.db");
    let keeper = common::keeper(
        &format!("http://{}", ex.addr),
        &format!("sqlite://{}", db.display()),
        &["--log.level", "trace"],
    );

    ex.wait_for("probes of both sites and a push", |s| {
        let probed = s.probes("basic", "success") >= 2.0 && s.probes("bearer", "success") >= 2.0;
        let sent = s
            .get("sitewatch_remote_write_samples_sent_total", &[])
            .unwrap_or(0.0);
        (probed && sent > 0.0).then_some(())
    })
    .await;
    keeper
        .wait_for("rows written", |s| {
            s.get("sitewatch_keeper_rows_written_total", &[])
                .filter(|v| *v >= 4.0)
        })
        .await;

    // A bad reload: its errors go to the log and the reload response. Credentials written
    // into URLs are refused without being repeated.
    let bad = format!(
        "{config}\x20 - id: in-url\n    url: http://user:{MARK}-url@{t}/\n\
         \x20 - id: proxied\n    url: http://{t}/\n    proxy: https://user:{MARK}-proxy@127.0.0.1:3128\n"
    );
    std::fs::write(ex.config_path(), &bad).unwrap();
    let reload_answer = reqwest::Client::new()
        .post(ex.url("/-/reload"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        reload_answer.contains("credentials in the URL"),
        "{reload_answer}"
    );
    let check = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(["check-config"])
        .arg(ex.config_path())
        .env("PROBE_TOKEN", &token)
        .output()
        .unwrap();
    let check_output = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(check.status.code(), Some(1), "{check_output}");

    // `once` with the good config, in JSON.
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, &config).unwrap();
    let good_path = good.clone();
    let token2 = token.clone();
    let once = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .args([
                "once",
                "--output",
                "json",
                "--log.level",
                "trace",
                "--config",
            ])
            .arg(&good_path)
            .env("PROBE_TOKEN", &token2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let once_output = format!(
        "{}{}",
        String::from_utf8_lossy(&once.stdout),
        String::from_utf8_lossy(&once.stderr)
    );
    assert!(once.status.success(), "{once_output}");

    let get = |url: String, accept: &'static str| async move {
        reqwest::Client::new()
            .get(url)
            .header("accept", accept)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let mut surfaces: Vec<(&str, String)> = vec![
        ("/metrics", get(ex.url("/metrics"), "text/plain").await),
        (
            "/metrics (OpenMetrics)",
            get(
                ex.url("/metrics"),
                "application/openmetrics-text; version=1.0.0",
            )
            .await,
        ),
        ("/api/v1/sites", get(ex.url("/api/v1/sites"), "*/*").await),
        (
            "/api/v1/sites/basic",
            get(ex.url("/api/v1/sites/basic"), "*/*").await,
        ),
        ("status page", get(ex.url("/"), "text/html").await),
        (
            "/api/v1/results",
            get(ex.url("/api/v1/results?after=0"), "*/*").await,
        ),
        (
            "keeper /metrics",
            get(keeper.url("/metrics"), "text/plain").await,
        ),
        ("reload answer", reload_answer),
        ("check-config", check_output),
        ("once", once_output),
    ];
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar::<_, String>("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(tables.iter().any(|t| t == "stats"), "{tables:?}");
    for table in tables {
        // Every column of every row, as text.
        let cols: Vec<String> = sqlx::query_scalar::<_, String>(&format!(
            "SELECT name FROM pragma_table_info('{table}')"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        let expr = cols
            .iter()
            .map(|c| format!("COALESCE(CAST(\"{c}\" AS TEXT), '')"))
            .collect::<Vec<_>>()
            .join(" || ' ' || ");
        let rows: Vec<String> =
            sqlx::query_scalar::<_, String>(&format!("SELECT {expr} FROM {table}"))
                .fetch_all(&pool)
                .await
                .unwrap();
        surfaces.push(("SQL table", format!("{table}: {}", rows.join("\n"))));
    }
    let pushed_text = pushed.lock().unwrap().join("\n");
    assert!(
        pushed_text.contains(&format!("Bearer {MARK}-push")),
        "the receiver got its token"
    );
    // Pushed samples, without the Authorization header meant for the receiver.
    surfaces.push((
        "pushed samples",
        pushed_text.replace(&format!("Bearer {MARK}-push"), ""),
    ));
    surfaces.push(("exporter logs", ex.logs()));
    surfaces.push(("keeper logs", keeper.logs()));

    for (name, text) in &surfaces {
        assert!(
            !text.is_empty() || name.starts_with("SQL"),
            "{name} is empty"
        );
        if let Some(at) = text.find(MARK) {
            let from = at.saturating_sub(200);
            panic!(
                "{name} leaks a secret: ...{}...",
                &text[from..(at + 60).min(text.len())]
            );
        }
    }
    // The secrets did go where they belong.
    let auth = seen_auth.lock().unwrap().join(" ");
    assert!(auth.contains(&format!("Bearer {MARK}-bearer")), "{auth}");
    assert!(auth.contains("Basic "), "{auth}");
}

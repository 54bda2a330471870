//! `sitewatch once`: every site probed once, a report, and an exit status for cron and CI.

mod common;

use std::process::Command;

async fn target() -> std::net::SocketAddr {
    common::ok_or_fail_target(503).await
}

/// Runs `sitewatch once` on `config` off the test's runtime (the targets live on it).
async fn once(config: String, args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.yaml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .args(["once", "--config"])
            .arg(&path)
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn exit_status_and_table_report_every_site() {
    let t = target().await;
    let (code, out) = once(
        format!(
            "sites:\n  - id: up\n    url: http://{t}/ok\n  - id: down\n    url: http://{t}/fail\n    tenant: acme\n"
        ),
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("SITE") && lines[0].contains("RESULT"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("up ") && lines[1].contains("success") && lines[1].contains("200"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("acme/down")
            && lines[2].contains("http_status")
            && lines[2].contains("503"),
        "{out}"
    );
    assert!(
        lines[2].contains("status 503 is not in valid_status"),
        "{out}"
    );
    assert_eq!(lines[3], "2 sites, 1 failed");

    let (code, _) = once(format!("sites:\n  - id: up\n    url: http://{t}/ok\n"), &[]).await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn json_output_for_machines() {
    let t = target().await;
    let (code, out) = once(
        format!(
            "sites:\n  - id: up\n    url: http://{t}/ok\n  - id: down\n    url: http://{t}/x\n"
        ),
        &["--output", "json"],
    )
    .await;
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["sites"][0]["site"], "up");
    assert_eq!(v["sites"][0]["result"], "success");
    assert_eq!(v["sites"][0]["status_code"], 200);
    assert_eq!(v["sites"][1]["result"], "http_status");
    assert_eq!(v["sites"][1]["status_code"], 503);
}

#[tokio::test]
async fn a_bad_config_exits_78() {
    let (code, _) = once("sites:\n  - id: x\n    url: ftp://nowhere/\n".into(), &[]).await;
    assert_eq!(code, Some(78));
}

#[tokio::test]
async fn table_reports_the_push() {
    let t = target().await;
    let port = common::refused_port().await;
    let (code, out) = once(
        format!(
            "remote_write:\n  - url: http://127.0.0.1:{port}/api/v1/write\n    name: gone\n\
             sites:\n  - id: up\n    url: http://{t}/ok\n"
        ),
        &["--push.timeout", "200ms"],
    )
    .await;
    assert_eq!(
        code,
        Some(1),
        "every site passed but the push did not land: {out}"
    );
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with("remote-write gone: 0 samples sent, 0 failed, ")
            && last.ends_with(" dropped")
            && !last.contains(" 0 dropped"),
        "{out}"
    );
}

//! The deployment files: Kubernetes manifests against the Kubernetes and Prometheus Operator
//! schemas, the compose file through `docker-compose config`, and what of the Dockerfile can
//! be checked without pulling base images (its sources exist, the lock file is current, the
//! binary's own health check works).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require_tool, Exporter};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn check(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    if !require_tool("node") {
        return;
    }
    if !repo("deploy/kubernetes/check/node_modules/kubernetes-models").exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "deploy/kubernetes/check/node_modules is missing: scripts/test runs npm ci there"
            );
        }
        eprintln!("SKIPPED: run `npm ci --prefix deploy/kubernetes/check` (scripts/test does)");
        return;
    }
    let out = check(Command::new("node").arg("deploy/kubernetes/check/check.mjs"));
    assert!(out.contains("Kubernetes objects valid"), "{out}");
}

#[test]
fn compose_file_is_valid() {
    if !require_tool("docker-compose") {
        return;
    }
    check(Command::new("docker-compose").args([
        "-f",
        "deploy/compose/compose.yaml",
        "config",
        "-q",
    ]));
}

#[test]
fn dockerfile_sources_exist_and_the_lock_file_is_current() {
    let dockerfile = std::fs::read_to_string(repo("deploy/docker/Dockerfile")).unwrap();
    let mut copied = 0;
    for line in dockerfile.lines() {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                repo(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
            copied += 1;
        }
    }
    assert!(copied >= 4, "{dockerfile}");
    assert!(dockerfile.contains("cargo build --release --locked"));
    // `--locked` fails the image build when Cargo.lock is stale; so does this.
    check(Command::new(env!("CARGO")).args([
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--no-deps",
    ]));
}

#[tokio::test]
async fn healthcheck_command_reports_the_endpoint() {
    let ex = Exporter::start("sites: []\n");
    let sitewatch = env!("CARGO_BIN_EXE_sitewatch");
    let url = ex.url("/-/healthy");
    let ok = tokio::task::spawn_blocking(move || {
        Command::new(sitewatch)
            .args(["healthcheck", &url])
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(ok.success());
    let port = common::refused_port().await;
    let down = tokio::task::spawn_blocking(move || {
        Command::new(sitewatch)
            .args(["healthcheck", &format!("http://127.0.0.1:{port}/-/healthy")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("healthcheck:"));
}

//! Hot reload against the real binary: every way a config changes on disk, bad configs
//! rejected whole, and reloads that leave unchanged sites alone. Every wait is a condition
//! with a deadline.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use common::{loopback, run_command, Exporter, Scrape};
use sitewatch::demo::{respond, serve_target};

async fn target() -> SocketAddr {
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |_req| async {
        respond(200, "ok")
    }));
    addr
}

/// A config of the given site ids, all probing `t` every second.
fn sites(t: SocketAddr, ids: &[&str]) -> String {
    let mut out = String::from("defaults: { interval: 1s, timeout: 500ms }\nsites:\n");
    for id in ids {
        out.push_str(&format!("  - id: {id}\n    url: http://{t}/{id}\n"));
    }
    out
}

fn reloads(s: &Scrape, result: &str) -> f64 {
    s.get("sitewatch_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0)
}

/// Waits until exactly `ids` are exported, each probed at least once.
async fn wait_for_sites(ex: &Exporter, ids: &[&str]) -> Scrape {
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    ex.wait_for(&format!("sites {ids:?}"), |s| {
        let mut have: Vec<String> = s
            .samples
            .iter()
            .filter(|x| x.name == "probe_success")
            .filter_map(|x| x.labels.get("site").cloned())
            .collect();
        have.sort();
        (have == want).then(|| s.clone())
    })
    .await
}

/// Writes `text` to `path` through a temp file renamed over it, as editors and tools do.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn edit_in_place_is_picked_up() {
    let t = target().await;
    let ex = Exporter::start(&sites(t, &["a"]));
    wait_for_sites(&ex, &["a"]).await;
    std::fs::write(ex.config_path(), sites(t, &["a", "b"])).unwrap();
    let s = wait_for_sites(&ex, &["a", "b"]).await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(s.get("sitewatch_sites", &[]), Some(2.0));
}

#[tokio::test]
async fn replace_by_rename_is_picked_up_and_one_save_is_one_reload() {
    let t = target().await;
    let ex = Exporter::start(&sites(t, &["a"]));
    wait_for_sites(&ex, &["a"]).await;
    replace_by_rename(&ex.config_path(), &sites(t, &["b"]));
    let s = wait_for_sites(&ex, &["b"]).await;
    // Start-up plus this one save.
    assert_eq!(reloads(&s, "success"), 2.0, "{}", ex.logs());
    assert_eq!(reloads(&s, "failure"), 0.0);
}

#[tokio::test]
async fn files_added_to_and_removed_from_a_directory() {
    let t = target().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf.d");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("one.yaml"), sites(t, &["a"])).unwrap();
    let ex = Exporter::spawn(run_command(&conf), dir);
    wait_for_sites(&ex, &["a"]).await;
    std::fs::write(conf.join("two.yaml"), sites(t, &["b", "c"])).unwrap();
    wait_for_sites(&ex, &["a", "b", "c"]).await;
    // Files that are not YAML are ignored.
    std::fs::write(conf.join("notes.txt"), "not: [config").unwrap();
    std::fs::remove_file(conf.join("one.yaml")).unwrap();
    let s = wait_for_sites(&ex, &["b", "c"]).await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(s.of_site("a").is_empty());
}

/// Lays out a directory as the kubelet does for a ConfigMap volume.
fn configmap_version(dir: &Path, version: &str, text: &str) {
    let data = dir.join(version);
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("sites.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(version, &tmp).unwrap();
    // The atomic swap: rename a new symlink over `..data`.
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("sites.yaml").exists() {
        symlink("..data/sites.yaml", dir.join("sites.yaml")).unwrap();
    }
}

async fn configmap_swap(config_is_file: bool) {
    let t = target().await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir(&mount).unwrap();
    configmap_version(&mount, "..2026_12_04_10_00_00.1", &sites(t, &["a"]));
    let path = if config_is_file {
        mount.join("sites.yaml")
    } else {
        mount.clone()
    };
    let ex = Exporter::spawn(run_command(&path), dir);
    wait_for_sites(&ex, &["a"]).await;
    configmap_version(&mount, "..2026_12_04_10_05_00.2", &sites(t, &["a", "b"]));
    std::fs::remove_dir_all(mount.join("..2026_12_04_10_00_00.1")).unwrap();
    let s = wait_for_sites(&ex, &["a", "b"]).await;
    assert_eq!(reloads(&s, "failure"), 0.0, "{}", ex.logs());
}

#[tokio::test]
async fn configmap_symlink_swap_with_the_directory_configured() {
    configmap_swap(false).await;
}

#[tokio::test]
async fn configmap_symlink_swap_with_the_file_configured() {
    configmap_swap(true).await;
}

#[tokio::test]
async fn bad_configs_are_rejected_whole_and_the_old_sites_keep_probing() {
    let t = target().await;
    let ex = Exporter::start(&sites(t, &["a", "b"]));
    wait_for_sites(&ex, &["a", "b"]).await;

    // Invalid YAML.
    std::fs::write(ex.config_path(), "sites: [ {id: a, url: \n").unwrap();
    let s = ex
        .wait_for("a failed reload", |s| {
            (reloads(s, "failure") >= 1.0).then(|| s.clone())
        })
        .await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(0.0)
    );
    let before = s.probes("a", "success");
    ex.wait_for("probes of the old config", |s| {
        (s.probes("a", "success") > before).then_some(())
    })
    .await;

    // Valid YAML, invalid config: a duplicate id. Nothing of it is applied, not even the new site.
    let mut dup = sites(t, &["a", "c"]);
    dup.push_str(&format!("  - id: a\n    url: http://{t}/again\n"));
    std::fs::write(ex.config_path(), dup).unwrap();
    let s = ex
        .wait_for("a second failed reload", |s| {
            (reloads(s, "failure") >= 2.0).then(|| s.clone())
        })
        .await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert!(s.of_site("c").is_empty());
    assert_eq!(s.get("sitewatch_sites", &[]), Some(2.0));
    let logs = ex.logs();
    assert!(
        logs.contains("site \"a\": field `id`: duplicate site id"),
        "{logs}"
    );

    // The next good config brings the gauge back.
    std::fs::write(ex.config_path(), sites(t, &["a", "c"])).unwrap();
    let s = wait_for_sites(&ex, &["a", "c"]).await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(
        s.of_site("b").is_empty(),
        "a removed site's series are gone"
    );
}

#[tokio::test]
async fn a_deleted_and_recreated_file_or_directory_is_followed() {
    let t = target().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf.d");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("sites.yaml"), sites(t, &["a"])).unwrap();
    let ex = Exporter::spawn(run_command(&conf), dir);
    wait_for_sites(&ex, &["a"]).await;

    // The whole directory goes away (the old config keeps running), then comes back.
    std::fs::remove_dir_all(&conf).unwrap();
    let s = ex
        .wait_for("a failed reload", |s| {
            (reloads(s, "failure") >= 1.0).then(|| s.clone())
        })
        .await;
    assert_eq!(s.site("a", "probe_success"), Some(1.0));
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("sites.yaml"), sites(t, &["b"])).unwrap();
    wait_for_sites(&ex, &["b"]).await;

    // A single watched file deleted, then recreated.
    std::fs::remove_file(conf.join("sites.yaml")).unwrap();
    ex.wait_for("the empty directory loaded", |s| {
        (s.get("sitewatch_sites", &[]) == Some(0.0)).then_some(())
    })
    .await;
    std::fs::write(conf.join("sites.yaml"), sites(t, &["c"])).unwrap();
    wait_for_sites(&ex, &["c"]).await;
}

#[tokio::test]
async fn a_deleted_config_file_keeps_the_old_config_until_it_returns() {
    let t = target().await;
    let ex = Exporter::start(&sites(t, &["a"]));
    wait_for_sites(&ex, &["a"]).await;
    std::fs::remove_file(ex.config_path()).unwrap();
    ex.wait_for("a failed reload", |s| {
        (reloads(s, "failure") >= 1.0).then_some(())
    })
    .await;
    std::fs::write(ex.config_path(), sites(t, &["a", "b"])).unwrap();
    let s = wait_for_sites(&ex, &["a", "b"]).await;
    assert_eq!(
        s.get("sitewatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn sighup_reloads() {
    let t = target().await;
    let ex = Exporter::start(&sites(t, &["a"]));
    wait_for_sites(&ex, &["a"]).await;
    // Same text: the watcher sees no change, SIGHUP reloads anyway.
    let before = reloads(&ex.scrape().await, "success");
    let pid = ex.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    ex.wait_for("a reload after SIGHUP", |s| {
        (reloads(s, "success") > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn unchanged_sites_keep_their_series_across_ten_reloads() {
    let t = target().await;
    let ex = Exporter::start(&sites(t, &["steady"]));
    ex.wait_for("two probes", |s| {
        (s.probes("steady", "success") >= 2.0).then_some(())
    })
    .await;
    let mut last_count = 0.0;
    let mut last_hist = 0.0;
    for i in 0..10 {
        let extra = format!("extra-{i}");
        std::fs::write(ex.config_path(), sites(t, &["steady", &extra])).unwrap();
        let s = wait_for_sites(&ex, &["steady", &extra]).await;
        let count = s.probes("steady", "success");
        let hist = s
            .site("steady", "sitewatch_probe_duration_seconds_count")
            .unwrap();
        assert!(
            count >= last_count,
            "reload {i}: probes_total went from {last_count} to {count}"
        );
        assert!(
            hist >= last_hist,
            "reload {i}: histogram went from {last_hist} to {hist}"
        );
        assert!(count >= 2.0);
        last_count = count;
        last_hist = hist;
    }
    assert_eq!(reloads(&ex.scrape().await, "success"), 11.0);
}

#[tokio::test]
async fn a_changed_interval_takes_effect() {
    let t = target().await;
    let slow = "defaults: { timeout: 500ms }\nsites:\n";
    let ex = Exporter::start(&format!(
        "{slow}  - id: a\n    url: http://{t}/a\n    interval: 1h\n"
    ));
    let before = ex.scrape().await.probes("a", "success");
    assert!(before <= 1.0);
    std::fs::write(
        ex.config_path(),
        format!("{slow}  - id: a\n    url: http://{t}/a\n    interval: 1s\n"),
    )
    .unwrap();
    ex.wait_for("probes every second", |s| {
        (s.probes("a", "success") >= before + 3.0).then_some(())
    })
    .await;
}

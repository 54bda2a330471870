//! Sharding across real exporter processes: every site probed by exactly one replica.

mod common;

use std::collections::BTreeSet;

use common::{loopback, Exporter, Scrape};
use sitewatch::demo::{respond, serve_target};

const SITES: usize = 30;

fn config(t: std::net::SocketAddr) -> String {
    let mut c = String::from("sites:\n");
    for i in 0..SITES {
        let tenant = if i % 3 == 0 { "    tenant: acme\n" } else { "" };
        c.push_str(&format!(
            "  - id: s{i}\n    url: http://{t}/p{i}\n    interval: 500ms\n    timeout: 400ms\n{tenant}"
        ));
    }
    c
}

/// The ids with a probe_success series, once every owned site has been probed.
async fn probed(ex: &Exporter) -> (BTreeSet<String>, Scrape) {
    ex.wait_for("every owned site probed", |s| {
        let owned = s.get("sitewatch_shard_sites", &[])? as usize;
        let ids: BTreeSet<String> = s
            .samples
            .iter()
            .filter(|x| x.name == "probe_success")
            .filter_map(|x| x.labels.get("site").cloned())
            .collect();
        (ids.len() == owned).then(|| (ids, s.clone()))
    })
    .await
}

#[tokio::test]
async fn three_replicas_probe_every_site_exactly_once() {
    let listener = loopback([127, 0, 0, 1]).await;
    let t = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |_req| async {
        respond(200, "ok")
    }));
    let cfg = config(t);
    let replicas: Vec<Exporter> = (0..3)
        .map(|i| {
            Exporter::start_with(
                &cfg,
                &["--shard.count", "3", "--shard.index", &i.to_string()],
                &[],
            )
        })
        .collect();
    let mut all = BTreeSet::new();
    let mut total = 0;
    for (i, ex) in replicas.iter().enumerate() {
        let (ids, s) = probed(ex).await;
        assert!(!ids.is_empty(), "replica {i} owns no site of {SITES}");
        assert_eq!(s.get("sitewatch_shard_index", &[]), Some(i as f64));
        assert_eq!(s.get("sitewatch_shards", &[]), Some(3.0));
        assert_eq!(s.get("sitewatch_config_sites", &[]), Some(SITES as f64));
        assert_eq!(s.get("sitewatch_sites", &[]), Some(ids.len() as f64));
        for id in &ids {
            assert!(all.insert(id.clone()), "{id} probed by two replicas");
        }
        total += ids.len();
    }
    assert_eq!(total, SITES);
    assert_eq!(all.len(), SITES, "every site probed by some replica");

    // A StatefulSet pod finds its index in its name: the same sites as --shard.index 1.
    let from_name = Exporter::start_with(
        &cfg,
        &[],
        &[("SITEWATCH_SHARD_COUNT", "3"), ("POD_NAME", "sitewatch-1")],
    );
    let (ids, _) = probed(&from_name).await;
    let (ids1, _) = probed(&replicas[1]).await;
    assert_eq!(ids, ids1);

    // /api/v1/sites lists the owned sites and says which shard this is.
    let doc: serde_json::Value =
        serde_json::from_str(&common::get_text(&replicas[2].url("/api/v1/sites")).await).unwrap();
    assert_eq!(doc["shard"], serde_json::json!({ "index": 2, "count": 3 }));
    let listed: BTreeSet<String> = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, probed(&replicas[2]).await.0);
}

#[test]
fn a_shard_index_out_of_range_is_a_usage_error() {
    let (code, err) =
        common::run_expecting_exit("sites: []\n", &["--shard.count", "3", "--shard.index", "3"]);
    assert_eq!(code, Some(64));
    assert!(
        err.contains("shard index 3 is not below the shard count 3"),
        "{err}"
    );
}

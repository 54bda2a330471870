//! `/api/v1/results` (the stream the keeper follows) and `/api/v1/sites`, against the real binary.

mod common;

use std::net::SocketAddr;

use common::Exporter;
use serde_json::Value;

async fn target() -> SocketAddr {
    common::ok_or_fail_target(500).await
}

struct Page {
    instance: String,
    first_seq: u64,
    last_seq: u64,
    records: Vec<Value>,
}

async fn results(ex: &Exporter, query: &str) -> Page {
    let r = reqwest::get(ex.url(&format!("/api/v1/results?{query}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let header = |name: &str| r.headers()[name].to_str().unwrap().to_string();
    let (instance, first_seq, last_seq) = (
        header("x-sitewatch-instance"),
        header("x-sitewatch-first-seq").parse().unwrap(),
        header("x-sitewatch-last-seq").parse().unwrap(),
    );
    let body = r.text().await.unwrap();
    let records = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    Page {
        instance,
        first_seq,
        last_seq,
        records,
    }
}

fn config(t: SocketAddr) -> String {
    format!(
        "defaults: {{ interval: 1s, timeout: 500ms }}\nsites:\n\
         \x20 - id: good\n    url: http://{t}/ok\n    tenant: acme\n    labels: {{ team: web }}\n    regex: fine\n\
         \x20 - id: bad\n    url: http://{t}/fail\n\
         \x20 - id: good-again\n    url: http://{t}/ok\n"
    )
}

#[tokio::test]
async fn results_carry_sequence_numbers_and_what_each_probe_measured() {
    let t = target().await;
    let ex = Exporter::start(&config(t));
    ex.probed_all(&["good", "bad", "good-again"]).await;
    let page = results(&ex, "after=0").await;
    assert!(page.records.len() >= 3);
    assert_eq!(page.first_seq, 1);
    let seqs: Vec<u64> = page
        .records
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "contiguous from 1");
    assert!(page.last_seq >= *seqs.last().unwrap());
    for r in &page.records {
        assert_eq!(r["instance"], page.instance.as_str());
    }
    let of = |id: &str| {
        page.records
            .iter()
            .find(|r| r["site"] == id)
            .unwrap()
            .clone()
    };
    let good = of("good");
    assert_eq!(good["result"], "success");
    assert_eq!(good["success"], true);
    assert_eq!(good["status_code"], 200);
    assert_eq!(good["content_length"], 4);
    assert_eq!(good["tenant"], "acme");
    assert_eq!(good["labels"]["team"], "web");
    assert_eq!(good["regex"], "fine");
    assert_eq!(good["url"], format!("http://{t}/ok"));
    assert!(good["error"].is_null());
    assert!(good["phases"]["connect"].as_f64().unwrap() > 0.0);
    assert!(good["duration_seconds"].as_f64().unwrap() > 0.0);
    let bad = of("bad");
    assert_eq!(bad["result"], "http_status");
    assert_eq!(bad["status_code"], 500);
    assert!(
        bad["error"].as_str().unwrap().contains("status 500"),
        "{bad}"
    );
    // The same URL under another id is another site.
    assert_eq!(of("good-again")["url"], good["url"]);

    // Resuming after a sequence number returns only what came later.
    let after = seqs[1];
    let later = results(&ex, &format!("after={after}&limit=1")).await;
    assert_eq!(later.records.len(), 1);
    assert_eq!(later.records[0]["seq"], after + 1);
}

#[tokio::test]
async fn a_follower_waits_for_the_next_result() {
    let t = target().await;
    let ex = Exporter::start(&config(t));
    ex.probed_all(&["good"]).await;
    let now = results(&ex, "after=0").await;
    // Nothing after the newest yet: the request waits for the next probe instead of spinning.
    let next = results(&ex, &format!("after={}&wait=20s", now.last_seq)).await;
    assert!(!next.records.is_empty());
    assert!(next
        .records
        .iter()
        .all(|r| r["seq"].as_u64().unwrap() > now.last_seq));
}

#[tokio::test]
async fn results_that_fell_off_the_buffer_are_visible_as_a_gap() {
    let t = target().await;
    let ex = Exporter::start_with(&config(t), &["--results.buffer-size", "4"], &[]);
    ex.wait_for("ten results", |s| {
        let total = s.total_probes();
        (total >= 10.0).then_some(())
    })
    .await;
    let page = results(&ex, "after=0").await;
    assert_eq!(page.records.len(), 4);
    assert!(page.first_seq > 1, "first_seq {}", page.first_seq);
    assert_eq!(page.records[0]["seq"], page.first_seq);
}

#[tokio::test]
async fn each_exporter_run_has_its_own_instance_id() {
    let t = target().await;
    let a = Exporter::start(&config(t));
    let b = Exporter::start(&config(t));
    let (pa, pb) = (results(&a, "after=0").await, results(&b, "after=0").await);
    assert_eq!(pa.instance.len(), 16);
    assert_ne!(pa.instance, pb.instance);
}

#[tokio::test]
async fn sites_api_shows_configuration_and_last_result_without_secrets() {
    let t = target().await;
    let fixtures = tempfile::tempdir().unwrap();
    let pw = common::write_file(fixtures.path(), "pw", "planted-password-42\n");
    let ex = Exporter::start_with(
        &format!(
            "defaults: {{ interval: 1s, timeout: 500ms }}\nsites:\n\
             \x20 - id: secret\n    url: http://{t}/ok\n    headers: {{ X-Api-Key: planted-key-99 }}\n    basic_auth: {{ username: probe, password_file: {} }}\n\
             \x20 - id: token\n    url: http://{t}/ok\n    bearer_token_env: PLANTED\n",
            pw.display()
        ),
        &[],
        &[("PLANTED", "planted-token-77")],
    );
    ex.probed_all(&["secret", "token"]).await;
    let body = common::get_text(&ex.url("/api/v1/sites")).await;
    for planted in ["planted-password-42", "planted-key-99", "planted-token-77"] {
        assert!(!body.contains(planted), "{planted} leaked: {body}");
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    let sites = v["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 2);
    let secret = &sites[0];
    assert_eq!(secret["id"], "secret");
    assert_eq!(secret["auth"], "basic");
    assert_eq!(secret["interval_seconds"], 1.0);
    assert_eq!(secret["valid_status"][0], "200-299");
    let names: Vec<&str> = secret["header_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"x-api-key") && names.contains(&"user-agent"),
        "{names:?}"
    );
    assert_eq!(secret["last_result"]["result"], "success");
    assert_eq!(sites[1]["auth"], "bearer");
    // Nor in any record of the result stream.
    let stream = common::get_text(&ex.url("/api/v1/results?after=0")).await;
    for planted in ["planted-password-42", "planted-key-99", "planted-token-77"] {
        assert!(!stream.contains(planted), "{planted} leaked into results");
    }
}

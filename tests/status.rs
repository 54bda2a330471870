//! The status page at `/` and `/api/v1/sites/{key}`, over HTTP. (The headless-browser test of
//! the page is still to come.)

mod common;

use common::{loopback, Exporter};
use sitewatch::demo::{respond, serve_target};

#[tokio::test]
async fn status_page_shows_down_sites_first_and_filters_by_tenant() {
    let listener = loopback([127, 0, 0, 1]).await;
    let t = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |req| async move {
        match req.uri().path() {
            "/ok" => respond(200, "fine"),
            _ => respond(500, "<b>broken</b>"),
        }
    }));
    let ex = Exporter::start(&format!(
        "defaults: {{ interval: 1s, timeout: 800ms }}\nsites:\n\
         \x20 - id: shop\n    url: http://{t}/ok\n    tenant: acme\n    labels: {{ team: web }}\n\
         \x20 - id: api\n    url: http://{t}/fail\n"
    ));
    ex.probed_all(&["shop", "api"]).await;
    let r = reqwest::get(ex.url("/")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>sitewatch: 1 down</title>"), "{html}");
    assert!(html.contains("1 of 2 sites down"), "{html}");
    // The down site comes first, with its error in words.
    let (api, shop) = (
        html.find(">api</a>").unwrap(),
        html.find(">shop</a>").unwrap(),
    );
    assert!(api < shop, "{html}");
    assert!(html.contains("class=\"state down\">DOWN"), "{html}");
    assert!(html.contains("status 500 is not in valid_status"), "{html}");
    assert!(html.contains("class=\"state up\">UP"), "{html}");
    // No script, no external asset; everything needed is in the page.
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("src="), "{html}");

    let html = common::get_text(&ex.url("/?tenant=acme")).await;
    assert!(html.contains("All 1 sites up"), "{html}");
    assert!(!html.contains(">api</a>"), "{html}");
    // Grouped by a label instead of the tenant: the group with a site down comes first.
    let html = common::get_text(&ex.url("/?group=team")).await;
    let (none, web) = (
        html.find("<h2>No team label</h2>").expect(&html),
        html.find("<h2>team: web</h2>").expect(&html),
    );
    assert!(none < web, "{html}");

    let doc: serde_json::Value =
        serde_json::from_str(&common::get_text(&ex.url("/api/v1/sites/acme/shop")).await).unwrap();
    assert_eq!(doc["id"], "shop");
    assert_eq!(doc["tenant"], "acme");
    assert_eq!(doc["last_result"]["success"], true);
    // What the page shows is in the JSON too: the last change and the recent outcomes.
    assert!(doc["state_since"].as_f64().unwrap() > 1.7e9, "{doc}");
    let recent = doc["recent"].as_array().unwrap();
    assert!(
        !recent.is_empty() && recent.iter().all(|v| v == true),
        "{doc}"
    );
    let r = reqwest::get(ex.url("/api/v1/sites/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn probe_endpoint_only_when_enabled_and_always_under_the_network_policy() {
    let listener = loopback([127, 0, 0, 1]).await;
    let t = listener.local_addr().unwrap();
    tokio::spawn(serve_target(listener, None, |_req| async {
        respond(200, "ok")
    }));
    let (denied, connections) = common::counting_listener([127, 0, 0, 2]).await;
    let config = format!(
        "network:\n  deny: [127.0.0.2/32]\nsites:\n  - id: shop\n    url: http://{t}/\n    tenant: acme\n    interval: 1h\n"
    );
    let enc = |u: &str| url::form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>();

    let off = Exporter::start(&config);
    let r = reqwest::get(off.url(&format!("/probe?target={}", enc(&format!("http://{t}/")))))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let ex = Exporter::start_with(&config, &["--web.enable-probe"], &[]);
    let body =
        common::get_text(&ex.url(&format!("/probe?target={}", enc(&format!("http://{t}/ok")))))
            .await;
    assert!(
        body.contains(&format!(
            "probe_success{{site=\"probe\",url=\"http://{t}/ok\"}} 1"
        )),
        "{body}"
    );
    assert!(
        !body.contains("process_"),
        "only the probe's series: {body}"
    );
    // A module lends a site's settings and labels.
    let body = common::get_text(&ex.url(&format!(
        "/probe?module=acme%2Fshop&target={}",
        enc(&format!("http://{t}/other"))
    )))
    .await;
    assert!(body.contains("tenant=\"acme\""), "{body}");
    // The network policy applies: no connection to a denied address.
    let body = common::get_text(&ex.url(&format!(
        "/probe?target={}",
        enc(&format!("http://{denied}/"))
    )))
    .await;
    assert!(body.contains("result=\"denied\"} 1"), "{body}");
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Bad requests say why.
    let r = reqwest::get(ex.url(&format!(
        "/probe?target={}",
        enc("http://u:pw@127.0.0.1:9/")
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("credentials in the URL"));
    assert_eq!(reqwest::get(ex.url("/probe")).await.unwrap().status(), 400);
    // The debug view: the result as JSON.
    let debug = common::get_text(&ex.url(&format!(
        "/probe?debug=true&target={}",
        enc(&format!("http://{t}/ok"))
    )))
    .await;
    let doc: serde_json::Value = serde_json::from_str(&debug).unwrap();
    assert_eq!(doc["result"]["result"], "success", "{debug}");
}

//! The exporter's own HTTP endpoints.
//!
//! | path | method | what |
//! |---|---|---|
//! | `/metrics` | GET | every metric; OpenMetrics when the `Accept` header asks for it, Prometheus text otherwise |
//! | `/-/healthy` | GET | 200 while the process serves |
//! | `/-/ready` | GET | 200 once the first configuration is loaded, 503 before |
//! | `/-/reload` | POST | with `--web.enable-lifecycle`: reloads the configuration; 200, or 500 with the errors (the old config keeps running); 403 without the flag |
//! | `/api/v1/sites` | GET | JSON: every site, its configuration without secrets, its last result |
//! | `/api/v1/results?after=SEQ&limit=N&wait=10s` | GET | NDJSON: probe results after SEQ, oldest first; waits up to `wait` for one when there is none yet |
//! | `/probe?target=URL&module=SITE` | GET | with `--web.enable-probe`: one probe now, its series (or `&debug=true`: the result as JSON) |
//! | `/api/v1/sites/{key}` | GET | JSON: one site (`id`, or `tenant/id`) |
//! | `/` | GET | the status page: every site up or down, latency, recent results, last error |
//!
//! `/api/v1/results` answers with `X-Sitewatch-Instance` (changes when the exporter restarts),
//! `X-Sitewatch-First-Seq` (oldest result still held: a follower that asked for an older one
//! missed the ones between) and `X-Sitewatch-Last-Seq`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::results::{RecordJson, SiteJson};
use crate::App;
use std::time::Duration;

type Body = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// Size of the pieces `/metrics` is sent in.
const CHUNK: usize = 256 * 1024;

/// A `fmt::Write` that hands full chunks to the response body; a gone client stops encoding.
struct ChunkWriter {
    buf: String,
    tx: tokio::sync::mpsc::Sender<Bytes>,
}

impl ChunkWriter {
    fn flush(&mut self) -> std::fmt::Result {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK + 4096));
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| std::fmt::Error)
    }
}

impl std::fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }
}

/// The exposition as a streamed body, encoded on a blocking thread: encoding 100,000 sites
/// takes a second or more and must not hold up the runtime's workers (probes keep their
/// schedule during a scrape), and memory holds a few chunks, not the whole text.
fn metrics_body(app: &Arc<App>, openmetrics: bool) -> Body {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let metrics = app.metrics.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            buf: String::with_capacity(CHUNK + 4096),
            tx,
        };
        let done = metrics
            .encode_to(&mut w, openmetrics)
            .and_then(|()| w.flush());
        if done.is_err() {
            debug!("/metrics client went away before the exposition was sent");
        }
    });
    let frames = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok::<_, Infallible>(hyper::body::Frame::data(c))))
    });
    StreamBody::new(frames).boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(body))
        .expect("static response parts")
}

/// Whether the client prefers OpenMetrics (Prometheus sends it first in `Accept`).
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| part.trim().starts_with("application/openmetrics-text"))
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    if let Some(web) = app.web() {
        let auth = req.headers().get(header::AUTHORIZATION).cloned();
        // Known credentials (every scrape after the first) are answered here; only a password
        // not seen yet costs a bcrypt round, which takes tens of milliseconds by design: not
        // on a runtime worker.
        let access = match web.check_cached(auth.as_ref()) {
            Some(access) => access,
            None => {
                let web = web.clone();
                tokio::task::spawn_blocking(move || web.check(auth.as_ref()))
                    .await
                    .unwrap_or(crate::webconfig::Access::Denied)
            }
        };
        if access == crate::webconfig::Access::Denied {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Basic realm=\"sitewatch\"")
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(full("Unauthorized.\n"))
                .expect("static response parts");
        }
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let open = wants_openmetrics(&req);
            let ct = if open {
                crate::metrics::OPENMETRICS_CONTENT_TYPE
            } else {
                crate::metrics::PROMETHEUS_CONTENT_TYPE
            };
            Response::builder()
                .header(header::CONTENT_TYPE, ct)
                .body(metrics_body(&app, open))
                .expect("static response parts")
        }
        (&Method::GET | &Method::HEAD, "/-/healthy") => text(StatusCode::OK, "Healthy.\n"),
        (&Method::GET | &Method::HEAD, "/-/ready") => {
            if app.is_ready() {
                text(StatusCode::OK, "Ready.\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Not ready: no configuration loaded yet.\n",
                )
            }
        }
        (&Method::POST | &Method::PUT, "/-/reload") if !app.lifecycle_enabled() => text(
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled: start with --web.enable-lifecycle. SIGHUP and changes to the config files reload anyway.\n",
        ),
        (&Method::POST | &Method::PUT, "/-/reload") => {
            let app2 = app.clone();
            match tokio::task::spawn_blocking(move || app2.reload()).await {
                Ok(Ok(n)) => text(StatusCode::OK, format!("Reloaded: {n} sites.\n")),
                Ok(Err(e)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Reload failed; the previous configuration keeps running:\n{e}\n"),
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reload panicked: {e}\n"),
                ),
            }
        }
        (_, "/-/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "Use POST.\n"),
        (&Method::GET, "/api/v1/sites") => sites(&app),
        (&Method::GET, "/api/v1/results") => results(&app, req.uri().query()).await,
        (&Method::GET | &Method::HEAD, "/") => {
            let config = app.current().unwrap_or_default();
            let q = crate::status::Query::parse(req.uri().query());
            let html = crate::status::render(&config.sites, &app.metrics.sites, &q);
            Response::builder()
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-store")
                .body(full(html))
                .expect("static response parts")
        }
        (&Method::GET, "/probe") => probe(&app, req.uri().query(), wants_openmetrics(&req)).await,
        (&Method::GET, path) if path.starts_with("/api/v1/sites/") => {
            site(&app, &path["/api/v1/sites/".len()..])
        }
        _ => text(StatusCode::NOT_FOUND, "Not found.\n"),
    }
}

fn json(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(full(body))
        .expect("static response parts")
}

/// `/probe?target=URL&module=SITE[&debug=true]`: one probe now.
async fn probe(app: &App, query: Option<&str>, openmetrics: bool) -> Response<Body> {
    let mut target = None;
    let mut module = None;
    let mut debug = false;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "target" => target = Some(v.into_owned()),
            "module" => module = Some(v.into_owned()),
            "debug" => debug = v == "true",
            _ => {}
        }
    }
    let Some(target) = target else {
        return text(StatusCode::BAD_REQUEST, "Target parameter is missing.\n");
    };
    match app.probe_now(&target, module.as_deref()).await {
        Err(e) if e == "disabled" => text(
            StatusCode::FORBIDDEN,
            "/probe is not enabled: start with --web.enable-probe.\n",
        ),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("Bad probe request: {e}\n")),
        Ok((site, result, _)) if debug => {
            let doc = serde_json::json!({
                "target": site.url.as_str(),
                "module": module,
                "result": crate::results::ResultJson::new(&result),
            });
            let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
            text(StatusCode::OK, format!("{body}\n"))
        }
        Ok((site, result, config)) => {
            let body = crate::metrics::encode_one(
                &site,
                &result,
                &config.metrics,
                app.location(),
                openmetrics,
            );
            let ct = if openmetrics {
                crate::metrics::OPENMETRICS_CONTENT_TYPE
            } else {
                crate::metrics::PROMETHEUS_CONTENT_TYPE
            };
            Response::builder()
                .header(header::CONTENT_TYPE, ct)
                .body(full(body))
                .expect("static response parts")
        }
    }
}

/// One site by its key (`id`, or `tenant/id`), as in `/api/v1/sites`.
fn site(app: &App, key: &str) -> Response<Body> {
    let key = url::form_urlencoded::parse(format!("k={key}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let config = app.current().unwrap_or_default();
    let Some(site) = config.sites.iter().find(|s| s.key() == key) else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::to_vec(&serde_json::json!({ "error": format!("no site {key:?}") }))
                .unwrap_or_default(),
            "application/json",
        );
    };
    let status = app.metrics.sites.status(&key);
    let last = status.as_ref().map(|s| &s.last);
    let body = serde_json::to_vec(&SiteJson::new(site, last).with_status(status.as_ref()))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    json(StatusCode::OK, body, "application/json")
}

fn sites(app: &App) -> Response<Body> {
    let config = app.current().unwrap_or_default();
    let status: Vec<_> = config
        .sites
        .iter()
        .map(|s| app.metrics.sites.status(&s.key()))
        .collect();
    let list: Vec<SiteJson> = config
        .sites
        .iter()
        .zip(&status)
        .map(|(s, st)| SiteJson::new(s, st.as_ref().map(|st| &st.last)).with_status(st.as_ref()))
        .collect();
    // The shard tells a keeper which sites of a shared database are this replica's to mark
    // removed; another shard's sites are not in this list but not gone either.
    let shard = app.shard();
    let doc = serde_json::json!({
        "shard": { "index": shard.index(), "count": shard.count() },
        "sites": list,
    });
    let body =
        serde_json::to_vec(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    json(StatusCode::OK, body, "application/json")
}

/// Most results one page returns, and the longest a follower may wait for one.
const MAX_PAGE: usize = 100_000;
const MAX_WAIT: Duration = Duration::from_secs(60);

async fn results(app: &App, query: Option<&str>) -> Response<Body> {
    let mut after = 0u64;
    let mut limit = 10_000usize;
    let mut wait = Duration::ZERO;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let bad = |what: &str| text(StatusCode::BAD_REQUEST, format!("invalid {what} {v:?}\n"));
        match k.as_ref() {
            "after" => match v.parse() {
                Ok(n) => after = n,
                Err(_) => return bad("after"),
            },
            "limit" => match v.parse::<usize>() {
                Ok(n) => limit = n.clamp(1, MAX_PAGE),
                Err(_) => return bad("limit"),
            },
            "wait" => match humantime::parse_duration(&v) {
                Ok(d) => wait = d.min(MAX_WAIT),
                Err(_) => return bad("wait"),
            },
            _ => {}
        }
    }
    let log = &app.results;
    let page = log.wait_page(after, limit, wait).await;
    let mut body = Vec::with_capacity(page.records.len() * 512);
    for record in &page.records {
        // Serializing plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, &RecordJson::new(log, record));
        body.push(b'\n');
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header("x-sitewatch-instance", page.instance)
        .header("x-sitewatch-first-seq", page.first_seq)
        .header("x-sitewatch-last-seq", page.last_seq)
        .body(full(body))
        .expect("static response parts")
}

/// Serves the endpoints on `listener` until `shutdown` resolves, then lets open requests finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let tls = app.web().and_then(|w| w.tls.clone());
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(route(app, req).await) }
        });
        if let Some(acceptor) = tls {
            let watcher = graceful.watcher();
            let builder = builder.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let conn = builder
                    .serve_connection(TokioIo::new(tls), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            });
            continue;
        }
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Requests in progress (a scrape) get a moment to finish.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

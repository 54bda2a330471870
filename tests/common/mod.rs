//! Test harness: the real `sitewatch` binary, loopback targets, a loopback DNS server, and a
//! scrape parser with deadline-based waiting (no sleeps as synchronization).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// `sitewatch run --config PATH` on 127.0.0.1:0.
pub fn run_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitewatch"));
    cmd.args(["run", "--config"]).arg(config).args([
        "--web.listen-address",
        "127.0.0.1:0",
        "--log.level",
        "info",
    ]);
    cmd
}

/// Runs `sitewatch run` on `config` (written to a temp file) with `args`, for a start that must
/// fail: its exit code and stderr.
pub fn run_expecting_exit(config: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_file(dir.path(), "sites.yaml", config);
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(["run", "--web.listen-address", "127.0.0.1:0", "--config"])
        .arg(&path)
        .args(args)
        .output()
        .expect("run sitewatch");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `sitewatch` process, killed on drop.
pub struct Exporter {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Exporter {
    /// Writes `config` to a temp dir and starts `sitewatch run` on 127.0.0.1:0.
    pub fn start(config: &str) -> Exporter {
        Self::start_with(config, &[], &[])
    }

    /// Like [`Exporter::start`], with extra flags and environment for the child only.
    pub fn start_with(config: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sitewatch.yaml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = run_command(&path);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, dir)
    }

    /// Spawns a prepared command whose stderr announces `listening address=...`.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Exporter {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sitewatch");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("address=").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "sitewatch did not start; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Exporter {
            child,
            addr,
            logs,
            dir,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sitewatch.yaml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn scrape(&self) -> Scrape {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("scrape body");
        Scrape::parse(&text)
    }

    /// Scrapes until `check` returns `Some`, or fails the test at the deadline.
    pub async fn wait_for<T>(&self, what: &str, check: impl Fn(&Scrape) -> Option<T>) -> T {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < DEADLINE {
            let s = self.scrape().await;
            if let Some(v) = check(&s) {
                return v;
            }
            last = Some(s);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}; last scrape:\n{}\nlogs:\n{}",
            last.map(|s| s.text).unwrap_or_default(),
            self.logs.lock().unwrap().join("\n")
        );
    }

    /// Sends SIGTERM and waits for the process to exit; fails the test if it does not exit
    /// in time or exits with an error.
    pub async fn stop_gracefully(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for exporter") {
                break status;
            }
            assert!(start.elapsed() < DEADLINE, "did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "exit status {status:?}\n{}", self.logs());
    }

    /// Waits until `site` has been probed at least once and returns the scrape.
    pub async fn probed(&self, site: &str) -> Scrape {
        self.wait_for(&format!("a probe of {site}"), |s| {
            s.site(site, "sitewatch_probe_last_timestamp_seconds")
                .map(|_| s.clone())
        })
        .await
    }

    /// Waits until every site of `ids` has a `probe_success` and returns the scrape.
    pub async fn probed_all(&self, ids: &[&str]) -> Scrape {
        self.wait_for(&format!("probes of {ids:?}"), |s| {
            ids.iter()
                .all(|id| s.site(id, "probe_success").is_some())
                .then(|| s.clone())
        })
        .await
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until the process has logged a line containing `needle`, or fails at the deadline.
    pub async fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.logs().contains(needle) {
            assert!(
                start.elapsed() < DEADLINE,
                "no log line with {needle:?} in:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                Sample {
                    name: name.to_string(),
                    labels,
                    value: parse_value(value),
                }
            })
            .collect();
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of `name` whose labels include every pair of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The value of `name` for `site`.
    pub fn site(&self, site: &str, name: &str) -> Option<f64> {
        self.get(name, &[("site", site)])
    }

    /// `sitewatch_probes_total` of `site` for `result`.
    pub fn probes(&self, site: &str, result: &str) -> f64 {
        self.get(
            "sitewatch_probes_total",
            &[("site", site), ("result", result)],
        )
        .unwrap_or(0.0)
    }

    /// Probes finished so far, over every site and result.
    pub fn total_probes(&self) -> f64 {
        self.samples
            .iter()
            .filter(|x| x.name == "sitewatch_probes_total")
            .map(|x| x.value)
            .sum()
    }

    /// Every sample of `site`.
    pub fn of_site(&self, site: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.labels.get("site").map(String::as_str) == Some(site))
            .collect()
    }
}

fn parse_value(v: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}")),
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Serves `handler` over plain HTTP on a fresh port of 127.0.0.1; returns the address.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    let listener = loopback([127, 0, 0, 1]).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sitewatch::demo::serve_target(listener, None, handler));
    addr
}

/// A target on 127.0.0.1: `/ok` answers 200 `fine`, every other path `fail_status`.
pub async fn ok_or_fail_target(fail_status: u16) -> SocketAddr {
    serve(move |req| async move {
        match req.uri().path() {
            "/ok" => sitewatch::demo::respond(200, "fine"),
            _ => sitewatch::demo::respond(fail_status, "broken"),
        }
    })
    .await
}

/// Binds 127.0.0.1:0 (or another loopback address).
pub async fn loopback(ip: [u8; 4]) -> TcpListener {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::from(ip), 0)))
        .await
        .expect("bind loopback")
}

/// A port on 127.0.0.1 that refuses connections (bound, then closed).
pub async fn refused_port() -> u16 {
    let l = loopback([127, 0, 0, 1]).await;
    l.local_addr().unwrap().port()
}

/// A DNS server on 127.0.0.1: names under `sitewatch.test` other than `missing.sitewatch.test`
/// answer A 127.0.0.1, or the addresses their labels spell (`v4-127-0-0-2.v6-loopback.x.sitewatch.test`:
/// A 127.0.0.2 and AAAA ::1; `v4range-127-0-0-10-29` spells twenty A records); everything
/// else is NXDOMAIN. Returns its address and a query counter.
pub async fn dns_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
    let addr = socket.local_addr().unwrap();
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = queries.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            if let Some((reply, name)) = dns_reply(&buf[..n]) {
                seen.lock().unwrap().push(name);
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    (addr, queries)
}

/// Builds the answer to one DNS query (RFC 1035 wire format).
fn dns_reply(query: &[u8]) -> Option<(Vec<u8>, String)> {
    if query.len() < 12 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    let known = name.ends_with("sitewatch.test") && name != "missing.sitewatch.test";
    // Labels `v4-127-0-0-2` each add an A record, `v6-loopback` an AAAA record for ::1, in
    // the order written; a name with no `v4-` label has A 127.0.0.1.
    let mut v4: Vec<[u8; 4]> = labels
        .iter()
        .filter_map(|l| {
            let parts: Vec<u8> = l
                .strip_prefix("v4-")?
                .split('-')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            parts.try_into().ok()
        })
        .collect();
    // `v4range-127-0-0-10-29`: A records 127.0.0.10 to 127.0.0.29.
    for l in &labels {
        let Some(spec) = l.strip_prefix("v4range-") else {
            continue;
        };
        let n: Vec<u8> = spec.split('-').filter_map(|p| p.parse().ok()).collect();
        if let [a, b, c, from, to] = n[..] {
            v4.extend((from..=to).map(|d| [a, b, c, d]));
        }
    }
    if v4.is_empty() {
        v4.push([127, 0, 0, 1]);
    }
    let v6 = labels.iter().any(|l| l == "v6-loopback");
    let answers: Vec<Vec<u8>> = match (known, qtype) {
        (true, 1) => v4.iter().map(|a| a.to_vec()).collect(),
        (true, 28) if v6 => vec![std::net::Ipv6Addr::LOCALHOST.octets().to_vec()],
        _ => Vec::new(),
    };
    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&query[0..2]); // id
    let rcode = if known { 0 } else { 3 }; // NOERROR / NXDOMAIN
    reply.extend_from_slice(&[0x81, 0x80 | rcode]); // response, recursion desired+available
    reply.extend_from_slice(&[0, 1, 0, answers.len() as u8, 0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..question_end)?);
    for rdata in answers {
        // Name (pointer to the question), type, class IN, TTL 60, rdata.
        reply.extend_from_slice(&[0xc0, 0x0c]);
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&[0, 1, 0, 0, 0, 60, 0, rdata.len() as u8]);
        reply.extend_from_slice(&rdata);
    }
    Some((reply, name))
}

/// Whether a tool is on PATH; in CI a missing tool fails the test instead of skipping it.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required in CI but is not installed (the test script installs it)");
        }
        eprintln!("SKIPPED: {tool} not installed; run scripts/test to install it");
    }
    found
}

/// Writes a file into the exporter's temp dir (for secrets and CA files).
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).expect("write file");
    p
}

/// Now, in whole seconds since the Unix epoch (certificate validity in tests).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A free port on 127.0.0.1 for a child process that cannot report the one it bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .unwrap()
        .port()
}

/// Which real remote-write receiver a [`Receiver`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    /// `prometheus --web.enable-remote-write-receiver`.
    Prometheus,
    /// VictoriaMetrics single-node.
    VictoriaMetrics,
}

/// One series as a receiver stored it: labels and raw samples `(unix ms, value)`.
#[derive(Debug, Clone)]
pub struct StoredSeries {
    pub labels: BTreeMap<String, String>,
    pub samples: Vec<(i64, f64)>,
}

/// A real remote-write receiver on loopback, killed on drop.
pub struct Receiver {
    pub kind: ReceiverKind,
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts a receiver on `port` (pick one with [`free_port`]) and waits until it is ready.
    pub async fn start(kind: ReceiverKind, port: u16) -> Receiver {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match kind {
            ReceiverKind::Prometheus => {
                let config = dir.path().join("prometheus.yml");
                std::fs::write(&config, "global: {}\n").unwrap();
                let mut c = Command::new("prometheus");
                c.arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    .arg("--web.enable-remote-write-receiver")
                    .arg("--log.level=warn");
                c
            }
            ReceiverKind::VictoriaMetrics => {
                let mut c = Command::new("victoria-metrics");
                c.arg(format!("-httpListenAddr={addr}"))
                    .arg(format!(
                        "-storageDataPath={}",
                        dir.path().join("data").display()
                    ))
                    .arg("-loggerLevel=ERROR");
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {kind:?}: {e}"));
        let r = Receiver {
            kind,
            port,
            child,
            _dir: dir,
        };
        let ready = match kind {
            ReceiverKind::Prometheus => "/-/ready",
            ReceiverKind::VictoriaMetrics => "/health",
        };
        let url = format!("http://{addr}{ready}");
        let start = Instant::now();
        loop {
            if let Ok(resp) = reqwest::get(&url).await {
                if resp.status().is_success() {
                    return r;
                }
            }
            assert!(start.elapsed() < DEADLINE, "{kind:?} did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The URL sitewatch pushes to.
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// Every stored sample of the series matching `selector` (a PromQL series selector).
    pub async fn series(&self, selector: &str) -> Vec<StoredSeries> {
        let base = format!("http://127.0.0.1:{}", self.port);
        let client = reqwest::Client::new();
        match self.kind {
            ReceiverKind::Prometheus => prometheus_query(self.port, &format!("{selector}[1d]"))
                .await["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| StoredSeries {
                    labels: labels_of(&r["metric"]),
                    samples: r["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| {
                            let ts = v[0].as_f64().unwrap();
                            let value = v[1].as_str().unwrap().parse().unwrap();
                            ((ts * 1000.0).round() as i64, value)
                        })
                        .collect(),
                })
                .collect(),
            ReceiverKind::VictoriaMetrics => {
                let text = client
                    .get(format!("{base}/api/v1/export"))
                    .query(&[("match[]", selector)])
                    .send()
                    .await
                    .expect("export from victoria-metrics")
                    .text()
                    .await
                    .unwrap();
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        let r: serde_json::Value = serde_json::from_str(l).unwrap();
                        let ts = r["timestamps"].as_array().unwrap();
                        let vs = r["values"].as_array().unwrap();
                        StoredSeries {
                            labels: labels_of(&r["metric"]),
                            samples: ts
                                .iter()
                                .zip(vs)
                                .map(|(t, v)| (t.as_i64().unwrap(), v.as_f64().unwrap()))
                                .collect(),
                        }
                    })
                    .collect()
            }
        }
    }

    /// The labels of each series an instant query returns now (Prometheus only): a series
    /// whose last sample is a staleness marker is not among them.
    pub async fn instant(&self, query: &str) -> Vec<BTreeMap<String, String>> {
        assert_eq!(self.kind, ReceiverKind::Prometheus);
        prometheus_query(self.port, query).await["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| labels_of(&r["metric"]))
            .collect()
    }

    /// Queries until `check` returns `Some` (receivers make samples searchable a moment
    /// after accepting them), or fails the test at the deadline.
    pub async fn wait_for<T>(
        &self,
        selector: &str,
        check: impl Fn(&[StoredSeries]) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            let found = self.series(selector).await;
            if let Some(v) = check(&found) {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting on {:?} for {selector}; last answer: {found:#?}",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The answer of a Prometheus instant query on 127.0.0.1:`port`; fails the test unless it
/// succeeded.
pub async fn prometheus_query(port: u16, query: &str) -> serde_json::Value {
    let text = get_text_with(
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", query)]),
    )
    .await;
    let body: serde_json::Value = serde_json::from_str(&text).expect("prometheus json");
    assert_eq!(body["status"], "success", "{body}");
    body
}

/// The body of a GET, failing the test on any error.
pub async fn get_text(url: &str) -> String {
    get_text_with(reqwest::Client::new().get(url)).await
}

async fn get_text_with(req: reqwest::RequestBuilder) -> String {
    req.send()
        .await
        .expect("request")
        .text()
        .await
        .expect("response body")
}

/// `sitewatch keeper` following `source` into `db`, its own /metrics on 127.0.0.1:0, syncing
/// sites every second.
pub fn keeper(source: &str, db: &str, extra: &[&str]) -> Exporter {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sitewatch"));
    cmd.args(["keeper", "--source", source, "--database-url", db])
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--sites.interval",
            "1s",
        ])
        .args(extra);
    Exporter::spawn(cmd, tempfile::tempdir().expect("temp dir"))
}

/// A listener on a loopback address that only counts connections: for proving that a probe
/// opened none.
pub async fn counting_listener(ip: [u8; 4]) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = loopback(ip).await;
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (addr, accepted)
}

fn labels_of(metric: &serde_json::Value) -> BTreeMap<String, String> {
    metric
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Runs a checker with `input` on stdin; returns (success, output).
pub fn pipe(cmd: &mut Command, input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start checker");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Asserts that `promtool check metrics` finds nothing in an exposition (skipped outside CI
/// when promtool is missing).
pub fn assert_promtool_clean(text: &str) {
    if !require_tool("promtool") {
        return;
    }
    let (ok, out) = pipe(Command::new("promtool").args(["check", "metrics"]), text);
    assert!(ok, "promtool check metrics failed:\n{out}\n---\n{text}");
    assert!(
        out.trim().is_empty(),
        "promtool lint findings:\n{out}\n---\n{text}"
    );
}

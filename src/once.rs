//! `sitewatch once`: probe every site of a configuration once, push the samples to the
//! configured remote-write receivers and report, for cron jobs, CI smoke tests and
//! serverless runtimes. Exit status 0 only when every site passed and every push landed.

use std::io::Write;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use crate::config::{Config, Site};
use crate::metrics::Metrics;
use crate::probe::{ProbeResult, Prober};
use crate::remote_write::{FlushReport, RemoteWriter};
use crate::resolve::ResolveError;
use crate::results::ResultJson;

/// How `once` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table for people.
    Table,
    /// One JSON document for machines.
    Json,
}

/// Probes every site once, at most `concurrency` at a time; results in config order.
pub async fn probe_all(
    config: &Config,
    concurrency: usize,
) -> Result<Vec<(Arc<Site>, ProbeResult)>, ResolveError> {
    let prober = Arc::new(Prober::new(&config.network)?);
    let results = stream::iter(config.sites.iter().cloned())
        .map(|site| {
            let prober = prober.clone();
            async move {
                let r = prober.probe(&site).await;
                (site, r)
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    Ok(results)
}

/// Pushes the samples of every result to the configuration's remote-write destinations
/// (the same series the exporter would serve for one probe of each site) and waits for
/// them, at most `timeout`. No destinations, no push.
pub async fn push(
    config: &Config,
    results: &[(Arc<Site>, ProbeResult)],
    location: Option<String>,
    timeout: std::time::Duration,
) -> Vec<FlushReport> {
    if config.remote_write.is_empty() {
        return Vec::new();
    }
    let metrics = Metrics::new(location);
    metrics.sites.set_settings(&config.metrics);
    let writer = RemoteWriter::new(metrics.remote_write.clone());
    writer.apply(&config.remote_write);
    for (site, result) in results {
        let key = site.key();
        metrics.sites.insert(site);
        metrics.sites.record(&key, result);
        if let Some(samples) = metrics.sites.samples(&key) {
            writer.push(samples);
        }
    }
    writer.close(timeout).await
}

#[derive(Serialize)]
struct PushReport<'a> {
    destination: &'a str,
    sent: u64,
    failed: u64,
    dropped: u64,
}

#[derive(Serialize)]
struct SiteReport<'a> {
    site: &'a str,
    tenant: Option<&'a str>,
    url: &'a str,
    #[serde(flatten)]
    result: ResultJson<'a>,
}

/// Writes the report; returns whether every site passed and every push was complete.
pub fn report(
    out: &mut dyn Write,
    results: &[(Arc<Site>, ProbeResult)],
    pushes: &[FlushReport],
    output: Output,
) -> std::io::Result<bool> {
    let all_ok =
        results.iter().all(|(_, r)| r.success()) && pushes.iter().all(FlushReport::complete);
    match output {
        Output::Json => {
            let sites: Vec<SiteReport> = results
                .iter()
                .map(|(s, r)| SiteReport {
                    site: &s.id,
                    tenant: s.tenant.as_deref(),
                    url: s.url.as_str(),
                    result: ResultJson::new(r),
                })
                .collect();
            let pushed: Vec<PushReport> = pushes
                .iter()
                .map(|p| PushReport {
                    destination: &p.name,
                    sent: p.sent,
                    failed: p.failed,
                    dropped: p.dropped,
                })
                .collect();
            let doc =
                serde_json::json!({ "success": all_ok, "sites": sites, "remote_write": pushed });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Output::Table => {
            let rows: Vec<[String; 5]> = results
                .iter()
                .map(|(s, r)| {
                    [
                        s.key(),
                        r.class.to_string(),
                        if r.status_code == 0 {
                            "-".into()
                        } else {
                            r.status_code.to_string()
                        },
                        format!("{:.0} ms", r.duration.as_secs_f64() * 1e3),
                        r.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            let header = ["SITE", "RESULT", "STATUS", "DURATION", "ERROR"].map(String::from);
            let mut widths = [0usize; 4];
            for row in std::iter::once(&header).chain(&rows) {
                for (w, cell) in widths.iter_mut().zip(row.iter()) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let line = format!(
                    "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3],
                );
                writeln!(out, "{}", line.trim_end())?;
            }
            let failed = results.iter().filter(|(_, r)| !r.success()).count();
            writeln!(out, "{} sites, {} failed", results.len(), failed)?;
            for p in pushes {
                writeln!(
                    out,
                    "remote-write {}: {} samples sent, {} failed, {} dropped",
                    p.name, p.sent, p.failed, p.dropped
                )?;
            }
        }
    }
    Ok(all_ok)
}

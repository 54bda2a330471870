//! The status page at `/`: every site up or down at a glance, server-rendered HTML with no
//! script and no external asset, so it works offline, behind strict proxies and on a phone.
//!
//! Sites are grouped by tenant, tenants with a site down first, and down sites first in their
//! group; `?tenant=NAME` filters, `?page=N` pages
//! through [`PAGE_SIZE`] sites at a time. The page refreshes itself every 30 s.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::config::Site;
use crate::metrics::{SiteStatus, SiteTable};

/// Sites per page.
pub const PAGE_SIZE: usize = 500;

/// What the page is asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only this tenant's sites (`""`: sites without a tenant).
    pub tenant: Option<String>,
    /// 1-based page.
    pub page: usize,
    /// Group by this label instead of by tenant.
    pub group: Option<String>,
}

impl Query {
    /// From a query string (`tenant=acme&page=2`).
    pub fn parse(query: Option<&str>) -> Self {
        let mut q = Query {
            tenant: None,
            page: 1,
            group: None,
        };
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "tenant" => q.tenant = Some(v.into_owned()),
                "page" => q.page = v.parse().unwrap_or(1).max(1),
                "group" if !v.is_empty() => q.group = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3 min", "2 h", "5 d": how long ago or how far ahead, in the largest sensible unit.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a;background:#fff}\
header{padding:1rem;border-bottom:1px solid #ccc}h1{margin:0 0 .5rem;font-size:1.4rem}\
.banner{font-weight:600;padding:.6rem 1rem;border-radius:4px;margin:0}\
.banner.up{background:#dff5e1;color:#0b5d1e}.banner.down{background:#fde2e1;color:#8a1111}\
main{padding:0 1rem 1rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e4e4e4;vertical-align:top}\
th{font-size:.85rem;color:#444}.state{font-weight:700}.state.up{color:#0b6b22}.state.down{color:#b00020}.state.warn{color:#8a5a00}\
.bar{display:inline-flex;gap:1px}.bar i{display:inline-block;width:5px;height:14px;background:#0b6b22}.bar i.d{background:#b00020}\
.err{color:#8a1111;max-width:28rem;overflow-wrap:anywhere}nav a{margin-right:.8rem}\
@media (max-width:700px){.wide{display:none}td,th{padding:.3rem}}";

/// Renders the page for the sites of the running configuration.
pub fn render(sites: &[std::sync::Arc<Site>], table: &SiteTable, q: &Query) -> String {
    let now = SystemTime::now();
    let mut rows: Vec<(&Site, Option<SiteStatus>)> = sites
        .iter()
        .filter(|s| match &q.tenant {
            Some(t) => s.tenant.as_deref().unwrap_or("") == t,
            None => true,
        })
        .map(|s| (s.as_ref(), table.status(&s.key())))
        .collect();
    let down = rows
        .iter()
        .filter(|(_, st)| st.as_ref().is_some_and(|st| !st.up))
        .count();
    let pending = rows.iter().filter(|(_, st)| st.is_none()).count();
    // Grouped by tenant, tenants with a site down first; in a group, down sites first, then
    // failing ones not confirmed down yet, sites not probed yet, then the rest, each by id.
    // Down is the confirmed state (`failure_threshold`), as `sitewatch_site_up` says.
    let rank = |st: &Option<SiteStatus>| match st {
        Some(st) if !st.up => 0,
        Some(st) if !st.last.success() => 1,
        None => 2,
        Some(_) => 3,
    };
    // The group of a site: its tenant, or with `?group=LABEL` that label's value.
    let group_of = |s: &Site| -> Option<String> {
        match &q.group {
            None => s.tenant.clone(),
            Some(label) => s
                .labels
                .iter()
                .find(|(k, _)| k == label)
                .map(|(_, v)| v.clone()),
        }
    };
    let troubled: std::collections::HashSet<Option<String>> = rows
        .iter()
        .filter(|(_, st)| rank(st) <= 1)
        .map(|(s, _)| group_of(s))
        .collect();
    rows.sort_by(|(a, sa), (b, sb)| {
        let key = |s: &Site, st: &Option<SiteStatus>| {
            let g = group_of(s);
            (
                !troubled.contains(&g),
                g.is_none(),
                g,
                rank(st),
                s.tenant.clone(),
                s.id.clone(),
            )
        };
        key(a, sa).cmp(&key(b, sb))
    });
    let total = rows.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page = q.page.min(pages);
    let shown = &rows[((page - 1) * PAGE_SIZE).min(total)..(page * PAGE_SIZE).min(total)];

    let mut tenants: Vec<&str> = sites.iter().filter_map(|s| s.tenant.as_deref()).collect();
    tenants.sort_unstable();
    tenants.dedup();

    let mut h = String::with_capacity(4096 + shown.len() * 600);
    let title = if down == 0 {
        "all up".to_string()
    } else {
        format!("{down} down")
    };
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>sitewatch: {title}</title>\
         <style>{STYLE}</style></head><body><header><h1>sitewatch</h1>"
    );
    let (class, banner) = match (down, total) {
        (_, 0) => ("up", "No sites configured".to_string()),
        (0, n) if pending == 0 => ("up", format!("All {n} sites up")),
        (0, n) => (
            "up",
            format!("{} of {n} sites up, {pending} not probed yet", n - pending),
        ),
        (d, n) => ("down", format!("{d} of {n} sites down")),
    };
    let _ = write!(
        h,
        "<p class=\"banner {class}\" role=\"status\">{banner}</p>"
    );
    if !tenants.is_empty() {
        h.push_str("<nav aria-label=\"Tenants\"><a href=\"/\">All tenants</a>");
        for t in &tenants {
            let enc: String = url::form_urlencoded::byte_serialize(t.as_bytes()).collect();
            let _ = write!(h, "<a href=\"/?tenant={}\">{}</a>", esc(&enc), esc(t));
        }
        h.push_str("</nav>");
    }

    let mut labels: Vec<&str> = sites
        .iter()
        .flat_map(|s| s.labels.iter().map(|(k, _)| k.as_str()))
        .collect();
    labels.sort_unstable();
    labels.dedup();
    if !labels.is_empty() {
        h.push_str("<nav aria-label=\"Grouping\">Group by: <a href=\"/\">tenant</a>");
        for l in &labels {
            let _ = write!(h, "<a href=\"/?group={}\">{}</a>", esc(l), esc(l));
        }
        h.push_str("</nav>");
    }
    h.push_str("</header><main>");

    let mut current: Option<Option<String>> = None;
    for (site, st) in shown {
        let group = group_of(site);
        if current.as_ref() != Some(&group) {
            if current.is_some() {
                h.push_str("</tbody></table></section>");
            }
            let name = match (&q.group, &group) {
                (None, Some(t)) => t.clone(),
                (None, None) => "Sites without a tenant".to_string(),
                (Some(l), Some(v)) => format!("{l}: {v}"),
                (Some(l), None) => format!("No {l} label"),
            };
            current = Some(group);
            let _ = write!(
                h,
                "<section><h2>{}</h2><table><thead><tr><th scope=\"col\">Site</th><th scope=\"col\">Status</th>\
                 <th scope=\"col\">Latency</th><th scope=\"col\" class=\"wide\">Recent</th><th scope=\"col\">Since</th>\
                 <th scope=\"col\" class=\"wide\">Certificate</th><th scope=\"col\">Last error</th></tr></thead><tbody>",
                esc(&name)
            );
        }
        let _ = write!(
            h,
            "<tr><th scope=\"row\"><a href=\"{url}\" rel=\"noreferrer\">{id}</a></th>",
            url = esc(site.url.as_str()),
            id = esc(&site.id)
        );
        match st {
            None => h.push_str(
                "<td class=\"state\">PENDING</td><td></td><td class=\"wide\"></td><td></td><td class=\"wide\"></td><td></td>",
            ),
            Some(st) => {
                // Between confirmations the word says where the site is heading.
                let (cls, word) = match (st.up, st.last.success()) {
                    (true, true) => ("up", "UP"),
                    (true, false) => ("warn", "FAILING"),
                    (false, false) => ("down", "DOWN"),
                    (false, true) => ("down", "RECOVERING"),
                };
                let _ = write!(
                    h,
                    "<td class=\"state {cls}\">{word}</td><td>{:.0} ms</td>",
                    st.last.duration.as_secs_f64() * 1e3
                );
                let ups = st.recent.iter().filter(|u| **u).count();
                let _ = write!(
                    h,
                    "<td class=\"wide\"><span class=\"bar\" role=\"img\" aria-label=\"last {} probes: {ups} up, {} down\">",
                    st.recent.len(),
                    st.recent.len() - ups
                );
                for up in &st.recent {
                    h.push_str(if *up { "<i></i>" } else { "<i class=\"d\"></i>" });
                }
                h.push_str("</span></td>");
                let ago = now.duration_since(st.since).unwrap_or_default();
                let _ = write!(h, "<td>{} ago</td>", span(ago));
                match st.last.cert_expiry {
                    Some(t) => {
                        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
                        let text = match at.duration_since(now) {
                            Ok(left) => format!("expires in {}", span(left)),
                            Err(e) => format!("expired {} ago", span(e.duration())),
                        };
                        let _ = write!(h, "<td class=\"wide\">{text}</td>");
                    }
                    None => h.push_str("<td class=\"wide\"></td>"),
                }
                let error = st.last.error.as_deref().unwrap_or("");
                let _ = write!(h, "<td class=\"err\">{}</td>", esc(error));
            }
        }
        h.push_str("</tr>");
    }
    if current.is_some() {
        h.push_str("</tbody></table></section>");
    }
    if pages > 1 {
        h.push_str("<nav aria-label=\"Pages\"><p>");
        let tenant = q
            .tenant
            .as_ref()
            .map(|t| {
                let enc: String = url::form_urlencoded::byte_serialize(t.as_bytes()).collect();
                format!("&amp;tenant={}", esc(&enc))
            })
            .unwrap_or_default();
        for p in 1..=pages {
            if p == page {
                let _ = write!(h, "<strong aria-current=\"page\">{p}</strong> ");
            } else {
                let _ = write!(h, "<a href=\"/?page={p}{tenant}\">{p}</a> ");
            }
        }
        h.push_str("</p></nav>");
    }
    let _ = writeln!(
        h,
        "</main><footer><p><small>sitewatch {} · <a href=\"/metrics\">metrics</a> · \
         <a href=\"/api/v1/sites\">JSON</a></small></p></footer></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn spans_pick_a_readable_unit() {
        assert_eq!(span(Duration::from_secs(5)), "5 s");
        assert_eq!(span(Duration::from_secs(600)), "10 min");
        assert_eq!(span(Duration::from_secs(3 * 3600)), "3 h");
        assert_eq!(span(Duration::from_secs(20 * 86_400)), "20 d");
    }

    #[test]
    fn queries_parse() {
        assert_eq!(
            Query::parse(Some("tenant=acme%20co&page=3")),
            Query {
                tenant: Some("acme co".into()),
                page: 3,
                group: None
            }
        );
        assert_eq!(Query::parse(Some("page=0")).page, 1);
        assert_eq!(
            Query::parse(None),
            Query {
                tenant: None,
                page: 1,
                group: None
            }
        );
        assert_eq!(
            Query::parse(Some("group=team")).group.as_deref(),
            Some("team")
        );
    }
}

#[cfg(test)]
mod confirmation_tests {
    use super::*;
    use crate::probe::{ProbeResult, ResultClass};

    /// The state word of the only row of the page.
    fn word(table: &SiteTable, sites: &[std::sync::Arc<Site>]) -> String {
        let html = render(sites, table, &Query::parse(None));
        let at = html.find("<td class=\"state").expect("a state cell");
        let cell = &html[at..];
        cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()].to_string()
    }

    #[test]
    fn the_page_shows_the_confirmed_state_and_where_it_is_heading() {
        let config = crate::config::parse_sources(
            &[(
                "a.yaml".into(),
                "sites:\n  - { id: a, url: 'http://127.0.0.1:9/', failure_threshold: 2, success_threshold: 2 }\n"
                    .into(),
            )],
            &crate::config::SystemSecrets,
        )
        .unwrap();
        let metrics = crate::metrics::Metrics::new(None);
        let table = &metrics.sites;
        table.insert(&config.sites[0]);
        let probe = |class| {
            let r = ProbeResult::for_test(class, SystemTime::now(), Duration::from_millis(5));
            table.record("a", &r);
            word(table, &config.sites)
        };
        assert_eq!(probe(ResultClass::Success), "UP");
        assert_eq!(probe(ResultClass::HttpStatus), "FAILING");
        assert_eq!(probe(ResultClass::HttpStatus), "DOWN");
        assert_eq!(probe(ResultClass::Success), "RECOVERING");
        assert_eq!(probe(ResultClass::Success), "UP");
    }
}

//! The per-site check settings, which may also be set in `defaults`: read from YAML and validated.

use std::sync::Arc;

use http::header::HeaderName;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse_duration, Ctx, IpVersion, Pattern, REGEX_SIZE_LIMIT};
use crate::checks::{parse_version, AddressMode, Checks, Compression, HeaderCheck};
use crate::jsoncheck::JsonCondition;

/// Most consecutive probes a `failure_threshold` or `success_threshold` may ask for.
const MAX_THRESHOLD: u32 = 1000;

/// Declares a raw settings struct with the check fields every site and `defaults` share, and
/// `RawChecks` that carries them alone (serde cannot combine `flatten` with
/// `deny_unknown_fields`, so the fields are repeated by this macro instead of by hand). The
/// fields take the struct's visibility.
macro_rules! with_check_fields {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        $vis struct $name {
            $($body)*
            /// Fail if a response header matches (blackbox_exporter's `fail_if_header_matches`).
            $vis fail_if_header_matches: Option<Vec<RawHeaderCheck>>,
            /// Fail unless a response header matches.
            $vis fail_if_header_not_matches: Option<Vec<RawHeaderCheck>>,
            /// Conditions on a JSON body, e.g. `$.status == "UP"`; every one must hold.
            $vis json_conditions: Option<Vec<String>>,
            /// A probe slower than this fails with result `slow` (its duration is still recorded).
            $vis max_duration: Option<String>,
            /// Fail with result `cert_expiring` when a certificate of the chain expires sooner.
            $vis fail_if_cert_expires_within: Option<String>,
            /// Fail with result `ssl` if the final URL used TLS.
            $vis fail_if_ssl: Option<bool>,
            /// Fail with result `ssl` unless the final URL used TLS.
            $vis fail_if_not_ssl: Option<bool>,
            /// Accepted HTTP versions of the final response (`HTTP/1.0`, `HTTP/1.1`, `HTTP/2`).
            $vis valid_http_versions: Option<Vec<String>>,
            /// Ask for and require this `Content-Encoding`; the body is decoded for the checks.
            $vis compression: Option<Compression>,
            /// Which of the name's addresses are probed: `first`, `all` or `happy_eyeballs`.
            $vis addresses: Option<AddressMode>,
            /// Address family preference; overrides `network.ip_version`.
            $vis ip_version: Option<IpVersion>,
            /// Consecutive failed probes before `sitewatch_site_up` turns 0 (default 1).
            $vis failure_threshold: Option<u32>,
            /// Consecutive good probes before `sitewatch_site_up` turns 1 again (default 1).
            $vis success_threshold: Option<u32>,
            /// Upper bounds of this site's `sitewatch_probe_duration_seconds` buckets, seconds.
            $vis histogram_buckets: Option<Vec<f64>>,
        }
    };
}
pub(super) use with_check_fields;

/// Moves the check fields out of a raw site or `defaults`.
macro_rules! take_checks {
    ($raw:expr) => {
        $crate::config::checks::RawChecks {
            fail_if_header_matches: $raw.fail_if_header_matches.take(),
            fail_if_header_not_matches: $raw.fail_if_header_not_matches.take(),
            json_conditions: $raw.json_conditions.take(),
            max_duration: $raw.max_duration.take(),
            fail_if_cert_expires_within: $raw.fail_if_cert_expires_within.take(),
            fail_if_ssl: $raw.fail_if_ssl.take(),
            fail_if_not_ssl: $raw.fail_if_not_ssl.take(),
            valid_http_versions: $raw.valid_http_versions.take(),
            compression: $raw.compression.take(),
            addresses: $raw.addresses.take(),
            ip_version: $raw.ip_version.take(),
            failure_threshold: $raw.failure_threshold.take(),
            success_threshold: $raw.success_threshold.take(),
            histogram_buckets: $raw.histogram_buckets.take(),
        }
    };
}
pub(super) use take_checks;

/// One `fail_if_header_matches` / `fail_if_header_not_matches` entry as written.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderCheck {
    /// Response header name (case-insensitive).
    header: String,
    /// Regular expression tried against every value of the header.
    regex: String,
    /// Whether a missing header passes (default: it fails).
    #[serde(default)]
    allow_missing: bool,
}

with_check_fields! {
/// The check fields of a site or of `defaults`, as written.
#[derive(Debug, Clone, Default)]
pub(super) struct RawChecks {}
}

impl RawChecks {
    /// A site's settings, each falling back to the file's `defaults` (lists are replaced, not
    /// merged).
    pub fn or(self, d: &RawChecks) -> RawChecks {
        RawChecks {
            fail_if_header_matches: self
                .fail_if_header_matches
                .or_else(|| d.fail_if_header_matches.clone()),
            fail_if_header_not_matches: self
                .fail_if_header_not_matches
                .or_else(|| d.fail_if_header_not_matches.clone()),
            json_conditions: self.json_conditions.or_else(|| d.json_conditions.clone()),
            max_duration: self.max_duration.or_else(|| d.max_duration.clone()),
            fail_if_cert_expires_within: self
                .fail_if_cert_expires_within
                .or_else(|| d.fail_if_cert_expires_within.clone()),
            fail_if_ssl: self.fail_if_ssl.or(d.fail_if_ssl),
            fail_if_not_ssl: self.fail_if_not_ssl.or(d.fail_if_not_ssl),
            valid_http_versions: self
                .valid_http_versions
                .or_else(|| d.valid_http_versions.clone()),
            compression: self.compression.or(d.compression),
            addresses: self.addresses.or(d.addresses),
            ip_version: self.ip_version.or(d.ip_version),
            failure_threshold: self.failure_threshold.or(d.failure_threshold),
            success_threshold: self.success_threshold.or(d.success_threshold),
            histogram_buckets: self
                .histogram_buckets
                .or_else(|| d.histogram_buckets.clone()),
        }
    }
}

/// The validated check settings of a site.
#[derive(Debug, Clone, Default)]
pub(super) struct SiteChecks {
    pub checks: Checks,
    pub addresses: AddressMode,
    pub ip_version: Option<IpVersion>,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub histogram_buckets: Option<Arc<[f64]>>,
}

/// Compiles a configured pattern; the size limits bound what one pattern may cost in memory
/// (a "regex bomb" such as `(a{1000}){1000}` is refused). The regex crate matches in linear
/// time, so no input makes a match slow.
pub(super) fn compile_pattern(src: &str) -> Result<Pattern, String> {
    regex::bytes::RegexBuilder::new(src)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(Pattern)
        .map_err(|e| format!("invalid regex: {e}"))
}

/// `histogram_buckets` must be increasing positive numbers.
pub(super) fn check_buckets(b: &[f64]) -> Result<(), String> {
    let sorted = b.windows(2).all(|w| w[0] < w[1]);
    if b.is_empty() || !sorted || b.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return Err("must be a non-empty list of increasing positive numbers".into());
    }
    Ok(())
}

impl Ctx<'_> {
    /// Validates check settings; `err` reports a field relative to the site (or `defaults`).
    pub(super) fn checks(
        &mut self,
        raw: RawChecks,
        err: &dyn Fn(&mut Self, &str, String),
    ) -> SiteChecks {
        let header_checks = |ctx: &mut Self, field: &str, list: Option<Vec<RawHeaderCheck>>| {
            let mut out = Vec::new();
            for (i, c) in list.unwrap_or_default().into_iter().enumerate() {
                let at = format!("{field}[{i}]");
                let header = HeaderName::from_bytes(c.header.as_bytes())
                    .map_err(|_| {
                        err(
                            ctx,
                            &format!("{at}.header"),
                            format!("{:?} is not a valid header name", c.header),
                        )
                    })
                    .ok();
                let regex = compile_pattern(&c.regex)
                    .map_err(|e| err(ctx, &format!("{at}.regex"), e))
                    .ok();
                if let (Some(header), Some(regex)) = (header, regex) {
                    out.push(HeaderCheck {
                        header,
                        regex,
                        allow_missing: c.allow_missing,
                    });
                }
            }
            out
        };
        let fail_if_header_matches =
            header_checks(self, "fail_if_header_matches", raw.fail_if_header_matches);
        let fail_if_header_not_matches = header_checks(
            self,
            "fail_if_header_not_matches",
            raw.fail_if_header_not_matches,
        );
        let mut json = Vec::new();
        for (i, text) in raw.json_conditions.unwrap_or_default().iter().enumerate() {
            match JsonCondition::parse(text) {
                Ok(c) => json.push(c),
                Err(e) => err(self, &format!("json_conditions[{i}]"), e),
            }
        }
        let duration = |ctx: &mut Self, field: &str, v: Option<String>| {
            let d = parse_duration(v.as_deref()?)
                .map_err(|e| err(ctx, field, e))
                .ok()?;
            if d.is_zero() {
                err(ctx, field, "must be greater than zero".into());
                return None;
            }
            Some(d)
        };
        let max_duration = duration(self, "max_duration", raw.max_duration);
        let cert_expires_within = duration(
            self,
            "fail_if_cert_expires_within",
            raw.fail_if_cert_expires_within,
        );
        let fail_if_ssl = raw.fail_if_ssl.unwrap_or(false);
        let fail_if_not_ssl = raw.fail_if_not_ssl.unwrap_or(false);
        if fail_if_ssl && fail_if_not_ssl {
            err(
                self,
                "fail_if_not_ssl",
                "set either fail_if_ssl or fail_if_not_ssl, not both".into(),
            );
        }
        let mut http_versions = Vec::new();
        if let Some(list) = raw.valid_http_versions {
            if list.is_empty() {
                err(
                    self,
                    "valid_http_versions",
                    "must list at least one version (leave it out to accept any)".into(),
                );
            }
            for v in list {
                match parse_version(&v) {
                    Ok(v) => http_versions.push(v),
                    Err(e) => err(self, "valid_http_versions", e),
                }
            }
        }
        let threshold = |ctx: &mut Self, field: &str, v: Option<u32>| match v {
            None => 1,
            Some(n) if (1..=MAX_THRESHOLD).contains(&n) => n,
            Some(n) => {
                err(
                    ctx,
                    field,
                    format!("{n} is out of range (1 to {MAX_THRESHOLD} consecutive probes)"),
                );
                1
            }
        };
        let failure_threshold = threshold(self, "failure_threshold", raw.failure_threshold);
        let success_threshold = threshold(self, "success_threshold", raw.success_threshold);
        let histogram_buckets = raw.histogram_buckets.and_then(|b| {
            check_buckets(&b)
                .map_err(|e| err(self, "histogram_buckets", e))
                .ok()?;
            Some(Arc::from(b))
        });
        SiteChecks {
            checks: Checks {
                fail_if_header_matches,
                fail_if_header_not_matches,
                json,
                max_duration,
                cert_expires_within,
                fail_if_ssl,
                fail_if_not_ssl,
                http_versions,
                compression: raw.compression,
            },
            addresses: raw.addresses.unwrap_or_default(),
            ip_version: raw.ip_version,
            failure_threshold,
            success_threshold,
            histogram_buckets,
        }
    }
}

//! What a response must pass beyond its status code: header, JSON, protocol and encoding checks.
//!
//! The checks are parsed once with the configuration into [`Checks`]; the prober calls the
//! functions here on each final response. Each failure is a message naming the check, so a
//! failing probe says which condition failed.

use std::io::Read;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};
use http::Version;

use crate::config::Pattern;
use crate::jsoncheck::JsonCondition;

/// `fail_if_header_matches` / `fail_if_header_not_matches` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderCheck {
    /// The response header looked at (every value of it).
    pub header: HeaderName,
    /// The pattern.
    pub regex: Pattern,
    /// Whether a missing header passes; otherwise it fails.
    pub allow_missing: bool,
}

/// The encoding a site must answer in (`compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `Content-Encoding: gzip`.
    Gzip,
    /// `Content-Encoding: deflate` (zlib, or raw deflate as some servers send it).
    Deflate,
    /// `Content-Encoding: br` (Brotli).
    Br,
    /// No encoding.
    Identity,
}

impl Compression {
    /// The `Content-Encoding` (and `Accept-Encoding`) token.
    pub fn token(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
            Compression::Br => "br",
            Compression::Identity => "identity",
        }
    }

    /// The encoding a `Content-Encoding` value names, if it is one sitewatch decodes.
    pub fn from_header(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Compression::Gzip),
            "deflate" => Some(Compression::Deflate),
            "br" => Some(Compression::Br),
            "" | "identity" => Some(Compression::Identity),
            _ => None,
        }
    }
}

/// Which of a name's addresses a probe connects to (`addresses`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AddressMode {
    /// The first address in `ip_version` order, as blackbox_exporter does.
    #[default]
    First,
    /// Every address, concurrently: the site passes only if every address passes, and each
    /// address gets its own `sitewatch_address_probe_*{address}` series.
    All,
    /// RFC 8305 failover: the next address is tried when a connection fails or has not
    /// completed within 250 ms; the first connection made is used.
    HappyEyeballs,
}

/// The checks of one site, beyond `valid_status` and `regex`/`regex_absent`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checks {
    /// Fail if a header matches (or is missing, unless allowed).
    pub fail_if_header_matches: Vec<HeaderCheck>,
    /// Fail unless a header matches (or is missing and allowed).
    pub fail_if_header_not_matches: Vec<HeaderCheck>,
    /// Conditions on the JSON body.
    pub json: Vec<JsonCondition>,
    /// A probe slower than this fails with `slow`.
    pub max_duration: Option<Duration>,
    /// Fail with `cert_expiring` when the earliest certificate of the chain expires sooner.
    pub cert_expires_within: Option<Duration>,
    /// Fail if the final URL used TLS.
    pub fail_if_ssl: bool,
    /// Fail unless the final URL used TLS.
    pub fail_if_not_ssl: bool,
    /// Accepted HTTP versions of the final response; empty accepts any.
    pub http_versions: Vec<Version>,
    /// The encoding the response must use; it is decoded for the body checks.
    pub compression: Option<Compression>,
}

impl Checks {
    /// Whether the body must be kept for these checks.
    pub fn need_body(&self) -> bool {
        !self.json.is_empty() || self.compression.is_some()
    }
}

/// How an HTTP version is written in `valid_http_versions` and messages.
pub fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// Parses a `valid_http_versions` entry (`HTTP/1.1`, `HTTP/2`, `HTTP/2.0`).
pub fn parse_version(s: &str) -> Result<Version, String> {
    match s.trim().to_ascii_uppercase().as_str() {
        "HTTP/1.0" => Ok(Version::HTTP_10),
        "HTTP/1.1" => Ok(Version::HTTP_11),
        "HTTP/2" | "HTTP/2.0" => Ok(Version::HTTP_2),
        _ => Err(format!(
            "{s:?} is not an HTTP version sitewatch speaks (HTTP/1.0, HTTP/1.1, HTTP/2)"
        )),
    }
}

/// Runs the header checks the way blackbox_exporter does: every value of the header is
/// tried; a missing header fails unless `allow_missing`.
pub fn check_headers(checks: &Checks, headers: &HeaderMap) -> Result<(), String> {
    let missing = |c: &HeaderCheck| format!("header {} is missing", c.header);
    for c in &checks.fail_if_header_matches {
        let mut values = headers.get_all(&c.header).iter().peekable();
        if values.peek().is_none() {
            if c.allow_missing {
                continue;
            }
            return Err(missing(c));
        }
        if let Some(v) = values.find(|v| c.regex.0.is_match(v.as_bytes())) {
            return Err(format!(
                "header {}: {:?} matches fail_if_header_matches {:?}",
                c.header,
                String::from_utf8_lossy(v.as_bytes()),
                c.regex.0.as_str()
            ));
        }
    }
    for c in &checks.fail_if_header_not_matches {
        let values: Vec<_> = headers.get_all(&c.header).iter().collect();
        if values.is_empty() {
            if c.allow_missing {
                continue;
            }
            return Err(missing(c));
        }
        if !values.iter().any(|v| c.regex.0.is_match(v.as_bytes())) {
            let shown: Vec<_> = values
                .iter()
                .map(|v| format!("{:?}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            return Err(format!(
                "header {}: {} does not match fail_if_header_not_matches {:?}",
                c.header,
                shown.join(", "),
                c.regex.0.as_str()
            ));
        }
    }
    Ok(())
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The decoded body is longer than the limit (a compression bomb, or just large).
    #[error("the decoded body is larger than {0} bytes")]
    TooLarge(u64),
    /// The bytes are not valid in the encoding.
    #[error("cannot decode the {encoding} body: {reason}")]
    Invalid {
        /// The encoding.
        encoding: &'static str,
        /// What the decoder said.
        reason: String,
    },
}

/// Decodes a body in `encoding`, reading at most `limit` decoded bytes.
pub fn decode(encoding: Compression, body: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
    fn read_all(r: impl Read, encoding: Compression, limit: u64) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        r.take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| DecodeError::Invalid {
                encoding: encoding.token(),
                reason: e.to_string(),
            })?;
        if out.len() as u64 > limit {
            return Err(DecodeError::TooLarge(limit));
        }
        Ok(out)
    }
    match encoding {
        Compression::Identity => {
            if body.len() as u64 > limit {
                return Err(DecodeError::TooLarge(limit));
            }
            Ok(body.to_vec())
        }
        Compression::Gzip => read_all(flate2::read::MultiGzDecoder::new(body), encoding, limit),
        Compression::Deflate => {
            // RFC 9110 says zlib; some servers send raw deflate: try both.
            read_all(flate2::read::ZlibDecoder::new(body), encoding, limit).or_else(|e| match e {
                DecodeError::Invalid { .. } => {
                    read_all(flate2::read::DeflateDecoder::new(body), encoding, limit)
                }
                too_large => Err(too_large),
            })
        }
        Compression::Br => read_all(
            brotli_decompressor::Decompressor::new(body, 4096),
            encoding,
            limit,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn check(header: &str, regex: &str, allow_missing: bool) -> HeaderCheck {
        HeaderCheck {
            header: HeaderName::from_bytes(header.as_bytes()).unwrap(),
            regex: Pattern(regex::bytes::Regex::new(regex).unwrap()),
            allow_missing,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_checks_follow_blackbox_semantics() {
        let must_not = Checks {
            fail_if_header_matches: vec![check("Server", "nginx/1\\.0", true)],
            ..Checks::default()
        };
        assert!(check_headers(&must_not, &headers(&[("server", "nginx/1.2")])).is_ok());
        assert!(check_headers(&must_not, &headers(&[])).is_ok());
        let e = check_headers(
            &must_not,
            &headers(&[("server", "caddy"), ("server", "nginx/1.0")]),
        )
        .unwrap_err();
        assert!(
            e.contains("\"nginx/1.0\" matches fail_if_header_matches"),
            "{e}"
        );

        let must = Checks {
            fail_if_header_not_matches: vec![check("content-type", "^application/json", false)],
            ..Checks::default()
        };
        assert!(check_headers(
            &must,
            &headers(&[("content-type", "application/json; charset=utf-8")])
        )
        .is_ok());
        // Any one value matching is enough.
        assert!(check_headers(
            &must,
            &headers(&[
                ("content-type", "text/html"),
                ("content-type", "application/json")
            ])
        )
        .is_ok());
        let e = check_headers(&must, &headers(&[("content-type", "text/html")])).unwrap_err();
        assert_eq!(
            e,
            "header content-type: \"text/html\" does not match fail_if_header_not_matches \"^application/json\""
        );
        let e = check_headers(&must, &headers(&[])).unwrap_err();
        assert_eq!(e, "header content-type is missing");
    }

    #[test]
    fn decoding_is_bounded_and_knows_each_encoding() {
        let text = b"{\"status\":\"UP\"}".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode(Compression::Gzip, &gz, 1 << 20).unwrap(), text);
        assert_eq!(
            decode(Compression::Gzip, &gz, 100),
            Err(DecodeError::TooLarge(100))
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(
            decode(Compression::Deflate, &z.finish().unwrap(), 1 << 20).unwrap(),
            text
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(
            decode(Compression::Deflate, &raw.finish().unwrap(), 1 << 20).unwrap(),
            text
        );
        let e = decode(Compression::Gzip, b"not gzip at all", 1 << 20).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Invalid {
                    encoding: "gzip",
                    ..
                }
            ),
            "{e}"
        );
        assert!(decode(Compression::Br, b"\xff\xff\xff", 1 << 20).is_err());
        assert_eq!(Compression::from_header(" GZIP "), Some(Compression::Gzip));
        assert_eq!(Compression::from_header("zstd"), None);
    }

    #[test]
    fn versions_parse_as_blackbox_spells_them() {
        assert_eq!(parse_version("HTTP/2.0"), Ok(Version::HTTP_2));
        assert_eq!(parse_version("http/1.1"), Ok(Version::HTTP_11));
        assert!(parse_version("HTTP/3")
            .unwrap_err()
            .contains("HTTP/1.0, HTTP/1.1, HTTP/2"));
    }
}

//! Unit tests of configuration validation: every error kind, its location, and the happy path.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// The file name every single-source test parses as.
const FILE: &str = "sitewatch.yaml";

/// Secrets from two maps: no environment variables, no files on disk.
#[derive(Default)]
struct FakeSecrets {
    env: HashMap<String, String>,
    files: HashMap<PathBuf, String>,
}

impl Secrets for FakeSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn file(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}

fn secrets() -> FakeSecrets {
    let mut s = FakeSecrets::default();
    s.files.insert("/secrets/pw".into(), "hunter2\n".into());
    s.files
        .insert("/secrets/token".into(), "tok-123\r\n".into());
    s.env.insert("PROBE_PASSWORD".into(), "env-pw".into());
    s.env.insert("API_TOKEN".into(), "env-token".into());
    s
}

/// YAML text from lines, so that line numbers are the slice index plus one.
fn yaml(lines: &[&str]) -> String {
    lines.join("\n") + "\n"
}

/// One site `web` (lines 1-3) with `extra` written on line 4.
fn site_with(extra: &str) -> String {
    yaml(&[
        "sites:",
        "  - id: web",
        "    url: http://web.example/",
        &format!("    {extra}"),
    ])
}

fn parse(yaml: &str) -> Result<Config, Vec<ConfigError>> {
    parse_sources(&[(PathBuf::from(FILE), yaml.to_string())], &secrets())
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    match parse(yaml) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => errors,
    }
}

fn one_error(yaml: &str) -> ConfigError {
    let mut errors = errors(yaml);
    assert_eq!(errors.len(), 1, "expected exactly one error: {errors:#?}");
    errors.remove(0)
}

/// Asserts where an error points and that its message contains `message`.
#[track_caller]
fn check(
    e: &ConfigError,
    line: Option<usize>,
    site: Option<&str>,
    field: Option<&str>,
    message: &str,
) {
    assert_eq!(e.file, Path::new(FILE), "file of {e:#?}");
    assert_eq!(e.line, line, "line of {e:#?}");
    assert_eq!(e.site.as_deref(), site, "site of {e:#?}");
    assert_eq!(e.field.as_deref(), field, "field of {e:#?}");
    assert!(
        e.message.contains(message),
        "message {:?} should contain {message:?}",
        e.message
    );
}

fn only_site(config: &Config) -> &Site {
    assert_eq!(config.sites.len(), 1, "{config:#?}");
    &config.sites[0]
}

// ---------------------------------------------------------------------------
// Unknown fields.

#[test]
fn unknown_site_field() {
    let e = one_error(&site_with("regx: shop"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("regx"),
        "unknown field `regx`",
    );
}

#[test]
fn unknown_top_level_field() {
    let e = one_error(&yaml(&["# comment", "sites: []", "sitez: []"]));
    check(&e, Some(3), None, Some("sitez"), "unknown field `sitez`");
}

#[test]
fn unknown_defaults_field() {
    let e = one_error(&yaml(&[
        "defaults:",
        "  interval: 30s",
        "  intervall: 1m",
        "sites: []",
    ]));
    check(
        &e,
        Some(3),
        None,
        Some("defaults.intervall"),
        "unknown field `intervall`",
    );
}

#[test]

fn unknown_top_level_and_defaults_fields_set_field() {
    let e = one_error(&yaml(&["sites: []", "sitez: []"]));
    check(&e, Some(2), None, Some("sitez"), "unknown field `sitez`");
    let e = one_error(&yaml(&["defaults:", "  intervall: 1m"]));
    check(
        &e,
        Some(2),
        None,
        Some("defaults.intervall"),
        "unknown field `intervall`",
    );
}

#[test]

fn unknown_nested_site_field_has_a_dotted_path() {
    let e = one_error(&site_with("tls: { ca_fil: /etc/ca.pem }"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("tls.ca_fil"),
        "unknown field `ca_fil`",
    );
}

#[test]

fn wrong_type_in_defaults_has_a_line() {
    let e = one_error(&yaml(&["defaults:", "  interval: [1]", "sites: []"]));
    assert_eq!(e.line, Some(2), "{e:#?}");
    assert!(e.message.contains("wrong type"), "{e}");
}

// ---------------------------------------------------------------------------
// Duplicate ids.

#[test]
fn duplicate_id_in_one_file() {
    let e = one_error(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: http://a.example/",
        "  - id: other",
        "    url: http://b.example/",
        "  - id: web",
        "    url: http://c.example/",
    ]));
    check(
        &e,
        Some(6),
        Some("web"),
        Some("id"),
        "duplicate site id (first defined at sitewatch.yaml:2)",
    );
}

#[test]
fn duplicate_id_across_files_names_the_first_file() {
    let sources = [
        (
            PathBuf::from("conf.d/a.yaml"),
            yaml(&["sites:", "  - id: web", "    url: http://a.example/"]),
        ),
        (
            PathBuf::from("conf.d/b.yaml"),
            yaml(&[
                "sites:",
                "  - id: api",
                "    url: http://api.example/",
                "  - id: web",
                "    url: http://b.example/",
            ]),
        ),
    ];
    let errors = parse_sources(&sources, &secrets()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.file, Path::new("conf.d/b.yaml"));
    assert_eq!(e.line, Some(4));
    assert_eq!(e.site.as_deref(), Some("web"));
    assert_eq!(e.field.as_deref(), Some("id"));
    assert!(e.message.contains("conf.d/a.yaml:2"), "{e}");
}

#[test]
fn same_id_under_two_tenants_is_allowed() {
    let config = parse(&yaml(&[
        "sites:",
        "  - id: web",
        "    tenant: acme",
        "    url: http://a.example/",
        "  - id: web",
        "    tenant: globex",
        "    url: http://b.example/",
        "  - id: web",
        "    url: http://c.example/",
    ]))
    .unwrap();
    let keys: Vec<String> = config.sites.iter().map(|s| s.key()).collect();
    assert_eq!(keys, ["acme/web", "globex/web", "web"]);
}

#[test]
fn same_url_twice_is_allowed() {
    let config = parse(&yaml(&[
        "sites:",
        "  - id: a",
        "    url: http://same.example/",
        "  - id: b",
        "    url: http://same.example/",
    ]))
    .unwrap();
    assert_eq!(config.sites.len(), 2);
}

// ---------------------------------------------------------------------------
// URL.

#[test]
fn malformed_url() {
    let e = one_error(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: 'http://exa mple.com/'",
    ]));
    check(&e, Some(3), Some("web"), Some("url"), "invalid URL");
}

#[test]
fn non_http_scheme() {
    let e = one_error(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: ftp://files.example/",
    ]));
    check(
        &e,
        Some(3),
        Some("web"),
        Some("url"),
        "must use http or https",
    );
}

#[test]
fn credentials_in_url_are_rejected() {
    let e = one_error(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: https://probe:hunter2@web.example/",
    ]));
    check(
        &e,
        Some(3),
        Some("web"),
        Some("url"),
        "credentials in the URL are not allowed",
    );
}

#[test]
fn missing_id() {
    let e = one_error(&yaml(&["sites:", "  - url: http://web.example/"]));
    // Without an id, the site is named by its 1-based position; the line is the site's.
    check(&e, Some(2), Some("#1"), Some("id"), "missing");
}

#[test]
fn missing_url() {
    let e = one_error(&yaml(&["sites:", "  - id: web", "    tenant: acme"]));
    check(&e, Some(2), Some("web"), Some("url"), "missing");
}

// ---------------------------------------------------------------------------
// Regular expressions.

#[test]
fn bad_regex() {
    let e = one_error(&site_with("regex: 'Add to (cart'"));
    check(&e, Some(4), Some("web"), Some("regex"), "invalid regex");
}

#[test]
fn bad_regex_absent() {
    let e = one_error(&site_with("regex_absent: '[maintenance'"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("regex_absent"),
        "invalid regex",
    );
}

// ---------------------------------------------------------------------------
// Durations.

#[test]
fn bad_duration() {
    let e = one_error(&site_with("interval: 5 parsecs"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("interval"),
        "invalid duration \"5 parsecs\"",
    );
}

#[test]
fn timeout_longer_than_interval() {
    let e = one_error(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: http://web.example/",
        "    interval: 5s",
        "    timeout: 6s",
    ]));
    check(
        &e,
        Some(5),
        Some("web"),
        Some("timeout"),
        "timeout 6s is longer than interval 5s",
    );
}

// ---------------------------------------------------------------------------
// Secrets.

#[test]
fn missing_password_file() {
    let e = one_error(&site_with(
        "basic_auth: { username: probe, password_file: /secrets/missing }",
    ));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("basic_auth.password_file"),
        "cannot read secret file /secrets/missing",
    );
}

#[test]
fn missing_bearer_token_file() {
    let e = one_error(&site_with("bearer_token_file: /secrets/missing"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("bearer_token_file"),
        "cannot read secret file /secrets/missing",
    );
}

#[test]
fn password_env_not_set() {
    let e = one_error(&site_with(
        "basic_auth: { username: probe, password_env: NOT_SET }",
    ));
    assert_eq!(e.file, Path::new(FILE));
    assert_eq!(e.site.as_deref(), Some("web"));
    assert!(
        e.message
            .contains("environment variable NOT_SET is not set"),
        "{e}"
    );
}

#[test]

fn password_env_not_set_names_the_env_field() {
    let e = one_error(&site_with(
        "basic_auth: { username: probe, password_env: NOT_SET }",
    ));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("basic_auth.password_env"),
        "environment variable NOT_SET is not set",
    );
}

#[test]

fn bearer_token_env_not_set_names_the_env_field() {
    let e = one_error(&site_with("bearer_token_env: NOT_SET"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("bearer_token_env"),
        "environment variable NOT_SET is not set",
    );
}

#[test]
fn password_file_and_env_together() {
    let e = one_error(&site_with(
        "basic_auth: { username: probe, password_file: /secrets/pw, password_env: PROBE_PASSWORD }",
    ));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("basic_auth.password_env"),
        "not both",
    );
}

#[test]
fn basic_auth_and_bearer_token_together() {
    let e = one_error(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: http://web.example/",
        "    basic_auth: { username: probe, password_file: /secrets/pw }",
        "    bearer_token_file: /secrets/token",
    ]));
    check(
        &e,
        Some(5),
        Some("web"),
        Some("bearer_token_file"),
        "set either basic_auth or a bearer token",
    );
}

// ---------------------------------------------------------------------------
// Status codes and sizes.

#[test]
fn status_code_out_of_range() {
    let e = one_error(&site_with("valid_status: ['700']"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("valid_status"),
        "\"700\" is not a status code (100-599)",
    );
}

#[test]
fn status_code_number_out_of_range() {
    let e = one_error(&site_with("valid_status: [200, 700]"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("valid_status"),
        "\"700\" is not a status code",
    );
}

#[test]
fn empty_status_range() {
    let e = one_error(&site_with("valid_status: [299-200]"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("valid_status"),
        "range \"299-200\" is empty",
    );
}

#[test]
fn bad_status_class() {
    let e = one_error(&site_with("valid_status: [6xx]"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("valid_status"),
        "\"6xx\" is not a status class",
    );
}

#[test]
fn empty_status_list() {
    let e = one_error(&site_with("valid_status: []"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("valid_status"),
        "at least one",
    );
}

#[test]
fn bad_max_body_bytes() {
    let e = one_error(&site_with("max_body_bytes: lots"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("max_body_bytes"),
        "invalid size \"lots\"",
    );
}

#[test]
fn negative_max_body_bytes() {
    let e = one_error(&site_with("max_body_bytes: -1"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("max_body_bytes"),
        "must be a whole number of bytes",
    );
}

// ---------------------------------------------------------------------------
// Labels.

#[test]
fn bad_label_name() {
    let e = one_error(&site_with("labels: { 0team: web }"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("labels.0team"),
        "not a valid Prometheus label name",
    );
}

#[test]
fn double_underscore_label_name() {
    let e = one_error(&site_with("labels: { __name__: x }"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("labels.__name__"),
        "not a valid Prometheus label name",
    );
}

#[test]
fn reserved_label() {
    let e = one_error(&site_with("labels: { team: web, site: other }"));
    check(&e, Some(4), Some("web"), Some("labels.site"), "reserved");
}

#[test]

fn reserved_label_named_like_a_site_field_points_at_the_label() {
    let e = one_error(&site_with("labels: { url: other }"));
    check(&e, Some(4), Some("web"), Some("labels.url"), "reserved");
}

// ---------------------------------------------------------------------------
// TLS.

#[test]
fn missing_ca_file() {
    let e = one_error(&site_with(
        "tls: { ca_file: /nonexistent/sitewatch-test/ca.pem }",
    ));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("tls.ca_file"),
        "/nonexistent/sitewatch-test/ca.pem",
    );
}

#[test]
fn missing_ca_file_in_defaults() {
    let e = one_error(&yaml(&[
        "defaults:",
        "  tls:",
        "    ca_file: /nonexistent/sitewatch-test/ca.pem",
        "sites:",
        "  - id: web",
        "    url: https://web.example/",
    ]));
    check(
        &e,
        Some(3),
        None,
        Some("defaults.tls.ca_file"),
        "/nonexistent/sitewatch-test/ca.pem",
    );
}

#[test]
fn bad_tls_server_name() {
    let e = one_error(&site_with("tls: { server_name: 'not a name' }"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("tls.server_name"),
        "not a valid server name",
    );
}

// ---------------------------------------------------------------------------
// Network.

#[test]
fn bad_deny_cidr() {
    let e = one_error(&yaml(&[
        "network:",
        "  allow: []",
        "  deny: [169.254.0.0/16, 10.0.0.0/33]",
        "sites: []",
    ]));
    check(
        &e,
        Some(3),
        None,
        Some("network.deny"),
        "\"10.0.0.0/33\" is not a CIDR range or address",
    );
}

#[test]
fn bad_resolver_entry() {
    let e = one_error(&yaml(&[
        "network:",
        "  resolver: ['127.0.0.1:5353', 'dns.example']",
    ]));
    check(
        &e,
        Some(2),
        None,
        Some("network.resolver"),
        "dns.example is not a name server address",
    );
}

#[test]
fn bad_resolver_word() {
    let e = one_error(&yaml(&["network:", "  resolver: google"]));
    check(
        &e,
        Some(2),
        None,
        Some("network.resolver"),
        "expected `system` or a list of name servers",
    );
}

#[test]
fn resolver_servers_default_to_port_53() {
    let config = parse(&yaml(&[
        "network:",
        "  resolver: ['127.0.0.1:5353', '::1']",
    ]))
    .unwrap();
    assert_eq!(
        config.network.resolver,
        ResolverSetting::Servers(vec![
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
        ])
    );
}

#[test]
fn network_in_two_files() {
    let sources = [
        (PathBuf::from("a.yaml"), yaml(&["network:", "  deny: []"])),
        (
            PathBuf::from("b.yaml"),
            yaml(&["sites: []", "network:", "  deny: []"]),
        ),
    ];
    let errors = parse_sources(&sources, &secrets()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].file, Path::new("b.yaml"));
    assert_eq!(errors[0].line, Some(2));
    assert_eq!(errors[0].field.as_deref(), Some("network"));
    assert!(
        errors[0].message.contains("already set in a.yaml"),
        "{}",
        errors[0]
    );
}

#[test]
fn bad_defaults_are_reported_once_not_per_site() {
    let e = one_error(&yaml(&[
        "defaults:",
        "  interval: 5 parsecs",
        "sites:",
        "  - id: a",
        "    url: http://a.example/",
        "  - id: b",
        "    url: http://b.example/",
    ]));
    check(
        &e,
        Some(2),
        None,
        Some("defaults.interval"),
        "invalid duration \"5 parsecs\"",
    );
}

// ---------------------------------------------------------------------------
// YAML itself.

#[test]
fn yaml_syntax_error_has_the_parser_line() {
    let e = one_error(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: http://web.example/",
        "   bad indentation: here",
    ]));
    assert_eq!(e.file, Path::new(FILE));
    assert_eq!(e.line, Some(4), "{e:#?}");
    assert_eq!(e.site, None);
    assert_eq!(e.field, None);
    assert!(!e.message.is_empty());
}

#[test]
fn wrong_type_in_a_site() {
    let e = one_error(&site_with("follow_redirects: maybe"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("follow_redirects"),
        "wrong type",
    );
}

// ---------------------------------------------------------------------------
// Every error is reported.

#[test]
fn errors_in_several_sites_are_all_reported() {
    let errors = errors(&yaml(&[
        "sites:",
        "  - id: good",
        "    url: http://good.example/",
        "  - id: a",
        "    url: ftp://a.example/",
        "  - id: b",
        "    url: http://b.example/",
        "    interval: 5 parsecs",
        "    regex: '('",
        "  - id: c",
        "    url: http://c.example/",
        "    labels: { site: c }",
        "  - id: also-good",
        "    url: http://also-good.example/",
    ]));
    let found: Vec<(Option<usize>, Option<&str>, Option<&str>)> = errors
        .iter()
        .map(|e| (e.line, e.site.as_deref(), e.field.as_deref()))
        .collect();
    assert_eq!(
        found,
        [
            (Some(5), Some("a"), Some("url")),
            (Some(9), Some("b"), Some("regex")),
            (Some(8), Some("b"), Some("interval")),
            (Some(12), Some("c"), Some("labels.site")),
        ]
    );
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let sources = [
        (
            PathBuf::from("a.yaml"),
            yaml(&["sites:", "  - id: a", "    url: ftp://a.example/"]),
        ),
        (PathBuf::from("b.yaml"), "sites: [".to_string()),
        (
            PathBuf::from("c.yaml"),
            yaml(&[
                "sites:",
                "  - id: c",
                "    url: http://c.example/",
                "    regx: c",
            ]),
        ),
    ];
    let errors = parse_sources(&sources, &secrets()).unwrap_err();
    let files: Vec<&Path> = errors.iter().map(|e| e.file.as_path()).collect();
    assert_eq!(
        files,
        [
            Path::new("a.yaml"),
            Path::new("b.yaml"),
            Path::new("c.yaml")
        ]
    );
}

// ---------------------------------------------------------------------------
// Display.

#[test]
fn display_shape() {
    let e = one_error(&site_with("interval: 5 parsecs"));
    assert_eq!(
        e.to_string(),
        format!(
            "sitewatch.yaml:4: site \"web\": field `interval`: {}",
            e.message
        )
    );
}

#[test]
fn display_without_line_site_or_field() {
    let e = ConfigError {
        file: "x.yaml".into(),
        line: None,
        site: None,
        field: None,
        message: "broken".into(),
    };
    assert_eq!(e.to_string(), "x.yaml: broken");
}

// ---------------------------------------------------------------------------
// Valid configurations.

#[test]
fn zero_sites_are_valid() {
    for text in [
        "",
        "\n\n",
        "sites: []\n",
        "sites:\n",
        "# nothing here yet\n# still nothing\n",
    ] {
        let config = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:#?}"));
        assert!(config.sites.is_empty(), "{text:?}");
        assert_eq!(config, Config::default(), "{text:?}");
    }
}

#[test]
fn builtin_defaults() {
    let config = parse(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: http://web.example/",
    ]))
    .unwrap();
    let site = only_site(&config);
    assert_eq!(site.id, "web");
    assert_eq!(site.tenant, None);
    assert_eq!(site.key(), "web");
    assert_eq!(site.url.as_str(), "http://web.example/");
    assert_eq!(site.interval, Duration::from_secs(30));
    assert_eq!(site.timeout, Duration::from_secs(10));
    assert_eq!(site.method, http::Method::GET);
    assert_eq!(site.valid_status, vec![200..=299]);
    assert!(site.follow_redirects);
    assert_eq!(site.max_redirects, DEFAULT_MAX_REDIRECTS);
    assert_eq!(site.max_body_bytes, 1_048_576);
    assert_eq!(site.headers.len(), 1);
    assert_eq!(site.headers[http::header::USER_AGENT], crate::USER_AGENT);
    assert!(crate::USER_AGENT.starts_with("sitewatch/"));
    assert_eq!(site.auth, None);
    assert_eq!(site.body, None);
    assert_eq!(site.proxy, None);
    assert_eq!(site.regex, None);
    assert_eq!(site.regex_absent, None);
    assert!(site.labels.is_empty());
    assert!(!site.tls.insecure_skip_verify);
    assert_eq!(site.tls.ca_file, None);
    assert_eq!(site.source, Path::new(FILE));
}

/// The spec's example, with the one site split where the spec says "or", and
/// without `tls.ca_file` (read from the real file system, not through [`Secrets`]).
fn full_config() -> String {
    let ua = format!(
        "    headers: {{ User-Agent: \"{}\", Accept: '*/*' }}",
        crate::USER_AGENT
    );
    yaml(&[
        "defaults:",
        "  interval: 30s",
        "  timeout: 10s",
        "  method: GET",
        "  valid_status: [200-299]",
        "  follow_redirects: true",
        "  max_body_bytes: 1MiB",
        &ua[2..],
        "network:",
        "  deny: [169.254.0.0/16, fd00:ec2::254/128]",
        "  allow: []",
        "  ip_version: auto",
        "  resolver: system",
        "remote_write:",
        "  - url: http://prometheus:9090/api/v1/write",
        "sites:",
        "  - id: shop-home",
        "    url: https://shop.example/",
        "    regex: \"Add to cart\"",
        "    regex_absent: \"maintenance\"",
        "    tenant: acme",
        "    labels: { team: web }",
        "    method: post",
        "    headers: { accept: text/html, X-Probe: '1' }",
        "    body: '{\"ping\":1}'",
        "    basic_auth: { username: probe, password_file: /secrets/pw }",
        "    tls: { insecure_skip_verify: false, server_name: shop.example }",
        "    proxy: http://proxy.internal:3128",
        "    interval: 1m30s",
        "    timeout: 500ms",
        "    valid_status: [2xx, 301-302, 404]",
        "    follow_redirects: false",
        "    max_redirects: 3",
        "    max_body_bytes: 512KiB",
        "  - id: shop-api",
        "    url: http://api.shop.example/health",
        "    bearer_token_file: /secrets/token",
        "    max_body_bytes: 2048",
        "  - id: env-basic",
        "    url: http://env.example/",
        "    basic_auth: { username: probe, password_env: PROBE_PASSWORD }",
        "  - id: env-bearer",
        "    url: http://env.example/",
        "    bearer_token_env: API_TOKEN",
    ])
}

#[test]
fn full_config_parses() {
    let config = parse(&full_config()).unwrap_or_else(|e| panic!("{e:#?}"));
    let keys: Vec<String> = config.sites.iter().map(|s| s.key()).collect();
    assert_eq!(
        keys,
        ["acme/shop-home", "shop-api", "env-basic", "env-bearer"]
    );

    assert_eq!(
        config.network.deny,
        vec![
            "169.254.0.0/16".parse::<IpNet>().unwrap(),
            "fd00:ec2::254/128".parse::<IpNet>().unwrap(),
        ]
    );
    assert!(config.network.allow.is_empty());
    assert_eq!(config.network.ip_version, IpVersion::Auto);
    assert_eq!(config.network.resolver, ResolverSetting::System);
    assert_eq!(config.remote_write.len(), 1);
    assert_eq!(
        config.remote_write[0].url.as_str(),
        "http://prometheus:9090/api/v1/write"
    );
    assert_eq!(config.metrics, MetricsSettings::default());
}

#[test]
fn full_config_site_values_override_defaults() {
    let config = parse(&full_config()).unwrap();
    let site = &config.sites[0];
    assert_eq!(site.id, "shop-home");
    assert_eq!(site.tenant.as_deref(), Some("acme"));
    assert_eq!(site.url.as_str(), "https://shop.example/");
    assert_eq!(site.regex.as_ref().unwrap().0.as_str(), "Add to cart");
    assert_eq!(
        site.regex_absent.as_ref().unwrap().0.as_str(),
        "maintenance"
    );
    assert_eq!(site.labels, vec![("team".to_string(), "web".to_string())]);
    assert_eq!(site.method, http::Method::POST);
    assert_eq!(site.body.as_deref(), Some(&b"{\"ping\":1}"[..]));
    assert_eq!(
        site.proxy.as_ref().map(Url::as_str),
        Some("http://proxy.internal:3128/")
    );
    assert!(!site.tls.insecure_skip_verify);
    assert_eq!(site.tls.server_name.as_deref(), Some("shop.example"));
    assert_eq!(site.interval, Duration::from_secs(90));
    assert_eq!(site.timeout, Duration::from_millis(500));
    assert_eq!(site.valid_status, vec![200..=299, 301..=302, 404..=404]);
    assert!(!site.follow_redirects);
    assert_eq!(site.max_redirects, 3);
    assert_eq!(site.max_body_bytes, 512 * 1024);
    assert_eq!(site.source, Path::new(FILE));
    match &site.auth {
        Some(Auth::Basic { username, password }) => {
            assert_eq!(username, "probe");
            // The trailing newline of the file is not part of the password.
            assert_eq!(password.expose(), "hunter2");
        }
        other => panic!("expected basic auth, got {other:?}"),
    }
}

#[test]
fn full_config_headers_merge_case_insensitively() {
    let config = parse(&full_config()).unwrap();
    let site = &config.sites[0];
    // The site's `accept` replaces the default `Accept`; the default User-Agent stays.
    assert_eq!(site.headers.len(), 3, "{:?}", site.headers);
    assert_eq!(site.headers.get_all("accept").iter().count(), 1);
    assert_eq!(site.headers["accept"], "text/html");
    assert_eq!(site.headers["x-probe"], "1");
    assert_eq!(site.headers["user-agent"], crate::USER_AGENT);

    let api = &config.sites[1];
    assert_eq!(api.headers["accept"], "*/*");
    assert_eq!(api.headers["user-agent"], crate::USER_AGENT);
}

#[test]
fn full_config_defaults_apply() {
    let config = parse(&full_config()).unwrap();
    let site = &config.sites[1];
    assert_eq!(site.key(), "shop-api");
    assert_eq!(site.tenant, None);
    assert_eq!(site.interval, Duration::from_secs(30));
    assert_eq!(site.timeout, Duration::from_secs(10));
    assert_eq!(site.method, http::Method::GET);
    assert_eq!(site.valid_status, vec![200..=299]);
    assert!(site.follow_redirects);
    assert_eq!(site.max_redirects, DEFAULT_MAX_REDIRECTS);
    assert_eq!(site.max_body_bytes, 2048);
    assert_eq!(config.sites[2].max_body_bytes, 1_048_576);
}

#[test]
fn full_config_secrets_are_read_and_hidden() {
    let config = parse(&full_config()).unwrap();
    let auth = |i: usize| config.sites[i].auth.clone();
    assert_eq!(auth(1), Some(Auth::Bearer(Secret("tok-123".into()))));
    assert_eq!(
        auth(2),
        Some(Auth::Basic {
            username: "probe".into(),
            password: Secret("env-pw".into()),
        })
    );
    assert_eq!(auth(3), Some(Auth::Bearer(Secret("env-token".into()))));

    let printed = format!("{config:?}");
    for secret in ["hunter2", "tok-123", "env-pw", "env-token"] {
        assert!(
            !printed.contains(secret),
            "{secret} leaked into Debug output"
        );
    }
    assert_eq!(format!("{:?}", Secret("hunter2".into())), "<secret>");
}

#[test]
fn status_forms_and_sizes() {
    let config = parse(&yaml(&[
        "sites:",
        "  - id: web",
        "    url: http://web.example/",
        "    valid_status: [2xx, 300-308, 404, '410']",
        "    max_body_bytes: 1MiB",
        "  - id: small",
        "    url: http://small.example/",
        "    max_body_bytes: 100",
    ]))
    .unwrap();
    assert_eq!(
        config.sites[0].valid_status,
        vec![200..=299, 300..=308, 404..=404, 410..=410]
    );
    assert_eq!(config.sites[0].max_body_bytes, 1_048_576);
    assert_eq!(config.sites[1].max_body_bytes, 100);
}

#[test]
fn site_key() {
    let config = parse(&yaml(&[
        "sites:",
        "  - id: web",
        "    tenant: acme",
        "    url: http://web.example/",
        "  - id: api",
        "    url: http://api.example/",
    ]))
    .unwrap();
    assert_eq!(config.sites[0].key(), "acme/web");
    assert_eq!(config.sites[1].key(), "api");
}

#[test]
fn proxy_must_be_plain_http_without_credentials() {
    for (proxy, msg) in [
        ("https://proxy.example:3128", "must be an http:// URL"),
        (
            "http://user:pw@proxy.example:3128",
            "proxy credentials are not supported",
        ),
        ("socks5://proxy.example:1080", "must use http or https"),
    ] {
        let e = one_error(&site_with(&format!("proxy: {proxy}")));
        check(&e, Some(4), Some("web"), Some("proxy"), msg);
        assert!(!e.to_string().contains("pw@"), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Remote-write destinations.

#[test]
fn remote_write_full_destination_parses() {
    let config = parse(&yaml(&[
        "remote_write:",
        "  - url: https://mimir.example/api/v1/push",
        "    name: mimir",
        "    external_labels: { cluster: eu1, env: prod }",
        "    headers: { X-Scope-OrgID: acme }",
        "    basic_auth: { username: writer, password_file: /secrets/pw }",
        "    tls: { insecure_skip_verify: true }",
        "    timeout: 10s",
        "    queue: { capacity: 5000, max_samples_per_send: 500, batch_send_deadline: 1s, min_backoff: 50ms, max_backoff: 10s }",
        "  - url: http://vm.example:8428/api/v1/write",
        "    bearer_token_env: API_TOKEN",
    ]))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let [mimir, vm] = &config.remote_write[..] else {
        panic!("two destinations: {config:#?}");
    };
    assert_eq!(mimir.name, "mimir");
    assert_eq!(
        mimir.external_labels,
        [
            ("cluster".to_string(), "eu1".to_string()),
            ("env".to_string(), "prod".to_string())
        ]
    );
    assert_eq!(mimir.headers["x-scope-orgid"], "acme");
    assert!(
        matches!(&mimir.auth, Some(Auth::Basic { username, password }) if username == "writer" && password.expose() == "hunter2")
    );
    assert!(mimir.tls.settings.insecure_skip_verify);
    assert_eq!(mimir.timeout, Duration::from_secs(10));
    assert_eq!(
        mimir.queue,
        QueueSettings {
            capacity: 5000,
            max_samples_per_send: 500,
            batch_send_deadline: Duration::from_secs(1),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(10),
        }
    );
    // Unnamed: the URL names it. Defaults everywhere else.
    assert_eq!(vm.name, "http://vm.example:8428/api/v1/write");
    assert!(matches!(&vm.auth, Some(Auth::Bearer(t)) if t.expose() == "env-token"));
    assert_eq!(vm.timeout, Duration::from_secs(30));
    assert_eq!(vm.queue, QueueSettings::default());
    // The secret never shows in a debug print of the config.
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn remote_write_errors_name_the_item_and_field() {
    let errors = errors(&yaml(&[
        "remote_write:",
        "  - url: http://ok.example/w",
        "    name: a",
        "  - url: ftp://bad.example/w",
        "    external_labels: { bad-name: x }",
        "  - url: http://user:pw@c.example/w",
        "    headers: { Content-Encoding: gzip }",
        "    queue: { capacity: 10, max_samples_per_send: 100, min_backoff: 5s, max_backoff: 1s }",
        "  - url: http://d.example/w",
        "    name: a",
        "    timeout: soon",
        "    bearer_token_file: /secrets/missing",
    ]));
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e.field.as_deref() == Some(field))
            .unwrap_or_else(|| panic!("no error for {field}: {errors:#?}"))
    };
    check(
        find("remote_write[1].url"),
        Some(4),
        None,
        Some("remote_write[1].url"),
        "must use http or https",
    );
    check(
        find("remote_write[1].external_labels"),
        Some(5),
        None,
        Some("remote_write[1].external_labels"),
        "\"bad-name\" is not a valid label name",
    );
    check(
        find("remote_write[2].url"),
        Some(6),
        None,
        Some("remote_write[2].url"),
        "credentials in the URL",
    );
    check(
        find("remote_write[2].headers"),
        Some(7),
        None,
        Some("remote_write[2].headers"),
        "set by sitewatch itself",
    );
    check(
        find("remote_write[2].queue.capacity"),
        Some(8),
        None,
        Some("remote_write[2].queue.capacity"),
        "smaller than max_samples_per_send",
    );
    check(
        find("remote_write[2].queue.min_backoff"),
        Some(8),
        None,
        Some("remote_write[2].queue.min_backoff"),
        "longer than queue.max_backoff",
    );
    check(
        find("remote_write[3].name"),
        Some(10),
        None,
        Some("remote_write[3].name"),
        "two destinations are named \"a\"",
    );
    check(
        find("remote_write[3].timeout"),
        Some(11),
        None,
        Some("remote_write[3].timeout"),
        "invalid duration",
    );
    check(
        find("remote_write[3].bearer_token_file"),
        Some(12),
        None,
        Some("remote_write[3].bearer_token_file"),
        "cannot read secret file /secrets/missing",
    );
    assert_eq!(errors.len(), 9, "{errors:#?}");
}

#[test]
fn remote_write_unknown_field_is_an_error() {
    let e = one_error(&yaml(&[
        "remote_write:",
        "  - url: http://ok.example/w",
        "    queue: { max_shards: 4 }",
    ]));
    assert!(e.message.contains("max_shards"), "{e:#?}");
    assert_eq!(e.line, Some(3), "{e:#?}");
}

#[test]
fn passwords_in_urls_never_reach_error_messages() {
    assert_eq!(
        redacted("https://u:pw@h.example/x"),
        "https://u:***@h.example/x"
    );
    assert_eq!(redacted("https://tok@h.example"), "https://***@h.example");
    assert_eq!(redacted("https://h.example/a@b"), "https://h.example/a@b");
    assert_eq!(redacted("not a url"), "not a url");
    let errors = errors(&yaml(&[
        "sites:",
        "  - id: a",
        "    url: ftp://user:S3CRET-1@h.example/",
        "  - id: b",
        "    url: http://user:S3CRET-2@h.example/",
        "  - id: c",
        "    url: http://h.example/",
        "    proxy: https://user:S3CRET-3@proxy.example:3128",
        "remote_write:",
        "  - url: http://user:S3CRET-4@rw.example/api/v1/write",
        "  - url: 'http://user:S3CRET-5@[bad'",
    ]));
    assert!(errors.len() >= 5, "{errors:#?}");
    for e in &errors {
        assert!(!e.to_string().contains("S3CRET"), "{e}");
    }
}

#[test]
fn a_regex_bomb_is_refused_with_the_site_and_field() {
    let e = one_error(&site_with("regex: '(a{1000}){1000}'"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("regex"),
        "exceeds size limit",
    );
    // An ordinary pattern compiles.
    parse(&site_with("regex: '(?i)add to cart|checkout'")).unwrap();
}

#[test]
fn deep_flow_nesting_is_a_fast_error_with_its_line() {
    let text = format!("sites: []\nx: {}\n", "{a: ".repeat(200_000));
    let start = std::time::Instant::now();
    let e = one_error(&text);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    check(&e, Some(2), None, None, "nest deeper than 100 levels");
    // Brackets in quotes and comments do not count; ordinary flow collections pass.
    let ok = format!(
        "# {}\nsites:\n  - id: a\n    url: http://h.example/\n    labels: {{ b: '{}', a: \"{}\" }}\n",
        "[".repeat(500),
        "[".repeat(500),
        "{".repeat(500)
    );
    parse(&ok).unwrap_or_else(|e| panic!("{e:#?}"));
}

#[test]
fn urls_and_site_lists_are_bounded() {
    let long = format!("url: http://h.example/{}", "a".repeat(MAX_URL_BYTES));
    let e = one_error(&yaml(&["sites:", "  - id: web", &format!("    {long}")]));
    check(&e, Some(3), Some("web"), Some("url"), "at most 8192");
    let many: String = (0..=MAX_SITES_PER_FILE)
        .map(|i| format!("  - {{ id: s{i}, url: 'http://h.example/' }}\n"))
        .collect();
    let e = one_error(&format!("defaults: {{ interval: 1m }}\nsites:\n{many}"));
    check(
        &e,
        Some(2),
        None,
        Some("sites"),
        "200001 sites in one file; at most 200000",
    );
}

#[test]
fn site_network_exceptions_parse_and_name_bad_ranges() {
    let config = parse(&site_with(
        "network: { allow: [10.1.2.3, 10.2.0.0/16], deny: ['192.0.2.0/24'] }",
    ))
    .unwrap();
    let n = only_site(&config).network.clone().unwrap();
    assert_eq!(
        n.allow,
        vec![
            "10.1.2.3/32".parse::<IpNet>().unwrap(),
            "10.2.0.0/16".parse().unwrap()
        ]
    );
    assert_eq!(n.deny, vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]);
    let e = one_error(&site_with("network: { allow: [not-a-range] }"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("network.allow"),
        "not a CIDR range",
    );
}

// ---------------------------------------------------------------------------
// Checks.

#[test]
fn every_check_parses_and_defaults_apply_per_field() {
    let c = parse(&yaml(&[
        "defaults:",
        "  failure_threshold: 3",
        "  compression: gzip",
        "  json_conditions: ['$.status == UP']",
        "sites:",
        "  - id: web",
        "    url: https://web.example/",
        "    fail_if_header_matches: [{ header: Server, regex: 'nginx/1\\.0', allow_missing: true }]",
        "    fail_if_header_not_matches: [{ header: content-type, regex: json }]",
        "    json_conditions: ['$.ok == true', 'len($.items) > 0']",
        "    max_duration: 2s",
        "    fail_if_cert_expires_within: 14d",
        "    fail_if_not_ssl: true",
        "    valid_http_versions: [HTTP/1.1, HTTP/2.0]",
        "    addresses: happy_eyeballs",
        "    ip_version: prefer_ipv6",
        "    success_threshold: 2",
        "    histogram_buckets: [0.01, 0.1]",
    ]))
    .unwrap();
    let s = only_site(&c);
    let k = &s.checks;
    assert_eq!(k.fail_if_header_matches.len(), 1);
    assert!(k.fail_if_header_matches[0].allow_missing);
    assert_eq!(k.fail_if_header_not_matches[0].header, "content-type");
    assert!(!k.fail_if_header_not_matches[0].allow_missing);
    // The site's list replaces the default's.
    let json: Vec<&str> = k.json.iter().map(|j| j.as_str()).collect();
    assert_eq!(json, ["$.ok == true", "len($.items) > 0"]);
    assert_eq!(k.max_duration, Some(Duration::from_secs(2)));
    assert_eq!(
        k.cert_expires_within,
        Some(Duration::from_secs(14 * 86_400))
    );
    assert!(k.fail_if_not_ssl && !k.fail_if_ssl);
    assert_eq!(
        k.http_versions,
        [http::Version::HTTP_11, http::Version::HTTP_2]
    );
    assert_eq!(k.compression, Some(crate::checks::Compression::Gzip));
    // Compression asks for its encoding.
    assert_eq!(s.headers["accept-encoding"], "gzip");
    assert_eq!(s.addresses, AddressMode::HappyEyeballs);
    assert_eq!(s.ip_version, Some(IpVersion::PreferIpv6));
    assert_eq!((s.failure_threshold, s.success_threshold), (3, 2));
    assert_eq!(s.histogram_buckets.as_deref(), Some(&[0.01, 0.1][..]));
}

#[test]
fn without_checks_a_site_has_none() {
    let s = parse(&site_with("regex: ok")).unwrap().sites[0].clone();
    assert_eq!(s.checks, Checks::default());
    assert_eq!(s.addresses, AddressMode::First);
    assert_eq!((s.failure_threshold, s.success_threshold), (1, 1));
    assert_eq!(s.histogram_buckets, None);
    assert!(!s.headers.contains_key("accept-encoding"));
}

#[test]
fn bad_checks_name_their_field_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("json_conditions: ['$.a ==']", "json_conditions[0]", ""),
        (
            "json_conditions: ['status == UP']",
            "json_conditions[0]",
            "",
        ),
        (
            "fail_if_header_matches: [{ header: 'bad header', regex: x }]",
            "fail_if_header_matches[0].header",
            "not a valid header name",
        ),
        (
            "fail_if_header_not_matches: [{ header: Server, regex: '(' }]",
            "fail_if_header_not_matches[0].regex",
            "invalid regex",
        ),
        ("max_duration: soon", "max_duration", "invalid duration"),
        ("max_duration: 0s", "max_duration", "greater than zero"),
        (
            "max_duration: 1m",
            "max_duration",
            "longer than timeout 10s",
        ),
        (
            "fail_if_cert_expires_within: forever",
            "fail_if_cert_expires_within",
            "invalid duration",
        ),
        (
            "valid_http_versions: [HTTP/3]",
            "valid_http_versions",
            "HTTP/1.0, HTTP/1.1, HTTP/2",
        ),
        (
            "valid_http_versions: []",
            "valid_http_versions",
            "at least one",
        ),
        ("failure_threshold: 0", "failure_threshold", "out of range"),
        (
            "success_threshold: 5000",
            "success_threshold",
            "out of range",
        ),
        (
            "histogram_buckets: [1, 0.5]",
            "histogram_buckets",
            "increasing positive numbers",
        ),
        (
            "proxy: http://proxy.example:3128/\n    addresses: all",
            "addresses",
            "only `first` works with a proxy",
        ),
    ];
    for (extra, field, message) in cases {
        let e = one_error(&site_with(extra));
        assert_eq!(e.site.as_deref(), Some("web"), "{extra}: {e:#?}");
        assert_eq!(e.field.as_deref(), Some(*field), "{extra}: {e:#?}");
        assert!(e.line.is_some(), "{extra}: {e:#?}");
        assert!(e.message.contains(message), "{extra}: {}", e.message);
    }
    let e = one_error(&site_with("fail_if_ssl: true\n    fail_if_not_ssl: true"));
    check(
        &e,
        Some(5),
        Some("web"),
        Some("fail_if_not_ssl"),
        "not both",
    );
    let e = one_error(&site_with("addresses: every"));
    check(
        &e,
        Some(4),
        Some("web"),
        Some("addresses"),
        "unknown variant `every`",
    );
}

#[test]
fn bad_checks_in_defaults_are_reported_once_against_defaults() {
    let e = one_error(&yaml(&[
        "defaults:",
        "  json_conditions: ['$.ok = true']",
        "sites:",
        "  - id: a",
        "    url: http://a.example/",
        "  - id: b",
        "    url: http://b.example/",
    ]));
    check(&e, Some(2), None, Some("defaults.json_conditions[0]"), "");
}

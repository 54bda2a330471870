//! The configuration's JSON Schema: the shipped file equals what the types generate, the
//! example configs validate against it, and it refuses what the loader refuses.
//!
//! `SITEWATCH_BLESS=1 cargo test --test schema` rewrites `config/sitewatch.schema.json`.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema_path() -> PathBuf {
    root().join("config/sitewatch.schema.json")
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the shipped schema is a valid JSON Schema")
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    serde_norway::from_str(text).expect("YAML")
}

fn schema_errors(yaml: &str) -> Vec<String> {
    validator()
        .iter_errors(&yaml_to_json(yaml))
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn the_shipped_schema_is_what_the_config_types_generate() {
    let generated = serde_json::to_string_pretty(&sitewatch::config::json_schema()).unwrap() + "\n";
    if std::env::var_os("SITEWATCH_BLESS").is_some() {
        std::fs::write(schema_path(), &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(schema_path()).unwrap_or_default();
    assert!(
        shipped == generated,
        "config/sitewatch.schema.json is out of date: run `SITEWATCH_BLESS=1 cargo test --test schema`"
    );
}

#[test]
fn example_configs_validate_and_name_the_schema() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=./sitewatch.schema.json\n"),
            "{} does not name the schema for editors",
            path.display()
        );
        let errors = schema_errors(&text);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn every_check_of_the_readme_reference_validates() {
    // Each fenced YAML block of the README that is a whole config file.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut blocks = 0;
    for block in readme.split("```yaml\n").skip(1) {
        let block = &block[..block.find("```").unwrap()];
        if !block.contains("sites:") {
            continue;
        }
        let errors = schema_errors(block);
        assert!(errors.is_empty(), "README block:\n{block}\n{errors:#?}");
        // Blocks that name no file on this machine must load, values and all.
        if !block.contains("_file") {
            let loaded = sitewatch::config::parse_sources(
                &[(Path::new("README.md").to_path_buf(), block.to_string())],
                &sitewatch::config::SystemSecrets,
            );
            assert!(loaded.is_ok(), "README block:\n{block}\n{loaded:#?}");
        }
        blocks += 1;
    }
    assert!(blocks >= 2, "README has {blocks} config blocks");
}

#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let site = |extra: &str| format!("sites:\n  - id: x\n    url: http://127.0.0.1:1/\n{extra}");
    for (yaml, why) in [
        (site("    colour: blue\n"), "unknown field"),
        (site("    addresses: every\n"), "unknown addresses mode"),
        (site("    ip_version: ipv5\n"), "unknown ip_version"),
        (site("    compression: zstd\n"), "unknown compression"),
        (site("    valid_status: [abc]\n"), "bad status"),
        (
            site("    fail_if_header_matches: [{ header: Server }]\n"),
            "header check without regex",
        ),
        (site("    failure_threshold: -1\n"), "negative threshold"),
        (
            site("    json_conditions: '$.ok == true'\n"),
            "a string instead of a list",
        ),
        (
            "sites:\n  - url: http://127.0.0.1:1/\n".to_string(),
            "missing id",
        ),
        (
            "defaults: { fail_if_ssl: yes please }\n".to_string(),
            "not a bool",
        ),
        ("metrics: { tls_details: 1 }\n".to_string(), "not a bool"),
    ] {
        assert!(
            !schema_errors(&yaml).is_empty(),
            "schema accepted {why}:\n{yaml}"
        );
        let loaded = sitewatch::config::parse_sources(
            &[(Path::new("t.yaml").to_path_buf(), yaml.clone())],
            &sitewatch::config::SystemSecrets,
        );
        assert!(loaded.is_err(), "loader accepted {why}:\n{yaml}");
    }
}

#[tokio::test]
async fn the_demo_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let demo = sitewatch::demo::start(dir.path()).await.unwrap();
    let text = std::fs::read_to_string(&demo.config).unwrap();
    let errors = schema_errors(&text);
    assert!(errors.is_empty(), "{text}\n{errors:#?}");
}

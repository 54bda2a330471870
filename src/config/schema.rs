//! The configuration's JSON Schema, generated from the types the YAML is read into.
//!
//! Editors validate and complete config files with it (`config/sitewatch.schema.json`, named
//! by a `yaml-language-server` comment); a test keeps the shipped file equal to this output.
//! The schema checks shape only: values such as durations, CIDRs and regexes are checked by
//! the loader, which also says where they are wrong.

use schemars::{json_schema, Schema, SchemaGenerator};

use super::RawFile;

/// The JSON Schema (draft 2020-12) of a sitewatch configuration file.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(RawFile);
    schema.insert(
        "$id".into(),
        "https://github.com/sitewatch/sitewatch/config/sitewatch.schema.json".into(),
    );
    schema.to_value()
}

/// `valid_status`: codes, ranges and classes.
pub(super) fn valid_status(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Accepted final status codes: codes (200), ranges (\"200-299\") or classes (\"2xx\").",
        "type": ["array", "null"],
        "minItems": 1,
        "items": {
            "anyOf": [
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "type": "string", "pattern": "^\\s*([1-5][0-9]{2}(\\s*-\\s*[1-5][0-9]{2})?|[1-5][xX]{2})\\s*$" }
            ]
        }
    })
}

/// A size: bytes, or a number with a unit.
pub(super) fn size(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A size: bytes (1048576) or with a unit (\"512KiB\", \"1MiB\").",
        "anyOf": [
            { "type": "integer", "minimum": 0 },
            { "type": "string" },
            { "type": "null" }
        ]
    })
}

/// `network.resolver`.
pub(super) fn resolver(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "`system`, or name servers as IP or IP:port.",
        "anyOf": [
            { "const": "system" },
            { "type": "array", "items": { "type": "string" } },
            { "type": "null" }
        ]
    })
}

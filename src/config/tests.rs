//! Unit tests of configuration validation.

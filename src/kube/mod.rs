//! Kubernetes API types and value parsers that tinylet reads and writes.

pub mod quantity;
pub mod types;
pub mod yaml;

//! Kubernetes API types and value parsers that tinylet reads and writes.

pub mod client;
pub mod der;
pub mod kubeconfig;
pub mod list_watch;
pub mod patch;
pub mod pki;
pub mod quantity;
pub mod types;
pub mod x509;
pub mod yaml;

//! The node's local endpoints. For now the kubelet's plain-HTTP health check on
//! `--healthz-bind-address:--healthz-port` (127.0.0.1:10248): what init scripts, systemd
//! watchdogs and supervisors poll.

pub mod healthz;
pub mod http;

//! Daemon configuration: the kubelet's flag names, one `Config` value.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Config {
    pub root_dir: PathBuf,
    pub pod_manifest_path: PathBuf,
    pub node_name: String,
    /// The runc binary (`--runtime`).
    pub runtime: PathBuf,
    /// runc's state directory (`--runtime-root`), on tmpfs so a reboot empties it.
    pub runtime_root: PathBuf,
    pub pod_log_dir: PathBuf,
    /// `--cgroup-root`: pods go under `<cgroup-root>/kubepods`.
    pub cgroup_root: String,
    /// `--node-ip`: the address reported as hostIP (detected when absent).
    pub node_ip: Option<String>,
    /// Scales the crash-loop back-off (10 s .. 5 min); for tests.
    pub backoff_scale: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root_dir: "/var/lib/tinylet".into(),
            pod_manifest_path: "/etc/tinylet/manifests".into(),
            node_name: default_node_name(),
            runtime: "runc".into(),
            runtime_root: "/run/tinylet/runc".into(),
            pod_log_dir: "/var/log/pods".into(),
            cgroup_root: "/".into(),
            node_ip: None,
            backoff_scale: 1.0,
        }
    }
}

/// The hostname, lowercased, as the kubelet defaults --hostname-override.
pub fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .trim()
        .to_lowercase()
}

/// Finds runc: a path as given, or the first match on $PATH.
pub fn resolve_binary(name: &std::path::Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The node's primary IPv4 address: the one on the interface of the default route.
pub fn detect_node_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut fallback = None;
    for a in addrs {
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        if ip.is_loopback() {
            continue;
        }
        if Some(&a.interface_name) == iface.as_ref() {
            return Some(ip.to_string());
        }
        fallback.get_or_insert(ip.to_string());
    }
    fallback
}

//! Pod networking: CNI invocation for pods without hostNetwork (cni.rs, with the configuration
//! in conf.rs, plugin execution in exec.rs, results in result.rs), the zero-configuration
//! bridge network (default_conf.rs), and the pods' resolv.conf (dns.rs).
//!
//! Nothing here knows pod lifecycles: the pod worker calls `attach` once the sandbox's network
//! namespace exists and `detach` when the pod goes.

pub mod cni;
pub mod conf;
pub mod default_conf;
pub mod dns;
mod exec;
pub mod result;

pub use cni::{PodRef, PortMapping};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The node's network settings (kubelet flag names).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--cni-conf-dir`.
    pub conf_dir: PathBuf,
    /// `--cni-bin-dir` (a comma-separated list).
    pub bin_dirs: Vec<PathBuf>,
    /// `--pod-cidr` (comma-separated for dual stack); else the Node's spec.podCIDRs.
    pub pod_cidrs: Vec<String>,
    /// Where the zero-config network's host-local keeps its leases (`<root-dir>/cni/networks`).
    pub ipam_dir: PathBuf,
    /// `--cluster-dns`.
    pub cluster_dns: Vec<String>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// `--resolv-conf`; None when set to "".
    pub resolv_conf: Option<PathBuf>,
}

/// The pod network of this node; shared by every pod worker.
pub struct Network {
    pub settings: Settings,
    /// spec.podCIDRs of this node's Node object, in cluster mode.
    node_pod_cidrs: Mutex<Vec<String>>,
    said_none: AtomicBool,
    /// Pod workers attach in parallel; the zero-config file is written by one at a time.
    writing: Mutex<()>,
    /// Cluster mode: reads the Node's podCIDRs from the API server.
    node_lookup: std::sync::OnceLock<NodeLookup>,
    /// When `node_lookup` last ran (at most once per `LOOKUP_INTERVAL`).
    looked_up: Mutex<Option<std::time::Instant>>,
}

type NodeLookup = Box<dyn Fn() -> Vec<String> + Send + Sync>;

const LOOKUP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Network {
    pub fn new(settings: Settings) -> Network {
        Network {
            settings,
            node_pod_cidrs: Mutex::new(Vec::new()),
            said_none: AtomicBool::new(false),
            writing: Mutex::new(()),
            node_lookup: std::sync::OnceLock::new(),
            looked_up: Mutex::new(None),
        }
    }

    /// What a pod's resolv.conf is made from; the node's file is read each time, as the kubelet
    /// does, so a changed uplink's nameservers reach new pods.
    pub fn node_dns(&self) -> dns::NodeDns {
        let s = &self.settings;
        dns::NodeDns {
            cluster_dns: s.cluster_dns.clone(),
            cluster_domain: s.cluster_domain.clone(),
            host_resolv: s.resolv_conf.as_ref().map(|f| {
                std::fs::read_to_string(f).unwrap_or_else(|e| {
                    log::warn!(
                        "--resolv-conf {}: {}; pods get no node nameservers",
                        f.display(),
                        e
                    );
                    String::new()
                })
            }),
        }
    }

    /// Records the Node's pod CIDRs (from the API server's Node object).
    pub fn set_node_pod_cidrs(&self, cidrs: Vec<String>) {
        if let Ok(mut c) = self.node_pod_cidrs.lock() {
            if *c != cidrs && !cidrs.is_empty() {
                log::info!("node pod CIDR(s) from the API server: {}", cidrs.join(","));
            }
            *c = cidrs;
        }
    }

    /// How to read the Node's podCIDRs (cluster mode).
    pub fn set_node_lookup(&self, f: NodeLookup) {
        let _ = self.node_lookup.set(f);
    }

    fn pod_cidrs(&self) -> Vec<String> {
        if !self.settings.pod_cidrs.is_empty() {
            return self.settings.pod_cidrs.clone();
        }
        self.node_pod_cidrs
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// The configuration new pods are attached with, read at each use (a configuration that
    /// appears or changes applies to the next pod). `Ok(None)`: no pod network on this node.
    pub fn config(&self) -> Result<Option<conf::ConfList>, String> {
        let dir = &self.settings.conf_dir;
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let first = conf::candidates(dir).into_iter().next();
        let mut cidrs = self.pod_cidrs();
        if cidrs.is_empty() && first.is_none() {
            // Nothing gives this node a pod network yet: perhaps the Node has a podCIDR by now.
            if let Some(lookup) = self.node_lookup.get() {
                let mut last = self.looked_up.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= LOOKUP_INTERVAL) {
                    *last = Some(std::time::Instant::now());
                    self.set_node_pod_cidrs(lookup());
                    cidrs = self.pod_cidrs();
                }
            }
        }
        let ours = first
            .as_ref()
            .is_some_and(|f| f.file_name() == Some(default_conf::FILE_NAME.as_ref()));
        if !cidrs.is_empty()
            && (first.is_none() || ours)
            && default_conf::ensure(dir, &cidrs, &self.settings.ipam_dir)?
        {
            log::info!(
                "no CNI configuration in {}: wrote {} (bridge {}, pod CIDR {})",
                dir.display(),
                default_conf::FILE_NAME,
                default_conf::BRIDGE,
                cidrs.join(",")
            );
        }
        let c = conf::load_dir(dir)?;
        if c.is_none() && !self.said_none.swap(true, Ordering::Relaxed) {
            log::info!(
                "no CNI configuration in {} and no pod CIDR (--pod-cidr or the Node's spec.podCIDR): pods without hostNetwork get a network namespace with loopback only and no pod IP",
                dir.display()
            );
        }
        Ok(c)
    }

    /// Gives the pod its network (CNI ADD) in `netns`. A record of an earlier ADD (a previous
    /// sandbox, or an attempt that failed half-way) is deleted first: `stale_netns` is the
    /// namespace that one was made in if it still exists. Returns the pod's IPs; `Ok(None)`
    /// when the node has no pod network.
    pub fn attach(
        &self,
        pod_dir: &Path,
        pod: &PodRef,
        netns: &Path,
        stale_netns: Option<&Path>,
        ports: Vec<PortMapping>,
    ) -> Result<Option<Vec<String>>, String> {
        let bins = &self.settings.bin_dirs;
        if cni::del(pod_dir, stale_netns, bins)? {
            log::info!(
                "pod {}/{}: released the network of its previous sandbox",
                pod.namespace,
                pod.name
            );
        }
        let Some(conf) = self.config()? else {
            return Ok(None);
        };
        match cni::add(pod_dir, &conf, pod, netns, ports, bins) {
            Ok(rec) => Ok(Some(rec.ips)),
            Err(e) => {
                // As containerd: a failed set-up is torn down so that nothing leaks (addresses).
                if let Err(d) = cni::del(pod_dir, Some(netns), bins) {
                    log::warn!(
                        "pod {}/{}: cleaning up after the failed network set-up: {}",
                        pod.namespace,
                        pod.name,
                        d
                    );
                }
                Err(e)
            }
        }
    }

    /// CNI DEL of what the pod's record says (nothing without one). `netns`: the namespace if it
    /// still exists (none after a reboot).
    pub fn detach(&self, pod_dir: &Path, netns: Option<&Path>) -> Result<bool, String> {
        cni::del(pod_dir, netns, &self.settings.bin_dirs)
    }

    /// CNI CHECK of an adopted pod's network.
    pub fn check(&self, pod_dir: &Path, netns: &Path) -> Result<bool, String> {
        cni::check(pod_dir, netns, &self.settings.bin_dirs)
    }
}

/// The IPs the pod's last successful ADD gave it (empty without one).
pub fn recorded_ips(pod_dir: &Path) -> Vec<String> {
    match cni::load_record(pod_dir) {
        Ok(Some(r)) if r.result.is_some() => r.ips,
        Ok(_) => Vec::new(),
        Err(e) => {
            log::warn!("{}", e);
            Vec::new()
        }
    }
}

/// Whether the pod has a completed ADD on record.
pub fn attached(pod_dir: &Path) -> bool {
    matches!(cni::load_record(pod_dir), Ok(Some(r)) if r.result.is_some())
}

/// The hostPort mappings of a pod's containers (spec.containers[].ports with a hostPort), as
/// portmap's `portMappings` capability takes them.
pub fn port_mappings(pod_spec: &serde_json::Value) -> Vec<PortMapping> {
    let mut out = Vec::new();
    for c in pod_spec["containers"].as_array().into_iter().flatten() {
        for p in c["ports"].as_array().into_iter().flatten() {
            let num = |k: &str| {
                p[k].as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
            };
            let (Some(host_port), Some(container_port)) = (num("hostPort"), num("containerPort"))
            else {
                continue;
            };
            out.push(PortMapping {
                host_port,
                container_port,
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                host_ip: p["hostIP"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_ports_become_port_mappings() {
        let spec = json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
            {"name": "b", "ports": [{"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"},
                                    {"containerPort": 70000, "hostPort": 1}]}]});
        let m = port_mappings(&spec);
        assert_eq!(m.len(), 2);
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
    }
}

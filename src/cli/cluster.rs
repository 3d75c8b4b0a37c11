//! The cluster-mode flags of `tinylet run`: `--kubeconfig` (absent: standalone), the Node's
//! labels, taints and capacity, and the status and lease periods.

use super::args::Args;
use crate::config::{parse_duration, Config};
use crate::kube::client::ApiClient;
use crate::kubelet::cluster::{bootstrap, Settings};
use crate::kubelet::ClusterMode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub fn mode(
    a: &Args,
    config: &Config,
    runc_version: &str,
    network: std::sync::Arc<crate::network::Network>,
) -> Result<Option<ClusterMode>, String> {
    let Some(kubeconfig) = a.get("kubeconfig") else {
        if a.get("bootstrap-kubeconfig").is_some() {
            return Err(
                "--bootstrap-kubeconfig needs --kubeconfig (the file the bootstrap writes)".into(),
            );
        }
        return Ok(None);
    };
    let kubeconfig = std::path::Path::new(kubeconfig);
    if let Some(b) = a.get("bootstrap-kubeconfig") {
        if !bootstrap::usable(kubeconfig) {
            bootstrap::bootstrap(
                std::path::Path::new(b),
                kubeconfig,
                &config.root_dir,
                &config.node_name,
            )?;
        }
    }
    let conn = crate::kube::kubeconfig::load(kubeconfig)?;
    let rotate = bootstrap::rotatable(&conn, &config.root_dir);
    let client = Arc::new(ApiClient::new(conn)?);
    log::info!("cluster mode: API server {}", client.server());
    if rotate {
        bootstrap::start_rotation(
            client.clone(),
            config.root_dir.clone(),
            config.node_name.clone(),
        )?;
    }
    let settings = Settings {
        pressure: Default::default(),
        node_name: config.node_name.clone(),
        node_ip: config.node_ip.clone(),
        root_dir: config.root_dir.clone(),
        node_labels: node_labels(a.get("node-labels").unwrap_or(""))?,
        taints: taints(a.get("register-with-taints").unwrap_or(""))?,
        max_pods: number(a, "max-pods", 110)?,
        kubelet_port: number(a, "port", 10250)?,
        status_update: duration(a, "node-status-update-frequency", Duration::from_secs(10))?,
        status_report: duration(a, "node-status-report-frequency", Duration::from_secs(300))?,
        lease_duration_secs: number(a, "node-lease-duration-seconds", 40)?,
        runc_version: runc_version.to_string(),
        network,
        offline_max_age: match a.get("offline-max-age") {
            None | Some("0") | Some("0s") => None,
            Some(v) => Some(parse_duration(v).map_err(|e| format!("--offline-max-age: {}", e))?),
        },
        allowed_unsafe_sysctls: super::unsafe_sysctls(a)?,
    };
    if settings.lease_duration_secs == 0 {
        return Err("--node-lease-duration-seconds must be positive".into());
    }
    Ok(Some(ClusterMode { client, settings }))
}

fn number<T: std::str::FromStr>(a: &Args, flag: &str, default: T) -> Result<T, String> {
    match a.get(flag) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("--{} {:?}: not a valid number", flag, v)),
    }
}

fn duration(a: &Args, flag: &str, default: Duration) -> Result<Duration, String> {
    match a.get(flag) {
        None => Ok(default),
        Some(v) => parse_duration(v)
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be positive".into())
                } else {
                    Ok(d)
                }
            })
            .map_err(|e| format!("--{}: {}", flag, e)),
    }
}

/// `--node-labels k=v,k2=v2`.
fn node_labels(spec: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("--node-labels: {:?} is not key=value", item))?;
        if k.is_empty() {
            return Err(format!("--node-labels: {:?} has an empty key", item));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `--register-with-taints key=value:Effect,key:Effect`.
fn taints(spec: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kv, effect) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("--register-with-taints: {:?} has no :Effect", item))?;
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            return Err(format!(
                "--register-with-taints: {:?}: effect {:?} is not NoSchedule, PreferNoSchedule or NoExecute",
                item, effect
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        if key.is_empty() {
            return Err(format!(
                "--register-with-taints: {:?} has an empty key",
                item
            ));
        }
        let mut t = json!({"key": key, "effect": effect});
        if let Some(v) = value {
            t["value"] = json!(v);
        }
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_taints() {
        let l = node_labels("a=1, b.io/c=x,").unwrap();
        assert_eq!(l["a"], "1");
        assert_eq!(l["b.io/c"], "x");
        assert!(node_labels("nokey").is_err());
        let t = taints("edge=true:NoSchedule,dedicated:NoExecute").unwrap();
        assert_eq!(
            t[0],
            json!({"key": "edge", "value": "true", "effect": "NoSchedule"})
        );
        assert_eq!(t[1], json!({"key": "dedicated", "effect": "NoExecute"}));
        assert!(taints("x=y:Sometimes").unwrap_err().contains("effect"));
        assert!(taints("x=y").is_err());
    }
}

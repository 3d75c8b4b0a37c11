//! What runs on this node, as the records on disk say: each pod (pod.json), its running
//! containers (container records, the monitors' started.json) and each container's cgroup (the
//! `cgroupsPath` its bundle's config.json was given). Read the same way by the daemon and by
//! `tinylet stats` in another process.

use crate::kube::types::PodSpec;
use crate::kubelet::{status, store};
use crate::runtime::shim;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub start_time: Option<String>,
    pub dir: PathBuf,
    pub object: std::sync::Arc<serde_json::Value>,
    /// The pod's cgroup, when known (from a container's, or from --cgroup-root).
    pub cgroup: Option<String>,
    pub containers: Vec<ContainerInfo>,
    pub is_static: bool,
}

#[derive(Clone)]
pub struct ContainerInfo {
    pub name: String,
    pub id: String,
    pub cgroup: String,
    pub pid: i32,
    pub started_at: String,
}

/// A running container's facts that never change for its id: kept between scrapes so a
/// scrape does not parse config.json again.
#[derive(Clone)]
struct Fixed {
    cgroup: String,
    pid: i32,
    started_at: String,
}

#[derive(Default)]
pub struct Cache(Mutex<HashMap<String, Fixed>>);

impl Cache {
    /// The pods on disk with their running containers. Pods with nothing running are listed
    /// too (with no containers): callers decide whether to show them.
    pub fn pods(&self, root: &Path, cgroup_root: Option<&str>) -> Vec<PodInfo> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for sp in store::list_pods(root) {
            let obj = &sp.record.object;
            // The published status has the class; a pod without one yet is classed from its spec.
            let qos = match sp.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
                Some("Guaranteed") => "Guaranteed",
                Some("Burstable") => "Burstable",
                Some(_) => "BestEffort",
                None => serde_json::from_value::<PodSpec>(obj["spec"].clone())
                    .ok()
                    .as_ref()
                    .map(status::qos_class)
                    .unwrap_or("BestEffort"),
            };
            let names: Vec<String> = ["initContainers", "containers"]
                .iter()
                .flat_map(|k| obj["spec"][*k].as_array().into_iter().flatten())
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            let mut containers = Vec::new();
            for name in names {
                let Some(id) = store::load_container(&sp.dir, &name).and_then(|r| r.current) else {
                    continue;
                };
                let id = id.id;
                if let Some(f) = self.fixed(root, &id) {
                    seen.push(id.clone());
                    containers.push(ContainerInfo {
                        name,
                        id,
                        cgroup: f.cgroup,
                        pid: f.pid,
                        started_at: f.started_at,
                    });
                }
            }
            let cgroup = containers
                .first()
                .and_then(|c| c.cgroup.rsplit_once('/').map(|(p, _)| p.to_string()))
                .or_else(|| {
                    cgroup_root.map(|r| crate::runtime::cgroups::pod_cgroup_path(r, qos, &sp.uid))
                });
            out.push(PodInfo {
                name: obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
                namespace: obj["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                uid: sp.uid,
                start_time: sp.record.start_time.clone(),
                is_static: sp.record.source.as_os_str() != crate::kubelet::cluster::API_SOURCE,
                object: sp.record.object.clone(),
                dir: sp.dir,
                cgroup,
                containers,
            });
        }
        if let Ok(mut m) = self.0.lock() {
            m.retain(|id, _| seen.contains(id));
        }
        out
    }

    /// A container that runs now (its monitor recorded the start and no exit).
    fn fixed(&self, root: &Path, id: &str) -> Option<Fixed> {
        let bundle = root.join("containers").join(id);
        if bundle.join("exit.json").exists() {
            return None;
        }
        if let Some(f) = self.0.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Some(f);
        }
        let started = shim::read_started(&bundle)?;
        let spec: serde_json::Value = crate::fsutil::read_json(&bundle.join("config.json"))
            .ok()
            .flatten()?;
        let f = Fixed {
            cgroup: spec["linux"]["cgroupsPath"].as_str()?.to_string(),
            pid: started.pid,
            started_at: started.started_at,
        };
        if let Ok(mut m) = self.0.lock() {
            m.insert(id.to_string(), f.clone());
        }
        Some(f)
    }
}

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

/// What a scrape needs of a pod record, kept while pod.json is unchanged.
struct PodMeta {
    modified: std::time::SystemTime,
    name: String,
    namespace: String,
    start_time: Option<String>,
    qos: &'static str,
    is_static: bool,
    object: std::sync::Arc<serde_json::Value>,
}

#[derive(Default)]
pub struct Cache {
    containers: Mutex<HashMap<String, Fixed>>,
    pods: Mutex<HashMap<PathBuf, std::sync::Arc<PodMeta>>>,
}

impl Cache {
    /// The pods on disk with their running containers. Pods with nothing running are listed
    /// too (with no containers): callers decide whether to show them.
    pub fn pods(&self, root: &Path, cgroup_root: Option<&str>) -> Vec<PodInfo> {
        let mut seen = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(store::pods_dir(root))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        let mut out = Vec::new();
        for dir in &dirs {
            let Some(meta) = self.meta(dir) else {
                continue;
            };
            let uid = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let obj = &meta.object;
            let names: Vec<String> = ["initContainers", "containers"]
                .iter()
                .flat_map(|k| obj["spec"][*k].as_array().into_iter().flatten())
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect();
            let mut containers = Vec::new();
            for name in names {
                let Some(id) = store::load_container(dir, &name).and_then(|r| r.current) else {
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
                    cgroup_root.map(|r| crate::runtime::cgroups::pod_cgroup_path(r, meta.qos, &uid))
                });
            out.push(PodInfo {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid,
                start_time: meta.start_time.clone(),
                is_static: meta.is_static,
                object: meta.object.clone(),
                dir: dir.clone(),
                cgroup,
                containers,
            });
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        if let Ok(mut m) = self.containers.lock() {
            m.retain(|id, _| seen.contains(id));
        }
        if let Ok(mut m) = self.pods.lock() {
            m.retain(|d, _| dirs.contains(d));
        }
        out
    }

    /// The pod record of `dir`, parsed again only when pod.json changed.
    fn meta(&self, dir: &Path) -> Option<std::sync::Arc<PodMeta>> {
        let modified = std::fs::metadata(dir.join("pod.json"))
            .ok()?
            .modified()
            .ok()?;
        if let Some(m) = self.pods.lock().ok()?.get(dir) {
            if m.modified == modified {
                return Some(m.clone());
            }
        }
        let rec = match store::load_pod(dir) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                log::debug!("stats: skipping {}: {}", dir.display(), e);
                return None;
            }
        };
        let obj = &rec.object;
        // The class is a function of the spec: no need to read the published status.
        let qos = serde_json::from_value::<PodSpec>(obj["spec"].clone())
            .ok()
            .as_ref()
            .map(status::qos_class)
            .unwrap_or("BestEffort");
        let meta = std::sync::Arc::new(PodMeta {
            modified,
            name: obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
            namespace: obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            start_time: rec.start_time.clone(),
            qos,
            is_static: rec.source.as_os_str() != crate::kubelet::cluster::API_SOURCE,
            object: rec.object.clone(),
        });
        self.pods
            .lock()
            .ok()?
            .insert(dir.to_path_buf(), meta.clone());
        Some(meta)
    }

    /// A container that runs now (its monitor recorded the start and no exit).
    fn fixed(&self, root: &Path, id: &str) -> Option<Fixed> {
        let bundle = root.join("containers").join(id);
        if bundle.join("exit.json").exists() {
            return None;
        }
        if let Some(f) = self.containers.lock().ok().and_then(|m| m.get(id).cloned()) {
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
        if let Ok(mut m) = self.containers.lock() {
            m.insert(id.to_string(), f.clone());
        }
        Some(f)
    }
}

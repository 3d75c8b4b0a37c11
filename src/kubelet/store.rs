//! What the agent keeps on disk per pod, so that a restarted agent adopts its pods and `ps` /
//! `logs` can read them from another process. Versioned JSON, written atomically.
//!
//!   <root>/pods/<uid>/pod.json                 the desired pod (object as `ps -o json` prints it)
//!   <root>/pods/<uid>/status.json              the latest computed PodStatus
//!   <root>/pods/<uid>/containers/<name>.json   restart count, current container, back-off, last state

use super::backoff::Backoff;
use crate::kube::types::{PodStatus, StateTerminated, StateWaiting};
use crate::{ballast, fsutil};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub version: u32,
    /// Shared with the pod's `DesiredPod` (serde's `rc` feature writes and reads it as a plain
    /// object).
    pub object: std::sync::Arc<serde_json::Value>,
    pub source: PathBuf,
    #[serde(default)]
    pub start_time: Option<String>,
    /// Every init container completed (and every sidecar started) once: the app containers
    /// run from then on, whatever the sidecars do later.
    #[serde(default)]
    pub initialized: bool,
    /// The eviction message when the node evicted the pod (it then stays Failed, reason
    /// Evicted, across agent restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<String>,
}

/// One running (or most recent) container of a pod container slot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub id: String,
    #[serde(default)]
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub version: u32,
    pub name: String,
    pub restart_count: u32,
    /// Whether any container was ever started for this slot (the next start is then a restart).
    #[serde(default)]
    pub started_once: bool,
    #[serde(default)]
    pub current: Option<Attempt>,
    /// lastState.terminated
    #[serde(default)]
    pub last_terminated: Option<StateTerminated>,
    /// The container exited and its restart policy says it stays so.
    #[serde(default)]
    pub final_state: Option<StateTerminated>,
    #[serde(default)]
    pub waiting: Option<StateWaiting>,
    /// Unix seconds before which no new start is attempted.
    #[serde(default)]
    pub not_before: Option<f64>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub image_id: String,
}

pub fn pods_dir(root: &Path) -> PathBuf {
    root.join("pods")
}

pub fn save_pod(dir: &Path, rec: &PodRecord) -> std::io::Result<()> {
    let path = dir.join("pod.json");
    ballast::write_or_spend(&path.display(), || {
        fsutil::ensure_dir(dir)?;
        fsutil::write_json_atomic(&path, rec)
    })
}

pub fn load_pod(dir: &Path) -> std::io::Result<Option<PodRecord>> {
    fsutil::read_json(&dir.join("pod.json"))
}

pub fn save_status(dir: &Path, status: &PodStatus) -> std::io::Result<()> {
    // Derived from the other records: recomputed on start-up, so no fsync.
    let path = dir.join("status.json");
    ballast::write_or_spend(&path.display(), || {
        fsutil::write_json_volatile(&path, status)
    })
}

pub fn load_status(dir: &Path) -> Option<PodStatus> {
    fsutil::read_json(&dir.join("status.json")).ok().flatten()
}

pub fn save_container(dir: &Path, rec: &ContainerRecord) -> std::io::Result<()> {
    let cdir = dir.join("containers");
    let path = cdir.join(format!("{}.json", rec.name));
    // Atomic but not fsync'd: it is written on every start and exit, right while runc works,
    // and a power cut that loses the last write also took the container it describes (the
    // restart count may then be one short). pod.json, which says what to run, is durable.
    ballast::write_or_spend(&path.display(), || {
        fsutil::ensure_dir(&cdir)?;
        fsutil::write_json_volatile(&path, rec)
    })
}

pub fn load_container(dir: &Path, name: &str) -> Option<ContainerRecord> {
    match fsutil::read_json::<ContainerRecord>(
        &dir.join("containers").join(format!("{}.json", name)),
    ) {
        Ok(r) => r,
        Err(e) => {
            log::error!("ignoring unreadable container record: {}", e);
            None
        }
    }
}

/// Renames every pod.json that cannot be parsed (a torn write, a bad disk block, a hand edit) to
/// `pod.json.corrupt-<unix time>`, logging what was wrong. The pod's container records stay, so
/// its running containers are adopted as soon as a source (the API server, the manifest) names
/// the pod again; nothing is killed because of a corrupt record. Returns how many were set aside.
pub fn set_aside_corrupt_records(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(pods_dir(root)) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let file = e.path().join("pod.json");
        let Err(err) = load_pod(&e.path()) else {
            continue;
        };
        if err.kind() != std::io::ErrorKind::InvalidData {
            continue;
        }
        let aside = e.path().join(format!(
            "pod.json.corrupt-{}",
            crate::clock::now_unix().as_secs()
        ));
        match std::fs::rename(&file, &aside) {
            Ok(()) => {
                n += 1;
                log::error!(
                    "corrupt pod record {} ({}); set aside as {}; the pod's containers keep running and are adopted when its source names it again",
                    file.display(),
                    err,
                    aside.display()
                );
            }
            Err(re) => log::error!(
                "corrupt pod record {} ({}); setting it aside failed: {}",
                file.display(),
                err,
                re
            ),
        }
    }
    n
}

/// Ids of the containers the records under every pod directory point at, whether or not the
/// pod's own record is readable.
pub fn referenced_containers(root: &Path) -> std::collections::HashSet<String> {
    let mut ids = std::collections::HashSet::new();
    let Ok(pods) = std::fs::read_dir(pods_dir(root)) else {
        return ids;
    };
    for p in pods.flatten() {
        let Ok(entries) = std::fs::read_dir(p.path().join("containers")) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(Some(rec)) = fsutil::read_json::<ContainerRecord>(&e.path()) {
                if let Some(a) = rec.current {
                    ids.insert(a.id);
                }
            }
        }
    }
    ids
}

/// A pod as found on disk: for `ps`, `logs` and adoption at start-up.
pub struct StoredPod {
    pub uid: String,
    pub dir: PathBuf,
    pub record: PodRecord,
    pub status: Option<PodStatus>,
}

pub fn list_pods(root: &Path) -> Vec<StoredPod> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(pods_dir(root)) else {
        return out;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let uid = e.file_name().to_string_lossy().to_string();
        match load_pod(&dir) {
            Ok(Some(record)) => {
                let status = load_status(&dir);
                out.push(StoredPod {
                    uid,
                    dir,
                    record,
                    status,
                });
            }
            Ok(None) => {}
            Err(e) => log::error!(
                "pod directory {} has an unreadable pod.json: {}",
                dir.display(),
                e
            ),
        }
    }
    out.sort_by(|a, b| {
        let key = |p: &StoredPod| {
            (
                p.record.object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                p.record.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

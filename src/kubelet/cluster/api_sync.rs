//! The API side of pod state, as the kubelet's status manager and mirror client:
//! - pod status: the latest status of each pod is PATCHed (strategic merge, with the pod's UID as
//!   precondition) only when it differs from what the API server shows; conditions the kubelet
//!   does not own (set by other controllers) are kept;
//! - deletion: a pod being deleted (deletionTimestamp) is DELETEd with grace period 0 and a UID
//!   precondition once its worker has stopped and removed it;
//! - mirror pods: each static pod has a mirror pod in the API (annotation
//!   `kubernetes.io/config.mirror`, owned by the Node), recreated if deleted or outdated, removed
//!   when the static pod goes; static pods' statuses go to their mirror pods.

use super::pod_source::{is_mirror, MIRROR_ANNOTATION};
use super::{NodeUid, Settings};
use crate::kube::client::{escape, resource_version, ApiClient, ApiError, PatchKind};
use crate::kube::patch;
use crate::kube::types::PodStatus;
use crate::kubelet::manifest::DesiredPod;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reason of a pod whose spec tinylet cannot run.
pub const UNSUPPORTED_REASON: &str = "UnsupportedPodSpec";

pub enum Msg {
    /// A pod worker's latest status.
    Status {
        uid: String,
        namespace: String,
        name: String,
        is_static: bool,
        status: Box<PodStatus>,
    },
    /// Every pod bound to this node as a LIST showed them (mirror pods included).
    ApiList(Vec<Value>),
    /// A pod added or changed at the API server.
    ApiPod(Value),
    /// A pod gone from the API server (by uid).
    ApiPodGone(String),
    /// A pod tinylet cannot run (its spec does not parse, or admission refused it): it is
    /// marked Failed with the reason (`UNSUPPORTED_REASON`, or the kubelet's admission reason).
    Rejected {
        pod: Value,
        reason: &'static str,
        message: String,
    },
    /// The static pods (from the manifest directory), for their mirror pods.
    StaticPods(Vec<DesiredPod>),
    /// A pod worker stopped and removed its pod.
    Terminated { uid: String },
}

/// Conditions the kubelet owns (kubetypes.PodConditionsByKubelet); others are left as they are.
const KUBELET_CONDITIONS: &[&str] = &[
    "PodScheduled",
    "Ready",
    "Initialized",
    "ContainersReady",
    "PodReadyToStartContainers",
];

/// How soon unfinished work (a mirror pod to make, a status waiting for its mirror) is retried.
const MIRROR_RETRY: Duration = Duration::from_secs(1);

/// Status fields the kubelet writes.
const OWNED_FIELDS: &[&str] = &[
    "phase",
    "message",
    "reason",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "initContainerStatuses",
    "containerStatuses",
    "qosClass",
];

pub fn start(
    client: Arc<ApiClient>,
    settings: Settings,
    node_uid: Arc<NodeUid>,
) -> Result<Sender<Msg>, String> {
    let (tx, rx) = channel::<Msg>();
    super::spawn("api-sync", move || {
        let mut sync = ApiSync {
            client,
            settings,
            node_uid,
            api_pods: HashMap::new(),
            listed: false,
            statuses: BTreeMap::new(),
            deletions: Vec::new(),
            static_pods: None,
            mirror_attempts: HashMap::new(),
            mirrors_pending: false,
            retry_at: None,
            failures: 0,
        };
        loop {
            let wait = sync
                .retry_at
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    sync.take(msg);
                    // Take everything already queued before talking to the server: only the
                    // latest status of each pod matters.
                    while let Ok(msg) = rx.try_recv() {
                        sync.take(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            sync.sync();
        }
    })?;
    Ok(tx)
}

struct Pending {
    namespace: String,
    name: String,
    is_static: bool,
    status: Box<PodStatus>,
}

struct ApiSync {
    client: Arc<ApiClient>,
    settings: Settings,
    node_uid: Arc<NodeUid>,
    /// uid -> the newest copy of each pod bound to this node (from the watch or our own writes).
    api_pods: HashMap<String, Value>,
    /// The pod source has listed at least once (before that, a missing mirror pod may exist).
    listed: bool,
    /// Statuses not yet known to be on the server, by pod uid.
    statuses: BTreeMap<String, Pending>,
    /// Uids of terminated pods to DELETE.
    deletions: Vec<String>,
    static_pods: Option<Vec<DesiredPod>>,
    /// "namespace/name" -> when a mirror pod was last created or deleted (not repeated within
    /// MIRROR_RETRY, so the watch can show the result first).
    mirror_attempts: HashMap<String, Instant>,
    /// Some static pod has no current mirror pod yet.
    mirrors_pending: bool,
    retry_at: Option<Instant>,
    failures: u32,
}

impl ApiSync {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Status {
                uid,
                namespace,
                name,
                is_static,
                status,
            } => {
                self.statuses.insert(
                    uid,
                    Pending {
                        namespace,
                        name,
                        is_static,
                        status,
                    },
                );
            }
            Msg::ApiList(pods) => {
                let mut old = std::mem::take(&mut self.api_pods);
                for p in pods {
                    let Some(uid) = p["metadata"]["uid"].as_str().map(str::to_string) else {
                        continue;
                    };
                    // Our own PATCH response may be newer than the list's copy.
                    let v = match old.remove(&uid) {
                        Some(ours) if newer(&ours, &p) => ours,
                        _ => p,
                    };
                    self.api_pods.insert(uid, v);
                }
                self.listed = true;
            }
            Msg::ApiPod(p) => {
                if let Some(uid) = p["metadata"]["uid"].as_str().map(str::to_string) {
                    if !self.api_pods.get(&uid).is_some_and(|ours| newer(ours, &p)) {
                        self.api_pods.insert(uid, p);
                    }
                }
            }
            Msg::ApiPodGone(uid) => {
                self.api_pods.remove(&uid);
            }
            Msg::Rejected {
                pod,
                reason,
                message,
            } => self.reject(&pod, reason, &message),
            Msg::StaticPods(pods) => self.static_pods = Some(pods),
            Msg::Terminated { uid } => {
                self.statuses.remove(&uid);
                self.deletions.push(uid);
            }
        }
    }

    fn sync(&mut self) {
        let mut failed = false;
        failed |= !self.sync_statuses();
        failed |= !self.sync_deletions();
        failed |= !self.sync_mirrors();
        if failed {
            self.failures += 1;
            let secs = (0.5 * 2f64.powi(self.failures.min(6) as i32)).min(30.0);
            self.retry_at = Some(Instant::now() + Duration::from_secs_f64(secs));
        } else {
            self.failures = 0;
            // Statuses of static pods wait for their mirror pods: look again soon.
            self.retry_at =
                (!self.statuses.is_empty() || !self.deletions.is_empty() || self.mirrors_pending)
                    .then(|| Instant::now() + MIRROR_RETRY);
        }
    }

    /// The API object a pod's status goes to: the pod itself, or a static pod's mirror.
    fn target(&self, uid: &str, p: &Pending) -> Option<&Value> {
        if !p.is_static {
            return self.api_pods.get(uid);
        }
        self.api_pods.values().find(|m| {
            is_mirror(m)
                && m["metadata"]["name"] == p.name.as_str()
                && m["metadata"]["namespace"] == p.namespace.as_str()
                && m["metadata"]["deletionTimestamp"].is_null()
        })
    }

    /// False if a request failed and should be retried.
    fn sync_statuses(&mut self) -> bool {
        let mut ok = true;
        let uids: Vec<String> = self.statuses.keys().cloned().collect();
        for uid in uids {
            let Some(p) = self.statuses.get(&uid) else {
                continue;
            };
            let Some(target) = self.target(&uid, p) else {
                if !p.is_static && self.listed {
                    // Gone from the API server: nothing to report to.
                    self.statuses.remove(&uid);
                }
                continue;
            };
            let ours = match serde_json::to_value(&p.status) {
                Ok(v) => v,
                Err(e) => {
                    log::error!("pod {}/{}: encoding its status: {}", p.namespace, p.name, e);
                    self.statuses.remove(&uid);
                    continue;
                }
            };
            let old = &target["status"];
            let new = merged_status(old, &ours);
            let diff = patch::diff(old, &new);
            if patch::is_empty(&diff) {
                self.statuses.remove(&uid);
                continue;
            }
            let target_uid = target["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                escape(&p.namespace),
                escape(&p.name)
            );
            let body = json!({"metadata": {"uid": target_uid}, "status": diff});
            match self.client.patch(&path, PatchKind::Strategic, &body) {
                Ok(updated) => {
                    log::debug!("pod {}/{}: status sent", p.namespace, p.name);
                    self.api_pods.insert(target_uid, updated);
                    self.statuses.remove(&uid);
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {
                    // Deleted, or replaced by a pod of the same name: its status is moot.
                    log::debug!("pod {}/{}: status not sent: {}", p.namespace, p.name, e);
                    self.api_pods.remove(&target_uid);
                    if !p.is_static {
                        self.statuses.remove(&uid);
                    }
                }
                Err(e) => {
                    log::warn!("pod {}/{}: sending its status: {}", p.namespace, p.name, e);
                    ok = false;
                }
            }
        }
        ok
    }

    fn sync_deletions(&mut self) -> bool {
        let mut ok = true;
        let mut keep = Vec::new();
        for uid in std::mem::take(&mut self.deletions) {
            let Some(pod) = self.api_pods.get(&uid) else {
                continue;
            };
            if pod["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            match delete_pod(&self.client, pod) {
                Ok(()) => {
                    self.api_pods.remove(&uid);
                }
                Err(e) => {
                    log::warn!("deleting pod {}: {}", full_name(pod), e);
                    ok = false;
                    keep.push(uid);
                }
            }
        }
        self.deletions = keep;
        ok
    }

    fn sync_mirrors(&mut self) -> bool {
        self.mirrors_pending = false;
        let (Some(static_pods), true) = (&self.static_pods, self.listed) else {
            return true;
        };
        let Some(node_uid) = self.node_uid.get() else {
            self.mirrors_pending = !static_pods.is_empty();
            return true;
        };
        let mut ok = true;
        let wanted: HashMap<String, &DesiredPod> =
            static_pods.iter().map(|p| (p.full_name(), p)).collect();
        let mirrors: Vec<Value> = self
            .api_pods
            .values()
            .filter(|p| is_mirror(p))
            .cloned()
            .collect();
        let recently = |attempts: &HashMap<String, Instant>, name: &str| {
            attempts
                .get(name)
                .is_some_and(|t| t.elapsed() < MIRROR_RETRY)
        };
        // Mirrors that no static pod wants, or that mirror an older version: delete.
        for m in &mirrors {
            let name = full_name(m);
            let current = wanted
                .get(&name)
                .is_some_and(|p| m["metadata"]["annotations"][MIRROR_ANNOTATION] == p.uid.as_str());
            if current {
                continue;
            }
            self.mirrors_pending = true;
            if !m["metadata"]["deletionTimestamp"].is_null()
                || recently(&self.mirror_attempts, &name)
            {
                continue;
            }
            log::info!(
                "mirror pod {}: no longer matches a static pod; deleting it",
                name
            );
            self.mirror_attempts.insert(name.clone(), Instant::now());
            if let Err(e) = delete_pod(&self.client, m) {
                log::warn!("deleting mirror pod {}: {}", name, e);
                ok = false;
            }
        }
        // Static pods without a mirror: create one.
        for (name, pod) in &wanted {
            let exists = mirrors.iter().any(|m| &full_name(m) == name);
            if exists {
                continue;
            }
            self.mirrors_pending = true;
            if recently(&self.mirror_attempts, name) {
                continue;
            }
            self.mirror_attempts.insert(name.clone(), Instant::now());
            let mirror = mirror_pod(pod, &self.settings.node_name, &node_uid);
            let path = format!("/api/v1/namespaces/{}/pods", escape(&pod.namespace));
            match self.client.post(&path, &mirror) {
                Ok(created) => {
                    log::info!("mirror pod {}: created", name);
                    if let Some(uid) = created["metadata"]["uid"].as_str() {
                        self.api_pods.insert(uid.to_string(), created);
                    }
                }
                // Made meanwhile (the watch will show it) or being deleted: try again later.
                Err(e) if e.is_conflict() => {}
                Err(e) => {
                    log::warn!("creating mirror pod {}: {}", name, e);
                    ok = false;
                }
            }
        }
        ok
    }

    fn reject(&mut self, pod: &Value, reason: &str, message: &str) {
        if !pod["status"]["phase"].is_null() && pod["status"]["phase"] == "Failed" {
            return;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/status",
            escape(pod["metadata"]["namespace"].as_str().unwrap_or_default()),
            escape(pod["metadata"]["name"].as_str().unwrap_or_default())
        );
        let body = json!({
            "metadata": {"uid": pod["metadata"]["uid"]},
            "status": {"phase": "Failed", "reason": reason, "message": if reason == UNSUPPORTED_REASON {
                format!("tinylet cannot run this pod: {}", message)
            } else {
                // The kubelet's words for a pod its admission refused.
                format!("Pod was rejected: {}", message)
            }},
        });
        if let Err(e) = self.client.patch(&path, PatchKind::Strategic, &body) {
            log::warn!("pod {}: reporting it failed: {}", full_name(pod), e);
        }
    }
}

/// The old status with the kubelet's fields replaced by ours; other controllers' conditions kept.
fn merged_status(old: &Value, ours: &Value) -> Value {
    let mut new = if old.is_object() {
        old.clone()
    } else {
        json!({})
    };
    for field in OWNED_FIELDS {
        match ours.get(*field) {
            Some(v) if !v.is_null() => new[*field] = v.clone(),
            _ => {
                if let Some(m) = new.as_object_mut() {
                    m.remove(*field);
                }
            }
        }
    }
    let mut conditions: Vec<Value> = ours["conditions"].as_array().cloned().unwrap_or_default();
    for c in old["conditions"].as_array().into_iter().flatten() {
        let t = c["type"].as_str().unwrap_or_default();
        if !KUBELET_CONDITIONS.contains(&t) {
            conditions.push(c.clone());
        }
    }
    new["conditions"] = Value::Array(conditions);
    new
}

/// Whether `a` is a newer copy of the same object than `b` (resourceVersions compared as the
/// numbers etcd makes them; unparsable ones are treated as not newer).
fn newer(a: &Value, b: &Value) -> bool {
    let rv = |v: &Value| resource_version(v).and_then(|s| s.parse::<u64>().ok());
    matches!((rv(a), rv(b)), (Some(x), Some(y)) if x > y)
}

fn full_name(pod: &Value) -> String {
    format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// DELETE with grace period 0 and the pod's UID as precondition (never a newer pod of the name).
fn delete_pod(client: &ApiClient, pod: &Value) -> Result<(), ApiError> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        escape(pod["metadata"]["namespace"].as_str().unwrap_or_default()),
        escape(pod["metadata"]["name"].as_str().unwrap_or_default())
    );
    let options = json!({
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": pod["metadata"]["uid"]},
    });
    match client.delete(&path, &options) {
        Ok(_) => {
            log::info!("pod {}: deleted from the API server", full_name(pod));
            Ok(())
        }
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The mirror pod of a static pod: its metadata and spec, the mirror annotation (the static
/// pod's hash) and the Node as owner.
fn mirror_pod(pod: &DesiredPod, node_name: &str, node_uid: &str) -> Value {
    let mut m = (*pod.object).clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = m["metadata"].as_object_mut() {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            meta.remove(k);
        }
    }
    m["apiVersion"] = json!("v1");
    m["kind"] = json!("Pod");
    m["metadata"]["annotations"][MIRROR_ANNOTATION] = json!(pod.uid);
    m["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1",
        "kind": "Node",
        "name": node_name,
        "uid": node_uid,
        "controller": true,
    }]);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_conditions_and_fields_are_kept() {
        let old = json!({
            "phase": "Pending",
            "nominatedNodeName": "x",
            "message": "old",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "DisruptionTarget", "status": "True"}
            ]
        });
        let ours = json!({
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]
        });
        let new = merged_status(&old, &ours);
        assert_eq!(new["nominatedNodeName"], "x");
        assert!(new.get("message").is_none());
        let types: Vec<&str> = new["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["PodScheduled", "Ready", "DisruptionTarget"]);
        let d = patch::diff(&old, &new);
        assert_eq!(d["message"], Value::Null);
        assert!(d.get("nominatedNodeName").is_none());
    }

    #[test]
    fn resource_versions_compare_as_numbers() {
        let a = json!({"metadata": {"resourceVersion": "10"}});
        let b = json!({"metadata": {"resourceVersion": "9"}});
        assert!(newer(&a, &b));
        assert!(!newer(&b, &a));
    }
}

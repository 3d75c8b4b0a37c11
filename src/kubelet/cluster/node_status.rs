//! The Node: registration (`POST /api/v1/nodes`, on 409 GET and reconcile the labels the kubelet
//! owns), then status updates as the kubelet makes them: computed every `status_update` (10 s),
//! PATCHed (strategic merge) when it changed — heartbeat times aside — or every `status_report`
//! (5 min) anyway.

use super::events::{ObjectRef, Recorder};
use super::node_facts::{self, NodeFacts, Pressure};
use super::{NodeUid, RetryDelay, Settings};
use crate::clock;
use crate::kube::client::{escape, ApiClient, PatchKind};
use crate::kube::patch;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

pub fn start(
    client: Arc<ApiClient>,
    settings: Settings,
    node_uid: Arc<NodeUid>,
    events: Recorder,
) -> Result<(), String> {
    register_pod_cidr_lookup(&client, &settings);
    super::spawn("node-status", move || {
        NodeStatusLoop::new(client, settings, node_uid, events).run()
    })
}

struct NodeStatusLoop {
    client: Arc<ApiClient>,
    settings: Settings,
    facts: NodeFacts,
    node_uid: Arc<NodeUid>,
    events: Recorder,
    /// The status last accepted by the server (what the next patch is computed against).
    sent: Option<Value>,
    sent_at: Option<Instant>,
    ready_reported: bool,
}

impl NodeStatusLoop {
    fn new(
        client: Arc<ApiClient>,
        settings: Settings,
        node_uid: Arc<NodeUid>,
        events: Recorder,
    ) -> NodeStatusLoop {
        NodeStatusLoop {
            client,
            settings,
            facts: NodeFacts::read(),
            node_uid,
            events,
            sent: None,
            sent_at: None,
            ready_reported: false,
        }
    }

    fn run(mut self) {
        let mut delay = RetryDelay::default();
        loop {
            match self.register() {
                Ok(()) => break,
                Err(e) => {
                    let d = delay.failed();
                    log::warn!(
                        "registering node {}: {}; retrying in {:?}",
                        self.settings.node_name,
                        e,
                        d
                    );
                    std::thread::sleep(d);
                }
            }
        }
        self.events.record(
            self.node_ref(),
            "Normal",
            "Starting",
            "Starting kubelet.".into(),
        );
        loop {
            match self.update() {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {
                    log::warn!(
                        "node {} was deleted from the API server; registering it again",
                        self.settings.node_name
                    );
                    self.sent = None;
                    if let Err(e) = self.register() {
                        log::warn!("registering node {}: {}", self.settings.node_name, e);
                    }
                }
                Err(e) => log::warn!(
                    "updating the status of node {}: {}",
                    self.settings.node_name,
                    e
                ),
            }
            std::thread::sleep(self.settings.status_update);
        }
    }

    /// The conditions the eviction monitor set from the hard thresholds.
    fn pressure(&self) -> Pressure {
        let p = self.settings.pressure.get();
        Pressure {
            memory: p.memory,
            disk: p.disk,
            pid: p.pid,
        }
    }

    fn node_ref(&self) -> ObjectRef {
        // The kubelet's node events name the node by its name as UID too.
        ObjectRef {
            kind: "Node".into(),
            api_version: None,
            namespace: String::new(),
            name: self.settings.node_name.clone(),
            uid: self.settings.node_name.clone(),
            field_path: None,
        }
    }

    fn labels(&self) -> Value {
        let mut labels = serde_json::Map::new();
        for (k, v) in &self.settings.node_labels {
            labels.insert(k.clone(), json!(v));
        }
        for (k, v) in self.default_labels() {
            labels.insert(k.into(), json!(v));
        }
        Value::Object(labels)
    }

    /// The labels the kubelet owns and keeps right on an existing Node.
    fn default_labels(&self) -> [(&'static str, String); 5] {
        let arch = self.facts.architecture.to_string();
        [
            ("kubernetes.io/hostname", self.settings.node_name.clone()),
            ("kubernetes.io/os", "linux".into()),
            ("kubernetes.io/arch", arch.clone()),
            ("beta.kubernetes.io/os", "linux".into()),
            ("beta.kubernetes.io/arch", arch),
        ]
    }

    fn register(&mut self) -> Result<(), crate::kube::client::ApiError> {
        let name = &self.settings.node_name;
        let status = self.status(self.pressure());
        let mut node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": self.labels(),
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": {},
            "status": status,
        });
        if !self.settings.taints.is_empty() {
            node["spec"]["taints"] = json!(self.settings.taints);
        }
        match self.client.post("/api/v1/nodes", &node) {
            Ok(created) => {
                log::info!("registered node {} with the API server", name);
                self.remember(&created);
                Ok(())
            }
            Err(e) if e.is_conflict() || e.code() == Some(409) => {
                let path = format!("/api/v1/nodes/{}", escape(name));
                let existing = self.client.get(&path)?;
                let mut patch_labels = serde_json::Map::new();
                for (k, v) in self.default_labels() {
                    if existing["metadata"]["labels"][k].as_str() != Some(v.as_str()) {
                        patch_labels.insert(k.into(), json!(v));
                    }
                }
                let existing = if patch_labels.is_empty() {
                    existing
                } else {
                    log::info!("node {}: reconciling labels {:?}", name, patch_labels);
                    self.client.patch(
                        &path,
                        PatchKind::Strategic,
                        &json!({"metadata": {"labels": patch_labels}}),
                    )?
                };
                log::info!("node {} was already registered; using it", name);
                self.remember(&existing);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn remember(&mut self, node: &Value) {
        self.learn_pod_cidrs(node);
        if let Some(uid) = node["metadata"]["uid"].as_str() {
            self.node_uid.set(uid);
        }
        self.sent = Some(node["status"].clone());
        self.sent_at = None; // send the first status update right away
    }

    /// spec.podCIDRs (else spec.podCIDR), set by the controller manager after registration.
    fn learn_pod_cidrs(&self, node: &Value) {
        let cidrs = pod_cidrs(node);
        if !cidrs.is_empty() {
            self.settings.network.set_node_pod_cidrs(cidrs);
        }
    }

    /// Computes the status and PATCHes it if it changed or is due anyway.
    fn update(&mut self) -> Result<(), crate::kube::client::ApiError> {
        let status = self.status(self.pressure());
        let old = self.sent.clone().unwrap_or_else(|| json!({}));
        let due = self
            .sent_at
            .is_none_or(|t| t.elapsed() >= self.settings.status_report);
        if !due && !changed(&old, &status) {
            return Ok(());
        }
        let body = json!({"status": patch::diff(&old, &status)});
        let path = format!("/api/v1/nodes/{}/status", escape(&self.settings.node_name));
        let node = self.client.patch(&path, PatchKind::Strategic, &body)?;
        self.learn_pod_cidrs(&node);
        self.sent = Some(node["status"].clone());
        self.sent_at = Some(Instant::now());
        if !self.ready_reported {
            self.ready_reported = true;
            self.events.record(
                self.node_ref(),
                "Normal",
                "NodeReady",
                format!("Node {} status is now: NodeReady", self.settings.node_name),
            );
        }
        Ok(())
    }

    fn status(&self, pressure: Pressure) -> Value {
        let now = clock::rfc3339(clock::now_unix());
        let f = &self.facts;
        let (disk_size, _) = node_facts::disk(&self.settings.root_dir).unwrap_or((0, 0));
        let capacity = json!({
            "cpu": f.cpus.to_string(),
            "memory": format!("{}Ki", f.memory_bytes / 1024),
            "pods": self.settings.max_pods.to_string(),
            "ephemeral-storage": format!("{}Ki", disk_size / 1024),
            "hugepages-2Mi": "0",
        });
        // The kubelet's allocatable: capacity less the hard eviction thresholds (no reservations
        // configured).
        let allocatable = json!({
            "cpu": f.cpus.to_string(),
            "memory": format!(
                "{}Ki",
                f.memory_bytes.saturating_sub(self.settings.pressure.reserved(
                    crate::kubelet::eviction::thresholds::Signal::MemoryAvailable,
                    f.memory_bytes
                )) / 1024
            ),
            "pods": self.settings.max_pods.to_string(),
            "ephemeral-storage": disk_size.saturating_sub(self.settings.pressure.reserved(
                crate::kubelet::eviction::thresholds::Signal::NodefsAvailable,
                disk_size
            )).to_string(),
            "hugepages-2Mi": "0",
        });
        let mut addresses = Vec::new();
        if let Some(ip) = &self.settings.node_ip {
            addresses.push(json!({"type": "InternalIP", "address": ip}));
        }
        addresses.push(json!({"type": "Hostname", "address": f.hostname}));
        let previous = self.sent.as_ref().map(|s| &s["conditions"]);
        let conditions: Vec<Value> = [
            condition(
                "MemoryPressure",
                pressure.memory,
                (
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                ),
                (
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
            ),
            condition(
                "DiskPressure",
                pressure.disk,
                ("KubeletHasDiskPressure", "kubelet has disk pressure"),
                ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ),
            condition(
                "PIDPressure",
                pressure.pid,
                (
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available",
                ),
                (
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
            ),
            condition(
                "Ready",
                true,
                ("KubeletReady", "kubelet is posting ready status"),
                ("KubeletNotReady", ""),
            ),
        ]
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let transition = previous
                .and_then(|p| p.as_array())
                .and_then(|p| p.iter().find(|c| c["type"] == type_))
                .filter(|c| c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| now.clone());
            json!({
                "type": type_,
                "status": status,
                "lastHeartbeatTime": now,
                "lastTransitionTime": transition,
                "reason": reason,
                "message": message,
            })
        })
        .collect();
        json!({
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": conditions,
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.settings.kubelet_port}},
            "nodeInfo": {
                "machineID": f.machine_id,
                "systemUUID": f.system_uuid,
                "bootID": f.boot_id,
                "kernelVersion": f.kernel_version,
                "osImage": f.os_image,
                "containerRuntimeVersion": format!("runc://{}", self.settings.runc_version),
                "kubeletVersion": kubelet_version(),
                // Deprecated and empty, but still required by the v1 schema (the kubelet's Go
                // struct sends it empty too).
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": f.architecture,
            },
        })
    }
}

/// `(type, "True"/"False", reason, message)` for a condition that is `is_true`.
fn condition(
    type_: &'static str,
    is_true: bool,
    when_true: (&'static str, &'static str),
    when_false: (&'static str, &'static str),
) -> (&'static str, &'static str, &'static str, &'static str) {
    let (reason, message) = if is_true { when_true } else { when_false };
    (
        type_,
        if is_true { "True" } else { "False" },
        reason,
        message,
    )
}

/// The Kubernetes version whose kubelet API tinylet follows, with tinylet's own version.
fn pod_cidrs(node: &Value) -> Vec<String> {
    let mut cidrs: Vec<String> = node["spec"]["podCIDRs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if cidrs.is_empty() {
        cidrs.extend(node["spec"]["podCIDR"].as_str().map(str::to_string));
    }
    cidrs
}

/// Lets the pod network read the Node's podCIDRs when a pod needs them and none is known yet
/// (the controller manager assigns them after registration): one GET then, never a poll.
fn register_pod_cidr_lookup(client: &Arc<ApiClient>, settings: &Settings) {
    let (client, path) = (
        client.clone(),
        format!("/api/v1/nodes/{}", escape(&settings.node_name)),
    );
    settings
        .network
        .set_node_lookup(Box::new(move || match client.get(&path) {
            Ok(node) => pod_cidrs(&node),
            Err(e) => {
                log::debug!("reading the Node for its podCIDR: {}", e);
                Vec::new()
            }
        }));
}

pub fn kubelet_version() -> String {
    format!("v1.37.0-tinylet.{}", env!("CARGO_PKG_VERSION"))
}

/// Whether anything but heartbeat times differs.
fn changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(conds) = v["conditions"].as_array_mut() {
            for c in conds {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastHeartbeatTime");
                }
            }
        }
        v
    };
    // Compare only the fields tinylet sets (the server may add others, e.g. images).
    let new = strip(new);
    let old = strip(old);
    new.as_object()
        .is_some_and(|n| n.iter().any(|(k, v)| &old[k] != v))
}

//! The API pod source, as the kubelet's `config/apiserver.go` reflector: LIST+WATCH of the pods
//! bound to this node (the loop itself, with its resourceVersions, 410s and back-off, is
//! kube/list_watch.rs). Every LIST replaces the desired set whole, so after an outage one fresh
//! LIST reconciles everything that changed; an answer that is not a PodList is a failed LIST,
//! never "no pods". While the API server cannot be reached, the pods on disk keep running (see
//! offline.rs) and the last desired set stands.

use super::api_sync;
use super::{Settings, API_SOURCE};
use crate::kube::client::{escape, resource_version, ApiClient, ApiError};
use crate::kube::list_watch::{self, Change, Flow, Handler};
use crate::kubelet::manifest::DesiredPod;
use crate::kubelet::static_source::DesiredSet;
use crate::kubelet::{Event, Source};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// The annotation that marks a mirror pod (the API's copy of a static pod).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

pub fn start(
    client: Arc<ApiClient>,
    settings: Settings,
    supervisor: Sender<Event>,
    api_sync: Sender<api_sync::Msg>,
) -> Result<(), String> {
    super::spawn("pod-source", move || {
        PodSource {
            client,
            max_age: settings.offline_max_age,
            offline_stopped: false,
            selector: escape(&format!("spec.nodeName={}", settings.node_name)),
            supervisor,
            api_sync,
            pods: BTreeMap::new(),
            rejected: BTreeMap::new(),
            listed_once: false,
            allowed_unsafe_sysctls: settings.allowed_unsafe_sysctls,
        }
        .run()
    })
}

struct PodSource {
    client: Arc<ApiClient>,
    /// `--offline-max-age`.
    max_age: Option<Duration>,
    /// The cached pods were stopped for having been cut off too long.
    offline_stopped: bool,
    /// The escaped `fieldSelector` value.
    selector: String,
    supervisor: Sender<Event>,
    api_sync: Sender<api_sync::Msg>,
    /// uid -> the pods to run, as the API server last showed them (mirror pods are the API
    /// sync's business and are not kept here).
    pods: BTreeMap<String, DesiredPod>,
    /// uid -> resourceVersion of pods that cannot run, already reported.
    rejected: BTreeMap<String, String>,
    /// `--allowed-unsafe-sysctls`, for the kubelet's sysctl admission.
    allowed_unsafe_sysctls: Vec<String>,
    /// A LIST was tried before (the "unreachable" warning is given once, not at every retry).
    listed_once: bool,
}

impl PodSource {
    fn run(mut self) {
        let client = self.client.clone();
        let path = format!("/api/v1/pods?fieldSelector={}", self.selector);
        list_watch::run(&*client, "this node's pods", &path, &mut self);
    }

    /// Stops the cached pods if the node has been cut off for longer than `--offline-max-age`.
    /// False when the agent is shutting down.
    fn offline_too_long(&mut self) -> bool {
        if self.offline_stopped {
            return true;
        }
        let Some(away) = super::offline::too_long(&self.client, self.max_age) else {
            return true;
        };
        log::warn!(
            "no contact with the API server for {:?}, more than --offline-max-age {:?}: stopping this node's API pods until it answers",
            away,
            self.max_age.unwrap_or_default()
        );
        self.offline_stopped = true;
        self.pods.clear();
        self.publish()
    }

    /// Keeps (or rejects) one pod as the API server shows it.
    fn take(&mut self, pod: &Value) {
        let Some(uid) = pod["metadata"]["uid"].as_str().map(str::to_string) else {
            return;
        };
        if is_mirror(pod) {
            return;
        }
        let mut object = pod.clone();
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
        let parsed = match crate::kubelet::manifest::unsupported_fields(&object) {
            Some(why) => Err((api_sync::UNSUPPORTED_REASON, why)),
            None => DesiredPod::from_stored(object, PathBuf::from(API_SOURCE))
                .map_err(|e| (api_sync::UNSUPPORTED_REASON, e))
                .and_then(|p| {
                    crate::kubelet::sysctls::admit(&p.spec, &self.allowed_unsafe_sysctls)
                        .map(|()| p)
                        .map_err(|e| (crate::kubelet::sysctls::FORBIDDEN_REASON, e))
                }),
        };
        match parsed {
            Ok(p) => {
                self.pods.insert(uid, p);
            }
            Err((reason, e)) => {
                self.pods.remove(&uid);
                let rv = resource_version(pod).unwrap_or_default().to_string();
                if self.rejected.get(&uid) == Some(&rv) {
                    return;
                }
                let name = format!(
                    "{}/{}",
                    pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                    pod["metadata"]["name"].as_str().unwrap_or_default()
                );
                log::error!("pod {}: cannot run it: {}", name, e);
                self.rejected.insert(uid, rv);
                let _ = self.api_sync.send(api_sync::Msg::Rejected {
                    pod: pod.clone(),
                    reason,
                    message: e,
                });
            }
        }
    }

    /// Sends the pods to run to the supervisor. False when the agent is shutting down.
    fn publish(&self) -> bool {
        let set = DesiredSet {
            pods: self.pods.values().cloned().collect(),
            errors: Vec::new(),
        };
        self.supervisor
            .send(Event::Desired(Source::Api, set))
            .is_ok()
    }
}

impl Handler for PodSource {
    fn listed(&mut self, items: Option<Vec<Value>>, rv: &str) -> Result<Flow, ApiError> {
        // A PodList always has `items` (empty or not). Any other answer is refused rather than
        // read as "no pods", which would terminate every API pod of the node.
        let Some(items) = items else {
            return Err(ApiError::Decode(
                "the pod LIST answer is not a PodList (no items array)".into(),
            ));
        };
        log::info!(
            "API server: {} pod(s) bound to this node (resourceVersion {})",
            items.len(),
            rv
        );
        self.pods.clear();
        let mut all = Vec::with_capacity(items.len());
        for mut pod in items {
            slim(&mut pod);
            self.take(&pod);
            all.push(pod);
        }
        let _ = self.api_sync.send(api_sync::Msg::ApiList(all));
        self.listed_once = true;
        self.offline_stopped = false;
        Ok(go_on(self.publish()))
    }

    fn changed(&mut self, change: Change) -> Flow {
        match change {
            Change::Upsert(mut pod) => {
                if pod["metadata"]["uid"].as_str().is_none() {
                    log::debug!("pod watch: ignoring a pod without metadata.uid");
                    return Flow::Continue;
                }
                slim(&mut pod);
                self.take(&pod);
                let _ = self.api_sync.send(api_sync::Msg::ApiPod(pod));
            }
            Change::Delete(pod) => {
                let Some(uid) = pod["metadata"]["uid"].as_str().map(str::to_string) else {
                    log::debug!("pod watch: ignoring a deleted pod without metadata.uid");
                    return Flow::Continue;
                };
                self.pods.remove(&uid);
                self.rejected.remove(&uid);
                let _ = self.api_sync.send(api_sync::Msg::ApiPodGone(uid));
            }
        }
        go_on(self.publish())
    }

    fn list_failed(&mut self, e: &ApiError) -> Flow {
        if !self.listed_once {
            self.listed_once = true; // say it once, not at every retry
            log::warn!(
                "API server unreachable ({}): the pods of this node run from the local cache until it answers",
                e
            );
        }
        go_on(self.offline_too_long())
    }
}

/// `Stop` once the supervisor is gone.
fn go_on(sent: bool) -> Flow {
    if sent {
        Flow::Continue
    } else {
        Flow::Stop
    }
}

/// Drops what tinylet never reads and a real API server sends with every object (managedFields
/// alone is often larger than the rest of a pod).
fn slim(pod: &mut Value) {
    // get_mut, not indexing: a list item may be any JSON.
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

pub fn is_mirror(pod: &Value) -> bool {
    pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_string()
}

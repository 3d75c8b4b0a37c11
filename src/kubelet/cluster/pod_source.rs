//! The API pod source, as the kubelet's `config/apiserver.go` reflector: LIST the pods bound to
//! this node, then WATCH from the list's resourceVersion with bookmarks, reading the stream
//! synchronously. A watch the server ends cleanly (its timeoutSeconds) is opened again from the
//! last resourceVersion seen; a 410 (expired resourceVersion, as an HTTP status or an ERROR
//! event) or a broken connection means LIST again (after an outage, one fresh LIST reconciles
//! everything that changed), after a back-off of 800 ms doubling to 30 s. In steady state the
//! only request is one long watch, renewed every 5–10 minutes. While the API server cannot be
//! reached, the pods on disk keep running (see offline.rs).

use super::api_sync;
use super::{RetryDelay, Settings, API_SOURCE};
use crate::kube::client::{escape, resource_version, ApiClient, ApiError};
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
}

enum WatchEnd {
    /// Closed by the server or broken: watch again from the last resourceVersion.
    Closed,
    /// The agent is shutting down.
    Stop,
}

impl PodSource {
    fn run(mut self) {
        let mut delay = RetryDelay::default();
        let mut listed_once = false;
        loop {
            let rv = match self.list() {
                Ok(rv) => rv,
                Err(e) => {
                    let d = delay.failed();
                    if !listed_once {
                        listed_once = true; // say it once, not at every retry
                        log::warn!(
                            "API server unreachable ({}): the pods of this node run from the local cache until it answers",
                            e
                        );
                    }
                    log::warn!("listing this node's pods: {}; retrying in {:?}", e, d);
                    if !self.offline_too_long() {
                        return;
                    }
                    std::thread::sleep(d);
                    continue;
                }
            };
            listed_once = true;
            self.offline_stopped = false;
            delay.reset();
            if !self.publish() {
                return;
            }
            let mut rv = rv;
            loop {
                match self.watch(&mut rv) {
                    Ok(WatchEnd::Stop) => return,
                    Ok(WatchEnd::Closed) => delay.reset(),
                    Err(e) if e.is_expired() => {
                        log::info!("pod watch: {}; listing again", e);
                        break;
                    }
                    Err(e) => {
                        // Cut off (or the server failed): list afresh once it answers, so
                        // whatever changed meanwhile is reconciled in one go.
                        let d = delay.failed();
                        log::warn!("watching this node's pods: {}; listing again in {:?}", e, d);
                        std::thread::sleep(d);
                        break;
                    }
                }
            }
        }
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

    fn list(&mut self) -> Result<String, ApiError> {
        let mut list = self
            .client
            .get(&format!("/api/v1/pods?fieldSelector={}", self.selector))?;
        let rv = resource_version(&list).unwrap_or_default().to_string();
        // A PodList always has `items` (empty or not). Any other answer is refused rather than
        // read as "no pods", which would terminate every API pod of the node.
        let items = match list.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(ApiError::Decode(
                    "the pod LIST answer is not a PodList (no items array)".into(),
                ))
            }
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
        Ok(rv)
    }

    fn watch(&mut self, rv: &mut String) -> Result<WatchEnd, ApiError> {
        // client-go picks a random timeout between 5 and 10 minutes so watches of many nodes do
        // not all end together.
        let timeout = 300 + random_below(300);
        let path = format!(
            "/api/v1/pods?fieldSelector={}&watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={}",
            self.selector,
            escape(rv),
            timeout
        );
        let mut stream = self
            .client
            .watch(&path, Duration::from_secs(timeout + 60))?;
        loop {
            let Some(ev) = stream.next_event()? else {
                return Ok(WatchEnd::Closed);
            };
            if let Some(v) = resource_version(&ev.object) {
                *rv = v.to_string();
            }
            let uid = ev.object["metadata"]["uid"].as_str().map(str::to_string);
            let mut object = ev.object;
            match (ev.kind.as_str(), uid) {
                ("ADDED" | "MODIFIED", Some(_)) => {
                    slim(&mut object);
                    self.take(&object);
                    let _ = self.api_sync.send(api_sync::Msg::ApiPod(object));
                }
                ("DELETED", Some(uid)) => {
                    self.pods.remove(&uid);
                    self.rejected.remove(&uid);
                    let _ = self.api_sync.send(api_sync::Msg::ApiPodGone(uid));
                }
                ("BOOKMARK", _) => continue,
                (kind, _) => {
                    log::debug!("pod watch: ignoring a {:?} event", kind);
                    continue;
                }
            }
            if !self.publish() {
                return Ok(WatchEnd::Stop);
            }
        }
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

fn random_below(n: u64) -> u64 {
    let r = crate::fsutil::random_hex(8)
        .ok()
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .unwrap_or(0);
    r % n.max(1)
}

//! Cluster mode: tinylet as a node of a Kubernetes control plane, making the kubelet's calls.
//!
//! One thread per loop, channels between them:
//! - `node_status`: registers the Node, then PATCHes its status when it changed (checked every
//!   10 s) or every 5 min;
//! - `lease`: renews `kube-node-lease/<node>` every 10 s;
//! - `pod_source`: LIST + WATCH of the pods bound to this node, feeding the supervisor (the same
//!   pod workers as static pods) and the API sync;
//! - `api_sync`: pod status PATCHes (only what changed), the final DELETE of terminated pods,
//!   and mirror pods for static pods;
//! - `events`: Events, aggregated so a crash loop does not flood the API server.

pub mod api_sync;
pub mod bootstrap;
pub mod events;
pub mod lease;
pub mod node_facts;
pub mod node_status;
pub mod offline;
pub mod pod_source;

use crate::kube::client::ApiClient;
/// The API back-off (800 ms doubling to 30 s) of the bootstrap and the LIST+WATCH loop.
pub use crate::kube::list_watch::RetryDelay;
use crate::kube::types::PodStatus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `DesiredPod::source` of pods that came from the API server (file pods have absolute paths).
pub const API_SOURCE: &str = "api";

/// Cluster-mode settings (kubelet flag names in comments).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    /// `--node-ip` or detected: the InternalIP address.
    pub node_ip: Option<String>,
    pub root_dir: PathBuf,
    /// `--node-labels`.
    pub node_labels: BTreeMap<String, String>,
    /// `--register-with-taints` (key=value:Effect).
    pub taints: Vec<serde_json::Value>,
    /// `--max-pods`.
    pub max_pods: u32,
    /// `--port`: the kubelet endpoint the Node advertises.
    pub kubelet_port: u16,
    /// `--node-status-update-frequency`: how often the status is computed and, if changed, sent.
    pub status_update: Duration,
    /// nodeStatusReportFrequency: how often it is sent when nothing changed.
    pub status_report: Duration,
    /// nodeLeaseDurationSeconds; the lease is renewed every quarter of it.
    pub lease_duration_secs: u32,
    /// `runc --version`'s version, for containerRuntimeVersion.
    pub runc_version: String,
    /// `--offline-max-age`: how long pods run from the local cache without contact with the API
    /// server before they are stopped (None: for ever).
    pub offline_max_age: Option<Duration>,
    /// `--allowed-unsafe-sysctls`, for the sysctl admission of API pods.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// The pressure conditions of the eviction monitor (set by `kubelet::run`).
    pub pressure: Arc<super::eviction::NodePressure>,
    /// Told the Node's spec.podCIDRs (the zero-config pod network uses them).
    pub network: Arc<crate::network::Network>,
}

/// What pod workers use to reach the cluster side: status updates and events.
pub struct Link {
    pub client: Arc<ApiClient>,
    pub api_sync: Sender<api_sync::Msg>,
    pub events: events::Recorder,
}

impl Link {
    /// A pod worker published a new status.
    pub fn pod_status(&self, pod: &super::manifest::DesiredPod, status: &PodStatus) {
        let _ = self.api_sync.send(api_sync::Msg::Status {
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            is_static: pod.source.as_os_str() != API_SOURCE,
            status: Box::new(status.clone()),
        });
    }
}

/// The Node's UID once registered (the lease's and mirror pods' owner references need it).
/// A Node deleted and registered again gets a new one.
#[derive(Default)]
pub struct NodeUid(Mutex<Option<String>>);

impl NodeUid {
    pub fn set(&self, uid: &str) {
        if let Ok(mut u) = self.0.lock() {
            *u = Some(uid.to_string());
        }
    }
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|u| u.clone())
    }
}

/// Starts the cluster loops; returns the link pod workers use.
pub fn start(
    client: Arc<ApiClient>,
    settings: Settings,
    supervisor: Sender<super::Event>,
) -> Result<Arc<Link>, String> {
    let node_uid = Arc::new(NodeUid::default());
    client.set_last_contact(offline::load_last_contact(&settings.root_dir));
    offline::start_persisting(client.clone(), settings.root_dir.clone())?;
    let events = events::start(client.clone(), settings.node_name.clone())?;
    let api_sync = api_sync::start(client.clone(), settings.clone(), node_uid.clone())?;
    node_status::start(
        client.clone(),
        settings.clone(),
        node_uid.clone(),
        events.clone(),
    )?;
    lease::start(client.clone(), settings.clone(), node_uid)?;
    pod_source::start(client.clone(), settings, supervisor, api_sync.clone())?;
    Ok(Arc::new(Link {
        client,
        api_sync,
        events,
    }))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(f)
        .map(drop)
        .map_err(|e| format!("starting the {} thread: {}", name, e))
}

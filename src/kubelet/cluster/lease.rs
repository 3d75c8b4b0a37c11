//! The node lease (`kube-node-lease/<node>`), the kubelet's heartbeat: created once, then
//! renewed every quarter of `leaseDurationSeconds` (10 s of 40) with a PUT of the lease last
//! seen (its resourceVersion makes a concurrent change a 409, after which it is read again).

use super::{NodeUid, RetryDelay, Settings};
use crate::clock;
use crate::kube::client::{escape, ApiClient, ApiError};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const NAMESPACE: &str = "kube-node-lease";

pub fn start(
    client: Arc<ApiClient>,
    settings: Settings,
    node_uid: Arc<NodeUid>,
) -> Result<(), String> {
    super::spawn("node-lease", move || run(client, settings, node_uid))
}

fn run(client: Arc<ApiClient>, settings: Settings, node_uid: Arc<NodeUid>) {
    let interval = Duration::from_secs_f64(f64::from(settings.lease_duration_secs) / 4.0);
    let mut lease: Option<Value> = None;
    let mut delay = RetryDelay::default();
    loop {
        match renew(&client, &settings, &node_uid, lease.take()) {
            Ok(l) => {
                lease = Some(l);
                delay.reset();
                std::thread::sleep(interval);
            }
            Err(e) => {
                // client-go's lease controller retries sooner than the interval, backing off.
                let d = delay.failed().min(interval);
                log::warn!("renewing the node lease: {}; retrying in {:?}", e, d);
                std::thread::sleep(d);
            }
        }
    }
}

fn renew(
    client: &ApiClient,
    settings: &Settings,
    node_uid: &NodeUid,
    cached: Option<Value>,
) -> Result<Value, ApiError> {
    let name = escape(&settings.node_name);
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}");
    let create = || {
        client.post(
            &format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"),
            &desired(settings, node_uid, json!({})),
        )
    };
    let lease = match cached {
        Some(l) => l,
        None => match client.get(&path) {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return create(),
            Err(e) => return Err(e),
        },
    };
    match client.put(&path, &desired(settings, node_uid, lease)) {
        // Changed by someone else: once more from what the server has now.
        Err(e) if e.is_conflict() => {
            log::debug!("node lease: {}; reading it again", e);
            let fresh = client.get(&path)?;
            client.put(&path, &desired(settings, node_uid, fresh))
        }
        Err(e) if e.is_not_found() => create(),
        other => other,
    }
}

/// `lease` (the server's copy, or `{}`) with this node's holder, duration, renew time and owner.
fn desired(settings: &Settings, node_uid: &NodeUid, mut lease: Value) -> Value {
    // The server's copy is outside input: indexing into a non-object would panic.
    if !lease.is_object() {
        lease = json!({});
    }
    for part in ["metadata", "spec"] {
        if !lease[part].is_object() {
            lease[part] = json!({});
        }
    }
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["name"] = json!(settings.node_name);
    lease["metadata"]["namespace"] = json!(NAMESPACE);
    if let Some(uid) = node_uid.get() {
        lease["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "Node",
            "name": settings.node_name,
            "uid": uid,
        }]);
    }
    lease["spec"]["holderIdentity"] = json!(settings.node_name);
    lease["spec"]["leaseDurationSeconds"] = json!(settings.lease_duration_secs);
    lease["spec"]["renewTime"] = json!(clock::rfc3339_micro(clock::now_unix()));
    lease
}

//! Events (core/v1), recorded as client-go's event correlator does for the kubelet: an event
//! equal to an earlier one (same object, type, reason and message) within 10 minutes is not
//! created again but counted (`count` and `lastTimestamp` PATCHed); and each object may send a
//! burst of 25 events, then one per 5 minutes (the spam filter), so a crash loop costs the API
//! server almost nothing. Sending happens on a thread of its own; callers never block.

use crate::clock;
use crate::kube::client::{escape, ApiClient, PatchKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEDUP_WINDOW: Duration = Duration::from_secs(600);
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL_SECS: f64 = 300.0;
/// Bound on remembered events and objects (older ones are forgotten first).
const MAX_REMEMBERED: usize = 4096;

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub api_version: Option<String>,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{name}` for container events.
    pub field_path: Option<String>,
}

struct Request {
    object: ObjectRef,
    type_: &'static str,
    reason: &'static str,
    message: String,
}

#[derive(Clone)]
pub struct Recorder {
    tx: Sender<Request>,
}

impl Recorder {
    /// Queues an event; `type_` is "Normal" or "Warning".
    pub fn record(
        &self,
        object: ObjectRef,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) {
        let _ = self.tx.send(Request {
            object,
            type_,
            reason,
            message,
        });
    }
}

pub fn start(client: Arc<ApiClient>, node_name: String) -> Result<Recorder, String> {
    let (tx, rx) = channel::<Request>();
    super::spawn("events", move || {
        let mut sender = EventSink::new(client, node_name);
        for req in rx {
            sender.send(req);
        }
    })?;
    Ok(Recorder { tx })
}

struct Seen {
    namespace: String,
    name: String,
    count: u64,
    last: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The correlator's state and the sending.
struct EventSink {
    client: Arc<ApiClient>,
    node_name: String,
    seen: HashMap<(ObjectRef, &'static str, &'static str, String), Seen>,
    buckets: HashMap<String, Bucket>,
}

impl EventSink {
    fn new(client: Arc<ApiClient>, node_name: String) -> EventSink {
        EventSink {
            client,
            node_name,
            seen: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    fn allow(&mut self, object_uid: &str) -> bool {
        let now = Instant::now();
        if self.buckets.len() > MAX_REMEMBERED {
            self.buckets.clear();
        }
        let b = self
            .buckets
            .entry(object_uid.to_string())
            .or_insert(Bucket {
                tokens: SPAM_BURST,
                at: now,
            });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() / SPAM_REFILL_SECS).min(SPAM_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn send(&mut self, req: Request) {
        if !self.allow(&req.object.uid) {
            log::debug!(
                "event {} for {} dropped by the spam filter",
                req.reason,
                req.object.name
            );
            return;
        }
        let now = clock::rfc3339(clock::now_unix());
        let key = (
            req.object.clone(),
            req.type_,
            req.reason,
            req.message.clone(),
        );
        if let Some(seen) = self.seen.get_mut(&key) {
            if seen.last.elapsed() < DEDUP_WINDOW {
                seen.count += 1;
                seen.last = Instant::now();
                let path = format!(
                    "/api/v1/namespaces/{}/events/{}",
                    escape(&seen.namespace),
                    escape(&seen.name)
                );
                let patch = json!({"count": seen.count, "lastTimestamp": now});
                match self.client.patch(&path, PatchKind::Strategic, &patch) {
                    Ok(_) => return,
                    // Gone (expired after its TTL): create it afresh below.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        log::debug!("updating event {}: {}", seen.name, e);
                        return;
                    }
                }
            }
        }
        let namespace = if req.object.namespace.is_empty() {
            "default".to_string()
        } else {
            req.object.namespace.clone()
        };
        // client-go names events <object name>.<unix nanos in hex>.
        let name = format!(
            "{}.{:x}",
            req.object.name,
            clock::now_unix().as_nanos() as u64
        );
        let mut involved = json!({
            "kind": req.object.kind,
            "name": req.object.name,
            "uid": req.object.uid,
        });
        if !req.object.namespace.is_empty() {
            involved["namespace"] = json!(req.object.namespace);
        }
        if let Some(v) = &req.object.api_version {
            involved["apiVersion"] = json!(v);
        }
        if let Some(f) = &req.object.field_path {
            involved["fieldPath"] = json!(f);
        }
        let event: Value = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": req.reason,
            "message": req.message,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": req.type_,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
        });
        match self.client.post(
            &format!("/api/v1/namespaces/{}/events", escape(&namespace)),
            &event,
        ) {
            Ok(_) => {
                if self.seen.len() > MAX_REMEMBERED {
                    self.seen.retain(|_, s| s.last.elapsed() < DEDUP_WINDOW);
                }
                self.seen.insert(
                    key,
                    Seen {
                        namespace,
                        name,
                        count: 1,
                        last: Instant::now(),
                    },
                );
            }
            Err(e) => log::debug!(
                "creating event {} for {}: {}",
                req.reason,
                req.object.name,
                e
            ),
        }
    }
}

/// The reference of a pod (and one of its containers: `init` for an init container) for events.
pub fn pod_ref(
    namespace: &str,
    name: &str,
    uid: &str,
    container: Option<(&str, bool)>,
) -> ObjectRef {
    ObjectRef {
        kind: "Pod".into(),
        api_version: Some("v1".into()),
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
        field_path: container.map(|(c, init)| {
            let list = if init { "initContainers" } else { "containers" };
            format!("spec.{}{{{}}}", list, c)
        }),
    }
}

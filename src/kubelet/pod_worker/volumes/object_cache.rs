//! configMaps and secrets read for volumes and environment variables (and the Service list
//! read for service-link variables), shared by all pod workers.
//!
//! A configMap or secret a pod reads is watched, as the kubelet's default change-detection
//! strategy ("Watch") does: one LIST+WATCH per object (`fieldSelector=metadata.name=…`, which
//! the node authorizer allows for objects of the node's pods), and reads come from what the
//! watch shows. Every API pod projects `kube-root-ca.crt`, and the pods' periodic volume syncs
//! re-read their sources; from the watch, an idle node makes no request for them, and an update
//! reaches a pod at its next sync. An object no pod read for 5 minutes is dropped with its watch.
//!
//! Until an object's watch has listed, while it is cut off, and for everything else (the
//! Service list), reads go to the API server and are shared for a short TTL (the kubelet's TTL
//! strategy), so errors still reach the callers, who fall back to the copy they kept.

use crate::kube::client::{ApiClient, ApiError};
use crate::kube::list_watch::{self, Change, Flow, Handler};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// How long an object read from the API server is used for other reads of it.
const TTL_SECS: f64 = 30.0;
/// A watched object nobody read for this long is dropped, and its watch ends.
const IDLE_SECS: f64 = 300.0;

#[derive(Default)]
pub struct ObjectCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    /// The client watches go through (cluster mode); without it, reads use the TTL only.
    watch_client: OnceLock<Arc<ApiClient>>,
    /// The API server refused to let this node list/watch an object (RBAC): reads use the TTL
    /// from then on, rather than a refused LIST per object and minute.
    watch_refused: Arc<AtomicBool>,
}

#[derive(Default)]
struct Entry {
    /// The last GET of it: when (unix seconds), and what.
    read: Option<(f64, Arc<Value>)>,
    /// What its watch shows while the watch is live (listed, not cut off since): the object,
    /// or None when it does not exist.
    watched: Option<Option<Arc<Value>>>,
    /// A watch thread runs for it.
    watching: bool,
    last_used: f64,
}

impl ObjectCache {
    /// From now on, configMaps and secrets read are watched through `client`.
    pub fn watch_through(&self, client: Arc<ApiClient>) {
        let _ = self.watch_client.set(client);
    }

    /// The object at `path`: what its watch shows, else from a GET less than the TTL old, else
    /// read now. Errors (404 too) are never cached; a watch that shows the object absent
    /// answers 404.
    pub fn get(&self, api: &ApiClient, path: &str) -> Result<Arc<Value>, ApiError> {
        let now = crate::clock::now_unix().as_secs_f64();
        if let Some(e) = self.lock().get_mut(path) {
            e.last_used = now;
            match &e.watched {
                Some(Some(v)) => return Ok(v.clone()),
                Some(None) => return Err(not_found(path)),
                None => {}
            }
            if let Some((at, v)) = &e.read {
                if now - at < TTL_SECS {
                    return Ok(v.clone());
                }
            }
        }
        let v = Arc::new(api.get(path)?);
        let client = self.watch_client.get().cloned();
        let start_watch = {
            let mut entries = self.lock();
            entries.retain(|_, e| {
                e.watching || e.read.as_ref().is_some_and(|(at, _)| now - at < TTL_SECS)
            });
            let e = entries.entry(path.to_string()).or_default();
            e.read = Some((now, v.clone()));
            e.last_used = now;
            let target =
                (client.is_some() && !e.watching && !self.watch_refused.load(Ordering::Relaxed))
                    .then(|| watch_target(path))
                    .flatten();
            e.watching |= target.is_some();
            target
        };
        if let (Some(target), Some(client)) = (start_watch, client) {
            self.start_watch(client, path.to_string(), target);
        }
        Ok(v)
    }

    fn start_watch(&self, client: Arc<ApiClient>, path: String, target: WatchTarget) {
        let mut watcher = ObjectWatch {
            entries: self.entries.clone(),
            refused: self.watch_refused.clone(),
            path: path.clone(),
            name: target.name,
        };
        let spawned = std::thread::Builder::new()
            .name("object-watch".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let what = watcher.path.clone();
                list_watch::run(&*client, &what, &target.list_path, &mut watcher);
                watcher.forget();
            });
        if let Err(e) = spawned {
            log::warn!("watching {}: {}; reading it periodically instead", path, e);
            if let Some(e) = self.lock().get_mut(&path) {
                e.watching = false;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.entries)
    }
}

fn lock(
    entries: &Mutex<HashMap<String, Entry>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    // A worker that panicked while holding the lock left a map that is still whole.
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_found(path: &str) -> ApiError {
    let (kind, name) = path
        .rsplit_once('/')
        .map(|(head, name)| (head.rsplit('/').next().unwrap_or(""), name))
        .unwrap_or(("", path));
    ApiError::Status {
        code: 404,
        reason: "NotFound".into(),
        message: format!("{} \"{}\" not found", kind, name),
    }
}

/// What to LIST+WATCH for one object.
struct WatchTarget {
    /// `/api/v1/namespaces/<ns>/<configmaps|secrets>?fieldSelector=metadata.name%3D<name>`
    list_path: String,
    name: String,
}

/// The watch of the configMap or secret at `path` (`/api/v1/namespaces/<ns>/<kind>/<name>`);
/// None for anything else (a list, a Service), which is read with the TTL.
fn watch_target(path: &str) -> Option<WatchTarget> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.split('/');
    let (ns, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !matches!(kind, "configmaps" | "secrets") {
        return None;
    }
    if ns.is_empty() || name.is_empty() || path.contains('?') {
        return None;
    }
    // configMaps and secrets have DNS-subdomain names, which path escaping leaves as they
    // are; anything with an escape in it is no such name (and is read with the TTL).
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return None;
    }
    Some(WatchTarget {
        list_path: format!(
            "/api/v1/namespaces/{}/{}?fieldSelector={}",
            ns,
            kind,
            crate::kube::client::escape(&format!("metadata.name={}", name))
        ),
        name: name.to_string(),
    })
}

/// One object's watch: keeps its entry's `watched` up to date, and ends when nobody reads it.
struct ObjectWatch {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    refused: Arc<AtomicBool>,
    path: String,
    name: String,
}

impl ObjectWatch {
    /// Sets what the watch shows (None: cut off, reads go to the API server); Stop when the
    /// object was not read for IDLE_SECS.
    fn show(&self, watched: Option<Option<Arc<Value>>>) -> Flow {
        let now = crate::clock::now_unix().as_secs_f64();
        let mut entries = lock(&self.entries);
        match entries.get_mut(&self.path) {
            Some(e) if now - e.last_used < IDLE_SECS => {
                e.watched = watched;
                Flow::Continue
            }
            _ => Flow::Stop,
        }
    }

    /// The watch ended: its entry goes (the next read starts over).
    fn forget(&self) {
        lock(&self.entries).remove(&self.path);
    }

    fn is_mine(&self, object: &Value) -> bool {
        object["metadata"]["name"].as_str() == Some(self.name.as_str())
    }
}

impl Handler for ObjectWatch {
    fn listed(&mut self, items: Option<Vec<Value>>, _rv: &str) -> Result<Flow, ApiError> {
        let Some(items) = items else {
            return Err(ApiError::Decode(format!(
                "the LIST answer for {} is not a list (no items array)",
                self.path
            )));
        };
        let found = items.into_iter().find(|o| self.is_mine(o)).map(Arc::new);
        Ok(self.show(Some(found)))
    }

    fn changed(&mut self, change: Change) -> Flow {
        match change {
            Change::Upsert(o) if self.is_mine(&o) => self.show(Some(Some(Arc::new(o)))),
            Change::Delete(o) if self.is_mine(&o) => self.show(Some(None)),
            _ => self.show_unchanged(),
        }
    }

    fn list_failed(&mut self, error: &ApiError) -> Flow {
        if matches!(error.code(), Some(401 | 403 | 404 | 405)) {
            log::warn!(
                "watching {}: {}; configMaps and secrets are read periodically instead",
                self.path,
                error
            );
            self.refused.store(true, Ordering::Relaxed);
            return Flow::Stop;
        }
        self.show(None)
    }

    fn rewatch(&mut self) -> Flow {
        self.show_unchanged()
    }
}

impl ObjectWatch {
    /// Stop when idle, else leave what the watch shows as it is.
    fn show_unchanged(&self) -> Flow {
        let now = crate::clock::now_unix().as_secs_f64();
        match lock(&self.entries).get(&self.path) {
            Some(e) if now - e.last_used < IDLE_SECS => Flow::Continue,
            _ => Flow::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_single_configmaps_and_secrets_are_watched() {
        let t = watch_target("/api/v1/namespaces/default/configmaps/kube-root-ca.crt").unwrap();
        assert_eq!(
            t.list_path,
            "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dkube-root-ca.crt"
        );
        assert_eq!(t.name, "kube-root-ca.crt");
        assert!(watch_target("/api/v1/namespaces/a/secrets/s").is_some());
        for other in [
            "/api/v1/namespaces/default/services",
            "/api/v1/namespaces/default/services/kubernetes",
            "/api/v1/namespaces/default/configmaps",
            "/api/v1/namespaces/default/configmaps/a/b",
            "/api/v1/nodes/n",
        ] {
            assert!(watch_target(other).is_none(), "{}", other);
        }
    }

    fn watcher(entries: &Arc<Mutex<HashMap<String, Entry>>>) -> ObjectWatch {
        ObjectWatch {
            entries: entries.clone(),
            refused: Arc::new(AtomicBool::new(false)),
            path: "/api/v1/namespaces/d/configmaps/c".into(),
            name: "c".into(),
        }
    }

    #[test]
    fn the_watch_shows_the_object_its_changes_and_its_deletion_and_stops_when_idle() {
        let entries = Arc::new(Mutex::new(HashMap::new()));
        let now = crate::clock::now_unix().as_secs_f64();
        lock(&entries).insert(
            "/api/v1/namespaces/d/configmaps/c".to_string(),
            Entry {
                watching: true,
                last_used: now,
                ..Entry::default()
            },
        );
        let mut w = watcher(&entries);
        let shown = |entries: &Arc<Mutex<HashMap<String, Entry>>>| {
            lock(entries)
                .get("/api/v1/namespaces/d/configmaps/c")
                .and_then(|e| e.watched.clone())
        };
        let c = |v: &str| json!({"metadata": {"name": "c"}, "data": {"k": v}});
        assert!(matches!(w.listed(None, "1"), Err(ApiError::Decode(_))));
        assert!(matches!(
            w.listed(Some(vec![c("1")]), "1"),
            Ok(Flow::Continue)
        ));
        assert_eq!(shown(&entries).unwrap().unwrap()["data"]["k"], "1");
        assert_eq!(w.changed(Change::Upsert(c("2"))), Flow::Continue);
        assert_eq!(shown(&entries).unwrap().unwrap()["data"]["k"], "2");
        // Another object in the stream (it cannot be, with the selector) changes nothing.
        w.changed(Change::Upsert(json!({"metadata": {"name": "x"}})));
        assert_eq!(shown(&entries).unwrap().unwrap()["data"]["k"], "2");
        assert_eq!(w.changed(Change::Delete(c("2"))), Flow::Continue);
        assert!(shown(&entries).unwrap().is_none());
        // Cut off: reads go to the API server again.
        assert_eq!(
            w.list_failed(&ApiError::Transport("down".into())),
            Flow::Continue
        );
        assert!(shown(&entries).is_none());
        // Nobody read it for IDLE_SECS: the watch ends, and its entry goes.
        lock(&entries)
            .get_mut("/api/v1/namespaces/d/configmaps/c")
            .unwrap()
            .last_used = now - IDLE_SECS - 1.0;
        assert_eq!(w.rewatch(), Flow::Stop);
        w.forget();
        assert!(lock(&entries).is_empty());
    }

    #[test]
    fn a_refused_watch_turns_watching_off() {
        let entries = Arc::new(Mutex::new(HashMap::new()));
        let mut w = watcher(&entries);
        let forbidden = ApiError::Status {
            code: 403,
            reason: "Forbidden".into(),
            message: "no".into(),
        };
        assert_eq!(w.list_failed(&forbidden), Flow::Stop);
        assert!(w.refused.load(Ordering::Relaxed));
    }

    #[test]
    fn absent_answers_not_found() {
        let e = not_found("/api/v1/namespaces/d/configmaps/c");
        assert!(e.is_not_found());
        assert!(
            e.to_string().contains("configmaps \"c\" not found"),
            "{}",
            e
        );
    }
}

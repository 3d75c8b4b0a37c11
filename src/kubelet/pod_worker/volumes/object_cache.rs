//! configMaps and secrets read for volumes (and the Service list read for service-link
//! variables), shared by all pod workers for a short while: every API pod projects
//! `kube-root-ca.crt`, and without sharing each pod's periodic re-read would be one more GET per
//! pod per minute. This is the kubelet's TTL cache strategy for them (the
//! delay until a container sees an update is the sync period plus at most this TTL).

use crate::kube::client::{ApiClient, ApiError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long an object read from the API server is used for other reads of it.
const TTL_SECS: f64 = 30.0;

#[derive(Default)]
pub struct ObjectCache {
    /// API path -> (read at, unix seconds; the object).
    entries: Mutex<HashMap<String, (f64, Arc<Value>)>>,
}

impl ObjectCache {
    /// The object at `path`, from the cache if read less than the TTL ago. Errors (404 too)
    /// are never cached.
    pub fn get(&self, api: &ApiClient, path: &str) -> Result<Arc<Value>, ApiError> {
        let now = crate::clock::now_unix().as_secs_f64();
        if let Some((at, v)) = self.lock().get(path) {
            if now - at < TTL_SECS {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(api.get(path)?);
        let mut entries = self.lock();
        entries.retain(|_, (at, _)| now - *at < TTL_SECS);
        entries.insert(path.to_string(), (now, v.clone()));
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (f64, Arc<Value>)>> {
        // A worker that panicked while holding the lock left a map that is still whole.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

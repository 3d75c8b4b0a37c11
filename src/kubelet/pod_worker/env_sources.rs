//! What a container's environment reads from the API server: the configMaps and secrets of its
//! `envFrom` and `valueFrom` references, and the Services whose link variables it gets. They are
//! read at each container start (as the kubelet reads them from its caches), and what was read is
//! kept beside the pod (`env-sources.json`, mode 0600) so that a container restarted while the API
//! server is out of reach gets the same environment: an edge node must restart its pods offline.
//!
//! The environment itself is made by the pure `kubelet::env`; a failure there is the kubelet's
//! CreateContainerConfigError.

use super::*;
use crate::base64::base64_decode;
use crate::image::ImageConfig;
use crate::kube::client::{escape, ApiClient, ApiError};
use crate::kubelet::cluster::{node_facts, API_SOURCE};
use crate::kubelet::env::{Allocatable, Fetched, PodEnv, Service};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

const CACHE_FILE: &str = "env-sources.json";
const CACHE_VERSION: u32 = 1;

/// The objects last read for this pod's environments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvCache {
    version: u32,
    #[serde(default)]
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// The services the pod sees, once listed.
    #[serde(default)]
    services: Option<Vec<Service>>,
}

use super::container_spec::SpecError;

impl PodWorker {
    /// The environment of container `c` (`KEY=value` list, and the variables `$(VAR)` in command
    /// and args may use).
    pub(super) fn container_env(
        &self,
        image: &ImageConfig,
        c: &Container,
        field: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<String>, BTreeMap<String, String>), SpecError> {
        let api = self.ctx.cluster.get().map(|l| l.client.clone());
        let (cm_names, secret_names) = env::referenced_objects(c);
        let path = self.dir.join(CACHE_FILE);
        let mut cache = self.load_env_cache(&path);
        let before = cache.clone();
        let mut config_maps = BTreeMap::new();
        for name in cm_names {
            let got = self.fetch(api.as_deref(), "configmaps", &name, &mut cache.config_maps);
            config_maps.insert(name, got);
        }
        let mut secrets = BTreeMap::new();
        for name in secret_names {
            let got = self.fetch(api.as_deref(), "secrets", &name, &mut cache.secrets);
            secrets.insert(name, got);
        }
        let enable_service_links = self.pod.object["spec"]["enableServiceLinks"]
            .as_bool()
            .unwrap_or(true);
        let services = match api.as_deref() {
            Some(api) => self.services(api, enable_service_links, &mut cache)?,
            None => Vec::new(),
        };
        if cache != before {
            cache.version = CACHE_VERSION;
            if let Err(e) = fsutil::write_json_atomic(&path, &cache) {
                log::warn!(
                    "pod {}: saving {}: {}",
                    self.pod.full_name(),
                    path.display(),
                    e
                );
            }
        }
        let pod = PodEnv {
            namespace: &self.pod.namespace,
            field,
            containers: &self.pod.spec.containers,
            config_maps: &config_maps,
            secrets: &secrets,
            services: &services,
            enable_service_links,
            // Read from the node only for a container that asks (a dozen system calls).
            allocatable: if c.env.iter().any(|e| {
                e.value_from
                    .as_ref()
                    .is_some_and(|v| v.resource_field_ref.is_some())
            }) {
                allocatable(&self.dir)
            } else {
                Allocatable::default()
            },
        };
        match env::environment(image, c, &pod) {
            Ok(r) => {
                for message in r.skipped {
                    self.event(
                        Some(&c.name),
                        "Warning",
                        "InvalidEnvironmentVariableNames",
                        message,
                    );
                }
                Ok((r.env, r.vars))
            }
            Err(message) => {
                self.event(
                    Some(&c.name),
                    "Warning",
                    "Failed",
                    format!("Error: {}", message),
                );
                Err(SpecError {
                    reason: "CreateContainerConfigError",
                    message,
                })
            }
        }
    }

    fn load_env_cache(&self, path: &std::path::Path) -> EnvCache {
        match fsutil::read_json::<EnvCache>(path) {
            Ok(Some(c)) if c.version == CACHE_VERSION => c,
            Ok(Some(_)) | Ok(None) => EnvCache::default(),
            Err(e) => {
                log::warn!("pod {}: {}; ignoring it", self.pod.full_name(), e);
                EnvCache::default()
            }
        }
    }

    /// One configMap or secret: from the API server, else (out of reach) the copy kept.
    fn fetch(
        &self,
        api: Option<&ApiClient>,
        kind: &str,
        name: &str,
        kept: &mut BTreeMap<String, BTreeMap<String, String>>,
    ) -> Fetched {
        let Some(api) = api else {
            return Fetched::NoApi;
        };
        let path = format!(
            "/api/v1/namespaces/{}/{}/{}",
            escape(&self.pod.namespace),
            kind,
            escape(name)
        );
        let what = format!(
            "{} {}/{}",
            kind.trim_end_matches('s'),
            self.pod.namespace,
            name
        );
        match api.get(&path) {
            Ok(obj) => match string_data(kind, &obj) {
                Ok(data) => {
                    kept.insert(name.to_string(), data.clone());
                    Fetched::Found(data)
                }
                Err(e) => Fetched::Failed(format!("{}: {}", what, e)),
            },
            Err(e) if e.is_not_found() => {
                kept.remove(name);
                Fetched::NotFound
            }
            Err(e) => self.kept_copy(&what, e, kept.get(name).cloned()),
        }
    }

    fn kept_copy(
        &self,
        what: &str,
        e: ApiError,
        kept: Option<BTreeMap<String, String>>,
    ) -> Fetched {
        match kept {
            Some(data) => {
                log::warn!(
                    "pod {}: {}: {}; using the copy read earlier",
                    self.pod.full_name(),
                    what,
                    e
                );
                Fetched::Found(data)
            }
            None => Fetched::Failed(e.to_string()),
        }
    }

    /// The services whose link variables the pod may get: the master service and, with
    /// `enableServiceLinks`, the pod's namespace's. Read by LIST at container start (shared for
    /// up to 30 s with the other pods); out of reach, the list kept from last time. With neither, a static pod starts without them, and
    /// so does an API pod when the API server is out of reach (its variables would point at a
    /// server the pod cannot reach anyway, and an edge pod must start offline); an API server that
    /// answers with an error holds an API pod, as the kubelet holds it until its service informer
    /// has synced (in-cluster clients need KUBERNETES_SERVICE_HOST).
    fn services(
        &self,
        api: &ApiClient,
        enable_links: bool,
        cache: &mut EnvCache,
    ) -> Result<Vec<Service>, SpecError> {
        let ns = &self.pod.namespace;
        // Through the node's short-lived object cache: pods started together share one LIST
        // (the kubelet reads services from an informer, not per start).
        let objects = &self.ctx.volume_objects;
        let listed = (|| -> Result<Vec<Service>, ApiError> {
            let mut out = Vec::new();
            if enable_links {
                let path = format!("/api/v1/namespaces/{}/services", escape(ns));
                let list = objects.get(api, &path)?;
                out.extend(items(&list).filter_map(Service::from_json));
            }
            if !(enable_links && ns == "default") {
                match objects.get(api, "/api/v1/namespaces/default/services/kubernetes") {
                    Ok(s) => out.extend(Service::from_json(&s)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })();
        match listed {
            Ok(list) => {
                cache.services = Some(list.clone());
                Ok(list)
            }
            Err(e) => match &cache.services {
                Some(kept) => {
                    log::warn!(
                        "pod {}: listing services: {}; using the list read earlier",
                        self.pod.full_name(),
                        e
                    );
                    Ok(kept.clone())
                }
                None if self.pod.source.as_os_str() != API_SOURCE
                    || matches!(e, ApiError::Transport(_)) =>
                {
                    log::warn!(
                        "pod {}: listing services: {}; starting without service variables",
                        self.pod.full_name(),
                        e
                    );
                    Ok(Vec::new())
                }
                None => Err(SpecError {
                    reason: "CreateContainerConfigError",
                    message: format!(
                        "services have not yet been read at least once, cannot construct envvars: {}",
                        e
                    ),
                }),
            },
        }
    }
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}

/// The values a configMap or secret gives environment variables: a configMap's `data` (as the
/// kubelet, not `binaryData`), a secret's `data` decoded from base64. Bytes that are not UTF-8
/// become U+FFFD, as they do when the runtime's JSON carries them.
fn string_data(kind: &str, obj: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let s = v.as_str().unwrap_or_default();
        let value = if kind == "secrets" {
            let bytes =
                base64_decode(s).ok_or_else(|| format!("key {:?} is not valid base64", k))?;
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            s.to_string()
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// The node's allocatable cpu, memory and ephemeral storage, as the Node reports them (capacity
/// less the hard eviction thresholds): what a container without a limit can use at most.
fn allocatable(pod_dir: &std::path::Path) -> Allocatable {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let memory = node_facts::meminfo_kib("MemTotal").unwrap_or(0) * 1024;
    let (disk, _) = node_facts::disk(pod_dir).unwrap_or((0, 0));
    Allocatable {
        cpu_millis: cpus * 1000,
        memory_bytes: memory.saturating_sub(node_facts::EVICTION_MEMORY_BYTES),
        ephemeral_storage_bytes: disk / 100 * (100 - node_facts::EVICTION_NODEFS_PERCENT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_data_for_env() {
        let cm = json!({"data": {"A": "1"}, "binaryData": {"B": "AAE="}});
        let d = string_data("configmaps", &cm).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d["A"], "1");
        let s = json!({"data": {"P": "aHVudGVyMg==", "X": "/w=="}});
        let d = string_data("secrets", &s).unwrap();
        assert_eq!(d["P"], "hunter2");
        assert_eq!(d["X"], "\u{fffd}");
        let bad = json!({"data": {"P": "!!"}});
        let e = string_data("secrets", &bad).unwrap_err();
        assert!(e.contains("\"P\""), "{}", e);
    }

    #[test]
    fn cache_round_trip() {
        let mut c = EnvCache {
            version: CACHE_VERSION,
            ..Default::default()
        };
        c.secrets
            .insert("s".into(), [("k".to_string(), "v".to_string())].into());
        c.services = Some(vec![]);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<EnvCache>(&text).unwrap(), c);
    }
}

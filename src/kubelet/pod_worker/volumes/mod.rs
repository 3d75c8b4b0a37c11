//! Pod volumes, made under `<pod dir>/volumes/<name>` and bind-mounted into containers:
//! - `emptyDir`: a directory that lives as long as the pod; `medium: Memory` is a tmpfs
//!   (`sizeLimit` as its size). `sizeLimit` on disk is not enforced (the kubelet evicts the pod).
//! - `hostPath`: a host path, checked (or created) as its `type` says (`host_path.rs`);
//! - `configMap`, `secret`, `downwardAPI` and `projected` (which combines them with
//!   `serviceAccountToken`): files written with the kubelet's AtomicWriter layout
//!   (`atomic_writer.rs`), mounted read-only, with `defaultMode`, items' `mode` and the pod's
//!   `fsGroup`. Secret, projected and downwardAPI volumes are on a tmpfs, as the kubelet keeps
//!   them. In cluster mode the sources are read again every minute (the kubelet's sync period)
//!   and a changed payload is swapped in through `..data`. This is what the `kube-api-access-*`
//!   volume every API pod gets needs: a token from the TokenRequest API (refreshed at 80 % of its
//!   lifetime), the `kube-root-ca.crt` configMap and the namespace.
//!
//! Offline autonomy: a volume made once has a `.<name>.complete` marker, and the pod runs from
//! the last copy when the API server is out of reach. For tmpfs volumes that copy is also kept
//! on disk (`.<name>.payload`, mode 0600, in the root-only volumes directory), since a reboot
//! empties the tmpfs: the trade-off the kubelet does not make (it never writes secrets to disk)
//! so that a device rebooted without uplink can start its pods again.
//!
//! Sources that need the API server are unavailable in standalone mode: such a pod waits in
//! ContainerCreating with the reason in its status, as the kubelet's FailedMount does.

mod atomic_writer;
mod host_path;
mod memory;
mod object_cache;
mod tmpfs;

pub use object_cache::ObjectCache;

use super::*;
use crate::base64::base64_decode;
use crate::kube::client::{escape, ApiClient};
use atomic_writer::File;
use serde_json::{json, Value};
use std::path::Path;

/// The kubelet refreshes a projected token once 80 % of its lifetime has passed.
const TOKEN_REFRESH_FRACTION: f64 = 0.8;

/// How often the sources of configMap, secret and projected volumes are read again in cluster
/// mode: the kubelet's pod sync period (`--sync-frequency`, 1 minute) ...
const VOLUME_RESYNC_SECS: f64 = 60.0;
/// ... plus up to this fraction of it at random, so that pods do not all ask at once.
const VOLUME_RESYNC_JITTER: f64 = 0.1;

/// Volumes of a pod, once made.
#[derive(Default)]
pub(super) struct PodVolumes {
    /// volume name -> host path.
    pub paths: std::collections::BTreeMap<String, PathBuf>,
    /// When the volumes must be made again: a token to renew, sources to read again (unix s).
    pub refresh_at: Option<f64>,
    /// Service-account tokens ("<volume>/<path>" -> token, refresh time), kept until due.
    tokens: std::collections::BTreeMap<String, (String, f64)>,
}

/// Volume kinds whose files come from objects (the AtomicWriter ones); mounted read-only.
fn is_projection(src: &std::collections::BTreeMap<String, Value>) -> bool {
    ["configMap", "secret", "downwardAPI", "projected"]
        .iter()
        .any(|k| src.contains_key(*k))
}

/// Projection kinds the kubelet keeps on tmpfs.
fn in_memory(src: &std::collections::BTreeMap<String, Value>) -> bool {
    ["secret", "downwardAPI", "projected"]
        .iter()
        .any(|k| src.contains_key(*k))
}

/// Volume kinds read from the API server (and so read again periodically).
fn from_api(src: &std::collections::BTreeMap<String, Value>) -> bool {
    ["configMap", "secret", "projected"]
        .iter()
        .any(|k| src.contains_key(*k))
}

/// Unmounts every volume mount of the pod (tmpfs emptyDirs and projections) from what the
/// kernel shows, so a restarted agent removes what an earlier run mounted.
pub(super) fn unmount_all(pod_dir: &Path) -> Result<(), String> {
    tmpfs::unmount_all(&pod_dir.join("volumes")).map_err(|e| e.to_string())
}

impl PodWorker {
    fn volumes_dir(&self) -> PathBuf {
        self.dir.join("volumes")
    }

    /// `spec.securityContext.fsGroup`, read from the object so no typed field is needed.
    fn fs_group(&self) -> Option<u32> {
        self.pod.object["spec"]["securityContext"]["fsGroup"]
            .as_u64()
            .and_then(|g| u32::try_from(g).ok())
    }

    /// Makes (or refreshes) every volume; an error names the volume and what is wrong.
    pub(super) fn ensure_volumes(&mut self) -> Result<(), String> {
        let due = match &self.volumes {
            None => true,
            Some(v) => v.refresh_at.is_some_and(|t| now() >= t),
        };
        if !due {
            return Ok(());
        }
        let mut made = PodVolumes {
            tokens: self
                .volumes
                .as_ref()
                .map(|v| v.tokens.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        if !self.pod.spec.volumes.is_empty() {
            // Volumes hold secrets and tokens: the directory is root's alone (containers reach
            // their volumes through bind mounts, not through this path).
            let dir = self.volumes_dir();
            fsutil::ensure_dir(&dir).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| format!("{}: {}", dir.display(), e))?;
        }
        let mut resync = false;
        for vol in self.pod.spec.volumes.clone() {
            let marker = self.volumes_dir().join(format!(".{}.complete", vol.name));
            resync |= from_api(&vol.source);
            let path = match self.make_volume(&vol, &mut made) {
                Ok(path) => {
                    if !marker.exists() {
                        let _ = fsutil::write_volatile(&marker, b"", 0o600);
                    }
                    path
                }
                // The API server is out of reach (an outage, a reboot without uplink): the copy
                // made the last time is the pod's cache, and the pod runs from it.
                Err(e) if marker.exists() => {
                    log::warn!(
                        "pod {}: volume {:?}: {}; using the copy made earlier",
                        self.pod.full_name(),
                        vol.name,
                        e
                    );
                    let retry = now() + 10.0;
                    made.refresh_at = Some(made.refresh_at.map_or(retry, |r| r.min(retry)));
                    self.restore(&vol).map_err(|e| {
                        format!("MountVolume.SetUp failed for volume {:?}: {}", vol.name, e)
                    })?
                }
                Err(e) => {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume {:?}: {}",
                        vol.name, e
                    ))
                }
            };
            made.paths.insert(vol.name.clone(), path);
        }
        if resync && self.ctx.cluster.get().is_some() {
            let jitter = fsutil::random_hex(2)
                .ok()
                .and_then(|h| u16::from_str_radix(&h, 16).ok())
                .map_or(0.0, |r| f64::from(r) / f64::from(u16::MAX));
            let at = now() + VOLUME_RESYNC_SECS * (1.0 + VOLUME_RESYNC_JITTER * jitter);
            made.refresh_at = Some(made.refresh_at.map_or(at, |r| r.min(at)));
        }
        self.volumes = Some(made);
        Ok(())
    }

    /// The bind mounts of container `c`: (container path, host path, read-only). `vars` are the
    /// container's environment, for `subPathExpr`.
    pub(super) fn binds(
        &self,
        c: &Container,
        vars: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<(String, PathBuf, bool)>, String> {
        let Some(vols) = &self.volumes else {
            return Ok(Vec::new());
        };
        let c_json = self.pod.object["spec"]["containers"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == c.name.as_str()))
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::new();
        for (j, m) in c.volume_mounts.iter().enumerate() {
            let host = vols.paths.get(&m.name).ok_or_else(|| {
                format!(
                    "volumeMounts {:?}: no volume of that name in the pod",
                    m.name
                )
            })?;
            let expr = c_json["volumeMounts"][j]["subPathExpr"]
                .as_str()
                .filter(|s| !s.is_empty());
            let sub = match expr {
                Some(e) => Some(crate::kubelet::env::expand(e, vars)),
                None => m.sub_path.clone().filter(|s| !s.is_empty()),
            };
            let host = match sub {
                Some(sub) => {
                    let p = host.join(relative_path(&sub)?);
                    if !p.exists() {
                        std::fs::create_dir_all(&p)
                            .map_err(|e| format!("subPath {}: {}", p.display(), e))?;
                    }
                    p
                }
                None => host.clone(),
            };
            if !m.mount_path.starts_with('/') {
                return Err(format!(
                    "volumeMounts {:?}: mountPath {:?} must be absolute",
                    m.name, m.mount_path
                ));
            }
            // The kubelet mounts the projections read-only, whatever the mount says.
            let projection = self
                .pod
                .spec
                .volumes
                .iter()
                .any(|v| v.name == m.name && is_projection(&v.source));
            out.push((m.mount_path.clone(), host, m.read_only || projection));
        }
        Ok(out)
    }

    fn make_volume(&self, vol: &Volume, made: &mut PodVolumes) -> Result<PathBuf, String> {
        let dir = self.volumes_dir().join(relative_path(&vol.name)?);
        let src = &vol.source;
        if let Some(host) = src.get("hostPath") {
            let path = host["path"]
                .as_str()
                .ok_or("hostPath.path: Required value")?;
            host_path::check(path, host["type"].as_str().unwrap_or(""))?;
            return Ok(PathBuf::from(path));
        }
        let fresh = !dir.exists();
        fsutil::ensure_dir(&dir).map_err(|e| format!("{}: {}", dir.display(), e))?;
        if let Some(e) = src.get("emptyDir") {
            if e["medium"].as_str() == Some("Memory") {
                let size = e
                    .get("sizeLimit")
                    .and_then(crate::kube::quantity::value_to_string)
                    .map(|s| crate::kube::quantity::parse_units(&s))
                    .transpose()
                    .map_err(|err| format!("emptyDir.sizeLimit: {}", err))?;
                let mounted = crate::runtime::sandbox::is_mountpoint(&dir);
                tmpfs::ensure(&dir, size).map_err(|e| e.to_string())?;
                if !mounted {
                    self.empty_dir_perms(&dir)?;
                }
            } else if fresh {
                self.empty_dir_perms(&dir)?;
            }
            return Ok(dir);
        }
        let files = self.payload(vol, made)?;
        if in_memory(src) {
            self.mount_memory(&dir)?;
        }
        atomic_writer::write(&dir, &files, self.fs_group()).map_err(|e| e.to_string())?;
        if in_memory(src) && from_api(src) {
            self.save_payload(vol, &files)?;
        }
        Ok(dir)
    }

    /// emptyDir: world-writable (0777), and with an fsGroup group-owned with setgid, as the
    /// kubelet's SetVolumeOwnership leaves it.
    fn empty_dir_perms(&self, dir: &Path) -> Result<(), String> {
        let mut mode = 0o777;
        if let Some(gid) = self.fs_group() {
            atomic_writer::chown_group(dir, gid).map_err(|e| e.to_string())?;
            mode |= 0o2000;
        }
        atomic_writer::set_mode(dir, mode).map_err(|e| e.to_string())
    }

    /// The files of a projection volume, read from its sources.
    fn payload(&self, vol: &Volume, made: &mut PodVolumes) -> Result<Vec<File>, String> {
        let src = &vol.source;
        let default_mode = |v: &Value| v["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
        if let Some(p) = src.get("projected") {
            let mode = default_mode(p);
            for source in p["sources"].as_array().into_iter().flatten() {
                if let Some(t) = source.get("serviceAccountToken") {
                    let path = t["path"].as_str().unwrap_or("token");
                    let key = format!("{}/{}", vol.name, path);
                    let (token, refresh) = match made.tokens.get(&key) {
                        Some((tok, at)) if now() < *at => (tok.clone(), *at),
                        _ => self.service_account_token(t)?,
                    };
                    made.tokens.insert(key, (token.clone(), refresh));
                    made.refresh_at = Some(made.refresh_at.map_or(refresh, |r| r.min(refresh)));
                    files.push((path.to_string(), token.into_bytes(), mode));
                } else if let Some(c) = source.get("configMap") {
                    files.extend(self.object_files("configmaps", c, mode)?);
                } else if let Some(s) = source.get("secret") {
                    files.extend(self.object_files("secrets", s, mode)?);
                } else if let Some(d) = source.get("downwardAPI") {
                    files.extend(self.downward_files(d, mode)?);
                } else {
                    return Err(format!("projected source {} is not supported", source));
                }
            }
        } else if let Some(c) = src.get("configMap") {
            files = self.object_files("configmaps", c, default_mode(c))?;
        } else if let Some(s) = src.get("secret") {
            files = self.object_files("secrets", s, default_mode(s))?;
        } else if let Some(d) = src.get("downwardAPI") {
            files = self.downward_files(d, default_mode(d))?;
        } else {
            let kinds: Vec<&String> = src.keys().collect();
            return Err(format!(
                "volume type {:?} is not supported by tinylet",
                kinds
            ));
        }
        let mut out = Vec::with_capacity(files.len());
        for (path, data, mode) in files {
            relative_path(&path)?;
            out.push(File { path, data, mode });
        }
        Ok(out)
    }

    fn api(&self, what: &str) -> Result<&ApiClient, String> {
        self.ctx
            .cluster
            .get()
            .map(|l| l.client.as_ref())
            .ok_or_else(|| format!("{} needs the API server; tinylet runs standalone", what))
    }

    /// A token for the pod's service account, bound to the pod; and when to refresh it.
    fn service_account_token(&self, src: &Value) -> Result<(String, f64), String> {
        let api = self.api("a serviceAccountToken volume")?;
        let sa = self
            .pod
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let expiration = src["expirationSeconds"].as_i64().unwrap_or(3600);
        let mut spec = json!({
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod.name, "uid": self.pod.uid},
        });
        if let Some(aud) = src["audience"].as_str().filter(|a| !a.is_empty()) {
            spec["audiences"] = json!([aud]);
        }
        let req =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            escape(&self.pod.namespace),
            escape(&sa)
        );
        let resp = api
            .post(&path, &req)
            .map_err(|e| format!("requesting a token for service account {:?}: {}", sa, e))?;
        let token = resp["status"]["token"]
            .as_str()
            .ok_or("the TokenRequest answer has no status.token")?
            .to_string();
        let issued = now();
        let expires = resp["status"]["expirationTimestamp"]
            .as_str()
            .and_then(clock::parse_rfc3339)
            .map(|d| d.as_secs_f64())
            .unwrap_or(issued + expiration as f64);
        Ok((token, issued + (expires - issued) * TOKEN_REFRESH_FRACTION))
    }

    /// Files of a configMap or secret (`kind` is the API resource), all keys or the listed items.
    fn object_files(
        &self,
        kind: &str,
        src: &Value,
        mode: u32,
    ) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
        let name_field = if kind == "secrets" {
            "secretName"
        } else {
            "name"
        };
        let name = src[name_field].as_str().unwrap_or_default();
        let optional = src["optional"].as_bool().unwrap_or(false);
        let api = self.api(&format!("{} {:?}", kind, name))?;
        let path = format!(
            "/api/v1/namespaces/{}/{}/{}",
            escape(&self.pod.namespace),
            kind,
            escape(name)
        );
        let obj = match self.ctx.volume_objects.get(api, &path) {
            Ok(o) => o,
            Err(e) if e.is_not_found() && optional => return Ok(Vec::new()),
            Err(e) => return Err(format!("{} {:?}: {}", kind.trim_end_matches('s'), name, e)),
        };
        // Secrets' data and configMaps' binaryData are base64; configMaps' data is text.
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let decode = |k: &String, v: &Value| -> Result<(String, Vec<u8>), String> {
            let s = v.as_str().unwrap_or_default();
            base64_decode(s)
                .map(|b| (k.clone(), b))
                .ok_or_else(|| format!("{} {:?}: key {:?} is not valid base64", kind, name, k))
        };
        if kind == "secrets" {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                entries.push(decode(k, v)?);
            }
        } else {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                entries.push((
                    k.clone(),
                    v.as_str().unwrap_or_default().as_bytes().to_vec(),
                ));
            }
            for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
                entries.push(decode(k, v)?);
            }
        }
        let Some(items) = src["items"].as_array() else {
            return Ok(entries.into_iter().map(|(k, v)| (k, v, mode)).collect());
        };
        let mut out = Vec::new();
        for item in items {
            let key = item["key"].as_str().unwrap_or_default();
            let path = item["path"].as_str().unwrap_or(key);
            let item_mode = item["mode"].as_u64().map(|m| m as u32).unwrap_or(mode);
            match entries.iter().find(|(k, _)| k == key) {
                Some((_, data)) => out.push((path.to_string(), data.clone(), item_mode)),
                None if optional => {}
                None => {
                    return Err(format!(
                        "{} {:?} has no key {:?}",
                        kind.trim_end_matches('s'),
                        name,
                        key
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Registry credentials from the pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson`
    /// or `kubernetes.io/dockercfg` secrets). A secret that cannot be read is logged and skipped,
    /// as the kubelet does: the pull then shows the registry's answer.
    pub(super) fn pull_secrets(&self) -> Vec<crate::image::RegistryAuth> {
        let names: Vec<String> = self.pod.object["spec"]["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let Ok(api) = self.api("imagePullSecrets") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in names {
            let path = format!(
                "/api/v1/namespaces/{}/secrets/{}",
                escape(&self.pod.namespace),
                escape(&name)
            );
            let secret = match api.get(&path) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!(
                        "pod {}: imagePullSecret {:?}: {}",
                        self.pod.full_name(),
                        name,
                        e
                    );
                    continue;
                }
            };
            let data = &secret["data"];
            let encoded = data[".dockerconfigjson"]
                .as_str()
                .or(data[".dockercfg"].as_str());
            let parsed = encoded
                .and_then(base64_decode)
                .ok_or_else(|| "no base64 .dockerconfigjson or .dockercfg key".to_string())
                .and_then(|b| {
                    crate::image::RegistryAuth::from_docker_config(&b).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(auths) => out.extend(auths),
                Err(e) => log::warn!(
                    "pod {}: imagePullSecret {:?}: {}",
                    self.pod.full_name(),
                    name,
                    e
                ),
            }
        }
        out
    }

    fn downward_files(
        &self,
        src: &Value,
        mode: u32,
    ) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
        let mut out = Vec::new();
        for item in src["items"].as_array().into_iter().flatten() {
            let path = item["path"]
                .as_str()
                .ok_or("downwardAPI item without a path")?;
            let field = item["fieldRef"]["fieldPath"].as_str().ok_or_else(|| {
                format!("downwardAPI item {:?}: only fieldRef is supported", path)
            })?;
            let value = match field {
                "metadata.labels" => map_lines(&self.pod.meta.labels),
                "metadata.annotations" => map_lines(&self.pod.meta.annotations),
                _ => self.field(field).ok_or_else(|| {
                    format!(
                        "downwardAPI item {:?}: field {:?} is not supported",
                        path, field
                    )
                })?,
            };
            let item_mode = item["mode"].as_u64().map(|m| m as u32).unwrap_or(mode);
            out.push((path.to_string(), value.into_bytes(), item_mode));
        }
        Ok(out)
    }
}

/// `key="value"` lines, as the downward API writes label and annotation maps.
fn map_lines(m: &std::collections::BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{}={}\n", k, serde_json::Value::String(v.clone())))
        .collect()
}

/// A relative path that stays inside its directory (no `..`, not absolute, not empty).
fn relative_path(p: &str) -> Result<&Path, String> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path.is_relative()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if ok {
        Ok(path)
    } else {
        Err(format!("{:?} must be a relative path without '..'", p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert!(relative_path("token").is_ok());
        assert!(relative_path("a/b").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x"] {
            assert!(relative_path(bad).is_err(), "{}", bad);
        }
    }

    #[test]
    fn label_files() {
        let mut m = std::collections::BTreeMap::new();
        m.insert("app".to_string(), "web".to_string());
        m.insert("q".to_string(), "a\"b".to_string());
        assert_eq!(map_lines(&m), "app=\"web\"\nq=\"a\\\"b\"\n");
    }
}

//! Static pod manifests: a file holds one or more YAML (or JSON) documents, each a v1 Pod.
//! Parsing validates the fields tinylet acts on, names the offending field on error, applies the
//! API server's defaults, and gives each pod the identity the kubelet gives static pods.

use crate::kube::quantity;
use crate::kube::types::{ObjectMeta, PodSpec};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// A pod this node should run, as the kubelet would see it after admission.
#[derive(Debug, Clone)]
pub struct DesiredPod {
    pub uid: String,
    /// `<metadata.name>-<nodeName>`, as the kubelet names static pods.
    pub name: String,
    pub namespace: String,
    pub spec: PodSpec,
    pub meta: ObjectMeta,
    /// The whole object, defaulted, as `ps -o json` prints it (unknown fields kept). Shared:
    /// the source, the supervisor and the pod's worker hold the same one.
    pub object: std::sync::Arc<Value>,
    pub source: PathBuf,
}

impl DesiredPod {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The grace period of a pod being deleted at the API server (`deletionTimestamp` set):
    /// `deletionGracePeriodSeconds`, else the pod's own.
    pub fn deletion_grace(&self) -> Option<i64> {
        let meta = &self.object["metadata"];
        if meta["deletionTimestamp"].is_null() {
            return None;
        }
        Some(
            meta["deletionGracePeriodSeconds"]
                .as_i64()
                .or(self.spec.termination_grace_period_seconds)
                .unwrap_or(30),
        )
    }

    /// Rebuilds a pod from the object the agent stored for it (already named and defaulted).
    pub fn from_stored(
        object: impl Into<std::sync::Arc<Value>>,
        source: PathBuf,
    ) -> Result<DesiredPod, String> {
        let object = object.into();
        let meta: ObjectMeta = typed(
            object.get("metadata").cloned().unwrap_or(json!({})),
            "metadata",
        )?;
        let spec: PodSpec = typed(
            object.get("spec").cloned().ok_or("spec: Required value")?,
            "spec",
        )?;
        Ok(DesiredPod {
            uid: meta.uid.clone(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            spec,
            meta,
            object,
            source,
        })
    }
}

/// What was wrong with a manifest: the file, the document in it (0-based), the field and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestError {
    pub file: PathBuf,
    pub document: Option<usize>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(i) => write!(
                f,
                "invalid manifest {} (document {}): {}",
                self.file.display(),
                i + 1,
                self.message
            ),
            None => write!(
                f,
                "invalid manifest {}: {}",
                self.file.display(),
                self.message
            ),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Larger files are refused unread: the API server's own limit on an object is ~1.5 MiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Reads and parses one manifest file (bounded in size, UTF-8 only).
pub fn read_manifest_file(path: &Path, node_name: &str) -> Vec<Result<DesiredPod, ManifestError>> {
    let err = |message: String| {
        vec![Err(ManifestError {
            file: path.to_path_buf(),
            document: None,
            message,
        })]
    };
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| {
        use std::io::Read;
        f.take(MAX_MANIFEST_BYTES + 1).read_to_string(&mut text)
    });
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            err("file is not UTF-8 text".into())
        }
        Err(e) => err(format!("reading: {}", e)),
        Ok(n) if n as u64 > MAX_MANIFEST_BYTES => err(format!(
            "file is larger than {} MiB",
            MAX_MANIFEST_BYTES >> 20
        )),
        Ok(_) => parse_manifest(path, &text, node_name),
    }
}

/// Parses every document in `text`; each yields a pod or an error, independently of the others.
pub fn parse_manifest(
    file: &Path,
    text: &str,
    node_name: &str,
) -> Vec<Result<DesiredPod, ManifestError>> {
    let err = |document, message: String| ManifestError {
        file: file.to_path_buf(),
        document,
        message,
    };
    let docs = if file.extension().is_some_and(|e| e == "json") {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => vec![v],
            Err(e) => return vec![Err(err(None, format!("JSON syntax: {}", e)))],
        }
    } else {
        match crate::kube::yaml::documents(text) {
            Ok(docs) => docs,
            Err(e) => return vec![Err(err(None, e))],
        }
    };
    docs.into_iter()
        .enumerate()
        .filter(|(_, d)| !d.is_null()) // empty documents between `---` separators
        .map(|(i, doc)| to_pod(file, doc, node_name).map_err(|m| err(Some(i), m)))
        .collect()
}

fn to_pod(file: &Path, doc: Value, node_name: &str) -> Result<DesiredPod, String> {
    let obj = doc
        .as_object()
        .ok_or("a manifest document must be a mapping (a Pod object)")?;
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some("v1") => {}
        Some(other) => {
            return Err(format!(
                "apiVersion: Unsupported value: {:?}: supported values: \"v1\"",
                other
            ))
        }
        None => return Err("apiVersion: Required value".into()),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some("Pod") => {}
        Some(other) => {
            return Err(format!(
                "kind: Unsupported value: {:?}: supported values: \"Pod\"",
                other
            ))
        }
        None => return Err("kind: Required value".into()),
    }
    let meta: ObjectMeta = typed(
        obj.get("metadata").cloned().unwrap_or(json!({})),
        "metadata",
    )?;
    let spec: PodSpec = typed(
        obj.get("spec").cloned().ok_or("spec: Required value")?,
        "spec",
    )?;
    validate(&meta, &spec)?;
    validate_init_containers(&doc)?;
    if let Some(why) = unsupported_fields(&doc) {
        return Err(why);
    }

    let uid = static_pod_uid(&doc, node_name, file);
    let namespace = if meta.namespace.is_empty() {
        "default".to_string()
    } else {
        meta.namespace.clone()
    };
    let name = format!("{}-{}", meta.name, node_name);
    let mut object = doc;
    apply_defaults(&mut object, &name, &namespace, &uid, node_name);
    // Re-read the defaulted object so the typed view and the echoed object never disagree.
    let meta: ObjectMeta = typed(object["metadata"].clone(), "metadata")?;
    let spec: PodSpec = typed(object["spec"].clone(), "spec")?;
    Ok(DesiredPod {
        uid,
        name,
        namespace,
        spec,
        meta,
        object: object.into(),
        source: file.to_path_buf(),
    })
}

fn typed<T: serde::de::DeserializeOwned>(v: Value, prefix: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_string()
        } else {
            format!("{}.{}", prefix, path)
        };
        format!("{}: {}", field, e.into_inner())
    })
}

/// The kubelet derives a static pod's UID from its content, the node and the source file, so an
/// edit gives a new pod and an unchanged file keeps its pod across restarts.
fn static_pod_uid(doc: &Value, node_name: &str, file: &Path) -> String {
    let mut h = Sha256::new();
    // serde_json's Map is ordered by key, so this serialization is canonical.
    h.update(serde_json::to_vec(doc).unwrap_or_default());
    h.update(format!("host:{}", node_name));
    h.update(format!("file:{}", file.display()));
    crate::fsutil::hex(&h.finalize()[..16])
}

/// Fields that change what a pod means and that tinylet does not implement yet. Such a pod is
/// refused with this reason rather than run without them (a volume not mounted, variables
/// missing, a port not published). docs/CONFORMANCE.md lists every field.
pub fn unsupported_fields(object: &Value) -> Option<String> {
    let spec = &object["spec"];
    let set = |v: &Value| match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    };
    let not_yet = |field: String, what: &str| {
        Some(format!("{}: {} not supported by tinylet yet", field, what))
    };
    for (field, what) in [
        ("runtimeClassName", "runtime classes are"),
        ("readinessGates", "readiness gates are"),
        ("resourceClaims", "dynamic resource claims are"),
        ("resources", "pod-level resources are"),
    ] {
        if set(&spec[field]) {
            return not_yet(format!("spec.{}", field), what);
        }
    }
    if spec["hostUsers"] == false {
        return not_yet("spec.hostUsers".into(), "user namespaces are");
    }
    // As the kubelet on a host without AppArmor: a pod that asks for confinement is refused.
    let apparmor = |sc: &Value| {
        sc["appArmorProfile"]["type"]
            .as_str()
            .is_some_and(|t| t != "Unconfined")
    };
    let wants_apparmor = apparmor(&spec["securityContext"])
        || ["initContainers", "containers"].iter().any(|l| {
            spec[*l]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| apparmor(&c["securityContext"]))
        })
        || object["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| {
                k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                    && v != "unconfined"
            });
    if wants_apparmor {
        return Some(
            "appArmorProfile: Forbidden: AppArmor is not supported by tinylet (the pod asks for an AppArmor profile)"
                .into(),
        );
    }
    if let Some(os) = spec["os"]["name"].as_str().filter(|os| *os != "linux") {
        return Some(format!(
            "spec.os.name: Unsupported value: {:?}: this node runs linux pods",
            os
        ));
    }
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let kind = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .find(|k| *k != "name");
        if let Some(kind) = kind.filter(|k| !SUPPORTED_VOLUMES.contains(k)) {
            return not_yet(
                format!("spec.volumes[{}].{}", i, kind),
                "this volume type is",
            );
        }
    }
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let field = |f: &str| format!("spec.{}[{}].{}", list, i, f);
            for (f, what) in [
                ("stdin", "attaching stdin is"),
                ("tty", "a terminal is"),
                ("volumeDevices", "raw block volumes are"),
                ("restartPolicyRules", "container restart rules are"),
            ] {
                if set(&c[f]) {
                    return not_yet(field(f), what);
                }
            }
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let propagation = m["mountPropagation"].as_str().unwrap_or("None");
                if propagation != "None" {
                    return not_yet(
                        field(&format!("volumeMounts[{}].mountPropagation", j)),
                        &format!("{:?} is", propagation),
                    );
                }
            }
        }
    }
    None
}

/// The volume types tinylet mounts (`kubelet::pod_worker::volumes`).
const SUPPORTED_VOLUMES: &[&str] = &[
    "emptyDir",
    "hostPath",
    "configMap",
    "secret",
    "downwardAPI",
    "projected",
];

/// The API server's rules for init containers: only sidecars (`restartPolicy: Always`) may
/// have probes or lifecycle hooks, since the others must run to completion.
fn validate_init_containers(doc: &Value) -> Result<(), String> {
    let spec = &doc["spec"];
    for (i, c) in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let sidecar = c["restartPolicy"] == "Always";
        for f in [
            "lifecycle",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
        ] {
            if !sidecar && !c[f].is_null() {
                return Err(format!(
                    "spec.initContainers[{}].{}: Forbidden: may not be set for init containers without restartPolicy=Always",
                    i, f
                ));
            }
        }
    }
    for (i, c) in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !c["restartPolicy"].is_null() {
            return Err(format!(
                "spec.containers[{}].restartPolicy: Forbidden: may not be set for non-init containers",
                i
            ));
        }
    }
    Ok(())
}

fn validate(meta: &ObjectMeta, spec: &PodSpec) -> Result<(), String> {
    if meta.name.is_empty() {
        return Err("metadata.name: Required value: name or generateName is required".into());
    }
    if !is_dns_subdomain(&meta.name) {
        return Err(format!("metadata.name: Invalid value: {:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", meta.name));
    }
    if !meta.namespace.is_empty() && !is_dns_label(&meta.namespace) {
        return Err(format!("metadata.namespace: Invalid value: {:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'", meta.namespace));
    }
    if spec.containers.is_empty() {
        return Err("spec.containers: Required value".into());
    }
    if let Some(p) = &spec.restart_policy {
        if !["Always", "OnFailure", "Never"].contains(&p.as_str()) {
            return Err(format!("spec.restartPolicy: Unsupported value: {:?}: supported values: \"Always\", \"OnFailure\", \"Never\"", p));
        }
    }
    if let Some(h) = &spec.hostname {
        if !is_dns_label(h) {
            return Err(format!("spec.hostname: Invalid value: {:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'", h));
        }
    }
    if let Some(s) = spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        if !is_dns_label(s) {
            return Err(format!("spec.subdomain: Invalid value: {:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'", s));
        }
    }
    for (i, a) in spec.host_aliases.iter().enumerate() {
        if a.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "spec.hostAliases[{}].ip: Invalid value: {:?}: must be a valid IP address",
                i, a.ip
            ));
        }
        if let Some(h) = a.hostnames.iter().find(|h| !is_dns_subdomain(h)) {
            return Err(format!(
                "spec.hostAliases[{}].hostnames: Invalid value: {:?}: a lowercase RFC 1123 subdomain",
                i, h
            ));
        }
    }
    if spec.active_deadline_seconds.is_some_and(|d| d <= 0) {
        return Err("spec.activeDeadlineSeconds: Invalid value: must be greater than 0".into());
    }
    if spec.termination_grace_period_seconds.is_some_and(|g| g < 0) {
        return Err("spec.terminationGracePeriodSeconds: Invalid value: must be >= 0".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    let all = spec
        .init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{}]", i), c, true))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.containers[{}]", i), c, false)),
        );
    for (field, c, init) in all {
        if let Some(p) = c.restart_policy.as_deref().filter(|_| init) {
            if p != "Always" {
                return Err(format!(
                    "{}.restartPolicy: Unsupported value: {:?}: supported values: \"Always\"",
                    field, p
                ));
            }
        }
        if c.name.is_empty() {
            return Err(format!("{}.name: Required value", field));
        }
        if !is_dns_label(&c.name) {
            return Err(format!("{}.name: Invalid value: {:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character", field, c.name));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(format!("{}.name: Duplicate value: {:?}", field, c.name));
        }
        if c.image.trim().is_empty() {
            return Err(format!("{}.image: Required value", field));
        }
        if let Some(p) = &c.image_pull_policy {
            if !["Always", "IfNotPresent", "Never"].contains(&p.as_str()) {
                return Err(format!("{}.imagePullPolicy: Unsupported value: {:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\"", field, p));
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() {
                return Err(format!("{}.env[{}].name: Required value", field, j));
            }
            if !is_env_var_name(&e.name) {
                return Err(format!(
                    "{}.env[{}].name: Invalid value: {:?}: a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
                    field, j, e.name
                ));
            }
        }
        for (kind, map) in [
            ("limits", &c.resources.limits),
            ("requests", &c.resources.requests),
        ] {
            for (res, v) in map {
                let s = quantity::value_to_string(v).ok_or_else(|| {
                    format!(
                        "{}.resources.{}.{}: must be a quantity string",
                        field, kind, res
                    )
                })?;
                let parsed = if res == "cpu" {
                    quantity::parse_millis(&s)
                } else {
                    quantity::parse_units(&s)
                };
                parsed.map_err(|e| format!("{}.resources.{}.{}: {}", field, kind, res, e))?;
            }
        }
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_env_var_name(s: &str) -> bool {
    !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The defaults the API server (and the kubelet, for static pods) fills in.
fn apply_defaults(object: &mut Value, name: &str, namespace: &str, uid: &str, node_name: &str) {
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.insert("name".into(), json!(name));
        m.insert("namespace".into(), json!(namespace));
        m.insert("uid".into(), json!(uid));
        let ann = m.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = ann.as_object_mut() {
            a.insert("kubernetes.io/config.hash".into(), json!(uid));
            a.insert("kubernetes.io/config.source".into(), json!("file"));
        }
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert("nodeName".into(), json!(node_name));
    default_str(spec, "restartPolicy", "Always");
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "schedulerName", "default-scheduler");
    spec.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    spec.entry("securityContext").or_insert(json!({}));
    spec.entry("enableServiceLinks").or_insert(json!(true));
    spec.entry("priority").or_insert(json!(0));
    // Static pods tolerate every NoExecute taint, as the kubelet's file source makes them.
    let tolerations = spec.entry("tolerations").or_insert(json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        let ours = json!({"operator": "Exists", "effect": "NoExecute"});
        if !t.contains(&ours) {
            t.push(ours);
        }
    }
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            default_str(c, "imagePullPolicy", default_pull_policy(&image));
            default_str(c, "terminationMessagePath", "/dev/termination-log");
            default_str(c, "terminationMessagePolicy", "File");
            c.entry("resources").or_insert(json!({}));
        }
    }
}

fn default_str(m: &mut Map<String, Value>, key: &str, value: &str) {
    m.entry(key).or_insert_with(|| json!(value));
}

/// `Always` for `:latest` or an untagged image, else `IfNotPresent` (the API server's rule).
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [sleep, '3600']\n";

    fn parse(text: &str) -> Vec<Result<DesiredPod, ManifestError>> {
        parse_manifest(Path::new("/etc/tinylet/manifests/web.yaml"), text, "node1")
    }

    #[test]
    fn static_pod_identity() {
        let pods = parse(GOOD);
        let pod = pods[0].as_ref().unwrap();
        assert_eq!(pod.name, "web-node1");
        assert_eq!(pod.namespace, "default");
        assert_eq!(pod.uid.len(), 32);
        assert_eq!(pod.meta.annotations["kubernetes.io/config.hash"], pod.uid);
        assert_eq!(pod.meta.annotations["kubernetes.io/config.source"], "file");
        assert_eq!(pod.object["spec"]["nodeName"], "node1");
        assert_eq!(
            pod.object["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod.spec.restart_policy.as_deref(), Some("Always"));
        // Same content -> same UID; a formatting-only change keeps it; a real change does not.
        let again = parse(&format!("# comment\n{}", GOOD));
        assert_eq!(again[0].as_ref().unwrap().uid, pod.uid);
        let changed = parse(&GOOD.replace("3600", "3601"));
        assert_ne!(changed[0].as_ref().unwrap().uid, pod.uid);
        // The source file is part of the identity.
        let other = parse_manifest(Path::new("/x/other.yaml"), GOOD, "node1");
        assert_ne!(other[0].as_ref().unwrap().uid, pod.uid);
    }

    #[test]
    fn init_containers_follow_the_api_servers_rules() {
        for (extra, want) in [
            (
                "  initContainers:\n  - {name: i, image: busybox, livenessProbe: {exec: {command: [x]}}}\n",
                "spec.initContainers[0].livenessProbe: Forbidden",
            ),
            (
                "  initContainers:\n  - {name: i, image: busybox, restartPolicy: Never}\n",
                "spec.initContainers[0].restartPolicy: Unsupported value",
            ),
            (
                "  initContainers:\n  - {name: c, image: busybox}\n",
                "spec.containers[0].name: Duplicate value",
            ),
            (
                "    restartPolicy: Always\n",
                "spec.containers[0].restartPolicy: Forbidden",
            ),
        ] {
            let text = format!("{}{}", GOOD, extra);
            let err = parse(&text).remove(0).unwrap_err();
            assert!(err.message.contains(want), "{}", err);
        }
        let sidecar = format!(
            "{}  initContainers:\n  - {{name: s, image: busybox, restartPolicy: Always, readinessProbe: {{exec: {{command: [x]}}}}}}\n",
            GOOD
        );
        let pod = parse(&sidecar).remove(0).unwrap();
        assert_eq!(
            pod.spec.init_containers[0].restart_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(
            pod.object["spec"]["initContainers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
    }

    #[test]
    fn meaning_changing_fields_tinylet_lacks_are_refused() {
        for (extra, want) in [
            ("  runtimeClassName: kata\n", "spec.runtimeClassName"),
            (
                "  readinessGates: [{conditionType: x}]\n",
                "spec.readinessGates",
            ),
            ("  hostUsers: false\n", "spec.hostUsers"),
            (
                "  volumes: [{name: data, nfs: {server: s, path: /}}]\n",
                "spec.volumes[0].nfs",
            ),
            ("    tty: true\n", "spec.containers[0].tty"),
            (
                "  initContainers: [{name: i, image: b, volumeDevices: [{name: d, devicePath: /dev/x}]}]\n",
                "spec.initContainers[0].volumeDevices",
            ),
        ] {
            let text = format!("{}{}", GOOD, extra);
            let err = parse(&text).remove(0).unwrap_err();
            assert!(err.message.contains(want), "{}", err);
            assert!(
                err.message.contains("not supported by tinylet yet"),
                "{}",
                err
            );
        }
        let confined = format!(
            "{}    securityContext: {{appArmorProfile: {{type: RuntimeDefault}}}}\n",
            GOOD
        );
        assert!(parse(&confined)
            .remove(0)
            .unwrap_err()
            .message
            .contains("AppArmor"));
        let windows = format!("{}  os: {{name: windows}}\n", GOOD);
        assert!(parse(&windows)
            .remove(0)
            .unwrap_err()
            .message
            .contains("spec.os.name"));
        // hostPorts are mapped by the CNI portmap plugin; with hostNetwork there is nothing to map.
        let mapped = format!(
            "{}    ports: [{{containerPort: 80, hostPort: 8080}}]\n",
            GOOD
        );
        assert!(parse(&mapped)[0].is_ok(), "{:?}", parse(&mapped)[0]);
        let host = format!(
            "{}    ports: [{{containerPort: 80, hostPort: 80}}]\n  hostNetwork: true\n  os: {{name: linux}}\n",
            GOOD
        );
        assert!(parse(&host)[0].is_ok(), "{:?}", parse(&host)[0]);
        // Empty lists and maps change nothing.
        let text = format!(
            "{}    envFrom: []\n    lifecycle: {{}}\n  initContainers: []\n",
            GOOD
        );
        assert!(parse(&text)[0].is_ok());
    }

    #[test]
    fn several_documents_independent_errors() {
        let text = format!(
            "{}---\n{}---\n",
            GOOD.replace("name: web", "name: a"),
            GOOD.replace("image: busybox:1.36", "image: ''")
        );
        let pods = parse(&text);
        assert_eq!(pods.len(), 2);
        assert!(pods[0].is_ok());
        let e = pods[1].as_ref().unwrap_err();
        assert_eq!(e.document, Some(1));
        assert!(
            e.to_string()
                .contains("spec.containers[0].image: Required value"),
            "{e}"
        );
        assert!(e.to_string().contains("web.yaml"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("kind: Pod", "kind: Deployment"),
                "kind: Unsupported value",
            ),
            (
                GOOD.replace("name: web", "name: Web_1"),
                "metadata.name: Invalid value",
            ),
            (
                GOOD.replace("command: [sleep, '3600']", "command: 5"),
                "spec.containers[0].command",
            ),
            (
                GOOD.replace(
                    "    image: busybox:1.36\n",
                    "    image: busybox:1.36\n    resources: {limits: {memory: lots}}\n",
                ),
                "spec.containers[0].resources.limits.memory",
            ),
            (
                GOOD.replace("spec:\n", "spec:\n  hostname: \"bad\\nname\"\n"),
                "spec.hostname: Invalid value",
            ),
            (
                GOOD.replace(
                    "    image: busybox:1.36\n",
                    "    image: busybox:1.36\n    env: [{name: '1=X', value: v}]\n",
                ),
                "spec.containers[0].env[0].name: Invalid value",
            ),
            (
                GOOD.replace("spec:\n", "spec:\n  restartPolicy: Sometimes\n"),
                "spec.restartPolicy: Unsupported value",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n".to_string(),
                "spec: Required value",
            ),
            ("key: [unclosed\n".to_string(), "YAML syntax"),
        ];
        for (text, want) in cases {
            let got = parse(&text);
            let e = got[0].as_ref().expect_err(&text);
            assert!(e.to_string().contains(want), "want {want:?} in {e}");
        }
    }

    #[test]
    fn json_manifests() {
        let text = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"kube-system"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
        let pods = parse_manifest(Path::new("/m/p.json"), text, "n");
        let p = pods[0].as_ref().unwrap();
        assert_eq!(p.full_name(), "kube-system/j-n");
        assert_eq!(
            p.object["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
    }

    #[test]
    fn pull_policy_defaults() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(
            default_pull_policy("localhost:5000/busybox:1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("busybox@sha256:abcd"), "IfNotPresent");
    }
}

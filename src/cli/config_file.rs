//! `--config FILE`: a KubeletConfiguration (`kubelet.config.k8s.io/v1beta1`) YAML, the file the
//! kubelet reads. Each field tinylet knows becomes the default of the flag of the same meaning,
//! so the command line still wins and every value goes through the flag's own checks. Fields
//! tinylet knows but does not act on yet, and fields it does not know, are warned about; a
//! value of the wrong type is an error naming the field.

use super::args::Args;
use serde_json::Value;
use std::path::Path;

const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";

/// How a field's value becomes a flag's.
enum Kind {
    Str,
    Int,
    Bool,
    /// A Go duration string ("10s", "5m").
    Duration,
    /// `[{key, value, effect}]` -> `key=value:effect,...`
    Taints,
    /// A list of strings -> `a,b,c`.
    List,
    /// An integer that may be negative (-1: unlimited).
    SignedInt,
    /// `{signal: quantity}` -> `signal<quantity,...` (evictionHard).
    Thresholds,
}

/// KubeletConfiguration field -> (flag, kind).
const FIELDS: &[(&str, &str, Kind)] = &[
    ("staticPodPath", "pod-manifest-path", Kind::Str),
    ("podLogsDir", "pod-log-dir", Kind::Str),
    ("cgroupRoot", "cgroup-root", Kind::Str),
    ("port", "port", Kind::Int),
    ("healthzPort", "healthz-port", Kind::Int),
    ("healthzBindAddress", "healthz-bind-address", Kind::Str),
    ("maxPods", "max-pods", Kind::Int),
    ("clusterDomain", "cluster-domain", Kind::Str),
    ("containerLogMaxSize", "container-log-max-size", Kind::Str),
    ("containerLogMaxFiles", "container-log-max-files", Kind::Int),
    (
        "imageGCHighThresholdPercent",
        "image-gc-high-threshold",
        Kind::Int,
    ),
    (
        "imageGCLowThresholdPercent",
        "image-gc-low-threshold",
        Kind::Int,
    ),
    (
        "imageMinimumGCAge",
        "minimum-image-ttl-duration",
        Kind::Duration,
    ),
    ("serializeImagePulls", "serialize-image-pulls", Kind::Bool),
    (
        "maxParallelImagePulls",
        "max-parallel-image-pulls",
        Kind::Int,
    ),
    (
        "nodeStatusUpdateFrequency",
        "node-status-update-frequency",
        Kind::Duration,
    ),
    (
        "nodeStatusReportFrequency",
        "node-status-report-frequency",
        Kind::Duration,
    ),
    (
        "nodeLeaseDurationSeconds",
        "node-lease-duration-seconds",
        Kind::Int,
    ),
    ("registerWithTaints", "register-with-taints", Kind::Taints),
    ("seccompDefault", "seccomp-default", Kind::Bool),
    ("allowedUnsafeSysctls", "allowed-unsafe-sysctls", Kind::List),
    ("podPidsLimit", "pod-max-pids", Kind::SignedInt),
    ("clusterDNS", "cluster-dns", Kind::List),
    ("resolvConf", "resolv-conf", Kind::Str),
    ("podCIDR", "pod-cidr", Kind::Str),
    ("evictionHard", "eviction-hard", Kind::Thresholds),
    (
        "evictionPressureTransitionPeriod",
        "eviction-pressure-transition-period",
        Kind::Duration,
    ),
    ("address", "address", Kind::Str),
    ("tlsCertFile", "tls-cert-file", Kind::Str),
    ("tlsPrivateKeyFile", "tls-private-key-file", Kind::Str),
    (
        "serverTLSBootstrap",
        "rotate-server-certificates",
        Kind::Bool,
    ),
];

/// Fields inside `authentication` and `authorization` -> (path below the field, flag, kind).
const NESTED: &[(&str, &[&str], &str, Kind)] = &[
    (
        "authentication",
        &["x509", "clientCAFile"],
        "client-ca-file",
        Kind::Str,
    ),
    (
        "authentication",
        &["webhook", "enabled"],
        "authentication-token-webhook",
        Kind::Bool,
    ),
    (
        "authentication",
        &["anonymous", "enabled"],
        "anonymous-auth",
        Kind::Bool,
    ),
    ("authorization", &["mode"], "authorization-mode", Kind::Str),
];

/// Fields tinylet reads but does not act on yet (the features come with later issues).
const NOT_YET: &[&str] = &[
    "readOnlyPort",
    "rotateCertificates",
    "cgroupDriver",
    "featureGates",
];

/// Reads `path` and sets the flags it implies as defaults of `args`. Returns the warnings to log
/// (the logger is not up yet when this runs).
pub fn apply(path: &Path, args: &mut Args) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading --config {}: {}", path.display(), e))?;
    if text.len() > 1 << 20 {
        return Err(format!("--config {}: larger than 1 MiB", path.display()));
    }
    let at = |e: String| format!("--config {}: {}", path.display(), e);
    let doc = crate::kube::yaml::documents(&text)
        .map_err(at)?
        .into_iter()
        .find(|d| !d.is_null())
        .ok_or_else(|| at("the file is empty".into()))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| at("a KubeletConfiguration must be a mapping".into()))?;
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => {
            return Err(at(format!(
                "apiVersion: Unsupported value: {:?}: supported values: {:?}",
                other.unwrap_or(""),
                API_VERSION
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some("KubeletConfiguration") => {}
        other => {
            return Err(at(format!(
                "kind: Unsupported value: {:?}: supported values: \"KubeletConfiguration\"",
                other.unwrap_or("")
            )))
        }
    }
    let mut warnings = Vec::new();
    for (field, value) in obj {
        if field == "apiVersion" || field == "kind" || value.is_null() {
            continue;
        }
        if let Some((_, flag, kind)) = FIELDS.iter().find(|(f, _, _)| f == field) {
            let v = flag_value(field, value, kind).map_err(at)?;
            args.set_default(flag, v);
        } else if NESTED.iter().any(|(f, _, _, _)| f == field) {
            nested(field, value, args, &mut warnings).map_err(at)?;
        } else if NOT_YET.contains(&field.as_str()) {
            warnings.push(format!(
                "--config {}: {} is not used by tinylet yet; ignored",
                path.display(),
                field
            ));
        } else {
            warnings.push(format!(
                "--config {}: unknown field {:?}; ignored",
                path.display(),
                field
            ));
        }
    }
    Ok(warnings)
}

/// `authentication: {x509: {clientCAFile}, webhook: {enabled}, anonymous: {enabled}}` and
/// `authorization: {mode}`; other sub-fields (cache TTLs) are warned about.
fn nested(
    field: &str,
    value: &Value,
    args: &mut Args,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    if !value.is_object() {
        return Err(format!(
            "{}: Invalid value: {}: must be a mapping",
            field, value
        ));
    }
    for (_, path, flag, kind) in NESTED.iter().filter(|(f, _, _, _)| *f == field) {
        let v = path.iter().fold(value, |v, p| &v[*p]);
        if !v.is_null() {
            let name = format!("{}.{}", field, path.join("."));
            args.set_default(flag, flag_value(&name, v, kind)?);
        }
    }
    // Leaves this list does not know, e.g. webhook.cacheTTL.
    let mut unknown = Vec::new();
    collect_leaves(value, field, &mut unknown);
    for leaf in unknown {
        let known = NESTED
            .iter()
            .any(|(f, p, _, _)| leaf == format!("{}.{}", f, p.join(".")));
        if !known {
            warnings.push(format!("{} is not used by tinylet; ignored", leaf));
        }
    }
    Ok(())
}

fn collect_leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v.as_object() {
        Some(map) => {
            for (k, child) in map {
                collect_leaves(child, &format!("{}.{}", prefix, k), out);
            }
        }
        None if !v.is_null() => out.push(prefix.to_string()),
        None => {}
    }
}

fn flag_value(field: &str, v: &Value, kind: &Kind) -> Result<String, String> {
    let wrong = |what: &str| format!("{}: Invalid value: {}: must be {}", field, v, what);
    match kind {
        Kind::Str => v
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| wrong("a string")),
        Kind::Int => v
            .as_u64()
            .map(|n| n.to_string())
            .ok_or_else(|| wrong("a non-negative integer")),
        Kind::Bool => v
            .as_bool()
            .map(|b| b.to_string())
            .ok_or_else(|| wrong("true or false")),
        Kind::Duration => {
            let s = v
                .as_str()
                .ok_or_else(|| wrong("a duration string such as \"10s\""))?;
            crate::config::parse_duration(s).map_err(|e| format!("{}: {}", field, e))?;
            Ok(s.to_string())
        }
        Kind::List => {
            let list = v.as_array().ok_or_else(|| wrong("a list of strings"))?;
            let items: Option<Vec<&str>> = list.iter().map(Value::as_str).collect();
            Ok(items.ok_or_else(|| wrong("a list of strings"))?.join(","))
        }
        Kind::Thresholds => {
            let map = v
                .as_object()
                .ok_or_else(|| wrong("a map of signal to quantity"))?;
            let mut out = Vec::new();
            for (signal, q) in map {
                let q = q.as_str().ok_or_else(|| {
                    format!(
                        "{}.{}: Invalid value: {}: must be a string",
                        field, signal, q
                    )
                })?;
                crate::kubelet::eviction::thresholds::parse_one(signal, q)
                    .map_err(|e| format!("{}.{}: {}", field, signal, e))?;
                out.push(format!("{}<{}", signal, q));
            }
            Ok(out.join(","))
        }
        Kind::SignedInt => v
            .as_i64()
            .map(|n| n.to_string())
            .ok_or_else(|| wrong("an integer")),
        Kind::Taints => {
            let list = v.as_array().ok_or_else(|| wrong("a list of taints"))?;
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                let key = t["key"]
                    .as_str()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| format!("{}[{}].key: Required value", field, i))?;
                let effect = t["effect"]
                    .as_str()
                    .ok_or_else(|| format!("{}[{}].effect: Required value", field, i))?;
                out.push(match t["value"].as_str().filter(|v| !v.is_empty()) {
                    Some(val) => format!("{}={}:{}", key, val, effect),
                    None => format!("{}:{}", key, effect),
                });
            }
            Ok(out.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "tinylet-config-{}-{}.yaml",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn args(cli: &[&str]) -> Args {
        let v: Vec<String> = cli.iter().map(|s| s.to_string()).collect();
        Args::parse(&v, crate::cli::RUN_FLAGS, crate::cli::RUN_BOOL_FLAGS).unwrap()
    }

    #[test]
    fn fields_become_flag_defaults_and_flags_win() {
        let p = write(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             staticPodPath: /etc/k/manifests\nmaxPods: 50\nserializeImagePulls: false\n\
             nodeStatusUpdateFrequency: 20s\nclusterDNS: [10.96.0.10]\nsurprise: 1\n\
             registerWithTaints:\n- {key: edge, value: 'true', effect: NoSchedule}\n",
        );
        let mut a = args(&["--max-pods", "7"]);
        let warnings = apply(&p, &mut a).unwrap();
        assert_eq!(a.get("pod-manifest-path"), Some("/etc/k/manifests"));
        assert_eq!(a.get("max-pods"), Some("7"), "the command line wins");
        assert_eq!(a.get("serialize-image-pulls"), Some("false"));
        assert_eq!(a.get("node-status-update-frequency"), Some("20s"));
        assert_eq!(a.get("register-with-taints"), Some("edge=true:NoSchedule"));
        assert_eq!(a.get("cluster-dns"), Some("10.96.0.10"));
        assert!(!warnings.iter().any(|w| w.contains("clusterDNS")));
        assert!(warnings
            .iter()
            .any(|w| w.contains("unknown field \"surprise\"")));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn security_fields() {
        let p = write(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             seccompDefault: true\npodPidsLimit: -1\nallowedUnsafeSysctls: [net.core.*, kernel.msgmax]\n",
        );
        let mut a = args(&[]);
        apply(&p, &mut a).unwrap();
        assert_eq!(a.get("seccomp-default"), Some("true"));
        assert_eq!(a.get("pod-max-pids"), Some("-1"));
        assert_eq!(
            a.get("allowed-unsafe-sysctls"),
            Some("net.core.*,kernel.msgmax")
        );
        std::fs::remove_file(p).unwrap();
        let p = write(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             allowedUnsafeSysctls: [1]\n",
        );
        assert!(apply(&p, &mut args(&[]))
            .unwrap_err()
            .contains("allowedUnsafeSysctls: Invalid value"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn eviction_fields() {
        let p = write(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             evictionHard:\n  memory.available: 200Mi\n  nodefs.available: '5%'\n\
             evictionPressureTransitionPeriod: 30s\n",
        );
        let mut a = args(&[]);
        assert!(apply(&p, &mut a).unwrap().is_empty());
        let hard = a.get("eviction-hard").unwrap();
        let mut items: Vec<&str> = hard.split(',').collect();
        items.sort();
        assert_eq!(items, ["memory.available<200Mi", "nodefs.available<5%"]);
        assert_eq!(a.get("eviction-pressure-transition-period"), Some("30s"));
        std::fs::remove_file(p).unwrap();
        let p = write(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             evictionHard: {cpu.available: 1}\n",
        );
        assert!(apply(&p, &mut args(&[]))
            .unwrap_err()
            .contains("evictionHard.cpu.available"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn node_api_fields() {
        let p = write(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             address: 127.0.0.1\ntlsCertFile: /c.pem\ntlsPrivateKeyFile: /k.pem\n\
             serverTLSBootstrap: true\nauthentication:\n  x509: {clientCAFile: /ca.pem}\n\
             \x20 webhook: {enabled: false, cacheTTL: 2m}\n  anonymous: {enabled: true}\n\
             authorization: {mode: AlwaysAllow}\n",
        );
        let mut a = args(&["--authorization-mode", "Webhook"]);
        let warnings = apply(&p, &mut a).unwrap();
        assert_eq!(a.get("address"), Some("127.0.0.1"));
        assert_eq!(a.get("tls-cert-file"), Some("/c.pem"));
        assert_eq!(a.get("tls-private-key-file"), Some("/k.pem"));
        assert_eq!(a.get("rotate-server-certificates"), Some("true"));
        assert_eq!(a.get("client-ca-file"), Some("/ca.pem"));
        assert_eq!(a.get("authentication-token-webhook"), Some("false"));
        assert_eq!(a.get("anonymous-auth"), Some("true"));
        assert_eq!(
            a.get("authorization-mode"),
            Some("Webhook"),
            "the flag wins"
        );
        assert_eq!(
            warnings,
            vec!["authentication.webhook.cacheTTL is not used by tinylet; ignored"]
        );
        std::fs::remove_file(p).unwrap();
        let p = write(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             authentication: {anonymous: {enabled: yes please}}\n",
        );
        let err = apply(&p, &mut args(&[])).unwrap_err();
        assert!(
            err.contains("authentication.anonymous.enabled: Invalid value"),
            "{}",
            err
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        for (text, want) in [
            ("kind: KubeletConfiguration\n", "apiVersion: Unsupported value"),
            ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: Pod\n", "kind: Unsupported value"),
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: lots\n",
                "maxPods: Invalid value",
            ),
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nimageMinimumGCAge: soon\n",
                "imageMinimumGCAge",
            ),
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nregisterWithTaints: [{value: x}]\n",
                "registerWithTaints[0].key: Required value",
            ),
            ("- [", "YAML"),
        ] {
            let p = write(text);
            let err = apply(&p, &mut args(&[])).unwrap_err();
            assert!(err.contains(want), "{:?}: {}", text, err);
            assert!(err.contains(&p.display().to_string()), "{}", err);
            std::fs::remove_file(p).unwrap();
        }
    }
}

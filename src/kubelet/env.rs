//! What a container runs with, resolved as the kubelet does: environment (image env, then
//! service links, `envFrom`, and the container's own `env` with `$(VAR)` expansion and
//! `valueFrom`), command and args against the image's Entrypoint/Cmd, working directory and user.
//!
//! Pure: the configMaps, secrets and services the environment reads are looked up by the pod
//! worker (`pod_worker/env_sources.rs`) and handed in as a [`PodEnv`].

mod resources;
mod service_links;

pub use resources::Allocatable;
pub use service_links::Service;

use crate::image::ImageConfig;
use crate::kube::types::{Container, EnvVar, EnvVarSource, KeySelector};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Expands `$(NAME)` from `vars`; `$$` escapes a `$`; unknown references stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    expand_with(s, &|name| vars.get(name).map(String::as_str))
}

fn expand_with<'a>(s: &str, lookup: &dyn Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(close) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + close];
                    match lookup(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + close]),
                    }
                    i += 3 + close;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A configMap or secret as it was looked up.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// Its string data (a secret's values decoded).
    Found(BTreeMap<String, String>),
    /// The API server says there is no such object.
    NotFound,
    /// There is no API server to ask: standalone mode.
    NoApi,
    /// The API server could not be asked and no earlier copy is kept: why.
    Failed(String),
}

/// What, besides the container spec, a container's environment is made from.
pub struct PodEnv<'a> {
    pub namespace: &'a str,
    /// Downward-API field paths (`metadata.name`, `status.podIP`...).
    pub field: &'a dyn Fn(&str) -> Option<String>,
    /// The pod's containers, for a `resourceFieldRef` naming another container.
    pub containers: &'a [Container],
    /// The configMaps and secrets [`referenced_objects`] named, by name.
    pub config_maps: &'a BTreeMap<String, Fetched>,
    pub secrets: &'a BTreeMap<String, Fetched>,
    /// The services whose link variables the pod gets ([`service_links`]); none standalone.
    pub services: &'a [Service],
    pub enable_service_links: bool,
    pub allocatable: Allocatable,
}

/// A container's environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// `KEY=value`, image variables first.
    pub env: Vec<String>,
    /// What `$(VAR)` in command and args may use: the container's variables, not the image's.
    pub vars: BTreeMap<String, String>,
    /// envFrom keys skipped as invalid variable names: one message per source, the text of the
    /// kubelet's InvalidEnvironmentVariableNames event.
    pub skipped: Vec<String>,
}

/// The names of the configMaps and secrets a container's environment reads.
pub fn referenced_objects(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut config_maps, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    for f in &c.env_from {
        if let Some(r) = &f.config_map_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for src in c.env.iter().filter_map(|e| e.value_from.as_ref()) {
        if let Some(r) = &src.config_map_key_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &src.secret_key_ref {
            secrets.insert(r.name.clone());
        }
    }
    (config_maps, secrets)
}

/// Variables in the order they were first defined; a later definition replaces the value.
#[derive(Default)]
struct Ordered {
    order: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Ordered {
    fn set(&mut self, k: String, v: String) {
        if !self.values.contains_key(&k) {
            self.order.push(k.clone());
        }
        self.values.insert(k, v);
    }
}

/// The container's environment, as the kubelet's makeEnvironmentVariables builds it: service
/// links first, then `envFrom` sources in order, then `env` in order, each overriding what came
/// before; `$(VAR)` in an `env` value sees the variables defined before it and the service links.
/// The image's variables come first and are overridden by all of these, as the runtime does.
pub fn environment(image: &ImageConfig, c: &Container, pod: &PodEnv) -> Result<Resolved, String> {
    let services: Vec<(String, String)> = service_links::variables(&service_links::select(
        pod.namespace,
        pod.enable_service_links,
        pod.services,
    ));
    let service_map: BTreeMap<&str, &str> = services
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut own = Ordered::default();
    let mut skipped = Vec::new();
    for (i, from) in c.env_from.iter().enumerate() {
        let (kind, r, objects) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), None) => (Kind::ConfigMap, r, pod.config_maps),
            (None, Some(r)) => (Kind::Secret, r, pod.secrets),
            _ => {
                return Err(format!(
                    "envFrom[{}]: exactly one of configMapRef and secretRef must be set",
                    i
                ))
            }
        };
        let optional = r.optional.unwrap_or(false);
        let what = || format!("envFrom[{}].{}", i, kind.ref_field());
        let Some(data) = kind.lookup(objects, &r.name, optional, pod.namespace, &what)? else {
            continue;
        };
        let prefix = from.prefix.as_deref().unwrap_or("");
        let mut invalid = Vec::new();
        for (k, v) in data {
            let name = format!("{}{}", prefix, k);
            if is_env_var_name(&name) {
                own.set(name, v.clone());
            } else {
                invalid.push(name);
            }
        }
        if !invalid.is_empty() {
            skipped.push(format!(
                "Keys [{}] from the EnvFrom {} {}/{} were skipped since they are considered invalid environment variable names.",
                invalid.join(", "),
                kind.event_word(),
                pod.namespace,
                r.name
            ));
        }
    }
    for (i, e) in c.env.iter().enumerate() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) if !v.is_empty() => {
                let lookup = |name: &str| {
                    own.values
                        .get(name)
                        .map(String::as_str)
                        .or_else(|| service_map.get(name).copied())
                };
                expand_with(v, &lookup)
            }
            (_, Some(src)) => match value_from(i, e, src, c, pod)? {
                Some(v) => v,
                None => continue,
            },
            _ => String::new(),
        };
        own.set(e.name.clone(), value);
    }

    let mut all = Ordered::default();
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        all.set(k.to_string(), v.to_string());
    }
    let mut vars = BTreeMap::new();
    for (k, v) in services {
        vars.insert(k.clone(), v.clone());
        all.set(k, v);
    }
    for k in own.order {
        let v = own.values[&k].clone();
        vars.insert(k.clone(), v.clone());
        all.set(k, v);
    }
    let env = all
        .order
        .iter()
        .map(|k| format!("{}={}", k, all.values[k]))
        .collect();
    Ok(Resolved { env, vars, skipped })
}

/// The value of one `valueFrom`; `None` when an optional source is missing (the variable is not
/// set at all).
fn value_from(
    i: usize,
    e: &EnvVar,
    src: &EnvVarSource,
    c: &Container,
    pod: &PodEnv,
) -> Result<Option<String>, String> {
    let what = |field: &str| format!("env[{}] {:?}: valueFrom.{}", i, e.name, field);
    if let Some(fr) = &src.field_ref {
        return (pod.field)(&fr.field_path).map(Some).ok_or_else(|| {
            format!(
                "{}: unsupported fieldPath {:?}",
                what("fieldRef"),
                fr.field_path
            )
        });
    }
    if let Some(rf) = &src.resource_field_ref {
        return resources::value(rf, c, pod.containers, &pod.allocatable)
            .map(Some)
            .map_err(|err| format!("{}: {}", what("resourceFieldRef"), err));
    }
    let key_ref = |kind: Kind, r: &KeySelector| -> Result<Option<String>, String> {
        let optional = r.optional.unwrap_or(false);
        let objects = match kind {
            Kind::ConfigMap => pod.config_maps,
            Kind::Secret => pod.secrets,
        };
        let field = || what(kind.key_ref_field());
        let Some(data) = kind.lookup(objects, &r.name, optional, pod.namespace, &field)? else {
            return Ok(None);
        };
        match data.get(&r.key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {} in {} {}/{}",
                r.key,
                kind.title(),
                pod.namespace,
                r.name
            )),
        }
    };
    if let Some(r) = &src.config_map_key_ref {
        return key_ref(Kind::ConfigMap, r);
    }
    if let Some(r) = &src.secret_key_ref {
        return key_ref(Kind::Secret, r);
    }
    match src.other.keys().next() {
        Some(kind) => Err(format!("{} is not supported by tinylet", what(kind))),
        None => Ok(Some(String::new())),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// As the kubelet's object caches name the resource in a not-found error.
    fn event_word(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configMap",
            Kind::Secret => "secret",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
    fn ref_field(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configMapRef",
            Kind::Secret => "secretRef",
        }
    }
    fn key_ref_field(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configMapKeyRef",
            Kind::Secret => "secretKeyRef",
        }
    }

    /// The object's data; `None` if it is optional and missing. `what` names the referring field
    /// for errors of tinylet's own (standalone mode).
    fn lookup<'a>(
        self,
        objects: &'a BTreeMap<String, Fetched>,
        name: &str,
        optional: bool,
        namespace: &str,
        what: &dyn Fn() -> String,
    ) -> Result<Option<&'a BTreeMap<String, String>>, String> {
        let lower = self.event_word().to_lowercase();
        match objects.get(name) {
            Some(Fetched::Found(data)) => Ok(Some(data)),
            Some(Fetched::NotFound) | Some(Fetched::NoApi) if optional => Ok(None),
            Some(Fetched::NotFound) => Err(format!("{} {:?} not found", lower, name)),
            Some(Fetched::NoApi) => Err(format!(
                "{} {:?}: standalone mode has no API server to read {}s from",
                what(),
                name,
                self.event_word()
            )),
            Some(Fetched::Failed(why)) => Err(format!(
                "couldn't get {} {}/{}: {}",
                lower, namespace, name, why
            )),
            None => Err(format!(
                "{} {:?}: the {} was not looked up",
                what(),
                name,
                self.event_word()
            )),
        }
    }
}

/// A C identifier with dots and dashes, as envFrom keys had to be (apimachinery's IsEnvVarName):
/// `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_');
    match chars.next() {
        Some(c) if ok_first(c) => chars.all(|c| ok_first(c) || c.is_ascii_digit()),
        _ => false,
    }
}

/// Kubernetes' rules: command replaces Entrypoint (and drops Cmd), args replace Cmd.
pub fn process_args(
    image: &ImageConfig,
    c: &Container,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let args: Vec<String> = match (c.command.is_empty(), c.args.is_empty()) {
        (false, _) => c
            .command
            .iter()
            .chain(c.args.iter())
            .map(|a| expand(a, vars))
            .collect(),
        (true, false) => image
            .entrypoint
            .iter()
            .cloned()
            .chain(c.args.iter().map(|a| expand(a, vars)))
            .collect(),
        (true, true) => image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(
            "no command specified: the container has no command and the image no Entrypoint or Cmd"
                .into(),
        );
    }
    Ok(args)
}

pub fn working_dir(image: &ImageConfig, c: &Container) -> String {
    c.working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into())
}

/// uid/gid from securityContext, else the image's `User` ("uid", "uid:gid", "name", "name:group",
/// names looked up in the image's /etc/passwd and /etc/group).
pub fn user(image: &ImageConfig, c: &Container, rootfs: &Path) -> Result<(u32, u32), String> {
    let sc = c.security_context.clone().unwrap_or_default();
    let (mut uid, mut gid) = (0u32, 0u32);
    let spec = image.user.trim();
    if !spec.is_empty() {
        let (u, g) = spec
            .split_once(':')
            .map(|(u, g)| (u, Some(g)))
            .unwrap_or((spec, None));
        let (pu, pg) = lookup(rootfs, "etc/passwd", u).ok_or_else(|| {
            format!(
                "image user {:?}: no such user in the image's /etc/passwd",
                u
            )
        })?;
        uid = pu;
        gid = pg.unwrap_or(0);
        if let Some(g) = g {
            gid = lookup(rootfs, "etc/group", g)
                .map(|(id, _)| id)
                .ok_or_else(|| {
                    format!(
                        "image group {:?}: no such group in the image's /etc/group",
                        g
                    )
                })?;
        }
    }
    if let Some(u) = sc.run_as_user {
        uid = u32::try_from(u)
            .map_err(|_| format!("securityContext.runAsUser {} is out of range", u))?;
    }
    if let Some(g) = sc.run_as_group {
        gid = u32::try_from(g)
            .map_err(|_| format!("securityContext.runAsGroup {} is out of range", g))?;
    }
    Ok((uid, gid))
}

/// A numeric id is taken as is; a name is looked up in `file` (passwd or group) of the image,
/// read only if it is a regular file (never through a symlink out of the image). For passwd the
/// user's primary group comes along.
fn lookup(rootfs: &Path, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    if let Ok(n) = name.parse::<u32>() {
        return Some((n, None));
    }
    let path = rootfs.join(file);
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            let id = f[2].parse().ok()?;
            let primary_gid = if file.ends_with("passwd") {
                f.get(3).and_then(|g| g.parse().ok())
            } else {
                None
            };
            return Some((id, primary_gid));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::service_links::ServicePort;
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["cmd".into()],
            env: vec!["PATH=/bin".into(), "A=img".into()],
            working_dir: "/w".into(),
            user: String::new(),
        }
    }

    #[test]
    fn expansion_rules() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("é$(A)", &vars), "é1");
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn var_from(name: &str, src: serde_json::Value) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(serde_json::from_value(src).unwrap()),
        }
    }

    fn data(pairs: &[(&str, &str)]) -> Fetched {
        Fetched::Found(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn field(p: &str) -> Option<String> {
        match p {
            "metadata.name" => Some("web".into()),
            "status.hostIP" => Some("192.0.2.7".into()),
            _ => None,
        }
    }

    /// A pod in namespace "app" with configMap "cfg", secret "sec", and a service "db".
    struct Fixture {
        config_maps: BTreeMap<String, Fetched>,
        secrets: BTreeMap<String, Fetched>,
        services: Vec<Service>,
        links: bool,
    }

    impl Fixture {
        fn new() -> Fixture {
            let mut config_maps = BTreeMap::new();
            config_maps.insert(
                "cfg".to_string(),
                data(&[
                    ("MODE", "fast"),
                    ("LEVEL", "3"),
                    ("bad key", "x"),
                    ("1st", "y"),
                ]),
            );
            let mut secrets = BTreeMap::new();
            secrets.insert(
                "sec".to_string(),
                data(&[("PASSWORD", "hunter2"), ("MODE", "safe")]),
            );
            let services = vec![
                Service {
                    namespace: "app".into(),
                    name: "db".into(),
                    cluster_ip: "10.96.0.20".into(),
                    ports: vec![ServicePort {
                        name: String::new(),
                        port: 5432,
                        protocol: "TCP".into(),
                    }],
                },
                Service {
                    namespace: "default".into(),
                    name: "kubernetes".into(),
                    cluster_ip: "10.96.0.1".into(),
                    ports: vec![ServicePort {
                        name: "https".into(),
                        port: 443,
                        protocol: "TCP".into(),
                    }],
                },
            ];
            Fixture {
                config_maps,
                secrets,
                services,
                links: true,
            }
        }

        fn run(&self, c: &Container) -> Result<Resolved, String> {
            let pod = PodEnv {
                namespace: "app",
                field: &field,
                containers: std::slice::from_ref(c),
                config_maps: &self.config_maps,
                secrets: &self.secrets,
                services: &self.services,
                enable_service_links: self.links,
                allocatable: Allocatable {
                    cpu_millis: 4000,
                    memory_bytes: 1 << 30,
                    ephemeral_storage_bytes: 1 << 34,
                },
            };
            environment(&image(), c, &pod)
        }
    }

    fn value_of<'a>(r: &'a Resolved, k: &str) -> Option<&'a str> {
        r.env
            .iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    }

    #[test]
    fn env_overrides_and_field_refs() {
        let mut c = Container {
            env: vec![
                var("A", "pod"),
                var("B", "$(A)-x"),
                var_from(
                    "N",
                    serde_json::json!({"fieldRef": {"fieldPath": "metadata.name"}}),
                ),
            ],
            ..Default::default()
        };
        let mut f = Fixture::new();
        f.services.clear();
        let r = f.run(&c).unwrap();
        assert_eq!(r.env, vec!["PATH=/bin", "A=pod", "B=pod-x", "N=web"]);
        assert_eq!(r.vars["B"], "pod-x");
        assert!(
            !r.vars.contains_key("PATH"),
            "image variables are not for $(VAR)"
        );
        c.env[2] = var_from(
            "N",
            serde_json::json!({"fieldRef": {"fieldPath": "spec.bogus"}}),
        );
        let e = f.run(&c).unwrap_err();
        assert!(e.contains("spec.bogus") && e.contains("\"N\""), "{}", e);
    }

    #[test]
    fn env_from_order_prefix_and_invalid_names() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "envFrom": [
                {"configMapRef": {"name": "cfg"}},
                {"secretRef": {"name": "sec"}},
                {"prefix": "CFG_", "configMapRef": {"name": "cfg"}},
            ],
            "env": [{"name": "LEVEL", "value": "9"}, {"name": "A", "value": "$(MODE)/$(CFG_LEVEL)"}],
        }))
        .unwrap();
        let r = Fixture::new().run(&c).unwrap();
        // A later source overrides an earlier one; env overrides envFrom.
        assert_eq!(value_of(&r, "MODE"), Some("safe"));
        assert_eq!(value_of(&r, "PASSWORD"), Some("hunter2"));
        assert_eq!(value_of(&r, "LEVEL"), Some("9"));
        assert_eq!(value_of(&r, "CFG_LEVEL"), Some("3"));
        assert_eq!(
            value_of(&r, "CFG_1st"),
            Some("y"),
            "a prefix can make a key valid"
        );
        // $(VAR) sees envFrom values.
        assert_eq!(value_of(&r, "A"), Some("safe/3"));
        // The image's A is overridden, in its place.
        assert_eq!(r.env.iter().filter(|kv| kv.starts_with("A=")).count(), 1);
        assert!(!r
            .env
            .iter()
            .any(|kv| kv.starts_with("bad key=") || kv.starts_with("1st=")));
        assert_eq!(
            r.skipped,
            vec![
                "Keys [1st, bad key] from the EnvFrom configMap app/cfg were skipped since they are considered invalid environment variable names.",
                "Keys [CFG_bad key] from the EnvFrom configMap app/cfg were skipped since they are considered invalid environment variable names.",
            ]
        );
    }

    #[test]
    fn key_refs_and_optional() {
        let mut f = Fixture::new();
        f.config_maps.insert("gone".into(), Fetched::NotFound);
        f.secrets.insert("gone".into(), Fetched::NotFound);
        let c = |src: serde_json::Value| Container {
            env: vec![var_from("V", src)],
            ..Default::default()
        };
        let ok = |f: &Fixture, src| {
            f.run(&c(src))
                .map(|r| value_of(&r, "V").map(str::to_string))
        };
        assert_eq!(
            ok(
                &f,
                serde_json::json!({"configMapKeyRef": {"name": "cfg", "key": "MODE"}})
            )
            .unwrap(),
            Some("fast".into())
        );
        assert_eq!(
            ok(
                &f,
                serde_json::json!({"secretKeyRef": {"name": "sec", "key": "PASSWORD"}})
            )
            .unwrap(),
            Some("hunter2".into())
        );
        // Optional and missing (object or key): the variable is not set at all.
        for src in [
            serde_json::json!({"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}),
            serde_json::json!({"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}),
            serde_json::json!({"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}),
            serde_json::json!({"secretKeyRef": {"name": "sec", "key": "nope", "optional": true}}),
        ] {
            assert_eq!(ok(&f, src.clone()).unwrap(), None, "{}", src);
        }
        let err = |src| f.run(&c(src)).unwrap_err();
        assert_eq!(
            err(serde_json::json!({"configMapKeyRef": {"name": "gone", "key": "k"}})),
            "configmap \"gone\" not found"
        );
        assert_eq!(
            err(serde_json::json!({"secretKeyRef": {"name": "gone", "key": "k"}})),
            "secret \"gone\" not found"
        );
        assert_eq!(
            err(serde_json::json!({"configMapKeyRef": {"name": "cfg", "key": "nope"}})),
            "couldn't find key nope in ConfigMap app/cfg"
        );
        assert_eq!(
            err(serde_json::json!({"secretKeyRef": {"name": "sec", "key": "nope"}})),
            "couldn't find key nope in Secret app/sec"
        );
        // envFrom: optional and missing is skipped, required and missing fails.
        let from = |v| -> Container {
            serde_json::from_value(serde_json::json!({"name": "c", "envFrom": [v]})).unwrap()
        };
        assert!(f
            .run(&from(
                serde_json::json!({"secretRef": {"name": "gone", "optional": true}})
            ))
            .is_ok());
        assert_eq!(
            f.run(&from(serde_json::json!({"configMapRef": {"name": "gone"}})))
                .unwrap_err(),
            "configmap \"gone\" not found"
        );
        assert!(f
            .run(&from(serde_json::json!({"prefix": "X"})))
            .unwrap_err()
            .contains("envFrom[0]"));
    }

    #[test]
    fn standalone_and_unreachable() {
        let mut f = Fixture::new();
        f.config_maps.insert("cfg".into(), Fetched::NoApi);
        f.secrets.insert(
            "sec".into(),
            Fetched::Failed("cannot reach the API server: refused".into()),
        );
        let c = |src: serde_json::Value| Container {
            env: vec![var_from("DB_MODE", src)],
            ..Default::default()
        };
        let e = f
            .run(&c(
                serde_json::json!({"configMapKeyRef": {"name": "cfg", "key": "MODE"}}),
            ))
            .unwrap_err();
        assert!(
            e.contains("\"DB_MODE\"") && e.contains("configMapKeyRef") && e.contains("standalone"),
            "{}",
            e
        );
        // Standalone: an optional reference is skipped.
        assert!(f
            .run(&c(serde_json::json!({"configMapKeyRef": {"name": "cfg", "key": "MODE", "optional": true}})))
            .is_ok());
        // The API server out of reach with nothing kept: an error even when optional, as the
        // kubelet (only "not found" makes an optional source absent).
        let e = f
            .run(&c(serde_json::json!({"secretKeyRef": {"name": "sec", "key": "PASSWORD", "optional": true}})))
            .unwrap_err();
        assert_eq!(
            e,
            "couldn't get secret app/sec: cannot reach the API server: refused"
        );
        // Errors never carry secret values.
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn service_links_come_first_and_feed_expansion() {
        let c = Container {
            env: vec![
                var("DB_SERVICE_PORT", "6000"),
                var("URL", "pg://$(DB_SERVICE_HOST):$(DB_SERVICE_PORT)"),
                var("API", "$(KUBERNETES_SERVICE_HOST)"),
            ],
            ..Default::default()
        };
        let mut f = Fixture::new();
        let r = f.run(&c).unwrap();
        assert_eq!(value_of(&r, "DB_SERVICE_HOST"), Some("10.96.0.20"));
        assert_eq!(
            value_of(&r, "DB_PORT_5432_TCP"),
            Some("tcp://10.96.0.20:5432")
        );
        assert_eq!(
            value_of(&r, "DB_SERVICE_PORT"),
            Some("6000"),
            "env overrides links"
        );
        assert_eq!(value_of(&r, "URL"), Some("pg://10.96.0.20:6000"));
        assert_eq!(value_of(&r, "API"), Some("10.96.0.1"));
        assert_eq!(r.vars["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        // Service variables come after the image's and before the container's own.
        let pos = |k: &str| r.env.iter().position(|kv| kv.starts_with(k)).unwrap();
        assert!(
            pos("PATH=") < pos("KUBERNETES_SERVICE_HOST=")
                && pos("KUBERNETES_SERVICE_HOST=") < pos("URL=")
        );
        // enableServiceLinks: false keeps only the master service's.
        f.links = false;
        let r = f.run(&c).unwrap();
        assert_eq!(value_of(&r, "DB_SERVICE_HOST"), None);
        assert_eq!(value_of(&r, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(value_of(&r, "URL"), Some("pg://$(DB_SERVICE_HOST):6000"));
    }

    #[test]
    fn resource_field_refs_in_env() {
        let mut c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
            "env": [
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "MCPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "DISK", "valueFrom": {"resourceFieldRef": {"resource": "limits.ephemeral-storage", "divisor": "1Gi"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            ],
        }))
        .unwrap();
        let r = Fixture::new().run(&c).unwrap();
        assert_eq!(value_of(&r, "CPU"), Some("1"));
        assert_eq!(value_of(&r, "MCPU"), Some("250"));
        assert_eq!(value_of(&r, "MEM"), Some("64"));
        assert_eq!(
            value_of(&r, "DISK"),
            Some("16"),
            "no limit: node allocatable"
        );
        assert_eq!(value_of(&r, "HOST"), Some("192.0.2.7"));
        c.env[0] = var_from(
            "X",
            serde_json::json!({"resourceFieldRef": {"resource": "limits.gpu"}}),
        );
        let e = Fixture::new().run(&c).unwrap_err();
        assert!(e.contains("\"X\"") && e.contains("limits.gpu"), "{}", e);
        c.env[0] = var_from(
            "X",
            serde_json::json!({"fileKeyRef": {"path": "a", "key": "b"}}),
        );
        assert!(Fixture::new().run(&c).unwrap_err().contains("fileKeyRef"));
    }

    #[test]
    fn referenced_objects_and_names() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s1"}}],
            "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "b", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}},
            ],
        }))
        .unwrap();
        let (cms, secrets) = referenced_objects(&c);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["s1", "s2"]);
        for good in ["A", "a_b", "_x", "my.var", "-dash", "X9"] {
            assert!(is_env_var_name(good), "{}", good);
        }
        for bad in ["", "1st", "a b", "a=b", "é"] {
            assert!(!is_env_var_name(bad), "{}", bad);
        }
    }

    #[test]
    fn command_and_args_rules() {
        let vars = BTreeMap::new();
        let mut c = Container::default();
        assert_eq!(
            process_args(&image(), &c, &vars).unwrap(),
            vec!["/ep", "cmd"]
        );
        c.args = vec!["a".into()];
        assert_eq!(process_args(&image(), &c, &vars).unwrap(), vec!["/ep", "a"]);
        c.command = vec!["/bin/sh".into()];
        assert_eq!(
            process_args(&image(), &c, &vars).unwrap(),
            vec!["/bin/sh", "a"]
        );
        assert!(process_args(&ImageConfig::default(), &Container::default(), &vars).is_err());
        assert_eq!(working_dir(&image(), &c), "/w");
        assert_eq!(working_dir(&ImageConfig::default(), &c), "/");
    }

    #[test]
    fn users_numeric_named_and_overridden() {
        let root = std::env::temp_dir().join(format!("tinylet-user-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let mut img = image();
        let c = Container::default();
        img.user = "www".into();
        assert_eq!(user(&img, &c, &root).unwrap(), (33, 34));
        img.user = "www:staff".into();
        assert_eq!(user(&img, &c, &root).unwrap(), (33, 50));
        img.user = "1000:1001".into();
        assert_eq!(user(&img, &c, &root).unwrap(), (1000, 1001));
        img.user = "nobody".into();
        assert!(user(&img, &c, &root).is_err());
        let c2 = Container {
            security_context: Some(crate::kube::types::SecurityContext {
                run_as_user: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(user(&ImageConfig::default(), &c2, &root).unwrap(), (7, 0));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

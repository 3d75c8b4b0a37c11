//! The OCI runtime spec (config.json) for one container of a pod: what runc is asked to run.

use super::sandbox::Sandbox;
use super::seccomp;
use crate::kube::types::{Container, SecurityContext};
use serde_json::{json, Value};
use std::path::Path;

/// The default capability set of containerd and CRI-O for unprivileged containers.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability runc 1.1 knows, for privileged containers.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything the spec is made from, resolved by the caller.
pub struct SpecInput<'a> {
    pub container: &'a Container,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: Option<&'a str>,
    pub rootfs: &'a Path,
    pub sandbox: &'a Sandbox,
    pub host_pid: bool,
    pub cgroups_path: String,
    /// Directory holding the pod's generated `hosts`, `hostname` and `resolv.conf` (bind-mounted
    /// whether or not they exist yet: they do by the time runc runs).
    pub etc_dir: &'a Path,
    pub memory_limit: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    pub annotations: Vec<(String, String)>,
    /// Volumes: (path in the container, path on the host, read-only), in mount order.
    pub binds: Vec<(String, std::path::PathBuf, bool)>,
    /// The image's device nodes, created by runc in privileged containers only.
    pub devices: Vec<crate::image::DeviceNode>,
    /// Supplementary groups of the process (image groups, fsGroup, supplementalGroups).
    pub additional_gids: Vec<u32>,
    /// The pod's sysctls, already admitted (`linux.sysctl`).
    pub sysctls: Vec<(String, String)>,
    /// The seccomp profile; privileged containers are unconfined whatever it says.
    pub seccomp: seccomp::Profile,
    /// The pod's shared PID namespace (shareProcessNamespace), joined by path.
    pub pid_namespace: Option<std::path::PathBuf>,
}

pub fn build(input: &SpecInput) -> Result<Value, String> {
    let sc = input.container.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    let caps = capabilities(&sc, privileged)?;

    let mut namespaces = vec![json!({"type": "mount"})];
    match (&input.pid_namespace, input.host_pid) {
        (_, true) => {}
        (Some(p), false) => namespaces.push(json!({"type": "pid", "path": p})),
        (None, false) => namespaces.push(json!({"type": "pid"})),
    }
    for (kind, path) in [
        ("network", &input.sandbox.net),
        ("ipc", &input.sandbox.ipc),
        ("uts", &input.sandbox.uts),
    ] {
        if let Some(p) = path {
            namespaces.push(json!({"type": kind, "path": p}));
        }
    }

    let mut resources = json!({ "devices": [{"allow": privileged, "access": "rwm"}] });
    let mut memory = serde_json::Map::new();
    if let Some(m) = input.memory_limit {
        memory.insert("limit".into(), json!(m));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(c) = input.cpu_limit_millis {
        cpu.insert("quota".into(), json!(super::cgroups::cpu_quota(c)));
        cpu.insert("period".into(), json!(100_000));
    }
    if let Some(r) = input.cpu_request_millis {
        cpu.insert("shares".into(), json!(super::cgroups::cpu_shares(r)));
    }
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": input.cgroups_path,
        "resources": resources,
    });
    if !input.sysctls.is_empty() {
        linux["sysctl"] = input
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<String, Value>>()
            .into();
    }
    // containerd gives privileged containers no seccomp filter, whatever the profile says.
    let profile = if privileged {
        &seccomp::Profile::Unconfined
    } else {
        &input.seccomp
    };
    if let Some(filter) = seccomp::oci(profile, &caps)? {
        linux["seccomp"] = filter;
    }
    if !privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    } else if !input.devices.is_empty() {
        // The image's own device nodes, made by runc in this container's rootfs only (the
        // devices cgroup of a privileged container allows every device).
        linux["devices"] = input
            .devices
            .iter()
            .map(|d| {
                json!({
                    "path": d.path, "type": d.kind, "major": d.major, "minor": d.minor,
                    "fileMode": d.mode, "uid": d.uid, "gid": d.gid,
                })
            })
            .collect();
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": input.uid, "gid": input.gid, "additionalGids": input.additional_gids},
            "args": input.args,
            "env": input.env,
            "cwd": input.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            // The kubelet's AddNoNewPrivileges: only an explicit allowPrivilegeEscalation: false.
            "noNewPrivileges": sc.allow_privilege_escalation == Some(false),
        },
        "root": {"path": input.rootfs, "readonly": sc.read_only_root_filesystem.unwrap_or(false)},
        "mounts": mounts(input, privileged),
        "linux": linux,
        "annotations": input.annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<String, Value>>(),
    });
    if let Some(h) = input.hostname {
        spec["hostname"] = json!(h);
    }
    Ok(spec)
}

/// Every capability the agent itself may hand on: ALL_CAPS (in capability-number order) within
/// this process's bounding set. Asking runc for one outside it fails the start ("unable to apply
/// caps"), and devices and sandboxes often run without some (CAP_SYS_RESOURCE, CAP_SYS_MODULE);
/// containerd gives privileged containers the current set for the same reason.
fn all_available_caps() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// containerd's CRI order: "ALL" in add gives every capability, then "ALL" in drop removes
/// every one, then the named adds, then the named drops. So `drop: [ALL], add: [NET_BIND_SERVICE]`
/// leaves only NET_BIND_SERVICE, and `add: [ALL], drop: [CHOWN]` everything but CHOWN.
fn capabilities(sc: &SecurityContext, privileged: bool) -> Result<Vec<String>, String> {
    if privileged {
        return Ok(all_available_caps());
    }
    let norm = |c: &str| {
        let up = c.trim().to_ascii_uppercase();
        if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{}", up)
        }
    };
    let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let Some(c) = &sc.capabilities else {
        return Ok(caps);
    };
    let is_all = |x: &String| norm(x) == "CAP_ALL";
    if c.add.iter().any(is_all) {
        caps = all_available_caps();
    }
    if c.drop.iter().any(is_all) {
        caps.clear();
    }
    for (field, list) in [("add", &c.add), ("drop", &c.drop)] {
        for name in list.iter().filter(|x| !is_all(x)) {
            let n = norm(name);
            if !ALL_CAPS.contains(&n.as_str()) {
                return Err(format!(
                    "securityContext.capabilities.{}: unknown capability {:?}",
                    field, name
                ));
            }
            if field == "add" {
                if !caps.contains(&n) {
                    caps.push(n);
                }
            } else {
                caps.retain(|c| *c != n);
            }
        }
    }
    Ok(caps)
}

fn mounts(input: &SpecInput, privileged: bool) -> Vec<Value> {
    let sys_opts = if privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut m = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "bind", "source": input.sandbox.shm, "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev", "rw"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    // Being written by the pod's setup thread while the spec is built; there before runc runs.
    for f in ["hosts", "hostname", "resolv.conf"] {
        let src = input.etc_dir.join(f);
        m.push(json!({"destination": format!("/etc/{}", f), "type": "bind", "source": src, "options": ["rbind", "rprivate", "rw"]}));
    }
    for (dest, src, ro) in &input.binds {
        let mode = if *ro { "ro" } else { "rw" };
        m.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", mode]}));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::types::Capabilities;
    use std::path::PathBuf;

    fn sandbox() -> Sandbox {
        Sandbox {
            net: Some("/r/pods/u/ns/net".into()),
            ipc: Some("/r/pods/u/ns/ipc".into()),
            uts: None,
            shm: "/r/pods/u/shm".into(),
            pid: None,
        }
    }

    fn input<'a>(c: &'a Container, sb: &'a Sandbox) -> SpecInput<'a> {
        SpecInput {
            container: c,
            args: vec!["sleep".into(), "1".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            hostname: Some("web-node1"),
            rootfs: Path::new("/r/containers/x/rootfs"),
            sandbox: sb,
            host_pid: false,
            cgroups_path: "/kubepods/podu/x".into(),
            etc_dir: Path::new("/nonexistent"),
            memory_limit: Some(1 << 20),
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(250),
            annotations: vec![],
            binds: vec![],
            devices: vec![],
            additional_gids: vec![],
            sysctls: vec![],
            seccomp: seccomp::Profile::Unconfined,
            pid_namespace: None,
        }
    }

    fn caps_of(spec: &Value) -> Vec<String> {
        serde_json::from_value(spec["process"]["capabilities"]["effective"].clone()).unwrap()
    }

    #[test]
    fn capabilities_follow_containerds_all_rules() {
        let sb = sandbox();
        let with = |add: &[&str], drop: &[&str]| {
            let c = Container {
                name: "c".into(),
                image: "i".into(),
                security_context: Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: add.iter().map(|s| s.to_string()).collect(),
                        drop: drop.iter().map(|s| s.to_string()).collect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            caps_of(&build(&input(&c, &sb)).unwrap())
        };
        assert_eq!(
            with(&["net_bind_service"], &["ALL"]),
            ["CAP_NET_BIND_SERVICE"]
        );
        let all_but_chown = with(&["ALL"], &["CAP_CHOWN"]);
        assert_eq!(all_but_chown.len(), all_available_caps().len() - 1);
        assert!(!all_but_chown.contains(&"CAP_CHOWN".to_string()));
        assert!(with(&["ALL"], &["all"]).is_empty());
        assert_eq!(with(&[], &[]).len(), DEFAULT_CAPS.len());
        let e = build(&input(
            &Container {
                name: "c".into(),
                security_context: Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        add: vec![],
                        drop: vec!["NOPE".into()],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &sb,
        ))
        .unwrap_err();
        assert!(
            e.contains("capabilities.drop") && e.contains("NOPE"),
            "{}",
            e
        );
    }

    #[test]
    fn groups_sysctls_seccomp_and_shared_pid_namespace() {
        let c = Container {
            name: "c".into(),
            image: "i".into(),
            ..Default::default()
        };
        let sb = sandbox();
        let mut i = input(&c, &sb);
        i.additional_gids = vec![2000, 3000];
        i.sysctls = vec![("net.ipv4.tcp_syncookies".into(), "0".into())];
        i.seccomp = seccomp::Profile::RuntimeDefault;
        i.pid_namespace = Some("/r/pods/u/ns/pid".into());
        let spec = build(&i).unwrap();
        assert_eq!(
            spec["process"]["user"]["additionalGids"],
            json!([2000, 3000])
        );
        assert_eq!(spec["linux"]["sysctl"]["net.ipv4.tcp_syncookies"], "0");
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "pid", "path": "/r/pods/u/ns/pid"})));
        // Privileged containers run unconfined.
        let p = Container {
            security_context: Some(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }),
            ..c.clone()
        };
        let mut i = input(&p, &sb);
        i.seccomp = seccomp::Profile::RuntimeDefault;
        assert!(build(&i).unwrap()["linux"].get("seccomp").is_none());
        // hostPID wins over a shared namespace.
        let mut i = input(&c, &sb);
        i.host_pid = true;
        i.pid_namespace = Some("/x".into());
        let spec = build(&i).unwrap();
        assert!(!spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "pid"));
    }

    #[test]
    fn namespaces_join_the_sandbox_by_path() {
        let c = Container {
            name: "c".into(),
            image: "i".into(),
            ..Default::default()
        };
        let sb = sandbox();
        let spec = build(&input(&c, &sb)).unwrap();
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "pid"})));
        assert!(ns.contains(&json!({"type": "mount"})));
        assert!(ns.contains(&json!({"type": "network", "path": "/r/pods/u/ns/net"})));
        assert!(
            !ns.iter().any(|n| n["type"] == "uts"),
            "host UTS when the sandbox has none"
        );
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 1 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(spec["hostname"], "web-node1");
        assert_eq!(
            spec["root"]["path"],
            json!(PathBuf::from("/r/containers/x/rootfs"))
        );
    }

    #[test]
    fn capabilities_add_drop_and_privileged() {
        let mut c = Container {
            name: "c".into(),
            image: "i".into(),
            ..Default::default()
        };
        c.security_context = Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: vec!["NET_ADMIN".into()],
                drop: vec!["KILL".into()],
            }),
            ..Default::default()
        });
        let sb = sandbox();
        let spec = build(&input(&c, &sb)).unwrap();
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")));
        assert!(!caps.contains(&json!("CAP_KILL")));
        c.security_context
            .as_mut()
            .unwrap()
            .capabilities
            .as_mut()
            .unwrap()
            .add = vec!["BOGUS".into()];
        assert!(build(&input(&c, &sb)).unwrap_err().contains("BOGUS"));
        c.security_context = Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        });
        let spec = build(&input(&c, &sb)).unwrap();
        assert!(spec["linux"].get("maskedPaths").is_none());
        // Every capability this process holds, and only those.
        let granted = spec["process"]["capabilities"]["bounding"].clone();
        assert_eq!(granted, json!(all_available_caps()));
        assert!(granted.as_array().unwrap().len() > DEFAULT_CAPS.len());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let bnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        let has_sys_resource = bnd & (1 << 24) != 0;
        assert_eq!(
            granted
                .as_array()
                .unwrap()
                .contains(&json!("CAP_SYS_RESOURCE")),
            has_sys_resource
        );
    }
}

//! Pod admission for `spec.securityContext.sysctls`, as the kubelet's sysctl allowlist
//! (pkg/kubelet/sysctl): the safe set plus `--allowed-unsafe-sysctls` (names or `prefix*`),
//! only namespaced sysctls, and none of a namespace the pod shares with the host. A refused pod
//! is rejected with reason `SysctlForbidden`, never started.

use crate::kube::types::PodSpec;

/// The kubelet's reason for a pod refused for its sysctls.
pub const FORBIDDEN_REASON: &str = "SysctlForbidden";

/// Safe sysctls: namespaced, and unable to hurt other pods or the node.
pub const SAFE: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Namespace {
    Ipc,
    Net,
    Uts,
}

impl Namespace {
    fn name(self) -> &'static str {
        match self {
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Uts => "uts",
        }
    }
}

/// The namespace a sysctl (or a pattern's prefix) belongs to; None when it is node-wide.
fn namespace_of(name: &str) -> Option<Namespace> {
    const EXACT: &[(&str, Namespace)] = &[
        ("kernel.sem", Namespace::Ipc),
        ("kernel.shmall", Namespace::Ipc),
        ("kernel.shmmax", Namespace::Ipc),
        ("kernel.shmmni", Namespace::Ipc),
        ("kernel.shm_rmid_forced", Namespace::Ipc),
        ("kernel.hostname", Namespace::Uts),
        ("kernel.domainname", Namespace::Uts),
    ];
    const PREFIX: &[(&str, Namespace)] = &[
        ("kernel.msg", Namespace::Ipc),
        ("fs.mqueue.", Namespace::Ipc),
        ("net.", Namespace::Net),
    ];
    EXACT
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| PREFIX.iter().find(|(p, _)| name.starts_with(p)))
        .map(|(_, ns)| *ns)
}

/// `a/b/c` is the same sysctl as `a.b.c` (a name with '/' separators may hold dots, which
/// then swap roles).
pub fn normalize(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// Checks `--allowed-unsafe-sysctls` at start-up: every entry must be namespaced, and a
/// pattern may only end in `*`.
pub fn validate_allowlist(patterns: &[String]) -> Result<(), String> {
    for p in patterns {
        let (base, is_prefix) = match p.strip_suffix('*') {
            Some(b) => (b, true),
            None => (p.as_str(), false),
        };
        if base.contains('*') || base.is_empty() {
            return Err(format!(
                "--allowed-unsafe-sysctls: {:?}: only a trailing '*' is allowed",
                p
            ));
        }
        let ns = if is_prefix {
            namespace_of(base).or_else(|| namespace_of(&format!("{}x", base)))
        } else {
            namespace_of(&normalize(base))
        };
        if ns.is_none() {
            return Err(format!(
                "--allowed-unsafe-sysctls: the sysctl {:?} is not known to be namespaced",
                p
            ));
        }
    }
    Ok(())
}

/// Admits the pod's sysctls, or says which one is forbidden (the kubelet's message, which the
/// pod's status shows after "Pod was rejected: ").
pub fn admit(spec: &PodSpec, allowed_unsafe: &[String]) -> Result<(), String> {
    let Some(sc) = &spec.security_context else {
        return Ok(());
    };
    for s in &sc.sysctls {
        let name = normalize(&s.name);
        let allowed = SAFE.contains(&name.as_str())
            || allowed_unsafe.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => normalize(p) == name,
            });
        if !allowed {
            return Err(format!("forbidden sysctl: {:?} not allowlisted", name));
        }
        let host = match namespace_of(&name) {
            Some(Namespace::Net) if spec.host_network => Some(Namespace::Net),
            Some(Namespace::Ipc) if spec.host_ipc => Some(Namespace::Ipc),
            Some(Namespace::Uts) if spec.host_network => Some(Namespace::Uts),
            Some(_) => None,
            None => {
                return Err(format!(
                    "forbidden sysctl: {:?} is not known to be namespaced",
                    name
                ))
            }
        };
        if let Some(ns) = host {
            return Err(format!(
                "forbidden sysctl: {:?} not allowed with host {} enabled",
                name,
                ns.name()
            ));
        }
    }
    Ok(())
}

/// The pod's sysctls for the OCI spec (normalized names), once admitted.
pub fn for_spec(spec: &PodSpec) -> Vec<(String, String)> {
    spec.security_context
        .iter()
        .flat_map(|sc| &sc.sysctls)
        .map(|s| (normalize(&s.name), s.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::types::{PodSecurityContext, Sysctl};

    fn pod(sysctls: &[&str]) -> PodSpec {
        PodSpec {
            security_context: Some(PodSecurityContext {
                sysctls: sysctls
                    .iter()
                    .map(|n| Sysctl {
                        name: n.to_string(),
                        value: "1".into(),
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn safe_set_unsafe_patterns_and_host_namespaces() {
        assert!(admit(
            &pod(&["net.ipv4.tcp_syncookies", "kernel.shm_rmid_forced"]),
            &[]
        )
        .is_ok());
        assert_eq!(
            admit(&pod(&["net.core.somaxconn"]), &[]).unwrap_err(),
            "forbidden sysctl: \"net.core.somaxconn\" not allowlisted"
        );
        let allowed = vec!["net.core.*".to_string(), "kernel.msgmax".to_string()];
        assert!(admit(&pod(&["net.core.somaxconn", "kernel.msgmax"]), &allowed).is_ok());
        assert!(admit(&pod(&["kernel.msgmnb"]), &allowed).is_err());
        let mut host = pod(&["net.ipv4.tcp_syncookies"]);
        host.host_network = true;
        assert_eq!(
            admit(&host, &[]).unwrap_err(),
            "forbidden sysctl: \"net.ipv4.tcp_syncookies\" not allowed with host net enabled"
        );
        let mut ipc = pod(&["kernel.shm_rmid_forced"]);
        ipc.host_ipc = true;
        assert!(admit(&ipc, &[]).unwrap_err().contains("host ipc"));
        // Slash-separated names are the same sysctls.
        assert!(admit(&pod(&["net/ipv4/tcp_syncookies"]), &[]).is_ok());
        assert_eq!(
            normalize("net/ipv4/conf/eth0.100/forwarding"),
            "net.ipv4.conf.eth0/100.forwarding"
        );
        assert_eq!(
            for_spec(&pod(&["net/ipv4/tcp_syncookies"])),
            vec![("net.ipv4.tcp_syncookies".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn allowlist_entries_must_be_namespaced() {
        assert!(
            validate_allowlist(&["net.*".into(), "kernel.msg*".into(), "kernel.sem".into()])
                .is_ok()
        );
        assert!(validate_allowlist(&["kernel.panic".into()])
            .unwrap_err()
            .contains("not known to be namespaced"));
        assert!(validate_allowlist(&["vm.*".into()]).is_err());
        assert!(validate_allowlist(&["net.*.x".into()]).is_err());
    }
}

//! A container's effective security context, as the kubelet derives it (pkg/securitycontext,
//! kuberuntime's security_context*.go): the pod's `spec.securityContext` under the container's
//! own (the container wins field by field), the runAsNonRoot check, the process's groups, and
//! the seccomp profile to use.

use crate::kube::types::{Container, PodSpec, SecurityContext};
use crate::runtime::seccomp::{self, Profile};
use std::path::{Path, PathBuf};

/// The node's security settings (kubelet flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--seccomp-default` (seccompDefault): RuntimeDefault for containers that name no profile.
    pub seccomp_default: bool,
    /// `--seccomp-profile-root`: where `Localhost` profiles are (`<root-dir>/seccomp`).
    pub seccomp_profile_root: PathBuf,
    /// `--allowed-unsafe-sysctls`: names or `prefix*` patterns beyond the safe set.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// `--pod-max-pids` (podPidsLimit): the pids limit of each pod cgroup; <= 0 is unlimited.
    pub pod_pids_limit: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seccomp_default: false,
            seccomp_profile_root: PathBuf::from("/var/lib/kubelet/seccomp"),
            allowed_unsafe_sysctls: Vec::new(),
            pod_pids_limit: -1,
        }
    }
}

/// The container's securityContext with the pod-level fields filled in where it has none.
pub fn effective(pod: &PodSpec, c: &Container) -> SecurityContext {
    let mut sc = c.security_context.clone().unwrap_or_default();
    if let Some(p) = &pod.security_context {
        sc.run_as_user = sc.run_as_user.or(p.run_as_user);
        sc.run_as_group = sc.run_as_group.or(p.run_as_group);
        sc.run_as_non_root = sc.run_as_non_root.or(p.run_as_non_root);
        if sc.seccomp_profile.is_none() {
            sc.seccomp_profile = p.seccomp_profile.clone();
        }
    }
    sc
}

/// The kubelet's verifyRunAsNonRoot. `image_user` is the image config's `User`; `pod` names
/// the pod as the kubelet's messages do (`name_namespace(uid)`).
pub fn verify_run_as_non_root(
    sc: &SecurityContext,
    image_user: &str,
    pod: &str,
    container: &str,
) -> Result<(), String> {
    if sc.run_as_non_root != Some(true) {
        return Ok(());
    }
    if let Some(uid) = sc.run_as_user {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy (pod: {:?}, container: {})",
                pod, container
            ));
        }
        return Ok(());
    }
    // The CRI reports an image user as a uid when its user part is numeric, else as a name the
    // kubelet cannot check (even "nobody" could be uid 0 in the image's /etc/passwd).
    let user = image_user.trim();
    let user = user.split_once(':').map(|(u, _)| u).unwrap_or(user);
    match user.parse::<u32>() {
        _ if user.is_empty() => Err(root_error(pod, container)),
        Ok(0) => Err(root_error(pod, container)),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({}), cannot verify user is non-root (pod: {:?}, container: {})",
            user, pod, container
        )),
    }
}

fn root_error(pod: &str, container: &str) -> String {
    format!(
        "container has runAsNonRoot and image will run as root (pod: {:?}, container: {})",
        pod, container
    )
}

/// The process's supplementary groups, in containerd's order: the groups the image's
/// /etc/group lists the user in, then the pod's fsGroup and supplementalGroups (the kubelet
/// passes fsGroup first). Duplicates and the primary group are dropped.
pub fn additional_gids(
    pod: &PodSpec,
    rootfs: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<u32>, String> {
    let mut gids = image_groups(rootfs, uid);
    if let Some(p) = &pod.security_context {
        for (field, g) in p.fs_group.iter().map(|g| ("fsGroup", g)).chain(
            p.supplemental_groups
                .iter()
                .map(|g| ("supplementalGroups", g)),
        ) {
            gids.push(
                u32::try_from(*g).map_err(|_| {
                    format!("spec.securityContext.{}: {} is out of range", field, g)
                })?,
            );
        }
    }
    let mut seen = vec![gid];
    gids.retain(|g| {
        let new = !seen.contains(g);
        seen.push(*g);
        new
    });
    Ok(gids)
}

/// Groups of the image's /etc/group whose member list names the user `uid` has in the image's
/// /etc/passwd. Both files are read only when they are regular files in the image.
fn image_groups(rootfs: &Path, uid: u32) -> Vec<u32> {
    let read = |f: &str| {
        let p = rootfs.join(f);
        std::fs::symlink_metadata(&p)
            .ok()
            .filter(|m| m.is_file() && m.len() < (4 << 20))
            .and_then(|_| std::fs::read_to_string(&p).ok())
            .unwrap_or_default()
    };
    let passwd = read("etc/passwd");
    let Some(name) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    }) else {
        return Vec::new();
    };
    read("etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3)?;
            members
                .split(',')
                .any(|m| m.trim() == name)
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .collect()
}

/// The seccomp profile of a container from its effective securityContext: its own, else the
/// pod's, else RuntimeDefault with `--seccomp-default`, else Unconfined.
pub fn seccomp_profile(sc: &SecurityContext, settings: &Settings) -> Result<Profile, String> {
    let Some(p) = &sc.seccomp_profile else {
        return Ok(if settings.seccomp_default {
            Profile::RuntimeDefault
        } else {
            Profile::Unconfined
        });
    };
    match p.type_.as_str() {
        "RuntimeDefault" => Ok(Profile::RuntimeDefault),
        "Unconfined" => Ok(Profile::Unconfined),
        "Localhost" => {
            let rel = p.localhost_profile.as_deref().ok_or(
                "seccompProfile.localhostProfile: Required value: when type is Localhost",
            )?;
            seccomp::load_localhost(&settings.seccomp_profile_root, rel).map(Profile::Custom)
        }
        other => Err(format!(
            "seccompProfile.type: Unsupported value: {:?}: supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\"",
            other
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::types::{PodSecurityContext, SeccompProfile};

    fn pod_with(psc: PodSecurityContext) -> PodSpec {
        PodSpec {
            security_context: Some(psc),
            ..Default::default()
        }
    }

    #[test]
    fn container_fields_win_over_the_pods() {
        let pod = pod_with(PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        });
        let c = Container {
            security_context: Some(SecurityContext {
                run_as_user: Some(2000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sc = effective(&pod, &c);
        assert_eq!(sc.run_as_user, Some(2000));
        assert_eq!(sc.run_as_group, Some(3000));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            seccomp_profile(&sc, &Settings::default()).unwrap(),
            Profile::RuntimeDefault
        );
    }

    #[test]
    fn run_as_non_root_checks_like_the_kubelet() {
        let sc = |user: Option<i64>| SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: user,
            ..Default::default()
        };
        let pod = "web_default(u1)";
        let e = verify_run_as_non_root(&sc(None), "", pod, "c").unwrap_err();
        assert_eq!(e, "container has runAsNonRoot and image will run as root (pod: \"web_default(u1)\", container: c)");
        assert!(verify_run_as_non_root(&sc(None), "0:0", pod, "c").is_err());
        assert!(verify_run_as_non_root(&sc(None), "1000:1000", pod, "c").is_ok());
        assert!(verify_run_as_non_root(&sc(None), "nobody", pod, "c")
            .unwrap_err()
            .contains("non-numeric user (nobody)"));
        assert!(verify_run_as_non_root(&sc(Some(1000)), "", pod, "c").is_ok());
        assert!(verify_run_as_non_root(&sc(Some(0)), "1000", pod, "c")
            .unwrap_err()
            .contains("runAsUser breaks non-root policy"));
        assert!(verify_run_as_non_root(&SecurityContext::default(), "", pod, "c").is_ok());
    }

    #[test]
    fn groups_from_image_fs_group_and_supplemental_groups() {
        let root = std::env::temp_dir().join(format!("tinylet-groups-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\napp:x:1000:\nvideo:x:44:app,other\naudio:x:29:other\n",
        )
        .unwrap();
        let pod = pod_with(PodSecurityContext {
            fs_group: Some(2000),
            supplemental_groups: vec![3000, 44, 2000],
            ..Default::default()
        });
        assert_eq!(
            additional_gids(&pod, &root, 1000, 1000).unwrap(),
            vec![44, 2000, 3000]
        );
        assert_eq!(
            additional_gids(&PodSpec::default(), &root, 0, 0).unwrap(),
            Vec::<u32>::new()
        );
        let bad = pod_with(PodSecurityContext {
            supplemental_groups: vec![-1],
            ..Default::default()
        });
        assert!(additional_gids(&bad, &root, 0, 0)
            .unwrap_err()
            .contains("supplementalGroups"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn seccomp_defaults_and_errors() {
        let mut settings = Settings::default();
        let none = SecurityContext::default();
        assert_eq!(
            seccomp_profile(&none, &settings).unwrap(),
            Profile::Unconfined
        );
        settings.seccomp_default = true;
        assert_eq!(
            seccomp_profile(&none, &settings).unwrap(),
            Profile::RuntimeDefault
        );
        let with = |t: &str, l: Option<&str>| SecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: t.into(),
                localhost_profile: l.map(String::from),
            }),
            ..Default::default()
        };
        assert_eq!(
            seccomp_profile(&with("Unconfined", None), &settings).unwrap(),
            Profile::Unconfined
        );
        assert!(seccomp_profile(&with("Localhost", None), &settings)
            .unwrap_err()
            .contains("Required"));
        assert!(seccomp_profile(&with("Bogus", None), &settings)
            .unwrap_err()
            .contains("Bogus"));
        let e = seccomp_profile(&with("Localhost", Some("nope.json")), &settings).unwrap_err();
        assert!(e.contains("/var/lib/kubelet/seccomp/nope.json"), "{}", e);
    }
}

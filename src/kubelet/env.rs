//! What a container runs with, resolved as the kubelet does: environment (image env, then the
//! container's own with `$(VAR)` expansion and downward-API field refs), command and args against
//! the image's Entrypoint/Cmd, working directory and user.

use crate::image::ImageConfig;
use crate::kube::types::Container;
use std::collections::BTreeMap;
use std::path::Path;

/// Expands `$(NAME)` from `vars`; `$$` escapes a `$`; unknown references stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
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
                    match vars.get(name) {
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

/// The container's environment as `KEY=value`, image variables first, container variables
/// overriding them. `field` answers downward-API field paths (`metadata.name`, `status.podIP`...).
pub fn environment(
    image: &ImageConfig,
    c: &Container,
    field: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let set =
        |k: String, v: String, order: &mut Vec<String>, values: &mut BTreeMap<String, String>| {
            if !values.contains_key(&k) {
                order.push(k.clone());
            }
            values.insert(k, v);
        };
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k.to_string(), v.to_string(), &mut order, &mut values);
    }
    // $(VAR) in container env refers only to variables the container defines earlier.
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for (i, e) in c.env.iter().enumerate() {
        let v = if let Some(v) = &e.value {
            expand(v, &defined)
        } else if let Some(src) = &e.value_from {
            if let Some(fr) = &src.field_ref {
                field(&fr.field_path).ok_or_else(|| {
                    format!(
                        "env[{}] {:?}: unsupported fieldRef.fieldPath {:?}",
                        i, e.name, fr.field_path
                    )
                })?
            } else {
                let kind = src
                    .other
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| "valueFrom".into());
                return Err(format!("env[{}] {:?}: {} needs the Kubernetes API, which standalone mode does not have", i, e.name, kind));
            }
        } else {
            String::new()
        };
        defined.insert(e.name.clone(), v.clone());
        set(e.name.clone(), v, &mut order, &mut values);
    }
    let list = order
        .iter()
        .map(|k| format!("{}={}", k, values[k]))
        .collect();
    Ok((list, defined))
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
    use super::*;
    use crate::kube::types::{EnvVar, EnvVarSource, ObjectFieldSelector};

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

    #[test]
    fn env_overrides_and_field_refs() {
        let mut c = Container {
            env: vec![
                EnvVar {
                    name: "A".into(),
                    value: Some("pod".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "B".into(),
                    value: Some("$(A)-x".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "N".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                        }),
                        other: Default::default(),
                    }),
                },
            ],
            ..Default::default()
        };
        let field = |p: &str| (p == "metadata.name").then(|| "web".to_string());
        let (env, vars) = environment(&image(), &c, &field).unwrap();
        assert_eq!(env, vec!["PATH=/bin", "A=pod", "B=pod-x", "N=web"]);
        assert_eq!(vars["B"], "pod-x");
        c.env[2]
            .value_from
            .as_mut()
            .unwrap()
            .field_ref
            .as_mut()
            .unwrap()
            .field_path = "spec.bogus".into();
        assert!(environment(&image(), &c, &field)
            .unwrap_err()
            .contains("spec.bogus"));
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

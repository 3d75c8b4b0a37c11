//! The CNI protocol: ADD, DEL and CHECK through a plugin chain, each plugin getting the previous
//! one's result as `prevResult`, and a record per pod of what ADD was done with (container id,
//! interface, the configuration list, the arguments, the result). DEL works from that record
//! alone, so a pod is torn down after an agent restart, after its configuration changed, and
//! after a reboot (the network namespace is then gone: DEL runs with an empty CNI_NETNS, which
//! the spec allows, and still releases the IPAM addresses).

use super::conf::{find_plugin, ConfList};
use super::exec::{self, ExecError};
use super::result;
use crate::fsutil;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const RECORD_FILE: &str = "network.json";
const RECORD_VERSION: u32 = 1;
const MAX_RECORD_BYTES: u64 = 4 << 20;
/// The interface name the pod gets, as with the kubelet.
pub const IF_NAME: &str = "eth0";

/// The pod a network operation is for (CNI_ARGS as the kubelet/containerd pass them).
#[derive(Debug, Clone)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One hostPort: portmap's `portMappings` capability entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// tcp, udp or sctp (lowercase, as CRI runtimes send them).
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// What ADD was done with, kept at `<pod dir>/network.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub version: u32,
    pub container_id: String,
    pub if_name: String,
    pub conflist: Value,
    pub cni_args: Vec<(String, String)>,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// The chain's final result; None while ADD has not finished.
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub ips: Vec<String>,
}

pub fn load_record(pod_dir: &Path) -> Result<Option<Record>, String> {
    let p = pod_dir.join(RECORD_FILE);
    match std::fs::metadata(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {}", p.display(), e)),
        Ok(m) if m.len() > MAX_RECORD_BYTES => {
            return Err(format!(
                "{}: larger than {} bytes",
                p.display(),
                MAX_RECORD_BYTES
            ))
        }
        Ok(_) => {}
    }
    let r: Option<Record> = fsutil::read_json(&p).map_err(|e| format!("{}: {}", p.display(), e))?;
    match r {
        Some(r) if r.version != RECORD_VERSION => Err(format!(
            "{}: record version {} is not {}",
            p.display(),
            r.version,
            RECORD_VERSION
        )),
        r => Ok(r),
    }
}

fn remove_record(pod_dir: &Path) -> Result<(), String> {
    let p = pod_dir.join(RECORD_FILE);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {}", p.display(), e))
        }
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Cmd {
    Add,
    Del,
    Check,
}

impl Cmd {
    fn env(self) -> &'static str {
        match self {
            Cmd::Add => "ADD",
            Cmd::Del => "DEL",
            Cmd::Check => "CHECK",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Cmd::Add => "add",
            Cmd::Del => "delete",
            Cmd::Check => "check",
        }
    }
}

/// The stdin of one plugin: its configuration with the list's name and version, the previous
/// result, and the runtime config for the capabilities it declares.
fn plugin_stdin(
    conf: &ConfList,
    plugin: &Value,
    prev: Option<&Value>,
    ports: &[PortMapping],
) -> Value {
    let mut p = plugin.clone();
    p["name"] = json!(conf.name);
    p["cniVersion"] = json!(conf.cni_version);
    if let Some(prev) = prev {
        p["prevResult"] = prev.clone();
    }
    if plugin["capabilities"]["portMappings"] == true && !ports.is_empty() {
        p["runtimeConfig"]["portMappings"] = json!(ports);
    }
    p
}

/// Runs `cmd` through the chain (DEL in reverse). ADD threads each result into the next plugin;
/// DEL and CHECK give every plugin the cached result. DEL goes on past a failing plugin (so the
/// IPAM release is tried whatever else fails) and reports the first failure.
fn run_chain(
    cmd: Cmd,
    conf: &ConfList,
    rec: &Record,
    netns: &str,
    bin_dirs: &[PathBuf],
) -> Result<Option<Value>, String> {
    let cni_args = rec
        .cni_args
        .iter()
        .map(|(k, v)| format!("{}={}", k, v))
        .collect::<Vec<_>>()
        .join(";");
    let cni_path = std::env::join_paths(bin_dirs)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let env = [
        ("CNI_COMMAND", cmd.env().to_string()),
        ("CNI_CONTAINERID", rec.container_id.clone()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", rec.if_name.clone()),
        ("CNI_ARGS", cni_args),
        ("CNI_PATH", cni_path),
    ];
    let order: Vec<&Value> = if cmd == Cmd::Del {
        conf.plugins.iter().rev().collect()
    } else {
        conf.plugins.iter().collect()
    };
    let mut prev: Option<Value> = if cmd == Cmd::Add {
        None
    } else {
        rec.result.clone()
    };
    let mut first_error = None;
    for plugin in order {
        let t = plugin["type"].as_str().unwrap_or("");
        let failed = |e: String| {
            format!(
                "plugin type={:?} name={:?} failed ({}): {}",
                t,
                conf.name,
                cmd.word(),
                e
            )
        };
        let outcome = find_plugin(t, bin_dirs).map_err(&failed).and_then(|bin| {
            let stdin = plugin_stdin(conf, plugin, prev.as_ref(), &rec.port_mappings);
            let body = serde_json::to_vec(&stdin).unwrap_or_default();
            exec::run(&bin, &env, &body, exec::TIMEOUT).map_err(|e| match e {
                ExecError::Plugin(p) => failed(p.to_string()),
                ExecError::Failed(s) => failed(s),
            })
        });
        match (cmd, outcome) {
            (Cmd::Add, Ok(out)) => {
                let v: Value = serde_json::from_slice(&out)
                    .map_err(|e| failed(format!("invalid result: {}", e)))?;
                if !v.is_object() {
                    return Err(failed("invalid result: not a JSON object".into()));
                }
                prev = Some(v);
            }
            (_, Ok(_)) => {}
            (Cmd::Del, Err(e)) => {
                log::warn!("{}", e);
                first_error.get_or_insert(e);
            }
            (_, Err(e)) => return Err(e),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(prev),
    }
}

/// ADD for a pod whose network namespace is `netns`. The record is written (durably) before
/// the plugins run, so that an agent dying in the middle still leaves what DEL needs.
pub fn add(
    pod_dir: &Path,
    conf: &ConfList,
    pod: &PodRef,
    netns: &Path,
    ports: Vec<PortMapping>,
    bin_dirs: &[PathBuf],
) -> Result<Record, String> {
    let container_id = fsutil::random_hex(32).map_err(|e| format!("a sandbox id: {}", e))?;
    let mut rec = Record {
        version: RECORD_VERSION,
        cni_args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
            ("K8S_POD_NAME".into(), pod.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.clone()),
            ("K8S_POD_UID".into(), pod.uid.clone()),
        ],
        container_id,
        if_name: IF_NAME.into(),
        conflist: conf.to_json(),
        port_mappings: ports,
        result: None,
        ips: Vec::new(),
    };
    let path = pod_dir.join(RECORD_FILE);
    fsutil::write_json_atomic(&path, &rec).map_err(|e| format!("{}: {}", path.display(), e))?;
    let res = run_chain(Cmd::Add, conf, &rec, &netns.to_string_lossy(), bin_dirs)?
        .unwrap_or_else(|| json!({}));
    rec.ips = result::pod_ips(&res);
    rec.result = Some(res);
    // Losing this update costs nothing DEL needs (it has the id and the list already).
    fsutil::write_json_volatile(&path, &rec).map_err(|e| format!("{}: {}", path.display(), e))?;
    Ok(rec)
}

/// DEL of what the pod's record says was added; nothing to do without a record. `netns`: the
/// namespace if it still exists. The record goes once every plugin succeeded.
pub fn del(pod_dir: &Path, netns: Option<&Path>, bin_dirs: &[PathBuf]) -> Result<bool, String> {
    let Some(rec) = load_record(pod_dir)? else {
        return Ok(false);
    };
    let conf = ConfList::from_record(&rec.conflist)
        .map_err(|e| format!("{}: {}", pod_dir.join(RECORD_FILE).display(), e))?;
    let ns = netns
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    run_chain(Cmd::Del, &conf, &rec, &ns, bin_dirs)?;
    remove_record(pod_dir)?;
    Ok(true)
}

/// CHECK of the pod's network against its record (spec 0.4.0 and later, unless the list has
/// `disableCheck`). Ok(false): nothing to check.
pub fn check(pod_dir: &Path, netns: &Path, bin_dirs: &[PathBuf]) -> Result<bool, String> {
    let Some(rec) = load_record(pod_dir)? else {
        return Ok(false);
    };
    let conf = ConfList::from_record(&rec.conflist)?;
    if !conf.has_check() || conf.disable_check || rec.result.is_none() {
        return Ok(false);
    }
    run_chain(Cmd::Check, &conf, &rec, &netns.to_string_lossy(), bin_dirs)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake plugin that appends its CNI_COMMAND, type and stdin to a log and answers with a
    /// result naming itself.
    fn fake_bin(dir: &Path, name: &str, fail: bool) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        let body = if fail {
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no addresses left","details":"range 10.0.0.0/30"}'; exit 1"#.to_string()
        } else {
            format!(
                r#"echo "$CNI_COMMAND {name} $CNI_IFNAME $CNI_NETNS $CNI_ARGS $(cat)" >> "$(dirname "$0")/calls"
echo '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}}],"ips":[{{"address":"10.0.0.{n}/24","interface":0}}]}}'"#,
                name = name,
                n = name.len()
            )
        };
        std::fs::write(&p, format!("#!/bin/sh\n{}\n", body)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tinylet-cni-{}-{}",
            std::process::id(),
            fsutil::random_hex(4).unwrap()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn conf(types: &[&str]) -> ConfList {
        let plugins: Vec<Value> = types
            .iter()
            .map(|t| json!({"type": t, "capabilities": {"portMappings": *t == "pm"}}))
            .collect();
        ConfList {
            name: "testnet".into(),
            cni_version: "1.0.0".into(),
            disable_check: false,
            plugins,
            file: "/x.conflist".into(),
        }
    }

    #[test]
    fn add_chains_results_del_reverses_and_works_from_the_record_alone() {
        let d = tmp();
        fake_bin(&d, "br", false);
        fake_bin(&d, "pm", false);
        let pod = PodRef {
            namespace: "ns1".into(),
            name: "web".into(),
            uid: "u-1".into(),
        };
        let ports = vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }];
        let bins = vec![d.clone()];
        let rec = add(
            &d,
            &conf(&["br", "pm"]),
            &pod,
            Path::new("/ns/net"),
            ports,
            &bins,
        )
        .unwrap();
        // The last plugin's result is the chain's.
        assert_eq!(rec.ips, vec!["10.0.0.2"]);
        let calls = std::fs::read_to_string(d.join("calls")).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert!(lines[0].starts_with("ADD br eth0 /ns/net IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID="), "{}", lines[0]);
        assert!(lines[0].contains(";K8S_POD_UID=u-1 "));
        assert!(lines[0].contains(r#""name":"testnet""#) && !lines[0].contains("prevResult"));
        assert!(
            !lines[0].contains("runtimeConfig"),
            "only plugins with the capability get it"
        );
        assert!(lines[1].contains(r#""prevResult":{"#) && lines[1].contains("10.0.0.2/24"));
        assert!(lines[1].contains(r#""runtimeConfig":{"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]}"#), "{}", lines[1]);
        assert!(check(&d, Path::new("/ns/net"), &bins).unwrap());
        // DEL after a "reboot": no namespace, and the directory the config came from is irrelevant.
        std::fs::remove_file(d.join("calls")).unwrap();
        assert!(del(&d, None, &bins).unwrap());
        let calls = std::fs::read_to_string(d.join("calls")).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert!(
            lines[0].starts_with("DEL pm eth0  IgnoreUnknown"),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("DEL br"), "{}", lines[1]);
        assert!(
            lines[1].contains("prevResult"),
            "DEL gets the cached result"
        );
        assert!(load_record(&d).unwrap().is_none());
        assert!(!del(&d, None, &bins).unwrap(), "nothing left to delete");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn failures_name_the_plugin_and_keep_the_record_for_del() {
        let d = tmp();
        fake_bin(&d, "br", true);
        let pod = PodRef {
            namespace: "n".into(),
            name: "p".into(),
            uid: "u".into(),
        };
        let e = add(
            &d,
            &conf(&["br"]),
            &pod,
            Path::new("/ns"),
            vec![],
            std::slice::from_ref(&d),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "plugin type=\"br\" name=\"testnet\" failed (add): no addresses left: range 10.0.0.0/30"
        );
        assert!(load_record(&d).unwrap().is_some());
        let e = add(
            &d,
            &conf(&["nope"]),
            &pod,
            Path::new("/ns"),
            vec![],
            std::slice::from_ref(&d),
        )
        .unwrap_err();
        assert!(e.contains("failed to find plugin \"nope\""), "{}", e);
        std::fs::write(d.join(RECORD_FILE), "{not json").unwrap();
        assert!(del(&d, None, std::slice::from_ref(&d)).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }
}

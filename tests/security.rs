//! securityContext with real runc containers: runAsNonRoot, users and groups, capabilities,
//! no_new_privs, read-only root, seccomp profiles, sysctls and their admission,
//! shareProcessNamespace and hostIPC.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use support::*;

/// A manifest (from the builder) with `edit` applied to its JSON, written as `<file>.json`.
fn write_json(node: &Node, file: &str, m: PodManifest, edit: impl FnOnce(&mut Value)) {
    let mut v = m.value();
    edit(&mut v);
    node.write_manifest(&format!("{}.json", file), &v.to_string());
}

/// `key=value` lines of a container's output.
fn facts(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Waits for `done` in the container's output and returns its facts.
fn facts_of(node: &mut Node, pod: &str, c: &str) -> BTreeMap<String, String> {
    facts(&node.wait_log(pod, c, "done"))
}

const STATUS: &str = "echo caps=$(grep CapEff /proc/self/status | cut -f2); \
    echo nnp=$(grep NoNewPrivs /proc/self/status | cut -f2); \
    echo seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2);";

#[test]
fn run_as_non_root_refuses_root_and_admits_non_root() {
    let mut node = Node::start();
    let m = pod_manifest("nonroot")
        .container("root", "sleep 3600")
        .container("user", "echo uid=$(id -u); echo done; sleep 3600");
    write_json(&node, "nonroot", m, |v| {
        v["spec"]["securityContext"] = json!({"runAsNonRoot": true});
        v["spec"]["containers"][1]["securityContext"] = json!({"runAsUser": 1000});
    });
    let pod = node.wait_pod("nonroot", "root refused", |p| {
        cstatus(p, "root")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    let expected = format!(
        "container has runAsNonRoot and image will run as root (pod: \"{}_default({})\", container: root)",
        node.full_name("nonroot"),
        uid(&pod)
    );
    assert_eq!(
        cstatus(&pod, "root")["state"]["waiting"]["message"],
        expected
    );
    assert_eq!(facts_of(&mut node, "nonroot", "user")["uid"], "1000");
    // A container-level runAsUser: 0 breaks the pod's policy too.
    let m = pod_manifest("zero").container("c", "sleep 3600");
    write_json(&node, "zero", m, |v| {
        v["spec"]["securityContext"] = json!({"runAsNonRoot": true});
        v["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 0});
    });
    let pod = node.wait_pod("zero", "refused", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    assert!(cstatus(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .starts_with("container's runAsUser breaks non-root policy"));
}

#[test]
fn users_groups_capabilities_and_read_only_root() {
    let mut node = Node::start();
    let m = pod_manifest("sc")
        .container(
            "ids",
            "echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); echo done; sleep 3600",
        )
        .container("defaults", &format!("{} echo done; sleep 3600", STATUS))
        .container("minimal", &format!("{} echo done; sleep 3600", STATUS))
        .container(
            "ro",
            "touch /file 2>/dev/null; echo root_rc=$?; touch /tmp/x 2>/dev/null; echo tmp_rc=$?; echo done; sleep 3600",
        );
    write_json(&node, "sc", m, |v| {
        v["spec"]["securityContext"] = json!({
            "runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4000]
        });
        let c = &mut v["spec"]["containers"];
        c[1]["securityContext"] = json!({"runAsUser": 0, "runAsGroup": 0});
        c[2]["securityContext"] = json!({
            "runAsUser": 0, "runAsGroup": 0, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CAP_KILL"]}
        });
        c[3]["securityContext"] = json!({"runAsUser": 0, "readOnlyRootFilesystem": true});
    });
    let ids = facts_of(&mut node, "sc", "ids");
    assert_eq!(ids["uid"], "1000");
    assert_eq!(ids["gid"], "3000");
    let groups: Vec<&str> = ids["groups"].split_whitespace().collect();
    for g in ["2000", "4000"] {
        assert!(
            groups.contains(&g),
            "fsGroup and supplementalGroups in {:?}",
            groups
        );
    }
    // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    let d = facts_of(&mut node, "sc", "defaults");
    assert_eq!(d["caps"], "00000000a80425fb");
    assert_eq!(d["nnp"], "0", "no_new_privs only when asked for");
    assert_eq!(
        d["seccomp"], "0",
        "unconfined without a profile or --seccomp-default"
    );
    let m = facts_of(&mut node, "sc", "minimal");
    assert_eq!(m["caps"], format!("{:016x}", (1u64 << 10) | (1 << 5)));
    assert_eq!(m["nnp"], "1");
    let ro = facts_of(&mut node, "sc", "ro");
    assert_ne!(ro["root_rc"], "0", "the root filesystem is read-only");
    assert_ne!(ro["tmp_rc"], "0");
}

#[test]
fn seccomp_profiles() {
    let mut node = Node::create();
    let profiles = node.dir.join("seccomp");
    std::fs::create_dir_all(profiles.join("team")).unwrap();
    std::fs::write(
        profiles.join("team/no-mkdir.json"),
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        })
        .to_string(),
    )
    .unwrap();
    node.extra_run_args = vec![
        "--seccomp-default".into(),
        "--seccomp-profile-root".into(),
        profiles.display().to_string(),
    ];
    node.import_image();
    node.start_daemon();
    let probe = format!(
        "{} unshare -U true 2>/dev/null; echo unshare_rc=$?; mkdir /tmp/d 2>/dev/null; echo mkdir_rc=$?; echo done; sleep 3600",
        STATUS
    );
    let m = pod_manifest("sec")
        .container("default", &probe)
        .container("unconfined", &probe)
        .container("localhost", &probe)
        .container("privileged", &probe)
        .container("missing", &probe);
    write_json(&node, "sec", m, |v| {
        let c = &mut v["spec"]["containers"];
        c[1]["securityContext"] = json!({"seccompProfile": {"type": "Unconfined"}});
        c[2]["securityContext"] = json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "team/no-mkdir.json"}});
        c[3]["securityContext"] =
            json!({"privileged": true, "seccompProfile": {"type": "RuntimeDefault"}});
        c[4]["securityContext"] =
            json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "team/nope.json"}});
    });
    // --seccomp-default: RuntimeDefault, which refuses unshare (CAP_SYS_ADMIN only) although
    // creating a user namespace needs no capability.
    let d = facts_of(&mut node, "sec", "default");
    assert_eq!(d["seccomp"], "2");
    assert_ne!(d["unshare_rc"], "0");
    assert_eq!(d["mkdir_rc"], "0");
    let u = facts_of(&mut node, "sec", "unconfined");
    assert_eq!(u["seccomp"], "0");
    assert_eq!(u["unshare_rc"], "0", "unconfined may make a user namespace");
    let l = facts_of(&mut node, "sec", "localhost");
    assert_eq!(l["seccomp"], "2");
    assert_ne!(l["mkdir_rc"], "0", "the profile refuses mkdir");
    assert_eq!(l["unshare_rc"], "0");
    assert_eq!(facts_of(&mut node, "sec", "privileged")["seccomp"], "0");
    let pod = node.wait_pod("sec", "missing profile reported", |p| {
        cstatus(p, "missing")["state"]["waiting"]["reason"] == "CreateContainerError"
    });
    let msg = cstatus(&pod, "missing")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&profiles.join("team/nope.json").display().to_string()),
        "{}",
        msg
    );
}

#[test]
fn sysctls_applied_and_unsafe_ones_refused() {
    let mut node = Node::create();
    node.extra_run_args = vec!["--allowed-unsafe-sysctls".into(), "net.core.*".into()];
    node.import_image();
    node.start_daemon();
    let script = "echo syncookies=$(cat /proc/sys/net/ipv4/tcp_syncookies); \
        echo rmid=$(cat /proc/sys/kernel/shm_rmid_forced); \
        echo somaxconn=$(cat /proc/sys/net/core/somaxconn); echo done; sleep 3600";
    let sysctls =
        |v: &mut Value, list: Value| v["spec"]["securityContext"] = json!({"sysctls": list});
    write_json(
        &node,
        "ok",
        pod_manifest("ok").container("c", script),
        |v| {
            sysctls(
                v,
                json!([
                    {"name": "net.ipv4.tcp_syncookies", "value": "2"},
                    {"name": "kernel/shm_rmid_forced", "value": "1"},
                    {"name": "net.core.somaxconn", "value": "1234"},
                ]),
            )
        },
    );
    let f = facts_of(&mut node, "ok", "c");
    assert_eq!(f["syncookies"], "2");
    assert_eq!(f["rmid"], "1");
    assert_eq!(f["somaxconn"], "1234");
    // The host's values are untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim(),
        "1234"
    );
    write_json(
        &node,
        "unsafe",
        pod_manifest("unsafe").container("c", "sleep 3600"),
        |v| sysctls(v, json!([{"name": "kernel.msgmax", "value": "1000"}])),
    );
    write_json(
        &node,
        "hostnet",
        pod_manifest("hostnet")
            .host_network()
            .container("c", "sleep 3600"),
        |v| {
            sysctls(
                v,
                json!([{"name": "net.ipv4.tcp_syncookies", "value": "1"}]),
            )
        },
    );
    let table = node.wait_for(WAIT, "both pods refused", |n| {
        let t = n.ps_table();
        (t.matches("SysctlForbidden").count() == 2).then_some(t)
    });
    assert!(
        table.contains("forbidden sysctl: \"kernel.msgmax\" not allowlisted"),
        "{}",
        table
    );
    assert!(
        table.contains(
            "forbidden sysctl: \"net.ipv4.tcp_syncookies\" not allowed with host net enabled"
        ),
        "{}",
        table
    );
    assert!(node.pod("unsafe").is_none() && node.pod("hostnet").is_none());
}

#[test]
fn share_process_namespace_and_host_ipc() {
    let mut node = Node::start();
    let m = pod_manifest("shared")
        .grace(2)
        .container("a", "exec sleep 3601")
        .container(
            "b",
            "sleep 1; echo init=$(cat /proc/1/comm); echo sees_a=$(ps | grep -c '[s]leep 3601'); \
             echo ipc=$(readlink /proc/self/ns/ipc); echo done; sleep 3600",
        );
    write_json(&node, "shared", m, |v| {
        v["spec"]["shareProcessNamespace"] = json!(true);
        v["spec"]["hostIPC"] = json!(true);
    });
    node.wait_running("shared");
    let f = facts_of(&mut node, "shared", "b");
    assert_eq!(f["init"], "pause", "the pod's own init is pid 1");
    assert_eq!(f["sees_a"], "1", "b sees a's process");
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert_eq!(f["ipc"], host_ipc.display().to_string());

    // Without it, each container has its own PID namespace.
    let m = pod_manifest("apart")
        .container("a", "exec sleep 3602")
        .container(
            "b",
            "sleep 1; echo sees_a=$(ps | grep -c '[s]leep 3602'); echo done; sleep 3600",
        );
    node.write_manifest("apart.yaml", &m.yaml());
    assert_eq!(facts_of(&mut node, "apart", "b")["sees_a"], "0");

    // Removing the pod ends its init too.
    let pauses = |n: &Node| {
        n.processes()
            .into_iter()
            .filter(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{}/comm", pid))
                    .is_ok_and(|c| c.trim() == "pause")
            })
            .count()
    };
    assert_eq!(pauses(&node), 1);
    // An agent restart adopts the pod and its init as they are.
    let before = node.pod("shared").unwrap();
    node.restart_daemon();
    let after = node.wait_running("shared");
    for c in ["a", "b"] {
        assert_eq!(container_id(&before, c), container_id(&after, c));
    }
    assert_eq!(pauses(&node), 1);
    node.remove_manifest("shared.json");
    node.wait_gone("shared");
    assert_eq!(pauses(&node), 0, "the pod's init is gone with it");
}

#[test]
fn an_api_pod_with_a_forbidden_sysctl_fails_with_sysctl_forbidden() {
    use support::apiserver::ApiServer;
    let api = ApiServer::start();
    let node = api.join_node(None, &[]);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tuned", "namespace": "default"},
        "spec": {
            "nodeName": node.node_name,
            "securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]},
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}],
        },
    });
    api.create_pod(&pod);
    let failed = poll_until(
        WAIT,
        "the pod Failed with SysctlForbidden",
        || {
            let p = api.pod("default", "tuned")?;
            (p["status"]["phase"] == "Failed").then_some(p)
        },
        || node.daemon_log_tail(30),
    );
    assert_eq!(failed["status"]["reason"], "SysctlForbidden");
    assert_eq!(
        failed["status"]["message"],
        "Pod was rejected: forbidden sysctl: \"net.core.somaxconn\" not allowlisted"
    );
    assert!(node.runc_list().is_empty(), "nothing of it ran");
    api.assert_no_violations();
}

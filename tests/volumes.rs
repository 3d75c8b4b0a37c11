//! Volumes as the kubelet makes them, with real containers: tmpfs emptyDirs that go with the pod
//! (also when the pod is removed by a restarted agent), hostPath type checks, the AtomicWriter
//! layout with modes and fsGroup, and in cluster mode configMap updates that reach a running
//! container through the `..data` swap while a subPath mount keeps the old content.

mod support;

use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use support::apiserver::{eventually, ApiServer};
use support::*;

const SLEEP: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// The manifest of `m` with pod-level `volumes` (and more) set.
fn with_spec(m: PodManifest, field: &str, value: Value) -> Value {
    let mut v = m.value();
    v["spec"][field] = value;
    v
}

fn volume_mounts_under(node: &Node, uid: &str) -> Vec<std::path::PathBuf> {
    let vols = node.pod_dir(uid).join("volumes");
    node.mounts()
        .into_iter()
        .filter(|m| m.starts_with(&vols))
        .collect()
}

#[test]
fn a_memory_empty_dir_is_a_tmpfs_and_is_unmounted_with_the_pod_even_after_an_agent_restart() {
    let mut node = Node::start();
    let m = pod_manifest("mem")
        .grace(1)
        .container(
            "c",
            &format!(
                "grep ' /cache ' /proc/mounts; echo data > /cache/f; {}",
                SLEEP
            ),
        )
        .set(
            "volumeMounts",
            json!([{"name": "cache", "mountPath": "/cache"}]),
        );
    let m = with_spec(
        m,
        "volumes",
        json!([{"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]),
    );
    node.write_manifest("mem.yaml", &to_yaml(&m));
    let out = node.wait_log("mem", "c", "tmpfs /cache tmpfs");
    assert!(out.contains("size=16384k"), "{}", out);
    let pod = node.wait_running("mem");
    let uid = uid(&pod);
    let mounted = volume_mounts_under(&node, &uid);
    assert_eq!(mounted.len(), 1, "{:?}", mounted);
    let data = std::fs::read_to_string(mounted[0].join("f")).unwrap();
    assert_eq!(data, "data\n");

    // Removed while the agent is down: the next agent removes the pod, tmpfs included.
    node.kill9_daemon();
    node.remove_manifest("mem.yaml");
    node.start_daemon();
    node.wait_gone("mem");
    node.wait_for(WAIT, "the pod directory to be removed", |n| {
        !n.pod_dir(&uid).exists()
    });
    assert!(volume_mounts_under(&node, &uid).is_empty());
}

#[test]
fn host_path_types_are_checked_at_mount_time() {
    let mut node = Node::start();
    let base = node.dir.join("host");
    std::fs::create_dir_all(&base).unwrap();
    let file = base.join("file");
    std::fs::write(&file, "x").unwrap();

    let bad = pod_manifest("hp-bad")
        .container("c", SLEEP)
        .set("volumeMounts", json!([{"name": "v", "mountPath": "/v"}]));
    let bad = with_spec(
        bad,
        "volumes",
        json!([{"name": "v", "hostPath": {"path": file, "type": "Directory"}}]),
    );
    node.write_manifest("bad.yaml", &to_yaml(&bad));
    let want = format!(
        "hostPath type check failed: {} is not a directory",
        file.display()
    );
    let pod = node.wait_pod("hp-bad", "ContainerCreating with the type check", |p| {
        let w = &cstatus(p, "c")["state"]["waiting"];
        w["reason"] == "ContainerCreating"
            && w["message"].as_str().is_some_and(|m| m.contains(&want))
    });
    assert!(
        cstatus(&pod, "c")["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("MountVolume.SetUp failed for volume \"v\""),
        "{}",
        pod["status"]
    );

    let made = base.join("made/dir");
    let new_file = base.join("new.txt");
    let ok = pod_manifest("hp-ok")
        .container(
            "c",
            &format!("stat -c '%n %F' /made /new /null; echo END; {}", SLEEP),
        )
        .set(
            "volumeMounts",
            json!([
                {"name": "made", "mountPath": "/made"},
                {"name": "new", "mountPath": "/new"},
                {"name": "null", "mountPath": "/null"},
            ]),
        );
    let ok = with_spec(
        ok,
        "volumes",
        json!([
            {"name": "made", "hostPath": {"path": made, "type": "DirectoryOrCreate"}},
            {"name": "new", "hostPath": {"path": new_file, "type": "FileOrCreate"}},
            {"name": "null", "hostPath": {"path": "/dev/null", "type": "CharDevice"}},
        ]),
    );
    node.write_manifest("ok.yaml", &to_yaml(&ok));
    let out = node.wait_log("hp-ok", "c", "END");
    assert!(out.contains("/made directory"), "{}", out);
    assert!(out.contains("/new regular empty file"), "{}", out);
    assert!(out.contains("/null character special file"), "{}", out);
    assert_eq!(std::fs::metadata(&made).unwrap().mode() & 0o777, 0o755);
    assert_eq!(std::fs::metadata(&new_file).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn projections_have_the_atomic_writer_layout_modes_and_fs_group() {
    let mut node = Node::start();
    let m = pod_manifest("info")
        .container(
            "c",
            &format!(
                "stat -c '%n %a %g' /info/..data/labels /info/..data/meta/name /scratch; \
                 readlink /info/labels; readlink /info/meta; grep ' /info ' /proc/mounts; \
                 echo name=$(cat /info/meta/name); echo END; {}",
                SLEEP
            ),
        )
        .set(
            "volumeMounts",
            json!([{"name": "info", "mountPath": "/info"}, {"name": "scratch", "mountPath": "/scratch"}]),
        );
    let mut m = with_spec(
        m,
        "volumes",
        json!([
            {"name": "info", "downwardAPI": {"defaultMode": 0o440, "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "meta/name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
            ]}},
            {"name": "scratch", "emptyDir": {}},
        ]),
    );
    m["spec"]["securityContext"] = json!({"fsGroup": 2345});
    node.write_manifest("info.yaml", &to_yaml(&m));
    let out = node.wait_log("info", "c", "END");
    // 0400 plus the group read an fsGroup adds; emptyDir 0777 with setgid.
    for want in [
        "/info/..data/labels 440 2345",
        "/info/..data/meta/name 440 2345",
        "/scratch 2777 2345",
        "..data/labels\n..data/meta\n",
        &format!("name={}", node.full_name("info")),
    ] {
        assert!(out.contains(want), "{:?} missing from:\n{}", want, out);
    }
    // On a tmpfs, and read-only in the container.
    assert!(out.contains("tmpfs /info tmpfs ro,"), "{}", out);
}

/// A node joined to `api` with a client certificate.
fn join(api: &ApiServer) -> Node {
    api.join_node(None, &[])
}

#[test]
fn a_config_map_update_reaches_a_running_container_through_the_data_swap() {
    let api = ApiServer::start();
    let mut node = join(&api);
    api.post(
        "/api/v1/namespaces/default/configmaps",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                "data": {"greeting": "hello-1", "unused": "x"}}),
    )
    .expect("creating the configMap");
    api.post(
        "/api/v1/namespaces/default/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
                "data": {"pw": "czNjcmV0"}}),
    )
    .expect("creating the secret");
    let script = "grep -E ' /(sec|cfg) ' /proc/mounts; \
                  stat -c '%n %a' /sec/..data/pw /cfg/..data/conf/greeting.txt; ls /cfg; \
                  while true; do echo \"now=$(cat /cfg/conf/greeting.txt) sub=$(cat /sub-greeting)\"; sleep 1; done";
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cm", "namespace": "default"},
        "spec": {
            "nodeName": node.node_name,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c", "image": IMAGE, "command": ["sh", "-c", script],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "cfg", "mountPath": "/sub-greeting", "subPath": "conf/greeting.txt"},
                    {"name": "sec", "mountPath": "/sec"},
                ],
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg", "items": [
                    {"key": "greeting", "path": "conf/greeting.txt", "mode": 0o600}]}},
                {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
            ],
        },
    });
    api.create_pod(&pod);
    // A missing key of a non-optional configMap is a mount error.
    let mut bad = pod.clone();
    bad["metadata"]["name"] = json!("cm-bad");
    bad["spec"]["volumes"][0]["configMap"]["items"][0]["key"] = json!("nope");
    api.create_pod(&bad);

    let out = node.wait_log("cm", "c", "now=hello-1 sub=hello-1");
    for want in [
        "tmpfs /sec tmpfs ro,",
        "/sec/..data/pw 400",
        "/cfg/..data/conf/greeting.txt 600",
    ] {
        assert!(out.contains(want), "{:?} missing from:\n{}", want, out);
    }
    assert!(
        !out.contains("tmpfs /cfg "),
        "configMaps are on disk:\n{}",
        out
    );
    assert!(!out.contains("unused"), "{}", out);
    let bad = node.wait_pod("cm-bad", "a mount error for the missing key", |p| {
        cstatus(p, "c")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("has no key \"nope\""))
    });
    assert_eq!(
        cstatus(&bad, "c")["state"]["waiting"]["reason"],
        "ContainerCreating"
    );

    // The configMap and the secret are watched, each on its own (the kubelet's Watch strategy):
    // a LIST with a single-object field selector, then a watch.
    let node_name = node.node_name.clone();
    let node_requests = |api: &ApiServer| -> Vec<String> {
        api.requests()
            .into_iter()
            .filter(|r| r["user"].as_str().is_some_and(|u| u.ends_with(&node_name)))
            .map(|r| {
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap_or(""),
                    r["path"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    for list in [
        "GET /api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dcfg",
        "GET /api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Dsec",
    ] {
        eventually(&node, &api, list, || {
            node_requests(&api).iter().any(|r| r == list).then_some(())
        });
    }
    api.clear_requests();
    api.patch(
        "/api/v1/namespaces/default/configmaps/cfg",
        "application/merge-patch+json",
        &json!({"data": {"greeting": "hello-2"}}),
    )
    .expect("updating the configMap");
    // The kubelet's sync period is a minute plus jitter; a subPath mount does not follow.
    node.wait_for(
        Duration::from_secs(100),
        "the new configMap content in the running container",
        |n| {
            n.logs("cm", "c")
                .contains("now=hello-2 sub=hello-1")
                .then_some(())
        },
    );
    // The volume sync that brought the update read both objects from their watches: no GET.
    let reads: Vec<String> = node_requests(&api)
        .into_iter()
        .filter(|r| r.contains("/configmaps/cfg") || r.contains("/secrets/sec"))
        .collect();
    assert!(
        reads.is_empty(),
        "volume syncs read from the API server: {:?}",
        reads
    );
    let running = node.pod("cm").unwrap();
    assert_eq!(cstatus(&running, "c")["restartCount"], 0);

    // Deleting the pod unmounts its secret tmpfs.
    let uid = uid(&running);
    api.delete("/api/v1/namespaces/default/pods/cm", None)
        .expect("deleting the pod");
    node.wait_for(WAIT, "the pod directory to be removed", |n| {
        !n.pod_dir(&uid).exists()
    });
    assert!(volume_mounts_under(&node, &uid).is_empty());
}

#[test]
fn sub_path_expr_expands_the_container_environment_and_propagation_is_refused() {
    let mut node = Node::start();
    let m = pod_manifest("expr")
        .container("c", &format!("echo hi > /data/f; echo END; {}", SLEEP))
        .set(
            "env",
            json!([{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
        )
        .set(
            "volumeMounts",
            json!([{"name": "scratch", "mountPath": "/data", "subPathExpr": "logs/$(POD)"}]),
        );
    let m = with_spec(m, "volumes", json!([{"name": "scratch", "emptyDir": {}}]));
    node.write_manifest("expr.yaml", &to_yaml(&m));
    node.wait_log("expr", "c", "END");
    let pod = node.pod("expr").unwrap();
    let file = node
        .pod_dir(&uid(&pod))
        .join("volumes/scratch/logs")
        .join(node.full_name("expr"))
        .join("f");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hi\n");

    // Mount propagation other than None is refused, never silently ignored.
    let p = pod_manifest("prop").container("c", SLEEP).set(
        "volumeMounts",
        json!([{"name": "h", "mountPath": "/h", "mountPropagation": "HostToContainer"}]),
    );
    let p = with_spec(
        p,
        "volumes",
        json!([{"name": "h", "hostPath": {"path": "/tmp"}}]),
    );
    let path = node.dir.join("prop.yaml");
    std::fs::write(&path, to_yaml(&p)).unwrap();
    let out = node.tinylet(&["validate", path.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text);
    assert!(
        text.contains("spec.containers[0].volumeMounts[0].mountPropagation: \"HostToContainer\" is not supported"),
        "{}",
        text
    );
}

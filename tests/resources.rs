//! Resources with real runc containers: QoS classes and the kubelet's cgroup layout, the
//! QoS-level cpu.shares, the pod pids limit, and OOM kills.

mod support;

use std::path::{Path, PathBuf};
use support::*;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("reading {}: {}", p.display(), e))
        .trim()
        .to_string()
}

fn kubepods(node: &Node, controller: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join(node.cgroup_root.trim_start_matches('/'))
        .join("kubepods")
}

#[test]
fn qos_classes_place_pod_cgroups() {
    let mut node = Node::start();
    node.write_manifest(
        "g.yaml",
        &pod_manifest("guaranteed")
            .grace(2)
            .container("c", "sleep 3600")
            .limit("cpu", "250m")
            .limit("memory", "32Mi")
            .yaml(),
    );
    let burstable = pod_manifest("burstable")
        .grace(2)
        .container("c", "sleep 3600")
        .set(
            "resources",
            serde_json::json!({"requests": {"cpu": "500m"}, "limits": {"memory": "64Mi"}}),
        )
        .container("d", "sleep 3600")
        .set(
            "resources",
            serde_json::json!({"requests": {"cpu": "0.25"}}),
        );
    node.write_manifest("b.yaml", &burstable.yaml());
    node.write_manifest(
        "e.yaml",
        &pod_manifest("besteffort")
            .grace(2)
            .container("c", "sleep 3600")
            .yaml(),
    );
    let (g, b, e) = (
        node.wait_running("guaranteed"),
        node.wait_running("burstable"),
        node.wait_running("besteffort"),
    );
    assert_eq!(g["status"]["qosClass"], "Guaranteed");
    assert_eq!(b["status"]["qosClass"], "Burstable");
    assert_eq!(e["status"]["qosClass"], "BestEffort");
    let (cpu, mem) = (kubepods(&node, "cpu"), kubepods(&node, "memory"));
    let g_dir = cpu.join(format!("pod{}", uid(&g)));
    let b_dir = cpu.join("burstable").join(format!("pod{}", uid(&b)));
    let e_dir = cpu.join("besteffort").join(format!("pod{}", uid(&e)));
    // The container cgroups are inside their pod's.
    for (dir, pod) in [(&g_dir, &g), (&b_dir, &b), (&e_dir, &e)] {
        let id = container_id(pod, "c");
        assert!(
            dir.join(id.trim_start_matches("runc://")).is_dir(),
            "{} holds the container",
            dir.display()
        );
    }
    // Guaranteed: shares, quota and memory; Burstable: shares from the requests (750m), the
    // memory limit only if every container has one (not here); BestEffort: MinShares.
    assert_eq!(read(&g_dir.join("cpu.shares")), "256");
    assert_eq!(read(&g_dir.join("cpu.cfs_quota_us")), "25000");
    assert_eq!(
        read(
            &mem.join(format!("pod{}", uid(&g)))
                .join("memory.limit_in_bytes")
        ),
        (32u64 << 20).to_string()
    );
    assert_eq!(read(&b_dir.join("cpu.shares")), "768");
    assert_eq!(read(&b_dir.join("cpu.cfs_quota_us")), "-1");
    let b_mem = mem.join("burstable").join(format!("pod{}", uid(&b)));
    assert!(
        read(&b_mem.join("memory.limit_in_bytes"))
            .parse::<u64>()
            .unwrap()
            > 1 << 40
    );
    assert_eq!(read(&e_dir.join("cpu.shares")), "2");
    // The QoS-level cgroups: besteffort gets MinShares, burstable its pods' sum.
    assert_eq!(read(&cpu.join("besteffort/cpu.shares")), "2");
    assert_eq!(read(&cpu.join("burstable/cpu.shares")), "768");

    // Removal takes the pod cgroups (in every hierarchy) and recounts burstable.
    for (f, name, pod) in [
        ("g.yaml", "guaranteed", &g),
        ("b.yaml", "burstable", &b),
        ("e.yaml", "besteffort", &e),
    ] {
        node.remove_manifest(f);
        node.wait_gone(name);
        assert_eq!(
            node.pod_cgroups_present(&uid(pod)),
            Vec::<PathBuf>::new(),
            "{} left cgroups",
            name
        );
    }
    assert_eq!(read(&cpu.join("burstable/cpu.shares")), "2");
}

#[test]
fn pod_pids_limit() {
    let mut node = Node::create();
    node.extra_run_args = vec!["--pod-max-pids".into(), "20".into()];
    node.import_image();
    node.start_daemon();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("pids")
            .grace(2)
            .container(
                "c",
                // The forks happen in a child shell, which dies when one fails; `exec` then
                // needs no fork of its own.
                "sh -c 'for i in $(seq 40); do sleep 300 & done' 2>&1; echo done; exec sleep 3600",
            )
            .yaml(),
    );
    let pod = node.wait_running("pids");
    let dir = node.pod_cgroup_dir("pids", &uid(&pod));
    assert_eq!(read(&dir.join("pids.max")), "20");
    let out = node.wait_log("pids", "c", "done");
    assert!(
        out.contains("can't fork"),
        "the limit stopped the loop: {}",
        out
    );
    let current: u32 = read(&dir.join("pids.current")).parse().unwrap();
    assert!(
        (15..=20).contains(&current),
        "the pod holds at most 20 processes, and used them: {}",
        current
    );
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    let mut node = Node::start();
    node.write_manifest(
        "oom.yaml",
        &pod_manifest("oom")
            .restart_policy("Never")
            .container("c", "head -c 64m /dev/zero | tail")
            .limit("memory", "16Mi")
            .yaml(),
    );
    let pod = node.wait_pod("oom", "container terminated", |p| {
        !cstatus(p, "c")["state"]["terminated"].is_null()
    });
    let t = &cstatus(&pod, "c")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{}", t);
    assert_eq!(t["exitCode"], 137, "{}", t);
    assert_eq!(pod["status"]["phase"], "Failed");
}

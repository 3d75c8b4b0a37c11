//! The daemon can die at any time: pods keep running, a restarted daemon adopts them unchanged,
//! notices what happened while it was down, and removing a pod leaves nothing behind.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

/// Prints a growing counter forever.
const TICKER: &str = "i=0; while true; do i=$$((i+1)); echo tick $i; sleep 0.2; done";

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Waits until the restarted daemon's worker for the pod has adopted it.
fn wait_adopted(node: &mut Node, pod: &str, before: usize) {
    let line = format!("pod default/{}: adopting running pod", node.full_name(pod));
    node.wait_for(WAIT, &format!("the daemon to adopt {}", pod), |n| {
        n.daemon_log().matches(&line).count() > before
    });
}

fn runc_signal(node: &Node, container_id: &str, signal: &str) {
    let st = Command::new("runc")
        .arg("--root")
        .arg(&node.runtime_root)
        .args(["kill", container_id.trim_start_matches("runc://"), signal])
        .status()
        .expect("running runc kill");
    assert!(st.success(), "runc kill {} failed", signal);
}

#[test]
fn running_pod_survives_daemon_kill_and_is_adopted() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("survivor").container("c", TICKER).yaml(),
    );
    let pod = node.wait_running("survivor");
    node.wait_log("survivor", "c", "tick 2");
    let c = cstatus(&pod, "c").clone();
    let id = container_id(&pod, "c");
    let log = node.pod_log_dir(&pod).join("c").join("0.log");

    node.kill9_daemon();
    assert_eq!(
        node.runc_status(&id).as_deref(),
        Some("running"),
        "the container outlives the daemon"
    );
    let len = log_len(&log);
    node.wait_for(
        WAIT,
        "the container to keep logging while the daemon is down",
        |_| log_len(&log) > len,
    );
    // ps and logs read the node's state from disk; they work without the daemon.
    assert_eq!(node.pod("survivor").unwrap()["status"]["phase"], "Running");
    assert!(node.logs("survivor", "c").contains("tick 1\n"));

    let adopted_before = 0;
    node.start_daemon();
    wait_adopted(&mut node, "survivor", adopted_before);
    std::thread::sleep(Duration::from_millis(1500)); // give a wrong restart the chance to happen
    let after = node.wait_running("survivor");
    let c2 = cstatus(&after, "c");
    assert_eq!(c2["containerID"], c["containerID"], "same container");
    assert_eq!(
        c2["state"]["running"]["startedAt"], c["state"]["running"]["startedAt"],
        "same start time"
    );
    assert_eq!(c2["restartCount"], c["restartCount"]);
    assert_eq!(uid(&after), uid(&pod));
    assert_eq!(
        node.runc_list(),
        vec![id.trim_start_matches("runc://").to_string()],
        "no second container was made"
    );
    let len = log_len(&log);
    node.wait_for(WAIT, "the adopted container to keep logging", |_| {
        log_len(&log) > len
    });
    assert!(node.daemon_alive());
}

#[test]
fn exits_while_daemon_is_down_are_picked_up() {
    let mut node = Node::start();
    let script = "trap 'exit 7' USR1; echo started; while true; do sleep 0.1; done";
    node.write_manifest(
        "never.yaml",
        &pod_manifest("never")
            .restart_policy("Never")
            .container("c", script)
            .yaml(),
    );
    node.write_manifest(
        "always.yaml",
        &pod_manifest("always").container("c", script).yaml(),
    );
    let never = node.wait_running("never");
    let always = node.wait_running("always");
    node.wait_log("never", "c", "started");
    node.wait_log("always", "c", "started");
    let (never_id, always_id) = (container_id(&never, "c"), container_id(&always, "c"));

    node.kill9_daemon();
    runc_signal(&node, &never_id, "USR1");
    runc_signal(&node, &always_id, "USR1");
    // The monitors record the exits with no daemon around.
    node.wait_for(WAIT, "the monitors to record both exits", |n| {
        n.bundle(&never_id).join("exit.json").exists()
            && n.bundle(&always_id).join("exit.json").exists()
    });
    let stale = node.pod("never").unwrap();
    assert!(
        all_running(&stale),
        "nothing updates the status while the daemon is down"
    );

    node.start_daemon();
    let never = node.wait_pod("never", "the exit to show in state.terminated", |p| {
        !cstatus(p, "c")["state"]["terminated"].is_null()
    });
    let t = &cstatus(&never, "c")["state"]["terminated"];
    assert_eq!(t["exitCode"], 7, "{}", never["status"]);
    assert_eq!(t["reason"], "Error");
    assert_eq!(t["containerID"], never_id.as_str());
    assert_eq!(never["status"]["phase"], "Failed");
    assert_eq!(cstatus(&never, "c")["restartCount"], 0);

    let always = node.wait_pod("always", "a restart after the exit", |p| {
        cstatus(p, "c")["restartCount"] == 1 && all_running(p)
    });
    let last = &cstatus(&always, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 7, "{}", always["status"]);
    assert_eq!(last["containerID"], always_id.as_str());
    assert_ne!(container_id(&always, "c"), always_id);
}

/// Asserts that nothing of the pod is left: runc state, bundles, mounts, cgroups, monitors,
/// pod and log directories.
fn assert_no_trace(node: &mut Node, pod: &Value) {
    let pod_uid = uid(pod);
    let ids: Vec<String> = pod["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["containerID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        node.runc_list(),
        Vec::<String>::new(),
        "runc still knows containers"
    );
    for id in &ids {
        assert!(
            !node.bundle(id).exists(),
            "bundle {} is left",
            node.bundle(id).display()
        );
    }
    let left: Vec<String> = std::fs::read_dir(node.root.join("containers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {:?}", left);
    assert_eq!(
        node.mounts(),
        Vec::<std::path::PathBuf>::new(),
        "mounts left under {}",
        node.dir.display()
    );
    assert_eq!(
        node.pod_cgroups_present(&pod_uid),
        Vec::<std::path::PathBuf>::new(),
        "pod cgroups left"
    );
    assert!(!node.pod_dir(&pod_uid).exists(), "pod directory left");
    assert!(!node.pod_log_dir(pod).exists(), "log directory left");
    let monitors: Vec<(i32, String)> = node
        .processes()
        .into_iter()
        .filter(|(_, cmd)| !cmd.contains(" run "))
        .collect();
    assert!(monitors.is_empty(), "processes left: {:?}", monitors);
}

#[test]
fn removal_after_adoption_leaves_nothing_behind() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("tidy")
            .grace(2)
            .container("a", TICKER)
            .container("b", "sleep 3600")
            .yaml(),
    );
    let pod = node.wait_running("tidy");
    let pod_uid = uid(&pod);
    // While it runs, all of it exists (so the checks below are not vacuous).
    assert_eq!(node.runc_list().len(), 2);
    assert!(
        node.pod_cgroups_present(&pod_uid).len() >= 3,
        "{:?}",
        node.pod_cgroups_present(&pod_uid)
    );
    let mounts = node.mounts();
    for ns in ["net", "ipc", "uts"] {
        assert!(
            mounts.contains(&node.pod_dir(&pod_uid).join("ns").join(ns)),
            "{} namespace is pinned: {:?}",
            ns,
            mounts
        );
    }
    assert!(node.pod_log_dir(&pod).exists());

    node.restart_daemon();
    wait_adopted(&mut node, "tidy", 0);
    node.remove_manifest("p.yaml");
    node.wait_gone("tidy");
    assert_no_trace(&mut node, &pod);
    assert!(node.daemon_alive());
}

#[test]
fn pod_removed_while_daemon_is_down_is_cleaned_up_on_restart() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("orphan")
            .grace(2)
            .container("c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
            .yaml(),
    );
    let pod = node.wait_running("orphan");
    node.kill9_daemon();
    node.remove_manifest("p.yaml");
    node.start_daemon();
    node.wait_gone("orphan");
    assert_no_trace(&mut node, &pod);
}

//! Container lifecycle: restart policies and exit reasons, crash-loop back-off, resource limits
//! in cgroups, and graceful termination.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::time::{Duration, Instant};
use support::*;

fn terminated(pod: &Value, c: &str) -> Value {
    cstatus(pod, c)["state"]["terminated"].clone()
}

/// Waits for the pod to reach `phase` with container `c` terminated; returns the pod.
fn wait_terminated(node: &mut Node, name: &str, phase: &str) -> Value {
    node.wait_pod(
        name,
        &format!("phase {} with container c terminated", phase),
        |p| p["status"]["phase"] == phase && !terminated(p, "c").is_null(),
    )
}

/// The pod stays as it is: no restart happens in the next moment.
fn assert_stays(node: &mut Node, name: &str, before: &Value) {
    std::thread::sleep(Duration::from_millis(1500));
    let after = node.pod(name).unwrap();
    assert_eq!(after["status"]["phase"], before["status"]["phase"]);
    assert_eq!(
        cstatus(&after, "c")["restartCount"],
        0,
        "{}",
        after["status"]
    );
    assert_eq!(
        cstatus(&after, "c")["containerID"],
        cstatus(before, "c")["containerID"]
    );
}

#[test]
fn never_with_exit_0_succeeds() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("done")
            .restart_policy("Never")
            .container("c", "echo bye")
            .yaml(),
    );
    let pod = wait_terminated(&mut node, "done", "Succeeded");
    let t = terminated(&pod, "c");
    assert_eq!(t["exitCode"], 0);
    assert_eq!(t["reason"], "Completed");
    assert!(
        t["startedAt"].is_string() && t["finishedAt"].is_string(),
        "{}",
        t
    );
    assert!(t["containerID"]
        .as_str()
        .is_some_and(|id| id.starts_with("runc://")));
    assert_eq!(cstatus(&pod, "c")["ready"], false);
    assert_eq!(condition(&pod, "Ready"), Some("False"));
    assert_stays(&mut node, "done", &pod);
}

#[test]
fn never_with_exit_3_fails() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("fail")
            .restart_policy("Never")
            .container("c", "exit 3")
            .yaml(),
    );
    let pod = wait_terminated(&mut node, "fail", "Failed");
    let t = terminated(&pod, "c");
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert_stays(&mut node, "fail", &pod);
    assert!(
        node.ps_table()
            .lines()
            .any(|l| l.contains(&node.full_name("fail")) && l.contains("Error")),
        "{}",
        node.ps_table()
    );
}

#[test]
fn on_failure_with_exit_0_succeeds_without_restart() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("once")
            .restart_policy("OnFailure")
            .container("c", "exit 0")
            .yaml(),
    );
    let pod = wait_terminated(&mut node, "once", "Succeeded");
    assert_eq!(terminated(&pod, "c")["reason"], "Completed");
    assert_stays(&mut node, "once", &pod);
}

#[test]
fn on_failure_restarts_a_failed_container() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("retry")
            .restart_policy("OnFailure")
            .container("c", "exit 4")
            .yaml(),
    );
    let pod = node.wait_pod("retry", "restarted after failing", |p| {
        cstatus(p, "c")["restartCount"].as_u64() >= Some(1)
    });
    let last = &cstatus(&pod, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 4, "{}", pod["status"]);
    assert_eq!(last["reason"], "Error");
    assert_eq!(
        pod["status"]["phase"], "Running",
        "OnFailure keeps a failing pod Running while it retries"
    );
}

#[test]
fn always_restarts_even_a_completed_container() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("again").container("c", "exit 0").yaml(),
    );
    let pod = node.wait_pod("again", "restarted after completing", |p| {
        cstatus(p, "c")["restartCount"].as_u64() >= Some(1)
    });
    assert_eq!(
        cstatus(&pod, "c")["lastState"]["terminated"]["reason"],
        "Completed"
    );
    assert_eq!(pod["status"]["phase"], "Running");
}

#[test]
fn crash_loop_back_off_doubles() {
    let node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("crash")
            .container("c", "echo crashing; exit 1")
            .yaml(),
    );
    let mut seen_at: Vec<Instant> = Vec::new(); // when restartCount k was first seen, k = 0..
    let mut messages = BTreeSet::new();
    let mut saw_table_status = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = Value::Null;
    while seen_at.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "crash loop did not reach restart 4: {}\n{}",
            node.describe(),
            node.daemon_log_tail(30)
        );
        if let Some(pod) = node.pod("crash") {
            let c = cstatus(&pod, "c");
            if let Some(n) = c["restartCount"].as_u64() {
                while seen_at.len() <= n as usize {
                    seen_at.push(Instant::now());
                }
            }
            let w = &c["state"]["waiting"];
            if w["reason"] == "CrashLoopBackOff" {
                messages.insert(w["message"].as_str().unwrap_or("").to_string());
                assert_eq!(
                    pod["status"]["phase"], "Running",
                    "a crash-looping pod with restartPolicy Always is Running"
                );
                if !saw_table_status {
                    saw_table_status = node.ps_table().lines().any(|l| {
                        l.contains(&node.full_name("crash")) && l.contains("CrashLoopBackOff")
                    });
                }
            }
            last = pod;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let uid = uid(&last);
    let label = format!(
        "restarting failed container=c pod={}_default({})",
        node.full_name("crash"),
        uid
    );
    for d in ["1s", "2s", "4s"] {
        let want = format!("back-off {} {}", d, label);
        assert!(
            messages.contains(&want),
            "missing {:?} in {:?}",
            want,
            messages
        );
    }
    assert!(
        saw_table_status,
        "ps shows CrashLoopBackOff in the STATUS column"
    );
    assert_eq!(
        cstatus(&last, "c")["lastState"]["terminated"]["exitCode"],
        1
    );

    // Gaps between restarts: immediate, then 1 s, 2 s, 4 s (10 s .. scaled by 0.1), plus run time.
    let gaps: Vec<f64> = seen_at
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let msg = format!("gaps between restarts: {:?}", gaps);
    assert!(gaps[0] < 1.0, "first restart is immediate; {}", msg);
    for (gap, want) in gaps[1..].iter().zip([1.0, 2.0, 4.0]) {
        // Each observation may be late by one poll; allow that much early and 2.5 s late.
        assert!(
            *gap >= want - 0.25 && *gap < want + 2.5,
            "back-off {}s; {}",
            want,
            msg
        );
    }
    assert!(
        gaps[3] > gaps[2] && gaps[2] > gaps[1],
        "back-off grows; {}",
        msg
    );
}

#[test]
fn oom_killed() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("oom")
            .restart_policy("Never")
            .container_cmd("c", &["tail", "/dev/zero"])
            .limit("memory", "16Mi")
            .yaml(),
    );
    let pod = wait_terminated(&mut node, "oom", "Failed");
    let t = terminated(&pod, "c");
    assert_eq!(t["reason"], "OOMKilled", "{}", t);
    assert_eq!(t["exitCode"], 137);
}

#[test]
fn start_error_for_a_missing_command() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("noexec")
            .restart_policy("Never")
            .container_cmd("c", &["/no/such/binary", "arg"])
            .yaml(),
    );
    let pod = wait_terminated(&mut node, "noexec", "Failed");
    let t = terminated(&pod, "c");
    assert_eq!(t["reason"], "StartError", "{}", t);
    assert_eq!(t["exitCode"], 128);
    assert!(
        t["message"]
            .as_str()
            .is_some_and(|m| m.contains("/no/such/binary")),
        "the message names the command: {}",
        t
    );
    // Nothing of the failed container is left behind in runc.
    node.wait_for(WAIT, "runc to forget the failed container", |n| {
        n.runc_list().is_empty()
    });
}

#[test]
fn limits_go_to_container_and_pod_cgroups() {
    let mut node = Node::start();
    let manifest = pod_manifest("limited")
        .container("c", "sleep 3600")
        .limit("memory", "32Mi")
        .limit("cpu", "200m")
        .container("d", "sleep 3600")
        .limit("memory", "16Mi")
        .limit("cpu", "0.1");
    node.write_manifest("p.yaml", &manifest.yaml());
    let pod = node.wait_running("limited");
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    let pod_uid = uid(&pod);
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("reading {}: {}", p.display(), e))
            .trim()
            .to_string()
    };
    let (mem, cpu) = (
        node.pod_cgroup_dir("memory", &pod_uid),
        node.pod_cgroup_dir("cpu", &pod_uid),
    );
    let (c_id, d_id) = (
        container_id(&pod, "c")
            .trim_start_matches("runc://")
            .to_string(),
        container_id(&pod, "d")
            .trim_start_matches("runc://")
            .to_string(),
    );

    assert_eq!(
        read(mem.join(&c_id).join("memory.limit_in_bytes")),
        "33554432"
    );
    assert_eq!(read(cpu.join(&c_id).join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read(cpu.join(&c_id).join("cpu.cfs_period_us")), "100000");
    assert_eq!(
        read(mem.join(&d_id).join("memory.limit_in_bytes")),
        "16777216"
    );
    assert_eq!(read(cpu.join(&d_id).join("cpu.cfs_quota_us")), "10000");
    // The pod cgroup holds the sum.
    assert_eq!(
        read(mem.join("memory.limit_in_bytes")),
        (48u64 << 20).to_string()
    );
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "30000");

    // The container's processes are in its cgroup.
    let procs = read(mem.join(&c_id).join("cgroup.procs"));
    assert!(
        !procs.is_empty(),
        "container c's memory cgroup has its processes"
    );
}

/// Opens the container's current log file, so its end can be read after the pod (and its log
/// directory) is gone.
fn open_log(node: &Node, pod: &Value, c: &str) -> std::fs::File {
    let path = node.pod_log_dir(pod).join(c).join("0.log");
    std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {}", path.display(), e))
}

#[test]
fn removal_sends_term_first() {
    let mut node = Node::start();
    let script = "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.1; done";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("polite")
            .grace(30)
            .container("c", script)
            .yaml(),
    );
    let pod = node.wait_running("polite");
    node.wait_log("polite", "c", "started");
    let mut log = open_log(&node, &pod, "c");

    let t0 = Instant::now();
    node.remove_manifest("p.yaml");
    node.wait_gone("polite");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a container that exits on TERM stops long before its 30 s grace period; took {:?}",
        took
    );
    let mut text = String::new();
    log.read_to_string(&mut text).unwrap();
    assert!(
        text.contains("stdout F got TERM"),
        "the container saw SIGTERM: {}",
        text
    );
    assert!(
        !node.daemon_log().contains("killing it"),
        "no SIGKILL was needed:\n{}",
        node.daemon_log_tail(10)
    );
}

#[test]
fn removal_kills_after_the_grace_period() {
    let mut node = Node::start();
    let script = "trap '' TERM; echo started; while true; do sleep 0.1; done";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("stubborn")
            .grace(3)
            .container("c", script)
            .yaml(),
    );
    node.wait_running("stubborn");
    node.wait_log("stubborn", "c", "started");

    let t0 = Instant::now();
    node.remove_manifest("p.yaml");
    node.wait_gone("stubborn");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "killed before its 3 s grace period ended: {:?}",
        took
    );
    assert!(
        took < Duration::from_secs(8),
        "not killed promptly after its grace period: {:?}",
        took
    );
    assert!(
        node.daemon_log()
            .contains("did not stop within 3s; killing it"),
        "{}",
        node.daemon_log_tail(10)
    );
}

#[test]
fn grace_period_has_a_two_second_minimum() {
    let mut node = Node::start();
    let script = "trap '' TERM; echo started; while true; do sleep 0.1; done";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("hasty").grace(0).container("c", script).yaml(),
    );
    node.wait_running("hasty");
    node.wait_log("hasty", "c", "started");
    let t0 = Instant::now();
    node.remove_manifest("p.yaml");
    node.wait_gone("hasty");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(7),
        "took {:?}",
        took
    );
}

//! The order and life of a pod's containers, with real runc: init containers in order and to
//! completion, sidecars beside the app containers, postStart/preStop hooks, termination messages
//! and activeDeadlineSeconds.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

/// Stops at once on SIGTERM.
const STOPS_ON_TERM: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";

fn busybox(name: &str, script: &str) -> Value {
    json!({"name": name, "image": IMAGE, "command": ["sh", "-c", script]})
}

fn mount(c: &mut Value, volume: &str, path: &str) {
    c["volumeMounts"] = json!([{"name": volume, "mountPath": path}]);
}

/// A pod with a shared emptyDir `work` mounted at /work in every container given.
fn pod_with_work_dir(name: &str, init: Vec<Value>, apps: Vec<Value>, policy: &str) -> Value {
    let mut pod = pod_manifest(name).restart_policy(policy).grace(5).value();
    let with_work = |mut list: Vec<Value>| {
        for c in &mut list {
            mount(c, "work", "/work");
        }
        list
    };
    pod["spec"]["initContainers"] = json!(with_work(init));
    pod["spec"]["containers"] = json!(with_work(apps));
    pod["spec"]["volumes"] = json!([{"name": "work", "emptyDir": {}}]);
    pod
}

fn write_pod(node: &Node, pod: &Value) {
    let name = pod["metadata"]["name"].as_str().expect("pod name");
    node.write_manifest(&format!("{}.yaml", name), &pod.to_string());
}

fn init_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn condition_reason(pod: &Value, type_: &str) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .map(|c| c["reason"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn init_containers_run_in_order_before_the_app() {
    let mut node = Node::start();
    let pod = pod_with_work_dir(
        "ordered",
        vec![
            busybox("one", "sleep 0.3; echo one >> /work/order; echo wrote one"),
            busybox("two", "grep -q one /work/order && echo two >> /work/order"),
        ],
        vec![busybox("app", "cat /work/order; sleep 3600")],
        "Always",
    );
    write_pod(&node, &pod);
    // While the first runs, the app waits as PodInitializing.
    let early = node.wait_pod("ordered", "initializing", |p| {
        p["status"]["phase"] == "Pending"
            && cstatus(p, "app")["state"]["waiting"]["reason"] == "PodInitializing"
    });
    assert_eq!(condition(&early, "Initialized"), Some("False"));
    assert_eq!(
        condition_reason(&early, "Initialized"),
        "ContainersNotInitialized"
    );
    let pod = node.wait_running("ordered");
    assert_eq!(node.wait_log("ordered", "app", "two"), "one\ntwo\n");
    // An init container's output, as `kubectl logs -c`.
    assert_eq!(node.logs("ordered", "one"), "wrote one\n");
    for name in ["one", "two"] {
        let t = &init_status(&pod, name)["state"]["terminated"];
        assert_eq!(t["exitCode"], 0, "{}: {}", name, pod["status"]);
        assert_eq!(t["reason"], "Completed");
    }
    assert_eq!(condition(&pod, "Initialized"), Some("True"));
    assert_eq!(condition(&pod, "Ready"), Some("True"));
    assert!(node.ps_table().contains("1/1"), "{}", node.ps_table());
}

#[test]
fn a_failed_init_container_fails_the_pod_under_restart_policy_never() {
    let mut node = Node::start();
    let pod = pod_with_work_dir(
        "broken-init",
        vec![busybox("setup", "echo cannot set up; exit 3")],
        vec![busybox("app", "touch /work/app-ran; sleep 3600")],
        "Never",
    );
    write_pod(&node, &pod);
    let pod = node.wait_pod("broken-init", "phase Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    let t = &init_status(&pod, "setup")["state"]["terminated"];
    assert_eq!(t["exitCode"], 3, "{}", pod["status"]);
    assert_eq!(t["reason"], "Error");
    assert_eq!(
        cstatus(&pod, "app")["state"]["waiting"]["reason"],
        "PodInitializing",
        "the app container never started: {}",
        pod["status"]
    );
    assert_eq!(condition(&pod, "Initialized"), Some("False"));
    let table = node.ps_table();
    assert!(table.contains("Init:Error"), "{}", table);
}

#[test]
fn a_failing_init_container_is_retried_until_it_succeeds() {
    let mut node = Node::start();
    let pod = pod_with_work_dir(
        "retried-init",
        vec![busybox(
            "flaky",
            "if [ -e /work/tried ]; then exit 0; fi; touch /work/tried; exit 1",
        )],
        vec![busybox("app", "sleep 3600")],
        "Always",
    );
    write_pod(&node, &pod);
    let pod = node.wait_running("retried-init");
    let flaky = init_status(&pod, "flaky");
    assert_eq!(flaky["restartCount"], 1, "{}", pod["status"]);
    assert_eq!(flaky["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(flaky["state"]["terminated"]["exitCode"], 0);
}

#[test]
fn a_sidecar_runs_beside_the_app_and_stops_after_it() {
    let mut node = Node::start();
    let mut sidecar = busybox(
        "helper",
        &format!("echo up > /work/sidecar; {}", STOPS_ON_TERM),
    );
    sidecar["restartPolicy"] = json!("Always");
    let pod = pod_with_work_dir(
        "with-sidecar",
        vec![sidecar],
        vec![busybox("app", "sleep 1; cat /work/sidecar")],
        "Never",
    );
    write_pod(&node, &pod);
    let running = node.wait_pod("with-sidecar", "app and sidecar running", |p| {
        !cstatus(p, "app")["state"]["running"].is_null()
            && !init_status(p, "helper")["state"]["running"].is_null()
    });
    assert_eq!(condition(&running, "Initialized"), Some("True"));
    assert!(node.ps_table().contains("2/2"), "{}", node.ps_table());
    let done = node.wait_pod("with-sidecar", "Succeeded, sidecar stopped", |p| {
        p["status"]["phase"] == "Succeeded"
            && !init_status(p, "helper")["state"]["terminated"].is_null()
    });
    assert_eq!(node.logs("with-sidecar", "app"), "up\n");
    assert_eq!(
        init_status(&done, "helper")["restartCount"],
        0,
        "a sidecar stopped because the app is done is not restarted: {}",
        done["status"]
    );
}

#[test]
fn post_start_and_pre_stop_hooks_run_in_the_container() {
    let mut node = Node::start();
    let hooks = node.dir.join("hooks");
    let mut app = busybox("app", STOPS_ON_TERM);
    app["lifecycle"] = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "sleep 0.5; echo started > /hooks/post"]}},
        "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /hooks/pre"]}},
    });
    mount(&mut app, "hooks", "/hooks");
    let mut sleeper = busybox("sleeper", STOPS_ON_TERM);
    sleeper["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 2}}});
    let mut pod = pod_manifest("hooked").grace(20).value();
    pod["spec"]["containers"] = json!([app, sleeper]);
    pod["spec"]["volumes"] = json!([{"name": "hooks", "hostPath": {
        "path": hooks.display().to_string(), "type": "DirectoryOrCreate"}}]);
    write_pod(&node, &pod);
    node.wait_running("hooked");
    // Running is reported only once postStart returned.
    assert_eq!(
        std::fs::read_to_string(hooks.join("post")).unwrap_or_default(),
        "started\n"
    );
    let t0 = Instant::now();
    node.remove_manifest("hooked.yaml");
    node.wait_gone("hooked");
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "the sleep hook held the container for 2 s; gone after {:?}",
        t0.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre")).unwrap_or_default(),
        "stopping\n"
    );
}

#[test]
fn a_failed_post_start_hook_kills_the_container() {
    let mut node = Node::start();
    let mut app = busybox("app", STOPS_ON_TERM);
    app["lifecycle"] = json!({"postStart": {"exec": {"command": ["sh", "-c", "exit 7"]}}});
    let mut pod = pod_manifest("bad-hook").value();
    pod["spec"]["containers"] = json!([app]);
    write_pod(&node, &pod);
    let pod = node.wait_pod("bad-hook", "restarted after its hook failed", |p| {
        cstatus(p, "app")["restartCount"].as_u64() >= Some(1)
    });
    assert!(
        cstatus(&pod, "app")["lastState"]["terminated"]["exitCode"] != 0,
        "{}",
        pod["status"]
    );
    let log = node.daemon_log();
    assert!(
        log.contains("PostStartHook failed") && log.contains("exited with 7"),
        "{}",
        node.daemon_log_tail(30)
    );
}

#[test]
fn termination_messages_come_from_the_file_or_the_log() {
    let mut node = Node::start();
    let from_file = busybox("file", "printf bye > /dev/termination-log; exit 1");
    let mut from_log = busybox("log", "echo first; echo oops; exit 2");
    from_log["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let mut custom = busybox("custom", "echo done > /tmp/msg; exit 0");
    custom["terminationMessagePath"] = json!("/tmp/msg");
    let mut pod = pod_manifest("messages").restart_policy("Never").value();
    pod["spec"]["containers"] = json!([from_file, from_log, custom]);
    write_pod(&node, &pod);
    let pod = node.wait_pod("messages", "all terminated", |p| {
        ["file", "log", "custom"]
            .iter()
            .all(|c| !cstatus(p, c)["state"]["terminated"].is_null())
    });
    let message = |c: &str| {
        cstatus(&pod, c)["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(message("file"), "bye", "{}", pod["status"]);
    assert_eq!(message("log").trim_end(), "first\noops");
    assert_eq!(message("custom"), "done\n");
    assert_eq!(pod["status"]["phase"], "Failed");
}

#[test]
fn active_deadline_fails_the_pod() {
    let mut node = Node::start();
    let mut pod = pod_manifest("deadline")
        .grace(2)
        .container("c", STOPS_ON_TERM)
        .value();
    pod["spec"]["activeDeadlineSeconds"] = json!(2);
    write_pod(&node, &pod);
    node.wait_running("deadline");
    let pod = node.wait_pod("deadline", "Failed with DeadlineExceeded", |p| {
        p["status"]["phase"] == "Failed" && !cstatus(p, "c")["state"]["terminated"].is_null()
    });
    assert_eq!(pod["status"]["reason"], "DeadlineExceeded");
    assert_eq!(cstatus(&pod, "c")["restartCount"], 0, "{}", pod["status"]);
    assert_eq!(
        pod["status"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
}

#[test]
fn init_containers_run_again_in_a_new_sandbox_after_a_reboot() {
    let mut node = Node::start();
    let count = node.dir.join("count");
    std::fs::create_dir_all(&count).expect("count dir");
    let mut init = busybox("init", "echo run >> /count/runs");
    mount(&mut init, "count", "/count");
    let mut pod = pod_manifest("reinit").value();
    pod["spec"]["initContainers"] = json!([init]);
    pod["spec"]["containers"] = json!([busybox("app", "sleep 3600")]);
    pod["spec"]["volumes"] = json!([{"name": "count", "hostPath": {
        "path": count.display().to_string(), "type": "Directory"}}]);
    write_pod(&node, &pod);
    node.wait_running("reinit");
    node.simulate_reboot();
    node.start_daemon();
    node.wait_pod("reinit", "running again in a new sandbox", |p| {
        all_running(p) && cstatus(p, "app")["restartCount"].as_u64() >= Some(1)
    });
    assert_eq!(
        std::fs::read_to_string(count.join("runs")).unwrap_or_default(),
        "run\nrun\n"
    );
}

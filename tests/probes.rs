//! Container probes with real containers: liveness restarts, readiness flips `ready` without a
//! restart, startup gates the others, and a probe tinylet cannot run is refused with a reason.
//! HTTP and TCP probes reach the pod's loopback inside its own network namespace.

mod support;

use serde_json::json;
use support::*;

#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    let mut node = Node::start();
    node.write_manifest(
        "live.yaml",
        &pod_manifest("live")
            .grace(2)
            .container(
                "c",
                "touch /tmp/healthy; sleep 2; rm /tmp/healthy; trap 'exit 0' TERM; sleep 3600 & wait",
            )
            .set(
                "livenessProbe",
                json!({"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}),
            )
            .yaml(),
    );
    node.wait_running("live");
    let pod = node.wait_pod("live", "a restart after the liveness probe failed", |p| {
        cstatus(p, "c")["restartCount"].as_u64() >= Some(1)
    });
    let last = &cstatus(&pod, "c")["lastState"]["terminated"];
    assert!(last.is_object(), "{}", pod["status"]);
    assert!(node
        .daemon_log()
        .contains("container c failed its liveness probe; stopping it"));
}

#[test]
fn readiness_follows_an_http_probe_without_restarts() {
    let mut node = Node::start();
    node.write_manifest(
        "ready.yaml",
        &pod_manifest("ready")
            .container(
                "web",
                "mkdir -p /www; echo ok > /www/ready; (sleep 3; rm /www/ready) & exec httpd -f -p 8080 -h /www",
            )
            .set("ports", json!([{"name": "http", "containerPort": 8080}]))
            .set(
                "readinessProbe",
                json!({"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1}),
            )
            .yaml(),
    );
    node.wait_pod("ready", "ready", |p| {
        cstatus(p, "web")["ready"] == true && condition(p, "Ready") == Some("True")
    });
    let pod = node.wait_pod("ready", "not ready once /ready is gone", |p| {
        cstatus(p, "web")["ready"] == false && condition(p, "Ready") == Some("False")
    });
    assert_eq!(cstatus(&pod, "web")["restartCount"], 0);
    assert!(cstatus(&pod, "web")["state"]["running"].is_object());
}

#[test]
fn a_startup_probe_holds_the_container_not_started_until_it_passes() {
    let mut node = Node::start();
    node.write_manifest(
        "slow.yaml",
        &pod_manifest("slow")
            .container("c", "sleep 2; mkdir -p /w; exec httpd -f -p 9000 -h /w")
            .set(
                "startupProbe",
                json!({"tcpSocket": {"port": 9000}, "periodSeconds": 1, "failureThreshold": 30}),
            )
            .yaml(),
    );
    let early = node.wait_pod("slow", "running, not yet started", |p| {
        cstatus(p, "c")["state"]["running"].is_object()
    });
    assert_eq!(
        cstatus(&early, "c")["started"],
        false,
        "{}",
        early["status"]
    );
    assert_eq!(cstatus(&early, "c")["ready"], false);
    let later = node.wait_pod("slow", "started once the port answers", |p| {
        cstatus(p, "c")["started"] == true
    });
    assert_eq!(cstatus(&later, "c")["ready"], true);
    assert_eq!(cstatus(&later, "c")["restartCount"], 0);
}

#[test]
fn a_probe_tinylet_cannot_run_is_refused_with_a_reason() {
    let mut node = Node::start();
    node.write_manifest(
        "grpc.yaml",
        &pod_manifest("grpc")
            .container("c", "sleep 3600")
            .set("livenessProbe", json!({"grpc": {"port": 9000}}))
            .yaml(),
    );
    let pod = node.wait_pod("grpc", "CreateContainerConfigError", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    let msg = cstatus(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("livenessProbe.grpc"), "{}", msg);
    assert!(node.runc_list().is_empty());
}

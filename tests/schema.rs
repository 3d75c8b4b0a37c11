//! Every pod `tinylet ps -o json` prints, in every state a pod can be in, is valid against the
//! official Kubernetes v1.37 JSON schema (strict: no unknown fields), via `kubernetes-validate`
//! (installed by scripts/install-deps).

mod support;

use serde_json::{json, Value};
use std::process::Command;
use support::*;

#[test]
fn pods_in_every_state_validate_against_the_kubernetes_schema() {
    let mut node = Node::start();
    node.write_manifest(
        "pods.yaml",
        &[
            pod_manifest("running")
                .container("a", "sleep 3600")
                .limit("memory", "32Mi")
                .limit("cpu", "200m")
                .container("b", "sleep 3600"),
            pod_manifest("done")
                .restart_policy("Never")
                .container("c", "echo ok"),
            pod_manifest("failed")
                .restart_policy("Never")
                .container("c", "exit 3"),
            pod_manifest("crashing").container("c", "exit 1"),
            pod_manifest("noimage")
                .container("c", "true")
                .set("image", json!("missing.example/none:1"))
                .set("imagePullPolicy", json!("Never")),
            pod_manifest("badcmd")
                .restart_policy("Never")
                .container_cmd("c", &["/nonexistent"]),
            pod_manifest("hostnet")
                .host_network()
                .container("c", "sleep 3600"),
        ]
        .iter()
        .map(|m| m.yaml())
        .collect::<Vec<_>>()
        .join("---\n"),
    );
    node.wait_running("running");
    node.wait_running("hostnet");
    node.wait_pod("done", "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    node.wait_pod("failed", "Failed", |p| p["status"]["phase"] == "Failed");
    node.wait_pod("badcmd", "Failed with StartError", |p| {
        cstatus(p, "c")["state"]["terminated"]["reason"] == "StartError"
    });
    node.wait_pod("crashing", "CrashLoopBackOff", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    node.wait_pod("noimage", "ErrImageNeverPull", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    });

    let list = node.ps_json();
    assert_eq!(list["kind"], "PodList");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 7);
    let dir = std::env::temp_dir().join(format!("tinylet-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, pod) in items.iter().enumerate() {
        let path = dir.join(format!("pod-{}.json", i));
        std::fs::write(&path, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
        files.push(path);
    }
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate is not installed: run scripts/install-deps");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "schema validation failed:\n{}",
        report
    );
    assert_eq!(
        report.matches("passed for resource pod/").count(),
        7,
        "{}",
        report
    );
    // A sanity check that strict validation has teeth: an unknown status field must fail.
    let mut bad: Value = items[0].clone();
    bad["status"]["bogusField"] = json!(1);
    let bad_path =
        std::env::temp_dir().join(format!("tinylet-schema-bad-{}.json", std::process::id()));
    std::fs::write(&bad_path, serde_json::to_vec(&bad).unwrap()).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(&bad_path)
        .output()
        .unwrap();
    std::fs::remove_file(&bad_path).ok();
    assert!(
        !out.status.success(),
        "kubernetes-validate accepted an unknown field"
    );
}

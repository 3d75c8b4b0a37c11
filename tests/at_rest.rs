//! Credentials at rest (issue 10, point 6; docs/THREAT_MODEL.md): files that can hold Secret
//! values are root's alone, and values never reach the agent's log.
//!
//! Run: `cargo test --test at_rest` (root: a real runc container).

mod support;

use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use support::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn files_that_hold_environment_values_are_root_only_and_values_are_never_logged() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("p")
            .container_cmd("c", &["sleep", "100000"])
            .set(
                "env",
                json!([{"name": "PASSWORD", "value": "hunter2-at-rest"}]),
            )
            .yaml(),
    );
    let pod = node.wait_running("p");
    // The OCI spec runc reads carries the environment (Secret values, in cluster mode).
    let spec = node.bundle(&container_id(&pod, "c")).join("config.json");
    assert!(std::fs::read_to_string(&spec)
        .unwrap()
        .contains("hunter2-at-rest"));
    assert_eq!(mode(&spec), 0o600, "{}", spec.display());
    let pod_json = node.pod_dir(&uid(&pod)).join("pod.json");
    assert_eq!(mode(&pod_json), 0o600, "{}", pod_json.display());
    assert!(!node.daemon_log().contains("hunter2-at-rest"));
}

//! Image garbage collection: `tinylet image prune` next to running and crash-looping pods, and
//! the daemon's threshold-driven GC thread. (Filling a real disk is not safe in a test; a 1%
//! high threshold makes any disk "full" instead. The LRU order, minimum age and thresholds are
//! covered by the store's unit tests with a fake usage function.)

mod support;

use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use support::oci::{one_file_tar, write_image_layout};
use support::*;

const ALIAS: &str = "other.local/x:1";
const TINY: &str = "other.local/tiny:1";

/// A one-file OCI layout: an image distinct from busybox, with its own blobs and snapshot.
fn write_tiny_layout(dir: &Path) {
    let layer = one_file_tar("payload", b"tiny image payload\n");
    write_image_layout(dir, &[layer], &["/payload"], None);
}

fn import_tiny(node: &Node) {
    let layout = node.dir.join("tiny-layout");
    write_tiny_layout(&layout);
    node.tinylet_ok(&[
        "image",
        "import",
        &layout.display().to_string(),
        "--name",
        TINY,
    ]);
}

fn index(node: &Node) -> Value {
    let path = node.root.join("images/index.json");
    serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
}

/// The snapshot directory of the image recorded under `name`.
fn snapshot(node: &Node, name: &str) -> PathBuf {
    let config = index(node)["images"][name]["config"]
        .as_str()
        .unwrap_or_else(|| panic!("{} is not in the index", name))
        .to_string();
    node.root.join("images/snapshots").join(&config[7..])
}

/// The image names `tinylet image ls` prints.
fn listed(node: &Node) -> Vec<String> {
    node.tinylet_ok(&["image", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn prune_removes_only_images_no_pod_references() {
    let mut node = Node::start();
    let busybox = image_layout().display().to_string();
    node.tinylet_ok(&["image", "import", &busybox, "--name", ALIAS]);
    import_tiny(&node);
    let used_snapshot = snapshot(&node, IMAGE);
    let tiny_snapshot = snapshot(&node, TINY);
    node.write_manifest(
        "web.yaml",
        &pod_manifest("web").container("c", "sleep 3600").yaml(),
    );
    // A pod whose container is not running (crash loop): its image is still referenced.
    node.write_manifest(
        "crash.yaml",
        &pod_manifest("crash")
            .container("c", "exit 1")
            .set("image", json!(ALIAS))
            .yaml(),
    );
    let web = node.wait_running("web");
    node.wait_pod("crash", "container c in back-off", |p| {
        cstatus(p, "c")["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    // The pod worker recorded the use of the image it started from.
    assert!(
        index(&node)["images"][IMAGE]["lastUsed"].is_u64(),
        "{}",
        index(&node)
    );

    let out = node.tinylet_ok(&["image", "prune"]);
    assert!(out.contains(&format!("removed {} (", TINY)), "{}", out);
    assert!(!out.contains(ALIAS) && !out.contains(IMAGE), "{}", out);
    assert!(!tiny_snapshot.exists());
    assert_eq!(listed(&node), [IMAGE, ALIAS]);

    // Once the crash-looping pod is gone, its image goes too; the running pod's stays.
    node.remove_manifest("crash.yaml");
    node.wait_gone("crash");
    let out = node.tinylet_ok(&["image", "prune"]);
    assert!(out.contains(&format!("removed {} (", ALIAS)), "{}", out);
    assert!(out.contains("1 image(s) removed"), "{}", out);
    assert_eq!(listed(&node), [IMAGE]);
    // The alias shared busybox's content, which the running pod's image still needs.
    assert!(used_snapshot.is_dir());
    let now = node.wait_running("web");
    assert_eq!(container_id(&now, "c"), container_id(&web, "c"));
    assert!(node
        .tinylet_ok(&["image", "prune"])
        .contains("no unused images"));
}

#[test]
fn daemon_gc_removes_unused_images_over_the_high_threshold() {
    let mut node = Node::start();
    node.write_manifest(
        "web.yaml",
        &pod_manifest("web").container("c", "sleep 3600").yaml(),
    );
    let web = node.wait_running("web");
    import_tiny(&node);
    let used_snapshot = snapshot(&node, IMAGE);
    // Any disk is 1% full: GC runs every second and removes all it may.
    node.extra_run_args = [
        "--image-gc-high-threshold",
        "1",
        "--image-gc-low-threshold",
        "0",
        "--image-gc-period",
        "1s",
        "--minimum-image-ttl-duration",
        "0s",
    ]
    .map(String::from)
    .to_vec();
    node.restart_daemon();
    // The index changes before the daemon logs the removal: wait for both.
    let removed_line = format!("used >= 1%: removed image {} (", TINY);
    node.wait_for(
        WAIT,
        "image GC to remove the unused image and say so",
        |n| !listed(n).iter().any(|i| i == TINY) && n.daemon_log().contains(&removed_line),
    );
    assert_eq!(listed(&node), [IMAGE]);
    assert!(used_snapshot.is_dir());
    let now = node.wait_running("web");
    assert_eq!(container_id(&now, "c"), container_id(&web, "c"));
}

#[test]
fn bad_image_gc_flags_are_refused() {
    let node = Node::create();
    for (flags, msg) in [
        (
            ["--image-gc-low-threshold", "90"],
            "must be less than --image-gc-high-threshold",
        ),
        (["--image-gc-high-threshold", "101"], "0 to 100"),
        (["--image-gc-period", "0s"], "positive duration"),
        (["--minimum-image-ttl-duration", "soon"], "not a duration"),
    ] {
        let mut args = node.run_args();
        args.extend(flags.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = node.tinylet(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(msg),
            "{:?}: {}",
            flags,
            err
        );
    }
}

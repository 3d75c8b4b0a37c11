//! Bad manifests, missing images and a second agent: reported clearly, never fatal, and never
//! in the way of the pods that are fine.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A valid pod's YAML with `from` replaced by `to`.
fn good_with(name: &str, from: &str, to: &str) -> String {
    let y = pod_manifest(name).container("c", "sleep 3600").yaml();
    assert!(y.contains(from), "{:?} not in {}", from, y);
    y.replace(from, to)
}

/// The daemon log has a line naming both the file and the field.
fn assert_logged(node: &Node, file: &str, field: &str) {
    let path = node.manifest_path(file).display().to_string();
    let log = node.daemon_log();
    assert!(
        log.lines().any(|l| l.contains(&path) && l.contains(field)),
        "no daemon log line names {} and {:?}:\n{}",
        path,
        field,
        node.daemon_log_tail(20)
    );
}

/// The lines of `tinylet ps`'s "manifests not running:" footer.
fn footer(node: &Node) -> Vec<String> {
    let table = node.ps_table();
    table
        .split_once("manifests not running:\n")
        .map(|(_, f)| {
            f.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn invalid_manifests_are_reported_and_do_not_stop_other_pods() {
    let mut node = Node::start();
    node.write_manifest(
        "good.yaml",
        &pod_manifest("good").container("c", "sleep 3600").yaml(),
    );
    node.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n",
    );
    node.write_manifest("kind.yaml", &good_with("kindly", "\"Pod\"", "Deployment"));
    node.write_manifest(
        "noimage.yaml",
        &good_with(
            "noimage",
            &format!("image: \"{}\"", IMAGE),
            "imagePullPolicy: \"Never\"",
        ),
    );
    let bad_quantity = pod_manifest("qty")
        .container("c", "sleep 3600")
        .limit("memory", "lots")
        .yaml();
    node.write_manifest("quantity.yaml", &bad_quantity);

    node.wait_running("good");
    let cases = [
        ("broken.yaml", "YAML"),
        ("kind.yaml", "kind"),
        ("noimage.yaml", "spec.containers[0].image"),
        (
            "quantity.yaml",
            "spec.containers[0].resources.limits.memory",
        ),
    ];
    node.wait_for(WAIT, "the footer to list the four bad manifests", |n| {
        footer(n).len() == 4
    });
    let f = footer(&node);
    for (file, field) in cases {
        assert_logged(&node, file, field);
        let path = node.manifest_path(file).display().to_string();
        assert!(
            f.iter().any(|l| l.contains(&path) && l.contains(field)),
            "ps footer lacks {} / {}: {:?}",
            file,
            field,
            f
        );
    }
    let names: Vec<String> = node.ps_json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, [node.full_name("good")], "only the valid pod exists");
    assert!(node.daemon_alive(), "bad manifests never stop the daemon");

    // Fixing a file starts its pod and takes it off the list.
    node.write_manifest("quantity.yaml", &bad_quantity.replace("lots", "64Mi"));
    node.wait_running("qty");
    node.wait_for(WAIT, "quantity.yaml to leave the footer", |n| {
        footer(n).len() == 3
    });
    assert!(!footer(&node).iter().any(|l| l.contains("quantity.yaml")));
    let good = node.pod("good").unwrap();
    assert_eq!(
        cstatus(&good, "c")["restartCount"],
        0,
        "the good pod was never disturbed"
    );
    assert!(node.daemon_alive());
}

#[test]
fn image_never_pulled_then_imported() {
    let mut node = Node::create();
    node.start_daemon();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("later")
            .container("c", "sleep 3600")
            .set("imagePullPolicy", "Never".into())
            .yaml(),
    );
    let pod = node.wait_pod("later", "waiting with ErrImageNeverPull", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    });
    let w = &cstatus(&pod, "c")["state"]["waiting"];
    assert!(
        w["message"].as_str().is_some_and(|m| m.contains(IMAGE)),
        "{}",
        w
    );
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(node
        .ps_table()
        .lines()
        .any(|l| l.contains(&node.full_name("later")) && l.contains("ErrImageNeverPull")));

    let t0 = Instant::now();
    node.import_image();
    node.wait_running("later");
    // The retry back-off (1 s doubling, scaled by 0.1) has only grown a little by now; the bound
    // is loose because a loaded machine stretches every step.
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "pod started {:?} after the import",
        t0.elapsed()
    );
}

#[test]
fn image_missing_then_image_pull_back_off_then_imported() {
    let mut node = Node::create();
    node.start_daemon();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("pull").container("c", "sleep 3600").yaml(),
    );
    let mut reasons = Vec::new();
    // As the kubelet shows it: each failed attempt is ErrImagePull (with the registry's answer),
    // the wait until the next one ImagePullBackOff.
    node.wait_for(
        WAIT,
        "ErrImagePull, ImagePullBackOff, then ErrImagePull again",
        |n| {
            if let Some(p) = n.pod("pull") {
                if let Some(r) = cstatus(&p, "c")["state"]["waiting"]["reason"].as_str() {
                    if reasons.last().map(String::as_str) != Some(r) {
                        reasons.push(r.to_string());
                    }
                }
            }
            reasons
                .iter()
                .skip_while(|r| *r != "ImagePullBackOff")
                .any(|r| r == "ErrImagePull")
        },
    );
    let first_pull_error = reasons.iter().position(|r| r == "ErrImagePull");
    let first_back_off = reasons.iter().position(|r| r == "ImagePullBackOff");
    assert!(
        first_pull_error.is_some() && first_pull_error < first_back_off,
        "reasons seen: {:?}",
        reasons
    );
    let pod = node.pod("pull").unwrap();
    assert!(cstatus(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .is_some_and(|m| m.contains(IMAGE)));
    assert!(node.daemon_alive());

    // Picked up at the next retry of the (scaled) back-off, not at its 30 s cap; the bound is
    // loose because a loaded CI machine stretches every step.
    let t0 = Instant::now();
    node.import_image();
    node.wait_running("pull");
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "pod started {:?} after the import",
        t0.elapsed()
    );
}

#[test]
fn a_second_agent_on_the_same_root_dir_is_refused() {
    let mut node = Node::start();
    let mut second = Command::new(bin())
        .args(node.run_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > WAIT {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second tinylet run on the same root dir kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        err.contains("another tinylet is running")
            && err.contains(&node.root.display().to_string()),
        "{}",
        err
    );
    assert!(node.daemon_alive(), "the first agent is unaffected");
}

/// Hostile manifests (an alias bomb, a huge file, deep nesting, binary junk) are refused with a
/// reason while the agent stays small and keeps running the good pod.
#[test]
fn hostile_manifests_are_refused_without_hurting_the_agent() {
    let mut node = Node::start();
    node.write_manifest(
        "good.yaml",
        &pod_manifest("good").container("c", "sleep 3600").yaml(),
    );
    let bomb = include_str!("data/alias-bomb.yaml");
    node.write_manifest("bomb.yaml", bomb);
    node.write_manifest("huge.yaml", &format!("# {}\n", "x".repeat(5 << 20)));
    node.write_manifest(
        "deep.yaml",
        &format!("a: {}{}\n", "[".repeat(50_000), "]".repeat(50_000)),
    );
    std::fs::write(
        node.manifest_path("junk.yaml"),
        [0xffu8, 0xfe, 0x00, 0x01, 0x80],
    )
    .unwrap();

    node.wait_running("good");
    node.wait_for(WAIT, "the footer to list the four hostile manifests", |n| {
        footer(n).len() >= 4
    });
    let f = footer(&node).join("\n");
    assert!(f.contains("bomb.yaml") && f.contains("alias bomb"), "{}", f);
    assert!(
        f.contains("huge.yaml") && f.contains("larger than 4 MiB"),
        "{}",
        f
    );
    assert!(
        f.contains("deep.yaml") && f.contains("recursion limit"),
        "{}",
        f
    );
    assert!(f.contains("junk.yaml") && f.contains("not UTF-8"), "{}", f);
    assert!(
        node.daemon_alive(),
        "the agent died:\n{}",
        node.daemon_log_tail(20)
    );
    let pid = node.daemon_pid();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kib < 64 * 1024,
        "the agent's peak RSS reached {} KiB",
        rss_kib
    );
}

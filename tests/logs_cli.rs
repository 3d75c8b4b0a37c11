//! Container logs (CRI files and `tinylet logs`) and the rest of the command line.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn log_file_is_cri_and_logs_prints_the_output() {
    let mut node = Node::start();
    let script = "echo line one; echo '  spaced  out  '; echo; echo to stderr >&2; sleep 0.2; echo 'tab\there'; echo last";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("talk")
            .restart_policy("Never")
            .container("c", script)
            .yaml(),
    );
    let pod = node.wait_pod("talk", "to complete", |p| {
        p["status"]["phase"] == "Succeeded"
    });

    let path = node.pod_log_dir(&pod).join("c").join("0.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {}", path.display(), e));
    let mut lines = Vec::new();
    let mut last_ts = String::new();
    for l in text.lines() {
        let (stream, tag, body) = parse_cri_line(l).unwrap_or_else(|e| panic!("{}", e));
        assert_eq!(tag, "F", "short lines are full lines: {:?}", l);
        let ts = l.split(' ').next().unwrap().to_string();
        assert!(
            ts >= last_ts,
            "timestamps go forward: {} after {}",
            ts,
            last_ts
        );
        last_ts = ts;
        lines.push((stream.to_string(), body.to_string()));
    }
    let want: Vec<(String, String)> = [
        ("stdout", "line one"),
        ("stdout", "  spaced  out  "),
        ("stdout", ""),
        ("stderr", "to stderr"),
        ("stdout", "tab\there"),
        ("stdout", "last"),
    ]
    .iter()
    .map(|(s, t)| (s.to_string(), t.to_string()))
    .collect();
    assert_eq!(lines, want);
    assert!(text.ends_with('\n'));

    let out = node.logs_output("talk", Some("c"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line one\n  spaced  out  \n\nto stderr\ntab\there\nlast\n"
    );
    // A single-container pod needs no container name; the full pod name works too.
    assert_eq!(
        node.logs_output(&node.full_name("talk"), None, &[]).stdout,
        out.stdout
    );
}

#[test]
fn long_lines_are_split_into_partials_and_joined_again() {
    let mut node = Node::start();
    // 40000 bytes without a newline, then one: more than two 16 KiB CRI chunks.
    let script = "head -c 40000 /dev/zero | tr '\\0' x; echo; echo short";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("long")
            .restart_policy("Never")
            .container("c", script)
            .yaml(),
    );
    let pod = node.wait_pod("long", "to complete", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let text = std::fs::read_to_string(node.pod_log_dir(&pod).join("c").join("0.log")).unwrap();
    let parsed: Vec<(&str, &str, &str)> = text
        .lines()
        .map(|l| parse_cri_line(l).unwrap_or_else(|e| panic!("{}", e)))
        .collect();
    let tags: Vec<&str> = parsed.iter().map(|p| p.1).collect();
    assert_eq!(
        tags,
        ["P", "P", "F", "F"],
        "a long line becomes partial chunks ending in a full one"
    );
    assert_eq!(parsed[0].2.len(), 16 * 1024);
    assert_eq!(
        parsed.iter().take(3).map(|p| p.2.len()).sum::<usize>(),
        40000
    );
    assert_eq!(
        node.logs("long", "c"),
        format!("{}\nshort\n", "x".repeat(40000))
    );
}

#[test]
fn previous_shows_the_last_instance() {
    let mut node = Node::start();
    // The first instance fails; the second finds the marker in the pod's shared /dev/shm and stays.
    let script = "echo id=`cat /proc/sys/kernel/random/uuid`; [ -e /dev/shm/ran ] && exec sleep 3600; touch /dev/shm/ran; exit 1";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("twice")
            .container("c", script)
            .container("steady", "echo steady; sleep 3600")
            .yaml(),
    );
    let pod = node.wait_pod("twice", "container c restarted once and running", |p| {
        cstatus(p, "c")["restartCount"] == 1 && all_running(p)
    });
    let current = node.wait_log("twice", "c", "id=");
    let previous = node.logs_output("twice", Some("c"), &["-p"]);
    assert!(
        previous.status.success(),
        "{}",
        String::from_utf8_lossy(&previous.stderr)
    );
    let previous = String::from_utf8_lossy(&previous.stdout).into_owned();
    assert!(
        current.starts_with("id=") && current.lines().count() == 1,
        "{:?}",
        current
    );
    assert!(
        previous.starts_with("id=") && previous.lines().count() == 1,
        "{:?}",
        previous
    );
    assert_ne!(
        current, previous,
        "-p shows the previous instance, not the current one"
    );
    let dir = node.pod_log_dir(&pod).join("c");
    assert!(dir.join("0.log").exists() && dir.join("1.log").exists());

    // A container that never restarted has no previous instance.
    let none = node.logs_output("twice", Some("steady"), &["-p"]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("previous terminated container"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    // With two containers, the container must be named.
    let ambiguous = node.logs_output("twice", None, &[]);
    assert!(!ambiguous.status.success());
    let err = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(err.contains("c") && err.contains("steady"), "{}", err);
}

#[test]
fn follow_streams_until_the_container_exits() {
    let mut node = Node::start();
    let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.3; done";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("ticker")
            .restart_policy("Never")
            .container("c", script)
            .yaml(),
    );
    node.wait_running("ticker");
    let (root, logs) = (
        node.root.display().to_string(),
        node.log_dir.display().to_string(),
    );
    let mut child = Command::new(bin())
        .args([
            "logs",
            "-f",
            "--root-dir",
            &root,
            "--pod-log-dir",
            &logs,
            "ticker",
            "c",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tinylet logs -f");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        child.try_wait().unwrap().is_none(),
        "logs -f must keep following while the container runs"
    );
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            panic!(
                "logs -f did not end after the container exited\n{}",
                node.describe()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "logs -f failed: {:?}", status);
    let want: String = (1..=10).map(|i| format!("tick {}\n", i)).collect();
    assert_eq!(out, want);
    assert_eq!(node.pod("ticker").unwrap()["status"]["phase"], "Succeeded");
}

#[test]
fn logs_of_an_unknown_pod_fail_clearly() {
    let node = Node::create();
    let out = node.logs_output("nope", None, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_prints_the_version() {
    let out = Command::new(bin()).arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("tinylet {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        text
    );
}

#[test]
fn ps_table_shows_ready_and_status() {
    let mut node = Node::start();
    node.write_manifest(
        "p.yaml",
        &pod_manifest("tab").container("c", "sleep 3600").yaml(),
    );
    node.wait_running("tab");
    let table = node.ps_table();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    let row: Vec<&str> = lines
        .find(|l| l.contains(&node.full_name("tab")))
        .unwrap_or_else(|| panic!("no row for the pod:\n{}", table))
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..5],
        [
            "default",
            node.full_name("tab").as_str(),
            "1/1",
            "Running",
            "0"
        ],
        "{}",
        table
    );
    assert!(row[5].ends_with('s'), "AGE {:?}", row[5]);
    assert!(!table.contains("manifests not running"), "{}", table);
}

#[test]
fn logs_rotate_without_losing_lines_and_follow_goes_across() {
    let mut node = Node::create();
    node.extra_run_args.extend(
        [
            "--container-log-max-size",
            "4Ki",
            "--container-log-max-files",
            "3",
        ]
        .map(String::from),
    );
    node.import_image();
    node.start_daemon();
    // ~60 bytes a CRI line: 1500 lines make ~90 KiB, over twenty rotations.
    let script = "sleep 1; i=0; while [ $i -lt 1500 ]; do echo \"line $i\"; i=$((i+1)); \
                  [ $((i % 100)) = 0 ] && sleep 0.1; done";
    node.write_manifest(
        "p.yaml",
        &pod_manifest("chatty")
            .restart_policy("Never")
            .container("c", script)
            .yaml(),
    );
    node.wait_running("chatty");
    let (root, logs) = (
        node.root.display().to_string(),
        node.log_dir.display().to_string(),
    );
    let child = Command::new(bin())
        .args([
            "logs",
            "-f",
            "--root-dir",
            &root,
            "--pod-log-dir",
            &logs,
            "chatty",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tinylet logs -f");
    let out = child.wait_with_output().expect("waiting for logs -f");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: String = (0..1500).map(|i| format!("line {}\n", i)).collect();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        got == want,
        "followed output differs: {} of {} bytes",
        got.len(),
        want.len()
    );

    let pod = node.pod("chatty").expect("pod");
    let dir = node
        .log_dir
        .join(format!("default_chatty-{}_{}", node.node_name, uid(&pod)))
        .join("c");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        3,
        "the current file and 2 rotated ones: {:?}",
        files
    );
    for f in &files {
        let size = std::fs::metadata(f).expect("size").len();
        assert!(size <= 4096, "{} is {} bytes", f.display(), size);
    }
    // What the files keep is the end of the output, whole.
    let current = node.logs("chatty", "c");
    assert!(current.ends_with("line 1499\n"), "{}", current);
    assert!(want.ends_with(&current));
}

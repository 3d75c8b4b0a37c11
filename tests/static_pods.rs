//! Static pods from the manifest directory: they run in a sandbox of their own, have the
//! kubelet's static-pod identity, and follow edits of the directory promptly.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use support::*;

/// A container that stops at once on SIGTERM, so pod replacement is quick.
const STOPS_ON_TERM: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";

/// Prints `key=value` lines about the container's view of its namespaces, then `ready`.
const INTROSPECT: &str = "echo host=`hostname`; echo pid=$$$$; \
    echo ifaces=`tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,`; \
    echo lo=`ip -o link show lo`; \
    echo net=`readlink /proc/self/ns/net`; echo uts=`readlink /proc/self/ns/uts`; \
    echo ipc=`readlink /proc/self/ns/ipc`; echo pidns=`readlink /proc/self/ns/pid`; echo ready;";

/// The `key=value` lines of a container's output.
fn facts(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `net:[4026531992]` -> 4026531992
fn ns_inode(link: &str) -> u64 {
    link.split('[')
        .nth(1)
        .and_then(|s| s.trim_end_matches(']').parse().ok())
        .unwrap_or_else(|| panic!("not a namespace link: {:?}", link))
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{}", kind))
        .unwrap()
        .display()
        .to_string()
}

fn is_runc_id(id: &str) -> bool {
    id.strip_prefix("runc://").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[test]
fn pod_runs_in_its_own_sandbox() {
    let mut node = Node::start();
    node.write_manifest(
        "web.yaml",
        &pod_manifest("web")
            .container("c", &format!("{} sleep 3600", INTROSPECT))
            .yaml(),
    );
    let pod = node.wait_running("web");

    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(condition(&pod, "Ready"), Some("True"), "{}", pod["status"]);
    assert_eq!(condition(&pod, "ContainersReady"), Some("True"));
    assert_eq!(condition(&pod, "PodScheduled"), Some("True"));
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    let c = cstatus(&pod, "c");
    assert!(
        is_runc_id(c["containerID"].as_str().unwrap_or("")),
        "containerID {}",
        c["containerID"]
    );
    assert_eq!(c["ready"], true);
    assert_eq!(c["restartCount"], 0);
    assert!(
        c["state"]["running"]["startedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{}",
        c["state"]
    );
    assert!(
        c["imageID"].as_str().is_some_and(|i| i.contains("sha256:")),
        "imageID {}",
        c["imageID"]
    );
    assert!(pod["status"]["startTime"].is_string());

    let f = facts(&node.wait_log("web", "c", "ready"));
    assert_eq!(f["host"], node.full_name("web"), "hostname is the pod name");
    assert_eq!(
        f["pid"], "1",
        "the container's process is PID 1 of its own PID namespace"
    );
    assert_eq!(
        f["ifaces"], "lo,",
        "only loopback in the pod's network namespace"
    );
    assert!(f["lo"].contains(",UP"), "lo is up: {}", f["lo"]);
    for kind in ["net", "uts", "ipc", "pidns"] {
        let host = host_ns(if kind == "pidns" { "pid" } else { kind });
        assert_ne!(f[kind], host, "{} namespace must not be the host's", kind);
    }
    // The namespaces the container is in are the ones pinned under the pod directory.
    let ns_dir = node.pod_dir(&uid(&pod)).join("ns");
    for kind in ["net", "uts", "ipc"] {
        let pinned = std::fs::metadata(ns_dir.join(kind)).unwrap().ino();
        assert_eq!(
            ns_inode(&f[kind]),
            pinned,
            "{} namespace is the pod's pinned one",
            kind
        );
    }
}

#[test]
fn containers_of_a_pod_share_network_and_uts_but_not_pid() {
    let mut node = Node::start();
    let server = format!("{} exec httpd -f -p 127.0.0.1:8080 -h /var/www", INTROSPECT);
    let client = format!(
        "until wget -q -O - http://127.0.0.1:8080/index.html; do sleep 0.2; done; \
         echo httpd_visible=`pgrep httpd || echo no`; echo procs=`ls /proc | grep -c '^[0-9]'`; {} sleep 3600",
        INTROSPECT
    );
    node.write_manifest(
        "pair.yaml",
        &pod_manifest("pair")
            .container("server", &server)
            .container("client", &client)
            .yaml(),
    );
    let pod = node.wait_running("pair");
    assert_eq!(condition(&pod, "Ready"), Some("True"));
    assert_ne!(container_id(&pod, "server"), container_id(&pod, "client"));

    let client_out = node.wait_log("pair", "client", "ready");
    assert!(
        client_out.contains("hello from tinylet"),
        "the client reached the server on 127.0.0.1: {}",
        client_out
    );
    let s = facts(&node.wait_log("pair", "server", "ready"));
    let c = facts(&client_out);
    assert_eq!(s["net"], c["net"], "network namespace shared");
    assert_eq!(s["uts"], c["uts"], "UTS namespace shared");
    assert_eq!(s["ipc"], c["ipc"], "IPC namespace shared");
    assert_ne!(
        s["pidns"], c["pidns"],
        "each container has its own PID namespace"
    );
    assert_eq!((s["pid"].as_str(), c["pid"].as_str()), ("1", "1"));
    assert_eq!(
        c["httpd_visible"], "no",
        "the client cannot see the server's processes"
    );
    assert_eq!(s["host"], node.full_name("pair"));
    assert_eq!(c["host"], node.full_name("pair"));
}

#[test]
fn host_network_pod_uses_the_host_network_namespace() {
    let mut node = Node::start();
    node.write_manifest(
        "hostnet.yaml",
        &pod_manifest("hostnet")
            .host_network()
            .container("c", &format!("{} sleep 3600", INTROSPECT))
            .yaml(),
    );
    node.wait_running("hostnet");
    let f = facts(&node.wait_log("hostnet", "c", "ready"));
    assert_eq!(f["net"], host_ns("net"));
    let mut host_ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect();
    host_ifaces.sort();
    assert!(
        host_ifaces.len() > 1,
        "the host has more than lo: {:?}",
        host_ifaces
    );
    assert_eq!(
        f["ifaces"],
        host_ifaces
            .iter()
            .map(|i| format!("{},", i))
            .collect::<String>()
    );
    // With the host's network the pod also keeps the host's UTS namespace (and hostname).
    assert_eq!(f["uts"], host_ns("uts"));
    assert_ne!(
        f["ipc"],
        host_ns("ipc"),
        "IPC stays private without hostIPC"
    );
}

#[test]
fn static_pod_identity() {
    let mut node = Node::start();
    node.write_manifest(
        "ident.yaml",
        &pod_manifest("ident").container("c", "sleep 3600").yaml(),
    );
    let pod = node.wait_pod("ident", "to appear", |_| true);
    let m = &pod["metadata"];
    assert_eq!(m["name"], node.full_name("ident"));
    assert_eq!(m["namespace"], "default");
    let pod_uid = uid(&pod);
    assert!(
        pod_uid.len() >= 32 && pod_uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
        "uid {:?}",
        pod_uid
    );
    assert_eq!(
        m["annotations"]["kubernetes.io/config.hash"],
        pod_uid.as_str()
    );
    assert_eq!(m["annotations"]["kubernetes.io/config.source"], "file");
    assert_eq!(pod["spec"]["nodeName"], node.node_name.as_str());
    assert_eq!(pod["spec"]["restartPolicy"], "Always");

    // An explicit namespace is kept; the same content in another file is another pod.
    node.write_manifest(
        "other.yaml",
        &pod_manifest("ident2")
            .namespace("kube-system")
            .container("c", "sleep 3600")
            .yaml(),
    );
    let other = node.wait_pod("ident2", "to appear", |_| true);
    assert_eq!(other["metadata"]["namespace"], "kube-system");
    assert_ne!(uid(&other), pod_uid);

    // Rewriting a file with the same content keeps the pod (same UID, same container).
    let running = node.wait_running("ident");
    let id = container_id(&running, "c");
    node.write_manifest(
        "ident.yaml",
        &pod_manifest("ident").container("c", "sleep 3600").yaml(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let after = node.wait_running("ident");
    assert_eq!(uid(&after), pod_uid);
    assert_eq!(container_id(&after, "c"), id);
}

#[test]
fn changing_a_manifest_replaces_only_that_pod() {
    let mut node = Node::start();
    node.write_manifest(
        "a.yaml",
        &pod_manifest("a").container("c", STOPS_ON_TERM).yaml(),
    );
    node.write_manifest(
        "b.yaml",
        &pod_manifest("b").container("c", STOPS_ON_TERM).yaml(),
    );
    let a = node.wait_running("a");
    let b = node.wait_running("b");
    let (a_uid, b_uid, b_id) = (uid(&a), uid(&b), container_id(&b, "c"));

    let t0 = Instant::now();
    node.write_manifest(
        "a.yaml",
        &pod_manifest("a")
            .container("c", &format!("echo v2; {}", STOPS_ON_TERM))
            .yaml(),
    );
    let new_a = node.wait_pod("a", "to be replaced by a pod with a new uid", |p| {
        p["metadata"]["uid"] != a_uid.as_str()
    });
    let replaced_in = t0.elapsed();
    assert!(
        replaced_in < Duration::from_secs(3),
        "the changed pod was replaced after {:?}",
        replaced_in
    );
    let new_a = if all_running(&new_a) {
        new_a
    } else {
        node.wait_running("a")
    };
    assert_ne!(uid(&new_a), a_uid);
    assert_eq!(
        new_a["metadata"]["annotations"]["kubernetes.io/config.hash"],
        uid(&new_a).as_str()
    );
    node.wait_log("a", "c", "v2");

    // Only one pod "a" remains, the old one's directory is gone, and "b" was not touched.
    let items = node.ps_json()["items"].as_array().unwrap().clone();
    assert_eq!(
        items
            .iter()
            .filter(|p| p["metadata"]["name"] == node.full_name("a"))
            .count(),
        1,
        "{:?}",
        items
    );
    node.wait_for(WAIT, "the old pod's directory to be removed", |n| {
        !n.pod_dir(&a_uid).exists()
    });
    let b2 = node.wait_running("b");
    assert_eq!(uid(&b2), b_uid);
    assert_eq!(
        container_id(&b2, "c"),
        b_id,
        "the other pod's container was not restarted"
    );
    assert_eq!(cstatus(&b2, "c")["restartCount"], 0);
}

#[test]
fn json_manifest() {
    let mut node = Node::start();
    node.write_manifest(
        "j.json",
        &pod_manifest("j")
            .container("c", "echo from-json; sleep 3600")
            .json(),
    );
    let pod = node.wait_running("j");
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    node.wait_log("j", "c", "from-json");
}

#[test]
fn multi_document_file() {
    let mut node = Node::start();
    let one = pod_manifest("one").container("c", STOPS_ON_TERM).yaml();
    let two = pod_manifest("two").container("c", STOPS_ON_TERM).yaml();
    node.write_manifest("both.yaml", &format!("---\n{}---\n{}", one, two));
    let p1 = node.wait_running("one");
    node.wait_running("two");
    let id1 = container_id(&p1, "c");

    // Dropping the second document removes that pod only.
    node.write_manifest("both.yaml", &format!("# now one document\n---\n{}", one));
    node.wait_gone("two");
    let p1b = node.wait_running("one");
    assert_eq!(uid(&p1b), uid(&p1));
    assert_eq!(container_id(&p1b, "c"), id1);
}

#[test]
fn add_change_remove_are_picked_up_promptly() {
    let mut node = Node::start();
    let t0 = Instant::now();
    node.write_manifest(
        "quick.yaml",
        &pod_manifest("quick").container("c", STOPS_ON_TERM).yaml(),
    );
    node.wait_pod("quick", "to appear", |p| {
        p["status"]["phase"] == "Pending" || p["status"]["phase"] == "Running"
    });
    let appeared = t0.elapsed();
    let pod = node.wait_running("quick");
    let running = t0.elapsed();
    assert!(
        appeared < Duration::from_secs(3),
        "new manifest picked up after {:?}",
        appeared
    );
    assert!(
        running < Duration::from_secs(5),
        "pod running after {:?}",
        running
    );

    let t1 = Instant::now();
    node.write_manifest(
        "quick.yaml",
        &pod_manifest("quick")
            .container("c", &format!("true; {}", STOPS_ON_TERM))
            .yaml(),
    );
    let old = uid(&pod);
    node.wait_pod("quick", "the changed pod", |p| {
        p["metadata"]["uid"] != old.as_str()
    });
    let changed = t1.elapsed();
    assert!(
        changed < Duration::from_secs(3),
        "change picked up after {:?}",
        changed
    );
    node.wait_running("quick");

    let terminating_before = node
        .daemon_log()
        .matches("removed from its manifest; terminating")
        .count();
    let t2 = Instant::now();
    node.remove_manifest("quick.yaml");
    node.wait_for(WAIT, "the daemon to start terminating the pod", |n| {
        n.daemon_log()
            .matches("removed from its manifest; terminating")
            .count()
            > terminating_before
    });
    let began = t2.elapsed();
    node.wait_gone("quick");
    let gone = t2.elapsed();
    assert!(
        began < Duration::from_secs(2),
        "removal began after {:?}",
        began
    );
    assert!(
        gone < Duration::from_secs(5),
        "a pod that stops on TERM was removed after {:?}",
        gone
    );
}

#[test]
fn hostname_subdomain_fqdn_and_host_aliases() {
    let mut node = Node::start();
    let mut pod = pod_manifest("named")
        .container("c", "hostname; hostname -f; cat /etc/hosts; sleep 3600")
        .value();
    pod["spec"]["hostname"] = serde_json::json!("web-0");
    pod["spec"]["subdomain"] = serde_json::json!("web");
    pod["spec"]["setHostnameAsFQDN"] = serde_json::json!(true);
    pod["spec"]["hostAliases"] = serde_json::json!([
        {"ip": "10.1.2.3", "hostnames": ["db.local", "db"]},
    ]);
    node.write_manifest("named.yaml", &pod.to_string());
    node.wait_running("named");
    let out = node.wait_log("named", "c", "Entries added by HostAliases");
    let fqdn = "web-0.web.default.svc.cluster.local";
    assert_eq!(out.lines().next(), Some(fqdn), "{}", out);
    assert!(
        out.contains(&format!("127.0.1.1\t{}\tweb-0\n", fqdn)),
        "{}",
        out
    );
    assert!(
        out.ends_with("# Entries added by HostAliases.\n10.1.2.3\tdb.local\tdb\n"),
        "{}",
        out
    );
}

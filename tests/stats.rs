//! Stats with real runc containers: the Summary API document in the kubelet's shape, the
//! Prometheus text of /metrics and /metrics/resource read by a real parser (prometheus-client),
//! `tinylet stats`; and node-pressure eviction in cluster mode (conditions, order, Evicted
//! status, events, image GC first under disk pressure).

mod support;

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use support::apiserver::ApiServer;
use support::*;

/// A BestEffort pod burning one CPU, and a pod holding 40 MB of memory (in /dev/shm), 5 MB in
/// an emptyDir and a few log lines.
fn start_workloads(node: &mut Node) {
    node.write_manifest(
        "burner.yaml",
        &pod_manifest("burner")
            .grace(2)
            .container("spin", "while :; do :; done")
            .yaml(),
    );
    let mut hog = pod_manifest("hog")
        .grace(2)
        .container(
            "fill",
            "head -c 40000000 /dev/zero > /dev/shm/fill; head -c 5000000 /dev/zero > /data/f; \
             echo filled; sleep 3600",
        )
        .limit("memory", "200Mi")
        .value();
    hog["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    hog["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    node.write_manifest("hog.json", &hog.to_string());
    node.wait_running("burner");
    node.wait_running("hog");
    node.wait_log("hog", "fill", "filled");
}

fn raw(node: &Node, kind: &str) -> String {
    node.tinylet_ok(&[
        "stats",
        "--raw",
        kind,
        "--node-name",
        &node.node_name,
        "--pod-log-dir",
        &node.log_dir.display().to_string(),
        "--cgroup-root",
        &node.cgroup_root,
    ])
}

fn summary(node: &Node) -> Value {
    let out = raw(node, "summary");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("summary is not JSON ({}): {}", e, out))
}

fn pod_of<'a>(summary: &'a Value, node: &Node, name: &str) -> Option<&'a Value> {
    let full = node.full_name(name);
    summary["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["name"] == full.as_str())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The fields every FsStats of the kubelet carries.
fn assert_fs(v: &Value, what: &str) {
    for k in [
        "time",
        "availableBytes",
        "capacityBytes",
        "usedBytes",
        "inodesFree",
        "inodes",
    ] {
        assert!(!v[k].is_null(), "{}: no {} in {}", what, k, v);
    }
    assert!(u(&v["capacityBytes"]) > 0, "{}: {}", what, v);
}

#[test]
fn summary_has_the_kubelets_shape_and_real_usage() {
    let mut node = Node::start();
    start_workloads(&mut node);
    // The busy loop shows as nanocores (a rate over the CLI's 1 s window); the hog's memory
    // and disk as bytes.
    let s = node.wait_for(
        WAIT * 2,
        "burner's CPU and hog's memory in the summary",
        |node| {
            let s = summary(node);
            let burn = u(&pod_of(&s, node, "burner")?["containers"][0]["cpu"]["usageNanoCores"]);
            let ws = u(&pod_of(&s, node, "hog")?["containers"][0]["memory"]["workingSetBytes"]);
            (burn > 200_000_000 && ws >= 40_000_000).then_some(s)
        },
    );
    let n = &s["node"];
    assert_eq!(n["nodeName"], node.node_name.as_str());
    assert!(
        n["startTime"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        n
    );
    assert!(u(&n["cpu"]["usageNanoCores"]) > 0, "{}", n["cpu"]);
    assert!(u(&n["cpu"]["usageCoreNanoSeconds"]) > 0);
    for k in [
        "availableBytes",
        "usageBytes",
        "workingSetBytes",
        "rssBytes",
        "pageFaults",
    ] {
        assert!(
            !n["memory"][k].is_null(),
            "node memory lacks {}: {}",
            k,
            n["memory"]
        );
    }
    assert!(u(&n["memory"]["workingSetBytes"]) <= u(&n["memory"]["usageBytes"]));
    assert!(n["network"]["interfaces"].is_array(), "{}", n["network"]);
    assert_fs(&n["fs"], "node.fs");
    assert_fs(&n["runtime"]["imageFs"], "node.runtime.imageFs");
    assert!(u(&n["rlimit"]["maxpid"]) > u(&n["rlimit"]["curproc"]));
    assert!(u(&n["rlimit"]["curproc"]) > 0);
    let pods = &n["systemContainers"][0];
    assert_eq!(pods["name"], "pods", "{}", n["systemContainers"]);
    assert!(u(&pods["cpu"]["usageNanoCores"]) > 200_000_000, "{}", pods);
    assert!(
        u(&pods["memory"]["workingSetBytes"]) >= 40_000_000,
        "{}",
        pods
    );

    let burner = pod_of(&s, &node, "burner").unwrap();
    assert_eq!(burner["podRef"]["namespace"], "default");
    assert!(burner["podRef"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    let c = &burner["containers"][0];
    assert_eq!(c["name"], "spin");
    assert!(c["startTime"].is_string());
    assert!(u(&burner["cpu"]["usageNanoCores"]) >= u(&c["cpu"]["usageNanoCores"]) / 2);
    assert!(u(&c["cpu"]["usageCoreNanoSeconds"]) > 0);
    // No limit: no availableBytes, as the kubelet.
    assert!(c["memory"]["availableBytes"].is_null(), "{}", c["memory"]);

    let hog = pod_of(&s, &node, "hog").unwrap();
    let hc = &hog["containers"][0];
    let ws = u(&hc["memory"]["workingSetBytes"]);
    assert!(u(&hc["memory"]["usageBytes"]) >= ws);
    // 200Mi limit: available = limit - working set.
    assert_eq!(u(&hc["memory"]["availableBytes"]), (200 << 20) - ws);
    assert!(u(&hog["memory"]["workingSetBytes"]) >= ws);
    assert!(u(&hog["process_stats"]["process_count"]) >= 1, "{}", hog);
    assert!(
        hog["network"]["interfaces"].is_array(),
        "{}",
        hog["network"]
    );
    assert_fs(&hc["rootfs"], "container rootfs");
    assert_fs(&hc["logs"], "container logs");
    assert!(u(&hc["logs"]["usedBytes"]) > 0, "{}", hc["logs"]);
    let vol = hog["volume"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "data"))
        .unwrap_or_else(|| panic!("no volume \"data\" in {}", hog));
    assert_fs(vol, "volume data");
    assert!(u(&vol["usedBytes"]) >= 5_000_000, "{}", vol);
    let eph = &hog["ephemeral-storage"];
    assert_fs(eph, "ephemeral-storage");
    assert!(u(&eph["usedBytes"]) >= u(&vol["usedBytes"]) + u(&hc["logs"]["usedBytes"]));

    // `tinylet stats`: crictl-like rows from the same provider.
    let table = node.tinylet_ok(&[
        "stats",
        "--pod-log-dir",
        &node.log_dir.display().to_string(),
    ]);
    let header = table.lines().next().unwrap_or("");
    assert!(
        header.starts_with("NAMESPACE") && header.contains("CPU(m)"),
        "{}",
        table
    );
    let row = table
        .lines()
        .find(|l| l.contains(&node.full_name("burner")))
        .unwrap_or_else(|| panic!("no burner row:\n{}", table));
    let millis: u64 = row
        .split_whitespace()
        .nth(3)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(millis > 200, "burner uses {}m:\n{}", millis, table);
    let hog_row = table
        .lines()
        .find(|l| l.contains(&node.full_name("hog")))
        .unwrap();
    assert!(hog_row.contains("MiB"), "{}", hog_row);
}

/// (name, labels, value) of every sample, as prometheus-client's parser reads the text.
fn parse_prometheus(text: &str) -> Vec<(String, Value, f64)> {
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = []\n\
        for fam in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in fam.samples:\n\
        \x20       out.append([s.name, s.labels, s.value, fam.type])\n\
        print(json.dumps(out))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-deps installs prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus-client rejected the text: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text
    );
    let v: Vec<(String, Value, f64, String)> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter().map(|(n, l, v, _)| (n, l, v)).collect()
}

/// The labels of a container series.
fn clabels<'a>(pod: &'a str, container: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("container", container),
        ("namespace", "default"),
        ("pod", pod),
    ]
}

fn sample<'a>(
    samples: &'a [(String, Value, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| v)
}

#[test]
fn metrics_parse_with_the_kubelets_names_and_labels() {
    let mut node = Node::start();
    start_workloads(&mut node);
    let burner = node.full_name("burner");
    let hog = node.full_name("hog");
    let res = parse_prometheus(&raw(&node, "metrics-resource"));
    let cpu = sample(
        &res,
        "container_cpu_usage_seconds_total",
        &clabels(&burner, "spin"),
    )
    .unwrap_or_else(|| panic!("no burner cpu in {:?}", res));
    assert!(*cpu > 0.0);
    let ws = sample(
        &res,
        "container_memory_working_set_bytes",
        &clabels(&hog, "fill"),
    )
    .unwrap();
    assert!(*ws >= 40e6, "{}", ws);
    assert!(sample(&res, "container_start_time_seconds", &clabels(&hog, "fill")).unwrap() > &1.6e9);
    let pod = [("namespace", "default"), ("pod", hog.as_str())];
    assert!(sample(&res, "pod_memory_working_set_bytes", &pod).unwrap() >= ws);
    assert!(*sample(&res, "pod_cpu_usage_seconds_total", &pod).unwrap() >= 0.0);
    assert!(*sample(&res, "node_cpu_usage_seconds_total", &[]).unwrap() > 0.0);
    assert!(*sample(&res, "node_memory_working_set_bytes", &[]).unwrap() > 0.0);
    assert_eq!(sample(&res, "scrape_error", &[]), Some(&0.0));
    assert_eq!(sample(&res, "resource_scrape_error", &[]), Some(&0.0));

    let all = parse_prometheus(&raw(&node, "metrics"));
    assert_eq!(
        sample(
            &all,
            "kubelet_node_name",
            &[("node", node.node_name.as_str())]
        ),
        Some(&1.0)
    );
    assert!(sample(&all, "kubelet_running_pods", &[]).unwrap() >= &2.0);
    assert!(*sample(&all, "process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    assert!(
        sample(
            &all,
            "container_memory_working_set_bytes",
            &clabels(&hog, "fill")
        )
        .unwrap()
            >= &40e6
    );
    assert!(sample(&all, "container_fs_usage_bytes", &clabels(&hog, "fill")).is_some());
    assert!(sample(&all, "pod_ephemeral_storage_usage_bytes", &pod).unwrap() >= &5e6);
}

// ---- eviction (cluster mode) ----

fn join(api: &ApiServer, extra: &[&str]) -> Node {
    join_prepared(api, extra, |_| {})
}

/// `join`, with `prepare` run before the daemon starts.
fn join_prepared(api: &ApiServer, extra: &[&str], prepare: impl FnOnce(&Node)) -> Node {
    let mut flags = vec!["--node-status-update-frequency", "1s"];
    flags.extend(extra);
    let mut node = api.prepare_node(None, &flags);
    prepare(&node);
    node.start_daemon();
    node
}

fn api_pod(node: &Node, name: &str, resources: Value) -> Value {
    let script = "head -c 8000000 /dev/zero > /dev/shm/x; sleep 3600";
    let mut pod = support::apiserver::api_pod(node, name, &["sh", "-c", script], 30);
    pod["spec"]["containers"][0]["resources"] = resources;
    pod
}

fn node_condition(api: &ApiServer, node: &Node, t: &str) -> Option<String> {
    let n = api.get(&format!("/api/v1/nodes/{}", node.node_name)).ok()?;
    n["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn events(api: &ApiServer, ns: &str) -> Vec<Value> {
    api.get(&format!("/api/v1/namespaces/{}/events", ns))
        .map(|l| l["items"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

#[test]
fn memory_pressure_evicts_besteffort_then_burstable_then_guaranteed_never_static() {
    let api = ApiServer::start();
    api.ensure_namespace("default");
    // This machine has far less than 1000Ti free: always "under pressure".
    let mut node = join(
        &api,
        &[
            "--eviction-hard",
            "memory.available<1000Ti",
            "--eviction-monitoring-period",
            "3s",
        ],
    );
    node.write_manifest(
        "static.yaml",
        &pod_manifest("critical")
            .grace(2)
            .container("c", "sleep 3600")
            .yaml(),
    );
    // Created before the first pod could be evicted: all three are ranked together.
    api.create_pod(&api_pod(
        &node,
        "guaranteed",
        json!({"limits": {"memory": "64Mi", "cpu": "100m"}}),
    ));
    api.create_pod(&api_pod(
        &node,
        "burstable",
        json!({"requests": {"memory": "1Mi"}, "limits": {"memory": "64Mi"}}),
    ));
    api.create_pod(&api_pod(&node, "besteffort", json!({})));
    let ctx = || {
        format!(
            "--- tinylet:\n{}\n--- api:\n{}",
            node.daemon_log_tail(40),
            api.log_tail(20)
        )
    };
    let evicted_at = |name: &str| -> Option<String> {
        let p = api.pod("default", name)?;
        (p["status"]["phase"] == "Failed" && p["status"]["reason"] == "Evicted")
            .then(|| p["status"]["message"].as_str().unwrap_or("").to_string())
    };
    let mut order: Vec<String> = Vec::new();
    poll_until(
        std::time::Duration::from_secs(90),
        "the three API pods to be evicted",
        || {
            for n in ["besteffort", "burstable", "guaranteed"] {
                if !order.iter().any(|o| o == n) && evicted_at(n).is_some() {
                    order.push(n.to_string());
                }
            }
            order.len() == 3
        },
        ctx,
    );
    assert_eq!(
        order,
        ["besteffort", "burstable", "guaranteed"],
        "{}",
        ctx()
    );
    let msg = evicted_at("besteffort").unwrap();
    assert!(
        msg.starts_with(
            "The node was low on resource: memory. Threshold quantity: 1000Ti, available: "
        ),
        "{}",
        msg
    );
    assert!(msg.contains("Container c was using "), "{}", msg);
    let be = api.pod("default", "besteffort").unwrap();
    let dt = be["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget").cloned())
        .unwrap_or_else(|| panic!("no DisruptionTarget: {}", be["status"]));
    assert_eq!(dt["reason"], "TerminationByKubelet");
    // The containers are gone, the pod stays (Failed) for its controller to replace.
    assert!(be["metadata"]["deletionTimestamp"].is_null());
    node.wait_for(WAIT, "the evicted pods' containers to stop", |n| {
        n.runc_list().len() == 1
    });
    assert_eq!(
        node_condition(&api, &node, "MemoryPressure").as_deref(),
        Some("True")
    );
    assert_eq!(
        node_condition(&api, &node, "DiskPressure").as_deref(),
        Some("False")
    );
    let pod_events = events(&api, "default");
    assert!(
        pod_events.iter().any(|e| e["reason"] == "Evicted"
            && e["type"] == "Warning"
            && e["involvedObject"]["name"] == "besteffort"),
        "{:?}",
        pod_events
    );
    let node_events: Vec<Value> = events(&api, "default")
        .into_iter()
        .filter(|e| e["involvedObject"]["kind"] == "Node")
        .collect();
    assert!(
        node_events
            .iter()
            .any(|e| e["reason"] == "EvictionThresholdMet"
                && e["message"] == "Attempting to reclaim memory"),
        "{:?}",
        node_events
    );
    // The static pod is critical: it never goes.
    let st = node.pod("critical").unwrap();
    assert_eq!(st["status"]["phase"], "Running", "{}", st["status"]);
    api.assert_no_violations();
}

/// Under disk pressure the kubelet first removes unused images, then evicts; static pods never go.
#[test]
fn disk_pressure_collects_unused_images_first_and_spares_static_pods() {
    let api = ApiServer::start();
    api.ensure_namespace("default");
    // nodefs below 99.9 % free: true on any machine with anything on its disk.
    let node = join_prepared(
        &api,
        &[
            "--eviction-hard",
            "nodefs.available<99.9%",
            "--eviction-monitoring-period",
            "2s",
            "--minimum-image-ttl-duration",
            "0s",
        ],
        |node| {
            let layout = node.dir.join("tiny-layout");
            let layer = support::oci::one_file_tar("payload", b"an image no pod uses\n");
            support::oci::write_image_layout(&layout, &[layer], &["/payload"], None);
            node.tinylet_ok(&[
                "image",
                "import",
                &layout.display().to_string(),
                "--name",
                "other.local/unused:1",
            ]);
            node.write_manifest(
                "static.yaml",
                &pod_manifest("critical")
                    .grace(2)
                    .container("c", "echo some log; sleep 3600")
                    .yaml(),
            );
        },
    );
    let ctx = || format!("--- tinylet:\n{}", node.daemon_log_tail(40));
    poll_until(
        WAIT,
        "DiskPressure on the node",
        || node_condition(&api, &node, "DiskPressure").as_deref() == Some("True"),
        ctx,
    );
    poll_until(
        WAIT,
        "the unused image to be collected",
        || {
            !node
                .tinylet_ok(&["image", "ls"])
                .contains("other.local/unused")
        },
        ctx,
    );
    // The image the static pod runs stays, and so does the pod (critical).
    assert!(node.tinylet_ok(&["image", "ls"]).contains("busybox"));
    poll_until(
        WAIT,
        "the static pod to run",
        || node.pod("critical").is_some_and(|p| all_running(&p)),
        ctx,
    );
    api.create_pod(&api_pod(&node, "victim", json!({})));
    poll_until(
        std::time::Duration::from_secs(40),
        "the API pod to be evicted for ephemeral-storage",
        || {
            api.pod("default", "victim").is_some_and(|p| {
                p["status"]["reason"] == "Evicted"
                    && p["status"]["message"].as_str().is_some_and(|m| {
                        m.starts_with(
                            "The node was low on resource: ephemeral-storage. Threshold quantity: ",
                        )
                    })
            })
        },
        ctx,
    );
    assert_eq!(node.pod("critical").unwrap()["status"]["phase"], "Running");
    assert_eq!(
        node_condition(&api, &node, "MemoryPressure").as_deref(),
        Some("False")
    );
    let events = events(&api, "default");
    assert!(
        events.iter().any(|e| e["reason"] == "EvictionThresholdMet"
            && e["message"] == "Attempting to reclaim ephemeral-storage"),
        "{:?}",
        events
    );
    api.assert_no_violations();
}

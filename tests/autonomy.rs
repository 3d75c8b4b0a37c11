//! Edge autonomy: a node cut off from its control plane (a relay between them is cut, the API
//! server stays up for the test) keeps its pods, survives agent kills and reboots while offline,
//! and reconciles when the link comes back.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::apiserver::ApiServer;
use support::relay::Relay;
use support::*;

/// A node that reaches `api` through `relay` (lease every second, status checked every second).
fn join_through(api: &ApiServer, relay: &Relay, extra: &[&str]) -> Node {
    let flags = [
        "--node-lease-duration-seconds",
        "4",
        "--node-status-update-frequency",
        "1s",
    ];
    let all: Vec<&str> = flags.iter().chain(extra).copied().collect();
    api.join_node(Some(relay), &all)
}

fn eventually<T>(node: &Node, what: &str, within: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(within, what, f, || {
        format!("--- tinylet:\n{}", node.daemon_log_tail(40))
    })
}

fn api_pod(name: &str, node: &Node, script: &str) -> Value {
    support::apiserver::api_pod(node, name, &["sh", "-c", script], 2)
}

const SLEEPER: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

fn api_container_id(api: &ApiServer, name: &str) -> Option<String> {
    api.pod("default", name)?["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .map(|s| s.trim_start_matches("runc://").to_string())
}

/// The container id of a pod as `ps -o json` shows it, without the `runc://` prefix.
fn local_id(pod: &Value) -> String {
    container_id(pod, "c")
        .trim_start_matches("runc://")
        .to_string()
}

fn running_at_api(api: &ApiServer, name: &str) -> bool {
    api.pod("default", name).is_some_and(|p| {
        p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    })
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let n = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(11) + n(12)
}

#[test]
fn an_outage_costs_no_pod_and_the_node_catches_up_when_it_ends() {
    let api = ApiServer::start();
    let relay = Relay::start(api.port());
    let mut node = join_through(&api, &relay, &[]);
    for name in ["steady", "doomed"] {
        api.create_pod(&api_pod(name, &node, SLEEPER));
    }
    api.create_pod(&api_pod("crash", &node, "sleep 0.2; exit 1"));
    eventually(&node, "the pods Running at the API", WAIT, || {
        (running_at_api(&api, "steady") && running_at_api(&api, "doomed")).then_some(())
    });
    let steady_id = api_container_id(&api, "steady").unwrap();

    // The uplink drops.
    relay.cut();
    // The crash loop goes on, with nobody to tell.
    let restarts_before = node
        .pod("crash")
        .map(|p| cstatus(&p, "c")["restartCount"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    eventually(&node, "restarts during the outage", WAIT, || {
        let p = node.pod("crash")?;
        (cstatus(&p, "c")["restartCount"].as_u64()? >= restarts_before + 2).then_some(())
    });
    // No busy loop while cut off: the agent idles.
    let pid = node.daemon_pid();
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - t0;
    assert!(used <= 15, "{} ticks of CPU in 3 s while cut off", used);

    // kill -9 of the agent during the outage: it comes back from its cache, pods untouched.
    node.restart_daemon();
    eventually(&node, "the cache to be used", WAIT, || {
        node.daemon_log()
            .contains("restored from the local cache")
            .then_some(())
    });
    assert_eq!(local_id(&node.wait_running("steady")), steady_id);

    // Meanwhile, at the control plane: one pod deleted, one added.
    api.delete(
        "/api/v1/namespaces/default/pods/doomed",
        Some(&json!({"gracePeriodSeconds": 0})),
    )
    .expect("deleting doomed");
    api.create_pod(&api_pod("newcomer", &node, SLEEPER));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        node.pod("doomed").is_some(),
        "nothing can be known while cut off"
    );

    // The uplink returns: reconciled within 10 s.
    let restored = Instant::now();
    relay.restore();
    eventually(
        &node,
        "the newcomer Running at the API",
        Duration::from_secs(10),
        || running_at_api(&api, "newcomer").then_some(()),
    );
    eventually(
        &node,
        "the deleted pod stopped",
        Duration::from_secs(10),
        || node.pod("doomed").is_none().then_some(()),
    );
    eventually(
        &node,
        "the crash loop's restarts reported",
        Duration::from_secs(10),
        || {
            let p = api.pod("default", "crash")?;
            (p["status"]["containerStatuses"][0]["restartCount"].as_u64()? >= restarts_before + 2)
                .then_some(())
        },
    );
    assert!(restored.elapsed() < Duration::from_secs(10));
    // Unchanged pods were not restarted.
    assert_eq!(api_container_id(&api, "steady").unwrap(), steady_id);
    let steady = api.pod("default", "steady").unwrap();
    assert_eq!(steady["status"]["containerStatuses"][0]["restartCount"], 0);
    // The lease is renewed again.
    let path = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
        node.node_name
    );
    let renewed = api.get(&path).unwrap()["spec"]["renewTime"].clone();
    eventually(&node, "a lease renewal after the outage", WAIT, || {
        (api.get(&path).ok()?["spec"]["renewTime"] != renewed).then_some(())
    });
    api.assert_no_violations();
}

#[test]
fn a_reboot_while_offline_brings_every_pod_back_from_the_cache() {
    let api = ApiServer::start();
    let relay = Relay::start(api.port());
    let mut node = join_through(&api, &relay, &[]);
    let names = ["a", "b", "c"];
    for n in names {
        let mut pod = api_pod(n, &node, "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; trap 'exit 0' TERM; sleep 3600 & wait");
        pod["metadata"]["labels"] = json!({"app": n});
        api.create_pod(&pod);
    }
    eventually(&node, "the pods Running", WAIT, || {
        names.iter().all(|n| running_at_api(&api, n)).then_some(())
    });
    let before: Vec<String> = names
        .iter()
        .map(|n| api_container_id(&api, n).unwrap())
        .collect();

    relay.cut();
    node.simulate_reboot();
    assert!(node.runc_list().is_empty());
    let started = Instant::now();
    node.start_daemon();
    for n in names {
        node.wait_running(n);
    }
    let all_running = started.elapsed();
    assert!(
        all_running < Duration::from_secs(5),
        "all pods running {:?} after start",
        all_running
    );
    assert!(node.daemon_log().contains("restored from the local cache"));
    assert!(node.daemon_log().contains("run from the local cache"));
    // The service-account volume came from the cache too.
    for n in names {
        let log = node.wait_log(n, "c", "default");
        assert!(log.contains("default"), "{}", log);
    }

    // Back online: the API server learns the new containers.
    relay.restore();
    eventually(
        &node,
        "the new container ids at the API",
        Duration::from_secs(10),
        || {
            names
                .iter()
                .zip(&before)
                .all(|(n, old)| {
                    api_container_id(&api, n).is_some_and(|id| &id != old)
                        && running_at_api(&api, n)
                })
                .then_some(())
        },
    );
    api.assert_no_violations();
}

#[test]
fn a_corrupt_cache_record_is_set_aside_without_losing_the_pod() {
    let api = ApiServer::start();
    let relay = Relay::start(api.port());
    let mut node = join_through(&api, &relay, &[]);
    api.create_pod(&api_pod("precious", &node, SLEEPER));
    let id = eventually(&node, "precious Running", WAIT, || {
        running_at_api(&api, "precious").then_some(())?;
        api_container_id(&api, "precious")
    });
    let uid = api.pod("default", "precious").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    node.kill9_daemon();
    relay.cut();
    let record = node.pod_dir(&uid).join("pod.json");
    let text = std::fs::read(&record).unwrap();
    std::fs::write(&record, &text[..text.len() / 2]).unwrap(); // a torn write
    node.start_daemon();
    eventually(&node, "the corrupt record reported", WAIT, || {
        node.daemon_log()
            .contains("corrupt pod record")
            .then_some(())
    });
    let log = node.daemon_log();
    assert!(log.contains(&record.display().to_string()), "{}", log);
    assert!(log.contains("set aside"), "{}", log);
    assert!(std::fs::read_dir(node.pod_dir(&uid))
        .unwrap()
        .flatten()
        .any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("pod.json.corrupt-")));
    // The container was not killed for it...
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.runc_status(&id).as_deref(), Some("running"));
    // ...and once the API server names the pod again, it is adopted as it is.
    relay.restore();
    eventually(&node, "precious adopted", WAIT, || {
        let p = node.pod("precious")?;
        (p["status"]["phase"] == "Running").then_some(p)
    });
    assert_eq!(local_id(&node.wait_running("precious")), id);
    assert!(node.daemon_alive());
    api.assert_no_violations();
}

#[test]
fn offline_max_age_stops_cached_pods_until_the_api_server_answers() {
    let api = ApiServer::start();
    let relay = Relay::start(api.port());
    let node = join_through(&api, &relay, &["--offline-max-age", "3s"]);
    api.create_pod(&api_pod("bounded", &node, SLEEPER));
    eventually(&node, "bounded Running", WAIT, || {
        running_at_api(&api, "bounded").then_some(())
    });
    relay.cut();
    eventually(&node, "the pod stopped after the maximum age", WAIT, || {
        node.pod("bounded").is_none().then_some(())
    });
    assert!(node.daemon_log().contains("more than --offline-max-age"));
    relay.restore();
    eventually(
        &node,
        "the pod back once the API server answers",
        WAIT,
        || (node.pod("bounded")?["status"]["phase"] == "Running").then_some(()),
    );
}

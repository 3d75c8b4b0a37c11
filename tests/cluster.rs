//! Cluster mode end to end: a real `tinylet run` with runc joins the API-server double
//! (tests/support/apiserver), and everything it sends is checked against the Kubernetes v1.37
//! schemas by the double (`assert_no_violations`).

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::apiserver::{eventually, ApiServer, KubeconfigUser};
use support::*;

/// A node joined to `api` with a client certificate; lease every second, status checked every
/// second (so tests see changes quickly).
fn join(api: &ApiServer) -> Node {
    join_with(api, &[])
}

fn join_with(api: &ApiServer, extra: &[String]) -> Node {
    let mut flags = vec![
        "--node-lease-duration-seconds",
        "4",
        "--node-status-update-frequency",
        "1s",
        "--node-labels",
        "site=cabinet-7",
        "--register-with-taints",
        "edge=true:NoSchedule",
    ];
    flags.extend(extra.iter().map(String::as_str));
    api.join_node(None, &flags)
}

fn api_pod(name: &str, node: &Node, script: &str) -> Value {
    let mut pod = support::apiserver::api_pod(node, name, &["sh", "-c", script], 3);
    pod["metadata"]["labels"] = json!({"app": name});
    pod["spec"]["containers"][0]["resources"] =
        json!({"limits": {"memory": "64Mi", "cpu": "250m"}});
    pod
}

fn api_cstatus(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn api_condition<'a>(pod: &'a Value, t: &str) -> Option<&'a str> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)?["status"]
        .as_str()
}

fn events_for(api: &ApiServer, name: &str) -> Vec<Value> {
    api.get("/api/v1/namespaces/default/events")
        .map(|l| l["items"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == name)
        .collect()
}

#[test]
fn node_registers_and_runs_an_api_pod_to_deletion() {
    let api = ApiServer::start();
    let mut node = join(&api);
    let name = node.node_name.clone();

    // The Node, as the kubelet registers it.
    let n = eventually(&node, &api, "the Node to be Ready", || {
        let n = api.get(&format!("/api/v1/nodes/{}", name)).ok()?;
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(n)
    });
    let labels = &n["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], name.as_str());
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    assert_eq!(labels["site"], "cabinet-7");
    assert_eq!(n["spec"]["taints"][0]["key"], "edge");
    let st = &n["status"];
    assert_eq!(st["capacity"]["pods"], "110");
    assert!(st["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
    assert!(st["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("runc://"));
    assert!(!st["nodeInfo"]["bootID"].as_str().unwrap().is_empty());
    assert_eq!(st["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    for (t, reason) in [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID"),
        ("Ready", "KubeletReady"),
    ] {
        let c = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap_or_else(|| panic!("no {} condition", t));
        assert_eq!(c["reason"], reason);
    }

    // The lease: owned by the Node, renewed.
    let lease_path = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
        name
    );
    let lease = eventually(&node, &api, "the node lease", || api.get(&lease_path).ok());
    assert_eq!(lease["spec"]["holderIdentity"], name.as_str());
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 4);
    let first_renew = lease["spec"]["renewTime"].clone();
    eventually(&node, &api, "a lease renewal", || {
        let l = api.get(&lease_path).ok()?;
        (l["spec"]["renewTime"] != first_renew
            && l["metadata"]["ownerReferences"][0]["uid"] == n["metadata"]["uid"])
            .then_some(())
    });

    // A pod created at the API server runs, with its status reported.
    let script = "ls /var/run/secrets/kubernetes.io/serviceaccount; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; trap 'exit 0' TERM; sleep 3600 & wait";
    api.create_pod(&api_pod("web", &node, script));
    let pod = eventually(&node, &api, "pod web Running at the API", || {
        let p = api.pod("default", "web")?;
        (p["status"]["phase"] == "Running" && api_cstatus(&p)["ready"] == true).then_some(p)
    });
    let cs = api_cstatus(&pod);
    assert!(cs["state"]["running"]["startedAt"].is_string());
    assert!(cs["containerID"].as_str().unwrap().starts_with("runc://"));
    assert_eq!(cs["image"], IMAGE);
    assert!(cs["imageID"].as_str().unwrap().contains("@sha256:"));
    assert_eq!(cs["restartCount"], 0);
    assert_eq!(cs["started"], true);
    for t in [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ] {
        assert_eq!(
            api_condition(&pod, t),
            Some("True"),
            "{}: {}",
            t,
            pod["status"]
        );
    }
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    assert!(pod["status"]["startTime"].is_string());
    assert!(pod["status"]["hostIP"].is_string());

    // The projected service-account volume the API server added is mounted.
    let out = node.wait_log("web", "c", "default");
    for f in ["ca.crt", "namespace", "token"] {
        assert!(
            out.contains(f),
            "{} missing from the service-account volume: {}",
            f,
            out
        );
    }

    // Events for the pod.
    let reasons: Vec<String> = eventually(&node, &api, "Created and Started events", || {
        let r: Vec<String> = events_for(&api, "web")
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect();
        (r.contains(&"Created".to_string()) && r.contains(&"Started".to_string())).then_some(r)
    });
    assert!(reasons.contains(&"Pulled".to_string()), "{:?}", reasons);

    // Steady state: no LIST, only lease renewals (and the long watch).
    std::thread::sleep(Duration::from_millis(1500));
    api.clear_requests();
    std::thread::sleep(Duration::from_secs(5));
    let mine: Vec<Value> = api
        .requests()
        .into_iter()
        .filter(|r| r["user"].as_str().is_some_and(|u| u.ends_with(&name)))
        .collect();
    for r in &mine {
        let ok = (r["method"] == "PUT" && r["path"].as_str().unwrap().contains("/leases/"))
            || r["watch"] == true;
        assert!(ok, "unexpected request in steady state: {}", r);
    }
    assert!(
        mine.iter().any(|r| r["method"] == "PUT"),
        "no lease renewal in 5 s: {:?}",
        mine
    );

    // Graceful deletion: SIGTERM, then the pod is removed from the API server.
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    api.delete("/api/v1/namespaces/default/pods/web", None)
        .expect("deleting pod web");
    eventually(&node, &api, "pod web gone from the API server", || {
        api.pod("default", "web").is_none().then_some(())
    });
    assert!(
        node.runc_list().is_empty(),
        "containers left: {:?}",
        node.runc_list()
    );
    assert!(!node.pod_dir(&uid).exists());
    assert!(node
        .daemon_log()
        .contains("deleted at the API server; terminating (grace period 3s)"));
    api.assert_no_violations();
}

#[test]
fn a_crash_loop_is_reported_and_its_events_aggregated() {
    let api = ApiServer::start();
    let node = join(&api);
    api.create_pod(&api_pod("crash", &node, "echo boom; exit 1"));
    let pod = eventually(&node, &api, "CrashLoopBackOff at the API", || {
        let p = api.pod("default", "crash")?;
        let cs = api_cstatus(&p);
        (cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && cs["restartCount"].as_u64() >= Some(2))
        .then_some(p)
    });
    let cs = api_cstatus(&pod);
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(api_condition(&pod, "Ready"), Some("False"));
    // One BackOff event, counted, not one per restart.
    let backoffs = eventually(&node, &api, "an aggregated BackOff event", || {
        let b: Vec<Value> = events_for(&api, "crash")
            .into_iter()
            .filter(|e| e["reason"] == "BackOff")
            .collect();
        (b.len() == 1 && b[0]["count"].as_u64() >= Some(2)).then_some(b)
    });
    assert_eq!(backoffs[0]["type"], "Warning");
    assert_eq!(backoffs[0]["source"]["component"], "kubelet");
    api.assert_no_violations();
}

#[test]
fn static_pods_have_mirror_pods() {
    let api = ApiServer::start();
    let mut node = join(&api);
    node.write_manifest(
        "s.yaml",
        &pod_manifest("stat")
            .container("c", "trap 'exit 0' TERM; sleep 3600 & wait")
            .yaml(),
    );
    let mirror_name = node.full_name("stat");
    let mirror = eventually(&node, &api, "the mirror pod Running", || {
        let p = api.pod("default", &mirror_name)?;
        (p["status"]["phase"] == "Running").then_some(p)
    });
    let local = node.wait_running("stat");
    assert_eq!(
        mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"],
        local["metadata"]["uid"]
    );
    assert_eq!(mirror["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(
        mirror["metadata"]["ownerReferences"][0]["name"],
        node.node_name.as_str()
    );
    // Deleted at the API server: recreated (the static pod itself keeps running).
    let container = container_id(&local, "c");
    api.delete(
        &format!("/api/v1/namespaces/default/pods/{}", mirror_name),
        Some(&json!({"gracePeriodSeconds": 0})),
    )
    .expect("deleting the mirror pod");
    let old_uid = mirror["metadata"]["uid"].clone();
    eventually(&node, &api, "the mirror pod recreated", || {
        let p = api.pod("default", &mirror_name)?;
        (p["metadata"]["uid"] != old_uid).then_some(())
    });
    assert_eq!(container_id(&node.wait_running("stat"), "c"), container);
    // The manifest goes: so does the mirror pod.
    node.remove_manifest("s.yaml");
    node.wait_gone("stat");
    eventually(&node, &api, "the mirror pod deleted", || {
        api.pod("default", &mirror_name).is_none().then_some(())
    });
    api.assert_no_violations();
}

#[test]
fn the_pod_watch_survives_an_api_restart_and_expired_versions() {
    let mut api = ApiServer::start();
    let node = join(&api);
    api.create_pod(&api_pod(
        "one",
        &node,
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ));
    eventually(&node, &api, "pod one Running", || {
        (api.pod("default", "one")?["status"]["phase"] == "Running").then_some(())
    });
    // kill -9 of the API server and a restart: the watch breaks, tinylet watches again, gets
    // 410 Expired (history is gone) and lists again.
    api.restart();
    api.create_pod(&api_pod(
        "two",
        &node,
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ));
    eventually(&node, &api, "pod two Running after the API restart", || {
        (api.pod("default", "two")?["status"]["phase"] == "Running").then_some(())
    });
    // The watch cut, a pod created while tinylet is away, and the history compacted past the
    // version tinylet has: its next watch gets 410 Expired and it must list again to see the pod.
    // (The first re-watch attempt is refused, so all this happens while it is away.)
    api.fail_next(503, 1, "/api/v1/pods");
    api.close_watches();
    api.create_pod(&api_pod(
        "three",
        &node,
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ));
    api.compact();
    eventually(&node, &api, "pod three Running after compaction", || {
        (api.pod("default", "three")?["status"]["phase"] == "Running").then_some(())
    });
    assert!(
        node.daemon_log().contains("listing again"),
        "no relist after 410:\n{}",
        node.daemon_log_tail(30)
    );
    // Pod one was never restarted through all this.
    let one = api.pod("default", "one").unwrap();
    assert_eq!(api_cstatus(&one)["restartCount"], 0);
    api.assert_no_violations();
}

#[test]
fn tls_bootstrap_then_certificate_rotation_without_touching_pods() {
    let api = ApiServer::start_with(&[
        "--auto-approve-csr",
        "--cert-duration=12",
        "--cert-backdate=0",
    ]);
    let mut node = Node::create();
    let boot = node.dir.join("bootstrap-kubeconfig");
    let kubeconfig = node.dir.join("kubeconfig");
    api.write_kubeconfig(&boot, &KubeconfigUser::BootstrapToken, true);
    node.extra_run_args.extend(
        [
            "--bootstrap-kubeconfig",
            &boot.display().to_string(),
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--node-lease-duration-seconds",
            "4",
        ]
        .map(String::from),
    );
    node.import_image();
    node.start_daemon();
    let name = node.node_name.clone();
    eventually(
        &node,
        &api,
        "the Node registered with the issued certificate",
        || api.get(&format!("/api/v1/nodes/{}", name)).ok(),
    );
    // The key never left the device; the pair is private.
    let current = node.root.join("pki/kubelet-client-current.pem");
    let meta = std::fs::metadata(&current).expect("the client certificate");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&current).unwrap();
    assert!(text.contains("BEGIN CERTIFICATE") && text.contains("PRIVATE KEY"));
    let csrs = api
        .get("/apis/certificates.k8s.io/v1/certificatesigningrequests")
        .unwrap();
    let first = &csrs["items"][0];
    assert_eq!(
        first["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert!(first["spec"]["username"]
        .as_str()
        .unwrap()
        .starts_with("system:bootstrap:"));

    // A pod runs across the rotation (at 70-90 % of 12 s).
    api.create_pod(&api_pod(
        "steady",
        &node,
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ));
    let pod = eventually(&node, &api, "pod steady Running", || {
        let p = api.pod("default", "steady")?;
        (p["status"]["phase"] == "Running").then_some(p)
    });
    let container = api_cstatus(&pod)["containerID"].clone();
    eventually(&node, &api, "a second CSR, sent by the node itself", || {
        let l = api
            .get("/apis/certificates.k8s.io/v1/certificatesigningrequests")
            .ok()?;
        l["items"]
            .as_array()?
            .iter()
            .any(|c| c["spec"]["username"] == format!("system:node:{}", name).as_str())
            .then_some(())
    });
    eventually(&node, &api, "the rotation logged", || {
        node.daemon_log()
            .contains("client certificate rotated")
            .then_some(())
    });
    // After the rotation the node keeps talking to the API server: the lease is renewed.
    api.clear_requests();
    eventually(
        &node,
        &api,
        "a lease renewal with the new certificate",
        || {
            api.requests()
                .iter()
                .any(|r| {
                    r["method"] == "PUT"
                        && r["status"] == 200
                        && r["user"] == format!("system:node:{}", name).as_str()
                })
                .then_some(())
        },
    );
    let pod = api.pod("default", "steady").unwrap();
    assert_eq!(api_cstatus(&pod)["containerID"], container);
    assert_eq!(api_cstatus(&pod)["restartCount"], 0);
    api.assert_no_violations();
}

#[test]
fn image_pull_secrets_authenticate_the_pull() {
    let reg = support::registry::Registry::start_tls_basic();
    let image = reg.reference("team/app", "v1");
    reg.push_busybox("team/app", "v1");
    let api = ApiServer::start();
    let config = std::fs::read(reg.docker_config()).unwrap();
    api.post(
        "/api/v1/namespaces/default/secrets",
        &json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": support::registry::base64(&config)},
        }),
    )
    .expect("creating the pull secret");
    // The node trusts the registry's CA but has no credentials of its own.
    let node = join_with(
        &api,
        &["--ca-file".into(), reg.ca_file().display().to_string()],
    );
    let mut without = api_pod("nosecret", &node, "sleep 3600");
    without["spec"]["containers"][0]["image"] = json!(image);
    api.create_pod(&without);
    let mut with = api_pod("withsecret", &node, "trap 'exit 0' TERM; sleep 3600 & wait");
    with["spec"]["containers"][0]["image"] = json!(image);
    with["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    api.create_pod(&with);
    eventually(&node, &api, "the pod with the secret Running", || {
        (api.pod("default", "withsecret")?["status"]["phase"] == "Running").then_some(())
    });
    // The image was not on the node (its layers were: the busybox image the node imported shares
    // them, so only the manifest and config came from the registry).
    let running = api.pod("default", "withsecret").unwrap();
    assert_eq!(api_cstatus(&running)["image"], image.as_str());
    eventually(&node, &api, "the pod without it failing to pull", || {
        let p = api.pod("default", "nosecret")?;
        let reason = api_cstatus(&p)["state"]["waiting"]["reason"]
            .as_str()?
            .to_string();
        (reason == "ErrImagePull" || reason == "ImagePullBackOff").then_some(())
    });
    api.assert_no_violations();
}

#[test]
fn tls_server_name_is_what_the_certificate_is_checked_against() {
    let api = ApiServer::start();
    // The serving certificate names 127.0.0.1, localhost and kubernetes, not "wrong.example".
    let nodes: Vec<Node> = ["kubernetes", "wrong.example"]
        .iter()
        .map(|server_name| {
            let mut node = Node::create();
            let kubeconfig = node.dir.join("kubeconfig");
            api.write_kubeconfig(
                &kubeconfig,
                &KubeconfigUser::NodeCert(node.node_name.clone()),
                true,
            );
            let text = std::fs::read_to_string(&kubeconfig).unwrap();
            let text = text.replacen(
                "\n    server:",
                &format!("\n    tls-server-name: {}\n    server:", server_name),
                1,
            );
            std::fs::write(&kubeconfig, text).unwrap();
            node.extra_run_args
                .extend(["--kubeconfig".into(), kubeconfig.display().to_string()]);
            node.start_daemon();
            node
        })
        .collect();
    eventually(
        &nodes[0],
        &api,
        "the node with tls-server-name kubernetes registered",
        || {
            api.get(&format!("/api/v1/nodes/{}", nodes[0].node_name))
                .ok()
        },
    );
    eventually(
        &nodes[1],
        &api,
        "a certificate error for wrong.example",
        || {
            let log = nodes[1].daemon_log();
            (log.contains("registering node") && log.to_lowercase().contains("certificate"))
                .then_some(())
        },
    );
    assert!(api
        .get(&format!("/api/v1/nodes/{}", nodes[1].node_name))
        .is_err());
}

#[test]
fn a_lease_changed_by_someone_else_is_read_again_and_renewed() {
    let api = ApiServer::start();
    let node = join(&api);
    let path = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
        node.node_name
    );
    let mut lease = eventually(&node, &api, "the node lease", || api.get(&path).ok());
    // Someone else writes the lease: tinylet's next PUT (with the old resourceVersion) gets a 409.
    lease["spec"]["holderIdentity"] = json!("intruder");
    api.put(&path, &lease).expect("overwriting the lease");
    eventually(&node, &api, "the lease held by the node again", || {
        let l = api.get(&path).ok()?;
        (l["spec"]["holderIdentity"] == node.node_name.as_str()).then_some(())
    });
    let conflicts = api
        .requests()
        .iter()
        .filter(|r| r["method"] == "PUT" && r["status"] == 409)
        .count();
    assert!(conflicts >= 1, "no 409 was seen: {:?}", api.requests());
    api.assert_no_violations();
}

#[test]
fn a_pod_with_fields_tinylet_lacks_fails_with_the_reason() {
    let api = ApiServer::start();
    let node = join(&api);
    let mut pod = api_pod("init", &node, "sleep 3600");
    pod["spec"]["runtimeClassName"] = json!("kata");
    api.create_pod(&pod);
    let failed = eventually(&node, &api, "the pod Failed with a reason", || {
        let p = api.pod("default", "init")?;
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(failed["status"]["reason"], "UnsupportedPodSpec");
    let msg = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("spec.runtimeClassName"), "{}", msg);
    assert!(node.runc_list().is_empty(), "nothing of it ran");
    api.assert_no_violations();
}

#[test]
fn init_containers_sidecars_and_hooks_in_cluster_mode() {
    let api = ApiServer::start();
    let node = join(&api);
    let mut pod = api_pod("layered", &node, "cat /work/ready; sleep 3600");
    let work = json!([{"name": "work", "mountPath": "/work"}]);
    pod["spec"]["volumes"] = json!([{"name": "work", "emptyDir": {}}]);
    pod["spec"]["initContainers"] = json!([
        {"name": "setup", "image": IMAGE, "command": ["sh", "-c", "echo prepared > /work/ready"],
         "volumeMounts": work},
        {"name": "helper", "image": IMAGE, "restartPolicy": "Always",
         "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"],
         "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}},
    ]);
    pod["spec"]["containers"][0]["volumeMounts"] = work;
    pod["spec"]["containers"][0]["lifecycle"] = json!({
        "postStart": {"exec": {"command": ["sh", "-c", "echo hook > /work/post"]}},
        "preStop": {"sleep": {"seconds": 1}},
    });
    api.create_pod(&pod);
    let p = eventually(&node, &api, "the pod Ready at the API", || {
        let p = api.pod("default", "layered")?;
        (api_condition(&p, "Ready") == Some("True")).then_some(p)
    });
    let inits = p["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(inits.len(), 2, "{}", p["status"]);
    assert_eq!(inits[0]["state"]["terminated"]["reason"], "Completed");
    assert!(!inits[1]["state"]["running"].is_null(), "{}", p["status"]);
    assert_eq!(inits[1]["ready"], true);
    assert_eq!(api_condition(&p, "Initialized"), Some("True"));
    assert_eq!(node.logs("layered", "c"), "prepared\n");
    // Events are sent on their own thread: they may trail the status.
    eventually(
        &node,
        &api,
        "a Started event naming the init container",
        || {
            events_for(&api, "layered")
                .into_iter()
                .any(|e| {
                    e["reason"] == "Started"
                        && e["involvedObject"]["fieldPath"] == "spec.initContainers{setup}"
                })
                .then_some(())
        },
    );
    api.delete("/api/v1/namespaces/default/pods/layered", None)
        .expect("deleting the pod");
    eventually(&node, &api, "the pod gone from the API", || {
        api.pod("default", "layered").is_none().then_some(())
    });
    assert!(node.runc_list().is_empty(), "{:?}", node.runc_list());
    api.assert_no_violations();
}

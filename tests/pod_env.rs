//! Container environments as the kubelet makes them, checked from inside real runc containers
//! (busybox `env` -> the container log): downward-API fields and resource fields of a standalone
//! static pod, and in cluster mode (the API-server double) envFrom, configMap and secret keys,
//! optional and required sources, service-link variables, and restarts while the API server is
//! out of reach.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use support::apiserver::{eventually, ApiServer};
use support::relay::Relay;
use support::*;

/// Prints the environment between markers, then sleeps.
const PRINT_ENV: &str = "echo ENV-BEGIN; env; echo ENV-END; trap 'exit 0' TERM; sleep 3600 & wait";

/// The variables the container printed (the last complete `env` dump in `log`).
fn env_of(log: &str) -> BTreeMap<String, String> {
    let dump = log
        .rsplit("ENV-BEGIN")
        .next()
        .and_then(|d| d.split("ENV-END").next())
        .unwrap_or_default();
    dump.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn wait_env(node: &mut Node, pod: &str) -> BTreeMap<String, String> {
    env_of(&node.wait_log(pod, "c", "ENV-END"))
}

#[test]
fn standalone_pod_gets_fields_resources_and_expanded_variables() {
    let mut node = Node::start();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "envy", "namespace": "edge", "labels": {"app": "meter"},
                     "annotations": {"site": "cabinet-7"}},
        "spec": {"containers": [{
            "name": "c",
            "image": IMAGE,
            "command": ["sh", "-c", PRINT_ENV],
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "SITE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['site']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "MILLICPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "REQ_MILLICPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "DISK", "valueFrom": {"resourceFieldRef": {"resource": "limits.ephemeral-storage", "divisor": "1Mi"}}},
                {"name": "GREETING", "value": "hello $(POD_NAME) in $(POD_NS)"},
                {"name": "LITERAL", "value": "$$(POD_NAME)"},
                {"name": "UNKNOWN", "value": "$(NOPE)"},
                {"name": "OPTIONAL", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k", "optional": true}}},
            ],
        }]},
    });
    node.write_manifest("envy.json", &pod.to_string());
    let env = wait_env(&mut node, "envy");
    let full = node.full_name("envy");
    let ps = node.pod("envy").unwrap();
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("POD_NAME"), Some(full.as_str()));
    assert_eq!(get("POD_NS"), Some("edge"));
    assert_eq!(get("POD_UID"), ps["metadata"]["uid"].as_str());
    assert_eq!(get("APP"), Some("meter"));
    assert_eq!(get("SITE"), Some("cabinet-7"));
    assert_eq!(get("NODE"), Some(node.node_name.as_str()));
    assert_eq!(get("SA"), Some("default"));
    assert_eq!(get("HOST_IP"), ps["status"]["hostIP"].as_str());
    assert_eq!(get("CPU"), Some("1"), "250m rounded up to whole cores");
    assert_eq!(get("MILLICPU"), Some("250"));
    assert_eq!(get("MEM_MI"), Some("64"));
    assert_eq!(
        get("REQ_MILLICPU"),
        Some("250"),
        "requests default to limits"
    );
    // No ephemeral-storage limit: the node's allocatable (90 % of the disk), in MiB.
    let disk: u64 = get("DISK").unwrap().parse().unwrap();
    assert!(disk > 0, "DISK={}", disk);
    assert_eq!(
        get("GREETING"),
        Some(format!("hello {} in edge", full).as_str())
    );
    assert_eq!(get("LITERAL"), Some("$(POD_NAME)"));
    assert_eq!(get("UNKNOWN"), Some("$(NOPE)"));
    assert_eq!(
        get("OPTIONAL"),
        None,
        "an optional missing source sets nothing"
    );
    // Standalone: no API server, so no service variables.
    assert!(!env.keys().any(|k| k.contains("_SERVICE_")), "{:?}", env);
    // The image's variables are still there.
    assert!(get("PATH").is_some());

    // A required configMap key in standalone mode: the container waits, saying why.
    let needy = pod_manifest("needy")
        .container("c", PRINT_ENV)
        .set(
            "env",
            json!([{"name": "DB_HOST", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "host"}}}]),
        );
    node.write_manifest("needy.yaml", &needy.yaml());
    let p = node.wait_pod("needy", "CreateContainerConfigError", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    let msg = cstatus(&p, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("\"DB_HOST\"")
            && msg.contains("configMapKeyRef")
            && msg.contains("standalone"),
        "{}",
        msg
    );
}

// ---- cluster mode ----

fn join(api: &ApiServer, through: Option<&Relay>) -> Node {
    api.join_node(
        through,
        &[
            "--node-lease-duration-seconds",
            "4",
            "--node-status-update-frequency",
            "1s",
        ],
    )
}

fn create(api: &ApiServer, path: &str, obj: Value) {
    api.post(path, &obj)
        .unwrap_or_else(|e| panic!("POST {}: {:?}", path, e));
}

fn config_map(api: &ApiServer, name: &str, data: Value) {
    create(
        api,
        "/api/v1/namespaces/default/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}),
    );
}

fn b64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (c as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn secret(api: &ApiServer, name: &str, data: &[(&str, &str)]) {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    create(
        api,
        "/api/v1/namespaces/default/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}),
    );
}

fn service(api: &ApiServer, name: &str, cluster_ip: &str, ports: Value) {
    create(
        api,
        "/api/v1/namespaces/default/services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"clusterIP": cluster_ip, "ports": ports}}),
    );
}

fn api_pod(api: &ApiServer, name: &str, node: &Node, container: Value) {
    let mut c = json!({"name": "c", "image": IMAGE, "command": ["sh", "-c", PRINT_ENV]});
    for (k, v) in container.as_object().unwrap() {
        c[k] = v.clone();
    }
    create(
        api,
        "/api/v1/namespaces/default/pods",
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node.node_name, "terminationGracePeriodSeconds": 2, "containers": [c]},
        }),
    );
}

fn waiting_at_api(api: &ApiServer, name: &str) -> Option<(String, String)> {
    let p = api.pod("default", name)?;
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    Some((
        w["reason"].as_str()?.to_string(),
        w["message"].as_str()?.to_string(),
    ))
}

fn running_at_api(api: &ApiServer, name: &str) -> bool {
    api.pod("default", name)
        .is_some_and(|p| !p["status"]["containerStatuses"][0]["state"]["running"].is_null())
}

#[test]
fn cluster_pod_gets_env_from_key_refs_and_service_links() {
    let api = ApiServer::start();
    config_map(
        &api,
        "settings",
        json!({"MODE": "fast", "LEVEL": "3", "bad key!": "x"}),
    );
    secret(&api, "creds", &[("PASSWORD", "hunter2"), ("MODE", "safe")]);
    service(
        &api,
        "kubernetes",
        "10.96.0.1",
        json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
    );
    service(
        &api,
        "db-main",
        "10.96.0.20",
        json!([{"port": 5432, "protocol": "TCP"}]),
    );
    service(
        &api,
        "headless",
        "None",
        json!([{"port": 80, "protocol": "TCP"}]),
    );
    let mut node = join(&api, None);

    api_pod(
        &api,
        "envy",
        &node,
        json!({
            "envFrom": [
                {"configMapRef": {"name": "settings"}},
                {"prefix": "S_", "secretRef": {"name": "creds"}},
                {"configMapRef": {"name": "absent", "optional": true}},
            ],
            "env": [
                {"name": "LEVEL", "value": "9"},
                {"name": "CM_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
                {"name": "OPT_CM", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                {"name": "OPT_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
                {"name": "DB_URL", "value": "pg://$(DB_MAIN_SERVICE_HOST):$(DB_MAIN_SERVICE_PORT)/$(MODE)?pw=$(S_PASSWORD)"},
            ],
        }),
    );
    let env = wait_env(&mut node, "envy");
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("MODE"), Some("fast"));
    assert_eq!(get("S_MODE"), Some("safe"), "prefix");
    assert_eq!(get("S_PASSWORD"), Some("hunter2"), "secret values decoded");
    assert_eq!(get("LEVEL"), Some("9"), "env overrides envFrom");
    assert_eq!(get("CM_LEVEL"), Some("3"));
    assert_eq!(get("PW"), Some("hunter2"));
    assert_eq!(get("OPT_CM"), None);
    assert_eq!(get("OPT_KEY"), None);
    assert!(!env.keys().any(|k| k.starts_with("bad")), "{:?}", env);
    assert_eq!(get("DB_URL"), Some("pg://10.96.0.20:5432/fast?pw=hunter2"));
    // Service links: the namespace's services with a cluster IP, and the master service.
    assert_eq!(get("DB_MAIN_SERVICE_HOST"), Some("10.96.0.20"));
    assert_eq!(get("DB_MAIN_SERVICE_PORT"), Some("5432"));
    assert_eq!(get("DB_MAIN_PORT"), Some("tcp://10.96.0.20:5432"));
    assert_eq!(get("DB_MAIN_PORT_5432_TCP_ADDR"), Some("10.96.0.20"));
    assert_eq!(get("DB_MAIN_PORT_5432_TCP_PROTO"), Some("tcp"));
    assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
    assert_eq!(get("KUBERNETES_PORT_443_TCP"), Some("tcp://10.96.0.1:443"));
    assert!(!env.keys().any(|k| k.starts_with("HEADLESS_")), "{:?}", env);

    // The skipped key is reported as the kubelet does.
    let ev = eventually(
        &node,
        &api,
        "an InvalidEnvironmentVariableNames event",
        || {
            let list = api.get("/api/v1/namespaces/default/events").ok()?;
            list["items"]
                .as_array()?
                .iter()
                .find(|e| e["reason"] == "InvalidEnvironmentVariableNames")
                .cloned()
        },
    );
    assert_eq!(ev["involvedObject"]["name"], "envy");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(
        ev["message"],
        "Keys [bad key!] from the EnvFrom configMap default/settings were skipped since they are considered invalid environment variable names."
    );

    // What the environment read is kept beside the pod, for root only; the daemon's log never
    // shows a secret value.
    let uid = api.pod("default", "envy").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let kept = node.pod_dir(&uid).join("env-sources.json");
    let meta = std::fs::metadata(&kept).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(!node.daemon_log().contains("hunter2"));

    // enableServiceLinks: false leaves only the master service's variables.
    create(
        &api,
        "/api/v1/namespaces/default/pods",
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "nolinks", "namespace": "default"},
            "spec": {"nodeName": node.node_name, "enableServiceLinks": false, "terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "c", "image": IMAGE, "command": ["sh", "-c", PRINT_ENV]}]},
        }),
    );
    let env = wait_env(&mut node, "nolinks");
    assert_eq!(
        env.get("KUBERNETES_SERVICE_HOST").map(String::as_str),
        Some("10.96.0.1")
    );
    assert!(!env.contains_key("DB_MAIN_SERVICE_HOST"), "{:?}", env);
    api.assert_no_violations();
}

#[test]
fn a_missing_config_map_holds_the_container_until_it_is_created() {
    let api = ApiServer::start();
    let mut node = join(&api, None);
    api_pod(
        &api,
        "later",
        &node,
        json!({"env": [{"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "paint", "key": "color"}}}]}),
    );
    let (reason, message) =
        eventually(&node, &api, "CreateContainerConfigError at the API", || {
            waiting_at_api(&api, "later").filter(|(r, _)| r == "CreateContainerConfigError")
        });
    assert_eq!(reason, "CreateContainerConfigError");
    assert_eq!(message, "configmap \"paint\" not found");
    assert_eq!(
        api.pod("default", "later").unwrap()["status"]["phase"],
        "Pending"
    );

    // The configMap exists but lacks the key: the kubelet's message for that.
    config_map(&api, "paint", json!({"shade": "dark"}));
    eventually(&node, &api, "the missing-key message", || {
        waiting_at_api(&api, "later")
            .filter(|(_, m)| m == "couldn't find key color in ConfigMap default/paint")
    });

    // With the key, the container starts on its next retry.
    api.put(
        "/api/v1/namespaces/default/configmaps/paint",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "paint"},
                "data": {"shade": "dark", "color": "teal"}}),
    )
    .unwrap();
    eventually(&node, &api, "the pod running at the API", || {
        running_at_api(&api, "later").then_some(())
    });
    let env = wait_env(&mut node, "later");
    assert_eq!(env.get("COLOR").map(String::as_str), Some("teal"));
    api.assert_no_violations();
}

#[test]
fn a_container_restarted_offline_gets_the_same_environment() {
    let api = ApiServer::start();
    let relay = Relay::start(api.port());
    config_map(&api, "settings", json!({"MODE": "fast"}));
    secret(&api, "creds", &[("PASSWORD", "hunter2")]);
    service(
        &api,
        "kubernetes",
        "10.96.0.1",
        json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
    );
    let mut node = join(&api, Some(&relay));
    // Prints its environment and exits: restartPolicy Always restarts it (with back-off).
    let script = "echo ENV-BEGIN; env; echo ENV-END; sleep 1";
    api_pod(
        &api,
        "again",
        &node,
        json!({
            "command": ["sh", "-c", script],
            "envFrom": [{"configMapRef": {"name": "settings"}}],
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}}],
        }),
    );
    let online = wait_env(&mut node, "again");
    assert_eq!(online.get("MODE").map(String::as_str), Some("fast"));
    assert_eq!(online.get("PW").map(String::as_str), Some("hunter2"));
    assert_eq!(
        online.get("KUBERNETES_SERVICE_HOST").map(String::as_str),
        Some("10.96.0.1")
    );

    relay.cut();
    let restarts = |n: &Node| {
        n.pod("again")
            .and_then(|p| cstatus(&p, "c")["restartCount"].as_u64())
            .unwrap_or(0)
    };
    let before = restarts(&node);
    // The restart after the cut reads nothing from the API server.
    node.wait_for(Duration::from_secs(30), "a restart while offline", |n| {
        restarts(n) >= before + 2
    });
    let offline = wait_env(&mut node, "again");
    for k in [
        "MODE",
        "PW",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    ] {
        assert_eq!(offline.get(k), online.get(k), "{}", k);
    }
    assert!(
        node.daemon_log().contains("using the copy read earlier"),
        "{}",
        node.daemon_log_tail(30)
    );

    // Without the kept copy, an offline restart cannot make the environment: the container
    // waits, saying why, and starts again once the API server is back.
    let uid = node.pod("again").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(node.pod_dir(&uid).join("env-sources.json")).unwrap();
    let p = node.wait_pod("again", "CreateContainerConfigError offline", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    let msg = cstatus(&p, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.starts_with("couldn't get configmap default/settings: cannot reach the API server"),
        "{}",
        msg
    );
    relay.restore();
    let restarts_then = restarts(&node);
    node.wait_for(Duration::from_secs(30), "a restart once back online", |n| {
        restarts(n) > restarts_then
    });
    assert!(node.pod_dir(&uid).join("env-sources.json").exists());
}

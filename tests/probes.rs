//! Container probes with real containers: liveness restarts, readiness flips `ready` without a
//! restart, startup gates the others, and a probe tinylet cannot run is refused with a reason.
//! gRPC probes against a real grpcio health server, and HTTPS probes against a server with a
//! self-signed certificate for another name (both on the host, probed from hostNetwork pods).
//! HTTP and TCP probes reach the pod's loopback inside its own network namespace.

mod support;

use serde_json::json;
use support::*;

#[test]
fn a_failing_liveness_probe_restarts_the_container() {
    let mut node = Node::start();
    node.write_manifest(
        "live.yaml",
        &pod_manifest("live")
            .grace(2)
            .container(
                "c",
                "touch /tmp/healthy; sleep 2; rm /tmp/healthy; trap 'exit 0' TERM; sleep 3600 & wait",
            )
            .set(
                "livenessProbe",
                json!({"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}),
            )
            .yaml(),
    );
    node.wait_running("live");
    let pod = node.wait_pod("live", "a restart after the liveness probe failed", |p| {
        cstatus(p, "c")["restartCount"].as_u64() >= Some(1)
    });
    let last = &cstatus(&pod, "c")["lastState"]["terminated"];
    assert!(last.is_object(), "{}", pod["status"]);
    assert!(node
        .daemon_log()
        .contains("container c failed its liveness probe; stopping it"));
}

#[test]
fn readiness_follows_an_http_probe_without_restarts() {
    let mut node = Node::start();
    node.write_manifest(
        "ready.yaml",
        &pod_manifest("ready")
            .container(
                "web",
                "mkdir -p /www; echo ok > /www/ready; (sleep 3; rm /www/ready) & exec httpd -f -p 8080 -h /www",
            )
            .set("ports", json!([{"name": "http", "containerPort": 8080}]))
            .set(
                "readinessProbe",
                json!({"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1}),
            )
            .yaml(),
    );
    node.wait_pod("ready", "ready", |p| {
        cstatus(p, "web")["ready"] == true && condition(p, "Ready") == Some("True")
    });
    let pod = node.wait_pod("ready", "not ready once /ready is gone", |p| {
        cstatus(p, "web")["ready"] == false && condition(p, "Ready") == Some("False")
    });
    assert_eq!(cstatus(&pod, "web")["restartCount"], 0);
    assert!(cstatus(&pod, "web")["state"]["running"].is_object());
}

#[test]
fn a_startup_probe_holds_the_container_not_started_until_it_passes() {
    let mut node = Node::start();
    node.write_manifest(
        "slow.yaml",
        &pod_manifest("slow")
            .container("c", "sleep 2; mkdir -p /w; exec httpd -f -p 9000 -h /w")
            .set(
                "startupProbe",
                json!({"tcpSocket": {"port": 9000}, "periodSeconds": 1, "failureThreshold": 30}),
            )
            .yaml(),
    );
    let early = node.wait_pod("slow", "running, not yet started", |p| {
        cstatus(p, "c")["state"]["running"].is_object()
    });
    assert_eq!(
        cstatus(&early, "c")["started"],
        false,
        "{}",
        early["status"]
    );
    assert_eq!(cstatus(&early, "c")["ready"], false);
    let later = node.wait_pod("slow", "started once the port answers", |p| {
        cstatus(p, "c")["started"] == true
    });
    assert_eq!(cstatus(&later, "c")["ready"], true);
    assert_eq!(cstatus(&later, "c")["restartCount"], 0);
}

#[test]
fn a_probe_tinylet_cannot_run_is_refused_with_a_reason() {
    let mut node = Node::start();
    // gRPC probes take a port number; a name is refused (as the API server's validation does).
    node.write_manifest(
        "grpc.yaml",
        &pod_manifest("grpc")
            .container("c", "sleep 3600")
            .set("livenessProbe", json!({"grpc": {"port": "grpc"}}))
            .yaml(),
    );
    let pod = node.wait_pod("grpc", "CreateContainerConfigError", |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    let msg = cstatus(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("livenessProbe.grpc.port"), "{}", msg);
    assert!(node.runc_list().is_empty());
}

/// A helper server on the host (Python), killed with the test.
struct HostServer {
    child: std::process::Child,
    port: u16,
}

impl HostServer {
    fn start(script: &str, args: &[&std::path::Path], dir: &std::path::Path) -> HostServer {
        let port_file = dir.join(format!("{}.port", script));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support/probe_servers")
            .join(script);
        let child = std::process::Command::new("python3")
            .arg(&path)
            .arg(&port_file)
            .args(args)
            .spawn()
            .expect("python3");
        let mut server = HostServer { child, port: 0 };
        server.port = poll_until(
            WAIT,
            &format!("{} to listen", script),
            || {
                std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
            },
            String::new,
        );
        server
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready(pod: &serde_json::Value, c: &str) -> bool {
    cstatus(pod, c)["ready"] == true
}

#[test]
fn grpc_probes_follow_a_real_grpc_health_server() {
    let mut node = Node::start();
    let flag = node.dir.join("not-serving");
    let server = HostServer::start("grpc_health_server.py", &[&flag], &node.dir);
    node.write_manifest(
        "g.yaml",
        &pod_manifest("g")
            .host_network()
            .container("c", "sleep 3600")
            .set(
                "readinessProbe",
                json!({"grpc": {"port": server.port, "service": "tinylet.test"},
                       "periodSeconds": 1, "failureThreshold": 1}),
            )
            .container("unknown", "sleep 3600")
            .set(
                "readinessProbe",
                json!({"grpc": {"port": server.port, "service": "no.such.service"},
                       "periodSeconds": 1, "failureThreshold": 1}),
            )
            .yaml(),
    );
    let pod = node.wait_pod("g", "ready while SERVING", |p| ready(p, "c"));
    // NotFound for a service the server does not know: a failure.
    assert!(!ready(&pod, "unknown"), "{}", pod["status"]);
    std::fs::write(&flag, "").unwrap();
    node.wait_pod("g", "not ready while NOT_SERVING", |p| !ready(p, "c"));
    std::fs::remove_file(&flag).unwrap();
    let pod = node.wait_pod("g", "ready again", |p| ready(p, "c"));
    assert_eq!(cstatus(&pod, "c")["restartCount"], 0);
    assert!(!ready(&pod, "unknown"));
}

#[test]
fn a_grpc_probe_against_a_server_that_is_not_grpc_fails_without_hanging() {
    let mut node = Node::start();
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    node.write_manifest(
        "silent.yaml",
        &pod_manifest("silent")
            .host_network()
            .grace(1)
            .container("c", "trap 'exit 0' TERM; sleep 3600 & wait")
            .set(
                "livenessProbe",
                json!({"grpc": {"port": port}, "periodSeconds": 1, "timeoutSeconds": 1,
                       "failureThreshold": 2}),
            )
            .yaml(),
    );
    node.wait_pod("silent", "a restart after the gRPC probe timed out", |p| {
        cstatus(p, "c")["restartCount"].as_u64() >= Some(1)
    });
    assert!(node
        .daemon_log()
        .contains("container c failed its liveness probe; stopping it"));
}

#[test]
fn https_probes_accept_any_certificate_and_follow_redirects() {
    let mut node = Node::start();
    let (cert, key) = (node.dir.join("cert.pem"), node.dir.join("key.pem"));
    support::apiserver::self_signed_cert("/CN=not-this-host.example", &cert, &key);
    let server = HostServer::start("https_server.py", &[&cert, &key], &node.dir);
    let probe = |path: &str| {
        json!({"httpGet": {"scheme": "HTTPS", "port": server.port, "path": path},
               "periodSeconds": 1, "failureThreshold": 1})
    };
    node.write_manifest(
        "tls.yaml",
        &pod_manifest("tls")
            .host_network()
            .container("redirect", "sleep 3600")
            .set("readinessProbe", probe("/redirect"))
            .container("away", "sleep 3600")
            .set("readinessProbe", probe("/away"))
            .container("missing", "sleep 3600")
            .set("readinessProbe", probe("/missing"))
            .yaml(),
    );
    let pod = node.wait_pod("tls", "ready through the redirect", |p| {
        ready(p, "redirect") && ready(p, "away")
    });
    // Three more periods: the 404 never makes it ready.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pod = node.pod("tls").unwrap_or(pod);
    assert!(!ready(&pod, "missing"), "{}", pod["status"]);
    assert!(cstatus(&pod, "missing")["state"]["running"].is_object());
}

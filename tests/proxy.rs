//! The service proxy, end to end: the API-server double holds Services and EndpointSlices,
//! `tinylet proxy` runs inside a lab's "node" network namespace (support/netns.rs), backends
//! are python processes in "pod" namespaces on the node's bridge, and a client "pod" connects
//! to ClusterIPs and NodePorts. Nothing touches the host's network.
//!
//! Needs root, python3 and iproute2.

#[path = "support/netns.rs"]
mod netns;
mod support;

use netns::{in_ns, Lab, NODE_IP};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::apiserver::{ApiServer, KubeconfigUser};
use support::{poll_until, WAIT};

const CLUSTER_IP: &str = "10.96.0.10";
const CLIENT: u8 = 100;
const NODE: &str = "proxy-node";

/// A lab with the API double relayed into it, the proxy running in the node namespace, a
/// client pod and backends at 10.244.0.11, .12, ...
struct Setup {
    lab: Lab,
    api: ApiServer,
    dir: PathBuf,
    client: String,
    backends: Vec<(String, u32)>,
    proxy_pid: u32,
}

impl Setup {
    fn new(backends: usize) -> Setup {
        Setup::with(backends, &[])
    }

    /// `wrapper`: a command the proxy runs under (e.g. prlimit).
    fn with(backends: usize, wrapper: &[&str]) -> Setup {
        let api = ApiServer::start_with(&["--bookmark-interval=1"]);
        let mut lab = Lab::new();
        let dir = api.dir.join("lab");
        std::fs::create_dir_all(&dir).unwrap();
        lab.relay_api(api.port());
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, &KubeconfigUser::NodeCert(NODE.into()), false);
        let client = lab.pod(CLIENT);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/proxy_backend.py");
        let mut started = Vec::new();
        for i in 0..backends {
            let host = 11 + i as u8;
            let ns = lab.pod(host);
            let name = format!("b{}", i + 1);
            let pid = lab.spawn(
                &ns,
                &[
                    "python3",
                    &script.display().to_string(),
                    &name,
                    "8080",
                    "5353",
                ],
                &dir.join(format!("{}.log", name)),
            );
            started.push((name, pid));
        }
        let kubeconfig = kubeconfig.display().to_string();
        let mut args = wrapper.to_vec();
        args.extend([
            support::bin(),
            "proxy",
            "--kubeconfig",
            &kubeconfig,
            "--node-name",
            NODE,
            "-v",
        ]);
        let proxy_pid = lab.spawn(&lab.node.clone(), &args, &dir.join("proxy.log"));
        let s = Setup {
            lab,
            api,
            dir,
            client,
            backends: started,
            proxy_pid,
        };
        // Every backend answers before a test relies on it.
        for i in 0..backends {
            let addr = format!("10.244.0.{}:8080", 11 + i);
            let name = s.backends[i].0.clone();
            poll_until(
                WAIT,
                &format!("backend {} at {}", name, addr),
                || s.greeting(&addr).is_some_and(|g| g == name),
                || s.logs(),
            );
        }
        s
    }

    fn logs(&self) -> String {
        let proxy = std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
        let tail: Vec<&str> = proxy.lines().rev().take(40).collect();
        format!(
            "--- proxy log tail ---\n{}\n--- API server ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            self.api.log_tail(10)
        )
    }

    /// Connects from the client pod; None if refused, reset or silent.
    fn connect(&self, addr: &str) -> Option<TcpStream> {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        in_ns(&self.client, move || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            Some(s)
        })
    }

    /// The name the backend behind `addr` greets with.
    fn greeting(&self, addr: &str) -> Option<String> {
        let s = self.connect(addr)?;
        first_line(&s)
    }

    fn create(&self, path: &str, obj: Value) {
        self.api
            .post(path, &obj)
            .unwrap_or_else(|e| panic!("creating {}: {:?}", path, e));
    }

    fn service(&self, name: &str, spec: Value) {
        self.create(
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": name}, "spec": spec}),
        );
    }

    /// An EndpointSlice of service `name` with ready endpoints at backends `hosts`.
    fn slice(&self, name: &str, hosts: &[u8]) -> Value {
        json!({
            "metadata": {"name": format!("{}-1", name), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": hosts.iter().map(|h| json!({
                "addresses": [format!("10.244.0.{}", h)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE,
            })).collect::<Vec<_>>(),
        })
    }

    fn put_slice(&self, name: &str, hosts: &[u8]) {
        let path = format!(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{}-1",
            name
        );
        let mut obj = self.slice(name, hosts);
        match self.api.get(&path) {
            Ok(old) => {
                obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                self.api
                    .put(&path, &obj)
                    .unwrap_or_else(|e| panic!("updating {}: {:?}", path, e));
            }
            Err(_) => self.create(
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                obj,
            ),
        }
    }

    /// A ClusterIP service `web` (80 -> 8080 TCP, 53 -> 5353 UDP) over `hosts`.
    fn web(&self, extra: Value, hosts: &[u8]) {
        let mut spec = json!({
            "clusterIP": CLUSTER_IP,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}],
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        self.service("web", spec);
        self.put_slice("web", hosts);
    }

    fn wait_greeting(&self, addr: &str) -> String {
        poll_until(
            WAIT,
            &format!("a greeting through {}", addr),
            || self.greeting(addr),
            || self.logs(),
        )
    }

    /// The service addresses on the node's lo with tinylet's label.
    fn lo_addresses(&self) -> String {
        self.lab.output(
            &self.lab.node,
            &[
                "ip",
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "lo",
                "label",
                "lo:tinylet",
            ],
        )
    }
}

fn first_line(s: &TcpStream) -> Option<String> {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    let line = line.trim().to_string();
    (!line.is_empty()).then_some(line)
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{}", sig), &pid.to_string()])
        .status();
}

#[test]
fn cluster_ip_round_robin_across_three_backends_with_half_close() {
    let s = Setup::new(3);
    s.web(json!({}), &[11, 12, 13]);
    let addr = format!("{}:80", CLUSTER_IP);
    s.wait_greeting(&addr);
    assert!(
        s.lo_addresses().contains(&format!("{}/32", CLUSTER_IP)),
        "ClusterIP not on lo: {}",
        s.lo_addresses()
    );
    let names: Vec<String> = (0..9)
        .map(|_| s.greeting(&addr).expect("a greeting"))
        .collect();
    for w in names.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["b1", "b2", "b3"], "round robin: {:?}", names);
    }
    // Half-close: the client's FIN reaches the backend, which echoes everything and closes.
    let mut c = s.connect(&addr).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut c = c.try_clone().unwrap();
        let p = payload.clone();
        std::thread::spawn(move || {
            c.write_all(&p).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    let nl = got.iter().position(|b| *b == b'\n').unwrap();
    assert_eq!(got.len() - nl - 1, payload.len());
    assert!(got[nl + 1..] == payload[..], "echoed bytes differ");
    s.api.assert_no_violations();
}

#[test]
fn node_port_and_udp_echo() {
    let s = Setup::new(2);
    s.web(
        json!({"type": "NodePort", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": 5353, "nodePort": 30053, "protocol": "UDP"}]}),
        &[11, 12],
    );
    let np = format!("{}:30080", NODE_IP);
    let first = s.wait_greeting(&np);
    let second = s.greeting(&np).unwrap();
    assert_ne!(first, second, "NodePort round robin");
    // UDP through the ClusterIP: each datagram answered by a backend, through one flow.
    let replies: Vec<String> = in_ns(&s.client.clone(), move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + WAIT;
        while out.len() < 3 && Instant::now() < deadline {
            u.send_to(b"hello", (CLUSTER_IP, 53)).unwrap();
            let mut buf = [0u8; 100];
            if let Ok(n) = u.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        out
    });
    assert_eq!(replies.len(), 3, "UDP replies: {:?}\n{}", replies, s.logs());
    assert!(replies[0].ends_with(":hello"), "{:?}", replies);
    assert!(
        replies.iter().all(|r| r == &replies[0]),
        "one flow, one backend: {:?}",
        replies
    );
    // A second client address gets the next backend.
    let other: String = in_ns(&s.client.clone(), move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.send_to(b"x", (CLUSTER_IP, 53)).unwrap();
        let mut buf = [0u8; 100];
        let n = u.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    assert_ne!(
        other.split(':').next(),
        replies[0].split(':').next(),
        "round robin across UDP flows"
    );
    s.api.assert_no_violations();
}

#[test]
fn a_backend_killed_mid_stream_and_an_endpoint_removed() {
    let s = Setup::new(3);
    s.web(json!({}), &[11, 12, 13]);
    let addr = format!("{}:80", CLUSTER_IP);
    s.wait_greeting(&addr);
    // A connection to each backend.
    let mut open: Vec<(String, TcpStream)> = (0..3)
        .map(|_| {
            let c = s.connect(&addr).unwrap();
            (first_line(&c).unwrap(), c)
        })
        .collect();
    open.sort_by(|a, b| a.0.cmp(&b.0));
    // b1 killed (still listed as ready): its connection ends, and new connections go to the
    // others: the dial refused, the proxy tries the next endpoint.
    kill(s.backends[0].1, "KILL");
    let mut buf = [0u8; 16];
    let n = open[0].1.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the killed backend's connection should end");
    for _ in 0..6 {
        let g = s.greeting(&addr).expect("a connection although b1 is dead");
        assert_ne!(g, "b1");
    }
    // b2 removed from the slice: gone from new connections within 100 ms of the update (here
    // bounded loosely for a loaded machine), while the established one keeps working.
    let t0 = Instant::now();
    s.put_slice("web", &[11, 13]);
    let mut clean = 0;
    let took = loop {
        let g = s.greeting(&addr).unwrap();
        clean = if g == "b2" { 0 } else { clean + 1 };
        if clean == 4 {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < WAIT,
            "b2 still used after {:?}\n{}",
            WAIT,
            s.logs()
        );
    };
    eprintln!(
        "endpoint removal effective after {:?} (including 4 connections)",
        took
    );
    let c = &mut open[1].1;
    c.write_all(b"still here\n").unwrap();
    assert_eq!(first_line(c).as_deref(), Some("still here"));
    s.api.assert_no_violations();
}

#[test]
fn session_affinity_client_ip() {
    let s = Setup::new(3);
    s.web(
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 2}}}),
        &[11, 12, 13],
    );
    let addr = format!("{}:80", CLUSTER_IP);
    let first = s.wait_greeting(&addr);
    for _ in 0..6 {
        assert_eq!(s.greeting(&addr).unwrap(), first, "ClientIP affinity");
    }
    // Quiet for longer than the timeout: balanced again.
    std::thread::sleep(Duration::from_millis(2500));
    let names: Vec<String> = (0..3)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(2100));
            s.greeting(&addr).unwrap()
        })
        .collect();
    assert!(
        names.iter().any(|n| *n != first),
        "affinity outlived its timeout: {} then {:?}",
        first,
        names
    );
    s.api.assert_no_violations();
}

#[test]
fn a_deleted_service_is_closed_and_its_address_removed_and_shutdown_cleans_up() {
    let s = Setup::new(1);
    s.web(json!({}), &[11]);
    s.service(
        "other",
        json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
    );
    s.put_slice("other", &[11]);
    s.wait_greeting(&format!("{}:80", CLUSTER_IP));
    s.wait_greeting("10.96.0.20:80");
    s.api
        .delete("/api/v1/namespaces/default/services/web", None)
        .unwrap();
    poll_until(
        WAIT,
        "the deleted service's ClusterIP to leave lo",
        || !s.lo_addresses().contains(CLUSTER_IP),
        || s.logs(),
    );
    assert!(s.connect(&format!("{}:80", CLUSTER_IP)).is_none());
    assert!(s.lo_addresses().contains("10.96.0.20/32"));
    // SIGTERM: the proxy removes what it added before it goes.
    kill(s.proxy_pid, "TERM");
    poll_until(
        WAIT,
        "the proxy to remove its addresses at SIGTERM",
        || s.lo_addresses().trim().is_empty(),
        || s.logs(),
    );
    s.api.assert_no_violations();
}

#[test]
fn out_of_descriptors_accepts_pause_and_resume() {
    // 64 descriptors, and no CAP_SYS_RESOURCE to raise the hard limit.
    let s = Setup::with(
        1,
        &[
            "prlimit",
            "--nofile=64:64",
            "setpriv",
            "--bounding-set",
            "-sys_resource",
            "--",
        ],
    );
    s.web(json!({}), &[11]);
    let addr = format!("{}:80", CLUSTER_IP);
    s.wait_greeting(&addr);
    // Far more connections than the proxy has descriptors for (two each).
    let held: Vec<TcpStream> = (0..60).filter_map(|_| s.connect(&addr)).collect();
    poll_until(
        WAIT,
        "the proxy to pause accepting",
        || {
            std::fs::read_to_string(s.dir.join("proxy.log"))
                .unwrap_or_default()
                .contains("pausing new connections")
        },
        || s.logs(),
    );
    assert!(
        Path::new(&format!("/proc/{}", s.proxy_pid)).exists(),
        "the proxy died\n{}",
        s.logs()
    );
    drop(held);
    // Descriptors back: new connections are served again.
    assert_eq!(s.wait_greeting(&addr), "b1");
}

#[test]
fn a_node_port_taken_by_another_process_is_retried_until_free() {
    let mut s = Setup::new(1);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/proxy_backend.py");
    let node = s.lab.node.clone();
    let squatter = s.lab.spawn(
        &node,
        &[
            "python3",
            &script.display().to_string(),
            "squatter",
            "30080",
            "30999",
        ],
        &s.dir.join("squatter.log"),
    );
    let np = format!("{}:30080", NODE_IP);
    poll_until(
        WAIT,
        "the squatter on the NodePort",
        || s.greeting(&np).is_some_and(|g| g == "squatter"),
        || s.logs(),
    );
    s.web(
        json!({"type": "NodePort", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]}),
        &[11],
    );
    s.wait_greeting(&format!("{}:80", CLUSTER_IP));
    poll_until(
        WAIT,
        "the proxy to report the NodePort it cannot bind",
        || {
            std::fs::read_to_string(s.dir.join("proxy.log"))
                .unwrap_or_default()
                .contains("cannot listen on Tcp 0.0.0.0:30080")
        },
        || s.logs(),
    );
    kill(squatter, "KILL");
    poll_until(
        WAIT,
        "the NodePort to be served once free",
        || s.greeting(&np).is_some_and(|g| g == "b1"),
        || s.logs(),
    );
    s.api.assert_no_violations();
}

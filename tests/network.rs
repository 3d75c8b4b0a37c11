//! Pod networking with Debian's CNI plugins (bridge, host-local, loopback, portmap) and pod DNS.
//! Every daemon runs in a network namespace the test makes (the "node"): the bridge, the
//! host-local leases (under the node's directory), portmap's iptables rules and all traffic stay
//! there; the host's network is never touched.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::*;

const PLUGINS: &str = "/usr/lib/cni";
const NET: &str = "tltest";

/// A node in its own network namespace with a bridge network on `subnet` (leases under
/// `<node dir>/ipam`), its daemon running.
fn cni_node(subnet: &str) -> Node {
    let mut node = Node::create();
    node.use_netns();
    let conf_dir = node.dir.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [
            {"type": "loopback"},
            {"type": "bridge", "bridge": "cni0", "isGateway": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": node.dir.join("ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(conf_dir.join("10-test.conflist"), conf.to_string()).unwrap();
    let p = |p: &Path| p.display().to_string();
    node.extra_run_args.extend([
        "--cni-conf-dir".into(),
        p(&conf_dir),
        "--cni-bin-dir".into(),
        PLUGINS.into(),
    ]);
    node.import_image();
    node.start_daemon();
    node
}

fn pod(name: &str, script: &str, extra_spec: Value, container_extra: Value) -> String {
    let mut c = json!({"name": "c", "image": IMAGE, "command": ["sh", "-c", script]});
    for (k, v) in container_extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    let mut spec = json!({"containers": [c], "terminationGracePeriodSeconds": 1});
    for (k, v) in extra_spec.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}).to_string()
}

fn pod_ip(p: &Value) -> String {
    p["status"]["podIP"]
        .as_str()
        .unwrap_or_else(|| panic!("no podIP: {}", p["status"]))
        .to_string()
}

/// host-local's lease file for `ip`.
fn lease(node: &Node, ip: &str) -> PathBuf {
    node.dir.join("ipam").join(NET).join(ip)
}

/// A shell command that GETs / from ip:port (busybox's static wget crashes in its resolver, so
/// plain HTTP/1.0 over nc).
fn http_get(ip: &str, port: u16) -> String {
    format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {} {}",
        ip, port
    )
}

/// GETs / from ip:port inside the node's namespace until the answer is the test page (the
/// server may still be starting); returns the last output.
fn node_get(node: &Node, ip: &str, port: u16) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = node.netns_exec(&["sh", "-c", &http_get(ip, port)]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.ends_with("hello from tinylet\n") || std::time::Instant::now() > deadline {
            return format!("{}{}", text, String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn in_subnet(ip: &str, prefix: &str) -> bool {
    ip.starts_with(prefix) && ip.parse::<std::net::Ipv4Addr>().is_ok()
}

#[test]
fn pods_get_addresses_reach_each_other_and_publish_host_ports() {
    let mut node = cni_node("10.88.0.0/24");
    let server = pod(
        "server",
        "echo ip=$POD_IP ips=$POD_IPS; cat /etc/hosts; exec httpd -f -p 8080 -h /var/www",
        json!({}),
        json!({
            "ports": [{"containerPort": 8080, "hostPort": 30080}],
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}}
            ]
        }),
    );
    node.write_manifest("server.json", &server);
    let p = node.wait_running("server");
    let ip = pod_ip(&p);
    assert!(in_subnet(&ip, "10.88.0."), "{}", ip);
    assert_ne!(ip, "10.88.0.1", "the gateway is the bridge's");
    assert_eq!(p["status"]["podIPs"], json!([{"ip": ip}]));
    assert_eq!(p["status"]["hostIP"], NODE_ADDR);
    let full = node.full_name("server");
    let out = node.wait_log(&full, "c", "127.0.0.1");
    assert!(out.contains(&format!("ip={} ips={}", ip, ip)), "{}", out);
    assert!(
        out.contains(&format!("{}\t{}", ip, full)),
        "hosts names the pod IP: {}",
        out
    );
    assert!(!out.contains("127.0.1.1"), "{}", out);
    assert!(
        lease(&node, &ip).is_file(),
        "host-local lease in the test's dataDir"
    );

    // Another pod reaches it over the bridge.
    let client = pod(
        "client",
        &format!(
            "until {} | grep hello; do sleep 0.2; done; sleep 3600",
            http_get(&ip, 8080)
        ),
        json!({}),
        json!({}),
    );
    node.write_manifest("client.json", &client);
    let c = node.wait_running("client");
    let cip = pod_ip(&c);
    assert!(
        in_subnet(&cip, "10.88.0.") && cip != ip,
        "{} vs {}",
        cip,
        ip
    );
    node.wait_log(&node.full_name("client"), "c", "hello from tinylet");

    // The hostPort on the node's own address, through portmap's DNAT.
    let out = node_get(&node, NODE_ADDR, 30080);
    assert!(out.ends_with("hello from tinylet\n"), "{}", out);

    // Removal: DEL releases the address and takes the port mapping and the veth away.
    node.remove_manifest("server.json");
    node.wait_gone("server");
    assert!(!lease(&node, &ip).exists(), "lease of {} released", ip);
    let nat = node.netns_exec(&["iptables", "-t", "nat", "-S"]);
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains("30080"),
        "{}",
        String::from_utf8_lossy(&nat.stdout)
    );
    assert!(node.daemon_log().contains("network released"));
}

#[test]
fn del_works_after_kill9_restart_and_after_a_reboot() {
    let mut node = cni_node("10.88.1.0/24");
    for name in ["a", "b"] {
        node.write_manifest(
            &format!("{}.json", name),
            &pod(name, "sleep 3600", json!({}), json!({})),
        );
    }
    let ip_a = pod_ip(&node.wait_running("a"));
    let ip_b = pod_ip(&node.wait_running("b"));
    assert!(lease(&node, &ip_a).is_file() && lease(&node, &ip_b).is_file());

    // kill -9, start again: the pod keeps its address; removed, it releases it.
    node.kill9_daemon();
    node.start_daemon();
    let p = node.wait_running("a");
    assert_eq!(pod_ip(&p), ip_a, "adopted pod keeps its IP");
    node.wait_for(WAIT, "pod b adopted too", |n| {
        n.pod("b").is_some_and(|p| all_running(&p))
    });
    assert!(
        !node.daemon_log().contains("CNI CHECK failed"),
        "the adopted pods' networks pass CHECK:\n{}",
        node.daemon_log_tail(20)
    );
    node.remove_manifest("a.json");
    node.wait_gone("a");
    assert!(
        !lease(&node, &ip_a).exists(),
        "released after an agent restart"
    );

    // Removed while the node was down, after a power cycle: the namespace is gone, DEL with
    // an empty CNI_NETNS still releases the address.
    node.simulate_reboot();
    node.remove_manifest("b.json");
    node.start_daemon();
    node.wait_gone("b");
    assert!(!lease(&node, &ip_b).exists(), "released after a reboot");
}

#[test]
fn finished_pod_releases_its_address_and_keeps_it_in_status() {
    let mut node = cni_node("10.88.4.0/24");
    node.write_manifest(
        "job.json",
        &pod(
            "job",
            "sleep 1; echo done",
            json!({"restartPolicy": "Never"}),
            json!({}),
        ),
    );
    let running = node.wait_running("job");
    let ip = pod_ip(&running);
    assert!(lease(&node, &ip).is_file());
    let done = node.wait_pod("job", "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    node.wait_for(WAIT, "the finished pod's lease to be released", |n| {
        !lease(n, &ip).exists()
    });
    assert_eq!(pod_ip(&done), ip, "the status keeps the IP");
    // An agent restart neither re-adds it nor forgets the IP.
    node.restart_daemon();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let p = node.pod("job").unwrap();
    assert_eq!(p["status"]["phase"], "Succeeded");
    assert_eq!(pod_ip(&p), ip);
    assert!(std::fs::read_dir(node.dir.join("ipam").join(NET))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with("10.")));
}

#[test]
fn pod_restored_after_a_reboot_gets_a_network_again() {
    let mut node = cni_node("10.88.2.0/24");
    node.write_manifest(
        "a.json",
        &pod("a", "exec httpd -f -p 80 -h /var/www", json!({}), json!({})),
    );
    let before = node.wait_running("a");
    let ip = pod_ip(&before);
    let old_id = container_id(&before, "c");
    node.simulate_reboot();
    node.start_daemon();
    let p = node.wait_pod("a", "running again (a new container) with a pod IP", |p| {
        all_running(p)
            && cstatus(p, "c")["containerID"].as_str() != Some(old_id.as_str())
            && p["status"]["podIP"].is_string()
    });
    let ip2 = pod_ip(&p);
    assert!(lease(&node, &ip2).is_file());
    if ip2 != ip {
        assert!(
            !lease(&node, &ip).exists(),
            "the old sandbox's lease is released"
        );
    }
    // Reachable from the node through the new bridge.
    let out = node_get(&node, &ip2, 80);
    assert!(out.ends_with("hello from tinylet\n"), "{}", out);
}

#[test]
fn plugin_failure_shows_in_status_and_recovers() {
    // A /30 has one address for pods besides the gateway.
    let mut node = cni_node("10.88.3.0/30");
    node.write_manifest("a.json", &pod("a", "sleep 3600", json!({}), json!({})));
    let ip_a = pod_ip(&node.wait_running("a"));
    node.write_manifest("b.json", &pod("b", "sleep 3600", json!({}), json!({})));
    let p = node.wait_pod("b", "a network set-up failure in its status", |p| {
        p["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("failed to set up the pod network"))
    });
    let msg = p["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "plugin type=\"bridge\" name=\"{}\" failed (add)",
            NET
        )) && msg.contains("no IP addresses available"),
        "{}",
        msg
    );
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(condition(&p, "PodReadyToStartContainers"), Some("False"));
    assert_eq!(
        cstatus(&p, "c")["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    assert!(p["status"]["podIP"].is_null());
    // Freeing the address lets the retry succeed.
    node.remove_manifest("a.json");
    node.wait_gone("a");
    let p = node.wait_running("b");
    assert_eq!(pod_ip(&p), ip_a);
    assert!(p["status"]["message"].is_null(), "{}", p["status"]);
}

#[test]
fn zero_config_bridge_network_from_pod_cidr() {
    let mut node = Node::create();
    node.use_netns();
    let conf_dir = node.dir.join("net.d");
    node.extra_run_args.extend([
        "--cni-conf-dir".into(),
        conf_dir.display().to_string(),
        "--cni-bin-dir".into(),
        PLUGINS.into(),
        "--pod-cidr".into(),
        "10.77.0.0/24".into(),
    ]);
    node.import_image();
    node.start_daemon();
    node.write_manifest(
        "z.json",
        &pod(
            "z",
            "exec httpd -f -p 80 -h /var/www",
            json!({}),
            json!({"ports": [{"containerPort": 80, "hostPort": 30081}]}),
        ),
    );
    let ip = pod_ip(&node.wait_running("z"));
    assert!(in_subnet(&ip, "10.77.0."), "{}", ip);
    let written: Value =
        serde_json::from_slice(&std::fs::read(conf_dir.join("10-tinylet.conflist")).unwrap())
            .unwrap();
    assert_eq!(written["plugins"][0]["type"], "bridge");
    assert!(node.root.join("cni/networks/tinylet").join(&ip).is_file());
    let out = node_get(&node, NODE_ADDR, 30081);
    assert!(out.ends_with("hello from tinylet\n"), "{}", out);
    node.remove_manifest("z.json");
    node.wait_gone("z");
    assert!(!node.root.join("cni/networks/tinylet").join(&ip).exists());
}

#[test]
fn without_network_config_pods_keep_loopback_only() {
    let mut node = Node::create();
    node.use_netns();
    node.extra_run_args.extend([
        "--cni-conf-dir".into(),
        node.dir.join("empty").display().to_string(),
    ]);
    node.import_image();
    node.start_daemon();
    node.write_manifest(
        "l.json",
        &pod(
            "l",
            "cat /etc/hosts; ip -o link; sleep 3600",
            json!({}),
            json!({}),
        ),
    );
    let p = node.wait_running("l");
    assert!(p["status"]["podIP"].is_null());
    let out = node.wait_log(&node.full_name("l"), "c", "lo:");
    assert!(
        out.contains("127.0.1.1") && !out.contains("eth0"),
        "{}",
        out
    );
    assert!(node.daemon_log().contains("no pod CIDR"));
}

#[test]
fn resolv_conf_per_dns_policy() {
    let mut node = Node::create();
    node.use_netns();
    let resolv = node.dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 192.0.2.53\nsearch lan.example\noptions edns0\n",
    )
    .unwrap();
    node.extra_run_args.extend([
        "--cni-conf-dir".into(),
        node.dir.join("empty").display().to_string(),
        "--resolv-conf".into(),
        resolv.display().to_string(),
        "--cluster-dns".into(),
        "10.96.0.10".into(),
        "--cluster-domain".into(),
        "example.local".into(),
    ]);
    node.import_image();
    node.start_daemon();
    let cases: [(&str, Value, &str); 5] = [
        (
            "cf",
            json!({"dnsPolicy": "ClusterFirst"}),
            "search default.svc.example.local svc.example.local example.local lan.example\nnameserver 10.96.0.10\noptions ndots:5\n",
        ),
        (
            "df",
            json!({"dnsPolicy": "Default"}),
            "search lan.example\nnameserver 192.0.2.53\noptions edns0\n",
        ),
        (
            "none",
            json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.99"], "searches": ["a.example"],
                   "options": [{"name": "ndots", "value": "1"}]}}),
            "search a.example\nnameserver 192.0.2.99\noptions ndots:1\n",
        ),
        (
            "hn",
            json!({"dnsPolicy": "ClusterFirstWithHostNet", "hostNetwork": true}),
            "search default.svc.example.local svc.example.local example.local lan.example\nnameserver 10.96.0.10\noptions ndots:5\n",
        ),
        (
            "hncf",
            json!({"dnsPolicy": "ClusterFirst", "hostNetwork": true}),
            "search lan.example\nnameserver 192.0.2.53\noptions edns0\n",
        ),
    ];
    for (name, spec, _) in &cases {
        node.write_manifest(
            &format!("{}.json", name),
            &pod(
                name,
                "cat /etc/resolv.conf; echo END; sleep 3600",
                spec.clone(),
                json!({}),
            ),
        );
    }
    for (name, _, want) in &cases {
        let out = node.wait_log(&node.full_name(name), "c", "END");
        assert_eq!(
            out.trim_end_matches("END\n"),
            *want,
            "dnsPolicy case {}",
            name
        );
    }
}

#[test]
fn cluster_mode_zero_config_uses_the_nodes_pod_cidr() {
    use support::apiserver::ApiServer;
    // The double, the daemon and this test's API calls all in the node namespace; the
    // zero-config network writes its conflist to the node's own --cni-conf-dir (run_args).
    let (mut node, api) = ApiServer::start_with_node_in_netns(
        &[],
        &[
            "--node-status-update-frequency",
            "1s",
            "--cni-bin-dir",
            PLUGINS,
        ],
    );
    node.start_daemon();
    let name = node.node_name.clone();
    poll_until(
        WAIT,
        "the Node to be registered",
        || api.get(&format!("/api/v1/nodes/{}", name)).ok(),
        || node.daemon_log_tail(30),
    );
    // What the controller manager's IPAM does.
    api.patch(
        &format!("/api/v1/nodes/{}", name),
        "application/merge-patch+json",
        &json!({"spec": {"podCIDR": "10.66.0.0/24", "podCIDRs": ["10.66.0.0/24"]}}),
    )
    .expect("patching the Node's podCIDR");
    api.ensure_namespace("default");
    api.create_pod(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}]}
    }));
    let p = poll_until(
        WAIT,
        "the API pod's podIP from the Node's podCIDR",
        || {
            api.pod("default", "p").filter(|p| {
                p["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| ip.starts_with("10.66.0."))
            })
        },
        || format!("{}\n{}", node.daemon_log_tail(30), api.log_tail(20)),
    );
    assert_eq!(p["status"]["podIPs"][0]["ip"], p["status"]["podIP"]);
    assert!(node.dir.join("net.d/10-tinylet.conflist").is_file());
    api.assert_no_violations();
}

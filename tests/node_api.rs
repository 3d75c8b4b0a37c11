//! The node API (the kubelet's HTTPS port) against a real `tinylet run` with runc, called with
//! curl (OpenSSL, as Go clients and kubectl would meet it): client certificates, bearer tokens
//! reviewed by the API-server double, SubjectAccessReview denials, the serving certificate
//! (self-signed, or issued for a kubernetes.io/kubelet-serving CSR), /pods and /containerLogs.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::apiserver::{openssl, ApiServer};
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// curl with `args` and `url`; returns (HTTP status, 0 when no response; body).
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A CA and a client certificate it signs for `/O=<org>/CN=<cn>`, made with openssl in `dir`;
/// returns (ca.crt, client.crt, client.key).
fn client_ca(dir: &Path, name: &str, subject: &str) -> (String, String, String) {
    let p = |f: &str| dir.join(format!("{name}-{f}")).display().to_string();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}-ca"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        b"",
    );
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("client.key"),
            "-out",
            &p("client.csr"),
            "-subj",
            subject,
        ],
        b"",
    );
    std::fs::write(p("ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &p("client.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-days",
            "1",
            "-extfile",
            &p("ext"),
            "-out",
            &p("client.crt"),
        ],
        b"",
    );
    (p("ca.crt"), p("client.crt"), p("client.key"))
}

fn status_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a Status: {body}"))
}

#[test]
fn standalone_client_certificates_pods_and_container_logs() {
    let mut node = Node::create();
    let port = free_port();
    let (ca, crt, key) = client_ca(&node.dir, "good", "/O=ops/CN=carol");
    let (_, bad_crt, bad_key) = client_ca(&node.dir, "other", "/O=ops/CN=carol");
    node.extra_run_args.extend(
        [
            "--port",
            &port.to_string(),
            "--address",
            "127.0.0.1",
            "--client-ca-file",
            &ca,
        ]
        .map(String::from),
    );
    node.import_image();
    node.start_daemon();
    node.write_manifest(
        "talker.yaml",
        &pod_manifest("talker")
            .container(
                "c",
                "echo start $(date +%s%N); for i in 1 2 3 4 5; do echo line $i; done; sleep 1; exit 1",
            )
            .yaml(),
    );
    node.write_manifest(
        "ticker.yaml",
        &pod_manifest("ticker")
            .restart_policy("Never")
            .container(
                "c",
                "sleep 1; for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done",
            )
            .yaml(),
    );
    // The serving certificate is the self-signed pair the kubelet would write.
    let served = node.root.join("pki/kubelet.crt").display().to_string();
    let base = format!("https://127.0.0.1:{port}");
    let cert_args = ["--cacert", &served, "--cert", &crt, "--key", &key];
    let talker = node.full_name("talker");
    let ticker = node.full_name("ticker");

    // The API comes up just after the daemon's start line (the certificate is made first).
    poll_until(
        WAIT,
        "the node API's /healthz",
        || (curl(&cert_args, &format!("{base}/healthz")) == (200, "ok".into())).then_some(()),
        || node.daemon_log_tail(20),
    );

    // Following a log streams it until the container exits.
    node.wait_running("ticker");
    let started = Instant::now();
    let (code, body) = curl(
        &cert_args,
        &format!("{base}/containerLogs/default/{ticker}/c?follow=true"),
    );
    assert_eq!(code, 200, "{body}");
    let want: String = (1..=6).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(body, want);
    assert!(started.elapsed() < Duration::from_secs(15));

    let (code, body) = curl(&cert_args, &format!("{base}/pods"));
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert!(names.contains(&talker.as_str()), "{names:?}");

    // No credentials: 401 with a Status; a certificate from another CA: no handshake.
    let (code, body) = curl(&["--cacert", &served], &format!("{base}/pods"));
    assert_eq!(code, 401);
    assert_eq!(status_of(&body)["reason"], "Unauthorized");
    let (code, _) = curl(
        &["--cacert", &served, "--cert", &bad_crt, "--key", &bad_key],
        &format!("{base}/pods"),
    );
    assert_eq!(code, 0, "a certificate from an unknown CA must not get in");

    // The stats collector's bodies: the Summary API JSON (this node's name in it) and
    // Prometheus text with the kubelet's resource metrics.
    let (code, body) = curl(&cert_args, &format!("{base}/stats/summary"));
    assert_eq!(code, 200, "{body}");
    let summary: serde_json::Value = serde_json::from_str(&body).expect("summary JSON");
    assert_eq!(
        summary["node"]["nodeName"],
        node.node_name.as_str(),
        "{body}"
    );
    let (code, body) = curl(&cert_args, &format!("{base}/metrics/resource"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("node_memory_working_set_bytes"), "{body}");

    // Log options, on the finished ticker's log (it no longer changes).
    let logs = |pod: &str, query: &str| {
        curl(
            &cert_args,
            &format!("{base}/containerLogs/default/{pod}/c{query}"),
        )
    };
    assert_eq!(
        logs(&ticker, "?tailLines=2"),
        (200, "tick 5\ntick 6\n".into())
    );
    assert_eq!(logs(&ticker, "?limitBytes=4"), (200, "tick".into()));
    let (code, stamped) = logs(&ticker, "?timestamps=true&tailLines=1");
    assert_eq!(code, 200);
    let (ts, text) = stamped.split_once(' ').unwrap();
    assert!(
        ts.starts_with("20") && ts.ends_with('Z') && ts.len() == 30,
        "{stamped}"
    );
    assert_eq!(text, "tick 6\n");
    assert_eq!(logs(&ticker, "?sinceSeconds=3600").1.lines().count(), 6);
    assert_eq!(
        logs(&ticker, "?sinceTime=2999-01-01T00:00:00Z"),
        (200, String::new())
    );
    assert_eq!(logs(&ticker, "?tailLines=-1").0, 400);
    assert_eq!(
        logs(&ticker, "?sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z").0,
        400
    );
    assert_eq!(logs(&ticker, "?previous=true").0, 400, "it never restarted");
    // The CLI reads the same log from disk, with kubectl's flag names.
    let out = node.logs_output("ticker", Some("c"), &["--tail", "2", "--limit-bytes", "9"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tick 5\nti");
    assert_eq!(logs("nosuchpod", "").0, 404);
    assert_eq!(
        logs(&ticker, "").0,
        200,
        "the exact name works; a static pod's short name does not"
    );
    assert_eq!(logs("ticker", "").0, 404);
    // The talker exits and is restarted: the previous instance's log is still there.
    node.wait_pod("talker", "a restart", |p| {
        cstatus(p, "c")["restartCount"].as_u64() >= Some(1)
    });
    let (code, previous) = logs(&talker, "?previous=true");
    assert_eq!(code, 200, "{previous}");
    assert!(
        previous.starts_with("start ") && previous.contains("line 5"),
        "{previous}"
    );
    let current = poll_until(
        WAIT,
        "a new instance's log",
        || Some(logs(&talker, "").1).filter(|l| l.starts_with("start ")),
        || node.daemon_log_tail(20),
    );
    assert_ne!(
        current.lines().next(),
        previous.lines().next(),
        "current and previous are different instances"
    );
    // Nothing but GET.
    let (code, _) = curl(
        &[&cert_args[..], &["-X", "POST"]].concat(),
        &format!("{base}/pods"),
    );
    assert_eq!(code, 405);
}

#[test]
fn cluster_tokens_access_reviews_and_a_serving_certificate_from_a_csr() {
    let api = ApiServer::start();
    let port = free_port();
    let node = api.join_node(
        None,
        &[
            "--port",
            &port.to_string(),
            "--address",
            "127.0.0.1",
            "--rotate-server-certificates",
        ],
    );
    let diag = || {
        format!(
            "--- tinylet:\n{}\n--- apiserver:\n{}",
            node.daemon_log_tail(30),
            api.log_tail(20)
        )
    };

    // The serving CSR waits for an admin's approval, as in a real cluster.
    let csr = poll_until(
        WAIT,
        "a kubelet-serving CSR",
        || {
            api.get("/apis/certificates.k8s.io/v1/certificatesigningrequests")
                .ok()?["items"]
                .as_array()?
                .iter()
                .find(|c| c["spec"]["signerName"] == "kubernetes.io/kubelet-serving")
                .cloned()
        },
        diag,
    );
    assert_eq!(
        csr["spec"]["usages"],
        json!(["digital signature", "server auth"])
    );
    assert_eq!(
        csr["spec"]["username"],
        format!("system:node:{}", node.node_name)
    );
    api.approve_csr(csr["metadata"]["name"].as_str().unwrap());

    let ca = api.ca_path().display().to_string();
    let resolve = format!("{}:{port}:127.0.0.1", node.node_name);
    let base = format!("https://{}:{port}", node.node_name);
    let as_token = |t: &str| {
        vec![
            "--cacert".to_string(),
            ca.clone(),
            "--resolve".into(),
            resolve.clone(),
            "-H".into(),
            format!("Authorization: Bearer {t}"),
        ]
    };
    let get = |args: &[String], path: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs, &format!("{base}{path}"))
    };
    // The server serves once the certificate is signed (verified against the cluster CA, for
    // the node's name).
    poll_until(
        WAIT,
        "the node API serving with the issued certificate",
        || (get(&as_token(api.admin_token()), "/healthz").0 == 200).then_some(()),
        diag,
    );
    assert!(node.root.join("pki/kubelet-server-current.pem").exists());

    // A pod that reads a secret, by env and by volume.
    api.post(
        "/api/v1/namespaces/default/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                "data": {"PASSWORD": support::registry::base64(b"hunter2-do-not-leak")}}),
    )
    .expect("creating the secret");
    api.create_pod(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "holder", "namespace": "default"},
        "spec": {
            "nodeName": node.node_name,
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "s", "secret": {"secretName": "creds"}}],
            "containers": [{
                "name": "c", "image": IMAGE,
                "command": ["sh", "-c", "echo has $PW; cat /s/PASSWORD; echo; trap 'exit 0' TERM; sleep 3600 & wait"],
                "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}}],
                "volumeMounts": [{"name": "s", "mountPath": "/s"}],
            }],
        },
    }));
    poll_until(
        WAIT,
        "the pod Running",
        || (api.pod("default", "holder")?["status"]["phase"] == "Running").then_some(()),
        diag,
    );

    api.set_token_users(&json!({
        "alice-token": {"username": "alice", "uid": "a-1", "groups": ["devs"]},
        "bob-token": {"username": "bob"},
    }));
    api.set_kubelet_access(&json!([
        {"user": "alice", "verb": "get", "subresource": "proxy"},
        {"user": "bob", "verb": "get", "subresource": "stats"},
    ]));
    let alice = as_token("alice-token");
    let bob = as_token("bob-token");

    let (code, body) = get(&alice, "/pods");
    assert_eq!(code, 200, "{body}\n{}", diag());
    assert!(body.contains("\"holder\""), "{body}");
    assert!(!body.contains("hunter2"), "a secret value in /pods: {body}");
    assert!(!body.contains(&support::registry::base64(b"hunter2-do-not-leak")));
    let (code, body) = get(&alice, "/containerLogs/default/holder/c");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("has "), "{body}");

    // Reviews are cached: the same token and request again cost the API server nothing.
    let reviews = |kind: &str| {
        api.requests()
            .iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with(kind)))
            .inspect(|r| assert_eq!(r["user"], format!("system:node:{}", node.node_name)))
            .count()
    };
    let (tr, sar) = (reviews("/tokenreviews"), reviews("/subjectaccessreviews"));
    assert!(tr >= 1 && sar >= 1);
    assert_eq!(get(&alice, "/pods").0, 200);
    assert_eq!(
        (reviews("/tokenreviews"), reviews("/subjectaccessreviews")),
        (tr, sar)
    );

    // bob may read stats only: /pods is a 403 with the kubelet's message, in a Status.
    let (code, body) = get(&bob, "/pods");
    assert_eq!(code, 403, "{body}");
    let st = status_of(&body);
    assert_eq!(st["reason"], "Forbidden");
    assert_eq!(
        st["message"],
        "Forbidden (user=bob, verb=get, resource=nodes, subresource(s)=[pods proxy])"
    );
    assert_eq!(get(&bob, "/stats/summary").0, 200, "bob may read stats");
    assert_eq!(get(&alice, "/stats/summary").0, 403);

    // Unknown tokens and no credentials: 401 (anonymous access is off).
    let (code, body) = get(&as_token("made-up"), "/pods");
    assert_eq!(code, 401);
    assert_eq!(status_of(&body)["code"], 401);
    let bare: Vec<String> = alice[..4].to_vec();
    assert_eq!(get(&bare, "/pods").0, 401);
    // The admin (system:masters) may do anything.
    assert_eq!(get(&as_token(api.admin_token()), "/pods").0, 200);
    api.assert_no_violations();
}

#[test]
fn certificate_files_and_anonymous_access() {
    let mut node = Node::create();
    let port = free_port();
    // A serving certificate from files, as an operator's own PKI would issue it.
    let (ca, _, key) = client_ca(&node.dir, "serving", "/CN=edge-node");
    let dir = node.dir.clone();
    let d = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        d("san.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &d("serving-client.csr"),
            "-CA",
            &ca,
            "-CAkey",
            &d("serving-ca.key"),
            "-days",
            "1",
            "-extfile",
            &d("san.ext"),
            "-out",
            &d("srv.crt"),
        ],
        b"",
    );
    node.extra_run_args.extend(
        [
            "--port",
            &port.to_string(),
            "--address",
            "127.0.0.1",
            "--tls-cert-file",
            &d("srv.crt"),
            "--tls-private-key-file",
            &key,
            "--anonymous-auth",
        ]
        .map(String::from),
    );
    node.start_daemon();
    let base = format!("https://127.0.0.1:{port}");
    // Anonymous access on and AlwaysAllow (standalone): no credentials needed.
    poll_until(
        WAIT,
        "the node API's /healthz over the given certificate",
        || {
            (curl(&["--cacert", &ca], &format!("{base}/healthz")) == (200, "ok".into()))
                .then_some(())
        },
        || node.daemon_log_tail(20),
    );
    let (code, body) = curl(&["--cacert", &ca], &format!("{base}/pods"));
    assert_eq!(code, 200, "{body}");
    assert!(
        !node.root.join("pki/kubelet.crt").exists(),
        "no self-signed certificate when files are given"
    );
    // A certificate and a key that do not belong together stop the agent with the reason.
    node.kill9_daemon();
    node.extra_run_args.push("--tls-private-key-file".into());
    node.extra_run_args.push(d("other-client.key"));
    let (_, _, _) = client_ca(&node.dir, "other", "/CN=x");
    let out = node.tinylet(
        &node
            .run_args()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not match"), "{err}");
}

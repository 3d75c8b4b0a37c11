//! The API-server double (tests/support/apiserver) has the semantics tinylet's cluster mode
//! relies on: defaults and admission, watches, authentication and node restrictions, patches,
//! optimistic concurrency, graceful deletion, CSR signing, restarts and schema checks.

mod support;

use serde_json::{json, Value};
use support::apiserver::{make_csr, openssl, ApiServer, KubeconfigUser, WatchEnd};
use support::registry::base64;

const SMP: &str = "application/strategic-merge-patch+json";
const PODS: &str = "/api/v1/namespaces/default/pods";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

fn pod(name: &str, node: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("a string resourceVersion")
        .parse()
        .expect("a numeric resourceVersion")
}

fn node_status_condition(cond: &str) -> Value {
    json!({"type": cond, "status": "False", "reason": "Test", "message": "test",
           "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

#[test]
fn created_pods_get_the_api_server_defaults_and_the_service_account_volume() {
    let api = ApiServer::start();
    let mut spec = pod("web", Some("n1"));
    spec["spec"]["containers"] = json!([
        {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
         "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
        {"name": "b", "image": "reg.example:5000/x/y:1.2"}]);
    let p = api.create_pod(&spec);

    let (meta, s) = (&p["metadata"], &p["spec"]);
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["generation"], 1);
    assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
    ] {
        assert_eq!(s[k], v, "spec.{k}");
    }
    assert_eq!(s["tolerations"].as_array().unwrap().len(), 2);
    assert_eq!(s["tolerations"][0]["tolerationSeconds"], 300);
    let a = &s["containers"][0];
    assert_eq!(a["imagePullPolicy"], "Always", "no tag means :latest");
    assert_eq!(s["containers"][1]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(a["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(a["terminationMessagePolicy"], "File");
    assert_eq!(a["ports"][0]["protocol"], "TCP");
    assert_eq!(a["resources"]["requests"], a["resources"]["limits"]);
    assert_eq!(s["containers"][1]["resources"], json!({}));

    let vol = &s["volumes"][0];
    let vname = vol["name"].as_str().unwrap();
    assert!(
        vname.starts_with("kube-api-access-") && vname.len() == 21,
        "{vname}"
    );
    assert_eq!(vol["projected"]["defaultMode"], 420);
    let sources = &vol["projected"]["sources"];
    assert_eq!(
        sources[0],
        json!({"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}})
    );
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    for c in s["containers"].as_array().unwrap() {
        assert_eq!(
            c["volumeMounts"][0],
            json!({"name": vname, "readOnly": true,
                   "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
        );
    }
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(p["status"]["qosClass"], "Burstable");
    assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");

    // The CA the projected volume names is there, in every namespace.
    let cm = api
        .get("/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt")
        .unwrap();
    assert_eq!(
        cm["data"]["ca.crt"].as_str().unwrap(),
        std::fs::read_to_string(api.ca_path()).unwrap()
    );

    // Opting out of the token, QoS classes, and what makes a pod invalid.
    let mut quiet = pod("quiet", None);
    quiet["spec"]["automountServiceAccountToken"] = json!(false);
    let quiet = api.create_pod(&quiet);
    assert!(quiet["spec"].get("volumes").is_none());
    assert_eq!(quiet["status"]["qosClass"], "BestEffort");
    assert!(quiet["status"].get("conditions").is_none(), "not bound");
    let mut g = pod("guaranteed", None);
    g["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
    assert_eq!(api.create_pod(&g)["status"]["qosClass"], "Guaranteed");
    let (code, status) = api
        .post(
            PODS,
            &json!({"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "x"}]}}),
        )
        .unwrap_err();
    assert_eq!((code, &status["reason"]), (422, &json!("Invalid")));
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.containers[0].image"
    );
    assert_eq!(api.post(PODS, &pod("web", None)).unwrap_err().0, 409);
    assert_eq!(
        api.post("/api/v1/namespaces/nowhere/pods", &pod("x", None))
            .unwrap_err()
            .0,
        404
    );

    // Lists: across namespaces and by field.
    let list = api
        .get("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1")
        .unwrap();
    assert_eq!(list["kind"], "PodList");
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("web")]);
    assert!(rv(&list) >= rv(&p));
}

#[test]
fn watches_stream_events_and_bookmarks_and_expire_compacted_versions() {
    let api = ApiServer::start_with(&["--bookmark-interval=0.2"]);
    let before = api.create_pod(&pod("early", Some("n1")));
    let mut w = api.watch("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&allowWatchBookmarks=true");
    // No resourceVersion: the current state first.
    let ev = w.next_event().unwrap();
    assert_eq!(
        (&ev["type"], &ev["object"]["metadata"]["name"]),
        (&json!("ADDED"), &json!("early"))
    );
    assert_eq!(ev["object"]["kind"], "Pod");

    api.create_pod(&pod("other-node", Some("n2")));
    let mine = api.create_pod(&pod("late", Some("n1")));
    let ev = w.wait_for("ADDED late", |e| e["type"] != "BOOKMARK");
    assert_eq!(
        ev["object"]["metadata"]["name"], "late",
        "n2's pod is filtered out"
    );
    let bm = w.wait_for("a bookmark", |e| e["type"] == "BOOKMARK");
    assert_eq!(bm["object"]["kind"], "Pod");
    assert!(rv(&bm["object"]) >= rv(&mine));

    // From a resourceVersion: only what came after it.
    let mut from = api.watch(&format!(
        "/api/v1/pods?resourceVersion={}&timeoutSeconds=1",
        rv(&before)
    ));
    let names: Vec<String> = std::iter::from_fn(|| from.next_event().ok())
        .map(|e| {
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        ["other-node", "late"],
        "then a clean end at timeoutSeconds"
    );

    // After compaction an old resourceVersion is gone: an ERROR event, then the end.
    api.compact();
    let mut old = api.watch(&format!("/api/v1/pods?resourceVersion={}", rv(&before)));
    let ev = old.next_event().unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(ev["object"]["message"]
        .as_str()
        .unwrap()
        .starts_with(&format!("too old resource version: {}", rv(&before))));
    assert_eq!(old.next_event(), Err(WatchEnd::Clean));

    // The open watch still works, and close-watches breaks it without a clean end.
    api.close_watches();
    loop {
        match w.next_event() {
            Ok(e) => assert_eq!(e["type"], "BOOKMARK"),
            Err(end) => {
                assert!(matches!(end, WatchEnd::Broken(_)), "{end:?}");
                break;
            }
        }
    }
}

#[test]
fn nodes_authenticate_with_client_certificates_and_write_only_their_own_objects() {
    let api = ApiServer::start();
    let n1 = api.client(&KubeconfigUser::NodeCert("n1".into()));
    let anonymous = api.client(&KubeconfigUser::Token(String::new()));
    assert_eq!(anonymous.raw("GET", "/api/v1/nodes", None, None).0, 401);
    let (code, status) = api
        .client(&KubeconfigUser::Token("wrong".into()))
        .get("/api/v1/nodes")
        .unwrap_err();
    assert_eq!((code, status["kind"].as_str()), (401, Some("Status")));

    let node = n1
        .post(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                    "status": {"capacity": {"cpu": "2", "memory": "1Gi", "pods": "110"}}}),
        )
        .unwrap();
    assert_eq!(
        node["status"]["allocatable"], node["status"]["capacity"],
        "defaulted"
    );
    api.post("/api/v1/nodes", &json!({"metadata": {"name": "n2"}}))
        .unwrap();
    let status_patch = json!({"status": {"conditions": [node_status_condition("Ready")]}});
    n1.patch("/api/v1/nodes/n1/status", SMP, &status_patch)
        .unwrap();
    let (code, status) = n1
        .patch("/api/v1/nodes/n2/status", SMP, &status_patch)
        .unwrap_err();
    assert_eq!(code, 403, "{status}");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .contains("not allowed to modify node \"n2\""));

    let lease = |name: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
               "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}})
    };
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    n1.post(leases, &lease("n1")).unwrap();
    assert_eq!(n1.post(leases, &lease("n2")).unwrap_err().0, 403);

    // Pods: a node reads all, deletes and updates the status only of its own, and creates
    // only mirror pods.
    api.create_pod(&pod("on-n2", Some("n2")));
    assert!(n1.get("/api/v1/pods").is_ok());
    assert_eq!(
        n1.patch(
            &format!("{PODS}/on-n2/status"),
            SMP,
            &json!({"status": {"phase": "Running"}})
        )
        .unwrap_err()
        .0,
        403
    );
    assert_eq!(
        n1.delete(&format!("{PODS}/on-n2"), None).unwrap_err().0,
        403
    );
    assert_eq!(n1.post(PODS, &pod("plain", Some("n1"))).unwrap_err().0, 403);
    let mut mirror = pod("static-n1", Some("n1"));
    mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "hash"});
    let mirror = n1.post(PODS, &mirror).unwrap();
    assert!(
        mirror["spec"].get("volumes").is_none(),
        "no service-account volume"
    );
    api.assert_no_violations();
}

#[test]
fn strategic_merge_patch_follows_the_real_patch_strategies() {
    let api = ApiServer::start();
    let p = api.create_pod(&pod("p", Some("n1")));
    let status = format!("{PODS}/p/status");
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let cs = |ready: bool| {
        json!([{"name": "app", "ready": ready, "restartCount": 0, "image": "busybox:1.36",
                "imageID": "", "started": ready, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}])
    };
    let cond = |t: &str, s: &str| {
        json!({"type": t, "status": s, "lastProbeTime": null,
                                         "lastTransitionTime": "2026-01-01T00:00:00Z"})
    };
    let first = json!({"metadata": {"uid": uid}, "status": {
        "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
        "$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"}, {"type": "PodScheduled"}],
        "conditions": [cond("Initialized", "True"), cond("Ready", "False")],
        "containerStatuses": cs(false)}});
    let after = api.patch(&status, SMP, &first).unwrap();
    let types: Vec<_> = after["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Initialized", "Ready", "PodScheduled"],
        "merged by type, in $setElementOrder's order"
    );
    assert_eq!(after["status"]["qosClass"], "BestEffort", "kept");

    // Ready flips: one condition merged by type; containerStatuses is an atomic list in the
    // real API (no patch strategy), so the patch's list replaces it whole.
    let second =
        json!({"status": {"conditions": [cond("Ready", "True")], "containerStatuses": cs(true)}});
    let after2 = api.patch(&status, SMP, &second).unwrap();
    assert_eq!(after2["status"]["conditions"][1]["status"], "True");
    assert_eq!(after2["status"]["conditions"].as_array().unwrap().len(), 3);
    assert_eq!(after2["status"]["containerStatuses"], cs(true));
    assert!(rv(&after2) > rv(&after));

    // $patch: delete, null deletes a key, and a patch that changes nothing writes nothing.
    let third = json!({"status": {"conditions": [{"type": "Initialized", "$patch": "delete"}],
                                  "podIP": null}});
    let after3 = api.patch(&status, SMP, &third).unwrap();
    assert_eq!(after3["status"]["conditions"].as_array().unwrap().len(), 2);
    assert!(after3["status"].get("podIP").is_none());
    let same = api.patch(&status, SMP, &third).unwrap();
    assert_eq!(rv(&same), rv(&after3), "a no-op patch is not a write");

    // The status subresource keeps only status; the main resource ignores status.
    let labels = api
        .patch(
            &status,
            SMP,
            &json!({"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Failed"}}),
        )
        .unwrap();
    assert!(labels["metadata"].get("labels").is_none());
    assert_eq!(labels["status"]["phase"], "Failed");

    // Preconditions: a foreign uid, a stale resourceVersion.
    let (code, st) = api
        .patch(
            &status,
            SMP,
            &json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000000"}}),
        )
        .unwrap_err();
    assert_eq!(code, 409);
    assert_eq!(
        st["message"],
        format!("Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000, UID in object meta: {uid}")
    );
    let stale = json!({"metadata": {"resourceVersion": rv(&after).to_string()}, "status": {"phase": "Running"}});
    assert_eq!(api.patch(&status, SMP, &stale).unwrap_err().0, 409);

    // Merge patch and JSON patch.
    let m = api
        .patch(
            &format!("{PODS}/p"),
            "application/merge-patch+json",
            &json!({"metadata": {"annotations": {"x": "1"}}}),
        )
        .unwrap();
    assert_eq!(m["metadata"]["annotations"]["x"], "1");
    let j = api
        .patch(
            &format!("{PODS}/p"),
            "application/json-patch+json",
            &json!([{"op": "test", "path": "/metadata/annotations/x", "value": "1"},
                {"op": "replace", "path": "/metadata/annotations/x", "value": "2"}]),
        )
        .unwrap();
    assert_eq!(j["metadata"]["annotations"]["x"], "2");
    assert_eq!(
        api.patch(
            &format!("{PODS}/p"),
            "application/json-patch+json",
            &json!([{"op": "test", "path": "/metadata/annotations/x", "value": "1"}])
        )
        .unwrap_err()
        .0,
        422
    );
    // The pod spec is immutable but for a few fields.
    let (code, _) = api
        .patch(
            &format!("{PODS}/p"),
            SMP,
            &json!({"spec": {"restartPolicy": "Never"}}),
        )
        .unwrap_err();
    assert_eq!(code, 422);
}

#[test]
fn lease_updates_with_a_stale_resource_version_conflict() {
    let api = ApiServer::start();
    let n1 = api.client(&KubeconfigUser::NodeCert("n1".into()));
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let lease = n1
        .post(
            path,
            &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
        "renewTime": "2026-01-01T00:00:00.000000Z"}}),
        )
        .unwrap();
    let mut renewed = lease.clone();
    renewed["spec"]["renewTime"] = json!("2026-01-01T00:00:10.000000Z");
    let newer = n1.put(&format!("{path}/n1"), &renewed).unwrap();
    assert!(rv(&newer) > rv(&lease));
    let (code, status) = n1.put(&format!("{path}/n1"), &renewed).unwrap_err();
    assert_eq!((code, &status["reason"]), (409, &json!("Conflict")));
    assert_eq!(
        status["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"n1\": the object has been \
         modified; please apply your changes to the latest version and try again"
    );
    api.assert_no_violations();
}

#[test]
fn pods_bound_to_a_node_are_deleted_gracefully() {
    let api = ApiServer::start();
    let p = api.create_pod(&pod("p", Some("n1")));
    let mut w = api.watch(&format!(
        "/api/v1/namespaces/default/pods?resourceVersion={}",
        rv(&p)
    ));
    let path = format!("{PODS}/p");
    let wrong_uid = json!({"preconditions": {"uid": "nope"}});
    let (code, st) = api.delete(&path, Some(&wrong_uid)).unwrap_err();
    assert_eq!(code, 409);
    assert!(st["message"]
        .as_str()
        .unwrap()
        .starts_with("Precondition failed: UID in precondition: nope"));

    let terminating = api.delete(&path, None).unwrap();
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
    let ev = w.next_event().unwrap();
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["metadata"]["deletionGracePeriodSeconds"], 30);
    // A longer grace period changes nothing; a shorter one shortens it.
    let again = api
        .delete(&path, Some(&json!({"gracePeriodSeconds": 60})))
        .unwrap();
    assert_eq!(rv(&again), rv(&terminating));
    let shorter = api
        .delete(&path, Some(&json!({"gracePeriodSeconds": 10})))
        .unwrap();
    assert_eq!(shorter["metadata"]["deletionGracePeriodSeconds"], 10);
    assert_eq!(w.next_event().unwrap()["type"], "MODIFIED");

    // The kubelet's final delete: grace 0, with the uid as precondition.
    let uid = p["metadata"]["uid"].clone();
    api.delete(
        &path,
        Some(&json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})),
    )
    .unwrap();
    let ev = w.next_event().unwrap();
    assert_eq!(
        (&ev["type"], &ev["object"]["metadata"]["name"]),
        (&json!("DELETED"), &json!("p"))
    );
    assert!(api.pod("default", "p").is_none());

    // An unbound pod goes at once.
    api.create_pod(&pod("unbound", None));
    api.delete(&format!("{PODS}/unbound"), None).unwrap();
    assert!(api.pod("default", "unbound").is_none());
}

#[test]
fn csrs_from_a_bootstrap_token_are_signed_once_approved() {
    let api = ApiServer::start();
    let boot = api.client(&KubeconfigUser::BootstrapToken);
    assert_eq!(boot.get("/api/v1/nodes").unwrap_err().0, 403);
    let (csr_pem, key) = make_csr(&api.dir, "n7", "/O=system:nodes/CN=system:node:n7");
    let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {"request": base64(csr_pem.as_bytes()), "expirationSeconds": 1200,
                 "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "client auth"]}});
    let created = boot.post(CSRS, &csr).unwrap();
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(created["spec"]["username"], "system:bootstrap:abcdef");
    assert_eq!(
        created["spec"]["groups"],
        json!(["system:bootstrappers", "system:authenticated"])
    );
    let mut w = boot.watch(&format!(
        "{CSRS}?fieldSelector=metadata.name%3D{name}&resourceVersion={}",
        rv(&created)
    ));
    assert_eq!(
        boot.put(&format!("{CSRS}/{name}/approval"), &created)
            .unwrap_err()
            .0,
        403
    );
    api.approve_csr(&name);
    let signed = w.wait_for("the certificate", |e| {
        e["object"]["status"]["certificate"].is_string()
    });
    let cert = String::from_utf8(decode_base64(
        signed["object"]["status"]["certificate"].as_str().unwrap(),
    ))
    .unwrap();
    let text = openssl(
        &[
            "x509", "-noout", "-subject", "-enddate", "-nameopt", "RFC2253",
        ],
        cert.as_bytes(),
    );
    assert!(
        text.contains("subject=CN=system:node:n7,O=system:nodes"),
        "{text}"
    );
    openssl(
        &["verify", "-CAfile", &api.ca_path().display().to_string()],
        cert.as_bytes(),
    );
    // expirationSeconds (1200) is under --cert-duration (3600): the certificate ends in 20 min.
    let end = openssl(&["x509", "-noout", "-checkend", "1140"], cert.as_bytes());
    assert!(end.contains("will not expire"));
    assert!(std::process::Command::new("openssl")
        .args(["x509", "-noout", "-checkend", "1260", "-in"])
        .arg(write(&api, "n7.crt", &cert))
        .output()
        .map(|o| !o.status.success())
        .unwrap());
    // The signed certificate is the node's identity.
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(api.ca_path())
        .arg("--cert")
        .arg(write(&api, "n7.crt", &cert))
        .arg("--key")
        .arg(&key)
        .arg(format!("{}/api/v1/nodes/n7", api.url()))
        .output()
        .unwrap();
    let body: Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(body["code"], 404, "authenticated as a node: {body}");

    // A malformed request is 422.
    let mut bad = csr.clone();
    bad["spec"]["request"] = json!(base64(
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    ));
    assert_eq!(boot.post(CSRS, &bad).unwrap_err().0, 422);
    api.assert_no_violations();
}

#[test]
fn auto_approved_node_csrs_and_service_account_tokens() {
    let api = ApiServer::start_with(&["--auto-approve-csr", "--cert-duration=600"]);
    let boot = api.client(&KubeconfigUser::BootstrapToken);
    let (csr_pem, _) = make_csr(&api.dir, "n8", "/O=system:nodes/CN=system:node:n8");
    let created = boot
        .post(
            CSRS,
            &json!({"apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest", "metadata": {"name": "csr-n8"},
        "spec": {"request": base64(csr_pem.as_bytes()),
                 "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "key encipherment", "client auth"]}}),
        )
        .unwrap();
    let csr = boot.get(&format!("{CSRS}/csr-n8")).unwrap();
    assert!(rv(&csr) > rv(&created));
    assert_eq!(csr["status"]["conditions"][0]["reason"], "AutoApproved");
    let cert = decode_base64(csr["status"]["certificate"].as_str().unwrap());
    openssl(&["x509", "-noout", "-checkend", "500"], &cert);

    // A node asks for its pod's token; the token is the service account's, read-only, and dies
    // with the pod.
    let p = api.create_pod(&pod("p", Some("n1")));
    let n1 = api.client(&KubeconfigUser::NodeCert("n1".into()));
    let tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3607,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p",
                                    "uid": p["metadata"]["uid"]}}});
    let sa_token = "/api/v1/namespaces/default/serviceaccounts/default/token";
    let out = n1.post(sa_token, &tr).unwrap();
    let token = out["status"]["token"].as_str().unwrap().to_string();
    assert!(out["status"]["expirationTimestamp"].is_string());
    let sa = api.client(&KubeconfigUser::Token(token));
    assert!(sa.get(PODS).is_ok());
    assert_eq!(sa.post(PODS, &pod("x", None)).unwrap_err().0, 403);
    let mut short = tr.clone();
    short["spec"]["expirationSeconds"] = json!(60);
    assert_eq!(n1.post(sa_token, &short).unwrap_err().0, 422);
    let n2 = api.client(&KubeconfigUser::NodeCert("n2".into()));
    assert_eq!(n2.post(sa_token, &tr).unwrap_err().0, 403);
    api.delete(
        &format!("{PODS}/p"),
        Some(&json!({"gracePeriodSeconds": 0})),
    )
    .unwrap();
    assert_eq!(sa.get(PODS).unwrap_err().0, 401);
    api.assert_no_violations();
}

#[test]
fn a_restart_keeps_objects_and_the_resource_version_but_not_the_watch_history() {
    let mut api = ApiServer::start();
    let first = api.create_pod(&pod("first", None));
    let p = api.create_pod(&pod("survivor", Some("n1")));
    let port = api.port();
    api.restart();
    assert_eq!(api.port(), port);
    let back = api.pod("default", "survivor").expect("the pod survived");
    assert_eq!(back, p);
    let next = api.create_pod(&pod("after", None));
    assert!(rv(&next) > rv(&p));
    // Watching from the last version before the restart is fine, from an older one is not.
    let mut w = api.watch(&format!("{PODS}?resourceVersion={}", rv(&p)));
    assert_eq!(
        w.next_event().unwrap()["object"]["metadata"]["name"],
        "after"
    );
    let mut w = api.watch(&format!("{PODS}?resourceVersion={}", rv(&first)));
    assert_eq!(w.next_event().unwrap()["object"]["code"], 410);

    // Outages: injected failures hit only the matching requests, then stop.
    api.fail_next(503, 2, "/api/v1/nodes");
    assert_eq!(api.get("/api/v1/nodes").unwrap_err().0, 503);
    assert!(api.get(PODS).is_ok());
    assert_eq!(api.get("/api/v1/nodes").unwrap_err().0, 503);
    assert!(api.get("/api/v1/nodes").is_ok());
    api.stop();
    assert!(api.get(PODS).is_err());
    api.restart();
    assert!(api.get(PODS).is_ok());
}

#[test]
fn schema_violations_of_clients_are_recorded() {
    let api = ApiServer::start();
    let n1 = api.client(&KubeconfigUser::NodeCert("n1".into()));
    api.clear_requests();
    // The real server drops unknown fields with a warning; a test must still notice.
    n1.post(
        "/api/v1/nodes",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                "spec": {"unschedulable": false, "bogus": true}}),
    )
    .unwrap();
    n1.patch(
        "/api/v1/nodes/n1/status",
        SMP,
        &json!({"status": {"conditions": [{"type": "Ready"}]}}),
    )
    .unwrap();
    let v = api.violations();
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0]["user"], "system:node:n1");
    assert!(
        v[0]["message"]
            .as_str()
            .unwrap()
            .contains("spec: Additional properties are not allowed ('bogus' was unexpected)"),
        "{}",
        v[0]["message"]
    );
    assert!(v[1]["message"]
        .as_str()
        .unwrap()
        .contains("'status' is a required property"));
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1]["method"], "PATCH");
    assert_eq!(reqs[1]["contentType"], SMP);
    assert_eq!(reqs[1]["status"], 200);
    assert!(api
        .log_tail(10)
        .contains("VIOLATION PATCH /api/v1/nodes/n1/status"));
}

fn write(api: &ApiServer, name: &str, text: &str) -> std::path::PathBuf {
    let path = api.dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn decode_base64(text: &str) -> Vec<u8> {
    let pem = openssl(&["base64", "-d", "-A"], text.as_bytes());
    pem.into_bytes()
}

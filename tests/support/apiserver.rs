//! A Kubernetes API-server double for cluster-mode tests: `tests/support/apiserver/apiserver.py`
//! (python3, kubernetes_validate, openssl) on a loopback port, with its own test CA, real
//! authentication and node authorization, a global resourceVersion, watches with bookmarks and
//! 410 Expired, graceful pod deletion, strategic merge patch, CSR signing and TokenRequests.
//! Objects persist in its directory, so `restart` is an API-server restart (watch history lost).
//!
//! Clients: `ApiServer`'s own methods act as the admin; `client(&KubeconfigUser)` acts as a node,
//! a bootstrap token or any token; `write_kubeconfig` hands the same identities to tinylet.
//! Every object a non-admin client sends is checked against the 1.37 schema (strict); tests
//! should end with `assert_no_violations`.

use super::registry::base64;
use super::WAIT;
use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use ureq::Agent;

/// The bootstrap token every double accepts (`system:bootstrap:abcdef`).
pub const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// An API error: the HTTP status and the body (a `Status` object, or `null` if not JSON).
pub type ApiResult = Result<Value, (u16, Value)>;

/// Whom a client or kubeconfig authenticates as.
#[derive(Clone, Debug)]
pub enum KubeconfigUser {
    /// A client certificate for `system:node:<name>` in `system:nodes`, signed by the test CA.
    NodeCert(String),
    /// `BOOTSTRAP_TOKEN`: may only create and read CertificateSigningRequests.
    BootstrapToken,
    /// Any bearer token (the admin token, a service-account token, garbage).
    Token(String),
}

/// One running double; killed and its directory removed on drop.
pub struct ApiServer {
    pub dir: PathBuf,
    port: u16,
    opts: Vec<String>,
    admin_token: String,
    child: Option<Child>,
    admin: Client,
}

impl ApiServer {
    pub fn start() -> ApiServer {
        ApiServer::start_with(&[])
    }

    /// With extra flags, e.g. `--auto-approve-csr`, `--cert-duration=600`, `--bookmark-interval=0.2`.
    pub fn start_with(opts: &[&str]) -> ApiServer {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "apiserver-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the API server dir");
        let admin_token = format!("admin-{}", std::process::id());
        let mut server = ApiServer {
            admin: Client::unusable(),
            dir,
            port: 0,
            opts: opts.iter().map(|s| s.to_string()).collect(),
            admin_token,
            child: None,
        };
        server.spawn();
        server
    }

    /// Starts the process (port 0 the first time: it picks one and writes `<dir>/port`) and
    /// waits until `/readyz` answers.
    fn spawn(&mut self) {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/apiserver/apiserver.py");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .expect("opening the API server's stdout log");
        let _ = fs::remove_file(self.dir.join("port"));
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg("--dir")
            .arg(&self.dir)
            .arg(format!("--port={}", self.port))
            .arg(format!("--admin-token={}", self.admin_token))
            .arg(format!("--bootstrap-token={}", BOOTSTRAP_TOKEN))
            .args(&self.opts)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent. The double
        // dies with the test thread that started it, even when the test process is killed.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        self.child = Some(cmd.spawn().expect("spawning python3 apiserver.py"));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the API server exited ({status}):\n{}", self.log_tail(40));
            }
            if self.port == 0 {
                if let Ok(p) = fs::read_to_string(self.dir.join("port")) {
                    self.port = p.trim().parse().expect("a port number in <dir>/port");
                }
            }
            if self.port != 0 {
                self.admin = Client::new(self, &KubeconfigUser::Token(self.admin_token.clone()));
                if self.admin.raw("GET", "/readyz", None, None).0 == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the API server did not get ready within {:?}:\n{}",
                WAIT,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 and start again on the same port and directory: objects and the
    /// resourceVersion survive, the watch history does not (older versions get 410).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// kill -9; the port stays this server's (for `restart`).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test CA (PEM) that signed the serving certificate and every client certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A client certificate and key for `system:node:<node>` (made once per node), signed by the
    /// test CA with openssl; returns (cert path, key path).
    pub fn node_cert(&self, node: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.join("clients");
        let (crt, key) = (
            dir.join(format!("{node}.crt")),
            dir.join(format!("{node}.key")),
        );
        if !crt.exists() {
            fs::create_dir_all(&dir).unwrap();
            let (csr, _) = make_csr(
                &dir,
                &format!("{node}-client"),
                &format!("/O=system:nodes/CN=system:node:{node}"),
            );
            fs::rename(dir.join(format!("{node}-client.key")), &key).unwrap();
            let pki = self.dir.join("pki");
            let ext = dir.join("client.ext");
            fs::write(&ext, "extendedKeyUsage=clientAuth\n").unwrap();
            openssl(
                &[
                    "x509",
                    "-req",
                    "-CA",
                    &pki.join("ca.crt").display().to_string(),
                    "-CAkey",
                    &pki.join("ca.key").display().to_string(),
                    "-set_serial",
                    &unique_serial(),
                    "-days",
                    "1",
                    "-extfile",
                    &ext.display().to_string(),
                    "-out",
                    &crt.display().to_string(),
                ],
                csr.as_bytes(),
            );
        }
        (crt, key)
    }

    /// Writes a kubeconfig (one cluster, user and context) for `user`. `embed`: the CA and client
    /// certificate inline (`certificate-authority-data`, `client-*-data`), else as file paths.
    pub fn write_kubeconfig(&self, path: &Path, user: &KubeconfigUser, embed: bool) {
        let file_or_data = |key: &str, file: &Path| {
            if embed {
                let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                format!("{key}-data: {}", base64(&data))
            } else {
                format!("{key}: {:?}", file.display().to_string())
            }
        };
        let credentials = match user {
            KubeconfigUser::NodeCert(node) => {
                let (crt, key) = self.node_cert(node);
                format!(
                    "{}\n    {}",
                    file_or_data("client-certificate", &crt),
                    file_or_data("client-key", &key)
                )
            }
            KubeconfigUser::BootstrapToken => format!("token: {BOOTSTRAP_TOKEN:?}"),
            KubeconfigUser::Token(t) => format!("token: {t:?}"),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {:?}\n    {}\n\
             users:\n- name: test-user\n  user:\n    {}\ncontexts:\n- name: test\n  context:\n    \
             cluster: test\n    user: test-user\ncurrent-context: test\n",
            self.url(),
            file_or_data("certificate-authority", &self.ca_path()),
            credentials
        );
        fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A test node with a client certificate for its name and a kubeconfig naming this server
    /// (or `relay`, which can cut the connection), then `extra` flags; the image imported, the
    /// daemon not started yet (`start_daemon`).
    pub fn prepare_node(&self, relay: Option<&super::relay::Relay>, extra: &[&str]) -> super::Node {
        let mut node = super::Node::create();
        let kubeconfig = node.dir.join("kubeconfig");
        let user = KubeconfigUser::NodeCert(node.node_name.clone());
        self.write_kubeconfig(&kubeconfig, &user, relay.is_some());
        if let Some(relay) = relay {
            let text = fs::read_to_string(&kubeconfig)
                .expect("reading the kubeconfig")
                .replace(
                    &format!("127.0.0.1:{}", self.port()),
                    &format!("127.0.0.1:{}", relay.port()),
                );
            fs::write(&kubeconfig, text).expect("writing the kubeconfig");
        }
        node.extra_run_args.push("--kubeconfig".into());
        node.extra_run_args.push(kubeconfig.display().to_string());
        node.extra_run_args
            .extend(extra.iter().map(|s| s.to_string()));
        node.import_image();
        node
    }

    /// A node in a network namespace of its own (`Node::use_netns`) and a double started inside
    /// that namespace, where the daemon reaches it on loopback (the calling test thread moves
    /// into the namespace, so its API calls go there too). The node authenticates with a node
    /// certificate; `extra` is added to its run arguments. The image is imported; the daemon is
    /// not started.
    pub fn start_with_node_in_netns(opts: &[&str], extra: &[&str]) -> (super::Node, ApiServer) {
        let mut node = super::Node::create();
        node.use_netns();
        node.enter_netns_on_this_thread();
        let api = ApiServer::start_with(opts);
        let kubeconfig = node.dir.join("kubeconfig");
        api.write_kubeconfig(
            &kubeconfig,
            &KubeconfigUser::NodeCert(node.node_name.clone()),
            false,
        );
        node.extra_run_args.push("--kubeconfig".into());
        node.extra_run_args.push(kubeconfig.display().to_string());
        node.extra_run_args
            .extend(extra.iter().map(|s| s.to_string()));
        node.import_image();
        (node, api)
    }

    /// `prepare_node`, with the daemon started.
    pub fn join_node(&self, relay: Option<&super::relay::Relay>, extra: &[&str]) -> super::Node {
        let mut node = self.prepare_node(relay, extra);
        node.start_daemon();
        node
    }

    /// A client authenticating as `user`.
    pub fn client(&self, user: &KubeconfigUser) -> Client {
        Client::new(self, user)
    }

    // ---- requests as the admin ----

    pub fn get(&self, path: &str) -> ApiResult {
        self.admin.get(path)
    }

    pub fn post(&self, path: &str, body: &Value) -> ApiResult {
        self.admin.post(path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> ApiResult {
        self.admin.put(path, body)
    }

    /// `content_type`: `application/strategic-merge-patch+json`, `merge-patch+json` or `json-patch+json`.
    pub fn patch(&self, path: &str, content_type: &str, body: &Value) -> ApiResult {
        self.admin.patch(path, content_type, body)
    }

    /// `options`: a DeleteOptions body (gracePeriodSeconds, preconditions), if any.
    pub fn delete(&self, path: &str, options: Option<&Value>) -> ApiResult {
        self.admin.delete(path, options)
    }

    /// `GET <path>` with `watch=true` added to its query; the events as they come.
    pub fn watch(&self, path_and_query: &str) -> Watch {
        self.admin.watch(path_and_query)
    }

    /// Creates the namespace unless it exists (the server only knows default, kube-system,
    /// kube-public and kube-node-lease at first, and refuses objects in other namespaces).
    pub fn ensure_namespace(&self, ns: &str) {
        match self.post("/api/v1/namespaces", &json!({"metadata": {"name": ns}})) {
            Ok(_) | Err((409, _)) => {}
            Err(e) => panic!("creating namespace {ns}: {e:?}"),
        }
    }

    /// Creates the pod in its `metadata.namespace` (default: "default"); panics on failure.
    pub fn create_pod(&self, pod: &Value) -> Value {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        self.post(&format!("/api/v1/namespaces/{ns}/pods"), pod)
            .unwrap_or_else(|(code, status)| panic!("creating pod: {code} {status}"))
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        match self.get(&format!("/api/v1/namespaces/{ns}/pods/{name}")) {
            Ok(p) => Some(p),
            Err((404, _)) => None,
            Err(e) => panic!("getting pod {ns}/{name}: {e:?}"),
        }
    }

    /// Approves the CSR as an admin would (`kubectl certificate approve`).
    pub fn approve_csr(&self, name: &str) {
        let path = format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}");
        let mut csr = self.get(&path).expect("getting the CSR");
        csr["status"]["conditions"] = json!([{"type": "Approved", "status": "True",
            "reason": "TestApproved", "message": "approved by the test"}]);
        self.put(&format!("{path}/approval"), &csr)
            .unwrap_or_else(|e| panic!("approving CSR {name}: {e:?}"));
    }

    // ---- test hooks ----

    /// Every request so far: time, method, path (with query), user, status, contentType, watch, ms.
    pub fn requests(&self) -> Vec<Value> {
        self.test_get("/_test/requests")
    }

    pub fn clear_requests(&self) {
        self.test_post("/_test/requests/clear");
    }

    /// Objects non-admin clients sent that strict schema validation rejects (method, path,
    /// user, message, object).
    pub fn violations(&self) -> Vec<Value> {
        self.test_get("/_test/violations")
    }

    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "objects sent to the API server violate the schema:\n{}",
            serde_json::to_string_pretty(&v).unwrap()
        );
    }

    /// Drops the watch history: a watch from any older resourceVersion gets 410 Expired.
    pub fn compact(&self) {
        self.test_post("/_test/compact");
    }

    /// Cuts every open watch stream (connection closed without the final chunk).
    pub fn close_watches(&self) {
        self.test_post("/_test/close-watches");
    }

    /// The next `count` requests whose path starts with `path_prefix` fail with `status`.
    pub fn fail_next(&self, status: u16, count: u32, path_prefix: &str) {
        self.test_post(&format!(
            "/_test/fail?status={status}&count={count}&path={path_prefix}"
        ));
    }

    /// For the next `seconds`, every non-admin request whose path starts with `path_prefix` is
    /// answered as a broken control plane would: "slow" (12 s, then a hang-up), "truncated",
    /// "oversized" (96 MiB), "invalid-json", "wrong-content-type", "5xx", "wrong-shape" (a JSON
    /// array), "empty-object" (`{}`). `""` ends it.
    pub fn hostile(&self, mode: &str, seconds: f64, path_prefix: &str) {
        self.test_post(&format!(
            "/_test/hostile?mode={mode}&seconds={seconds}&path={path_prefix}"
        ));
    }

    /// Validity of the certificates signed for CSRs from now on (or spec.expirationSeconds if less).
    pub fn set_cert_duration(&self, seconds: u64) {
        self.test_post(&format!("/_test/sign-with-duration?seconds={seconds}"));
    }

    /// What TokenReviews answer for tokens other than the admin's and service accounts':
    /// `{"<token>": {"username": "alice", "groups": ["devs"]}}`.
    pub fn set_token_users(&self, users: &Value) {
        self.post("/_test/token-users", users)
            .unwrap_or_else(|e| panic!("setting token users: {e:?}"));
    }

    /// What SubjectAccessReviews on `nodes/<subresource>` allow (system:masters: everything):
    /// `[{"user": "alice", "verb": "get", "subresource": "proxy"}]` ("*" matches any).
    pub fn set_kubelet_access(&self, rules: &Value) {
        self.post("/_test/kubelet-access", rules)
            .unwrap_or_else(|e| panic!("setting kubelet access rules: {e:?}"));
    }

    /// The last `lines` lines of the double's log (one line per request, errors, violations).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut log = fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        log += &fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn test_get(&self, path: &str) -> Vec<Value> {
        let v = self
            .get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
        v["items"].as_array().cloned().unwrap_or_default()
    }

    fn test_post(&self, path: &str) {
        self.post(path, &json!({}))
            .unwrap_or_else(|e| panic!("POST {path}: {e:?}"));
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        // After a failed assertion the directory (log, objects) is left for the post-mortem.
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A blocking HTTPS client of the double, as one user.
pub struct Client {
    agent: Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(server: &ApiServer, user: &KubeconfigUser) -> Client {
        let ca = fs::read(server.ca_path()).expect("reading the test CA");
        let mut tls =
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[
                    Certificate::from_pem(&ca).expect("the test CA is PEM")
                ]));
        let token = match user {
            KubeconfigUser::NodeCert(node) => {
                let (crt, key) = server.node_cert(node);
                let crt = Certificate::from_pem(&fs::read(crt).unwrap()).unwrap();
                let key = PrivateKey::from_pem(&fs::read(key).unwrap()).unwrap();
                tls = tls.client_cert(Some(ClientCert::new_with_certs(&[crt], key)));
                None
            }
            KubeconfigUser::BootstrapToken => Some(BOOTSTRAP_TOKEN.to_string()),
            KubeconfigUser::Token(t) => Some(t.clone()),
        };
        Client {
            agent: agent(tls.build()),
            base: server.url(),
            token,
        }
    }

    /// Before the server is up.
    fn unusable() -> Client {
        Client {
            agent: agent(TlsConfig::builder().build()),
            base: "https://127.0.0.1:1".into(),
            token: None,
        }
    }

    /// One request; returns (status, body text).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, String) {
        match self.call(method, path, content_type, body) {
            Ok(mut resp) => (
                resp.status().as_u16(),
                resp.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let data = body.map(|b| serde_json::to_vec(b).unwrap());
        let ct = content_type.unwrap_or("application/json");
        macro_rules! with_auth {
            ($req:expr) => {{
                let req = $req.header("Accept", "application/json");
                match &auth {
                    Some(a) => req.header("Authorization", a.as_str()),
                    None => req,
                }
            }};
        }
        match (method, data) {
            ("GET", _) => with_auth!(self.agent.get(&url)).call(),
            ("DELETE", None) => with_auth!(self.agent.delete(&url)).call(),
            ("DELETE", Some(d)) => with_auth!(self.agent.delete(&url))
                .header("Content-Type", ct)
                .force_send_body()
                .send(&d[..]),
            ("POST", d) => with_auth!(self.agent.post(&url))
                .header("Content-Type", ct)
                .send(&d.unwrap_or_default()[..]),
            ("PUT", d) => with_auth!(self.agent.put(&url))
                .header("Content-Type", ct)
                .send(&d.unwrap_or_default()[..]),
            ("PATCH", d) => with_auth!(self.agent.patch(&url))
                .header("Content-Type", ct)
                .send(&d.unwrap_or_default()[..]),
            (m, _) => panic!("unsupported method {m}"),
        }
    }

    fn json(&self, method: &str, path: &str, ct: Option<&str>, body: Option<&Value>) -> ApiResult {
        let (code, text) = self.raw(method, path, ct, body);
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&code) {
            Ok(value)
        } else {
            Err((code, value))
        }
    }

    pub fn get(&self, path: &str) -> ApiResult {
        self.json("GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> ApiResult {
        self.json("POST", path, None, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> ApiResult {
        self.json("PUT", path, None, Some(body))
    }

    pub fn patch(&self, path: &str, content_type: &str, body: &Value) -> ApiResult {
        self.json("PATCH", path, Some(content_type), Some(body))
    }

    pub fn delete(&self, path: &str, options: Option<&Value>) -> ApiResult {
        self.json("DELETE", path, None, options)
    }

    /// `GET <path>` with `watch=true` added; panics unless the server answers 200 chunked.
    pub fn watch(&self, path_and_query: &str) -> Watch {
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let path = format!("{path_and_query}{sep}watch=true");
        let resp = self
            .call("GET", &path, None, None)
            .unwrap_or_else(|e| panic!("watch {path}: {e}"));
        let status = resp.status().as_u16();
        let chunked = resp
            .headers()
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked");
        if status != 200 {
            let mut text = String::new();
            let _ = resp.into_body().into_reader().read_to_string(&mut text);
            panic!("watch {path}: {status} {text}");
        }
        assert!(chunked, "watch {path}: the response is not chunked");
        Watch {
            lines: BufReader::new(Box::new(resp.into_body().into_reader())),
        }
    }
}

fn agent(tls: TlsConfig) -> Agent {
    Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .tls_config(tls)
        .build()
        .new_agent()
}

/// An open watch stream: one JSON event per line.
pub struct Watch {
    lines: BufReader<Box<dyn Read + Send>>,
}

/// How a watch stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// The terminating chunk: the server ended the watch (timeoutSeconds, or after an ERROR).
    Clean,
    /// The connection broke mid-stream (no terminating chunk).
    Broken(String),
}

impl Watch {
    /// The next event (`{"type": ..., "object": ...}`), or how the stream ended.
    pub fn next_event(&mut self) -> Result<Value, WatchEnd> {
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(0) => Err(WatchEnd::Clean),
            Ok(_) => Ok(serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a watch line is not JSON ({e}): {line:?}"))),
            Err(e) => Err(WatchEnd::Broken(e.to_string())),
        }
    }

    /// Reads events until `pred` accepts one (returned); skips the others. Panics when the
    /// stream ends first.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.next_event() {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) => {}
                Err(end) => panic!("the watch ended ({end:?}) before {what}"),
            }
        }
    }
}

/// A P-256 key and a CSR for `subject` (`/O=system:nodes/CN=system:node:n1`) made with openssl
/// in `dir` as `<name>.key`; returns (CSR PEM, key path).
pub fn make_csr(dir: &Path, name: &str, subject: &str) -> (String, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-subj",
            subject,
        ],
        b"",
    );
    (csr, key)
}

/// A certificate serial number no other certificate of the test CA has.
fn unique_serial() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}", nanos ^ ((std::process::id() as u128) << 64))
}

/// Runs openssl with `stdin`; panics on failure; returns stdout.
/// An API pod bound to `node` in `default`: one container `c` of the test image running
/// `command`, with `grace` seconds to stop. Tests set anything else on the value.
pub fn api_pod(node: &super::Node, name: &str, command: &[&str], grace: u32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node.node_name,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "c", "image": super::IMAGE, "command": command}],
        },
    })
}

/// A self-signed P-256 certificate for `subject` (`/CN=…`), valid for a day, written to `cert`
/// with its key in `key`.
pub fn self_signed_cert(subject: &str, cert: &Path, key: &Path) {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-days",
            "1",
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
        b"",
    );
}

pub fn openssl(args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns Some, for up to `WAIT`; panics with `what` and both logs.
pub fn eventually<T>(
    node: &super::Node,
    api: &ApiServer,
    what: &str,
    f: impl FnMut() -> Option<T>,
) -> T {
    super::poll_until(WAIT, what, f, || {
        format!(
            "--- tinylet:\n{}\n--- apiserver:\n{}",
            node.daemon_log_tail(40),
            api.log_tail(30)
        )
    })
}

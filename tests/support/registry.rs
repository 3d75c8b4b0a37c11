//! Real registries for the pull tests: distribution 2.8 (`docker-registry`) on a free loopback
//! port, with a private test CA and server certificate, bcrypt htpasswd users or a token server
//! (tests/data/token_server.py), images pushed with skopeo. Everything lives in
//! `/tmp/tinylet-it-<pid>-reg<n>/`, so the node harness's sweep also kills and removes what a
//! test process that died without unwinding left behind.
//!
//! Needs docker-registry, skopeo, htpasswd (apache2-utils), openssl, curl and python3
//! (scripts/install-deps).

use super::{image_layout, WAIT};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The one user of every test registry.
pub const USER: &str = "tinylet";
/// `auth.token.service` and `auth.token.issuer` of the token variant.
pub const TOKEN_SERVICE: &str = "tinylet-test-registry";
pub const TOKEN_ISSUER: &str = "tinylet-test-token-issuer";

static NEXT_REGISTRY: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may pull and push.
    None,
    /// htpasswd (bcrypt) users; the registry answers 401 with `WWW-Authenticate: Basic`.
    Basic,
    /// The registry answers 401 with `WWW-Authenticate: Bearer realm=...` and accepts only JWTs
    /// from our token server, which wants Basic credentials.
    Token,
}

/// One running registry (and its token server, if any); killed and removed on drop.
pub struct Registry {
    pub dir: PathBuf,
    port: u16,
    tls: bool,
    auth: Auth,
    password: String,
    registry: Child,
    token: Option<TokenServer>,
}

struct TokenServer {
    child: Child,
    port: u16,
    // Held open so the server never writes into a closed pipe.
    _stdout: ChildStdout,
}

impl Registry {
    /// HTTPS with the test CA, htpasswd Basic auth.
    pub fn start_tls_basic() -> Registry {
        Registry::start(true, Auth::Basic)
    }

    /// Plain HTTP on loopback, no auth.
    pub fn start_plain() -> Registry {
        Registry::start(false, Auth::None)
    }

    /// HTTPS with the test CA, token auth against our token server (itself HTTPS, same CA).
    pub fn start_tls_token() -> Registry {
        Registry::start(true, Auth::Token)
    }

    fn start(tls: bool, auth: Auth) -> Registry {
        let n = NEXT_REGISTRY.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/tinylet-it-{}-reg{}", pid, n));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("storage")).expect("creating the registry dir");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let password = format!("pw{:x}{:x}{}", pid, nanos, n);
        fs::write(dir.join("password"), &password).unwrap();
        if tls {
            make_certs(&dir);
        }
        if auth == Auth::Basic {
            let out = run(Command::new("htpasswd")
                // Cost 4 (the minimum): the registry checks the hash on every request.
                .args(["-B", "-C", "4", "-b", "-n", USER, &password]));
            fs::write(dir.join("htpasswd"), out.stdout).unwrap();
        }
        let token = (auth == Auth::Token).then(|| start_token_server(&dir));

        // A port picked by binding port 0 can be taken again before the registry binds it (other
        // tests, other test binaries): start over on a fresh one when that happens.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            write_config(&dir, port, tls, auth, token.as_ref().map(|t| t.port));
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("registry.log"))
                .expect("opening the registry log");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(dir.join("config.yml"))
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            die_with_parent(&mut cmd);
            let registry = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawning docker-registry (scripts/install-deps): {e}"));
            let mut reg = Registry {
                dir: dir.clone(),
                port,
                tls,
                auth,
                password: password.clone(),
                registry,
                token: None,
            };
            match reg.wait_ready() {
                Ok(()) => {
                    reg.token = token;
                    return reg;
                }
                Err(log) if log.contains("address already in use") && attempt < 5 => {
                    // Drop would remove the directory the next attempt needs.
                    let _ = reg.registry.kill();
                    let _ = reg.registry.wait();
                    std::mem::forget(reg);
                    continue;
                }
                Err(log) => panic!("docker-registry did not come up:\n{log}"),
            }
        }
    }

    /// Polls `/v2/` until the registry answers 200 or 401; on failure returns its log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.registry.try_wait() {
                return Err(format!("(exited: {status})\n{}", self.log()));
            }
            let code = self.curl_code("/v2/", &[]);
            if code == "200" || code == "401" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "(no answer on {} within {:?}; last curl: {})\n{}",
                    self.url("/v2/"),
                    WAIT,
                    code,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    // ---- what tests hand to tinylet ----

    /// `127.0.0.1:<port>`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn auth(&self) -> Auth {
        self.auth
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `<host>/<repo>:<tag>`
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{}:{}", self.host(), repo, tag)
    }

    /// The test CA (PEM) that signed the registry's (and token server's) certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    pub fn username(&self) -> &str {
        USER
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `user:password`, as `--creds` takes it.
    pub fn creds(&self) -> String {
        format!("{}:{}", USER, self.password)
    }

    /// A docker config.json (`auths` with base64 `user:password`) for this registry.
    pub fn docker_config(&self) -> PathBuf {
        let path = self.dir.join("docker-config.json");
        let cfg = json!({"auths": {self.host(): {"auth": base64(self.creds().as_bytes())}}});
        fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        path
    }

    /// The token server's `https://127.0.0.1:<port>/token` (token variant only).
    pub fn token_realm(&self) -> Option<String> {
        self.token
            .as_ref()
            .map(|t| format!("https://127.0.0.1:{}/token", t.port))
    }

    /// One line per token request (`method=GET user=tinylet scopes=repository:x:pull result=200`).
    pub fn token_log(&self) -> String {
        fs::read_to_string(self.dir.join("token.log")).unwrap_or_default()
    }

    /// The registry's log: its own messages and the access log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// How many `GET /v2/<repo>/blobs/...` requests the access log shows so far.
    pub fn blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{}/blobs/", repo);
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    // ---- pushing ----

    /// Copies the single image or index of an OCI layout to `<host>/<repo>:<tag>` with skopeo,
    /// digests preserved; returns the pushed manifest's (or index's) digest, `sha256:<hex>`.
    pub fn push_layout(&self, layout: &Path, repo: &str, tag: &str) -> String {
        let digestfile = self.dir.join(format!(
            "push-{}.digest",
            NEXT_REGISTRY.fetch_add(1, Ordering::SeqCst)
        ));
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
        ])
        .arg("--digestfile")
        .arg(&digestfile)
        .args(self.skopeo_flags("dest"))
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker://{}", self.reference(repo, tag)));
        let out = cmd.output().expect("running skopeo (scripts/install-deps)");
        assert!(
            out.status.success(),
            "skopeo copy {} -> {} failed: {}{}\n--- registry log ---\n{}",
            layout.display(),
            self.reference(repo, tag),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        let digest = fs::read_to_string(&digestfile).expect("reading skopeo's --digestfile");
        digest.trim().to_string()
    }

    /// Pushes the busybox image (support::image_layout) as `<repo>:<tag>`; returns its digest.
    pub fn push_busybox(&self, repo: &str, tag: &str) -> String {
        self.push_layout(image_layout(), repo, tag)
    }

    /// Builds the multi-arch layout in this registry's dir and pushes it as `<repo>:<tag>`.
    pub fn push_multiarch(&self, repo: &str, tag: &str) -> MultiArch {
        let ma = build_multiarch_layout(&self.dir.join(format!(
            "multiarch-{}-{}",
            repo.replace('/', "_"),
            tag
        )));
        let digest = self.push_layout(&ma.dir, repo, tag);
        assert_eq!(digest, ma.index_digest, "skopeo changed the index digest");
        ma
    }

    /// skopeo's TLS and credential flags for this registry; `side` is "src", "dest" or "" (inspect).
    pub fn skopeo_flags(&self, side: &str) -> Vec<String> {
        let flag = |name: &str| {
            if side.is_empty() {
                format!("--{name}")
            } else {
                format!("--{side}-{name}")
            }
        };
        let mut f = Vec::new();
        if self.tls {
            f.push(flag("cert-dir"));
            f.push(self.dir.join("certs").display().to_string());
        } else {
            f.push(format!("{}=false", flag("tls-verify")));
        }
        if self.auth != Auth::None {
            f.push(flag("creds"));
            f.push(self.creds());
        }
        f
    }

    /// `skopeo inspect --raw` of `<host>/<repo_ref>` (`repo:tag` or `repo@digest`).
    pub fn inspect_raw(&self, repo_ref: &str) -> Vec<u8> {
        self.skopeo_inspect(&[], &["--raw"], repo_ref)
    }

    /// `skopeo GLOBAL inspect ARGS docker://<host>/<repo_ref>` (GLOBAL: e.g. `--override-arch
    /// arm64`), asserted to succeed; stdout.
    pub fn skopeo_inspect(&self, global: &[&str], args: &[&str], repo_ref: &str) -> Vec<u8> {
        let out = Command::new("skopeo")
            .arg("--insecure-policy")
            .args(global)
            .arg("inspect")
            .args(args)
            .args(self.skopeo_flags(""))
            .arg(format!("docker://{}/{}", self.host(), repo_ref))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo inspect {} failed: {}",
            repo_ref,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    // ---- raw HTTP, for the harness's own checks ----

    /// `http(s)://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{}://{}{}", scheme, self.host(), path)
    }

    /// curl with the test CA; returns the whole output (`-i` shows the headers).
    pub fn curl(&self, path: &str, extra: &[&str]) -> Output {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--http1.1", "--max-time", "10"]);
        if self.tls {
            cmd.arg("--cacert").arg(self.ca_file());
        }
        cmd.args(extra).arg(self.url(path));
        cmd.output().expect("running curl")
    }

    /// The HTTP status code curl sees ("000" when nothing answered).
    pub fn curl_code(&self, path: &str, extra: &[&str]) -> String {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(extra);
        let out = self.curl(path, &all);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.registry.kill();
        let _ = self.registry.wait();
        self.token = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- set-up pieces ----

/// A loopback port nothing listens on right now, not handed out before by this process.
fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding a loopback port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// SIGKILL to the child when the thread that spawned it ends, even if the test process is
/// killed, so no registry outlives its test.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Runs a set-up command, panicking with its output if it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {}", cmd.get_program(), e));
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = tinylet test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[token_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
";

/// certs/ca.crt (+ ca.key), server.crt/key for 127.0.0.1 and localhost signed by it; certs/
/// holds only ca.crt, as skopeo's --cert-dir wants.
fn make_certs(dir: &Path) {
    let certs = dir.join("certs");
    fs::create_dir_all(&certs).unwrap();
    let cnf = dir.join("openssl.cnf");
    fs::write(&cnf, OPENSSL_CNF).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509", "-new"])
        .args(ec)
        .arg("-config")
        .arg(&cnf)
        .args([
            "-extensions",
            "ca_ext",
            "-days",
            "2",
            "-subj",
            "/CN=tinylet test CA",
        ])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(certs.join("ca.crt")));
    run(Command::new("openssl")
        .args(["req", "-new"])
        .args(ec)
        .arg("-config")
        .arg(&cnf)
        .args(["-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.csr")));
    // Distinct serials, so no client cache ever mistakes one test's server certificate for another's.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let serial = format!("0x{:x}{:08x}", now.as_secs(), now.subsec_nanos());
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-set_serial", &serial])
        .arg("-in")
        .arg(dir.join("server.csr"))
        .arg("-CA")
        .arg(certs.join("ca.crt"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-extfile")
        .arg(&cnf)
        .args(["-extensions", "server_ext"])
        .arg("-out")
        .arg(dir.join("server.crt")));
}

/// The token server's signing pair (a self-signed RSA certificate: the registry's
/// `rootcertbundle`), then the server itself; waits for its `listening on PORT`.
fn start_token_server(dir: &Path) -> TokenServer {
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-config")
        .arg(dir.join("openssl.cnf"))
        .args([
            "-extensions",
            "token_ext",
            "-subj",
            "/CN=tinylet test token signer",
        ])
        .arg("-keyout")
        .arg(dir.join("token.key"))
        .arg("-out")
        .arg(dir.join("token.crt")));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/token_server.py");
    let stderr = fs::File::create(dir.join("token-server.err")).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg("--tls-cert")
        .arg(dir.join("server.crt"))
        .arg("--tls-key")
        .arg(dir.join("server.key"))
        .arg("--signing-cert")
        .arg(dir.join("token.crt"))
        .arg("--signing-key")
        .arg(dir.join("token.key"))
        .args([
            "--issuer",
            TOKEN_ISSUER,
            "--service",
            TOKEN_SERVICE,
            "--user",
            USER,
        ])
        .arg("--password-file")
        .arg(dir.join("password"))
        .arg("--log")
        .arg(dir.join("token.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .expect("spawning python3 tests/data/token_server.py");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "token server did not start ({:?}):\n{}",
                line,
                fs::read_to_string(dir.join("token-server.err")).unwrap_or_default()
            )
        });
    TokenServer {
        child,
        port,
        _stdout: stdout.into_inner(),
    }
}

fn write_config(dir: &Path, port: u16, tls: bool, auth: Auth, token_port: Option<u16>) {
    let d = |f: &str| dir.join(f).display().to_string();
    let mut y = format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: tinylet-test-secret
",
        storage = d("storage"),
    );
    if tls {
        y += &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            d("server.crt"),
            d("server.key")
        );
    }
    match auth {
        Auth::None => {}
        Auth::Basic => {
            y += &format!(
                "auth:\n  htpasswd:\n    realm: tinylet-test\n    path: {}\n",
                d("htpasswd")
            )
        }
        Auth::Token => {
            y += &format!(
                "auth:\n  token:\n    realm: https://127.0.0.1:{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token_port.expect("token server port"),
                TOKEN_SERVICE,
                TOKEN_ISSUER,
                d("token.crt")
            )
        }
    }
    let mut f = fs::File::create(dir.join("config.yml")).unwrap();
    f.write_all(y.as_bytes()).unwrap();
}

// ---- image builders ----

/// One entry of the multi-arch index.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    /// `os/arch[/variant]`, e.g. `linux/arm/v7`.
    pub platform: String,
    pub manifest_digest: String,
    /// The config digest: the image id tinylet reports.
    pub config_digest: String,
    /// The content of `/arch` in its rootfs; `None` for the runnable busybox entry.
    pub marker: Option<String>,
}

/// An OCI layout whose index.json names one image index (annotation ref name `multiarch`).
#[derive(Clone, Debug)]
pub struct MultiArch {
    pub dir: PathBuf,
    pub index_digest: String,
    pub images: Vec<PlatformImage>,
}

impl MultiArch {
    /// The entry for `os/arch[/variant]` (exact string as in `PlatformImage::platform`).
    pub fn image(&self, platform: &str) -> &PlatformImage {
        self.images
            .iter()
            .find(|i| i.platform == platform)
            .unwrap_or_else(|| panic!("no {} entry in {:?}", platform, self.images))
    }
}

/// The busybox layout's (manifest digest, config digest, architecture).
pub fn busybox_digests() -> (String, String, String) {
    let layout = image_layout();
    let index: Value = read_json(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: Value = read_json(&blob_path(layout, &manifest_digest));
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config: Value = read_json(&blob_path(layout, &config_digest));
    let arch = config["architecture"].as_str().unwrap().to_string();
    (manifest_digest, config_digest, arch)
}

/// Builds, in `out`, an OCI layout with an image index: the busybox image for this machine's
/// architecture (it runs), plus linux/arm64/v8 and linux/arm/v7 images whose single layer holds
/// only `/arch` ("arm64\n" / "armv7\n"), which never run but show which entry a pull chose.
pub fn build_multiarch_layout(out: &Path) -> MultiArch {
    let _ = fs::remove_dir_all(out);
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let busybox = image_layout();
    for e in fs::read_dir(busybox.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let to = blobs.join(e.file_name());
        if fs::hard_link(e.path(), &to).is_err() {
            fs::copy(e.path(), &to).unwrap();
        }
    }
    let (bb_manifest, bb_config, bb_arch) = busybox_digests();
    let bb_size = fs::metadata(blob_path(busybox, &bb_manifest))
        .unwrap()
        .len();
    let mut images = vec![PlatformImage {
        platform: format!("linux/{}", bb_arch),
        manifest_digest: bb_manifest.clone(),
        config_digest: bb_config,
        marker: None,
    }];
    let mut descriptors = vec![json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": bb_manifest,
        "size": bb_size,
        "platform": {"architecture": bb_arch, "os": "linux"},
    })];
    for (arch, variant, marker) in [("arm64", "v8", "arm64"), ("arm", "v7", "armv7")] {
        if arch == bb_arch {
            continue;
        }
        let tar = marker_layer(&format!("{}\n", marker));
        let diff_id = sha256_digest(&tar);
        let layer = gzip(&tar);
        let layer_digest = write_blob(&blobs, &layer);
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "variant": variant,
            "os": "linux",
            "config": {"Cmd": ["/arch"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "tinylet tests/support/registry.rs"}],
        }))
        .unwrap();
        let config_digest = write_blob(&blobs, &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))
        .unwrap();
        let manifest_digest = write_blob(&blobs, &manifest);
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux", "variant": variant},
        }));
        images.push(PlatformImage {
            platform: format!("linux/{}/{}", arch, variant),
            manifest_digest,
            config_digest,
            marker: Some(marker.to_string()),
        });
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": descriptors,
    }))
    .unwrap();
    let index_digest = write_blob(&blobs, &index);
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multiarch"},
        }],
    });
    fs::write(out.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    MultiArch {
        dir: out.to_path_buf(),
        index_digest,
        images,
    }
}

/// A tar holding only `/arch` with `content`.
fn marker_layer(content: &str) -> Vec<u8> {
    super::oci::one_file_tar("arch", content.as_bytes())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `sha256:<hex>` of `data`.
pub use super::oci::sha256_digest;

fn write_blob(blobs: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    fs::write(blobs.join(digest.trim_start_matches("sha256:")), data).unwrap();
    digest
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn read_json(path: &Path) -> Value {
    let data = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {}", path.display(), e));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("parsing {}: {}", path.display(), e))
}

/// Standard base64 with padding (docker config.json `auth`).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

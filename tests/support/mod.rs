//! Integration-test harness: a real `tinylet run` daemon with runc, on a private root dir, manifest
//! dir, log dir, runc root, node name and cgroup root, so tests run in parallel without seeing each
//! other. Everything a node made is torn down when it drops (also after a failed assertion), and
//! leftovers of test processes that died without unwinding are swept at the next start.
//!
//! Needs root, runc and a static busybox (the image is built by scripts/make-busybox-image).
#![allow(dead_code)] // each test binary uses its own subset of the harness

pub mod apiserver;
pub mod bad_registry;
pub mod oci;
pub mod registry;
pub mod relay;

use serde_json::{json, Value};
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The reference the test image is built with (scripts/make-busybox-image).
/// On a loopback registry where nothing listens: a test that makes the agent pull it (the image
/// not imported yet) fails fast with ErrImagePull and never sends a packet off this machine.
pub const IMAGE: &str = "127.0.0.1:1/tinylet/busybox:1.36";
/// How long to wait for something that normally takes well under a second (a loaded 2-core CI
/// machine can be very slow); assertions check the values, this only bounds the waiting.
pub const WAIT: Duration = Duration::from_secs(20);

/// The tinylet binary under test: cargo's build of this crate, or `TINYLET_BIN` (scripts/soak
/// `--release` runs the soak against the static release binary, as shipped).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TINYLET_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tinylet").to_string())
    })
}

static NEXT_NODE: AtomicUsize = AtomicUsize::new(0);

/// The busybox OCI layout, built once per test binary.
pub fn image_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        sweep_stale();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("busybox-oci-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-busybox-image");
        let out = Command::new(&script)
            .arg(&dir)
            .arg(IMAGE)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {}", script.display(), e));
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// Polls `f` every 50 ms until it is ready; after `timeout`, panics naming `what`, followed by
/// `context()` (logs worth reading).
pub fn poll_until<R: Ready>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> R,
    context: impl Fn() -> String,
) -> R::Out {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().ready() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {:?} waiting for {}\n{}",
                timeout,
                what,
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A value `wait_for` can poll: `true`, or `Some(value)`, means done.
pub trait Ready {
    type Out;
    fn ready(self) -> Option<Self::Out>;
}

impl Ready for bool {
    type Out = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Out = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// One tinylet node: its directories, its daemon and its cgroup root.
pub struct Node {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub manifests: PathBuf,
    pub log_dir: PathBuf,
    pub runtime_root: PathBuf,
    pub node_name: String,
    /// `--cgroup-root`, e.g. `/tinylet-it-1234-3`.
    pub cgroup_root: String,
    pub daemon_log: PathBuf,
    /// Appended to `run_args` (e.g. a registry's `--ca-file`, `--docker-config`).
    pub extra_run_args: Vec<String>,
    /// The network namespace the daemon runs in (`use_netns`): the "node" network of
    /// networking tests, so bridges, addresses and iptables rules never reach the host's.
    pub netns: Option<String>,
    daemon: Option<Child>,
}

/// The node namespace's own address (TEST-NET-1; it exists only inside that namespace, on lo).
pub const NODE_ADDR: &str = "192.0.2.1";

impl Node {
    /// A node with the busybox image imported and its daemon running.
    pub fn start() -> Node {
        let mut node = Node::create();
        node.import_image();
        node.start_daemon();
        node
    }

    /// The directories only: no image, no daemon (call `start_daemon`).
    pub fn create() -> Node {
        image_layout(); // also sweeps leftovers of dead test processes first
        let n = NEXT_NODE.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/tmp/tinylet-it-{}-{}", pid, n));
        let _ = fs::remove_dir_all(&dir);
        let node = Node {
            root: dir.join("root"),
            manifests: dir.join("manifests"),
            log_dir: dir.join("logs"),
            runtime_root: dir.join("runc"),
            node_name: format!("it{}n{}", pid, n),
            cgroup_root: format!("/tinylet-it-{}-{}", pid, n),
            daemon_log: dir.join("daemon.log"),
            extra_run_args: Vec::new(),
            netns: None,
            dir,
            daemon: None,
        };
        for d in [&node.root, &node.manifests, &node.log_dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {}", d.display(), e));
        }
        node
    }

    pub fn import_image(&self) {
        self.tinylet_ok(&["image", "import", &image_layout().display().to_string()]);
    }

    /// The `tinylet run` arguments of this node.
    pub fn run_args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec![
            "run".into(),
            "--root-dir".into(),
            p(&self.root),
            "--pod-manifest-path".into(),
            p(&self.manifests),
            "--pod-log-dir".into(),
            p(&self.log_dir),
            "--runtime-root".into(),
            p(&self.runtime_root),
            "--node-name".into(),
            self.node_name.clone(),
            "--cgroup-root".into(),
            self.cgroup_root.clone(),
            "--backoff-scale".into(),
            "0.1".into(),
            // Parallel test nodes would all want 127.0.0.1:10248.
            "--healthz-port".into(),
            "0".into(),
            // The service proxy binds ClusterIPs on `lo`: only in test namespaces (tests/proxy.rs),
            // never on the host's.
            "--proxy-mode".into(),
            "none".into(),
            // The node API listens on loopback only in tests (the first node gets 10250; the
            // others log that it is taken, unless a test gives its own --port).
            "--address".into(),
            "127.0.0.1".into(),
            // Never the host's /etc/cni/net.d: a test node has a pod network only when its test
            // writes one here (and runs the node in a namespace of its own, `use_netns`).
            "--cni-conf-dir".into(),
            p(&self.dir.join("net.d")),
            // No node-pressure eviction: the kubelet's default thresholds depend on how full
            // the test machine's disk is. tests/stats.rs sets its own (the last value wins).
            "--eviction-hard=".into(),
        ]
        .into_iter()
        .chain(self.extra_run_args.iter().cloned())
        .collect()
    }

    /// Starts the daemon (stderr appended to `daemon_log`) and waits until it logged its start.
    pub fn start_daemon(&mut self) {
        assert!(
            self.daemon.is_none() || !self.daemon_alive(),
            "daemon already running"
        );
        let starts_before = self.daemon_log().matches(" starting: node ").count();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.daemon_log)
            .expect("opening daemon log");
        let mut cmd = Command::new(bin());
        cmd.args(self.run_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        if let Some(ns) = &self.netns {
            let f = fs::File::open(format!("/run/netns/{}", ns))
                .unwrap_or_else(|e| panic!("opening network namespace {}: {}", ns, e));
            // SAFETY: setns(2) is async-signal-safe; the fd stays open in the parent until spawn
            // returns. Only the network namespace changes (not the mount namespace, as `ip netns
            // exec` would), so the daemon's mounts stay visible to the test.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent. It makes a
        // daemon die with the test thread that started it, even when the test process is killed.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        self.daemon = Some(cmd.spawn().expect("spawning tinylet run"));
        let deadline = Instant::now() + WAIT;
        while self.daemon_log().matches(" starting: node ").count() <= starts_before {
            if !self.daemon_alive() {
                panic!("tinylet run exited at start-up:\n{}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "tinylet run did not log its start within {:?}:\n{}",
                WAIT,
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn daemon_alive(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The daemon's process id (panics if it is not running).
    pub fn daemon_pid(&self) -> u32 {
        self.daemon
            .as_ref()
            .expect("the daemon is not running")
            .id()
    }

    /// SIGKILL to the daemon (its pods keep running).
    pub fn kill9_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A power cycle: the daemon, every container and monitor, runc's state (tmpfs), every mount
    /// and namespace and the cgroups are gone; the root dir's files stay. The daemon is not
    /// started again.
    pub fn simulate_reboot(&mut self) {
        self.kill9_daemon();
        teardown_runtime(&self.dir, &self.runtime_root, &self.cgroup_root);
        let _ = fs::remove_dir_all(&self.runtime_root);
        // The node's network (bridge, iptables rules) does not survive a reboot either.
        if let Some(ns) = self.netns.clone() {
            delete_netns(&ns);
            make_netns(&ns);
        }
    }

    /// Runs the daemon (from the next `start_daemon`) in a network namespace of its own, made
    /// here and deleted when the node drops, with `NODE_ADDR` on its loopback as the node's
    /// address (`--node-ip`).
    pub fn use_netns(&mut self) {
        let ns = format!(
            "tl-{}",
            self.dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("tinylet-it-"))
                .expect("node dir name")
        );
        make_netns(&ns);
        self.netns = Some(ns);
        self.extra_run_args
            .extend(["--node-ip".to_string(), NODE_ADDR.to_string()]);
    }

    /// Moves the calling test thread into the node's network namespace, so that the processes it
    /// starts next (an API-server double) and the sockets it opens share the daemon's loopback.
    /// Only this thread moves; the thread ends with the test.
    pub fn enter_netns_on_this_thread(&self) {
        let ns = self.netns.as_deref().expect("use_netns first");
        let f = fs::File::open(format!("/run/netns/{}", ns))
            .unwrap_or_else(|e| panic!("opening network namespace {}: {}", ns, e));
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering network namespace {}: {}", ns, e));
    }

    /// Runs `args` inside the node's network namespace (`ip netns exec`).
    pub fn netns_exec(&self, args: &[&str]) -> Output {
        let ns = self.netns.as_deref().expect("use_netns first");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec")
    }

    pub fn restart_daemon(&mut self) {
        self.kill9_daemon();
        self.start_daemon();
    }

    pub fn daemon_log(&self) -> String {
        fs::read_to_string(&self.daemon_log).unwrap_or_default()
    }

    pub fn daemon_log_tail(&self, lines: usize) -> String {
        let log = self.daemon_log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    // ---- manifests ----

    pub fn manifest_path(&self, file: &str) -> PathBuf {
        self.manifests.join(file)
    }

    /// Writes a manifest atomically (hidden temp file + rename), as config management does, so
    /// the daemon never reads half a file.
    pub fn write_manifest(&self, file: &str, text: &str) {
        let tmp = self.manifests.join(format!(".{}.tmp", file));
        fs::write(&tmp, text).expect("writing manifest");
        fs::rename(&tmp, self.manifest_path(file)).expect("renaming manifest");
    }

    pub fn remove_manifest(&self, file: &str) {
        fs::remove_file(self.manifest_path(file))
            .unwrap_or_else(|e| panic!("removing manifest {}: {}", file, e));
    }

    // ---- the CLI ----

    /// Runs the tinylet binary with exactly `args`.
    pub fn tinylet(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tinylet")
    }

    /// Runs `tinylet ARGS --root-dir <root>`, asserts it succeeded, returns its stdout.
    pub fn tinylet_ok(&self, args: &[&str]) -> String {
        let root = self.root.display().to_string();
        let mut all = args.to_vec();
        all.extend(["--root-dir", root.as_str()]);
        let out = self.tinylet(&all);
        assert!(
            out.status.success(),
            "tinylet {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ps_json(&self) -> Value {
        let out = self.tinylet_ok(&["ps", "-o", "json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("tinylet ps -o json printed invalid JSON ({}): {}", e, out))
    }

    pub fn ps_table(&self) -> String {
        self.tinylet_ok(&["ps"])
    }

    /// The static pod's full name: `<name>-<node>`.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}-{}", name, self.node_name)
    }

    /// The pod (from `ps -o json`) whose metadata.name is `name` or `<name>-<node>`.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let full = self.full_name(name);
        let list = self.ps_json();
        list["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == full || p["metadata"]["name"] == name)
            .cloned()
    }

    /// `tinylet logs POD [CONTAINER] [extra flags]`.
    pub fn logs_output(&self, pod: &str, container: Option<&str>, flags: &[&str]) -> Output {
        let (root, logs) = (
            self.root.display().to_string(),
            self.log_dir.display().to_string(),
        );
        let mut args = vec!["logs", "--root-dir", &root, "--pod-log-dir", &logs];
        args.extend_from_slice(flags);
        args.push(pod);
        args.extend(container);
        self.tinylet(&args)
    }

    /// The decoded output of the pod's container, as `tinylet logs` prints it ("" on error).
    pub fn logs(&self, pod: &str, container: &str) -> String {
        String::from_utf8_lossy(&self.logs_output(pod, Some(container), &[]).stdout).into_owned()
    }

    /// Waits until the container's output contains `needle`; returns the whole output.
    pub fn wait_log(&mut self, pod: &str, container: &str, needle: &str) -> String {
        self.wait_for(
            WAIT,
            &format!("{}/{} to print {:?}", pod, container, needle),
            |n| {
                let l = n.logs(pod, container);
                l.contains(needle).then_some(l)
            },
        )
    }

    // ---- waiting ----

    /// Polls `f` every 50 ms until it is ready; on timeout, panics with the pods' states and the
    /// daemon's log.
    pub fn wait_for<R: Ready>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&mut Node) -> R,
    ) -> R::Out {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self).ready() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {:?} waiting for {}\n--- pods ---\n{}\n--- daemon (alive: {}) log tail ---\n{}",
                    timeout,
                    what,
                    self.describe(),
                    self.daemon_alive(),
                    self.daemon_log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the pod to exist with `pred` true; returns it.
    pub fn wait_pod(&mut self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let msg = format!("pod {}: {}", name, what);
        self.wait_for(WAIT, &msg, |n| n.pod(name).filter(|p| pred(p)))
    }

    pub fn wait_running(&mut self, name: &str) -> Value {
        self.wait_pod(name, "phase Running with all containers running", |p| {
            p["status"]["phase"] == "Running" && all_running(p)
        })
    }

    pub fn wait_gone(&mut self, name: &str) {
        let msg = format!("pod {} to be gone", name);
        self.wait_for(WAIT, &msg, |n| n.pod(name).is_none());
    }

    /// One line per pod and container, for failure messages.
    pub fn describe(&self) -> String {
        let out = self.tinylet(&[
            "ps",
            "-o",
            "json",
            "--root-dir",
            &self.root.display().to_string(),
        ]);
        let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) else {
            return format!("(ps failed: {})", String::from_utf8_lossy(&out.stderr));
        };
        let mut s = String::new();
        for p in list["items"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{} phase={}\n",
                p["metadata"]["name"], p["status"]["phase"]
            ));
            for c in p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
            {
                s.push_str(&format!(
                    "  {} restarts={} state={} last={}\n",
                    c["name"], c["restartCount"], c["state"], c["lastState"]
                ));
                let (pod, name) = (
                    p["metadata"]["name"].as_str().unwrap_or(""),
                    c["name"].as_str().unwrap_or(""),
                );
                for (label, flags) in [("output", &[][..]), ("previous output", &["-p"][..])] {
                    let out =
                        String::from_utf8_lossy(&self.logs_output(pod, Some(name), flags).stdout)
                            .into_owned();
                    let lines: Vec<&str> = out.lines().collect();
                    if !lines.is_empty() {
                        s.push_str(&format!(
                            "    {} (last lines):\n      {}\n",
                            label,
                            lines[lines.len().saturating_sub(5)..].join("\n      ")
                        ));
                    }
                }
            }
        }
        s
    }

    // ---- paths the daemon uses ----

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    pub fn bundle(&self, container_id: &str) -> PathBuf {
        self.root
            .join("containers")
            .join(container_id.trim_start_matches("runc://"))
    }

    /// The pod's log directory, `<log-dir>/<ns>_<pod>_<uid>`.
    pub fn pod_log_dir(&self, pod: &Value) -> PathBuf {
        let m = &pod["metadata"];
        self.log_dir.join(format!(
            "{}_{}_{}",
            m["namespace"].as_str().unwrap(),
            m["name"].as_str().unwrap(),
            m["uid"].as_str().unwrap()
        ))
    }

    /// The pod cgroup's directory in one v1 hierarchy (e.g. "memory"), wherever its QoS class
    /// put it (`kubepods/`, `kubepods/burstable/`, `kubepods/besteffort/`).
    pub fn pod_cgroup_dir(&self, controller: &str, uid: &str) -> PathBuf {
        let kubepods = PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join(self.cgroup_root.trim_start_matches('/'))
            .join("kubepods");
        ["", "burstable", "besteffort"]
            .iter()
            .map(|q| kubepods.join(q).join(format!("pod{}", uid)))
            .find(|d| d.exists())
            .unwrap_or_else(|| kubepods.join(format!("pod{}", uid)))
    }

    /// The pod's cgroup in every hierarchy under /sys/fs/cgroup that has it.
    pub fn pod_cgroups_present(&self, uid: &str) -> Vec<PathBuf> {
        let name = format!("pod{}", uid);
        self.pod_cgroups()
            .into_iter()
            .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy() == name))
            .collect()
    }

    /// Every `pod<uid>` cgroup of this node (any QoS level), in every hierarchy.
    pub fn pod_cgroups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for h in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let kubepods = h
                .path()
                .join(self.cgroup_root.trim_start_matches('/'))
                .join("kubepods");
            for q in ["", "burstable", "besteffort"] {
                for e in fs::read_dir(kubepods.join(q))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if e.file_name().to_string_lossy().starts_with("pod") {
                        found.push(e.path());
                    }
                }
            }
        }
        found
    }

    /// Container ids runc knows in this node's runtime root.
    pub fn runc_list(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&self.runtime_root)
            .args(["list", "-q"])
            .output()
            .expect("running runc list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// `runc state`'s status ("running", "stopped", ...) or None when runc does not know it.
    pub fn runc_status(&self, container_id: &str) -> Option<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&self.runtime_root)
            .args(["state", container_id.trim_start_matches("runc://")])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(str::to_string)
    }

    /// Mount points under this node's directory.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.dir)
    }

    /// Processes whose command line mentions this node's directory (daemon, monitors, runc).
    pub fn processes(&self) -> Vec<(i32, String)> {
        processes_mentioning(&self.dir)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9_daemon();
        cleanup(&self.dir, &self.runtime_root, &self.cgroup_root);
        if let Some(ns) = self.netns.take() {
            delete_netns(&ns);
        }
    }
}

/// `ip netns add NAME`, loopback up with `NODE_ADDR` on it.
fn make_netns(ns: &str) {
    for args in [
        vec!["netns", "add", ns],
        vec!["-n", ns, "link", "set", "lo", "up"],
        vec![
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", NODE_ADDR),
            "dev",
            "lo",
        ],
    ] {
        let out = Command::new("ip").args(&args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn delete_netns(ns: &str) {
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

// ---- pod status accessors ----

/// The status of the pod's container `name`.
pub fn cstatus<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

pub fn all_running(pod: &Value) -> bool {
    pod["status"]["containerStatuses"]
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|c| !c["state"]["running"].is_null()))
}

/// The status ("True"/"False") of a pod condition.
pub fn condition<'a>(pod: &'a Value, type_: &str) -> Option<&'a str> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

pub fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"]
        .as_str()
        .expect("pod has a uid")
        .to_string()
}

pub fn container_id(pod: &Value, name: &str) -> String {
    cstatus(pod, name)["containerID"]
        .as_str()
        .unwrap_or_else(|| panic!("container {} has no containerID: {}", name, pod["status"]))
        .to_string()
}

// ---- manifests ----

/// A pod manifest builder; `yaml()` and `json()` render it.
#[derive(Clone)]
pub struct PodManifest {
    name: String,
    namespace: Option<String>,
    restart_policy: Option<String>,
    grace: Option<u32>,
    host_network: bool,
    containers: Vec<Value>,
}

pub fn pod_manifest(name: &str) -> PodManifest {
    PodManifest {
        name: name.into(),
        namespace: None,
        restart_policy: None,
        grace: None,
        host_network: false,
        containers: Vec::new(),
    }
}

impl PodManifest {
    /// A busybox container running `sh -c script`.
    pub fn container(self, name: &str, script: &str) -> Self {
        self.container_cmd(name, &["sh", "-c", script])
    }

    pub fn container_cmd(mut self, name: &str, command: &[&str]) -> Self {
        self.containers
            .push(json!({"name": name, "image": IMAGE, "command": command}));
        self
    }

    fn last(&mut self) -> &mut Value {
        self.containers.last_mut().expect("add a container first")
    }

    /// Sets a field of the last container (`image`, `imagePullPolicy`, ...).
    pub fn set(mut self, field: &str, value: Value) -> Self {
        self.last()[field] = value;
        self
    }

    pub fn limit(mut self, resource: &str, quantity: &str) -> Self {
        let c = self.last();
        if c["resources"].is_null() {
            c["resources"] = json!({"limits": {}});
        }
        c["resources"]["limits"][resource] = json!(quantity);
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    pub fn restart_policy(mut self, p: &str) -> Self {
        self.restart_policy = Some(p.into());
        self
    }

    pub fn grace(mut self, secs: u32) -> Self {
        self.grace = Some(secs);
        self
    }

    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    pub fn value(&self) -> Value {
        let mut spec = json!({"containers": self.containers});
        if let Some(p) = &self.restart_policy {
            spec["restartPolicy"] = json!(p);
        }
        if let Some(g) = self.grace {
            spec["terminationGracePeriodSeconds"] = json!(g);
        }
        if self.host_network {
            spec["hostNetwork"] = json!(true);
        }
        let mut meta = json!({"name": self.name});
        if let Some(ns) = &self.namespace {
            meta["namespace"] = json!(ns);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&self.value()).unwrap()
    }

    /// Block-style YAML (scalars JSON-quoted, which YAML reads the same).
    pub fn yaml(&self) -> String {
        to_yaml(&self.value())
    }
}

/// A small YAML emitter for JSON values: block mappings and sequences, JSON scalars.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit_yaml(v, 0, &mut out);
    out
}

fn emit_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let flat = |v: &Value| match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.iter().all(|x| !x.is_object() && !x.is_array()),
        _ => true,
    };
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                if flat(val) {
                    out.push_str(&format!("{}{}: {}\n", pad, k, val));
                } else {
                    out.push_str(&format!("{}{}:\n", pad, k));
                    emit_yaml(val, indent + 2, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let mut sub = String::new();
                emit_yaml(item, indent + 2, &mut sub);
                out.push_str(&format!("{}- {}", pad, &sub[indent + 2..]));
            }
        }
        scalar => out.push_str(&format!("{}{}\n", pad, scalar)),
    }
}

// ---- CRI log lines ----

/// Checks one CRI log line, `<RFC3339Nano> <stdout|stderr> <F|P> <text>`; returns (stream, tag, text).
pub fn parse_cri_line(line: &str) -> Result<(&str, &str, &str), String> {
    let mut parts = line.splitn(4, ' ');
    let (ts, stream, tag) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let text = parts
        .next()
        .ok_or_else(|| format!("too few fields in {:?}", line))?;
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let ok_ts = b.len() > 21
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..b.len() - 1)
        && b[b.len() - 1] == b'Z';
    if !ok_ts {
        return Err(format!(
            "timestamp {:?} is not RFC 3339 with fractional seconds in {:?}",
            ts, line
        ));
    }
    if stream != "stdout" && stream != "stderr" {
        return Err(format!(
            "stream {:?} is not stdout|stderr in {:?}",
            stream, line
        ));
    }
    if tag != "F" && tag != "P" {
        return Err(format!("tag {:?} is not F|P in {:?}", tag, line));
    }
    Ok((stream, tag, text))
}

// ---- cleanup ----

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn processes_mentioning(dir: &Path) -> Vec<(i32, String)> {
    // With the separator, so /tmp/x-1 does not match /tmp/x-10's processes.
    let needle = format!("{}/", dir.display());
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Removes everything a node may have left: its monitors and runc calls, runc's containers,
/// mounts under its directory, its cgroup tree in every hierarchy, and the directory itself.
fn cleanup(dir: &Path, runtime_root: &Path, cgroup_root: &str) {
    teardown_runtime(dir, runtime_root, cgroup_root);
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("test cleanup: removing {}: {}", dir.display(), e);
        }
    }
}

/// What a reboot takes away: processes, runc state, mounts, namespaces, cgroups (files stay).
fn teardown_runtime(dir: &Path, runtime_root: &Path, cgroup_root: &str) {
    for (pid, _) in processes_mentioning(dir) {
        kill(pid);
    }
    for attempt in 0..5 {
        let ids: Vec<String> = fs::read_dir(runtime_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        if ids.is_empty() {
            break;
        }
        for id in &ids {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(runtime_root)
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let cg = cgroup_root.trim_matches('/');
    if !cg.is_empty() && cg.starts_with("tinylet-it-") {
        for h in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let top = h.path().join(cg);
            if top.is_dir() {
                remove_cgroup_tree(&top);
            }
        }
    }
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Kills what is left in a cgroup tree and removes it bottom-up.
fn remove_cgroup_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    for _ in 0..100 {
        let mut procs = String::new();
        if let Ok(mut f) = fs::File::open(dir.join("cgroup.procs")) {
            let _ = f.read_to_string(&mut procs);
        }
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            kill(pid);
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("test cleanup: could not remove cgroup {}", dir.display());
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{}", pid)).exists()
}

/// Cleans up after test processes that died without dropping their nodes (SIGKILL, abort).
fn sweep_stale() {
    let parse = |name: &str| -> Option<u32> {
        name.strip_prefix("tinylet-it-")?
            .split('-')
            .next()?
            .parse()
            .ok()
    };
    for e in fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = parse(&name) {
            if !pid_alive(pid) {
                let dir = e.path();
                cleanup(&dir, &dir.join("runc"), &format!("/{}", name));
            }
        }
    }
    for h in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in fs::read_dir(h.path()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if parse(&name).is_some_and(|pid| !pid_alive(pid)) && e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // Node network namespaces of dead test processes (tl-<pid>-<n>).
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("tl-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !pid_alive(p)) {
            delete_netns(&name);
        }
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("busybox-oci-")
            .and_then(|p| p.parse::<u32>().ok())
        {
            if !pid_alive(pid) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

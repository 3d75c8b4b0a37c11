//! kill -9 chaos (issue 10, point 2): random pod creates, updates and deletes (static pods through
//! the manifest dir, API pods through the API-server double) while tinylet is killed with SIGKILL
//! at random moments and started again. At the end every desired pod runs exactly once, every
//! pod that ran to completion keeps its exit status, and nothing is orphaned: no runc container,
//! monitor, cgroup, mount (namespace pins, /dev/shm, rootfs overlays), bundle or pod directory
//! that no desired pod owns, and no pod-network address (host-local CNI allocation) that no
//! running pod holds: the node runs in a network namespace of its own with the zero-config pod
//! network (`--pod-cidr`, the bridge, host-local and portmap plugins), so kills also land in the
//! middle of CNI ADDs and DELs.
//!
//! Also here: a full disk and a read-only root dir (a small tmpfs as `--root-dir`): clear errors,
//! running pods untouched, state files intact, and recovery once space or write access returns.
//!
//! `cargo test --test chaos` runs a CI-sized round (TINYLET_CHAOS_OPS, default 40);
//! scripts/chaos runs the long one (≥ 200 operations) and prints the figures.
//! TINYLET_CHAOS_SEED replays a round.

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::apiserver::ApiServer;
use support::*;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What should be running: static pods (name -> version), API pods, and static run-once pods
/// that exit with 3 (their exit status must survive every kill).
#[derive(Default)]
struct Desired {
    statics: BTreeMap<String, u32>,
    apis: BTreeSet<String>,
    jobs: BTreeSet<String>,
    next: u32,
}

impl Desired {
    fn len(&self) -> usize {
        self.statics.len() + self.apis.len() + self.jobs.len()
    }
}

fn static_manifest(name: &str, version: u32) -> String {
    let mut v = pod_manifest(name)
        .container_cmd("c", &["sleep", "100000"])
        .grace(1)
        .value();
    v["spec"]["containers"][0]["env"] = json!([{"name": "VERSION", "value": version.to_string()}]);
    serde_json::to_string(&v).unwrap()
}

fn job_manifest(name: &str) -> String {
    pod_manifest(name)
        .container("c", "sleep 0.3; exit 3")
        .restart_policy("Never")
        .json()
}

fn api_pod(name: &str, node: &Node) -> Value {
    support::apiserver::api_pod(node, name, &["sleep", "100000"], 1)
}

/// The CNI plugins (Debian's containernetworking-plugins).
const PLUGINS: &str = "/usr/lib/cni";
/// The network name of the zero-config pod network, its host-local lease directory's name.
const POD_NETWORK: &str = "tinylet";

/// A node in a network namespace of its own, with the zero-config pod network, joined to an
/// API-server double started in that namespace (this test thread moves into it).
fn join_with_pod_network(api_args: &[&str]) -> (Node, ApiServer) {
    // The zero-config network writes its conflist to the node's own --cni-conf-dir (run_args).
    let (mut node, api) = ApiServer::start_with_node_in_netns(
        api_args,
        &[
            "--node-status-update-frequency",
            "1s",
            "--cni-bin-dir",
            PLUGINS,
            "--pod-cidr",
            "10.78.0.0/24",
        ],
    );
    node.start_daemon();
    (node, api)
}

/// The addresses the host-local plugin has handed out and not taken back.
fn cni_allocations(node: &Node) -> BTreeSet<String> {
    fs::read_dir(node.root.join("cni/networks").join(POD_NETWORK))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// Figures of one round, printed at the end.
#[derive(Default, Debug)]
struct Round {
    ops: u64,
    kills: u64,
    creates: u64,
    updates: u64,
    deletes: u64,
    converged_in: Duration,
}

/// Runs `ops` random operations, killing tinylet after about one in four.
fn chaos(node: &mut Node, api: &ApiServer, rng: &mut Rng, ops: u64, deadline: Instant) -> Desired {
    const CAP: usize = 10; // pods at once: enough to overlap, small enough for 2 CPUs
    let mut d = Desired::default();
    let mut round = Round::default();
    while round.ops < ops && Instant::now() < deadline {
        round.ops += 1;
        let full = d.len() >= CAP;
        match rng.below(9) {
            0 | 1 if !full => {
                d.next += 1;
                let name = format!("s{}", d.next);
                node.write_manifest(&format!("{name}.json"), &static_manifest(&name, 0));
                d.statics.insert(name, 0);
                round.creates += 1;
            }
            2 if !d.statics.is_empty() => {
                let i = rng.below(d.statics.len() as u64) as usize;
                let (name, v) = d.statics.iter_mut().nth(i).unwrap();
                *v += 1;
                node.write_manifest(&format!("{name}.json"), &static_manifest(name, *v));
                round.updates += 1;
            }
            3 if !d.statics.is_empty() => {
                let i = rng.below(d.statics.len() as u64) as usize;
                let name = d.statics.keys().nth(i).unwrap().clone();
                node.remove_manifest(&format!("{name}.json"));
                d.statics.remove(&name);
                round.deletes += 1;
            }
            4 | 5 if !full => {
                d.next += 1;
                let name = format!("a{}", d.next);
                api.create_pod(&api_pod(&name, node));
                d.apis.insert(name);
                round.creates += 1;
            }
            6 if !d.apis.is_empty() => {
                let i = rng.below(d.apis.len() as u64) as usize;
                let name = d.apis.iter().nth(i).unwrap();
                let _ = api.patch(
                    &format!("/api/v1/namespaces/default/pods/{name}"),
                    "application/merge-patch+json",
                    &json!({"metadata": {"labels": {"touched": round.ops.to_string()}}}),
                );
                round.updates += 1;
            }
            7 if !d.apis.is_empty() => {
                let i = rng.below(d.apis.len() as u64) as usize;
                let name = d.apis.iter().nth(i).unwrap().clone();
                let _ = api.delete(&format!("/api/v1/namespaces/default/pods/{name}"), None);
                d.apis.remove(&name);
                round.deletes += 1;
            }
            8 if !full => {
                d.next += 1;
                let name = format!("j{}", d.next);
                node.write_manifest(&format!("{name}.json"), &job_manifest(&name));
                d.jobs.insert(name);
                round.creates += 1;
            }
            8 if !d.jobs.is_empty() => {
                let name = d.jobs.iter().next().unwrap().clone();
                node.remove_manifest(&format!("{name}.json"));
                d.jobs.remove(&name);
                round.deletes += 1;
            }
            _ => round.ops -= 1, // not possible now: draw again
        }
        std::thread::sleep(Duration::from_millis(rng.below(250)));
        if rng.below(4) == 0 {
            let pid = node.daemon_pid();
            node.kill9_daemon();
            round.kills += 1;
            if let Some(holder) = lock_holder(&node.root) {
                // tinylet waits for the lock at start-up; this only shows who held it.
                eprintln!("chaos: after killing {pid}, tinylet.lock is held by {holder}");
            }
            std::thread::sleep(Duration::from_millis(rng.below(200)));
            node.start_daemon();
        }
    }
    let start = Instant::now();
    poll_until(
        Duration::from_secs(120),
        "the node to converge on the desired pods",
        || converged(node, api, &d).ok(),
        || {
            format!(
                "{}\n--- tinylet:\n{}",
                converged(node, api, &d).unwrap_err(),
                node.daemon_log_tail(40)
            )
        },
    );
    round.converged_in = start.elapsed();
    eprintln!("chaos round: {round:?}");
    assert!(
        round.ops >= ops.min(20),
        "only {} operations ran",
        round.ops
    );
    d
}

/// The process holding the root dir's lock (from /proc/locks), with its command line.
fn lock_holder(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(root.join("tinylet.lock")).ok()?.ino();
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let hit = f.iter().any(|x| x.ends_with(&format!(":{ino}")));
        hit.then(|| f.get(4).map(|p| p.to_string())).flatten()
    })?;
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    Some(format!(
        "{pid} ({}) name={} state={} ppid={}",
        String::from_utf8_lossy(&cmd).replace('\0', " "),
        field("Name:"),
        field("State:"),
        field("PPid:")
    ))
}

/// Every desired pod once, in the state it should be in; nothing else on the node.
fn converged(node: &Node, api: &ApiServer, d: &Desired) -> Result<(), String> {
    let ps = node.ps_json();
    let items = ps["items"].as_array().cloned().unwrap_or_default();
    let by_name: BTreeMap<String, &Value> = items
        .iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap_or("").to_string(), p))
        .collect();
    let mut running_ids = BTreeSet::new();
    let mut running_ips = BTreeSet::new();
    let mut all_ids = BTreeSet::new();
    let mut uids = BTreeSet::new();
    let want = |name: &str| by_name.get(name).ok_or(format!("{name}: not on the node"));
    for (name, version) in &d.statics {
        let p = want(&node.full_name(name))?;
        let env = &p["spec"]["containers"][0]["env"][0]["value"];
        if env != &json!(version.to_string()) {
            return Err(format!("{name}: runs version {env}, want {version}"));
        }
        running_ids.insert(running(p, name)?);
    }
    for name in &d.apis {
        running_ids.insert(running(want(name)?, name)?);
        let reported = api
            .pod("default", name)
            .ok_or(format!("{name}: gone from the API"))?;
        let c = &reported["status"]["containerStatuses"][0];
        if !c["state"]["running"].is_object() {
            return Err(format!("{name}: not reported running: {}", c));
        }
    }
    for name in &d.jobs {
        let p = want(&node.full_name(name))?;
        let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        if t["exitCode"] != 3 || p["status"]["phase"] != "Failed" {
            return Err(format!("{name}: exit status lost: {}", p["status"]));
        }
    }
    if items.len() != d.len() {
        let names: Vec<_> = by_name.keys().collect();
        return Err(format!(
            "{} pods on the node, want {}: {names:?}",
            items.len(),
            d.len()
        ));
    }
    for p in &items {
        uids.insert(uid(p));
        if p["status"]["phase"] == "Running" {
            let ip = p["status"]["podIP"].as_str().unwrap_or_default();
            if ip.is_empty() {
                return Err(format!(
                    "{}: running without a pod IP",
                    p["metadata"]["name"]
                ));
            }
            running_ips.insert(ip.to_string());
        }
        for c in p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(id) = c["containerID"].as_str() {
                all_ids.insert(id.trim_start_matches("runc://").to_string());
            }
        }
    }
    // API pods deleted at the API server are finished there too (tinylet's final DELETE).
    let listed = api
        .get(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            node.node_name
        ))
        .map_err(|e| format!("listing API pods: {e:?}"))?;
    let api_names: BTreeSet<String> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    if api_names != d.apis {
        return Err(format!("API pods {api_names:?}, want {:?}", d.apis));
    }
    orphans(node, &running_ids, &all_ids, &uids)?;
    // Every address handed out is held by a running pod (finished pods give theirs back).
    let allocated = cni_allocations(node);
    if allocated != running_ips {
        return Err(format!(
            "CNI allocations {allocated:?}, running pods' IPs {running_ips:?}"
        ));
    }
    Ok(())
}

/// The ID of the pod's running container ("c"), which must be the only one.
fn running(p: &Value, name: &str) -> Result<String, String> {
    let c = &p["status"]["containerStatuses"][0];
    if p["status"]["phase"] != "Running" || !c["state"]["running"].is_object() {
        return Err(format!("{name}: not running: {}", p["status"]));
    }
    Ok(c["containerID"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("runc://")
        .to_string())
}

/// Nothing on the node that no desired pod owns.
fn orphans(
    node: &Node,
    running_ids: &BTreeSet<String>,
    all_ids: &BTreeSet<String>,
    uids: &BTreeSet<String>,
) -> Result<(), String> {
    let runc: BTreeSet<String> = node.runc_list().into_iter().collect();
    if &runc != running_ids {
        return Err(format!(
            "runc has {runc:?}, running pods have {running_ids:?}"
        ));
    }
    let monitors = node
        .processes()
        .iter()
        .filter(|(_, cmd)| cmd.contains(" shim "))
        .count();
    if monitors != running_ids.len() {
        return Err(format!(
            "{monitors} monitors for {} containers",
            running_ids.len()
        ));
    }
    let names = |dir: PathBuf| -> BTreeSet<String> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let pod_dirs = names(node.root.join("pods"));
    if &pod_dirs != uids {
        return Err(format!("pod dirs {pod_dirs:?}, pods {uids:?}"));
    }
    let bundles = names(node.root.join("containers"));
    if !bundles.is_subset(all_ids) {
        return Err(format!("bundles {bundles:?}, containers {all_ids:?}"));
    }
    let cgroups = node.pod_cgroups();
    let stray: Vec<_> = cgroups
        .iter()
        .filter(|c| !uids.iter().any(|u| c.ends_with(format!("pod{u}"))))
        .collect();
    if !stray.is_empty() {
        return Err(format!("cgroups of no pod: {stray:?}"));
    }
    for m in node.mounts() {
        let owned = uids
            .iter()
            .any(|u| m.starts_with(node.root.join("pods").join(u)))
            || running_ids
                .iter()
                .any(|id| m.starts_with(node.root.join("containers").join(id)));
        if !owned && m != node.root {
            return Err(format!("a mount no pod owns: {}", m.display()));
        }
    }
    Ok(())
}

#[test]
fn kill9_chaos_ends_with_every_pod_once_and_no_orphans() {
    let ops = env_u64("TINYLET_CHAOS_OPS", 40);
    let seed = env_u64(
        "TINYLET_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    let minutes = env_u64("TINYLET_CHAOS_MINUTES", 2);
    eprintln!("chaos: {ops} operations, seed {seed} (TINYLET_CHAOS_SEED={seed} replays it)");
    let (mut node, api) = join_with_pod_network(&["--bookmark-interval=0.5"]);
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let d = chaos(&mut node, &api, &mut rng, ops, deadline);

    // Then everything goes: nothing of any pod may remain.
    for name in d.statics.keys().chain(&d.jobs) {
        node.remove_manifest(&format!("{name}.json"));
    }
    for name in &d.apis {
        let _ = api.delete(&format!("/api/v1/namespaces/default/pods/{name}"), None);
    }
    let empty = Desired::default();
    poll_until(
        Duration::from_secs(60),
        "every pod removed without a trace",
        || converged(&node, &api, &empty).ok(),
        || converged(&node, &api, &empty).unwrap_err(),
    );
    assert!(!node.daemon_log().contains("panicked"));
}

// ---- full disk, read-only root ----

/// A node whose --root-dir is a tmpfs of `size` (the image imported, the daemon running).
fn node_on_tmpfs(size: &str) -> Node {
    let mut node = Node::create();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tinylet-chaos",
        ])
        .arg(&node.root)
        .status()
        .expect("running mount");
    assert!(ok.success(), "mounting a tmpfs on {}", node.root.display());
    node.import_image();
    node.start_daemon();
    node
}

/// Fills the file system under `dir` with one file, up to ENOSPC; returns the file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).expect("creating the filler");
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

fn mount(args: &[&str], dir: &Path) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .arg(dir)
        .status()
        .expect("running mount");
    assert!(ok.success(), "{args:?} {}", dir.display());
}

/// Makes `dir` read-only for every new open, as a read-only remount would (which the files
/// tinylet and its monitors keep open for writing forbid): a read-only bind of it onto itself.
fn make_read_only(dir: &Path) {
    let d = dir.display().to_string();
    mount(&["mount", "--rbind", &d], dir);
    mount(&["mount", "-o", "remount,bind,ro"], dir);
}

/// Undoes make_read_only: the writable directory (and every mount in it) is visible again.
fn make_writable(dir: &Path) {
    mount(&["umount", "-l"], dir);
}

/// Every pod record on disk still parses (nothing was left half-written).
fn assert_records_intact(node: &Node) {
    for pod in fs::read_dir(node.root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in ["pod.json", "status.json"] {
            let p = pod.path().join(f);
            if let Ok(text) = fs::read_to_string(&p) {
                serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{} is corrupt ({e}): {text:?}", p.display()));
            }
        }
    }
}

/// Waits for `needle` in tinylet's log; returns the line.
fn wait_log(node: &Node, needle: &str) -> String {
    poll_until(
        WAIT,
        needle,
        || {
            let log = node.daemon_log();
            log.lines().find(|l| l.contains(needle)).map(str::to_string)
        },
        || node.daemon_log_tail(30),
    )
}

fn sleeper(name: &str) -> String {
    pod_manifest(name)
        .container_cmd("c", &["sleep", "100000"])
        .grace(1)
        .yaml()
}

#[test]
fn a_full_disk_fails_new_pods_clearly_and_recovers_when_space_returns() {
    let mut node = node_on_tmpfs("64m");
    node.write_manifest("before.yaml", &sleeper("before"));
    // A run-once container that exits while the disk is full.
    let exits = pod_manifest("exits")
        .container("c", "sleep 5; exit 3")
        .restart_policy("Never")
        .yaml();
    node.write_manifest("exits.yaml", &exits);
    let before = container_id(&node.wait_running("before"), "c");
    node.wait_running("exits");

    let filler = fill(&node.root);
    node.write_manifest("during.yaml", &sleeper("during"));
    // The new pod cannot be set up: a clear error, in the log and in its status, which `ps`
    // lists (its records are written with the space the disk ballast kept back).
    let line = wait_log(&node, "No space left on device");
    let during = node.wait_pod("during", "listed with why it cannot start", |p| {
        p["status"]["phase"] == "Pending"
            && cstatus(p, "c")["state"]["waiting"]["reason"] == "ContainerCreating"
            && p["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("No space left on device"))
    });
    eprintln!(
        "full disk: {line}\n{}\n{}",
        node.ps_table(),
        during["status"]
    );
    // The exit code of a container that ended on the full disk is not lost.
    node.wait_pod("exits", "its exit code 3 recorded", |p| {
        cstatus(p, "c")["state"]["terminated"]["exitCode"] == 3
    });
    assert!(node.daemon_log().contains("spent the disk ballast"));
    // A restart on a full disk: tinylet comes up and adopts the running pod.
    node.restart_daemon();
    std::thread::sleep(Duration::from_secs(2));
    assert!(node.daemon_alive(), "{}", node.daemon_log_tail(20));
    assert_eq!(node.runc_status(&before).as_deref(), Some("running"));
    assert_records_intact(&node);

    fs::remove_file(filler).unwrap();
    let during = node.wait_running("during");
    // The ballast is whole again once space returned.
    node.wait_for(WAIT, "the ballast to be whole again", |n| {
        fs::metadata(n.root.join("ballast")).is_ok_and(|m| m.len() == 1 << 20)
    });
    assert_eq!(
        container_id(&node.wait_running("before"), "c"),
        before,
        "the running pod was restarted"
    );
    assert_ne!(container_id(&during, "c"), before);
    assert_records_intact(&node);
    assert!(!node.daemon_log().contains("panicked"));
}

#[test]
fn a_read_only_root_dir_fails_clearly_and_recovers_when_writable() {
    let mut node = Node::start();
    node.write_manifest("before.yaml", &sleeper("before"));
    let before = container_id(&node.wait_running("before"), "c");

    make_read_only(&node.root);
    node.write_manifest("during.yaml", &sleeper("during"));
    let line = wait_log(&node, "Read-only file system");
    eprintln!("read-only: {line}\n{}", node.ps_table());
    std::thread::sleep(Duration::from_secs(1));
    assert!(node.daemon_alive(), "{}", node.daemon_log_tail(20));
    assert_eq!(node.runc_status(&before).as_deref(), Some("running"));

    make_writable(&node.root);
    node.wait_running("during");
    assert_eq!(container_id(&node.wait_running("before"), "c"), before);
    assert_records_intact(&node);
    assert!(!node.daemon_log().contains("panicked"));
}

//! Pod-level cgroups on cgroup v1 and v2, in the kubelet's QoS layout (cgroupfs driver):
//! `<cgroup-root>/kubepods/pod<UID>` for Guaranteed pods, `kubepods/burstable/pod<UID>` and
//! `kubepods/besteffort/pod<UID>` for the others. Container cgroups are children of the pod's
//! and are created by runc from the OCI spec's `cgroupsPath`.
//!
//! The QoS-level cgroups get the kubelet's cpu.shares: 2 for besteffort, and for burstable the
//! sum of its pods' shares (their cpu requests), recomputed from the pod cgroups on disk each
//! time a pod cgroup is made or removed — the kubelet also recounts on its periodic sync; a
//! change by two pods at the same instant is corrected by the next one. `kubepods` itself
//! gets the node's CPU capacity in shares.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// v1 controllers tinylet creates pod cgroups in (cpuset is left to runc, which fills in
/// cpus/mems for the parents it creates).
const V1_CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "pids", "blkio", "freezer", "devices",
];
/// Every hierarchy a pod cgroup may appear in, for removal. "unified" is the cgroup2 mount of a
/// hybrid host, where runc also creates the container's cgroups (and so their parents).
const V1_ALL: &[&str] = &[
    "memory",
    "cpu",
    "cpuacct",
    "pids",
    "blkio",
    "freezer",
    "devices",
    "cpuset",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "systemd",
    "rdma",
    "misc",
    "unified",
];

const CFS_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Hierarchy {
    /// One mount per controller under the base (`/sys/fs/cgroup/<controller>`).
    V1 { base: PathBuf },
    /// The unified hierarchy mounted at `mount`.
    V2 { mount: PathBuf },
}

/// The limits tinylet sets, already converted from Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    /// pids.max; None leaves the controller's default (unlimited).
    pub pids: Option<u64>,
}

/// The parent of a pod's cgroup under `kubepods`, by QoS class ("" for Guaranteed).
pub fn qos_dir(qos_class: &str) -> &'static str {
    match qos_class {
        "Guaranteed" => "",
        "Burstable" => "burstable",
        _ => "besteffort",
    }
}

/// `<cgroup-root>/kubepods[/<qos>]/pod<uid>`.
pub fn pod_cgroup_path(cgroup_root: &str, qos_class: &str, uid: &str) -> String {
    let base = format!("{}/kubepods", cgroup_root.trim_end_matches('/'));
    match qos_dir(qos_class) {
        "" => format!("{}/pod{}", base, uid),
        q => format!("{}/{}/pod{}", base, q, uid),
    }
}

/// The kubelet's MinShares: the cpu.shares of BestEffort.
const MIN_SHARES: u64 = 2;

impl Hierarchy {
    /// Finds the hierarchy the host uses: v2 when /sys/fs/cgroup is cgroup2, else v1.
    pub fn detect() -> Hierarchy {
        let base = PathBuf::from("/sys/fs/cgroup");
        if base.join("cgroup.controllers").exists() {
            Hierarchy::V2 { mount: base }
        } else {
            Hierarchy::V1 { base }
        }
    }

    /// The directories holding `cgroup` (an absolute cgroup path like `/kubepods/pod<uid>`).
    fn dirs(&self, cgroup: &str, controllers: &[&str]) -> Vec<PathBuf> {
        let rel = cgroup.trim_start_matches('/');
        match self {
            Hierarchy::V1 { base } => controllers
                .iter()
                .map(|c| base.join(c))
                .filter(|d| d.is_dir())
                .map(|d| d.join(rel))
                .collect(),
            Hierarchy::V2 { mount } => vec![mount.join(rel)],
        }
    }

    /// Makes the QoS-level cgroups under `<cgroup_root>/kubepods` with their cpu.shares, as the
    /// kubelet's QoS container manager does once at start-up: kubepods gets the node's CPUs,
    /// besteffort MinShares, burstable the sum of its pods'.
    pub fn ensure_qos(&self, cgroup_root: &str) -> io::Result<()> {
        let kubepods = format!("{}/kubepods", cgroup_root.trim_end_matches('/'));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        self.create(
            &kubepods,
            &Limits {
                cpu_request_millis: Some(cpus * 1000),
                ..Default::default()
            },
        )?;
        self.create(&format!("{}/burstable", kubepods), &Limits::default())?;
        self.create(
            &format!("{}/besteffort", kubepods),
            &Limits {
                cpu_request_millis: Some(0),
                ..Default::default()
            },
        )?;
        self.update_burstable_shares(&kubepods);
        Ok(())
    }

    /// Makes the pod cgroup with its limits (`pod_cgroup_path`). The QoS-level cgroups are made
    /// first when `qos_ready` says they were not made yet by this agent, or when they are found
    /// gone (removed by hand): about 70 cgroupfs calls saved on every other pod start.
    pub fn create_pod(
        &self,
        cgroup_root: &str,
        pod_cgroup: &str,
        limits: &Limits,
        qos_ready: &AtomicBool,
    ) -> io::Result<()> {
        if !qos_ready.load(Ordering::Acquire) {
            self.ensure_qos(cgroup_root)?;
            qos_ready.store(true, Ordering::Release);
        }
        match self.create_in_existing_parent(pod_cgroup, limits) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_qos(cgroup_root)?;
                self.create(pod_cgroup, limits)?;
            }
            r => r?,
        }
        // Only a Burstable pod changes the burstable sum.
        let kubepods = format!("{}/kubepods", cgroup_root.trim_end_matches('/'));
        if pod_cgroup.starts_with(&format!("{}/burstable/", kubepods)) {
            self.update_burstable_shares(&kubepods);
        }
        Ok(())
    }

    /// `create` for a cgroup whose parent exists: NotFound when it does not (v1; on v2 the
    /// parents are made, as `create` does).
    fn create_in_existing_parent(&self, cgroup: &str, limits: &Limits) -> io::Result<()> {
        let Hierarchy::V1 { .. } = self else {
            return self.create(cgroup, limits);
        };
        for dir in self.dirs(cgroup, V1_CONTROLLERS) {
            match fs::create_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(ctx(e, "creating cgroup", &dir))
                }
                _ => {}
            }
        }
        self.apply_limits(cgroup, limits)
    }

    /// Removes a pod cgroup made by `create_pod` and recounts the burstable shares.
    pub fn remove_pod(&self, cgroup_root: &str, pod_cgroup: &str) -> io::Result<()> {
        self.remove(pod_cgroup)?;
        self.update_burstable_shares(&format!("{}/kubepods", cgroup_root.trim_end_matches('/')));
        Ok(())
    }

    /// burstable's cpu.shares = the sum of its pods' (at least MinShares). Best effort: a
    /// failure only leaves the previous value.
    fn update_burstable_shares(&self, kubepods: &str) {
        let burstable = format!("{}/burstable", kubepods);
        let (controller, file) = match self {
            Hierarchy::V1 { .. } => ("cpu", "cpu.shares"),
            Hierarchy::V2 { .. } => ("", "cpu.weight"),
        };
        let Some(dir) = self.dirs(&burstable, &[controller]).into_iter().next() else {
            return;
        };
        let mut total = 0u64;
        for pod in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !pod.file_name().to_string_lossy().starts_with("pod") {
                continue;
            }
            let Some(v) = fs::read_to_string(pod.path().join(file))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            else {
                continue;
            };
            total += match self {
                Hierarchy::V1 { .. } => v,
                Hierarchy::V2 { .. } => weight_to_shares(v),
            };
        }
        let shares = total.clamp(MIN_SHARES, 262_144);
        let value = match self {
            Hierarchy::V1 { .. } => shares,
            Hierarchy::V2 { .. } => shares_to_weight(shares),
        };
        if let Err(e) = fs::write(dir.join(file), value.to_string()) {
            log::debug!("cgroup {}: setting {}: {}", burstable, file, e);
        }
    }

    /// Creates a cgroup and applies the limits.
    pub fn create(&self, cgroup: &str, limits: &Limits) -> io::Result<()> {
        if let Hierarchy::V2 { mount } = self {
            enable_v2_controllers(mount, cgroup)?;
        }
        for dir in self.dirs(cgroup, V1_CONTROLLERS) {
            fs::create_dir_all(&dir).map_err(|e| ctx(e, "creating cgroup", &dir))?;
        }
        self.apply_limits(cgroup, limits)
    }

    fn apply_limits(&self, cgroup: &str, limits: &Limits) -> io::Result<()> {
        for (file, value) in self.limit_files(limits) {
            for dir in self.dirs(cgroup, &[file.0]) {
                let path = dir.join(file.1);
                fs::write(&path, &value)
                    .map_err(|e| ctx(e, &format!("writing {:?} to", value), &path))?;
            }
        }
        Ok(())
    }

    /// (controller, file) -> value for each limit that is set.
    fn limit_files(&self, l: &Limits) -> Vec<((&'static str, &'static str), String)> {
        let mut out = Vec::new();
        match self {
            Hierarchy::V1 { .. } => {
                if let Some(m) = l.memory_bytes {
                    out.push((("memory", "memory.limit_in_bytes"), m.to_string()));
                }
                if let Some(c) = l.cpu_limit_millis {
                    out.push((("cpu", "cpu.cfs_period_us"), CFS_PERIOD_US.to_string()));
                    out.push((("cpu", "cpu.cfs_quota_us"), cpu_quota(c).to_string()));
                }
                if let Some(r) = l.cpu_request_millis {
                    out.push((("cpu", "cpu.shares"), cpu_shares(r).to_string()));
                }
                if let Some(p) = l.pids {
                    out.push((("pids", "pids.max"), p.to_string()));
                }
            }
            Hierarchy::V2 { .. } => {
                if let Some(m) = l.memory_bytes {
                    out.push((("", "memory.max"), m.to_string()));
                }
                if let Some(c) = l.cpu_limit_millis {
                    out.push((
                        ("", "cpu.max"),
                        format!("{} {}", cpu_quota(c), CFS_PERIOD_US),
                    ));
                }
                if let Some(r) = l.cpu_request_millis {
                    out.push((
                        ("", "cpu.weight"),
                        shares_to_weight(cpu_shares(r)).to_string(),
                    ));
                }
                if let Some(p) = l.pids {
                    out.push((("", "pids.max"), p.to_string()));
                }
            }
        }
        out
    }

    /// Removes the pod cgroup everywhere it exists. Fails while processes remain in it.
    pub fn remove(&self, cgroup: &str) -> io::Result<()> {
        self.reclaim(cgroup);
        for dir in self.dirs(cgroup, V1_ALL) {
            remove_tree(&dir)?;
        }
        Ok(())
    }

    /// Drops the page cache charged to an emptied cgroup before it is removed. Without it the
    /// kernel keeps a removed memory cgroup alive ("dying") for as long as any page it was
    /// charged for stays cached: a crash-looping container leaves hundreds of them behind,
    /// which costs memory and slows every later cgroup operation. Best effort.
    pub fn reclaim(&self, cgroup: &str) {
        match self {
            Hierarchy::V1 { .. } => {
                for dir in self.dirs(cgroup, &["memory"]) {
                    let _ = write_existing(&dir.join("memory.force_empty"), "0");
                }
            }
            Hierarchy::V2 { .. } => {
                for dir in self.dirs(cgroup, &[]) {
                    let _ = write_existing(&dir.join("memory.reclaim"), "1G");
                }
            }
        }
    }

    /// How many times the kernel's OOM killer fired in `cgroup` (v1 memory.oom_control, v2 memory.events).
    pub fn oom_kills(&self, cgroup: &str) -> u64 {
        let (dirs, file) = match self {
            Hierarchy::V1 { .. } => (self.dirs(cgroup, &["memory"]), "memory.oom_control"),
            Hierarchy::V2 { .. } => (self.dirs(cgroup, &[]), "memory.events"),
        };
        dirs.iter()
            .filter_map(|d| fs::read_to_string(d.join(file)).ok())
            .map(|text| parse_oom_kill(&text))
            .max()
            .unwrap_or(0)
    }
}

/// Writes an interface file that must already exist (cgroupfs never creates files on write).
fn write_existing(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

/// Millicores to a CFS quota per 100 ms period (the kubelet's MilliCPUToQuota, min 1 ms).
pub fn cpu_quota(millis: u64) -> u64 {
    (millis * CFS_PERIOD_US / 1000).max(1000)
}

/// Millicores to cpu.shares (the kubelet's MilliCPUToShares: 1024 per core, min 2).
pub fn cpu_shares(millis: u64) -> u64 {
    (millis * 1024 / 1000).clamp(2, 262_144)
}

/// cgroup v2 weight from v1 shares, the conversion runc and the kubelet use.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.saturating_sub(2)) * 9999) / 262_142
}

/// The least shares `shares_to_weight` maps to `weight` (to sum the burstable pods' weights
/// as shares; the conversion is lossy, so the sum is approximate on v2).
pub fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.saturating_sub(1) * 262_142).div_ceil(9999)
}

/// On v2 a child only gets a controller when every ancestor delegates it in cgroup.subtree_control.
fn enable_v2_controllers(mount: &Path, cgroup: &str) -> io::Result<()> {
    let available = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<&str> = ["cpu", "memory", "pids", "io"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    let mut dir = mount.to_path_buf();
    for part in cgroup
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
    {
        let control = dir.join("cgroup.subtree_control");
        for c in &wanted {
            // Best effort: the root may refuse while it holds processes ("no internal processes").
            let _ = fs::write(&control, format!("+{}", c));
        }
        dir = dir.join(part);
        fs::create_dir_all(&dir).map_err(|e| ctx(e, "creating cgroup", &dir))?;
    }
    Ok(())
}

/// rmdir the tree bottom-up (cgroup directories cannot be removed recursively).
fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx(e, "reading cgroup", dir)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    // A cgroup whose last process just exited may be busy for a moment.
    let mut last = None;
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(ctx(
        last.unwrap_or_else(|| io::Error::other("busy")),
        "removing cgroup",
        dir,
    ))
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{} {}: {}", what, path.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_match_kubelet() {
        assert_eq!(cpu_quota(500), 50_000);
        assert_eq!(cpu_quota(1), 1000);
        assert_eq!(cpu_shares(100), 102);
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn paths_and_limit_files_per_version() {
        let v1 = Hierarchy::V1 {
            base: PathBuf::from("/nonexistent-cg"),
        };
        let v2 = Hierarchy::V2 {
            mount: PathBuf::from("/nonexistent-cg2"),
        };
        let l = Limits {
            memory_bytes: Some(64 << 20),
            cpu_limit_millis: Some(250),
            cpu_request_millis: Some(100),
            pids: Some(64),
        };
        let f1 = v1.limit_files(&l);
        assert!(f1.contains(&(("pids", "pids.max"), "64".into())));
        assert!(f1.contains(&(("memory", "memory.limit_in_bytes"), "67108864".into())));
        assert!(f1.contains(&(("cpu", "cpu.cfs_quota_us"), "25000".into())));
        assert!(f1.contains(&(("cpu", "cpu.shares"), "102".into())));
        let f2 = v2.limit_files(&l);
        assert!(f2.contains(&(("", "memory.max"), "67108864".into())));
        assert!(f2.contains(&(("", "cpu.max"), "25000 100000".into())));
        assert!(f2.contains(&(("", "cpu.weight"), "4".into())));
        assert!(f2.contains(&(("", "pids.max"), "64".into())));
        assert_eq!(
            v2.dirs("/kubepods/podx", &[]),
            vec![PathBuf::from("/nonexistent-cg2/kubepods/podx")]
        );
        // v1 only lists hierarchies that are mounted.
        assert!(v1.dirs("/kubepods/podx", V1_ALL).is_empty());
    }

    #[test]
    fn oom_kill_counter_parsing() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            3
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n"),
            1
        );
        assert_eq!(parse_oom_kill(""), 0);
    }

    #[test]
    fn qos_layout_paths() {
        assert_eq!(pod_cgroup_path("/", "Guaranteed", "u1"), "/kubepods/podu1");
        assert_eq!(
            pod_cgroup_path("/edge/", "Burstable", "u1"),
            "/edge/kubepods/burstable/podu1"
        );
        assert_eq!(
            pod_cgroup_path("/", "BestEffort", "u1"),
            "/kubepods/besteffort/podu1"
        );
        for w in [1, 39, 100, 10_000] {
            assert_eq!(shares_to_weight(weight_to_shares(w)), w);
        }
        assert_eq!(weight_to_shares(1), 2);
    }

    #[test]
    fn v2_qos_cgroups_on_a_fake_mount() {
        let mount = std::env::temp_dir().join(format!("tinylet-cg2q-{}", std::process::id()));
        fs::create_dir_all(&mount).unwrap();
        fs::write(mount.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let h = Hierarchy::V2 {
            mount: mount.clone(),
        };
        let read = |p: &str| fs::read_to_string(mount.join(p)).unwrap();
        let ready = AtomicBool::new(false);
        let burstable = |uid: &str, millis: u64| {
            h.create_pod(
                "/",
                &pod_cgroup_path("/", "Burstable", uid),
                &Limits {
                    cpu_request_millis: Some(millis),
                    pids: Some(100),
                    ..Default::default()
                },
                &ready,
            )
            .unwrap()
        };
        burstable("a", 1000);
        assert_eq!(read("kubepods/besteffort/cpu.weight"), "1");
        assert_eq!(read("kubepods/burstable/poda/pids.max"), "100");
        assert_eq!(
            read("kubepods/burstable/cpu.weight"),
            read("kubepods/burstable/poda/cpu.weight")
        );
        burstable("b", 1000);
        let two = weight_to_shares(read("kubepods/burstable/cpu.weight").parse().unwrap());
        assert!((1950..=2100).contains(&two), "{}", two);
        fs::remove_dir_all(&mount).unwrap();
    }

    #[test]
    fn v1_qos_cgroups_made_once_and_again_when_gone() {
        let base = std::env::temp_dir().join(format!("tinylet-cg1q-{}", std::process::id()));
        for c in V1_CONTROLLERS {
            fs::create_dir_all(base.join(c)).unwrap();
        }
        let h = Hierarchy::V1 { base: base.clone() };
        let read = |p: &str| fs::read_to_string(base.join(p)).unwrap();
        let ready = AtomicBool::new(false);
        let best_effort = Limits {
            cpu_request_millis: Some(0),
            ..Default::default()
        };
        let make = |qos: &str, pod: &str, limits: &Limits| {
            h.create_pod("/", &pod_cgroup_path("/", qos, pod), limits, &ready)
                .unwrap()
        };
        make("BestEffort", "a", &best_effort);
        assert!(ready.load(Ordering::Acquire));
        assert_eq!(read("cpu/kubepods/besteffort/cpu.shares"), "2");
        assert_eq!(read("cpu/kubepods/burstable/cpu.shares"), "2");
        assert!(base.join("memory/kubepods/besteffort/poda").is_dir());
        // Once made, the QoS level is not written again for the next pod...
        fs::write(base.join("cpu/kubepods/besteffort/cpu.shares"), "7").unwrap();
        make("BestEffort", "b", &best_effort);
        assert_eq!(read("cpu/kubepods/besteffort/cpu.shares"), "7");
        assert!(base.join("pids/kubepods/besteffort/podb").is_dir());
        // ...unless it is gone: then it is made again, with its shares.
        for c in V1_CONTROLLERS {
            fs::remove_dir_all(base.join(c).join("kubepods/besteffort")).unwrap();
        }
        make("BestEffort", "c", &best_effort);
        assert_eq!(read("cpu/kubepods/besteffort/cpu.shares"), "2");
        assert!(base.join("devices/kubepods/besteffort/podc").is_dir());
        // A Burstable pod is counted in burstable's shares.
        let burstable = Limits {
            cpu_request_millis: Some(1000),
            ..Default::default()
        };
        make("Burstable", "d", &burstable);
        assert_eq!(read("cpu/kubepods/burstable/cpu.shares"), "1024");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn v2_tree_on_a_fake_mount() {
        let mount = std::env::temp_dir().join(format!("tinylet-cg2-{}", std::process::id()));
        fs::create_dir_all(&mount).unwrap();
        fs::write(mount.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let h = Hierarchy::V2 {
            mount: mount.clone(),
        };
        h.create(
            "/kubepods/podabc",
            &Limits {
                memory_bytes: Some(1000),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(mount.join("kubepods/podabc/memory.max")).unwrap(),
            "1000"
        );
        // On a real cgroupfs the interface files vanish with the directory; here remove them first.
        fs::remove_file(mount.join("kubepods/podabc/memory.max")).unwrap();
        fs::remove_file(mount.join("kubepods/cgroup.subtree_control")).ok();
        h.remove("/kubepods/podabc").unwrap();
        assert!(!mount.join("kubepods/podabc").exists());
        fs::remove_dir_all(&mount).unwrap();
    }
}

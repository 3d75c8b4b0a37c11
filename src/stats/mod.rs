//! Resource usage of the node, its pods and their containers, for the kubelet's read endpoints:
//! the Summary API (`/stats/summary`, what metrics-server reads), `/metrics` and
//! `/metrics/resource` (Prometheus text), and `tinylet stats`.
//!
//! Everything is read from cgroupfs, /proc and the filesystems at the moment of a scrape, except
//! CPU rates: `usageNanoCores` needs two readings of a cumulative counter, so the last reading of
//! every cgroup is kept with its time (as cAdvisor does), refreshed by each scrape and by a
//! sampler thread every 10 s (the kubelet's housekeeping interval). A scrape therefore costs a
//! few small file reads per container and no waiting. Directory sizes (rootfs, logs, volumes)
//! are walked with a bound and cached for `fs_ttl`.

pub mod cgroup;
pub mod host;
mod inventory;
pub mod prometheus;
pub mod summary;

use crate::runtime::cgroups::Hierarchy;
use cgroup::{Memory, Usage};
use host::{FsInfo, Interface};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the HTTPS server calls for its read endpoints.
pub trait StatsSource: Send + Sync {
    /// The Summary API document (`stats/v1alpha1` Summary).
    fn summary(&self) -> Result<serde_json::Value, String>;
    /// `/metrics`: the agent's own metrics and the cAdvisor-style per-container ones.
    fn metrics(&self) -> String;
    /// `/metrics/resource`: the kubelet's resource metrics (CPU, memory working set).
    fn metrics_resource(&self) -> String;
}

/// The shortest window a CPU rate is computed over: two readings closer than this would make a
/// noisy rate, so the previous rate is kept instead.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);
/// The sampler's period: the kubelet's housekeeping interval.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(10);
/// Entries the walk of one directory (a volume, a rootfs' upper dir) looks at, at most.
const DU_MAX_ENTRIES: usize = 100_000;

/// Where to find what the stats are read from.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub root_dir: PathBuf,
    pub pod_log_dir: PathBuf,
    pub cgroups: Hierarchy,
    /// `--cgroup-root`, for the `kubepods` cgroup (the "pods" system container); None when
    /// unknown (the CLI without --cgroup-root).
    pub cgroup_root: Option<String>,
    /// How long a directory's measured size is reused.
    pub fs_ttl: Duration,
}

pub struct Stats {
    cfg: Config,
    cpu: Mutex<HashMap<String, CpuSample>>,
    fs: Mutex<HashMap<PathBuf, Measured>>,
    inventory: inventory::Cache,
    boot_time: u64,
    /// Pods evicted by this agent, per eviction signal (`kubelet_evictions`).
    evictions: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// A directory's (bytes, inodes) and when they were measured.
type Measured = (Instant, (u64, u64));

#[derive(Clone, Copy)]
struct CpuSample {
    ns: u64,
    at: Instant,
    nanocores: Option<u64>,
}

/// One reading of everything, shared by the Summary and the Prometheus renderings.
pub struct Snapshot {
    /// Unix time of the reading.
    pub at: Duration,
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

pub struct NodeStats {
    pub name: String,
    pub boot_time: u64,
    pub cpu_ns: Option<u64>,
    pub nanocores: Option<u64>,
    pub memory: Option<Memory>,
    pub memory_capacity: u64,
    /// capacity - working set, as the kubelet's memory.available.
    pub memory_available: Option<u64>,
    pub fs: Option<FsInfo>,
    pub imagefs: Option<FsInfo>,
    /// Bytes the image store uses.
    pub images_used: Option<u64>,
    pub interfaces: Vec<Interface>,
    pub processes: u64,
    pub pid_max: u64,
    /// The `kubepods` cgroup (the kubelet's "pods" system container), when --cgroup-root is
    /// known, with its CPU rate.
    pub pods_cgroup: Option<(Usage, Option<u64>)>,
}

pub struct PodStats {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub start_time: Option<String>,
    pub is_static: bool,
    pub object: Arc<serde_json::Value>,
    pub usage: Usage,
    pub nanocores: Option<u64>,
    /// None for reads without filesystem and network (metrics_resource).
    pub interfaces: Option<Vec<Interface>>,
    pub containers: Vec<ContainerStats>,
    /// (volume name, bytes, inodes) of the pod's volume directories.
    pub volumes: Vec<(String, u64, u64)>,
    /// Bytes of local ephemeral storage: rootfs writes, logs, disk-backed ephemeral volumes.
    pub ephemeral_bytes: Option<(u64, u64)>,
}

pub struct ContainerStats {
    pub name: String,
    pub id: String,
    pub started_at: String,
    pub usage: Usage,
    pub nanocores: Option<u64>,
    /// (bytes, inodes) written to the container's rootfs, and of its logs.
    pub rootfs: Option<(u64, u64)>,
    pub logs: Option<(u64, u64)>,
}

impl Stats {
    pub fn new(cfg: Config) -> Stats {
        Stats {
            boot_time: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| host::boot_time(&t))
                .unwrap_or(0),
            cfg,
            cpu: Mutex::new(HashMap::new()),
            fs: Mutex::new(HashMap::new()),
            inventory: Default::default(),
            evictions: Default::default(),
        }
    }

    /// Counts an eviction for `kubelet_evictions{eviction_signal}`.
    pub fn count_eviction(&self, signal: &'static str) {
        if let Ok(mut m) = self.evictions.lock() {
            *m.entry(signal).or_default() += 1;
        }
    }

    /// Starts the thread that reads every cgroup's CPU counter each `period`, so that a rate
    /// is at hand whenever a scrape comes.
    pub fn start_sampler(self: &Arc<Self>, period: Duration) -> Result<(), String> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("stats-sampler".into())
            .stack_size(256 * 1024)
            .spawn(move || loop {
                me.snapshot(false);
                std::thread::sleep(period);
            })
            .map(drop)
            .map_err(|e| format!("starting the stats sampler: {}", e))
    }

    /// CPU rate of `key` from its previous reading, updating the kept reading.
    fn rate(&self, key: &str, ns: Option<u64>, now: Instant) -> Option<u64> {
        let ns = ns?;
        let mut m = self.cpu.lock().ok()?;
        let fresh = CpuSample {
            ns,
            at: now,
            nanocores: None,
        };
        let s = m.entry(key.to_string()).or_insert(fresh);
        let dt = now.saturating_duration_since(s.at);
        if ns < s.ns {
            // A new cgroup under an old name (a restarted container's pod): start over.
            *s = fresh;
        } else if dt >= MIN_RATE_WINDOW {
            s.nanocores = Some(((ns - s.ns) as u128 * 1_000_000_000 / dt.as_nanos()) as u64);
            s.ns = ns;
            s.at = now;
        }
        s.nanocores
    }

    /// (bytes, inodes) under `dir`, measured at most once per `fs_ttl`.
    fn du(&self, dir: &Path) -> Option<(u64, u64)> {
        let now = Instant::now();
        if let Some((at, v)) = self.fs.lock().ok()?.get(dir).copied() {
            if now.saturating_duration_since(at) < self.cfg.fs_ttl {
                return Some(v);
            }
        }
        let v = host::disk_usage(dir, DU_MAX_ENTRIES)?;
        self.fs.lock().ok()?.insert(dir.to_path_buf(), (now, v));
        Some(v)
    }

    /// Reads everything; `full` adds filesystems and networks (the Summary), which the
    /// resource metrics and the sampler do without.
    pub fn snapshot(&self, full: bool) -> Snapshot {
        let now = Instant::now();
        let at = crate::clock::now_unix();
        let h = &self.cfg.cgroups;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let capacity = host::meminfo(&meminfo, "MemTotal").unwrap_or(0);
        let root = cgroup::read(h, "/");
        let cpu_ns = root.cpu_ns.or_else(|| {
            std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| host::proc_stat_cpu_ns(&t))
        });
        // The kubelet's node memory is the root cgroup's. On cgroup v2 the root has no
        // memory.current: /proc/meminfo gives the same figures (used = total - free, working
        // set = used - inactive file pages).
        let memory = root.memory.or_else(|| {
            let f = |k| host::meminfo(&meminfo, k);
            let usage = capacity.saturating_sub(f("MemFree")?);
            Some(Memory {
                usage,
                working_set: usage.saturating_sub(f("Inactive(file)").unwrap_or(0)),
                rss: f("AnonPages").unwrap_or(0),
                ..Default::default()
            })
        });
        let (processes, pid_max) = host::processes();
        let images = self.cfg.root_dir.join("images");
        let pods_cgroup = self.cfg.cgroup_root.as_deref().map(|r| {
            let cg = format!("{}/kubepods", r.trim_end_matches('/'));
            let u = cgroup::read(h, &cg);
            let rate = self.rate(&cg, u.cpu_ns, now);
            (u, rate)
        });
        let node = NodeStats {
            pods_cgroup,
            name: self.cfg.node_name.clone(),
            boot_time: self.boot_time,
            nanocores: self.rate("/", cpu_ns, now),
            cpu_ns,
            memory_available: memory.map(|m| capacity.saturating_sub(m.working_set)),
            memory,
            memory_capacity: capacity,
            fs: host::statvfs(&self.cfg.root_dir),
            imagefs: host::statvfs(if images.is_dir() {
                &images
            } else {
                &self.cfg.root_dir
            }),
            images_used: if full {
                self.du(&images).map(|v| v.0)
            } else {
                None
            },
            interfaces: if full {
                host::net_dev(&std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default())
            } else {
                Vec::new()
            },
            processes,
            pid_max,
        };
        let mut pods = Vec::new();
        for p in self
            .inventory
            .pods(&self.cfg.root_dir, self.cfg.cgroup_root.as_deref())
        {
            if p.containers.is_empty() {
                continue;
            }
            let usage = p
                .cgroup
                .as_deref()
                .map(|c| cgroup::read(h, c))
                .unwrap_or_default();
            let nanocores = p
                .cgroup
                .as_deref()
                .and_then(|c| self.rate(c, usage.cpu_ns, now));
            let log_dir = self
                .cfg
                .pod_log_dir
                .join(format!("{}_{}_{}", p.namespace, p.name, p.uid));
            let containers: Vec<ContainerStats> = p
                .containers
                .iter()
                .map(|c| {
                    let usage = cgroup::read(h, &c.cgroup);
                    let bundle = self.cfg.root_dir.join("containers").join(&c.id);
                    ContainerStats {
                        name: c.name.clone(),
                        id: c.id.clone(),
                        started_at: c.started_at.clone(),
                        nanocores: self.rate(&c.cgroup, usage.cpu_ns, now),
                        usage,
                        rootfs: full.then(|| self.du(&bundle.join("upper"))).flatten(),
                        logs: full.then(|| self.du(&log_dir.join(&c.name))).flatten(),
                    }
                })
                .collect();
            let (volumes, interfaces, ephemeral) = if full {
                let volumes = self.volumes(&p);
                let interfaces = p.containers.iter().find_map(|c| {
                    std::fs::read_to_string(format!("/proc/{}/net/dev", c.pid))
                        .ok()
                        .map(|t| host::net_dev(&t))
                });
                let ephemeral = ephemeral_storage(&p.object, &containers, &volumes);
                (volumes, interfaces, Some(ephemeral))
            } else {
                (Vec::new(), None, None)
            };
            pods.push(PodStats {
                name: p.name,
                namespace: p.namespace,
                uid: p.uid,
                start_time: p.start_time,
                is_static: p.is_static,
                object: p.object,
                usage,
                nanocores,
                interfaces,
                containers,
                volumes,
                ephemeral_bytes: ephemeral,
            });
        }
        self.forget_gone(now);
        Snapshot { at, node, pods }
    }

    fn volumes(&self, p: &inventory::PodInfo) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for v in p.object["spec"]["volumes"].as_array().into_iter().flatten() {
            let Some(name) = v["name"].as_str() else {
                continue;
            };
            // hostPath volumes are the node's, not the pod's.
            if v.get("hostPath").is_some() || name.contains('/') {
                continue;
            }
            if let Some((bytes, inodes)) = self.du(&p.dir.join("volumes").join(name)) {
                out.push((name.to_string(), bytes, inodes));
            }
        }
        out
    }

    /// Drops the CPU readings of cgroups not read for a while (pods gone).
    fn forget_gone(&self, now: Instant) {
        if let Ok(mut m) = self.cpu.lock() {
            m.retain(|_, s| now.saturating_duration_since(s.at) < SAMPLE_PERIOD * 6);
        }
        if let Ok(mut m) = self.fs.lock() {
            let ttl = self.cfg.fs_ttl.max(SAMPLE_PERIOD) * 6;
            m.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        }
    }
}

/// The pod's local ephemeral storage as the kubelet counts it: what its containers wrote to
/// their root filesystems, their logs, and its disk-backed emptyDir, configMap and downwardAPI
/// volumes (memory-backed emptyDirs are memory; secrets and service-account tokens are tmpfs
/// in the kubelet's layout).
fn ephemeral_storage(
    pod: &serde_json::Value,
    containers: &[ContainerStats],
    volumes: &[(String, u64, u64)],
) -> (u64, u64) {
    let mut sum = (0u64, 0u64);
    for c in containers {
        for (b, i) in [c.rootfs, c.logs].into_iter().flatten() {
            sum.0 += b;
            sum.1 += i;
        }
    }
    for (name, b, i) in volumes {
        let spec = pod["spec"]["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name.as_str()));
        let local = spec.is_some_and(|v| {
            (v.get("emptyDir").is_some() && v["emptyDir"]["medium"] != "Memory")
                || v.get("configMap").is_some()
                || v.get("downwardAPI").is_some()
        });
        if local {
            sum.0 += b;
            sum.1 += i;
        }
    }
    sum
}

impl StatsSource for Stats {
    fn summary(&self) -> Result<serde_json::Value, String> {
        Ok(summary::render(&self.snapshot(true)))
    }
    fn metrics(&self) -> String {
        let evictions = self.evictions.lock().map(|m| m.clone()).unwrap_or_default();
        prometheus::metrics(&self.snapshot(true), &evictions)
    }
    fn metrics_resource(&self) -> String {
        prometheus::resource(&self.snapshot(false))
    }
}

//! Node-pressure eviction, as the kubelet's eviction manager does it with hard thresholds:
//! every monitoring period the node's signals (memory.available = capacity - working set of
//! the root cgroup, nodefs/imagefs free space and inodes, free PIDs) are compared with the
//! thresholds; a met threshold sets its node condition (MemoryPressure, DiskPressure,
//! PIDPressure, held for the pressure transition period after it clears), node-level
//! resources are reclaimed first (unused images under disk pressure), and if the threshold is
//! still met one pod is evicted: the pod worker stops it and reports it Failed with reason
//! `Evicted`. Critical pods (static pods, priority >= system-cluster-critical... as
//! `IsCriticalPod`) are never evicted.

pub mod thresholds;

use super::{Context, Event};
use crate::stats::{PodStats, Snapshot, Stats};
use std::collections::HashSet;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thresholds::{Condition, Signal, Threshold};

/// The kubelet's SystemCriticalPriority: pods at or above it are never evicted.
const SYSTEM_CRITICAL_PRIORITY: i64 = 2_000_000_000;

#[derive(Debug, Clone)]
pub struct Settings {
    pub thresholds: Vec<Threshold>,
    /// How often the signals are looked at (the kubelet's 10 s housekeeping).
    pub period: Duration,
    /// `--eviction-pressure-transition-period`: how long a condition stays after its
    /// threshold cleared, so it does not flap.
    pub transition: Duration,
    /// imageMinimumGCAge: images younger than this survive the reclaim under disk pressure.
    pub image_min_age: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            thresholds: thresholds::defaults(),
            period: Duration::from_secs(10),
            transition: Duration::from_secs(5 * 60),
            image_min_age: Duration::from_secs(2 * 60),
        }
    }
}

/// The pressure conditions, shared by the monitor (writer) and the node status (reader).
#[derive(Debug, Default)]
pub struct NodePressure {
    /// When each condition's threshold was last seen met: [memory, disk, pid].
    last_met: Mutex<[Option<Instant>; 3]>,
    settings: Mutex<Settings>,
}

/// What the Node's pressure conditions say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

fn slot(c: Condition) -> usize {
    match c {
        Condition::Memory => 0,
        Condition::Disk => 1,
        Condition::Pid => 2,
    }
}

impl NodePressure {
    pub fn new(settings: Settings) -> NodePressure {
        NodePressure {
            last_met: Mutex::new([None; 3]),
            settings: Mutex::new(settings),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn get(&self) -> Pressure {
        let transition = self.settings().transition;
        let last = self.last_met.lock().map(|l| *l).unwrap_or_default();
        let on = |i: usize| last[i].is_some_and(|t| t.elapsed() < transition);
        Pressure {
            memory: on(0),
            disk: on(1),
            pid: on(2),
        }
    }

    fn met(&self, c: Condition, at: Instant) {
        if let Ok(mut l) = self.last_met.lock() {
            l[slot(c)] = Some(at);
        }
    }

    /// The hard threshold of `signal` in bytes for a capacity (allocatable = capacity - this).
    pub fn reserved(&self, signal: Signal, capacity: u64) -> u64 {
        self.settings()
            .thresholds
            .iter()
            .find(|t| t.signal == signal)
            .map_or(0, |t| t.limit(capacity))
    }
}

/// A threshold met now, with what was observed.
#[derive(Debug, Clone)]
pub struct Met {
    pub threshold: Threshold,
    pub available: u64,
    pub capacity: u64,
}

pub fn met_thresholds(thresholds: &[Threshold], s: &Snapshot) -> Vec<Met> {
    thresholds
        .iter()
        .filter_map(|t| {
            let (available, capacity) = thresholds::observe(t.signal, s)?;
            (available < t.limit(capacity)).then(|| Met {
                threshold: t.clone(),
                available,
                capacity,
            })
        })
        .collect()
}

/// Starts the monitor thread. Eviction requests go to the supervisor.
pub fn start(
    ctx: Arc<Context>,
    stats: Arc<Stats>,
    pressure: Arc<NodePressure>,
    supervisor: Sender<Event>,
    root: std::path::PathBuf,
) -> Result<(), String> {
    let settings = pressure.settings();
    if settings.thresholds.is_empty() {
        log::info!("eviction: no hard thresholds; pods are never evicted");
        return Ok(());
    }
    log::info!(
        "eviction: hard thresholds {} checked every {:?}",
        settings
            .thresholds
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(","),
        settings.period
    );
    std::thread::Builder::new()
        .name("eviction".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut monitor = Monitor {
                ctx,
                stats,
                pressure,
                supervisor,
                root,
                settings,
                evicted: HashSet::new(),
                was: Pressure::default(),
                told_nothing_to_evict: false,
            };
            // The first look one period after start-up, as image GC: the pod workers have
            // then recorded which images their pods use.
            loop {
                std::thread::sleep(monitor.settings.period);
                monitor.pass();
            }
        })
        .map(drop)
        .map_err(|e| format!("starting the eviction monitor: {}", e))
}

struct Monitor {
    ctx: Arc<Context>,
    stats: Arc<Stats>,
    pressure: Arc<NodePressure>,
    supervisor: Sender<Event>,
    root: std::path::PathBuf,
    settings: Settings,
    /// Pods already told to go (their containers may take the grace period to stop).
    evicted: HashSet<String>,
    was: Pressure,
    /// "Nothing to evict" was logged for the current spell of pressure (not every period).
    told_nothing_to_evict: bool,
}

impl Monitor {
    fn pass(&mut self) {
        let now = Instant::now();
        let disk_watched = self
            .settings
            .thresholds
            .iter()
            .any(|t| t.signal.condition() == Condition::Disk);
        // Pods' disk use is only walked when disk pressure may need it for ranking.
        let mut snap = self.stats.snapshot(disk_watched && self.was.disk);
        let mut met = met_thresholds(&self.settings.thresholds, &snap);
        for m in &met {
            self.pressure.met(m.threshold.signal.condition(), now);
        }
        self.log_transitions();
        let Some(first) = pick(&met) else {
            self.told_nothing_to_evict = false;
            return;
        };
        if first.threshold.signal.condition() == Condition::Disk {
            // As the kubelet: reclaim node-level resources (unused images) before any pod.
            if self.reclaim_images() {
                snap = self.stats.snapshot(true);
                met = met_thresholds(&self.settings.thresholds, &snap);
                if pick(&met).is_none() {
                    log::info!("eviction: image garbage collection relieved the disk pressure");
                    return;
                }
            } else if !self.was.disk {
                snap = self.stats.snapshot(true);
            }
        }
        let Some(m) = pick(&met).cloned() else {
            return;
        };
        self.node_event(&m);
        let live: HashSet<&str> = snap.pods.iter().map(|p| p.uid.as_str()).collect();
        self.evicted.retain(|uid| live.contains(uid.as_str()));
        let candidates: Vec<&PodStats> = snap
            .pods
            .iter()
            .filter(|p| !self.evicted.contains(&p.uid))
            .collect();
        let Some(victim) = rank(&candidates, m.threshold.signal).into_iter().next() else {
            if !std::mem::replace(&mut self.told_nothing_to_evict, true) {
                log::warn!(
                    "eviction: {} met (available {}) but no pod can be evicted: only critical pods run",
                    m.threshold,
                    thresholds::fmt_amount(m.threshold.signal, m.available)
                );
            }
            return;
        };
        let message = message(&m, victim);
        log::warn!(
            "eviction: evicting pod {}/{}: {}",
            victim.namespace,
            victim.name,
            message
        );
        self.evicted.insert(victim.uid.clone());
        self.stats.count_eviction(m.threshold.signal.name());
        let _ = self.supervisor.send(Event::Evict {
            uid: victim.uid.clone(),
            message,
        });
    }

    fn log_transitions(&mut self) {
        let now = self.pressure.get();
        for (name, was, is) in [
            ("MemoryPressure", self.was.memory, now.memory),
            ("DiskPressure", self.was.disk, now.disk),
            ("PIDPressure", self.was.pid, now.pid),
        ] {
            if was != is {
                log::warn!(
                    "node condition {} is now {}",
                    name,
                    if is { "True" } else { "False" }
                );
            }
        }
        self.was = now;
    }

    /// Removes every image no pod uses that is older than the minimum GC age (the kubelet's
    /// DeleteUnusedImages); returns whether anything was freed.
    fn reclaim_images(&self) -> bool {
        let in_use = match super::image_gc::images_in_use(&self.root) {
            Ok(r) => r,
            Err(e) => {
                log::error!("eviction: cannot tell which images are in use: {}", e);
                return false;
            }
        };
        // Thresholds of 0 %: free all that may be freed.
        let policy = crate::image::GcPolicy {
            high_pct: 0,
            low_pct: 0,
            min_age: self.settings.image_min_age,
        };
        let store = &self.ctx.images.store;
        match store.collect(&in_use, &policy, &mut || store.disk_usage()) {
            Ok(r) => {
                if !r.removed.is_empty() {
                    log::info!(
                        "eviction: disk pressure: removed {} unused image(s), {} bytes",
                        r.removed.len(),
                        r.freed
                    );
                }
                r.freed > 0
            }
            Err(e) => {
                log::error!("eviction: removing unused images: {}", e.with_causes());
                false
            }
        }
    }

    fn node_event(&self, m: &Met) {
        if let Some(link) = self.ctx.cluster.get() {
            let node = &self.ctx.node_name;
            link.events.record(
                super::cluster::events::ObjectRef {
                    kind: "Node".into(),
                    api_version: None,
                    namespace: String::new(),
                    name: node.clone(),
                    uid: node.clone(),
                    field_path: None,
                },
                "Warning",
                "EvictionThresholdMet",
                format!("Attempting to reclaim {}", m.threshold.signal.resource()),
            );
        }
    }
}

/// The signal to act on first: memory, then disk, then PIDs (the order the kubelet's
/// thresholds are ranked in).
fn pick(met: &[Met]) -> Option<&Met> {
    met.iter()
        .min_by_key(|m| slot(m.threshold.signal.condition()))
}

fn priority(p: &PodStats) -> i64 {
    p.object["spec"]["priority"].as_i64().unwrap_or(0)
}

/// The kubelet never evicts critical pods: static (and mirror) pods, and pods at system
/// critical priority.
pub fn is_critical(p: &PodStats) -> bool {
    p.is_static || priority(p) >= SYSTEM_CRITICAL_PRIORITY
}

/// The sum of the pod's containers' requests of `resource` (bytes).
fn requests(p: &PodStats, resource: &str) -> u64 {
    p.object["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            crate::kube::quantity::value_to_string(&c["resources"]["requests"][resource])
        })
        .filter_map(|q| crate::kube::quantity::parse_units(&q).ok())
        .sum()
}

/// What the pod uses of what the signal measures.
fn usage(p: &PodStats, signal: Signal) -> u64 {
    match signal.condition() {
        Condition::Memory => p.usage.memory.map_or(0, |m| m.working_set),
        Condition::Disk => p.ephemeral_bytes.map_or(0, |e| match signal {
            Signal::NodefsInodesFree | Signal::ImagefsInodesFree => e.1,
            _ => e.0,
        }),
        Condition::Pid => p.usage.pids.unwrap_or(0),
    }
}

/// Eviction order, first to go first, as the kubelet ranks: for memory and disk, pods using
/// more than they requested first, then by priority (lowest first), then by how far above the
/// request they are; for PIDs, by priority then process count. BestEffort pods request nothing
/// and so go first; Guaranteed pods cannot exceed their requests and so go with the Burstable
/// pods that stay within theirs, last (ordered by usage - request, as the kubelet does).
pub fn rank<'a>(pods: &[&'a PodStats], signal: Signal) -> Vec<&'a PodStats> {
    let mut v: Vec<&PodStats> = pods.iter().copied().filter(|p| !is_critical(p)).collect();
    let resource = match signal.condition() {
        Condition::Memory => "memory",
        _ => "ephemeral-storage",
    };
    v.sort_by(|a, b| {
        let (ua, ub) = (usage(a, signal), usage(b, signal));
        match signal.condition() {
            Condition::Pid => priority(a).cmp(&priority(b)).then(ub.cmp(&ua)),
            _ => {
                let (ra, rb) = (requests(a, resource), requests(b, resource));
                let (ea, eb) = (ua > ra, ub > rb);
                eb.cmp(&ea)
                    .then(priority(a).cmp(&priority(b)))
                    .then((ub as i128 - rb as i128).cmp(&(ua as i128 - ra as i128)))
            }
        }
    });
    v
}

/// The kubelet's eviction message: the resource, the threshold and what was available, then
/// the containers using the most of it.
pub fn message(m: &Met, pod: &PodStats) -> String {
    let sig = m.threshold.signal;
    let mut msg = format!(
        "The node was low on resource: {}. Threshold quantity: {}, available: {}. ",
        sig.resource(),
        m.threshold.quantity(m.capacity),
        thresholds::fmt_amount(sig, m.available)
    );
    if sig == Signal::MemoryAvailable {
        for c in &pod.containers {
            let used = c.usage.memory.map_or(0, |x| x.working_set);
            let req = pod.object["spec"]["containers"]
                .as_array()
                .and_then(|cs| cs.iter().find(|x| x["name"] == c.name.as_str()))
                .and_then(|x| {
                    crate::kube::quantity::value_to_string(&x["resources"]["requests"]["memory"])
                })
                .unwrap_or_else(|| "0".into());
            let req_bytes = crate::kube::quantity::parse_units(&req).unwrap_or(0);
            if used > req_bytes {
                msg.push_str(&format!(
                    "Container {} was using {}, request is {}, has larger consumption of {}. ",
                    c.name,
                    thresholds::fmt_amount(sig, used / 1024 * 1024),
                    req,
                    sig.resource()
                ));
            }
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::cgroup::{Memory, Usage};
    use serde_json::json;

    fn pod(
        name: &str,
        ws_mi: u64,
        resources: serde_json::Value,
        extra: serde_json::Value,
    ) -> PodStats {
        let mut spec = json!({"containers": [{"name": "c", "resources": resources}]});
        if let Some(p) = extra.get("priority") {
            spec["priority"] = p.clone();
        }
        PodStats {
            name: name.into(),
            namespace: "default".into(),
            uid: name.into(),
            start_time: None,
            is_static: extra.get("static").is_some(),
            object: Arc::new(json!({"spec": spec})),
            usage: Usage {
                memory: Some(Memory {
                    working_set: ws_mi << 20,
                    usage: ws_mi << 20,
                    ..Default::default()
                }),
                cpu_ns: None,
                pids: Some(ws_mi),
            },
            nanocores: None,
            interfaces: None,
            containers: vec![crate::stats::ContainerStats {
                name: "c".into(),
                id: "x".into(),
                started_at: String::new(),
                usage: Usage {
                    memory: Some(Memory {
                        working_set: ws_mi << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                nanocores: None,
                rootfs: None,
                logs: None,
            }],
            volumes: Vec::new(),
            ephemeral_bytes: None,
        }
    }

    #[test]
    fn memory_ranking_is_the_kubelets() {
        let guaranteed = pod(
            "guaranteed",
            60,
            json!({"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}),
            json!({}),
        );
        let within = pod(
            "burstable-within",
            30,
            json!({"requests": {"memory": "100Mi"}}),
            json!({}),
        );
        let over = pod(
            "burstable-over",
            50,
            json!({"requests": {"memory": "10Mi"}}),
            json!({}),
        );
        let small_be = pod("besteffort-small", 5, json!({}), json!({}));
        let big_be = pod("besteffort-big", 80, json!({}), json!({}));
        let important = pod(
            "besteffort-important",
            90,
            json!({}),
            json!({"priority": 1000}),
        );
        let st = pod("static", 500, json!({}), json!({"static": true}));
        let critical = pod(
            "critical",
            500,
            json!({}),
            json!({"priority": 2_000_001_000}),
        );
        let all = [
            &guaranteed,
            &within,
            &over,
            &small_be,
            &big_be,
            &important,
            &st,
            &critical,
        ];
        let names: Vec<&str> = rank(&all, Signal::MemoryAvailable)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        // Over their requests first (by priority, then by how far over), then the others.
        assert_eq!(
            names,
            [
                "besteffort-big",
                "burstable-over",
                "besteffort-small",
                "besteffort-important",
                // Within their requests, Guaranteed and Burstable alike: the closest to
                // their request first (usage - request, larger first), as the kubelet.
                "guaranteed",
                "burstable-within"
            ]
        );
        // PIDs: by priority, then process count.
        let pids: Vec<&str> = rank(&[&small_be, &big_be, &important], Signal::PidAvailable)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            pids,
            ["besteffort-big", "besteffort-small", "besteffort-important"]
        );
    }

    #[test]
    fn eviction_message_names_threshold_available_and_containers() {
        let p = pod("be", 80, json!({}), json!({}));
        let m = Met {
            threshold: thresholds::parse("memory.available<100Mi")
                .unwrap()
                .remove(0),
            available: 80 << 20,
            capacity: 1 << 30,
        };
        assert_eq!(
            message(&m, &p),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. \
             Container c was using 80Mi, request is 0, has larger consumption of memory. "
        );
    }

    #[test]
    fn conditions_hold_for_the_transition_period() {
        let np = NodePressure::new(Settings {
            transition: Duration::from_secs(60),
            ..Default::default()
        });
        assert_eq!(np.get(), Pressure::default());
        np.met(Condition::Disk, Instant::now());
        assert!(np.get().disk && !np.get().memory);
        let zero = NodePressure::new(Settings {
            transition: Duration::ZERO,
            ..Default::default()
        });
        zero.met(Condition::Memory, Instant::now());
        assert!(!zero.get().memory);
        assert_eq!(np.reserved(Signal::NodefsAvailable, 1000), 100);
        assert_eq!(np.reserved(Signal::PidAvailable, 1000), 0);
    }
}

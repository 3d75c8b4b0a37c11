//! The node agent: pod sources feed the desired set of pods; the supervisor (here) keeps one pod
//! worker per pod, starting workers for new pods and terminating workers of removed ones.

pub mod backoff;
pub mod cluster;
pub mod env;
pub mod eviction;
pub mod image_gc;
pub mod image_puller;
pub mod manifest;
pub mod pod_worker;
pub mod prober;
pub mod security;
pub mod static_source;
pub mod status;
pub mod store;
pub mod sysctls;

use crate::config::Config;
use crate::fsutil;
use crate::runtime::Runtime;
use backoff::BackoffPolicy;
use manifest::DesiredPod;
use pod_worker::{PodWorker, WorkerMsg};
use static_source::{DesiredSet, StaticSource};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

/// What every pod worker shares (read-only).
pub struct Context {
    pub runtime: Runtime,
    pub images: image_puller::ImagePuller,
    pub backoff: BackoffPolicy,
    pub node_name: String,
    pub host_ip: Option<String>,
    pub pod_log_dir: PathBuf,
    /// Wakes workers when monitors write records; `None` if inotify is unavailable (workers poll).
    pub watcher: Option<Arc<crate::runtime::watch::BundleWatcher>>,
    /// Status updates and events for the API server, in cluster mode.
    pub cluster: std::sync::OnceLock<Arc<cluster::Link>>,
    /// `--cluster-domain`: pods' fully qualified names end in `svc.<this>`.
    pub cluster_domain: String,
    /// Seccomp, sysctl and pids settings (kubelet flags).
    pub security: security::Settings,
    /// Usage of the node, pods and containers (the stats endpoints, eviction).
    pub stats: Arc<crate::stats::Stats>,
    /// The pressure conditions the eviction monitor sets and the node status reports.
    pub pressure: Arc<eviction::NodePressure>,
    /// configMaps and secrets read for volumes, shared by the pod workers for a short while.
    pub volume_objects: pod_worker::VolumeObjects,
    /// The pod network (CNI) and the pods' DNS settings.
    pub network: Arc<crate::network::Network>,
}

/// Where desired pods come from; each source's set replaces its previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    File,
    Api,
}

pub enum Event {
    Desired(Source, DesiredSet),
    Terminated(String),
    /// The eviction monitor chose this pod: stop it and report it Failed, reason Evicted.
    Evict {
        uid: String,
        message: String,
    },
}

struct WorkerHandle {
    tx: Sender<WorkerMsg>,
    full_name: String,
    terminating: bool,
    from_api: bool,
}

/// The API server to join, for cluster mode.
pub struct ClusterMode {
    pub client: Arc<crate::kube::client::ApiClient>,
    pub settings: cluster::Settings,
}

/// Runs the agent until killed. Pods keep running when it stops and are adopted when it starts.
pub fn run(config: Config, ctx: Context, cluster_mode: Option<ClusterMode>) -> Result<(), String> {
    let ctx = Arc::new(ctx);
    fsutil::ensure_dir(&store::pods_dir(&config.root_dir)).map_err(|e| e.to_string())?;
    crate::ballast::install(crate::ballast::path(&config.root_dir));
    image_gc::start(
        ctx.clone(),
        config.root_dir.clone(),
        image_gc::Settings {
            period: config.image_gc_period,
            policy: crate::image::GcPolicy {
                high_pct: config.image_gc_high_threshold,
                low_pct: config.image_gc_low_threshold,
                min_age: config.image_minimum_gc_age,
            },
        },
    )?;
    let (tx, rx) = channel::<Event>();
    ctx.stats.start_sampler(crate::stats::SAMPLE_PERIOD)?;
    eviction::start(
        ctx.clone(),
        ctx.stats.clone(),
        ctx.pressure.clone(),
        tx.clone(),
        config.root_dir.clone(),
    )?;
    if let Some(mut cm) = cluster_mode {
        cm.settings.pressure = ctx.pressure.clone();
        ctx.volume_objects.watch_through(cm.client.clone());
        let link = cluster::start(cm.client, cm.settings, tx.clone())?;
        let _ = ctx.cluster.set(link);
    }

    let mut source = StaticSource::new(&config.pod_manifest_path, &config.node_name)
        .allowing_unsafe_sysctls(ctx.security.allowed_unsafe_sysctls.clone());
    source.scan();
    let first = source.desired();
    let source_tx = tx.clone();
    std::thread::Builder::new()
        .name("static-source".into())
        .spawn(move || loop {
            source.wait(Duration::from_secs(1));
            let t0 = std::time::Instant::now();
            let changed = source.scan();
            if changed {
                log::debug!("manifest directory changed; re-read in {:?}", t0.elapsed());
            }
            if changed
                && source_tx
                    .send(Event::Desired(Source::File, source.desired()))
                    .is_err()
            {
                return;
            }
        })
        .map_err(|e| format!("starting the manifest watcher: {}", e))?;

    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    // Pods waiting for an earlier pod of the same namespace/name to finish terminating.
    let mut queued: BTreeMap<String, DesiredPod> = BTreeMap::new();

    store::set_aside_corrupt_records(&config.root_dir);
    let mut sets: BTreeMap<Source, DesiredSet> = BTreeMap::new();
    sets.insert(Source::File, first);
    // Pods on disk that no source wants any more (removed while the agent was down): terminate them.
    // API pods are kept (and adopted) until the API server's list says otherwise: a control plane
    // that is slow or down must not cost running pods.
    let wanted: std::collections::HashSet<String> = sets[&Source::File]
        .pods
        .iter()
        .map(|p| p.uid.clone())
        .collect();
    let mut api_pods = DesiredSet::default();
    for stored in store::list_pods(&config.root_dir) {
        if wanted.contains(&stored.uid) {
            continue;
        }
        if ctx.cluster.get().is_some() && stored.record.source.as_os_str() == cluster::API_SOURCE {
            match DesiredPod::from_stored(
                stored.record.object.clone(),
                stored.record.source.clone(),
            ) {
                Ok(pod) => api_pods.pods.push(pod),
                Err(e) => log::error!(
                    "pod directory {}: unreadable pod record ({}); leaving it for inspection",
                    stored.dir.display(),
                    e
                ),
            }
            continue;
        }
        match DesiredPod::from_stored(stored.record.object.clone(), stored.record.source.clone()) {
            Ok(pod) => {
                log::info!(
                    "pod {}: no longer in any manifest; removing it",
                    pod.full_name()
                );
                let uid = pod.uid.clone();
                let h = spawn_worker(&ctx, pod, &tx)?;
                let _ = h.tx.send(WorkerMsg::Terminate { grace: None });
                workers.insert(
                    uid,
                    WorkerHandle {
                        terminating: true,
                        ..h
                    },
                );
            }
            Err(e) => log::error!(
                "pod directory {}: unreadable pod record ({}); leaving it for inspection",
                stored.dir.display(),
                e
            ),
        }
    }
    if let Some(link) = ctx.cluster.get() {
        if !api_pods.pods.is_empty() {
            log::info!(
                "{} pod(s) of this node restored from the local cache; the API server's list will confirm them",
                api_pods.pods.len()
            );
        }
        sets.insert(Source::Api, api_pods);
        let _ = link.api_sync.send(cluster::api_sync::Msg::StaticPods(
            sets[&Source::File].pods.clone(),
        ));
    }
    collect_recordless_pods(&ctx, &config, &wanted);
    collect_orphan_bundles(&ctx, &config);
    apply_desired(&ctx, &sets, &config, &tx, &mut workers, &mut queued)?;

    // The disk ballast is topped up now and then: a node whose pods are steady writes no records.
    const BALLAST_CHECK: Duration = Duration::from_secs(30);
    let mut ballast_checked = std::time::Instant::now();
    loop {
        let event = rx.recv_timeout(BALLAST_CHECK);
        if ballast_checked.elapsed() >= BALLAST_CHECK {
            crate::ballast::maintain();
            ballast_checked = std::time::Instant::now();
        }
        let event = match event {
            Ok(event) => event,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match event {
            Event::Desired(source, set) => {
                if source == Source::File {
                    if let Some(link) = ctx.cluster.get() {
                        let _ = link
                            .api_sync
                            .send(cluster::api_sync::Msg::StaticPods(set.pods.clone()));
                    }
                }
                sets.insert(source, set);
                apply_desired(&ctx, &sets, &config, &tx, &mut workers, &mut queued)?
            }
            Event::Evict { uid, message } => match workers.get(&uid) {
                Some(h) if !h.terminating => {
                    let _ = h.tx.send(WorkerMsg::Evict { message });
                }
                _ => log::debug!("eviction of pod {}: it is already going", uid),
            },
            Event::Terminated(uid) => {
                if let Some(link) = ctx.cluster.get() {
                    if workers.get(&uid).is_some_and(|h| h.from_api) {
                        let _ = link
                            .api_sync
                            .send(cluster::api_sync::Msg::Terminated { uid: uid.clone() });
                    }
                }
                if let Some(h) = workers.remove(&uid) {
                    if let Some(pod) = queued.remove(&h.full_name) {
                        let uid = pod.uid.clone();
                        let h = spawn_worker(&ctx, pod, &tx)?;
                        workers.insert(uid, h);
                    }
                }
            }
        }
    }
    Ok(())
}

fn apply_desired(
    ctx: &Arc<Context>,
    sets: &BTreeMap<Source, DesiredSet>,
    config: &Config,
    tx: &Sender<Event>,
    workers: &mut HashMap<String, WorkerHandle>,
    queued: &mut BTreeMap<String, DesiredPod>,
) -> Result<(), String> {
    let errors: Vec<String> = sets
        .get(&Source::File)
        .map(|s| s.errors.iter().map(|e| e.to_string()).collect())
        .unwrap_or_default();
    let errors_file = config.root_dir.join("manifest-errors.json");
    let unchanged = fsutil::read_json::<Vec<String>>(&errors_file)
        .ok()
        .flatten()
        .is_some_and(|old| old == errors);
    if !unchanged {
        if let Err(e) = crate::ballast::write_or_spend(&errors_file.display(), || {
            fsutil::write_json_volatile(&errors_file, &errors)
        }) {
            log::error!("saving manifest errors: {}", e);
        }
    }
    let pods: Vec<&DesiredPod> = sets.values().flat_map(|s| s.pods.iter()).collect();
    let wanted: HashMap<&str, &DesiredPod> = pods.iter().map(|p| (p.uid.as_str(), *p)).collect();
    for (uid, h) in workers.iter_mut() {
        if h.terminating {
            continue;
        }
        let grace = match wanted.get(uid.as_str()) {
            None => {
                let from = if h.from_api {
                    "deleted from the API server"
                } else {
                    "removed from its manifest"
                };
                log::info!("pod {}: {}; terminating", h.full_name, from);
                None
            }
            Some(p) => match p.deletion_grace() {
                Some(g) => {
                    log::info!(
                        "pod {}: deleted at the API server; terminating (grace period {}s)",
                        h.full_name,
                        g
                    );
                    Some(g)
                }
                None => continue,
            },
        };
        h.terminating = true;
        let _ = h.tx.send(WorkerMsg::Terminate { grace });
    }
    queued.retain(|_, p| wanted.contains_key(p.uid.as_str()) && p.deletion_grace().is_none());
    for pod in pods {
        if workers.contains_key(&pod.uid) {
            continue;
        }
        if let Some(grace) = pod.deletion_grace() {
            // Being deleted and not running here (or no longer known to be): make sure nothing of
            // it is left, then let the API server forget it.
            let uid = pod.uid.clone();
            let h = spawn_worker(ctx, pod.clone(), tx)?;
            let _ = h.tx.send(WorkerMsg::Terminate { grace: Some(grace) });
            workers.insert(
                uid,
                WorkerHandle {
                    terminating: true,
                    ..h
                },
            );
            continue;
        }
        // Like the kubelet: a new pod under an old name waits until the old one is gone.
        if workers.values().any(|h| h.full_name == pod.full_name()) {
            queued.insert(pod.full_name(), pod.clone());
            continue;
        }
        let uid = pod.uid.clone();
        let h = spawn_worker(ctx, pod.clone(), tx)?;
        workers.insert(uid, h);
    }
    Ok(())
}

fn spawn_worker(
    ctx: &Arc<Context>,
    pod: DesiredPod,
    tx: &Sender<Event>,
) -> Result<WorkerHandle, String> {
    let (wtx, wrx) = channel();
    let full_name = pod.full_name();
    let from_api = pod.source.as_os_str() == cluster::API_SOURCE;
    let worker = PodWorker::new(ctx.clone(), pod, wtx.clone());
    let done = tx.clone();
    std::thread::Builder::new()
        .name(format!("pod {}", full_name))
        .stack_size(256 * 1024)
        .spawn(move || worker.run(wrx, done))
        .map_err(|e| format!("starting worker for {}: {}", full_name, e))?;
    Ok(WorkerHandle {
        tx: wtx,
        full_name,
        terminating: false,
        from_api,
    })
}

/// Bundles no container record points at (an agent killed between creating a bundle and saving
/// its record) are removed at start-up.
/// Pod directories without a pod record (and none set aside as corrupt): a pod whose set-up a
/// kill cut short (the record is saved once its containers started) and that no manifest names
/// any more (an API pod's worker
/// would make the record again; until then its containers cost a restart, as documented at the
/// save). Nothing would ever adopt or terminate them, so what they hold goes now: containers,
/// namespace pins and /dev/shm, the pod cgroup in any QoS class, logs, the directory.
fn collect_recordless_pods(
    ctx: &Context,
    config: &Config,
    wanted: &std::collections::HashSet<String>,
) {
    let Ok(entries) = std::fs::read_dir(store::pods_dir(&config.root_dir)) else {
        return;
    };
    let rt = &ctx.runtime;
    for e in entries.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if wanted.contains(&uid) || !matches!(store::load_pod(&dir), Ok(None)) {
            continue;
        }
        // A record set aside as corrupt is not a cut-short set-up: its containers wait to be
        // adopted when a source names the pod again (`store::set_aside_corrupt_records`).
        let set_aside = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| {
                f.file_name()
                    .to_string_lossy()
                    .starts_with("pod.json.corrupt-")
            });
        if set_aside {
            continue;
        }
        log::info!(
            "pod directory {}: no pod record (its set-up was cut short); removing what it holds",
            dir.display()
        );
        let records = std::fs::read_dir(dir.join("containers"))
            .into_iter()
            .flatten();
        for r in records.flatten() {
            if let Ok(Some(rec)) = fsutil::read_json::<store::ContainerRecord>(&r.path()) {
                if let Some(a) = rec.current {
                    let _ = rt.signal(&a.id, "KILL");
                    if let Err(e) = rt.remove(&a.id) {
                        log::error!("pod directory {}: {}", dir.display(), e);
                    }
                }
            }
        }
        // Its network first (CNI DEL while the namespace is still pinned): the record of an ADD
        // is written before the pod record, and removing the directory without a DEL would keep
        // the pod's address allocated for good.
        let ns = dir.join("ns").join("net");
        let netns = crate::runtime::sandbox::is_nsfs(&ns).then_some(ns.as_path());
        let mut result = ctx.network.detach(&dir, netns).map(|_| ());
        result =
            result.and_then(|_| crate::runtime::sandbox::remove(&dir).map_err(|e| e.to_string()));
        for qos in ["Guaranteed", "Burstable", "BestEffort"] {
            let cgroup = rt.pod_cgroup(qos, &uid);
            result = result.and_then(|_| {
                rt.cgroups
                    .remove_pod(&rt.cgroup_root, &cgroup)
                    .map_err(|e| format!("cgroup {}: {}", cgroup, e))
            });
        }
        let logs = std::fs::read_dir(&config.pod_log_dir).into_iter().flatten();
        for l in logs.flatten() {
            if l.file_name()
                .to_string_lossy()
                .ends_with(&format!("_{}", uid))
            {
                let _ = fsutil::remove_dir_all_if_exists(&l.path());
            }
        }
        if let Err(e) =
            result.and_then(|_| fsutil::remove_dir_all_if_exists(&dir).map_err(|e| e.to_string()))
        {
            log::error!("pod directory {}: removing it: {}", dir.display(), e);
        }
    }
}

fn collect_orphan_bundles(ctx: &Context, config: &Config) {
    let referenced = store::referenced_containers(&config.root_dir);
    for id in ctx.runtime.list_bundles() {
        if referenced.contains(&id) {
            continue;
        }
        log::info!("removing orphaned container {}", &id[..id.len().min(12)]);
        let _ = ctx.runtime.signal(&id, "KILL");
        if let Err(e) = ctx.runtime.remove(&id) {
            log::error!("removing orphaned container {}: {}", id, e);
        }
    }
}

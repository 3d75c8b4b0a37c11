//! One pod worker per pod, on a thread of its own: it makes the sandbox, starts each container,
//! watches it through its monitor's records, restarts it per restartPolicy with crash-loop
//! back-off, publishes the pod's status, and on request terminates the pod and removes every
//! trace of it. All of its state is on disk, so a restarted agent picks up where it left off.

use super::backoff::{go_duration, Backoff};
use super::manifest::DesiredPod;
use super::store::{self, Attempt, ContainerRecord, PodRecord};
use super::{env, status, Context, Event};
use crate::clock;
use crate::fsutil;
use crate::kube::quantity;
use crate::kube::types::*;
use crate::runtime::{sandbox, spec, Observed, StartRequest};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

mod container_spec;
mod env_sources;
mod init_containers;
mod lifecycle;
mod network;
mod pod_setup;
mod pod_status;
mod probes;
mod terminate;
mod volumes;

pub use volumes::ObjectCache as VolumeObjects;

pub enum WorkerMsg {
    /// Stop the pod's containers (SIGTERM, grace period, SIGKILL) and remove everything of it.
    /// `grace` overrides the pod's terminationGracePeriodSeconds (a deletion's grace period).
    Terminate { grace: Option<i64> },
    /// A container's monitor wrote a record: look at the containers again.
    Wake,
    /// The node evicted the pod (node pressure): stop its containers for good and report it
    /// Failed with reason Evicted and this message. The pod itself stays until its source
    /// removes it.
    Evict { message: String },
}

/// How long a worker sleeps between checks when nothing wakes it: only a monitor that died
/// without a word (killed by hand) is noticed this way.
const SAFETY_POLL_SECS: f64 = 5.0;

/// The kubelet never waits less than this for a container to stop.
const MIN_GRACE_SECS: i64 = 2;

pub struct PodWorker {
    ctx: Arc<Context>,
    pod: DesiredPod,
    /// Every container slot: the init containers (sidecars among them) in order, then the app
    /// containers. `containers`, `retry`, `probes`... are indexed the same way.
    specs: Vec<Container>,
    n_init: usize,
    /// Sidecars being stopped because the app containers are done: SIGKILL at this time.
    sidecar_kill_at: Option<f64>,
    /// activeDeadlineSeconds passed and the containers were told to stop: SIGKILL at this time.
    deadline_kill_at: Option<f64>,
    dir: PathBuf,
    record: PodRecord,
    containers: Vec<ContainerRecord>,
    /// In-memory back-off for image and create errors (not crash loops), per container.
    retry: Vec<Option<Backoff>>,
    /// When a failed pull's `ErrImagePull` gives way to `ImagePullBackOff`, per container.
    pull_error_until: Vec<Option<f64>>,
    sandbox: Option<sandbox::Sandbox>,
    /// Namespaces being made while the first containers' bundles are prepared.
    pending_sandbox: Option<sandbox::PendingSandbox>,
    /// The pod cgroup and /etc files being made meanwhile (`pod_setup`).
    pending_setup: Option<PendingSetup>,
    sandbox_started: Option<std::time::Instant>,
    sandbox_error: Option<String>,
    sandbox_retry_at: f64,
    published: Option<PodStatus>,
    /// pod.json differs from what is on disk.
    record_dirty: bool,
    /// A container was launched in this sync: saving pod.json waits for the next one.
    launched: bool,
    /// The worker's own inbox, handed to the bundle watcher so monitors' records wake it.
    wake: Sender<WorkerMsg>,
    /// The pod's volumes, once made.
    volumes: Option<volumes::PodVolumes>,
    /// The status was handed to the API sync at least once since this worker started.
    status_announced: bool,
    /// The published status could not be written to status.json (a full or read-only disk):
    /// every sync tries again.
    status_unsaved: bool,
    /// Probe schedules and results, per container.
    probes: Vec<probes::ContainerProbes>,
    /// The thread HTTP and TCP probes dial from, in the pod's network namespace.
    dialer: Option<crate::kubelet::prober::NetnsDialer>,
    /// The pod's IPs from its CNI ADD (empty: no pod network, or hostNetwork).
    pod_ips: Vec<String>,
}

type PendingSetup = std::thread::JoinHandle<Result<(), String>>;

fn now() -> f64 {
    clock::now_unix().as_secs_f64()
}

fn ts(secs: f64) -> String {
    clock::rfc3339(Duration::from_secs_f64(secs.max(0.0)))
}

impl PodWorker {
    /// Loads what is on disk for this pod (adoption) or starts a fresh record.
    pub fn new(ctx: Arc<Context>, pod: DesiredPod, wake: Sender<WorkerMsg>) -> PodWorker {
        let dir = ctx.runtime.pod_dir(&pod.uid);
        let mut record_dirty = true;
        let record = match store::load_pod(&dir) {
            Ok(Some(r)) => {
                record_dirty = false;
                r
            }
            Ok(None) => PodRecord {
                version: store::VERSION,
                object: pod.object.clone(),
                source: pod.source.clone(),
                start_time: None,
                initialized: false,
                evicted: None,
            },
            Err(e) => {
                log::error!("pod {}: {}; starting it afresh", pod.full_name(), e);
                PodRecord {
                    version: store::VERSION,
                    object: pod.object.clone(),
                    source: pod.source.clone(),
                    start_time: None,
                    initialized: false,
                    evicted: None,
                }
            }
        };
        let specs: Vec<Container> = pod
            .spec
            .init_containers
            .iter()
            .chain(&pod.spec.containers)
            .cloned()
            .collect();
        let n_init = pod.spec.init_containers.len();
        let containers: Vec<ContainerRecord> = specs
            .iter()
            .map(|c| {
                store::load_container(&dir, &c.name).unwrap_or_else(|| ContainerRecord {
                    version: store::VERSION,
                    name: c.name.clone(),
                    ..Default::default()
                })
            })
            .collect();
        let published = store::load_status(&dir);
        let n = containers.len();
        PodWorker {
            ctx,
            pod,
            specs,
            n_init,
            sidecar_kill_at: None,
            deadline_kill_at: None,
            dir,
            record,
            containers,
            retry: vec![None; n],
            pull_error_until: vec![None; n],
            sandbox: None,
            pending_sandbox: None,
            pending_setup: None,
            sandbox_started: None,
            sandbox_error: None,
            sandbox_retry_at: 0.0,
            published,
            record_dirty,
            launched: false,
            wake,
            volumes: None,
            status_announced: false,
            status_unsaved: false,
            probes: (0..n).map(|_| Default::default()).collect(),
            dialer: None,
            pod_ips: Vec::new(),
        }
    }

    /// Has the bundle watcher wake this worker when container `id`'s monitor writes a record.
    /// Call before looking at the container, so that no record can slip in between.
    fn watch(&self, id: &str) {
        let Some(watcher) = &self.ctx.watcher else {
            return;
        };
        let tx = self.wake.clone();
        if let Err(e) = watcher.watch(
            &self.ctx.runtime.bundle(id),
            Box::new(move || drop(tx.send(WorkerMsg::Wake))),
        ) {
            log::warn!(
                "pod {}: watching container {}: {}; polling instead",
                self.pod.full_name(),
                short(id),
                e
            );
        }
    }

    pub fn run(mut self, rx: Receiver<WorkerMsg>, done: Sender<Event>) {
        let adopted = self.containers.iter().any(|c| c.current.is_some());
        log::info!(
            "pod {}: {} (uid {})",
            self.pod.full_name(),
            if adopted {
                "adopting running pod"
            } else {
                "syncing"
            },
            self.pod.uid
        );
        for id in self
            .containers
            .iter()
            .filter_map(|c| c.current.as_ref().map(|a| a.id.clone()))
            .collect::<Vec<_>>()
        {
            self.watch(&id);
        }
        // A message that is already waiting (a pod removed while the agent was down) wins over a sync.
        let mut wait = Duration::ZERO;
        loop {
            match rx.recv_timeout(wait) {
                Ok(WorkerMsg::Terminate { grace }) => {
                    self.terminate(grace);
                    let _ = done.send(Event::Terminated(self.pod.uid.clone()));
                    return;
                }
                Ok(WorkerMsg::Evict { message }) => self.evict(message),
                Ok(WorkerMsg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                // The agent is shutting down: pods keep running and are adopted on restart,
                // which needs their record.
                Err(RecvTimeoutError::Disconnected) => {
                    self.save_record();
                    return;
                }
            }
            self.sync();
            wait = self.next_wake();
        }
    }

    fn sync(&mut self) {
        if self.record.start_time.is_none() {
            self.record.start_time = Some(ts(now()));
            self.record_dirty = true;
        }
        if self.sandbox.is_none()
            && self.pending_sandbox.is_none()
            && now() >= self.sandbox_retry_at
        {
            self.setup_sandbox();
        }
        // Service-account tokens are renewed before they expire.
        if self
            .volumes
            .as_ref()
            .is_some_and(|v| v.refresh_at.is_some_and(|t| now() >= t))
        {
            if let Err(e) = self.ensure_volumes() {
                log::warn!("pod {}: refreshing volumes: {}", self.pod.full_name(), e);
                if let Some(v) = self.volumes.as_mut() {
                    v.refresh_at = Some(now() + 10.0);
                }
            }
        }
        if self.sandbox.is_some() || self.pending_sandbox.is_some() {
            let deadline = self.enforce_deadline();
            let initialized = self.sync_init_containers(!deadline);
            for i in self.n_init..self.containers.len() {
                self.sync_container(i, initialized && !deadline);
            }
            self.stop_sidecars_when_done();
        }
        // No container needed it this time (image missing, back-off): finish it anyway.
        self.finish_sandbox();
        // The status first: the record's two fsyncs must not delay a Running reported to the
        // API server (they cost tens of milliseconds on an SD card).
        self.publish();
        // Not while runc is starting a container launched in this sync: the fsyncs (a journal
        // commit) would compete with it for the disk on a small device. The next sync, when the
        // monitor reports the container started (at most 1 s later), saves it. A crash before
        // then only costs a restart of the containers (their bundles are orphans, collected).
        if !std::mem::take(&mut self.launched) {
            self.save_record();
        }
        self.release_network_when_finished();
    }

    fn save_record(&mut self) {
        if self.record_dirty {
            match store::save_pod(&self.dir, &self.record) {
                Ok(()) => self.record_dirty = false,
                Err(e) => log::error!("pod {}: saving pod record: {}", self.pod.full_name(), e),
            }
        }
    }

    fn save(&self, i: usize) {
        if let Err(e) = store::save_container(&self.dir, &self.containers[i]) {
            log::error!(
                "pod {}: saving container record {}: {}",
                self.pod.full_name(),
                self.containers[i].name,
                e
            );
        }
    }

    /// Looks at container slot `i`: records a start or an exit, runs its probes, and when
    /// `may_start` starts it (again) if its restart policy and back-off allow.
    fn sync_container(&mut self, i: usize, may_start: bool) {
        if let Some(att) = self.containers[i].current.clone() {
            match self.ctx.runtime.observe(&att.id) {
                Observed::Starting => return,
                Observed::Running(s) => {
                    let started_secs = clock::parse_rfc3339(&s.started_at)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or_else(now);
                    if att.started_at.is_none() {
                        // Not Running until its postStart hook returned, as the kubelet's.
                        if !self.post_start(i, &att.id) {
                            return;
                        }
                        log::info!(
                            "pod {}: container {} started (id {})",
                            self.pod.full_name(),
                            self.containers[i].name,
                            short(&att.id)
                        );
                        let name = self.containers[i].name.clone();
                        self.event(
                            Some(&name),
                            "Normal",
                            "Started",
                            format!("Started container {}", name),
                        );
                        let rec = &mut self.containers[i];
                        rec.current = Some(Attempt {
                            id: att.id.clone(),
                            started_at: Some(s.started_at),
                        });
                        rec.waiting = None;
                        self.save(i);
                    }
                    self.run_probes(i, &att.id, started_secs);
                    return;
                }
                // Then fall through: a restart that is due now (the first one, which has no
                // back-off) happens in this sync, not whenever the worker next wakes up.
                Observed::Exited(e) => self.on_exit(i, att, Some(e)),
                Observed::Lost => self.on_exit(i, att, None),
            }
        }
        self.show_pull_back_off(i);
        let rec = &self.containers[i];
        if !may_start || rec.final_state.is_some() || rec.not_before.is_some_and(|t| now() < t) {
            return;
        }
        self.start_container(i);
    }

    fn on_exit(&mut self, i: usize, att: Attempt, exited: Option<crate::runtime::shim::Exited>) {
        let finished = now();
        // A container that ran and ended between two looks was never seen running: it still
        // started, as the kubelet's Started event says right after runc start.
        if att.started_at.is_none() && exited.as_ref().is_some_and(|e| e.start_error.is_none()) {
            let name = self.containers[i].name.clone();
            self.event(
                Some(&name),
                "Normal",
                "Started",
                format!("Started container {}", name),
            );
        }
        let term = match &exited {
            Some(e) => StateTerminated {
                exit_code: e.exit_code,
                signal: e.signal,
                reason: Some(
                    if e.start_error.is_some() {
                        "StartError"
                    } else if e.oom_killed {
                        "OOMKilled"
                    } else if e.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                ),
                message: e
                    .start_error
                    .clone()
                    .or_else(|| self.termination_message(i, e.exit_code)),
                started_at: att.started_at.clone().or_else(|| Some(e.finished_at.clone())),
                finished_at: Some(e.finished_at.clone()),
                container_id: Some(format!("runc://{}", att.id)),
            },
            None => StateTerminated {
                exit_code: 137,
                signal: None,
                reason: Some("ContainerStatusUnknown".into()),
                message: Some("The container could not be located: its monitor is gone and left no exit status".into()),
                started_at: att.started_at.clone(),
                finished_at: Some(ts(finished)),
                container_id: Some(format!("runc://{}", att.id)),
            },
        };
        let name = self.containers[i].name.clone();
        log::info!(
            "pod {}: container {} exited: code {} ({}){}",
            self.pod.full_name(),
            name,
            term.exit_code,
            term.reason.as_deref().unwrap_or(""),
            term.message
                .as_deref()
                .map(|m| format!(": {}", m))
                .unwrap_or_default()
        );
        if let Err(e) = self.ctx.runtime.remove(&att.id) {
            log::error!(
                "pod {}: removing container {} ({}): {}",
                self.pod.full_name(),
                name,
                short(&att.id),
                e
            );
        }
        let restart = self.restarts_after(i, term.exit_code);
        let backoff_policy = self.ctx.backoff;
        let label = format!(
            "container={} pod={}_{}({})",
            name, self.pod.name, self.pod.namespace, self.pod.uid
        );
        let mut back_off = false;
        let rec = &mut self.containers[i];
        rec.current = None;
        // A container the node lost without an exit status (a reboot, its monitor killed) did
        // not crash: it is started again at once, without crash-loop back-off.
        let lost = exited.is_none();
        if restart {
            rec.last_terminated = Some(term);
            match Backoff::restart_at(rec.backoff, &backoff_policy, finished).filter(|_| !lost) {
                Some(at) if at > now() => {
                    rec.not_before = Some(at);
                    let delay = rec
                        .backoff
                        .map(|b| b.delay)
                        .unwrap_or(backoff_policy.initial);
                    rec.waiting = Some(StateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some(format!(
                            "back-off {} restarting failed {}",
                            go_duration(delay),
                            label
                        )),
                    });
                    back_off = true;
                }
                _ => {
                    rec.not_before = None;
                    rec.waiting = None;
                }
            }
        } else {
            rec.final_state = Some(term);
            rec.waiting = None;
        }
        self.save(i);
        if back_off {
            self.event(
                Some(&name),
                "Warning",
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}",
                    name, label
                ),
            );
        }
    }

    /// Sets a waiting reason and schedules the next attempt with the in-memory retry back-off.
    fn wait_and_retry(&mut self, i: usize, reason: &str, message: String) {
        let at = now();
        let entry = Backoff::next(self.retry[i], &self.ctx.backoff, at);
        self.retry[i] = Some(entry);
        let rec = &mut self.containers[i];
        let changed =
            rec.waiting.as_ref().and_then(|w| w.message.as_deref()) != Some(message.as_str());
        if changed {
            log::warn!(
                "pod {}: container {}: {}: {}",
                self.pod.full_name(),
                rec.name,
                reason,
                message
            );
        }
        rec.waiting = Some(StateWaiting {
            reason: Some(reason.into()),
            message: Some(message),
        });
        rec.not_before = Some(at + entry.delay);
        self.save(i);
    }

    /// A container that could not be made while its sandbox was still being set up: when the
    /// sandbox failed too (a full disk fails both), that is the pod's reason, as it would have
    /// been had the sandbox been made first, and the container waits for the sandbox's retry.
    fn retry_unless_sandbox_failed(&mut self, i: usize, reason: &str, message: String) {
        if self.finish_sandbox() {
            self.wait_and_retry(i, reason, message);
        }
    }

    fn start_container(&mut self, i: usize) {
        let t0 = std::time::Instant::now();
        let c = self.specs[i].clone();
        let pull_policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| super::manifest::default_pull_policy(&c.image).into());
        let who = format!("pod {}: container {}", self.pod.full_name(), c.name);
        let note = |reason: &'static str, message: String| {
            self.event(Some(&c.name), "Normal", reason, message)
        };
        let secrets = || self.pull_secrets();
        let image = match self
            .ctx
            .images
            .ensure(&c.image, &pull_policy, &who, &note, &secrets)
        {
            Ok(img) => img,
            Err(e) => {
                if matches!(e, super::image_puller::ImageUnavailable::PullFailed(_)) {
                    self.event(
                        Some(&c.name),
                        "Warning",
                        "Failed",
                        format!("Failed to pull image {:?}: {}", c.image, e.message()),
                    );
                }
                self.event(
                    Some(&c.name),
                    "Warning",
                    "Failed",
                    format!("Error: {}", e.reason()),
                );
                self.wait_and_retry(i, e.reason(), e.message().to_string());
                if matches!(e, super::image_puller::ImageUnavailable::PullFailed(_)) {
                    // Like the kubelet: each failed pull shows ErrImagePull with the registry's
                    // answer for a moment, then ImagePullBackOff until the next attempt.
                    let delay = self.retry[i].map(|b| b.delay).unwrap_or(0.0);
                    self.pull_error_until[i] = Some(now() + (delay / 2.0).min(2.0));
                }
                return;
            }
        };
        self.ctx.images.mark_used(&image, &who);
        // A probe tinylet cannot run must not be silently skipped.
        if let Err(e) = probes::parse_all(self.container_json(i)) {
            return self.wait_and_retry(i, "CreateContainerConfigError", e);
        }
        for which in ["postStart", "preStop"] {
            if let Err(e) = lifecycle::parse_hook(self.container_json(i), which) {
                return self.wait_and_retry(i, "CreateContainerConfigError", e);
            }
        }
        if let Err(e) = self.ensure_volumes() {
            self.event(None, "Warning", "FailedMount", e.clone());
            return self.wait_and_retry(i, "ContainerCreating", e);
        }
        // The pod's IP exists only once the network is set up: a container whose environment
        // reads it waits for the sandbox instead of overlapping its bundle with it.
        if self.env_needs_pod_ip(i) && !self.finish_sandbox() {
            return;
        }
        let Some(sb) = self
            .sandbox
            .clone()
            .or_else(|| self.pending_sandbox.as_ref().map(|p| p.paths().clone()))
        else {
            return;
        };
        let id = match fsutil::random_hex(32) {
            Ok(id) => id,
            Err(e) => {
                return self.wait_and_retry(
                    i,
                    "CreateContainerError",
                    format!("generating a container id: {}", e),
                )
            }
        };
        // The bundle's directories and overlay mount are made while the spec is built.
        let rootfs = self.ctx.runtime.begin_rootfs(&id, &image.rootfs);
        let spec = match self.container_spec(&c, &image, &sb) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.runtime.abandon(&id, rootfs);
                return self.retry_unless_sandbox_failed(i, e.reason, e.message);
            }
        };
        let rec = &self.containers[i];
        let restart_count = if rec.started_once {
            rec.restart_count + 1
        } else {
            0
        };
        let log_path = self.log_path(&c.name, restart_count);
        let pod_uid = self.pod.uid.clone();
        let req = StartRequest {
            pod_uid: &pod_uid,
            qos_class: status::qos_class(&self.pod.spec),
            spec: &spec,
            log_path: &log_path,
        };
        let t_spec = t0.elapsed();
        if let Err(e) = self.ctx.runtime.prepare(&id, &req, rootfs) {
            return self.retry_unless_sandbox_failed(i, "CreateContainerError", e);
        }
        // The bundle was made while the sandbox's namespaces were being created; runc joins them.
        if !self.finish_sandbox() {
            let _ = self.ctx.runtime.remove(&id);
            return;
        }
        if let Err(e) = self.ctx.runtime.launch(&id, &req) {
            return self.wait_and_retry(i, "CreateContainerError", e);
        }
        log::debug!(
            "pod {}: container {}: image + spec {:?}, bundle + monitor {:?}",
            self.pod.full_name(),
            c.name,
            t_spec,
            t0.elapsed() - t_spec
        );
        let backoff_policy = self.ctx.backoff;
        self.retry[i] = None;
        let rec = &mut self.containers[i];
        if rec.started_once {
            let finished = rec
                .last_terminated
                .as_ref()
                .and_then(|t| t.finished_at.as_deref())
                .and_then(clock::parse_rfc3339)
                .map(|d| d.as_secs_f64())
                .unwrap_or_else(now);
            rec.backoff = Some(Backoff::next(rec.backoff, &backoff_policy, finished));
        }
        rec.restart_count = restart_count;
        rec.started_once = true;
        rec.current = Some(Attempt {
            id: id.clone(),
            started_at: None,
        });
        rec.waiting = None;
        rec.not_before = None;
        rec.image = image.name.clone();
        rec.image_id = image.repo_digest.clone();
        self.launched = true;
        self.watch(&id);
        self.event(
            Some(&c.name),
            "Normal",
            "Created",
            format!("Created container: {}", c.name),
        );
        log::info!(
            "pod {}: container {} created (id {}, restart {})",
            self.pod.full_name(),
            c.name,
            short(&id),
            restart_count
        );
        self.save(i);
    }

    /// Short while a container is starting (to report Running promptly), longer while it runs,
    /// and never past the next scheduled retry.
    /// Turns a shown `ErrImagePull` into `ImagePullBackOff` once its moment has passed and the
    /// retry is still ahead.
    fn show_pull_back_off(&mut self, i: usize) {
        let Some(until) = self.pull_error_until[i] else {
            return;
        };
        if now() < until {
            return;
        }
        self.pull_error_until[i] = None;
        let image = self.specs[i].image.clone();
        let rec = &mut self.containers[i];
        let showing_error =
            rec.waiting.as_ref().and_then(|w| w.reason.as_deref()) == Some("ErrImagePull");
        if showing_error && rec.not_before.is_some_and(|t| now() < t) {
            rec.waiting = Some(StateWaiting {
                reason: Some("ImagePullBackOff".into()),
                message: Some(format!("Back-off pulling image {:?}", image)),
            });
            self.save(i);
        }
    }

    fn next_wake(&self) -> Duration {
        // With the bundle watcher, monitors' records wake the worker; without it, poll.
        let (starting, running) = if self.ctx.watcher.is_some() {
            (1.0, SAFETY_POLL_SECS)
        } else {
            (0.05, 0.5)
        };
        let mut wake: f64 = SAFETY_POLL_SECS;
        for rec in &self.containers {
            match &rec.current {
                Some(a) if a.started_at.is_none() => wake = wake.min(starting),
                Some(_) => wake = wake.min(running),
                None => {
                    if let Some(t) = rec.not_before {
                        wake = wake.min((t - now()).max(0.01));
                    }
                }
            }
        }
        for t in self.pull_error_until.iter().flatten() {
            wake = wake.min((t - now()).max(0.01));
        }
        if self.sandbox.is_none() {
            wake = wake.min((self.sandbox_retry_at - now()).max(0.01));
        }
        if let Some(t) = self.volumes.as_ref().and_then(|v| v.refresh_at) {
            wake = wake.min((t - now()).max(0.01));
        }
        if let Some(t) = self.next_probe() {
            wake = wake.min((t - now()).max(0.01));
        }
        let deadline = self
            .deadline_at()
            .filter(|_| self.deadline_kill_at.is_none());
        // Only moments still ahead: a kill already sent is followed by the monitor's record.
        for t in [self.sidecar_kill_at, self.deadline_kill_at, deadline]
            .into_iter()
            .flatten()
            .filter(|t| *t > now())
        {
            wake = wake.min((t - now()).max(0.01));
        }
        Duration::from_secs_f64(wake)
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

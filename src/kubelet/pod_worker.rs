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

pub enum WorkerMsg {
    /// Stop the pod's containers (SIGTERM, grace period, SIGKILL) and remove everything of it.
    Terminate,
    /// A container's monitor wrote a record: look at the containers again.
    Wake,
}

/// How long a worker sleeps between checks when nothing wakes it: only a monitor that died
/// without a word (killed by hand) is noticed this way.
const SAFETY_POLL_SECS: f64 = 5.0;

/// The kubelet never waits less than this for a container to stop.
const MIN_GRACE_SECS: i64 = 2;

pub struct PodWorker {
    ctx: Arc<Context>,
    pod: DesiredPod,
    dir: PathBuf,
    record: PodRecord,
    containers: Vec<ContainerRecord>,
    /// In-memory back-off for image and create errors (not crash loops), per container.
    retry: Vec<Option<Backoff>>,
    sandbox: Option<sandbox::Sandbox>,
    sandbox_error: Option<String>,
    sandbox_retry_at: f64,
    published: Option<PodStatus>,
    /// pod.json differs from what is on disk.
    record_dirty: bool,
    /// The worker's own inbox, handed to the bundle watcher so monitors' records wake it.
    wake: Sender<WorkerMsg>,
}

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
            },
            Err(e) => {
                log::error!("pod {}: {}; starting it afresh", pod.full_name(), e);
                PodRecord {
                    version: store::VERSION,
                    object: pod.object.clone(),
                    source: pod.source.clone(),
                    start_time: None,
                }
            }
        };
        let containers: Vec<ContainerRecord> = pod
            .spec
            .containers
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
            dir,
            record,
            containers,
            retry: vec![None; n],
            sandbox: None,
            sandbox_error: None,
            sandbox_retry_at: 0.0,
            published,
            record_dirty,
            wake,
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
                Ok(WorkerMsg::Terminate) => {
                    self.terminate();
                    let _ = done.send(Event::Terminated(self.pod.uid.clone()));
                    return;
                }
                Ok(WorkerMsg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                // The agent is shutting down: pods keep running and are adopted on restart.
                Err(RecvTimeoutError::Disconnected) => return,
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
        if self.sandbox.is_none() && now() >= self.sandbox_retry_at {
            self.setup_sandbox();
        }
        if self.sandbox.is_some() {
            for i in 0..self.containers.len() {
                self.sync_container(i);
            }
        }
        // After the containers were started: a crash before this only costs a restart of them
        // (their bundles are then orphans and collected), and it keeps an fsync off the start path.
        if self.record_dirty {
            match fsutil::ensure_dir(&self.dir)
                .and_then(|_| store::save_pod(&self.dir, &self.record))
            {
                Ok(()) => self.record_dirty = false,
                Err(e) => log::error!("pod {}: saving pod record: {}", self.pod.full_name(), e),
            }
        }
        self.publish();
    }

    fn setup_sandbox(&mut self) {
        let t0 = std::time::Instant::now();
        let result = (|| -> Result<sandbox::Sandbox, String> {
            fsutil::ensure_dir(&self.dir).map_err(|e| e.to_string())?;
            let limits = pod_limits(&self.pod.spec);
            self.ctx
                .runtime
                .cgroups
                .create(&self.ctx.runtime.pod_cgroup(&self.pod.uid), &limits)
                .map_err(|e| format!("creating pod cgroup: {}", e))?;
            let opts = sandbox::SandboxOptions {
                host_network: self.pod.spec.host_network,
                host_ipc: self.pod.spec.host_ipc,
            };
            let sb = sandbox::ensure(&self.dir, &self.hostname(), opts)
                .map_err(|e| format!("creating pod sandbox: {}", e))?;
            self.write_etc_files()
                .map_err(|e| format!("writing /etc files: {}", e))?;
            Ok(sb)
        })();
        match result {
            Ok(sb) => {
                log::debug!(
                    "pod {}: sandbox ready in {:?}",
                    self.pod.full_name(),
                    t0.elapsed()
                );
                self.sandbox = Some(sb);
                self.sandbox_error = None;
            }
            Err(e) => {
                log::error!("pod {}: {}", self.pod.full_name(), e);
                self.sandbox_error = Some(e);
                self.sandbox_retry_at = now() + self.ctx.backoff.initial;
            }
        }
    }

    /// The pod's hostname: spec.hostname, else the pod name (at most 63 characters).
    fn hostname(&self) -> String {
        let h = self
            .pod
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.pod.name.clone());
        h.chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_string()
    }

    fn write_etc_files(&self) -> std::io::Result<()> {
        let etc = self.dir.join("etc");
        fsutil::ensure_dir(&etc)?;
        let hosts = if self.pod.spec.host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.1.1\t{}\n",
                self.hostname()
            )
        };
        fsutil::write_volatile(&etc.join("hosts"), hosts.as_bytes(), 0o644)?;
        fsutil::write_volatile(
            &etc.join("hostname"),
            format!("{}\n", self.hostname()).as_bytes(),
            0o644,
        )?;
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        fsutil::write_volatile(&etc.join("resolv.conf"), &resolv, 0o644)
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

    fn sync_container(&mut self, i: usize) {
        if let Some(att) = self.containers[i].current.clone() {
            match self.ctx.runtime.observe(&att.id) {
                Observed::Starting => return,
                Observed::Running(s) => {
                    if att.started_at.is_none() {
                        log::info!(
                            "pod {}: container {} started (id {})",
                            self.pod.full_name(),
                            self.containers[i].name,
                            short(&att.id)
                        );
                        let rec = &mut self.containers[i];
                        rec.current = Some(Attempt {
                            id: att.id,
                            started_at: Some(s.started_at),
                        });
                        rec.waiting = None;
                        self.save(i);
                    }
                    return;
                }
                // Then fall through: a restart that is due now (the first one, which has no
                // back-off) happens in this sync, not whenever the worker next wakes up.
                Observed::Exited(e) => self.on_exit(i, att, Some(e)),
                Observed::Lost => self.on_exit(i, att, None),
            }
        }
        let rec = &self.containers[i];
        if rec.final_state.is_some() || rec.not_before.is_some_and(|t| now() < t) {
            return;
        }
        self.start_container(i);
    }

    fn on_exit(&mut self, i: usize, att: Attempt, exited: Option<crate::runtime::shim::Exited>) {
        let finished = now();
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
                message: e.start_error.clone(),
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
        let policy = self.pod.spec.restart_policy.as_deref().unwrap_or("Always");
        let restart = policy == "Always" || (policy == "OnFailure" && term.exit_code != 0);
        let backoff_policy = self.ctx.backoff;
        let label = format!(
            "container={} pod={}_{}({})",
            name, self.pod.name, self.pod.namespace, self.pod.uid
        );
        let rec = &mut self.containers[i];
        rec.current = None;
        if restart {
            rec.last_terminated = Some(term);
            match Backoff::restart_at(rec.backoff, &backoff_policy, finished) {
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
    }

    /// Pod fields the downward API exposes to environment variables.
    fn field(&self, path: &str) -> Option<String> {
        let host_ip = self.ctx.host_ip.clone().unwrap_or_default();
        let pod_ip = if self.pod.spec.host_network {
            host_ip.clone()
        } else {
            String::new()
        };
        let from_map = |prefix: &str, map: &std::collections::BTreeMap<String, String>| {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix("']"))
                .map(|k| map.get(k).cloned().unwrap_or_default())
        };
        Some(match path {
            "metadata.name" => self.pod.name.clone(),
            "metadata.namespace" => self.pod.namespace.clone(),
            "metadata.uid" => self.pod.uid.clone(),
            "spec.nodeName" => self.ctx.node_name.clone(),
            "spec.serviceAccountName" => self.pod.object["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            "status.hostIP" | "status.hostIPs" => host_ip,
            "status.podIP" | "status.podIPs" => pod_ip,
            _ => {
                return from_map("metadata.labels['", &self.pod.meta.labels)
                    .or_else(|| from_map("metadata.annotations['", &self.pod.meta.annotations))
            }
        })
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

    fn start_container(&mut self, i: usize) {
        let t0 = std::time::Instant::now();
        let c = self.pod.spec.containers[i].clone();
        let pull_policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| super::manifest::default_pull_policy(&c.image).into());
        let image = match self.ctx.images.resolve(&c.image) {
            Ok(Some(img)) => img,
            Ok(None) if pull_policy == "Never" => {
                return self.wait_and_retry(
                    i,
                    "ErrImageNeverPull",
                    format!(
                        "Container image {:?} is not present with pull policy of Never",
                        c.image
                    ),
                );
            }
            Ok(None) => {
                let reason = if self.containers[i]
                    .waiting
                    .as_ref()
                    .and_then(|w| w.reason.as_deref())
                    .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
                {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                };
                return self.wait_and_retry(i, reason, format!("image {:?} is not in the local image store (import it with `tinylet image import`); registry pulls are not supported yet", c.image));
            }
            Err(e) if matches!(e, crate::image::ImageError::InvalidReference { .. }) => {
                return self.wait_and_retry(
                    i,
                    "InvalidImageName",
                    format!("Failed to apply default image tag {:?}: {}", c.image, e),
                );
            }
            Err(e) => return self.wait_and_retry(i, "ErrImagePull", e.to_string()),
        };
        let Some(sb) = self.sandbox.clone() else {
            return;
        };
        let spec = match self.container_spec(&c, &image, &sb) {
            Ok(s) => s,
            Err(e) => return self.wait_and_retry(i, "CreateContainerError", e),
        };
        let rec = &self.containers[i];
        let restart_count = if rec.started_once {
            rec.restart_count + 1
        } else {
            0
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
        let log_path = self
            .ctx
            .pod_log_dir
            .join(format!(
                "{}_{}_{}",
                self.pod.namespace, self.pod.name, self.pod.uid
            ))
            .join(&c.name)
            .join(format!("{}.log", restart_count));
        let req = StartRequest {
            pod_uid: &self.pod.uid,
            snapshot: &image.rootfs,
            spec: &spec,
            log_path: &log_path,
        };
        let t_spec = t0.elapsed();
        if let Err(e) = self.ctx.runtime.start(&id, &req) {
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
        self.watch(&id);
        log::info!(
            "pod {}: container {} created (id {}, restart {})",
            self.pod.full_name(),
            c.name,
            short(&id),
            restart_count
        );
        self.save(i);
    }

    fn container_spec(
        &self,
        c: &Container,
        image: &crate::image::Image,
        sb: &sandbox::Sandbox,
    ) -> Result<serde_json::Value, String> {
        let field = |p: &str| self.field(p);
        let (env, vars) = env::environment(&image.config, c, &field)?;
        let args = env::process_args(&image.config, c, &vars)?;
        let (uid, gid) = env::user(&image.config, c, &image.rootfs)?;
        let q = |m: &std::collections::BTreeMap<String, serde_json::Value>, k: &str| {
            m.get(k).and_then(quantity::value_to_string)
        };
        let memory_limit = q(&c.resources.limits, "memory")
            .map(|s| quantity::parse_units(&s))
            .transpose()?;
        let cpu_limit = q(&c.resources.limits, "cpu")
            .map(|s| quantity::parse_millis(&s))
            .transpose()?;
        let cpu_request = q(&c.resources.requests, "cpu")
            .map(|s| quantity::parse_millis(&s))
            .transpose()?
            .or(cpu_limit);
        let hostname = self.hostname();
        let input = spec::SpecInput {
            container: c,
            args,
            env,
            cwd: env::working_dir(&image.config, c),
            uid,
            gid,
            hostname: (!self.pod.spec.host_network).then_some(hostname.as_str()),
            rootfs: &image.rootfs,
            sandbox: sb,
            host_pid: self.pod.spec.host_pid,
            cgroups_path: String::new(),
            etc_dir: &self.dir.join("etc"),
            memory_limit,
            cpu_limit_millis: cpu_limit,
            cpu_request_millis: cpu_request,
            annotations: vec![
                ("io.kubernetes.pod.name".into(), self.pod.name.clone()),
                (
                    "io.kubernetes.pod.namespace".into(),
                    self.pod.namespace.clone(),
                ),
                ("io.kubernetes.pod.uid".into(), self.pod.uid.clone()),
                ("io.kubernetes.container.name".into(), c.name.clone()),
            ],
        };
        spec::build(&input)
    }

    fn container_status(&self, i: usize) -> ContainerStatus {
        let c = &self.pod.spec.containers[i];
        let rec = &self.containers[i];
        let creating = || StateWaiting {
            reason: Some("ContainerCreating".into()),
            message: None,
        };
        let mut state = ContainerState::default();
        let mut container_id = None;
        if let Some(att) = &rec.current {
            container_id = Some(format!("runc://{}", att.id));
            match &att.started_at {
                Some(t) => {
                    state.running = Some(StateRunning {
                        started_at: t.clone(),
                    })
                }
                None => state.waiting = Some(creating()),
            }
        } else if let Some(f) = &rec.final_state {
            container_id = f.container_id.clone();
            state.terminated = Some(f.clone());
        } else {
            state.waiting = Some(rec.waiting.clone().unwrap_or_else(creating));
        }
        let running = state.running.is_some();
        ContainerStatus {
            name: c.name.clone(),
            state,
            last_state: ContainerState {
                terminated: rec.last_terminated.clone(),
                ..Default::default()
            },
            ready: running,
            restart_count: rec.restart_count,
            image: if rec.image.is_empty() {
                c.image.clone()
            } else {
                rec.image.clone()
            },
            image_id: rec.image_id.clone(),
            container_id,
            started: Some(running),
        }
    }

    fn publish(&mut self) {
        let statuses: Vec<ContainerStatus> = (0..self.containers.len())
            .map(|i| self.container_status(i))
            .collect();
        let phase = status::phase(&self.pod.spec, &statuses);
        let previous = self
            .published
            .as_ref()
            .map(|p| p.conditions.clone())
            .unwrap_or_default();
        let conditions = status::conditions(
            &self.pod.spec,
            &statuses,
            phase,
            self.sandbox.is_some(),
            &previous,
            &ts(now()),
        );
        let host_ip = self.ctx.host_ip.clone();
        let pod_ip = if self.pod.spec.host_network {
            host_ip.clone()
        } else {
            None
        };
        let st = PodStatus {
            phase: phase.into(),
            conditions,
            message: self.sandbox_error.clone(),
            reason: None,
            host_ips: host_ip
                .iter()
                .map(|ip| IpEntry { ip: ip.clone() })
                .collect(),
            host_ip,
            pod_ips: pod_ip.iter().map(|ip| IpEntry { ip: ip.clone() }).collect(),
            pod_ip,
            start_time: self.record.start_time.clone(),
            container_statuses: statuses,
            qos_class: Some(status::qos_class(&self.pod.spec).into()),
        };
        if self.published.as_ref() == Some(&st) {
            return;
        }
        if self.published.as_ref().map(|p| p.phase.as_str()) != Some(phase) {
            log::info!("pod {}: phase {}", self.pod.full_name(), phase);
        }
        if let Err(e) = store::save_status(&self.dir, &st) {
            log::error!("pod {}: saving status: {}", self.pod.full_name(), e);
        }
        self.published = Some(st);
    }

    /// Short while a container is starting (to report Running promptly), longer while it runs,
    /// and never past the next scheduled retry.
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
        if self.sandbox.is_none() {
            wake = wake.min((self.sandbox_retry_at - now()).max(0.01));
        }
        Duration::from_secs_f64(wake)
    }

    fn terminate(&mut self) {
        let name = self.pod.full_name();
        let grace = self
            .pod
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(MIN_GRACE_SECS);
        log::info!("pod {}: terminating (grace period {}s)", name, grace);
        let rt = &self.ctx.runtime;
        let ids: Vec<String> = self
            .containers
            .iter()
            .filter_map(|c| c.current.as_ref().map(|a| a.id.clone()))
            .collect();
        let alive =
            |id: &String| matches!(rt.observe(id), Observed::Running(_) | Observed::Starting);
        let wait_all = |deadline: f64| {
            while now() < deadline && ids.iter().any(alive) {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        for id in ids.iter().filter(|id| alive(id)) {
            if let Err(e) = rt.signal(id, "TERM") {
                log::debug!("pod {}: {}", name, e);
            }
        }
        wait_all(now() + grace as f64);
        for id in ids.iter().filter(|id| alive(id)) {
            log::info!(
                "pod {}: container {} did not stop within {}s; killing it",
                name,
                short(id),
                grace
            );
            if let Err(e) = rt.signal(id, "KILL") {
                log::debug!("pod {}: {}", name, e);
            }
        }
        wait_all(now() + 10.0);
        for attempt in 0..3 {
            match self.remove_everything(&ids) {
                Ok(()) => {
                    log::info!("pod {}: terminated and removed", name);
                    return;
                }
                Err(e) if attempt == 2 => log::error!("pod {}: cleanup incomplete: {}", name, e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    fn remove_everything(&self, ids: &[String]) -> Result<(), String> {
        let rt = &self.ctx.runtime;
        for id in ids {
            rt.remove(id)?;
        }
        sandbox::remove(&self.dir).map_err(|e| e.to_string())?;
        rt.cgroups
            .remove(&rt.pod_cgroup(&self.pod.uid))
            .map_err(|e| e.to_string())?;
        let logs = self.ctx.pod_log_dir.join(format!(
            "{}_{}_{}",
            self.pod.namespace, self.pod.name, self.pod.uid
        ));
        fsutil::remove_dir_all_if_exists(&logs).map_err(|e| e.to_string())?;
        fsutil::remove_dir_all_if_exists(&self.dir).map_err(|e| e.to_string())
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Pod-level limits: the sum of the containers' limits when every container has one (the kubelet's rule).
fn pod_limits(spec: &PodSpec) -> crate::runtime::cgroups::Limits {
    let sum = |res: &str, millis: bool| -> Option<u64> {
        spec.containers.iter().try_fold(0u64, |acc, c| {
            let s = c
                .resources
                .limits
                .get(res)
                .and_then(quantity::value_to_string)?;
            let v = if millis {
                quantity::parse_millis(&s).ok()?
            } else {
                quantity::parse_units(&s).ok()?
            };
            Some(acc.saturating_add(v))
        })
    };
    let requests: u64 = spec
        .containers
        .iter()
        .filter_map(|c| {
            c.resources
                .requests
                .get("cpu")
                .or_else(|| c.resources.limits.get("cpu"))
                .and_then(quantity::value_to_string)
        })
        .filter_map(|s| quantity::parse_millis(&s).ok())
        .sum();
    crate::runtime::cgroups::Limits {
        memory_bytes: sum("memory", false),
        cpu_limit_millis: sum("cpu", true),
        cpu_request_millis: (requests > 0).then_some(requests),
    }
}

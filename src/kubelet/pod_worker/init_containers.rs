//! The order containers run in, as the kubelet's: init containers one at a time, each to
//! completion, before any app container; sidecars (init containers with `restartPolicy: Always`)
//! started in their turn and kept running beside the app containers, then stopped once those are
//! done. Also the pod-wide stop of activeDeadlineSeconds.

use super::*;

impl PodWorker {
    /// The container of slot `i` (init containers first, then app containers).
    pub(super) fn spec_container(&self, i: usize) -> &Container {
        &self.specs[i]
    }

    /// Slot `i`'s container as the pod object has it (probes and hooks are read from there).
    pub(super) fn container_json(&self, i: usize) -> &serde_json::Value {
        let spec = &self.pod.object["spec"];
        if i < self.n_init {
            &spec["initContainers"][i]
        } else {
            &spec["containers"][i - self.n_init]
        }
    }

    pub(super) fn is_init(&self, i: usize) -> bool {
        i < self.n_init
    }

    pub(super) fn is_sidecar(&self, i: usize) -> bool {
        self.is_init(i) && self.specs[i].restart_policy.as_deref() == Some("Always")
    }

    /// Whether slot `i` is started again after exiting with `exit_code`.
    pub(super) fn restarts_after(&self, i: usize, exit_code: i32) -> bool {
        if self.stopped_for_good() {
            return false;
        }
        let policy = self.pod.spec.restart_policy.as_deref().unwrap_or("Always");
        if self.is_sidecar(i) {
            !self.app_containers_done()
        } else if self.is_init(i) {
            // Under restartPolicy Always, init containers restart as under OnFailure.
            policy != "Never" && exit_code != 0
        } else {
            policy == "Always" || (policy == "OnFailure" && exit_code != 0)
        }
    }

    /// An init container ended for good with a failure (restartPolicy Never): the pod failed.
    pub(super) fn init_failed(&self) -> bool {
        (0..self.n_init).any(|i| {
            !self.is_sidecar(i)
                && self.containers[i]
                    .final_state
                    .as_ref()
                    .is_some_and(|t| t.exit_code != 0)
        })
    }

    fn init_completed(&self, i: usize) -> bool {
        self.containers[i]
            .final_state
            .as_ref()
            .is_some_and(|t| t.exit_code == 0)
    }

    /// Nothing is left for the sidecars to serve: every app container has ended for good, or the
    /// pod failed before its app containers could start.
    pub(super) fn app_containers_done(&self) -> bool {
        let apps = &self.containers[self.n_init..];
        self.init_failed()
            || self.stopped_for_good()
            || (!apps.is_empty() && apps.iter().all(|r| r.final_state.is_some()))
    }

    /// Walks the init containers in order, starting the first one that has not completed.
    /// Returns whether the pod is initialized (its app containers may run).
    pub(super) fn sync_init_containers(&mut self, may_start: bool) -> bool {
        let done = self.app_containers_done();
        if self.record.initialized {
            for i in 0..self.n_init {
                if self.is_sidecar(i) {
                    self.sync_container(i, may_start && !done);
                }
            }
            return true;
        }
        let mut turn = may_start && !done;
        for i in 0..self.n_init {
            if !self.is_sidecar(i) && self.init_completed(i) {
                continue;
            }
            // Later ones are only looked at (an adopted attempt's exit is still recorded).
            self.sync_container(i, turn);
            turn &= self.init_through(i);
        }
        if turn {
            log::info!("pod {}: initialized", self.pod.full_name());
            self.record.initialized = true;
            self.record_dirty = true;
        }
        turn
    }

    /// The sandbox was made anew (a reboot, or its namespaces lost): as the kubelet does, the
    /// init containers run again before the app containers are started in it.
    pub(super) fn rerun_init_containers(&mut self) {
        if self.n_init == 0 || !self.record.initialized {
            return;
        }
        log::info!(
            "pod {}: new sandbox: running the init containers again",
            self.pod.full_name()
        );
        self.record.initialized = false;
        self.record_dirty = true;
        for i in 0..self.n_init {
            let rec = &mut self.containers[i];
            if let Some(t) = rec.final_state.take() {
                rec.last_terminated = Some(t);
                self.save(i);
            }
        }
    }

    /// Once the app containers are done, the sidecars are stopped (SIGTERM, then SIGKILL after
    /// the grace period) and not restarted.
    pub(super) fn stop_sidecars_when_done(&mut self) {
        if !self.app_containers_done() {
            return;
        }
        let sidecars: Vec<usize> = (0..self.n_init)
            .rev()
            .filter(|&i| self.is_sidecar(i))
            .collect();
        let mut kill_at = self.sidecar_kill_at;
        if kill_at.is_none()
            && sidecars
                .iter()
                .any(|&i| self.containers[i].current.is_some())
        {
            log::info!(
                "pod {}: stopping the sidecars: the app containers are done",
                self.pod.full_name()
            );
        }
        self.stop_then_kill(&sidecars, &mut kill_at);
        self.sidecar_kill_at = kill_at;
    }

    /// Sends SIGTERM to the running containers among `slots` the first time (setting `kill_at`
    /// to the end of the grace period), SIGKILL once `kill_at` has passed.
    fn stop_then_kill(&self, slots: &[usize], kill_at: &mut Option<f64>) {
        let running: Vec<(usize, String)> = slots
            .iter()
            .filter_map(|&i| Some((i, self.containers[i].current.as_ref()?.id.clone())))
            .collect();
        if running.is_empty() {
            return;
        }
        let signal = match *kill_at {
            None => {
                *kill_at = Some(now() + self.grace_secs());
                "TERM"
            }
            Some(t) if now() >= t => "KILL",
            Some(_) => return,
        };
        for (i, id) in &running {
            self.stop_container(*i, id, signal);
        }
    }

    /// The pod's grace period in seconds (at least the kubelet's minimum).
    pub(super) fn grace_secs(&self) -> f64 {
        // A hard eviction gives no grace period; the runtime's minimum still applies.
        if self.record.evicted.is_some() {
            return MIN_GRACE_SECS as f64;
        }
        self.pod
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(MIN_GRACE_SECS) as f64
    }

    fn stop_container(&self, i: usize, id: &str, signal: &str) {
        if signal == "TERM" {
            let name = &self.containers[i].name;
            self.event(
                Some(name),
                "Normal",
                "Killing",
                format!("Stopping container {}", name),
            );
        }
        if let Err(e) = self.ctx.runtime.signal(id, signal) {
            log::debug!("pod {}: {}", self.pod.full_name(), e);
        }
    }

    /// When activeDeadlineSeconds runs out (counted from the pod's start time).
    pub(super) fn deadline_at(&self) -> Option<f64> {
        let limit = self.pod.spec.active_deadline_seconds?;
        let start = self
            .record
            .start_time
            .as_deref()
            .and_then(clock::parse_rfc3339)?
            .as_secs_f64();
        Some(start + limit as f64)
    }

    pub(super) fn deadline_exceeded(&self) -> bool {
        self.deadline_at().is_some_and(|t| now() >= t)
    }

    /// Past the deadline every container is stopped and none restarts; the pod is Failed with
    /// reason DeadlineExceeded. Returns whether the deadline has passed.
    pub(super) fn enforce_deadline(&mut self) -> bool {
        if !self.stopped_for_good() {
            return false;
        }
        if self.deadline_kill_at.is_none() && self.record.evicted.is_none() {
            log::info!(
                "pod {}: active deadline of {}s exceeded; stopping it",
                self.pod.full_name(),
                self.pod.spec.active_deadline_seconds.unwrap_or(0)
            );
            self.event(
                None,
                "Normal",
                "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline".into(),
            );
        }
        let all: Vec<usize> = (0..self.containers.len()).collect();
        let mut kill_at = self.deadline_kill_at;
        self.stop_then_kill(&all, &mut kill_at);
        // Nothing was running: the deadline still counts as handled.
        self.deadline_kill_at = kill_at.or(Some(now()));
        true
    }

    /// Past the active deadline, or evicted: no container runs again.
    pub(super) fn stopped_for_good(&self) -> bool {
        self.record.evicted.is_some() || self.deadline_exceeded()
    }

    /// The node evicted this pod (`WorkerMsg::Evict`): remembered in the pod record, so the
    /// pod stays Failed across agent restarts; the next sync stops its containers.
    pub(super) fn evict(&mut self, message: String) {
        if self.record.evicted.is_some() {
            return;
        }
        log::warn!("pod {}: evicted: {}", self.pod.full_name(), message);
        self.event(None, "Warning", "Evicted", message.clone());
        self.record.evicted = Some(message);
        self.record_dirty = true;
    }

    /// The CRI log file of attempt `restart` of container `name`.
    pub(super) fn log_path(&self, name: &str, restart: u32) -> PathBuf {
        self.pod_log_dir()
            .join(name)
            .join(format!("{}.log", restart))
    }

    /// `<pod log dir>/<namespace>_<name>_<uid>`: made with the sandbox, as the kubelet does.
    pub(super) fn pod_log_dir(&self) -> PathBuf {
        self.ctx.pod_log_dir.join(format!(
            "{}_{}_{}",
            self.pod.namespace, self.pod.name, self.pod.uid
        ))
    }
}

//! Stopping a pod: SIGTERM, the grace period, SIGKILL, then removing every trace of it.

use super::*;

impl PodWorker {
    pub(super) fn terminate(&mut self, grace: Option<i64>) {
        let name = self.pod.full_name();
        let grace = grace
            .or(self.pod.spec.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(MIN_GRACE_SECS);
        log::info!("pod {}: terminating (grace period {}s)", name, grace);
        let deadline = now() + grace as f64;
        let running: Vec<(usize, String)> = (0..self.containers.len())
            .filter_map(|i| {
                self.containers[i]
                    .current
                    .as_ref()
                    .map(|a| (i, a.id.clone()))
            })
            .collect();
        let ids: Vec<String> = running.iter().map(|(_, id)| id.clone()).collect();
        // As the kubelet: app containers first; the sidecars, in reverse order, once those are
        // gone, still with at least the minimum grace period.
        let (mut sidecars, apps): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|(i, _)| self.is_sidecar(*i));
        sidecars.reverse();
        self.stop_group(&apps, deadline);
        self.stop_group(&sidecars, deadline.max(now() + MIN_GRACE_SECS as f64));
        // The probes' and hooks' thread leaves the pod's network namespace with it.
        self.dialer = None;
        let rt = &self.ctx.runtime;
        let alive =
            |id: &String| matches!(rt.observe(id), Observed::Running(_) | Observed::Starting);
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
        let kill_deadline = now() + 10.0;
        while now() < kill_deadline && ids.iter().any(alive) {
            std::thread::sleep(Duration::from_millis(50));
        }
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

    /// Stops these containers together: each runs its preStop hook (within what is left of the
    /// grace period), then gets SIGTERM; waits until all are gone or `deadline` passes.
    fn stop_group(&mut self, group: &[(usize, String)], deadline: f64) {
        let ctx = self.ctx.clone();
        let rt = &ctx.runtime;
        let alive =
            |id: &String| matches!(rt.observe(id), Observed::Running(_) | Observed::Starting);
        let group: Vec<(usize, String)> =
            group.iter().filter(|(_, id)| alive(id)).cloned().collect();
        if group.is_empty() {
            return;
        }
        let mut hooks = Vec::new();
        for (i, id) in &group {
            let c = &self.containers[*i].name;
            self.event(
                Some(c),
                "Normal",
                "Killing",
                format!("Stopping container {}", c),
            );
            let hook = lifecycle::parse_hook(self.container_json(*i), "preStop")
                .ok()
                .flatten();
            if let Some(h) = &hook {
                // Made before the threads borrow it.
                self.hook_dialer(h);
            }
            hooks.push((*i, id.clone(), hook));
        }
        let limit = Duration::from_secs_f64((deadline - now()).max(0.0));
        let (pod, dialer) = (self.pod.full_name(), self.dialer.as_ref());
        let failures: Vec<(usize, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = hooks
                .iter()
                .map(|(i, id, hook)| {
                    let pod = &pod;
                    scope.spawn(move || {
                        let failed = hook.as_ref().and_then(|h| {
                            let uses_net = matches!(
                                h,
                                lifecycle::Hook::Run(crate::kubelet::prober::Action::Http { .. })
                            );
                            lifecycle::run_hook(h, rt, id, dialer.filter(|_| uses_net), limit)
                                .err()
                                .map(|e| (*i, e))
                        });
                        if let Err(e) = rt.signal(id, "TERM") {
                            log::debug!("pod {}: {}", pod, e);
                        }
                        failed
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        });
        for (i, why) in failures {
            self.failed_pre_stop(i, why);
        }
        while now() < deadline && group.iter().any(|(_, id)| alive(id)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(super) fn remove_everything(&self, ids: &[String]) -> Result<(), String> {
        let rt = &self.ctx.runtime;
        for id in ids {
            rt.remove(id)?;
        }
        self.detach_network()?;
        sandbox::remove(&self.dir).map_err(|e| e.to_string())?;
        let qos = status::qos_class(&self.pod.spec);
        rt.cgroups
            .remove_pod(&rt.cgroup_root, &rt.pod_cgroup(qos, &self.pod.uid))
            .map_err(|e| e.to_string())?;
        // Pods started before the QoS layout had their cgroup right under kubepods.
        if qos != "Guaranteed" {
            rt.cgroups
                .remove(&rt.pod_cgroup("Guaranteed", &self.pod.uid))
                .map_err(|e| e.to_string())?;
        }
        let logs = self.ctx.pod_log_dir.join(format!(
            "{}_{}_{}",
            self.pod.namespace, self.pod.name, self.pod.uid
        ));
        fsutil::remove_dir_all_if_exists(&logs).map_err(|e| e.to_string())?;
        // tmpfs volumes first: removing the pod directory (and with it pod.json, the record
        // that brings this clean-up back after a crash) only once nothing is mounted below it.
        volumes::unmount_all(&self.dir)?;
        fsutil::remove_dir_all_if_exists(&self.dir).map_err(|e| e.to_string())
    }
}

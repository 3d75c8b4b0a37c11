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
        // The probes' thread leaves the pod's network namespace with it.
        self.dialer = None;
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
        for (c, id) in self
            .containers
            .iter()
            .filter_map(|c| c.current.as_ref().map(|a| (c, &a.id)))
        {
            if alive(id) {
                self.event(
                    Some(&c.name),
                    "Normal",
                    "Killing",
                    format!("Stopping container {}", c.name),
                );
            }
        }
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

    pub(super) fn remove_everything(&self, ids: &[String]) -> Result<(), String> {
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
        // tmpfs volumes first: removing the pod directory (and with it pod.json, the record
        // that brings this clean-up back after a crash) only once nothing is mounted below it.
        volumes::unmount_all(&self.dir)?;
        fsutil::remove_dir_all_if_exists(&self.dir).map_err(|e| e.to_string())
    }
}

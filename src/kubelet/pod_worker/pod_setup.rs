//! The pod-level half of a worker's job: pod cgroup, namespaces, shm and the /etc files
//! every container of the pod mounts.

use super::*;

impl PodWorker {
    /// Creates the pod cgroup and /etc files and starts making the namespaces on a thread of
    /// their own; `finish_sandbox` waits for them. Container bundles are prepared meanwhile.
    pub(super) fn setup_sandbox(&mut self) {
        let t0 = std::time::Instant::now();
        let result = (|| -> Result<sandbox::PendingSandbox, String> {
            fsutil::ensure_dir(&self.dir).map_err(|e| e.to_string())?;
            let mut limits = pod_limits(&self.pod.spec);
            limits.pids = u64::try_from(self.ctx.security.pod_pids_limit)
                .ok()
                .filter(|p| *p > 0);
            let rt = &self.ctx.runtime;
            let qos = status::qos_class(&self.pod.spec);
            rt.cgroups
                .create_pod(&rt.cgroup_root, &rt.pod_cgroup(qos, &self.pod.uid), &limits)
                .map_err(|e| format!("creating pod cgroup: {}", e))?;
            let opts = sandbox::SandboxOptions {
                host_network: self.pod.spec.host_network,
                host_ipc: self.pod.spec.host_ipc,
                share_pid: self.pod.spec.share_process_namespace == Some(true)
                    && !self.pod.spec.host_pid,
            };
            let pending = sandbox::begin(&self.dir, &self.hostname(), opts)
                .map_err(|e| format!("creating pod sandbox: {}", e))?;
            self.write_etc_files()
                .map_err(|e| format!("writing /etc files: {}", e))?;
            Ok(pending)
        })();
        match result {
            Ok(pending) => {
                self.sandbox_started = Some(t0);
                self.pending_sandbox = Some(pending);
            }
            Err(e) => self.sandbox_failed(e),
        }
    }

    /// Waits for the namespaces `setup_sandbox` started; afterwards `self.sandbox` is set or
    /// the failure is recorded for the pod's status and retried later.
    pub(super) fn finish_sandbox(&mut self) -> bool {
        if let Some(pending) = self.pending_sandbox.take() {
            match pending.wait() {
                Ok(sb) => {
                    if let Some(t0) = self.sandbox_started.take() {
                        log::debug!(
                            "pod {}: sandbox ready in {:?}",
                            self.pod.full_name(),
                            t0.elapsed()
                        );
                    }
                    self.sandbox = Some(sb);
                    self.sandbox_error = None;
                }
                Err(e) => self.sandbox_failed(format!("creating pod sandbox: {}", e)),
            }
        }
        self.sandbox.is_some()
    }

    fn sandbox_failed(&mut self, e: String) {
        log::error!("pod {}: {}", self.pod.full_name(), e);
        self.sandbox_error = Some(e);
        self.sandbox_retry_at = now() + self.ctx.backoff.initial;
    }

    /// The pod's hostname: spec.hostname, else the pod name (at most 63 characters).
    pub(super) fn hostname(&self) -> String {
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

    pub(super) fn write_etc_files(&self) -> std::io::Result<()> {
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
}

/// Pod-level limits as the kubelet's ResourceConfigForPod: cpu.shares from the summed cpu
/// requests (requests default to limits; none gives MinShares, so BestEffort pods get 2), and a
/// memory or cpu limit only when every container has one (then their sum).
pub(super) fn pod_limits(spec: &PodSpec) -> crate::runtime::cgroups::Limits {
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
        cpu_request_millis: Some(requests),
        pids: None,
    }
}

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
            let pending = sandbox::begin(&self.dir, &self.uts_hostname()?, opts)
                .map_err(|e| format!("creating pod sandbox: {}", e))?;
            if !pending.is_new() && !self.pod.spec.host_network {
                // An adopted sandbox keeps the addresses it was given.
                self.pod_ips = crate::network::recorded_ips(&self.dir);
            }
            self.write_etc_files()
                .map_err(|e| format!("writing /etc files: {}", e))?;
            Ok(pending)
        })();
        match result {
            Ok(pending) => {
                if pending.is_new() {
                    self.rerun_init_containers();
                }
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
            let new = pending.is_new();
            match pending.wait() {
                Ok(sb) => {
                    if let Err(e) = self.attach_network(&sb, new) {
                        self.event(
                            None,
                            "Warning",
                            "FailedCreatePodSandBox",
                            format!("Failed to create pod sandbox: {}", e),
                        );
                        self.sandbox_failed(e);
                        return false;
                    }
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

    /// The hostname the pod's UTS namespace gets: its FQDN with setHostnameAsFQDN, else its
    /// short hostname. The kernel allows 64 characters.
    pub(super) fn uts_hostname(&self) -> Result<String, String> {
        match self.fqdn().filter(|_| self.pod.spec.set_hostname_as_fqdn == Some(true)) {
            Some(f) if f.len() > 64 => Err(format!(
                "failed to construct FQDN from pod hostname and cluster domain, FQDN {} is too long (64 characters is the max, {} characters requested)",
                f,
                f.len()
            )),
            Some(f) => Ok(f),
            None => Ok(self.hostname()),
        }
    }

    /// `<hostname>.<subdomain>.<namespace>.svc.<cluster domain>` when the pod has a subdomain.
    pub(super) fn fqdn(&self) -> Option<String> {
        let sub = self
            .pod
            .spec
            .subdomain
            .as_deref()
            .filter(|s| !s.is_empty())?;
        Some(format!(
            "{}.{}.{}.svc.{}",
            self.hostname(),
            sub,
            self.pod.namespace,
            self.ctx.cluster_domain
        ))
    }

    /// The pod's hostname: spec.hostname, else the pod name (at most 63 characters).
    pub(super) fn hostname(&self) -> String {
        // hostnameOverride (alpha in 1.34) replaces the name outright.
        if let Some(h) = self.pod.object["spec"]["hostnameOverride"]
            .as_str()
            .filter(|h| !h.is_empty())
        {
            return h.to_string();
        }
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
        self.write_hosts()?;
        fsutil::write_volatile(
            &etc.join("hostname"),
            format!("{}\n", self.uts_hostname().map_err(std::io::Error::other)?).as_bytes(),
            0o644,
        )?;
        let resolv = self.resolv_conf().map_err(std::io::Error::other)?;
        fsutil::write_volatile(&etc.join("resolv.conf"), resolv.as_bytes(), 0o644)
    }

    /// /etc/hosts as the kubelet writes it: the host's for hostNetwork pods, else localhost,
    /// the pod's own names, and hostAliases.
    pub(super) fn write_hosts(&self) -> std::io::Result<()> {
        let etc = self.dir.join("etc");
        let mut hosts = if self.pod.spec.host_network {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            let names = match self.fqdn() {
                Some(f) => format!("{}\t{}", f, self.hostname()),
                None => self.hostname(),
            };
            // The pod's own name resolves to its IPs, as the kubelet writes it; without a pod
            // network to 127.0.1.1, as on Debian.
            let own: String = if self.pod_ips.is_empty() {
                format!("127.0.1.1\t{}\n", names)
            } else {
                self.pod_ips
                    .iter()
                    .map(|ip| format!("{}\t{}\n", ip, names))
                    .collect()
            };
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{}",
                own
            )
        };
        hosts.push_str(&host_aliases(&self.pod.spec.host_aliases));
        fsutil::write_volatile(&etc.join("hosts"), hosts.as_bytes(), 0o644)
    }
}

/// The kubelet's block for spec.hostAliases, appended to the hosts file (also with hostNetwork).
fn host_aliases(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for a in aliases {
        out.push_str(&a.ip);
        for h in &a.hostnames {
            out.push('\t');
            out.push_str(h);
        }
        out.push('\n');
    }
    out
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

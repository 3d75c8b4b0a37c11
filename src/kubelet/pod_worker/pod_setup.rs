//! The pod-level half of a worker's job: pod cgroup, namespaces, shm and the /etc files
//! every container of the pod mounts.

use super::*;

impl PodWorker {
    /// Starts making the namespaces, and the pod cgroup and /etc files, on threads of their own;
    /// `finish_sandbox` waits for them. Container bundles are prepared
    /// meanwhile.
    pub(super) fn setup_sandbox(&mut self) {
        let t0 = std::time::Instant::now();
        let result = (|| -> Result<(sandbox::PendingSandbox, PendingSetup), String> {
            fsutil::ensure_dir(&self.dir).map_err(|e| e.to_string())?;
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
            let etc = self.etc_files()?;
            let setup = self.begin_pod_setup(etc)?;
            Ok((pending, setup))
        })();
        match result {
            Ok((pending, setup)) => {
                if pending.is_new() {
                    self.rerun_init_containers();
                }
                self.sandbox_started = Some(t0);
                self.pending_sandbox = Some(pending);
                self.pending_setup = Some(setup);
            }
            Err(e) => self.sandbox_failed(e),
        }
    }

    /// Makes the pod cgroup (and the QoS-level ones the first time) and writes the /etc files on
    /// a thread of its own: on cgroup v1 that is seven hierarchies' worth of mkdir and limit
    /// files, and a dozen file system calls, which runc needs only when it starts the first
    /// container.
    fn begin_pod_setup(&self, etc: EtcFiles) -> Result<PendingSetup, String> {
        let mut limits = pod_limits(&self.pod.spec);
        limits.pids = u64::try_from(self.ctx.security.pod_pids_limit)
            .ok()
            .filter(|p| *p > 0);
        let rt = &self.ctx.runtime;
        let cgroup = rt.pod_cgroup(status::qos_class(&self.pod.spec), &self.pod.uid);
        let (cgroups, root, ready) = (
            rt.cgroups.clone(),
            rt.cgroup_root.clone(),
            rt.qos_cgroups_ready.clone(),
        );
        std::thread::Builder::new()
            .name("pod-setup".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                cgroups
                    .create_pod(&root, &cgroup, &limits, &ready)
                    .map_err(|e| format!("creating pod cgroup: {}", e))?;
                fsutil::ensure_dir(&etc.log_dir).map_err(|e| e.to_string())?;
                etc.write()
                    .map_err(|e| format!("writing /etc files: {}", e))
            })
            .map_err(|e| format!("spawning the pod setup thread: {}", e))
    }

    /// Waits for the namespaces, pod cgroup and /etc files `setup_sandbox` started; afterwards
    /// `self.sandbox` is set or the failure is recorded for the pod's status and retried later.
    pub(super) fn finish_sandbox(&mut self) -> bool {
        if let Some(pending) = self.pending_sandbox.take() {
            let new = pending.is_new();
            // Both are waited for, so that no thread is left working on a retried sandbox.
            let setup = self.pending_setup.take().map_or(Ok(()), |t| {
                t.join()
                    .unwrap_or_else(|_| Err("the pod setup thread panicked".to_string()))
            });
            match (pending.wait(), setup) {
                (Ok(_), Err(e)) => self.sandbox_failed(e),
                (Ok(sb), Ok(())) => {
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
                (Err(e), _) => self.sandbox_failed(format!("creating pod sandbox: {}", e)),
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

    /// The pod's /etc files as they are to be written (`write_etc_files`).
    fn etc_files(&self) -> Result<EtcFiles, String> {
        Ok(EtcFiles {
            log_dir: self.pod_log_dir(),
            dir: self.dir.join("etc"),
            hosts: self.hosts_file(),
            hostname: format!("{}\n", self.uts_hostname()?),
            resolv_conf: self.resolv_conf()?,
        })
    }

    /// Rewrites /etc/hosts (the pod's IPs are known now).
    pub(super) fn write_hosts(&self) -> std::io::Result<()> {
        let path = self.dir.join("etc").join("hosts");
        fsutil::write_volatile(&path, self.hosts_file().as_bytes(), 0o644)
    }

    /// /etc/hosts as the kubelet writes it: the host's for hostNetwork pods, else localhost,
    /// the pod's own names, and hostAliases.
    fn hosts_file(&self) -> String {
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
        hosts
    }
}

/// The pod's generated /etc files, made on the worker (DNS warnings become events) and written
/// on the setup thread, with the pod's log directory.
struct EtcFiles {
    /// The pod's log directory, made here too: one mkdir less for each container's monitor.
    log_dir: std::path::PathBuf,
    dir: std::path::PathBuf,
    hosts: String,
    hostname: String,
    resolv_conf: String,
}

impl EtcFiles {
    fn write(&self) -> std::io::Result<()> {
        fsutil::ensure_dir(&self.dir)?;
        for (name, text) in [
            ("hosts", &self.hosts),
            ("hostname", &self.hostname),
            ("resolv.conf", &self.resolv_conf),
        ] {
            fsutil::write_volatile(&self.dir.join(name), text.as_bytes(), 0o644)?;
        }
        Ok(())
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

//! The pod's network as its worker sees it: CNI ADD once the sandbox's network namespace exists
//! (CHECK for an adopted one), DEL when the pod is removed, and the resolv.conf per dnsPolicy.

use super::*;
use crate::network::{self, dns};

impl PodWorker {
    /// Sets up the pod network in a sandbox that was just made (`new`) or that has none on
    /// record (an earlier attempt failed); checks an adopted one. The error is the reason the
    /// sandbox is not ready.
    pub(super) fn attach_network(
        &mut self,
        sb: &sandbox::Sandbox,
        new: bool,
    ) -> Result<(), String> {
        if self.pod.spec.host_network {
            return Ok(());
        }
        let Some(netns) = sb.net.clone() else {
            return Ok(());
        };
        let net = self.ctx.network.clone();
        // A finished pod's network was released; it gets no new one (agent restart, reboot).
        if self.finished() {
            return Ok(());
        }
        if !new && network::attached(&self.dir) {
            self.pod_ips = network::recorded_ips(&self.dir);
            if let Err(e) = net.check(&self.dir, &netns) {
                log::warn!("pod {}: CNI CHECK failed: {}", self.pod.full_name(), e);
                self.event(
                    None,
                    "Warning",
                    "NetworkNotReady",
                    format!("CNI CHECK failed: {}", e),
                );
            }
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let pod = network::PodRef {
            namespace: self.pod.namespace.clone(),
            name: self.pod.name.clone(),
            uid: self.pod.uid.clone(),
        };
        let ports = network::port_mappings(&self.pod.object["spec"]);
        let ips_before = self.pod_ips.clone();
        let stale = (!new).then_some(netns.as_path());
        let ips = net
            .attach(&self.dir, &pod, &netns, stale, ports)
            .map_err(|e| format!("failed to set up the pod network: {}", e))?;
        self.pod_ips = ips.unwrap_or_default();
        if !self.pod_ips.is_empty() {
            log::info!(
                "pod {}: network set up in {:?}: {}",
                self.pod.full_name(),
                t0.elapsed(),
                self.pod_ips.join(", ")
            );
        }
        if self.pod_ips == ips_before {
            // No pod network (no CNI configuration): the hosts file written with the sandbox stands.
            return Ok(());
        }
        // The pod's own name resolves to its address now.
        self.write_hosts()
            .map_err(|e| format!("writing /etc/hosts: {}", e))
    }

    /// The pod reached Succeeded or Failed with nothing running: as the kubelet stops a finished
    /// pod's sandbox, its network is released (its address goes back to the pool); the status
    /// keeps the IPs it had.
    pub(super) fn release_network_when_finished(&mut self) {
        if !self.finished() || self.containers.iter().any(|c| c.current.is_some()) {
            return;
        }
        if !network::attached(&self.dir) {
            return;
        }
        if let Err(e) = self.detach_network() {
            log::warn!("pod {}: {}", self.pod.full_name(), e);
        }
    }

    /// The published phase is terminal.
    pub(super) fn finished(&self) -> bool {
        self.published
            .as_ref()
            .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
    }

    /// CNI DEL of the pod's network, with its namespace if that still exists (not after a reboot).
    pub(super) fn detach_network(&self) -> Result<(), String> {
        let ns = self.dir.join("ns").join("net");
        let netns = sandbox::is_nsfs(&ns).then_some(ns.as_path());
        match self.ctx.network.detach(&self.dir, netns) {
            Ok(true) => {
                log::info!("pod {}: network released", self.pod.full_name());
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(format!("tearing down the pod network: {}", e)),
        }
    }

    /// The pod's resolv.conf; the kubelet's DNS warnings go out as events.
    pub(super) fn resolv_conf(&self) -> Result<String, String> {
        let spec = &self.pod.object["spec"];
        let pod = dns::PodDns {
            namespace: &self.pod.namespace,
            policy: spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst"),
            host_network: self.pod.spec.host_network,
            dns_config: &spec["dnsConfig"],
        };
        let r = dns::resolv_conf(&self.ctx.network.node_dns(), &pod)?;
        for (reason, message) in r.warnings {
            log::warn!("pod {}: {}", self.pod.full_name(), message);
            self.event(None, "Warning", reason, message);
        }
        Ok(r.content)
    }

    /// Container `i` reads the pod's IP through the downward API.
    pub(super) fn env_needs_pod_ip(&self, i: usize) -> bool {
        !self.pod.spec.host_network
            && self.container_json(i)["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    matches!(
                        e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
                        Some("status.podIP" | "status.podIPs")
                    )
                })
    }
}

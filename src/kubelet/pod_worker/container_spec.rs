//! From a container of the pod to the OCI spec runc gets: downward-API fields, environment,
//! command, user, security context and limits.

use super::*;
use crate::kubelet::{security, sysctls};

/// Why a container's spec could not be made: the waiting reason and its message.
pub(super) struct SpecError {
    pub reason: &'static str,
    pub message: String,
}

impl From<String> for SpecError {
    fn from(message: String) -> SpecError {
        SpecError {
            reason: "CreateContainerError",
            message,
        }
    }
}

impl PodWorker {
    /// Pod fields the downward API exposes to environment variables.
    pub(super) fn field(&self, path: &str) -> Option<String> {
        let host_ip = self.ctx.host_ip.clone().unwrap_or_default();
        let pod_ips = if self.pod.spec.host_network {
            vec![host_ip.clone()]
        } else {
            self.pod_ips.clone()
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
            "status.podIP" => pod_ips.first().cloned().unwrap_or_default(),
            // A comma-separated list, as the kubelet gives it.
            "status.podIPs" => pod_ips.join(","),
            _ => {
                return from_map("metadata.labels['", &self.pod.meta.labels)
                    .or_else(|| from_map("metadata.annotations['", &self.pod.meta.annotations))
            }
        })
    }

    pub(super) fn container_spec(
        &self,
        c: &Container,
        image: &crate::image::Image,
        sb: &sandbox::Sandbox,
    ) -> Result<serde_json::Value, SpecError> {
        let field = |p: &str| self.field(p);
        let (env, vars) = self.container_env(&image.config, c, &field)?;
        let args = env::process_args(&image.config, c, &vars)?;
        // The pod's securityContext under the container's; from here on `c` carries the result.
        let sc = security::effective(&self.pod.spec, c);
        let merged = Container {
            security_context: Some(sc.clone()),
            ..c.clone()
        };
        let c = &merged;
        let pod_label = format!("{}_{}({})", self.pod.name, self.pod.namespace, self.pod.uid);
        security::verify_run_as_non_root(&sc, &image.config.user, &pod_label, &c.name).map_err(
            |message| SpecError {
                reason: "CreateContainerConfigError",
                message,
            },
        )?;
        let (uid, gid) = env::user(&image.config, c, &image.rootfs)?;
        let additional_gids = security::additional_gids(&self.pod.spec, &image.rootfs, uid, gid)?;
        let seccomp = security::seccomp_profile(&sc, &self.ctx.security)?;
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
        let hostname = self.uts_hostname()?;
        let mut binds = self.binds(c, &vars)?;
        binds.extend(self.termination_log_bind(c)?);
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
            binds,
            devices: if c
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
            {
                image.device_nodes()
            } else {
                Vec::new()
            },
            additional_gids,
            sysctls: sysctls::for_spec(&self.pod.spec),
            seccomp,
            pid_namespace: sb.pid.clone(),
        };
        Ok(spec::build(&input)?)
    }
}

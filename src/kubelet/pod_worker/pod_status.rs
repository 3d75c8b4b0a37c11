//! The pod status the worker publishes (status.json, what `ps` and later the API server see).

use super::*;

impl PodWorker {
    pub(super) fn container_status(&self, i: usize) -> ContainerStatus {
        let c = self.spec_container(i);
        let rec = &self.containers[i];
        // Containers whose turn has not come show PodInitializing, as the kubelet's; with no init
        // containers, every container's turn has come (ContainerCreating while the sandbox fails).
        let turn = self.record.initialized || self.n_init == 0 || self.init_turn() == Some(i);
        let creating = || StateWaiting {
            reason: Some(
                if turn {
                    "ContainerCreating"
                } else {
                    "PodInitializing"
                }
                .into(),
            ),
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
        let (started, ready) = self.probe_state(i);
        ContainerStatus {
            name: c.name.clone(),
            state,
            last_state: ContainerState {
                terminated: rec.last_terminated.clone(),
                ..Default::default()
            },
            ready: running && started && ready,
            restart_count: rec.restart_count,
            image: if rec.image.is_empty() {
                c.image.clone()
            } else {
                rec.image.clone()
            },
            image_id: rec.image_id.clone(),
            container_id,
            started: Some(running && started),
        }
    }

    pub(super) fn publish(&mut self) {
        let mut statuses: Vec<ContainerStatus> = (0..self.containers.len())
            .map(|i| self.container_status(i))
            .collect();
        let init_statuses: Vec<ContainerStatus> = statuses.drain(..self.n_init).collect();
        let init = self.init_progress();
        let deadline = self.deadline_exceeded();
        let evicted = self.record.evicted.clone();
        let phase = if deadline || evicted.is_some() || self.init_failed() {
            "Failed"
        } else if !self.record.initialized {
            "Pending"
        } else {
            status::phase(&self.pod.spec, &statuses)
        };
        // Sidecars' readiness counts for the pod's: the conditions see every status.
        let all: Vec<ContainerStatus> = init_statuses.iter().chain(&statuses).cloned().collect();
        let previous = self
            .published
            .as_ref()
            .map(|p| p.conditions.clone())
            .unwrap_or_default();
        let mut conditions = status::conditions(
            &self.pod.spec,
            &all,
            &init,
            phase,
            self.sandbox.is_some(),
            &previous,
            &ts(now()),
        );
        if let Some(m) = &evicted {
            // The kubelet marks the pods it evicts as disrupted by it.
            let since = previous
                .iter()
                .find(|c| c.type_ == "DisruptionTarget")
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| ts(now()));
            conditions.push(PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                last_probe_time: None,
                last_transition_time: since,
                reason: Some("TerminationByKubelet".into()),
                message: Some(m.clone()),
            });
        }
        let host_ip = self.ctx.host_ip.clone();
        let mut pod_ips: Vec<String> = if self.pod.spec.host_network {
            host_ip.iter().cloned().collect()
        } else {
            self.pod_ips.clone()
        };
        // As the kubelet: a finished pod whose network was released keeps the IPs it had.
        if pod_ips.is_empty() && (phase == "Succeeded" || phase == "Failed") {
            if let Some(p) = &self.published {
                pod_ips = p.pod_ips.iter().map(|e| e.ip.clone()).collect();
            }
        }
        let st = PodStatus {
            phase: phase.into(),
            conditions,
            message: if let Some(m) = &evicted {
                Some(m.clone())
            } else if deadline {
                Some("Pod was active on the node longer than the specified deadline".into())
            } else {
                self.sandbox_error.clone()
            },
            reason: if evicted.is_some() {
                Some("Evicted".into())
            } else {
                deadline.then(|| "DeadlineExceeded".into())
            },
            host_ips: host_ip
                .iter()
                .map(|ip| IpEntry { ip: ip.clone() })
                .collect(),
            host_ip,
            pod_ip: pod_ips.first().cloned(),
            pod_ips: pod_ips.into_iter().map(|ip| IpEntry { ip }).collect(),
            start_time: self.record.start_time.clone(),
            init_container_statuses: init_statuses,
            container_statuses: statuses,
            qos_class: Some(status::qos_class(&self.pod.spec).into()),
        };
        if self.published.as_ref() == Some(&st) {
            if self.status_unsaved {
                self.save_status(&st);
            }
            // A restarted agent still tells the API server once: it may have missed the last one.
            if !self.status_announced {
                self.status_announced = true;
                if let Some(link) = self.ctx.cluster.get() {
                    link.pod_status(&self.pod, &st);
                }
            }
            return;
        }
        self.status_announced = true;
        if self.published.as_ref().map(|p| p.phase.as_str()) != Some(phase) {
            log::info!("pod {}: phase {}", self.pod.full_name(), phase);
        }
        self.save_status(&st);
        if let Some(link) = self.ctx.cluster.get() {
            link.pod_status(&self.pod, &st);
        }
        self.published = Some(st);
    }

    fn save_status(&mut self, st: &PodStatus) {
        let result = store::save_status(&self.dir, st);
        if let Err(e) = &result {
            // Once per failure, not once per sync.
            if !self.status_unsaved {
                log::error!("pod {}: saving status: {}", self.pod.full_name(), e);
            }
        }
        self.status_unsaved = result.is_err();
    }

    /// The first init container that has not gone through yet (completed; a sidecar: started).
    pub(super) fn init_turn(&self) -> Option<usize> {
        (0..self.n_init).find(|&i| !self.init_through(i))
    }

    pub(super) fn init_through(&self, i: usize) -> bool {
        let rec = &self.containers[i];
        if self.is_sidecar(i) {
            rec.current.as_ref().is_some_and(|a| a.started_at.is_some()) && self.probe_state(i).0
        } else {
            rec.final_state.as_ref().is_some_and(|t| t.exit_code == 0)
        }
    }

    fn init_progress(&self) -> status::InitProgress {
        status::InitProgress {
            incomplete: if self.record.initialized {
                Vec::new()
            } else {
                (0..self.n_init)
                    .filter(|&i| !self.init_through(i))
                    .map(|i| self.specs[i].name.clone())
                    .collect()
            },
            sidecars: (0..self.n_init)
                .filter(|&i| self.is_sidecar(i))
                .map(|i| self.specs[i].name.clone())
                .collect(),
        }
    }

    /// Records an event about this pod (or one of its containers) in cluster mode.
    pub(super) fn event(
        &self,
        container: Option<&str>,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) {
        if let Some(link) = self.ctx.cluster.get() {
            link.events.record(
                crate::kubelet::cluster::events::pod_ref(
                    &self.pod.namespace,
                    &self.pod.name,
                    &self.pod.uid,
                    container.map(|c| (c, self.specs[..self.n_init].iter().any(|s| s.name == c))),
                ),
                type_,
                reason,
                message,
            );
        }
    }
}

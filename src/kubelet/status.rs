//! Pod status as the kubelet computes it (pkg/kubelet/kubelet_pods.go getPhase, status/generate.go
//! conditions, qos.GetPodQOS), from the containers' statuses.

use crate::kube::quantity;
use crate::kube::types::{ContainerStatus, PodCondition, PodSpec, PodStatus};

/// The pod phase from its containers and restart policy.
pub fn phase(spec: &PodSpec, statuses: &[ContainerStatus]) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded, mut unknown) = (0, 0, 0, 0, 0);
    for c in &spec.containers {
        match statuses.iter().find(|s| s.name == c.name) {
            Some(s) if s.state.running.is_some() => running += 1,
            Some(s) if s.state.terminated.is_some() => {
                stopped += 1;
                if s.state
                    .terminated
                    .as_ref()
                    .is_some_and(|t| t.exit_code == 0)
                {
                    succeeded += 1;
                }
            }
            Some(s) if s.state.waiting.is_some() => {
                if s.last_state.terminated.is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
            _ => unknown += 1,
        }
    }
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if waiting > 0 {
        "Pending"
    } else if running > 0 && unknown == 0 {
        "Running"
    } else if running == 0 && stopped > 0 && unknown == 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

/// Guaranteed, Burstable or BestEffort, by the kubelet's GetPodQOS: only cpu and memory count,
/// zero quantities are ignored, requests default to limits (as the API server defaults them),
/// and a pod is Guaranteed when every container limits both cpu and memory and the pod's summed
/// requests equal its summed limits.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut requests = [0u64; 2];
    let mut limits = [0u64; 2];
    let (mut any_request, mut any_limit) = ([false; 2], [false; 2]);
    let mut guaranteed = true;
    for c in &spec.containers {
        let r = &c.resources;
        for (i, res) in ["cpu", "memory"].into_iter().enumerate() {
            let parse = |v: Option<&serde_json::Value>| {
                let s = v.and_then(quantity::value_to_string)?;
                if res == "cpu" {
                    quantity::parse_millis(&s).ok()
                } else {
                    quantity::parse_units(&s).ok()
                }
            };
            let limit = parse(r.limits.get(res)).filter(|v| *v > 0);
            let request = parse(r.requests.get(res))
                .or_else(|| (!r.requests.contains_key(res)).then_some(limit).flatten())
                .filter(|v| *v > 0);
            if let Some(q) = request {
                requests[i] += q;
                any_request[i] = true;
            }
            match limit {
                Some(l) => {
                    limits[i] += l;
                    any_limit[i] = true;
                }
                None => guaranteed = false,
            }
        }
    }
    if any_request == [false; 2] && any_limit == [false; 2] {
        return "BestEffort";
    }
    if guaranteed && any_request == any_limit && requests == limits {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Where the pod's init containers are.
#[derive(Debug, Clone, Default)]
pub struct InitProgress {
    /// Init containers not completed yet (sidecars: not started yet); empty once initialized.
    pub incomplete: Vec<String>,
    /// Sidecars: their readiness counts for the pod's.
    pub sidecars: Vec<String>,
}

/// The five pod conditions. `statuses` holds app and init containers' statuses; `previous`
/// keeps lastTransitionTime stable while a condition holds.
pub fn conditions(
    spec: &PodSpec,
    statuses: &[ContainerStatus],
    init: &InitProgress,
    phase: &str,
    sandbox_ready: bool,
    previous: &[PodCondition],
    now: &str,
) -> Vec<PodCondition> {
    let unready: Vec<&str> = init
        .sidecars
        .iter()
        .map(String::as_str)
        .chain(spec.containers.iter().map(|c| c.name.as_str()))
        .filter(|name| !statuses.iter().any(|s| s.name == *name && s.ready))
        .collect();
    let ready_reason = |completed: bool| {
        if completed {
            (Some("PodCompleted".to_string()), None)
        } else {
            (
                Some("ContainersNotReady".to_string()),
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        }
    };
    let completed = phase == "Succeeded" || phase == "Failed";
    let mut out = Vec::new();
    let mut push = |t: &str, ok: bool, why: (Option<String>, Option<String>)| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|p| p.type_ == t && p.status == status)
            .map(|p| p.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        let (reason, message) = if ok { (None, None) } else { why };
        out.push(PodCondition {
            type_: t.into(),
            status: status.into(),
            last_probe_time: None,
            last_transition_time: since,
            reason,
            message,
        });
    };
    push(
        "PodReadyToStartContainers",
        sandbox_ready && !completed,
        (None, None),
    );
    if init.incomplete.is_empty() {
        let reason = completed.then(|| "PodCompleted".to_string());
        push("Initialized", true, (reason, None));
    } else {
        push(
            "Initialized",
            false,
            (
                Some("ContainersNotInitialized".into()),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    init.incomplete.join(" ")
                )),
            ),
        );
    }
    push("Ready", unready.is_empty(), ready_reason(completed));
    push(
        "ContainersReady",
        unready.is_empty(),
        ready_reason(completed),
    );
    push("PodScheduled", true, (None, None));
    out
}

/// The names of a pod object's sidecars (init containers with `restartPolicy: Always`).
pub fn sidecar_names(pod: &serde_json::Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// What `kubectl get pods` shows in its STATUS column (`sidecars`: the init containers that
/// are sidecars, as kubectl reads them from the spec).
pub fn display_reason(status: &PodStatus, sidecars: &[String]) -> String {
    let mut reason = status
        .reason
        .clone()
        .unwrap_or_else(|| status.phase.clone());
    let total = status.init_container_statuses.len();
    for (i, c) in status.init_container_statuses.iter().enumerate() {
        let sidecar = sidecars.contains(&c.name);
        if let Some(t) = &c.state.terminated {
            // Sidecars end after the app containers, whatever their exit code.
            if t.exit_code == 0 || sidecar {
                continue;
            }
            let why = match (&t.reason, t.signal) {
                (Some(r), _) if !r.is_empty() => r.clone(),
                (_, Some(sig)) if sig != 0 => format!("Signal:{}", sig),
                _ => format!("ExitCode:{}", t.exit_code),
            };
            return format!("Init:{}", why);
        }
        if sidecar && c.started == Some(true) {
            continue;
        }
        return match c.state.waiting.as_ref().and_then(|w| w.reason.as_deref()) {
            Some(r) if !r.is_empty() && r != "PodInitializing" => format!("Init:{}", r),
            _ => format!("Init:{}/{}", i, total),
        };
    }
    for c in status.container_statuses.iter().rev() {
        if let Some(r) = c.state.waiting.as_ref().and_then(|w| w.reason.clone()) {
            if !r.is_empty() {
                reason = r;
            }
        } else if let Some(t) = &c.state.terminated {
            reason = match (&t.reason, t.signal) {
                (Some(r), _) if !r.is_empty() => r.clone(),
                (_, Some(sig)) if sig != 0 => format!("Signal:{}", sig),
                _ => format!("ExitCode:{}", t.exit_code),
            };
        }
    }
    if reason == "Completed" && status.container_statuses.iter().any(|c| c.ready) {
        reason = "Running".into();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::types::*;

    fn spec(policy: &str, names: &[&str]) -> PodSpec {
        PodSpec {
            containers: names
                .iter()
                .map(|n| Container {
                    name: n.to_string(),
                    image: "i".into(),
                    ..Default::default()
                })
                .collect(),
            restart_policy: Some(policy.into()),
            ..Default::default()
        }
    }
    fn running(name: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: ContainerState {
                running: Some(StateRunning {
                    started_at: "t".into(),
                }),
                ..Default::default()
            },
            ready: true,
            ..Default::default()
        }
    }
    fn exited(name: &str, code: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: ContainerState {
                terminated: Some(StateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }
    fn backoff(name: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: ContainerState {
                waiting: Some(StateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    message: None,
                }),
                ..Default::default()
            },
            last_state: ContainerState {
                terminated: Some(StateTerminated {
                    exit_code: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }
    fn creating(name: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: ContainerState {
                waiting: Some(StateWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(phase(&spec("Always", &["a"]), &[creating("a")]), "Pending");
        assert_eq!(
            phase(
                &spec("Always", &["a", "b"]),
                &[running("a"), exited("b", 1)]
            ),
            "Running"
        );
        assert_eq!(phase(&spec("Always", &["a"]), &[backoff("a")]), "Running");
        assert_eq!(
            phase(&spec("Never", &["a"]), &[exited("a", 0)]),
            "Succeeded"
        );
        assert_eq!(
            phase(
                &spec("Never", &["a", "b"]),
                &[exited("a", 0), exited("b", 2)]
            ),
            "Failed"
        );
        assert_eq!(
            phase(&spec("OnFailure", &["a"]), &[exited("a", 0)]),
            "Succeeded"
        );
        assert_eq!(
            phase(&spec("OnFailure", &["a"]), &[backoff("a")]),
            "Running"
        );
        assert_eq!(
            phase(&spec("Always", &["a", "b"]), &[running("a")]),
            "Pending"
        );
    }

    #[test]
    fn qos_classes() {
        let mut s = spec("Always", &["a"]);
        assert_eq!(qos_class(&s), "BestEffort");
        s.containers[0].resources.limits = [
            ("cpu".to_string(), serde_json::json!("500m")),
            ("memory".to_string(), serde_json::json!("64Mi")),
        ]
        .into();
        assert_eq!(qos_class(&s), "Guaranteed");
        s.containers[0].resources.requests =
            [("cpu".to_string(), serde_json::json!("100m"))].into();
        assert_eq!(qos_class(&s), "Burstable");
        // Requests equal to the limits, written out: still Guaranteed.
        s.containers[0].resources.requests = [
            ("cpu".to_string(), serde_json::json!("0.5")),
            ("memory".to_string(), serde_json::json!("64Mi")),
        ]
        .into();
        assert_eq!(qos_class(&s), "Guaranteed");
        // A memory limit alone is Burstable; other resources and zeros do not count.
        s.containers[0].resources.requests.clear();
        s.containers[0].resources.limits =
            [("memory".to_string(), serde_json::json!("64Mi"))].into();
        assert_eq!(qos_class(&s), "Burstable");
        s.containers[0].resources.limits = [
            ("ephemeral-storage".to_string(), serde_json::json!("1Gi")),
            ("cpu".to_string(), serde_json::json!("0")),
        ]
        .into();
        assert_eq!(qos_class(&s), "BestEffort");
        // Every container must be limited for Guaranteed.
        let mut two = spec("Always", &["a", "b"]);
        two.containers[0].resources.limits = [
            ("cpu".to_string(), serde_json::json!("1")),
            ("memory".to_string(), serde_json::json!("1Gi")),
        ]
        .into();
        assert_eq!(qos_class(&two), "Burstable");
    }

    #[test]
    fn conditions_keep_transition_times() {
        let s = spec("Always", &["a", "b"]);
        let c1 = conditions(
            &s,
            &[running("a"), creating("b")],
            &InitProgress::default(),
            "Pending",
            true,
            &[],
            "T1",
        );
        let ready = c1.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [b]")
        );
        let c2 = conditions(
            &s,
            &[running("a"), running("b")],
            &InitProgress::default(),
            "Running",
            true,
            &c1,
            "T2",
        );
        assert_eq!(
            c2.iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .last_transition_time,
            "T2"
        );
        assert_eq!(
            c2.iter()
                .find(|c| c.type_ == "PodScheduled")
                .unwrap()
                .last_transition_time,
            "T1"
        );
        assert_eq!(c2.len(), 5);
    }

    #[test]
    fn display_reasons() {
        let st = PodStatus {
            phase: "Running".into(),
            container_statuses: vec![running("a"), backoff("b")],
            ..Default::default()
        };
        assert_eq!(display_reason(&st, &[]), "CrashLoopBackOff");
        let st = PodStatus {
            phase: "Succeeded".into(),
            container_statuses: vec![exited("a", 0)],
            ..Default::default()
        };
        assert_eq!(display_reason(&st, &[]), "ExitCode:0");
    }
}

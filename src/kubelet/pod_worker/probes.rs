//! The probe schedule of each container: startup gates the others, liveness failures restart the
//! container (SIGTERM, then SIGKILL after the grace period), readiness decides `ready`. Results
//! belong to one container attempt and start afresh with the next.

use super::*;
use crate::kubelet::prober::{self, Kind, Probe};

struct Runner {
    kind: Kind,
    probe: Probe,
    next_at: f64,
    successes: u32,
    failures: u32,
}

#[derive(Default)]
pub(super) struct ContainerProbes {
    runners: Vec<Runner>,
    /// The container attempt the results are for.
    attempt: Option<String>,
    started: bool,
    ready: bool,
    /// A liveness (or startup) failure asked the container to stop: SIGKILL at this time.
    kill_at: Option<f64>,
}

impl ContainerProbes {
    fn has(&self, kind: Kind) -> bool {
        self.runners.iter().any(|r| r.kind == kind)
    }
}

/// The container's probes, parsed; an error names the probe that cannot run.
pub(super) fn parse_all(container: &serde_json::Value) -> Result<Vec<(Kind, Probe)>, String> {
    let mut out = Vec::new();
    for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
        if let Some(p) = prober::parse(container, kind)? {
            out.push((kind, p));
        }
    }
    Ok(out)
}

impl PodWorker {
    /// Whether container `i` counts as started and ready (for its status).
    pub(super) fn probe_state(&self, i: usize) -> (bool, bool) {
        match self.probes.get(i) {
            Some(p) if p.attempt.is_some() => (p.started, p.ready),
            _ => (true, true),
        }
    }

    /// Runs the probes of container `i` that are due (the container is running as `id`, started
    /// at `started_at`, unix seconds).
    pub(super) fn run_probes(&mut self, i: usize, id: &str, started_at: f64) {
        if self.probes[i].attempt.as_deref() != Some(id) {
            let parsed = parse_all(self.container_json(i)).unwrap_or_default();
            let runners: Vec<Runner> = parsed
                .into_iter()
                .map(|(kind, probe)| Runner {
                    kind,
                    next_at: started_at + probe.initial_delay.as_secs_f64(),
                    probe,
                    successes: 0,
                    failures: 0,
                })
                .collect();
            let p = &mut self.probes[i];
            *p = ContainerProbes {
                runners,
                attempt: Some(id.to_string()),
                ..Default::default()
            };
            p.started = !p.has(Kind::Startup);
            p.ready = p.started && !p.has(Kind::Readiness);
        }
        if let Some(at) = self.probes[i].kill_at {
            if now() >= at {
                let _ = self.ctx.runtime.signal(id, "KILL");
            }
            return;
        }
        let netns = self.sandbox.as_ref().and_then(|s| s.net.clone());
        let dials = self.probes[i]
            .runners
            .iter()
            .any(|r| !matches!(r.probe.action, prober::Action::Exec(_)));
        if let Some(ns) = netns.as_ref().filter(|_| dials) {
            let stale = self.dialer.as_ref().is_some_and(|d| d.netns() != ns);
            if self.dialer.is_none() || stale {
                self.dialer = match prober::NetnsDialer::start(ns) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        log::warn!("pod {}: probes: {}", self.pod.full_name(), e);
                        None
                    }
                };
            }
        }
        let name = self.containers[i].name.clone();
        for r in 0..self.probes[i].runners.len() {
            let (kind, due) = {
                let p = &self.probes[i];
                let runner = &p.runners[r];
                let gated = runner.kind != Kind::Startup && !p.started;
                let done = runner.kind == Kind::Startup && p.started;
                (runner.kind, !gated && !done && now() >= runner.next_at)
            };
            if !due {
                continue;
            }
            let probe = self.probes[i].runners[r].probe.clone();
            let exec = matches!(probe.action, prober::Action::Exec(_));
            if !exec && netns.is_some() && self.dialer.is_none() {
                continue; // the namespace cannot be joined: retried at the next sync
            }
            let target = prober::Target {
                runtime: &self.ctx.runtime,
                container_id: id,
                dialer: self.dialer.as_ref(),
            };
            let result = prober::run(&probe, &target);
            let runner = &mut self.probes[i].runners[r];
            runner.next_at = now() + probe.period.as_secs_f64();
            match result {
                Ok(()) => {
                    runner.successes += 1;
                    runner.failures = 0;
                    let enough = runner.successes >= probe.success_threshold;
                    match kind {
                        Kind::Startup => {
                            self.probes[i].started = true;
                            self.probes[i].ready = !self.probes[i].has(Kind::Readiness);
                        }
                        Kind::Readiness if enough => self.probes[i].ready = true,
                        _ => {}
                    }
                }
                Err(why) => {
                    runner.failures += 1;
                    runner.successes = 0;
                    let give_up = runner.failures >= probe.failure_threshold;
                    self.event(
                        Some(&name),
                        "Warning",
                        "Unhealthy",
                        format!("{} probe failed: {}", kind.name(), why),
                    );
                    match kind {
                        Kind::Readiness if give_up => self.probes[i].ready = false,
                        Kind::Liveness | Kind::Startup if give_up => {
                            self.restart_unhealthy(i, id, kind);
                            return;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// A liveness or startup probe gave up: stop the container (its restart policy decides what
    /// happens next), SIGTERM now and SIGKILL after the grace period.
    fn restart_unhealthy(&mut self, i: usize, id: &str, kind: Kind) {
        let name = self.containers[i].name.clone();
        log::info!(
            "pod {}: container {} failed its {} probe; stopping it",
            self.pod.full_name(),
            name,
            kind.name().to_lowercase()
        );
        self.event(
            Some(&name),
            "Normal",
            "Killing",
            format!(
                "Container {} failed {} probe, will be restarted",
                name,
                kind.name().to_lowercase()
            ),
        );
        let grace = self
            .pod
            .spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(MIN_GRACE_SECS) as f64;
        self.probes[i].ready = false;
        self.probes[i].kill_at = Some(now() + grace);
        self.pre_stop(i, id, Duration::from_secs_f64(grace));
        if let Err(e) = self.ctx.runtime.signal(id, "TERM") {
            log::debug!("pod {}: {}", self.pod.full_name(), e);
        }
    }

    /// The earliest moment a probe of a running container is due.
    pub(super) fn next_probe(&self) -> Option<f64> {
        self.probes
            .iter()
            .zip(&self.containers)
            .filter(|(_, c)| c.current.as_ref().is_some_and(|a| a.started_at.is_some()))
            .filter_map(|(p, _)| {
                p.kill_at.or_else(|| {
                    p.runners
                        .iter()
                        .filter(|r| (r.kind == Kind::Startup) != p.started)
                        .map(|r| r.next_at)
                        .reduce(f64::min)
                })
            })
            .reduce(f64::min)
    }
}

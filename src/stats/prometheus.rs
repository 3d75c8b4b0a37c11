//! Prometheus text exposition (format 0.0.4) of a `Snapshot`, with the kubelet's metric names
//! and labels: `/metrics/resource` as the kubelet's resource metrics collector writes it, and
//! `/metrics` with the agent's process metrics, kubelet_* gauges and the cAdvisor-style
//! per-container series (`container_*{container,namespace,pod}`).

use super::{ContainerStats, PodStats, Snapshot};
use std::fmt::Write;

/// One metric family being written.
struct Out {
    text: String,
    /// The scrape's time in milliseconds, appended to resource samples as the kubelet does.
    ts: Option<u128>,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {} {}", name, help);
        let _ = writeln!(self.text, "# TYPE {} {}", name, kind);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{}=\"{}\"", k, escape(v));
            }
            self.text.push('}');
        }
        let _ = write!(self.text, " {}", number(value));
        if let Some(ts) = self.ts {
            let _ = write!(self.text, " {}", ts);
        }
        self.text.push('\n');
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{}", v)
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn start_secs(rfc3339: &str) -> Option<f64> {
    crate::clock::parse_rfc3339(rfc3339).map(|d| d.as_secs_f64())
}

/// The two pod families both endpoints carry: CPU time and working set.
fn pod_usage(o: &mut Out, s: &Snapshot) {
    o.family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    );
    for p in &s.pods {
        if let Some(ns) = p.usage.cpu_ns {
            o.sample("pod_cpu_usage_seconds_total", &pod_labels(p), secs(ns));
        }
    }
    o.family(
        "pod_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the pod in bytes",
    );
    for p in &s.pods {
        if let Some(m) = p.usage.memory {
            o.sample(
                "pod_memory_working_set_bytes",
                &pod_labels(p),
                m.working_set as f64,
            );
        }
    }
}

fn container_labels<'a>(p: &'a PodStats, c: &'a ContainerStats) -> [(&'static str, &'a str); 3] {
    [
        ("container", &c.name),
        ("namespace", &p.namespace),
        ("pod", &p.name),
    ]
}

fn pod_labels(p: &PodStats) -> [(&str, &str); 2] {
    [("namespace", &p.namespace), ("pod", &p.name)]
}

/// `/metrics/resource`.
pub fn resource(s: &Snapshot) -> String {
    let mut o = Out {
        text: String::new(),
        ts: Some(s.at.as_millis()),
    };
    let n = &s.node;
    let mut errors = n.cpu_ns.is_none() || n.memory.is_none();
    o.family(
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    );
    for p in &s.pods {
        for c in &p.containers {
            match c.usage.cpu_ns {
                Some(ns) => o.sample(
                    "container_cpu_usage_seconds_total",
                    &container_labels(p, c),
                    secs(ns),
                ),
                None => errors = true,
            }
        }
    }
    o.family(
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
    );
    for p in &s.pods {
        for c in &p.containers {
            if let Some(m) = c.usage.memory {
                o.sample(
                    "container_memory_working_set_bytes",
                    &container_labels(p, c),
                    m.working_set as f64,
                );
            }
        }
    }
    o.family(
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
    );
    for p in &s.pods {
        for c in &p.containers {
            if let Some(t) = start_secs(&c.started_at) {
                o.sample("container_start_time_seconds", &container_labels(p, c), t);
            }
        }
    }
    o.family(
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    );
    if let Some(ns) = n.cpu_ns {
        o.sample("node_cpu_usage_seconds_total", &[], secs(ns));
    }
    o.family(
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    );
    if let Some(m) = n.memory {
        o.sample("node_memory_working_set_bytes", &[], m.working_set as f64);
    }
    pod_usage(&mut o, s);
    // The kubelet writes these two without a timestamp.
    o.ts = None;
    let e = if errors { 1.0 } else { 0.0 };
    o.family(
        "resource_scrape_error",
        "gauge",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    o.sample("resource_scrape_error", &[], e);
    o.family(
        "scrape_error",
        "gauge",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    o.sample("scrape_error", &[], e);
    o.text
}

/// `/metrics`.
pub fn metrics(s: &Snapshot, evictions: &std::collections::BTreeMap<&'static str, u64>) -> String {
    let mut o = Out {
        text: String::new(),
        ts: None,
    };
    process_metrics(&mut o);
    let n = &s.node;
    o.family(
        "kubelet_node_name",
        "gauge",
        "[ALPHA] The node's name. The count is always 1.",
    );
    o.sample("kubelet_node_name", &[("node", &n.name)], 1.0);
    o.family(
        "kubelet_running_pods",
        "gauge",
        "[ALPHA] Number of pods that have a running pod sandbox",
    );
    o.sample("kubelet_running_pods", &[], s.pods.len() as f64);
    o.family(
        "kubelet_running_containers",
        "gauge",
        "[ALPHA] Number of containers currently running",
    );
    let running: usize = s.pods.iter().map(|p| p.containers.len()).sum();
    o.sample(
        "kubelet_running_containers",
        &[("container_state", "running")],
        running as f64,
    );
    o.family(
        "kubelet_evictions",
        "counter",
        "[ALPHA] Cumulative number of pod evictions by eviction signal",
    );
    for (signal, n) in evictions {
        o.sample(
            "kubelet_evictions",
            &[("eviction_signal", signal)],
            *n as f64,
        );
    }
    o.family(
        "machine_memory_bytes",
        "gauge",
        "Amount of memory installed on the machine.",
    );
    o.sample("machine_memory_bytes", &[], n.memory_capacity as f64);
    o.family(
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    );
    if let Some(ns) = n.cpu_ns {
        o.sample("node_cpu_usage_seconds_total", &[], secs(ns));
    }
    o.family(
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    );
    if let Some(m) = n.memory {
        o.sample("node_memory_working_set_bytes", &[], m.working_set as f64);
    }
    type Get = fn(&ContainerStats) -> Option<f64>;
    let series: [(&str, &str, &str, Get); 6] = [
        ("container_cpu_usage_seconds_total", "counter",
         "Cumulative cpu time consumed in seconds.", |c| c.usage.cpu_ns.map(secs)),
        ("container_memory_working_set_bytes", "gauge",
         "Current working set in bytes.", |c| c.usage.memory.map(|m| m.working_set as f64)),
        ("container_memory_usage_bytes", "gauge",
         "Current memory usage in bytes, including all memory regardless of when it was accessed",
         |c| c.usage.memory.map(|m| m.usage as f64)),
        ("container_memory_rss", "gauge", "Size of RSS in bytes.",
         |c| c.usage.memory.map(|m| m.rss as f64)),
        ("container_fs_usage_bytes", "gauge",
         "Number of bytes that are consumed by the container on this filesystem.",
         |c| c.rootfs.map(|r| r.0 as f64)),
        ("container_start_time_seconds", "gauge",
         "Start time of the container since unix epoch in seconds.",
         |c| start_secs(&c.started_at)),
    ];
    for (name, kind, help, get) in series {
        o.family(name, kind, help);
        for p in &s.pods {
            for c in &p.containers {
                if let Some(v) = get(c) {
                    let id = format!("runc://{}", c.id);
                    o.sample(
                        name,
                        &[
                            ("container", &c.name),
                            ("id", &id),
                            ("namespace", &p.namespace),
                            ("pod", &p.name),
                        ],
                        v,
                    );
                }
            }
        }
    }
    for (name, help, rx) in [
        (
            "container_network_receive_bytes_total",
            "Cumulative count of bytes received",
            true,
        ),
        (
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted",
            false,
        ),
    ] {
        o.family(name, "counter", help);
        for p in &s.pods {
            for i in p.interfaces.iter().flatten() {
                let v = if rx { i.rx_bytes } else { i.tx_bytes };
                o.sample(
                    name,
                    &[
                        ("interface", &i.name),
                        ("namespace", &p.namespace),
                        ("pod", &p.name),
                    ],
                    v as f64,
                );
            }
        }
    }
    pod_usage(&mut o, s);
    o.family(
        "pod_ephemeral_storage_usage_bytes",
        "gauge",
        "Bytes of local ephemeral storage the pod uses (rootfs writes, logs, local volumes).",
    );
    for p in &s.pods {
        if let Some((b, _)) = p.ephemeral_bytes {
            o.sample(
                "pod_ephemeral_storage_usage_bytes",
                &pod_labels(p),
                b as f64,
            );
        }
    }
    o.text
}

/// The agent's own process metrics, as every Go binary's client_golang exports them.
fn process_metrics(o: &mut Out) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    if let Some(t) = super::host::process_cpu_ticks(&stat) {
        o.family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
        );
        o.sample(
            "process_cpu_seconds_total",
            &[],
            super::host::ticks_to_secs(t),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(rss) = super::host::meminfo(&status, "VmRSS") {
        o.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        o.sample("process_resident_memory_bytes", &[], rss as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_counted_per_signal() {
        let snap = Snapshot {
            at: std::time::Duration::from_secs(1_700_000_000),
            node: super::super::NodeStats {
                name: "n1".into(),
                boot_time: 0,
                cpu_ns: Some(2_000_000_000),
                nanocores: None,
                memory: None,
                memory_capacity: 1 << 30,
                memory_available: None,
                fs: None,
                imagefs: None,
                images_used: None,
                interfaces: Vec::new(),
                processes: 10,
                pid_max: 100,
                pods_cgroup: None,
            },
            pods: Vec::new(),
        };
        let mut ev = std::collections::BTreeMap::new();
        ev.insert("memory.available", 3);
        let text = metrics(&snap, &ev);
        assert!(text.contains("# TYPE kubelet_evictions counter\n"));
        assert!(text.contains("kubelet_evictions{eviction_signal=\"memory.available\"} 3\n"));
        assert!(text.contains("node_cpu_usage_seconds_total 2\n"));
        // No memory reading: the resource endpoint says so.
        assert!(resource(&snap).contains("\nresource_scrape_error 1\n"));
    }

    #[test]
    fn samples_escape_labels_and_format_numbers() {
        let mut o = Out {
            text: String::new(),
            ts: Some(1700000000123),
        };
        o.sample("x_total", &[("pod", "a\"b\\c\nd")], 1.5);
        o.ts = None;
        o.sample("y", &[], 42.0);
        assert_eq!(
            o.text,
            "x_total{pod=\"a\\\"b\\\\c\\nd\"} 1.5 1700000000123\ny 42\n"
        );
    }
}

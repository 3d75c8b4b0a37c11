//! `tinylet stats`: CPU, memory and disk of each running container, like `crictl stats`, read
//! from cgroupfs and the records on disk by the same provider the kubelet endpoints use (no
//! daemon or server needed). `--raw summary|metrics|metrics-resource` prints an endpoint's
//! document instead (`--count N` scrapes N times and reports the cost per scrape on stderr).

use super::args::Args;
use crate::stats::{self, Stats, StatsSource};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const FLAGS: &[&str] = &[
    "root-dir",
    "pod-log-dir",
    "cgroup-root",
    "node-name",
    "n",
    "namespace",
    "interval",
    "raw",
    "count",
    "o",
    "output",
];

pub fn main(a: &Args) -> Result<(), String> {
    let cfg = stats::Config {
        node_name: a
            .get("node-name")
            .map(str::to_lowercase)
            .unwrap_or_else(crate::config::default_node_name),
        root_dir: super::root_dir(a),
        pod_log_dir: PathBuf::from(a.get("pod-log-dir").unwrap_or("/var/log/pods")),
        cgroups: crate::runtime::cgroups::Hierarchy::detect(),
        // The daemon's --cgroup-root: only for the "pods" system container; pods' cgroups are
        // found from their containers'.
        cgroup_root: a.get("cgroup-root").map(str::to_string),
        // One process, one look: nothing to reuse.
        fs_ttl: Duration::ZERO,
    };
    let stats = Stats::new(cfg);
    if let Some(kind) = a.get("raw") {
        let count: u32 = match a.get("count") {
            None => 1,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("--count {:?}: a positive number", v))?,
        };
        if kind != "metrics-resource" {
            // usageNanoCores is a rate: a first reading, then the scrape `interval` later.
            stats.snapshot(false);
            std::thread::sleep(interval(a)?);
        }
        return raw(&stats, kind, count);
    }
    let interval = interval(a)?;
    // CPU is a rate: two readings, `interval` apart.
    stats.snapshot(false);
    std::thread::sleep(interval);
    let snap = stats.snapshot(true);
    let ns = a.get("n").or(a.get("namespace"));
    match a.get("o").or(a.get("output")).unwrap_or("table") {
        "table" => print!("{}", table(&snap, ns)),
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&stats::summary::render(&snap)).unwrap_or_default()
        ),
        other => {
            return Err(format!(
                "unknown output format {:?} (use table or json)",
                other
            ))
        }
    }
    Ok(())
}

fn interval(a: &Args) -> Result<Duration, String> {
    match a.get("interval") {
        None => Ok(Duration::from_secs(1)),
        Some(v) => crate::config::parse_duration(v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("--interval {:?}: a positive duration such as 1s", v)),
    }
}

fn raw(stats: &Stats, kind: &str, count: u32) -> Result<(), String> {
    let scrape = || -> Result<String, String> {
        match kind {
            "summary" => stats
                .summary()
                .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default()),
            "metrics" => Ok(stats.metrics()),
            "metrics-resource" => Ok(stats.metrics_resource()),
            other => Err(format!(
                "--raw {:?}: one of summary, metrics, metrics-resource",
                other
            )),
        }
    };
    // The first scrape only primes the CPU readings when several are asked for.
    let mut out = scrape()?;
    if count > 1 {
        let cpu0 = self_cpu_ticks();
        let mut lat = Vec::with_capacity(count as usize);
        for _ in 0..count {
            std::thread::sleep(Duration::from_millis(20));
            let t0 = Instant::now();
            out = scrape()?;
            lat.push(t0.elapsed());
        }
        let cpu = crate::stats::host::ticks_to_secs(self_cpu_ticks().saturating_sub(cpu0));
        lat.sort();
        let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
        eprintln!(
            "scrapes={} bytes={} p50_ms={:.2} p99_ms={:.2} cpu_ms_per_scrape={:.2}",
            count,
            out.len(),
            pct(50).as_secs_f64() * 1000.0,
            pct(99).as_secs_f64() * 1000.0,
            cpu * 1000.0 / count as f64
        );
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(|e| format!("writing the output: {}", e))
}

fn self_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| crate::stats::host::process_cpu_ticks(&s))
        .unwrap_or(0)
}

/// Bytes in the binary units kubectl top and crictl print.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{}B", bytes)
    } else {
        format!("{:.1}{}", v, UNITS[u])
    }
}

pub fn table(s: &stats::Snapshot, namespace: Option<&str>) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_string(),
        "POD".into(),
        "CONTAINER".into(),
        "CPU(m)".into(),
        "MEMORY".into(),
        "DISK".into(),
        "PIDS".into(),
    ]];
    for p in s
        .pods
        .iter()
        .filter(|p| namespace.is_none_or(|n| n == p.namespace))
    {
        for c in &p.containers {
            let dash = || "-".to_string();
            rows.push([
                p.namespace.clone(),
                p.name.clone(),
                c.name.clone(),
                c.nanocores
                    .map(|n| format!("{}", n / 1_000_000))
                    .unwrap_or_else(dash),
                c.usage
                    .memory
                    .map(|m| human(m.working_set))
                    .unwrap_or_else(dash),
                c.rootfs.map(|r| human(r.0)).unwrap_or_else(dash),
                c.usage.pids.map(|n| n.to_string()).unwrap_or_else(dash),
            ]);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

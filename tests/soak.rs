//! Soak (issue 10, point 5): pods that restart (liveness failures, crash loops) and pods under
//! probe traffic (HTTP readiness + TCP liveness every second), for a while; the agent's RSS, open
//! file descriptors and threads must stay flat. Reports the slopes (least squares, per minute)
//! after a warm-up.
//!
//! `cargo test --test soak` is the CI size (6 pods, 60 s). scripts/soak runs the long one
//! (30 pods, 30 minutes): TINYLET_SOAK_PODS, TINYLET_SOAK_SECS.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pod `i` of three kinds: a web server under probes, a container its liveness probe restarts
/// every few seconds, and a crash loop.
fn manifest(i: u64) -> String {
    let name = format!("soak{i}");
    let m = match i % 3 {
        0 => pod_manifest(&name)
            .container(
                "web",
                "mkdir -p /w; echo ok > /w/index.html; exec httpd -f -p 8080 -h /w",
            )
            .set(
                "readinessProbe",
                json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}),
            )
            .set(
                "livenessProbe",
                json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1}),
            ),
        1 => pod_manifest(&name)
            .container("flaky", "touch /tmp/ok; sleep 4; rm /tmp/ok; sleep 100000")
            .set(
                "livenessProbe",
                json!({"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 1, "failureThreshold": 1}),
            ),
        _ => pod_manifest(&name).container("crash", "sleep 2; echo bye; exit 1"),
    };
    m.grace(1).yaml()
}

struct Sample {
    at: f64,
    rss_kib: f64,
    /// The private part of RSS (heap, stacks); the rest is the binary's shared, file-backed text.
    anon_kib: f64,
    fds: f64,
    threads: f64,
}

fn sample(pid: u32, start: Instant) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    Sample {
        at: start.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        fds: fds as f64,
        threads: field("Threads:"),
    }
}

/// Least-squares slope of `y` over time, per minute.
fn slope(samples: &[Sample], y: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    let mx = samples.iter().map(|s| s.at).sum::<f64>() / n;
    let my = samples.iter().map(&y).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.at - mx) * (y(s) - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.at - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx * 60.0
    }
}

fn median_of(samples: &[Sample], y: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(y).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn rss_fds_and_threads_stay_flat_under_restarts_and_probes() {
    let pods = env_u64("TINYLET_SOAK_PODS", 6);
    let secs = env_u64("TINYLET_SOAK_SECS", 60);
    let mut node = Node::start();
    for i in 0..pods {
        node.write_manifest(&format!("soak{i}.yaml"), &manifest(i));
    }
    for i in (0..pods).step_by(3) {
        node.wait_running(&format!("soak{i}"));
    }
    let pid = node.daemon_pid();
    // Warm-up: every pod through its first restarts, allocator arenas and caches filled.
    let warm_up = Duration::from_secs((secs / 6).clamp(15, 120));
    std::thread::sleep(warm_up);
    let start = Instant::now();
    let interval = Duration::from_secs((secs / 60).max(2));
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        assert!(node.daemon_alive(), "{}", node.daemon_log_tail(30));
        let s = sample(pid, start);
        // The series, for the long run's report (cargo test shows it with --nocapture).
        eprintln!(
            "soak sample: {:.0} s RSS {:.0} KiB (anonymous {:.0} KiB), {:.0} fds, {:.0} threads",
            s.at, s.rss_kib, s.anon_kib, s.fds, s.threads
        );
        samples.push(s);
        std::thread::sleep(interval);
    }
    samples.push(sample(pid, start));

    let restarts: u64 = node.ps_json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64())
        .sum();
    let head = &samples[..3.min(samples.len())];
    let tail = &samples[samples.len().saturating_sub(3)..];
    let report = |what: &str, unit: &str, y: &dyn Fn(&Sample) -> f64| {
        let (first, last) = (median_of(head, y), median_of(tail, y));
        eprintln!(
            "soak: {what}: {first:.0} -> {last:.0} {unit}, slope {:+.2} {unit}/min",
            slope(&samples, y)
        );
        (first, last)
    };
    eprintln!(
        "soak: {pods} pods, {secs} s after a {warm_up:?} warm-up, {} samples, {restarts} container restarts",
        samples.len()
    );
    let (rss0, rss1) = report("RSS", "KiB", &|s| s.rss_kib);
    report("anonymous RSS", "KiB", &|s| s.anon_kib);
    let (fd0, fd1) = report("open fds", "fds", &|s| s.fds);
    let (th0, th1) = report("threads", "threads", &|s| s.threads);
    assert!(
        restarts >= pods / 3,
        "the soak restarted only {restarts} containers"
    );
    // Flat: what a probe or a restart holds for a moment may be in a sample, nothing more.
    assert!(fd1 <= fd0 + 4.0, "open fds grew from {fd0} to {fd1}");
    assert!(th1 <= th0 + 4.0, "threads grew from {th0} to {th1}");
    let rss_slope = slope(&samples, |s| s.rss_kib);
    assert!(
        rss1 <= rss0 + 1024.0 && rss_slope < 256.0,
        "RSS grew from {rss0} to {rss1} KiB ({rss_slope:+.1} KiB/min)"
    );
    assert!(!node.daemon_log().contains("panicked"));
}

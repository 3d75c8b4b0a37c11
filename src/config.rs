//! Daemon configuration: the kubelet's flag names, one `Config` value.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub root_dir: PathBuf,
    pub pod_manifest_path: PathBuf,
    pub node_name: String,
    /// The runc binary (`--runtime`).
    pub runtime: PathBuf,
    /// runc's state directory (`--runtime-root`), on tmpfs so a reboot empties it.
    pub runtime_root: PathBuf,
    pub pod_log_dir: PathBuf,
    /// `--cgroup-root`: pods go under `<cgroup-root>/kubepods`.
    pub cgroup_root: String,
    /// `--node-ip`: the address reported as hostIP (detected when absent).
    pub node_ip: Option<String>,
    /// Scales the crash-loop back-off (10 s .. 5 min); for tests.
    pub backoff_scale: f64,
    /// `--image-gc-high-threshold`: percent of the image filesystem used at which image GC
    /// starts (100 turns it off).
    pub image_gc_high_threshold: u8,
    /// `--image-gc-low-threshold`: the percent image GC frees down to.
    pub image_gc_low_threshold: u8,
    /// `--image-gc-period`: how often image GC looks at the disk (fixed at 5 min in the kubelet;
    /// a flag here so tests need not wait).
    pub image_gc_period: Duration,
    /// `--minimum-image-ttl-duration`, the kubelet's imageMinimumGCAge.
    pub image_minimum_gc_age: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root_dir: "/var/lib/tinylet".into(),
            pod_manifest_path: "/etc/tinylet/manifests".into(),
            node_name: default_node_name(),
            runtime: "runc".into(),
            runtime_root: "/run/tinylet/runc".into(),
            pod_log_dir: "/var/log/pods".into(),
            cgroup_root: "/".into(),
            node_ip: None,
            backoff_scale: 1.0,
            image_gc_high_threshold: 85,
            image_gc_low_threshold: 80,
            image_gc_period: Duration::from_secs(5 * 60),
            image_minimum_gc_age: Duration::from_secs(2 * 60),
        }
    }
}

/// The kubelet's checks of `--image-gc-high-threshold` and `--image-gc-low-threshold`.
pub fn validate_image_gc_thresholds(high: u8, low: u8) -> Result<(), String> {
    if high > 100 || low > 100 {
        return Err(format!(
            "--image-gc-high-threshold {} and --image-gc-low-threshold {} must be within 0..100",
            high, low
        ));
    }
    if low >= high {
        return Err(format!(
            "--image-gc-low-threshold {} must be less than --image-gc-high-threshold {}",
            low, high
        ));
    }
    Ok(())
}

/// A Go-style duration as the kubelet's flags take them: "90s", "5m", "1h30m", "500ms", "2m0s"
/// (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{:?} is not a duration (e.g. 30s, 5m, 1h30m)", s);
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * unit).map_err(|_| bad())?;
    }
    Ok(total)
}

/// The hostname, lowercased, as the kubelet defaults --hostname-override.
pub fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .trim()
        .to_lowercase()
}

/// Finds runc: a path as given, or the first match on $PATH.
pub fn resolve_binary(name: &std::path::Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The node's primary IPv4 address: the one on the interface of the default route.
pub fn detect_node_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    });
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut fallback = None;
    for a in addrs {
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        if ip.is_loopback() {
            continue;
        }
        if Some(&a.interface_name) == iface.as_ref() {
            return Some(ip.to_string());
        }
        fallback.get_or_insert(ip.to_string());
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        let d = |s: &str| parse_duration(s).unwrap();
        assert_eq!(d("90"), Duration::from_secs(90));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("2m0s"), Duration::from_secs(120));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("0s"), Duration::ZERO);
        for bad in ["", "m", "5x", "-1s", "1h 2m", "s5"] {
            assert!(parse_duration(bad).is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn image_gc_thresholds_are_checked_like_the_kubelet() {
        assert!(validate_image_gc_thresholds(85, 80).is_ok());
        assert!(validate_image_gc_thresholds(100, 80).is_ok());
        assert!(validate_image_gc_thresholds(1, 0).is_ok());
        let e = validate_image_gc_thresholds(80, 80).unwrap_err();
        assert!(e.contains("must be less than"), "{}", e);
        assert!(validate_image_gc_thresholds(70, 80).is_err());
        assert!(validate_image_gc_thresholds(101, 80).is_err());
    }
}

//! Node-wide readings from /proc and statvfs, and bounded directory sizes (what cAdvisor's
//! machine info and fs handlers provide the kubelet).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// USER_HZ: the unit of /proc/stat's counters on every Linux ABI tinylet targets.
const USER_HZ: u64 = 100;

/// Non-idle CPU time of the whole machine from /proc/stat's `cpu` line, in nanoseconds (used
/// when the root cgroup has no CPU accounting, as on cgroup v2 hosts without cpu.stat at the root).
pub fn proc_stat_cpu_ns(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already counted in user)
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Some(busy * (1_000_000_000 / USER_HZ))
}

/// The boot time (`btime`, unix seconds) from /proc/stat: the node's startTime in the Summary.
pub fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A /proc/meminfo field in bytes.
pub fn meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    })
}

/// One network interface's counters from /proc/<pid>/net/dev.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// Parses /proc/<pid>/net/dev. Loopback is left out, as cAdvisor does.
pub fn net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            if name == "lo" || v.len() < 16 {
                return None;
            }
            Some(Interface {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_errors: v[2],
                tx_bytes: v[8],
                tx_errors: v[10],
            })
        })
        .collect()
}

/// Capacity and free space of the filesystem holding a directory.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FsInfo {
    pub capacity: u64,
    pub available: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

impl FsInfo {
    pub fn used(&self) -> u64 {
        self.capacity.saturating_sub(self.available)
    }
}

pub fn statvfs(dir: &Path) -> Option<FsInfo> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frsize = st.fragment_size() as u64;
    Some(FsInfo {
        capacity: st.blocks() as u64 * frsize,
        available: st.blocks_available() as u64 * frsize,
        inodes: st.files() as u64,
        inodes_free: st.files_available() as u64,
    })
}

/// Bytes and inodes a directory tree uses on disk (like `du`), without following symlinks or
/// leaving its filesystem; at most `max_entries` entries are looked at, so a volume holding
/// millions of files cannot stall a scrape (the figure is then a lower bound).
pub fn disk_usage(dir: &Path, max_entries: usize) -> Option<(u64, u64)> {
    let top = fs::symlink_metadata(dir).ok()?;
    let dev = top.dev();
    let (mut bytes, mut inodes, mut seen) = (top.blocks() * 512, 1u64, 0usize);
    let mut stack = vec![dir.to_path_buf()];
    let mut hardlinks = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > max_entries {
                return Some((bytes, inodes));
            }
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !hardlinks.insert(m.ino()) {
                continue;
            }
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some((bytes, inodes))
}

/// Tasks (threads) that exist now and the most there may be: the kubelet's rlimit stats and
/// pid.available. As the kubelet: the count is /proc/loadavg's fourth field (sysinfo(2)
/// truncates past 65535), the limit the smaller of kernel.pid_max and kernel.threads-max.
pub fn processes() -> (u64, u64) {
    let running = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| loadavg_tasks(&t))
        .unwrap_or(0);
    let read = |p: &str| -> Option<u64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    let max = [
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(0);
    (running, max)
}

/// `0.50 0.30 0.20 2/345 12345` -> 345.
fn loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

/// utime + stime of a process from /proc/<pid>/stat, in clock ticks (the benchmark's agent CPU).
pub fn process_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / USER_HZ as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\nbtime 1700000000\n";
        assert_eq!(proc_stat_cpu_ns(stat), Some(161 * 10_000_000));
        assert_eq!(boot_time(stat), Some(1_700_000_000));
        let mi = "MemTotal:       16384 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(meminfo(mi, "MemTotal"), Some(16384 * 1024));
        assert_eq!(meminfo(mi, "MemAvailable"), Some(2048 * 1024));
        assert_eq!(meminfo(mi, "Mem"), None);
        let dev = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  500 5 0 0 0 0 0 0  500 5 0 0 0 0 0 0\n  eth0: 1000 10 2 0 0 0 0 0 2000 20 3 0 0 0 0 0\n";
        assert_eq!(
            net_dev(dev),
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 1000,
                rx_errors: 2,
                tx_bytes: 2000,
                tx_errors: 3
            }]
        );
        assert_eq!(loadavg_tasks("0.50 0.30 0.20 2/345 12345\n"), Some(345));
        assert_eq!(loadavg_tasks("garbage"), None);
        let pstat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(process_cpu_ticks(pstat), Some(12));
    }

    #[test]
    fn disk_usage_counts_and_stops_at_the_bound() {
        let d = std::env::temp_dir().join(format!("tinylet-du-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        fs::write(d.join("b"), b"x").unwrap();
        let (bytes, inodes) = disk_usage(&d, 1000).unwrap();
        assert!(bytes >= 64 * 1024, "{}", bytes);
        assert_eq!(inodes, 4);
        let (_, bounded) = disk_usage(&d, 1).unwrap();
        assert!(bounded < 4);
        assert!(disk_usage(&d.join("missing"), 10).is_none());
        fs::remove_dir_all(&d).unwrap();
    }
}

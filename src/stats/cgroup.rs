//! One cgroup's usage, read from cgroupfs on v1 (one mount per controller) and v2 (unified):
//! cumulative CPU time, memory with the kubelet's working set, and the number of processes.

use crate::runtime::cgroups::Hierarchy;
use std::fs;
use std::path::PathBuf;

/// What cAdvisor reads for a container, in the units the Summary API uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Cumulative CPU time of every process the cgroup held, in nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory: Option<Memory>,
    /// Processes (tasks) in the cgroup now.
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub usage: u64,
    /// usage - inactive_file, never below zero: the kubelet's (and cAdvisor's) working set, what
    /// memory.available and OOM ranking are judged by; reclaimable page cache is left out.
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

/// The directory of `cgroup` (an absolute cgroup path) in `controller`'s hierarchy.
fn dir(h: &Hierarchy, controller: &str, cgroup: &str) -> PathBuf {
    let rel = cgroup.trim_start_matches('/');
    match h {
        Hierarchy::V1 { base } => base.join(controller).join(rel),
        Hierarchy::V2 { mount } => mount.join(rel),
    }
}

fn read_u64(path: PathBuf) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat) -> the value of `key`.
pub fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads a cgroup's usage. A cgroup that does not exist (a container that just ended) reads as
/// all `None`.
pub fn read(h: &Hierarchy, cgroup: &str) -> Usage {
    match h {
        Hierarchy::V1 { .. } => Usage {
            cpu_ns: read_u64(dir(h, "cpuacct", cgroup).join("cpuacct.usage")),
            memory: memory_v1(h, cgroup),
            pids: read_u64(dir(h, "pids", cgroup).join("pids.current")),
        },
        Hierarchy::V2 { .. } => {
            let d = dir(h, "", cgroup);
            let cpu_ns = fs::read_to_string(d.join("cpu.stat"))
                .ok()
                .and_then(|t| stat_field(&t, "usage_usec"))
                .map(|us| us * 1000);
            Usage {
                cpu_ns,
                memory: memory_v2(h, cgroup),
                pids: read_u64(d.join("pids.current")),
            }
        }
    }
}

fn memory_v1(h: &Hierarchy, cgroup: &str) -> Option<Memory> {
    let d = dir(h, "memory", cgroup);
    let usage = read_u64(d.join("memory.usage_in_bytes"))?;
    let stat = fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
    // The total_* fields count the cgroup's descendants too (a pod's containers).
    let f = |k: &str| stat_field(&stat, k).unwrap_or(0);
    Some(Memory {
        usage,
        working_set: usage.saturating_sub(f("total_inactive_file")),
        rss: f("total_rss"),
        page_faults: f("total_pgfault"),
        major_page_faults: f("total_pgmajfault"),
    })
}

fn memory_v2(h: &Hierarchy, cgroup: &str) -> Option<Memory> {
    let d = dir(h, "", cgroup);
    let usage = read_u64(d.join("memory.current"))?;
    let stat = fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
    let f = |k: &str| stat_field(&stat, k).unwrap_or(0);
    Some(Memory {
        usage,
        working_set: usage.saturating_sub(f("inactive_file")),
        rss: f("anon"),
        page_faults: f("pgfault"),
        major_page_faults: f("pgmajfault"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinylet-stats-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn v1_working_set_is_usage_less_inactive_file_and_never_negative() {
        let base = fake("v1");
        for c in ["cpuacct", "memory", "pids"] {
            fs::create_dir_all(base.join(c).join("kubepods/podx")).unwrap();
        }
        let w = |p: &str, t: &str| fs::write(base.join(p), t).unwrap();
        w("cpuacct/kubepods/podx/cpuacct.usage", "123456789\n");
        w("memory/kubepods/podx/memory.usage_in_bytes", "10000\n");
        w(
            "memory/kubepods/podx/memory.stat",
            "inactive_file 99\ntotal_rss 4000\ntotal_inactive_file 3000\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
        );
        w("pids/kubepods/podx/pids.current", "3\n");
        let h = Hierarchy::V1 { base: base.clone() };
        let u = read(&h, "/kubepods/podx");
        assert_eq!(u.cpu_ns, Some(123456789));
        assert_eq!(u.pids, Some(3));
        let m = u.memory.unwrap();
        assert_eq!((m.usage, m.working_set, m.rss), (10000, 7000, 4000));
        assert_eq!((m.page_faults, m.major_page_faults), (7, 1));
        w(
            "memory/kubepods/podx/memory.stat",
            "total_inactive_file 20000\n",
        );
        assert_eq!(read(&h, "/kubepods/podx").memory.unwrap().working_set, 0);
        assert_eq!(read(&h, "/kubepods/gone"), Usage::default());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn v2_reads_cpu_stat_and_memory_current() {
        let mount = fake("v2");
        let d = mount.join("kubepods/podx");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        fs::write(d.join("memory.current"), "8192\n").unwrap();
        fs::write(
            d.join("memory.stat"),
            "anon 4096\ninactive_file 1024\npgfault 5\n",
        )
        .unwrap();
        let u = read(
            &Hierarchy::V2 {
                mount: mount.clone(),
            },
            "/kubepods/podx",
        );
        assert_eq!(u.cpu_ns, Some(2_500_000));
        let m = u.memory.unwrap();
        assert_eq!(
            (m.usage, m.working_set, m.rss, m.page_faults),
            (8192, 7168, 4096, 5)
        );
        assert_eq!(u.pids, None);
        fs::remove_dir_all(&mount).unwrap();
    }
}

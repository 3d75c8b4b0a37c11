//! The Summary API document (`/stats/summary`, stats/v1alpha1), in the kubelet's shape:
//! `node` (cpu, memory, network, fs, runtime.imageFs, rlimit) and `pods[]` (podRef, containers
//! with cpu/memory/rootfs/logs, cpu, memory, network, volume, ephemeral-storage, process_stats).
//! Fields whose reading failed are left out, as the kubelet leaves nil pointers out.

use super::cgroup::{Memory, Usage};
use super::host::{FsInfo, Interface};
use super::{NodeStats, PodStats, Snapshot};
use crate::clock;
use serde_json::{json, Map, Value};
use std::time::Duration;

pub fn render(s: &Snapshot) -> Value {
    let time = clock::rfc3339(s.at);
    json!({
        "node": node(&s.node, &time),
        "pods": s.pods.iter().map(|p| pod(p, &s.node, &time)).collect::<Vec<_>>(),
    })
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        m.insert(key.into(), v.into());
    }
}

fn cpu(time: &str, total_ns: Option<u64>, nanocores: Option<u64>) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time.into());
    put(&mut m, "usageNanoCores", nanocores);
    put(&mut m, "usageCoreNanoSeconds", total_ns);
    Value::Object(m)
}

fn memory(time: &str, mem: Option<Memory>, available: Option<u64>) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time.into());
    put(&mut m, "availableBytes", available);
    if let Some(x) = mem {
        m.insert("usageBytes".into(), x.usage.into());
        m.insert("workingSetBytes".into(), x.working_set.into());
        m.insert("rssBytes".into(), x.rss.into());
        m.insert("pageFaults".into(), x.page_faults.into());
        m.insert("majorPageFaults".into(), x.major_page_faults.into());
    }
    Value::Object(m)
}

/// A container's or pod's memory: availableBytes is its limit less its working set, when it
/// has a limit (the kubelet leaves it out otherwise).
fn cgroup_memory(time: &str, u: &Usage, limit: Option<u64>) -> Value {
    let available = limit
        .zip(u.memory)
        .map(|(l, m)| l.saturating_sub(m.working_set));
    memory(time, u.memory, available)
}

fn iface(i: &Interface) -> Value {
    json!({"name": i.name, "rxBytes": i.rx_bytes, "rxErrors": i.rx_errors,
           "txBytes": i.tx_bytes, "txErrors": i.tx_errors})
}

/// The top-level fields carry the default interface (eth0 if there is one), as the kubelet's.
fn network(time: &str, ifaces: &[Interface]) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time.into());
    if let Some(d) = ifaces.iter().find(|i| i.name == "eth0").or(ifaces.first()) {
        if let Value::Object(top) = iface(d) {
            m.extend(top);
        }
    }
    m.insert(
        "interfaces".into(),
        ifaces.iter().map(iface).collect::<Vec<_>>().into(),
    );
    Value::Object(m)
}

/// FsStats: the filesystem's capacity and free space, and what the owner uses of it.
fn fs(time: &str, info: Option<FsInfo>, used: Option<(u64, u64)>) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time.into());
    if let Some(i) = info {
        m.insert("availableBytes".into(), i.available.into());
        m.insert("capacityBytes".into(), i.capacity.into());
        m.insert("inodesFree".into(), i.inodes_free.into());
        m.insert("inodes".into(), i.inodes.into());
    }
    let used = used.or(info.map(|i| (i.used(), i.inodes.saturating_sub(i.inodes_free))));
    if let Some((b, n)) = used {
        m.insert("usedBytes".into(), b.into());
        m.insert("inodesUsed".into(), n.into());
    }
    Value::Object(m)
}

fn node(n: &NodeStats, time: &str) -> Value {
    let mut runtime = Map::new();
    runtime.insert(
        "imageFs".into(),
        fs(time, n.imagefs, n.images_used.map(|b| (b, 0))),
    );
    json!({
        "nodeName": n.name,
        "systemContainers": n.pods_cgroup.iter().map(|(u, rate)| json!({
            "name": "pods",
            "startTime": clock::rfc3339(Duration::from_secs(n.boot_time)),
            "cpu": cpu(time, u.cpu_ns, *rate),
            "memory": memory(time, u.memory, None),
        })).collect::<Vec<_>>(),
        "startTime": clock::rfc3339(Duration::from_secs(n.boot_time)),
        "cpu": cpu(time, n.cpu_ns, n.nanocores),
        "memory": memory(time, n.memory, n.memory_available),
        "network": network(time, &n.interfaces),
        "fs": fs(time, n.fs, None),
        "runtime": runtime,
        "rlimit": {"time": time, "maxpid": n.pid_max, "curproc": n.processes},
    })
}

/// The memory limit of a container from the pod object (None: unlimited).
fn memory_limit(pod: &Value, container: &str) -> Option<u64> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == container)
        .and_then(|c| crate::kube::quantity::value_to_string(&c["resources"]["limits"]["memory"]))
        .and_then(|q| crate::kube::quantity::parse_units(&q).ok())
}

fn pod(p: &PodStats, n: &NodeStats, time: &str) -> Value {
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("name".into(), c.name.clone().into());
            m.insert("startTime".into(), c.started_at.clone().into());
            m.insert("cpu".into(), cpu(time, c.usage.cpu_ns, c.nanocores));
            m.insert(
                "memory".into(),
                cgroup_memory(time, &c.usage, memory_limit(&p.object, &c.name)),
            );
            if c.rootfs.is_some() {
                m.insert("rootfs".into(), fs(time, n.imagefs, c.rootfs));
            }
            if c.logs.is_some() {
                m.insert("logs".into(), fs(time, n.fs, c.logs));
            }
            Value::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert(
        "podRef".into(),
        json!({"name": p.name, "namespace": p.namespace, "uid": p.uid}),
    );
    put(&mut m, "startTime", p.start_time.clone());
    m.insert("containers".into(), containers.into());
    m.insert("cpu".into(), cpu(time, p.usage.cpu_ns, p.nanocores));
    let limits: Option<u64> = p
        .containers
        .iter()
        .map(|c| memory_limit(&p.object, &c.name))
        .sum();
    m.insert("memory".into(), cgroup_memory(time, &p.usage, limits));
    if let Some(ifaces) = &p.interfaces {
        m.insert("network".into(), network(time, ifaces));
    }
    if p.ephemeral_bytes.is_some() {
        let volumes: Vec<Value> = p
            .volumes
            .iter()
            .map(|(name, b, i)| {
                let mut v = fs(time, n.fs, Some((*b, *i)));
                v["name"] = name.clone().into();
                v
            })
            .collect();
        m.insert("volume".into(), volumes.into());
        m.insert(
            "ephemeral-storage".into(),
            fs(time, n.fs, p.ephemeral_bytes),
        );
    }
    put(
        &mut m,
        "process_stats",
        p.usage.pids.map(|c| json!({"process_count": c})),
    );
    Value::Object(m)
}

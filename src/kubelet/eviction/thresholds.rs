//! Hard eviction thresholds in the kubelet's syntax (`--eviction-hard
//! memory.available<100Mi,nodefs.available<10%`, or KubeletConfiguration's `evictionHard` map),
//! and the node's observed value of each signal.

use crate::stats::Snapshot;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

/// The node condition a signal drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Memory,
    Disk,
    Pid,
}

const SIGNALS: [(Signal, &str); 6] = [
    (Signal::MemoryAvailable, "memory.available"),
    (Signal::NodefsAvailable, "nodefs.available"),
    (Signal::NodefsInodesFree, "nodefs.inodesFree"),
    (Signal::ImagefsAvailable, "imagefs.available"),
    (Signal::ImagefsInodesFree, "imagefs.inodesFree"),
    (Signal::PidAvailable, "pid.available"),
];

impl Signal {
    pub fn name(self) -> &'static str {
        SIGNALS
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, n)| n)
    }

    pub fn condition(self) -> Condition {
        match self {
            Signal::MemoryAvailable => Condition::Memory,
            Signal::PidAvailable => Condition::Pid,
            _ => Condition::Disk,
        }
    }

    /// The resource named in the kubelet's messages ("The node was low on resource: memory").
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodefsAvailable | Signal::ImagefsAvailable => "ephemeral-storage",
            Signal::NodefsInodesFree | Signal::ImagefsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }

    /// Whether the amount is in bytes (printed as a binary quantity) or a count.
    fn is_bytes(self) -> bool {
        matches!(
            self,
            Signal::MemoryAvailable | Signal::NodefsAvailable | Signal::ImagefsAvailable
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Quantity(u64),
    /// Percent of the capacity, 0 < p <= 100.
    Percent(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub amount: Amount,
}

impl Threshold {
    /// The available amount below which the threshold is met.
    pub fn limit(&self, capacity: u64) -> u64 {
        match self.amount {
            Amount::Quantity(q) => q,
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }

    /// The threshold as the kubelet's messages print it.
    pub fn quantity(&self, capacity: u64) -> String {
        fmt_amount(self.signal, self.limit(capacity))
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.amount {
            Amount::Quantity(q) => {
                write!(f, "{}<{}", self.signal.name(), fmt_amount(self.signal, q))
            }
            Amount::Percent(p) => write!(f, "{}<{}%", self.signal.name(), p),
        }
    }
}

/// Bytes as a binary-SI quantity the way apimachinery prints one (the largest suffix that
/// divides exactly); counts as plain numbers.
pub fn fmt_amount(signal: Signal, v: u64) -> String {
    if !signal.is_bytes() {
        return v.to_string();
    }
    for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if v != 0 && v % (1u64 << shift) == 0 {
            return format!("{}{}", v >> shift, suffix);
        }
    }
    v.to_string()
}

/// The kubelet's default hard thresholds on Linux.
pub fn defaults() -> Vec<Threshold> {
    let t = |signal, amount| Threshold { signal, amount };
    vec![
        t(Signal::MemoryAvailable, Amount::Quantity(100 << 20)),
        t(Signal::NodefsAvailable, Amount::Percent(10.0)),
        t(Signal::NodefsInodesFree, Amount::Percent(5.0)),
        t(Signal::ImagefsAvailable, Amount::Percent(15.0)),
        t(Signal::ImagefsInodesFree, Amount::Percent(5.0)),
    ]
}

/// Parses `signal<quantity|percent%,...`. An empty string means no thresholds (eviction off).
pub fn parse(text: &str) -> Result<Vec<Threshold>, String> {
    let mut out: Vec<Threshold> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = item.split_once('<').ok_or_else(|| {
            format!(
                "--eviction-hard {:?}: expected SIGNAL<QUANTITY (only the < operator is supported)",
                item
            )
        })?;
        out.push(parse_one(name.trim(), value.trim())?);
        let last = out[out.len() - 1].signal;
        if out.iter().filter(|t| t.signal == last).count() > 1 {
            return Err(format!("--eviction-hard: {} given twice", last.name()));
        }
    }
    Ok(out)
}

/// One `signal` = `value` pair (the flag's item, or an `evictionHard` map entry).
pub fn parse_one(name: &str, value: &str) -> Result<Threshold, String> {
    let signal = SIGNALS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(s, _)| *s)
        .ok_or_else(|| {
            format!(
                "--eviction-hard: unknown signal {:?} (one of {})",
                name,
                SIGNALS.map(|(_, n)| n).join(", ")
            )
        })?;
    let amount = if let Some(p) = value.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| *p > 0.0 && *p <= 100.0)
            .ok_or_else(|| {
                format!(
                    "--eviction-hard {}: {:?} is not a percentage in (0, 100]",
                    name, value
                )
            })?;
        Amount::Percent(p)
    } else {
        let q = crate::kube::quantity::parse_units(value)
            .map_err(|e| format!("--eviction-hard {}: {:?}: {}", name, value, e))?;
        if q == 0 {
            return Err(format!(
                "--eviction-hard {}: {:?} must be above zero",
                name, value
            ));
        }
        Amount::Quantity(q)
    };
    Ok(Threshold { signal, amount })
}

/// A signal's observed (available, capacity) on the node, from one stats reading.
pub fn observe(signal: Signal, s: &Snapshot) -> Option<(u64, u64)> {
    let n = &s.node;
    match signal {
        Signal::MemoryAvailable => Some((n.memory_available?, n.memory_capacity)),
        Signal::NodefsAvailable => n.fs.map(|f| (f.available, f.capacity)),
        Signal::NodefsInodesFree => {
            n.fs.filter(|f| f.inodes > 0)
                .map(|f| (f.inodes_free, f.inodes))
        }
        Signal::ImagefsAvailable => n.imagefs.map(|f| (f.available, f.capacity)),
        Signal::ImagefsInodesFree => n
            .imagefs
            .filter(|f| f.inodes > 0)
            .map(|f| (f.inodes_free, f.inodes)),
        Signal::PidAvailable => Some((n.pid_max.saturating_sub(n.processes), n.pid_max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_syntax_parses() {
        let t = parse("memory.available<100Mi, nodefs.available<10%,pid.available<1000").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].amount, Amount::Quantity(100 << 20));
        assert_eq!(t[1].limit(1000), 100);
        assert_eq!(t[2].signal, Signal::PidAvailable);
        assert_eq!(t[0].to_string(), "memory.available<100Mi");
        assert_eq!(t[1].to_string(), "nodefs.available<10%");
        assert!(parse("").unwrap().is_empty());
        assert!(parse("memory.available>1Gi")
            .unwrap_err()
            .contains("< operator"));
        assert!(parse("cpu.available<1")
            .unwrap_err()
            .contains("unknown signal"));
        assert!(parse("nodefs.available<120%").is_err());
        assert!(parse("memory.available<lots").is_err());
        assert!(parse("memory.available<1Gi,memory.available<2Gi")
            .unwrap_err()
            .contains("twice"));
        assert_eq!(defaults()[0].quantity(0), "100Mi");
    }

    #[test]
    fn amounts_print_as_quantities() {
        assert_eq!(fmt_amount(Signal::MemoryAvailable, 80 << 20), "80Mi");
        assert_eq!(fmt_amount(Signal::MemoryAvailable, 3 << 10), "3Ki");
        assert_eq!(fmt_amount(Signal::MemoryAvailable, 1000), "1000");
        assert_eq!(fmt_amount(Signal::PidAvailable, 4096), "4096");
    }
}

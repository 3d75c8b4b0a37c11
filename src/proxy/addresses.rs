//! The service addresses the node holds: each ClusterIP and externalIP as a /32 on `lo`, with
//! the label `lo:tinylet`, so packets to them are delivered locally to the proxy's listeners
//! (kube-proxy's IPVS mode binds them to a dummy device, kube-ipvs0; kernels without the dummy
//! driver, common on devices, still have `lo`). The label marks them as tinylet's: they are
//! removed when their service goes and at shutdown, found again after a crash, and an address
//! the host had before is never touched.
//!
//! The `ip` command (iproute2 or BusyBox) does the work; it sits behind `AddressOps` so the
//! bookkeeping is tested without root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

pub const DEVICE: &str = "lo";
pub const LABEL: &str = "lo:tinylet";

pub trait AddressOps {
    /// The addresses carrying our label.
    fn list(&self) -> Result<BTreeSet<Ipv4Addr>, String>;
    fn add(&self, ip: Ipv4Addr) -> Result<(), String>;
    fn del(&self, ip: Ipv4Addr) -> Result<(), String>;
}

pub struct IpCommand;

impl IpCommand {
    fn run(args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("running ip {}: {}", args.join(" "), e))?;
        if !out.status.success() {
            return Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl AddressOps for IpCommand {
    fn list(&self) -> Result<BTreeSet<Ipv4Addr>, String> {
        let out = IpCommand::run(&["-4", "-o", "addr", "show", "dev", DEVICE])?;
        Ok(parse_labelled(&out))
    }

    fn add(&self, ip: Ipv4Addr) -> Result<(), String> {
        let a = format!("{}/32", ip);
        IpCommand::run(&["-4", "addr", "add", &a, "dev", DEVICE, "label", LABEL]).map(|_| ())
    }

    fn del(&self, ip: Ipv4Addr) -> Result<(), String> {
        let a = format!("{}/32", ip);
        IpCommand::run(&["-4", "addr", "del", &a, "dev", DEVICE, "label", LABEL]).map(|_| ())
    }
}

/// The /32s with our label in `ip -4 -o addr show` output, e.g.
/// `1: lo    inet 10.96.0.10/32 scope global lo:tinylet\       valid_lft forever ...`.
fn parse_labelled(out: &str) -> BTreeSet<Ipv4Addr> {
    out.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "inet")?;
            let (ip, len) = words.get(i + 1)?.split_once('/')?;
            let labelled = words.iter().any(|w| w.trim_end_matches('\\') == LABEL);
            (labelled && len == "32").then(|| ip.parse().ok())?
        })
        .collect()
}

/// Keeps the labelled addresses equal to a wanted set.
pub struct Addresses<O: AddressOps> {
    ops: O,
    have: BTreeSet<Ipv4Addr>,
}

impl<O: AddressOps> Addresses<O> {
    /// Adopts the labelled addresses left by an earlier run (removed at the first sync if no
    /// service wants them any more).
    pub fn new(ops: O) -> Addresses<O> {
        let have = ops.list().unwrap_or_else(|e| {
            log::warn!("proxy: listing the service addresses on {}: {}", DEVICE, e);
            BTreeSet::new()
        });
        Addresses { ops, have }
    }

    /// Adds the wanted addresses that are missing (before their listeners bind).
    pub fn add_missing(&mut self, want: &BTreeSet<Ipv4Addr>) {
        for ip in want.difference(&self.have.clone()) {
            match self.ops.add(*ip) {
                Ok(()) => {
                    self.have.insert(*ip);
                }
                // "File exists": the host has it already (an externalIP that is a node
                // address); its listeners bind all the same, and it is not ours to remove.
                Err(e) => log::warn!("proxy: adding service address {}: {}", ip, e),
            }
        }
    }

    /// Removes the addresses no longer wanted (after their listeners closed).
    pub fn remove_unwanted(&mut self, want: &BTreeSet<Ipv4Addr>) {
        let stale: Vec<Ipv4Addr> = self.have.difference(want).copied().collect();
        for ip in stale {
            if let Err(e) = self.ops.del(ip) {
                log::warn!("proxy: removing service address {}: {}", ip, e);
            }
            self.have.remove(&ip);
        }
    }

    /// Removes every address this proxy added (shutdown).
    pub fn clear(&mut self) {
        self.remove_unwanted(&BTreeSet::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Fake {
        on_lo: RefCell<BTreeSet<Ipv4Addr>>,
        calls: RefCell<Vec<String>>,
    }

    impl AddressOps for &Fake {
        fn list(&self) -> Result<BTreeSet<Ipv4Addr>, String> {
            Ok(self.on_lo.borrow().clone())
        }
        fn add(&self, ip: Ipv4Addr) -> Result<(), String> {
            self.calls.borrow_mut().push(format!("add {}", ip));
            if !self.on_lo.borrow_mut().insert(ip) {
                return Err("RTNETLINK answers: File exists".into());
            }
            Ok(())
        }
        fn del(&self, ip: Ipv4Addr) -> Result<(), String> {
            self.calls.borrow_mut().push(format!("del {}", ip));
            self.on_lo.borrow_mut().remove(&ip);
            Ok(())
        }
    }

    fn set(ips: &[&str]) -> BTreeSet<Ipv4Addr> {
        ips.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn adds_removes_and_adopts_leftovers() {
        let fake = Fake::default();
        fake.on_lo
            .borrow_mut()
            .insert("10.96.0.99".parse().unwrap()); // a crashed run's
        let mut a = Addresses::new(&fake);
        let want = set(&["10.96.0.1", "10.96.0.2"]);
        a.add_missing(&want);
        a.remove_unwanted(&want);
        assert_eq!(*fake.on_lo.borrow(), want);
        a.add_missing(&want);
        assert_eq!(fake.calls.borrow().len(), 3, "{:?}", fake.calls.borrow());
        a.clear();
        assert!(fake.on_lo.borrow().is_empty());
    }

    #[test]
    fn parses_labelled_addresses_only() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                   1: lo    inet 10.96.0.10/32 scope global lo:tinylet\\       valid_lft forever preferred_lft forever\n\
                   1: lo    inet 10.96.0.11/32 scope global lo:other\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(parse_labelled(out), set(&["10.96.0.10"]));
    }
}

//! The zero-configuration network: with no CNI configuration and a pod CIDR known
//! (`--pod-cidr`, or the Node's `spec.podCIDR`), tinylet writes a bridge + host-local + portmap
//! list so that pods get addresses with nothing else set up, as k3s does with its own flannel
//! file. It is regenerated only while it is tinylet's own file and the CIDR changes.

use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;

/// The file tinylet writes in the configuration directory.
pub const FILE_NAME: &str = "10-tinylet.conflist";
pub const NETWORK_NAME: &str = "tinylet";
pub const BRIDGE: &str = "cni0";

/// `10.42.0.0/24` -> the address and the prefix length, checked.
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("{:?}: not a CIDR (like 10.42.0.0/24)", cidr);
    let (a, l) = cidr.split_once('/').ok_or_else(bad)?;
    let a: IpAddr = a.parse().map_err(|_| bad())?;
    let l: u8 = l.parse().map_err(|_| bad())?;
    let max = if a.is_ipv4() { 30 } else { 126 };
    if l > max || l < 8 {
        return Err(format!(
            "{:?}: prefix length must be between 8 and {} (room for pods)",
            cidr, max
        ));
    }
    Ok((a, l))
}

/// The list for these pod CIDRs (one per family); host-local keeps its leases under `data_dir`.
pub fn conflist(cidrs: &[String], data_dir: &Path) -> Result<Value, String> {
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    for c in cidrs {
        let (a, _) = parse_cidr(c)?;
        ranges.push(json!([{"subnet": c}]));
        routes.push(json!({"dst": if a.is_ipv4() { "0.0.0.0/0" } else { "::/0" }}));
    }
    if ranges.is_empty() {
        return Err("no pod CIDR".into());
    }
    Ok(json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": routes,
                    "dataDir": data_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    }))
}

/// Writes the zero-config list into `conf_dir` unless the same content is already there.
pub fn ensure(conf_dir: &Path, cidrs: &[String], data_dir: &Path) -> Result<bool, String> {
    let v = conflist(cidrs, data_dir)?;
    let path = conf_dir.join(FILE_NAME);
    let text = serde_json::to_vec_pretty(&v).unwrap_or_default();
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    crate::fsutil::ensure_dir(conf_dir).map_err(|e| format!("{}: {}", conf_dir.display(), e))?;
    crate::fsutil::write_atomic(&path, &text, 0o644)
        .map_err(|e| format!("writing {}: {}", path.display(), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked_and_become_ranges() {
        assert!(parse_cidr("10.42.0.0/24").is_ok());
        assert!(parse_cidr("fd00:42::/64").is_ok());
        for bad in [
            "10.42.0.0",
            "10.42.0.0/33",
            "10.42.0.0/31",
            "x/24",
            "10.0.0.0/4",
        ] {
            assert!(parse_cidr(bad).is_err(), "{}", bad);
        }
        let v = conflist(
            &["10.42.0.0/24".into(), "fd00:42::/64".into()],
            Path::new("/var/lib/tinylet/cni"),
        )
        .unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][1][0]["subnet"],
            "fd00:42::/64"
        );
        assert_eq!(v["plugins"][0]["ipam"]["routes"][1]["dst"], "::/0");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        let d = std::env::temp_dir().join(format!("tinylet-defconf-{}", std::process::id()));
        assert!(ensure(&d, &["10.42.0.0/24".into()], &d).unwrap());
        assert!(!ensure(&d, &["10.42.0.0/24".into()], &d).unwrap());
        let c = super::super::conf::load_dir(&d).unwrap().unwrap();
        assert_eq!(c.name, NETWORK_NAME);
        std::fs::remove_dir_all(d).unwrap();
    }
}

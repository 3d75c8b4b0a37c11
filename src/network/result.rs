//! Plugin output: a success result (0.3.x / 0.4.0 / 1.0.0 shape, and the old 0.1/0.2 `ip4`/`ip6`)
//! reduced to the pod's addresses, and the error result a failing plugin prints. Plugin output
//! is outside input: nothing here panics on it, and what is read is bounded by the caller.

use serde_json::Value;
use std::net::IpAddr;

/// A plugin's error result: `{"code": N, "msg": "...", "details": "..."}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginError {
    pub code: u64,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// The error result in a failed plugin's stdout, if it printed one.
pub fn parse_error(stdout: &[u8]) -> Option<PluginError> {
    let v: Value = serde_json::from_slice(stdout).ok()?;
    let code = v.get("code")?.as_u64()?;
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(|s| s.chars().take(2000).collect())
            .unwrap_or_default()
    };
    Some(PluginError {
        code,
        msg: text("msg"),
        details: text("details"),
    })
}

/// The addresses a result gives the pod: those on interfaces inside the sandbox (or on no named
/// interface), IPv4 first as containerd orders them, without prefix length, without duplicates.
pub fn pod_ips(result: &Value) -> Vec<String> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |idx: Option<u64>| -> bool {
        match (idx, interfaces) {
            (Some(i), Some(ifs)) => ifs
                .get(i as usize)
                .and_then(|f| f.get("sandbox"))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            _ => true,
        }
    };
    for ip in result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let idx = ip.get("interface").and_then(Value::as_u64);
        if !in_sandbox(idx) {
            continue;
        }
        if let Some(a) = ip.get("address").and_then(Value::as_str).and_then(addr) {
            ips.push(a);
        }
    }
    // Spec 0.1.0 / 0.2.0.
    for k in ["ip4", "ip6"] {
        if let Some(a) = result[k]["ip"].as_str().and_then(addr) {
            ips.push(a);
        }
    }
    ips.sort_by_key(|a| a.is_ipv6()); // stable: keeps the plugin's order within a family
    ips.dedup();
    ips.into_iter().map(|a| a.to_string()).collect()
}

/// `10.1.0.2/24` -> 10.1.0.2.
fn addr(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_of_each_version_give_the_pods_addresses() {
        let v1 = json!({"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0","mac":"aa"},{"name":"veth1","mac":"bb"},{"name":"eth0","mac":"cc","sandbox":"/run/netns/x"}],
            "ips":[{"address":"fd00::5/64","interface":2},{"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":2},
                   {"address":"10.22.0.1/16","interface":0}]});
        assert_eq!(pod_ips(&v1), vec!["10.22.0.5", "fd00::5"]);
        let v04 = json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.2.3/24"}]});
        assert_eq!(pod_ips(&v04), vec!["10.1.2.3"]);
        let v02 = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.9.0.7/16"}});
        assert_eq!(pod_ips(&v02), vec!["10.9.0.7"]);
    }

    #[test]
    fn hostile_output_never_panics() {
        for v in [
            json!(null),
            json!([]),
            json!({"ips": 5}),
            json!({"ips": [{"address": 1}, {"address": "x/y"}, {"interface": 99999999999u64, "address": "10.0.0.1/8"}], "interfaces": "no"}),
            json!({"ips": [{"interface": 18446744073709551615u64, "address": "10.0.0.1"}], "interfaces": []}),
        ] {
            let _ = pod_ips(&v);
        }
        assert_eq!(parse_error(b"\xff\xfe"), None);
        assert_eq!(parse_error(b"{\"msg\":\"no code\"}"), None);
        let e = parse_error(br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range full"}"#).unwrap();
        assert_eq!(e.code, 11);
        assert_eq!(e.to_string(), "failed to allocate: range full");
    }
}

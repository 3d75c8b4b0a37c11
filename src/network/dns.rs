//! A pod's /etc/resolv.conf per dnsPolicy, as the kubelet composes it (pkg/kubelet/network/dns)
//! and containerd writes it: ClusterFirst (cluster nameservers, `<ns>.svc.<domain> svc.<domain>
//! <domain>` + the node's search list, `ndots:5`), Default (the node's `--resolv-conf`),
//! ClusterFirstWithHostNet, None; then the pod's dnsConfig; then the limits (3 nameservers,
//! 32 search domains, 2048 characters of search line, no domain over 253 characters).

use serde_json::Value;

pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCHES: usize = 32;
pub const MAX_SEARCH_CHARS: usize = 2048;
const MAX_DOMAIN: usize = 253;

/// What the node knows that DNS needs.
#[derive(Debug, Clone, Default)]
pub struct NodeDns {
    /// `--cluster-dns`.
    pub cluster_dns: Vec<String>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// The text of `--resolv-conf`; None when it is set to "" (then 127.0.0.1 and search ".").
    pub host_resolv: Option<String>,
}

/// The pod fields DNS depends on.
pub struct PodDns<'a> {
    pub namespace: &'a str,
    pub policy: &'a str,
    pub host_network: bool,
    /// spec.dnsConfig (null when absent).
    pub dns_config: &'a Value,
}

/// The resolv.conf and the warnings the kubelet would send as events (reason, message).
#[derive(Debug, Default, PartialEq)]
pub struct Resolv {
    pub content: String,
    pub warnings: Vec<(&'static str, String)>,
}

#[derive(Debug, Default, PartialEq)]
struct Config {
    servers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

/// The node's resolv.conf: nameservers, the last search line (without "." and trailing dots),
/// options.
fn parse_host(text: &str) -> Config {
    let mut c = Config::default();
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["nameserver", ip, ..] => c.servers.push(ip.to_string()),
            ["search", rest @ ..] => {
                c.searches = rest
                    .iter()
                    .filter(|s| **s != ".")
                    .map(|s| s.trim_end_matches('.').to_string())
                    .collect()
            }
            ["options", rest @ ..] => c.options = merge_options(&c.options, rest),
            _ => {}
        }
    }
    c
}

/// Options merged by name (`ndots:5` and `ndots:2` are one option), later ones win.
fn merge_options(existing: &[String], new: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = existing.to_vec();
    for o in new {
        let name = o.split(':').next().unwrap_or("");
        match out.iter().position(|e| e.split(':').next() == Some(name)) {
            Some(i) => out[i] = o.to_string(),
            None => out.push(o.to_string()),
        }
    }
    out
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Composes the pod's resolv.conf. An unknown dnsPolicy is an error (the API server refuses it).
pub fn resolv_conf(node: &NodeDns, pod: &PodDns) -> Result<Resolv, String> {
    let mut warnings = Vec::new();
    let cluster = match pod.policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" | "" => !pod.host_network,
        "Default" => false,
        "None" => false,
        other => {
            return Err(format!(
                "spec.dnsPolicy: Unsupported value: {:?}: supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"",
                other
            ))
        }
    };
    let host = node.host_resolv.as_deref().map(parse_host);
    let host_config = || match &host {
        Some(h) => Config {
            servers: h.servers.clone(),
            searches: h.searches.clone(),
            options: h.options.clone(),
        },
        None => Config {
            servers: vec!["127.0.0.1".into()],
            searches: vec![".".into()],
            options: Vec::new(),
        },
    };
    let mut c = if pod.policy == "None" {
        Config::default()
    } else if cluster && node.cluster_dns.is_empty() {
        warnings.push((
            "MissingClusterDNS",
            format!(
                "kubelet does not have ClusterDNS IP configured and cannot create Pod using {:?} policy. Falling back to \"Default\" policy.",
                if pod.policy.is_empty() { "ClusterFirst" } else { pod.policy }
            ),
        ));
        host_config()
    } else if cluster {
        let host_search = host
            .as_ref()
            .map(|h| h.searches.clone())
            .unwrap_or_default();
        let d = &node.cluster_domain;
        let mut searches = Vec::new();
        if !d.is_empty() {
            searches.push(format!("{}.svc.{}", pod.namespace, d));
            searches.push(format!("svc.{}", d));
            searches.push(d.clone());
        }
        searches.extend(host_search);
        Config {
            servers: node.cluster_dns.clone(),
            searches: dedup(searches),
            options: vec!["ndots:5".into()],
        }
    } else {
        host_config()
    };
    let strs = |k: &str| -> Vec<String> {
        pod.dns_config[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    if pod.dns_config.is_object() {
        c.servers = dedup(c.servers.into_iter().chain(strs("nameservers")).collect());
        c.searches = dedup(c.searches.into_iter().chain(strs("searches")).collect());
        let opts: Vec<String> = pod.dns_config["options"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                let name = o["name"].as_str().filter(|n| !n.is_empty())?;
                Some(match o["value"].as_str() {
                    Some(v) => format!("{}:{}", name, v),
                    None => name.to_string(),
                })
            })
            .collect();
        let refs: Vec<&str> = opts.iter().map(String::as_str).collect();
        c.options = merge_options(&c.options, &refs);
    }
    if c.servers.len() > MAX_NAMESERVERS {
        c.servers.truncate(MAX_NAMESERVERS);
        warnings.push((
            "DNSConfigForming",
            format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
                c.servers.join(" ")
            ),
        ));
    }
    let mut exceeded = false;
    if c.searches.len() > MAX_SEARCHES {
        c.searches.truncate(MAX_SEARCHES);
        exceeded = true;
    }
    let before = c.searches.len();
    c.searches.retain(|s| s.len() <= MAX_DOMAIN);
    exceeded |= c.searches.len() != before;
    while c.searches.join(" ").len() > MAX_SEARCH_CHARS {
        c.searches.pop();
        exceeded = true;
    }
    if exceeded {
        warnings.push((
            "DNSConfigForming",
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
                c.searches.join(" ")
            ),
        ));
    }
    let mut content = String::new();
    if !c.searches.is_empty() {
        content.push_str(&format!("search {}\n", c.searches.join(" ")));
    }
    for s in &c.servers {
        content.push_str(&format!("nameserver {}\n", s));
    }
    if !c.options.is_empty() {
        content.push_str(&format!("options {}\n", c.options.join(" ")));
    }
    Ok(Resolv { content, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "# generated\nnameserver 192.168.1.1\nnameserver 192.168.1.2\nsearch old.example\nsearch lan example.com. .\noptions edns0 ndots:2\n";

    fn node(cluster_dns: &[&str]) -> NodeDns {
        NodeDns {
            cluster_dns: cluster_dns.iter().map(|s| s.to_string()).collect(),
            cluster_domain: "cluster.local".into(),
            host_resolv: Some(HOST.into()),
        }
    }

    fn pod<'a>(policy: &'a str, host_network: bool, cfg: &'a Value) -> PodDns<'a> {
        PodDns {
            namespace: "shop",
            policy,
            host_network,
            dns_config: cfg,
        }
    }

    #[test]
    fn each_policy_as_the_kubelet_composes_it() {
        let null = Value::Null;
        let cluster = "search shop.svc.cluster.local svc.cluster.local cluster.local lan example.com\nnameserver 10.96.0.10\noptions ndots:5\n";
        let host = "search lan example.com\nnameserver 192.168.1.1\nnameserver 192.168.1.2\noptions edns0 ndots:2\n";
        let n = node(&["10.96.0.10"]);
        let r = |p, hn| resolv_conf(&n, &pod(p, hn, &null)).unwrap();
        assert_eq!(r("ClusterFirst", false).content, cluster);
        assert_eq!(
            r("ClusterFirst", true).content,
            host,
            "hostNetwork: ClusterFirst means Default"
        );
        assert_eq!(r("ClusterFirstWithHostNet", true).content, cluster);
        assert_eq!(r("Default", false).content, host);
        assert_eq!(r("None", false).content, "");
        assert!(r("ClusterFirst", false).warnings.is_empty());
        assert!(resolv_conf(&n, &pod("Bogus", false, &null))
            .unwrap_err()
            .contains("spec.dnsPolicy"));
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_with_a_warning() {
        let null = Value::Null;
        let r = resolv_conf(&node(&[]), &pod("ClusterFirst", false, &null)).unwrap();
        assert!(r
            .content
            .starts_with("search lan example.com\nnameserver 192.168.1.1"));
        assert_eq!(r.warnings[0].0, "MissingClusterDNS");
        let mut n = node(&[]);
        n.host_resolv = None; // --resolv-conf ""
        let r = resolv_conf(&n, &pod("Default", false, &null)).unwrap();
        assert_eq!(r.content, "search .\nnameserver 127.0.0.1\n");
    }

    #[test]
    fn dns_config_is_appended_and_limits_apply() {
        let cfg = json!({"nameservers": ["1.1.1.1", "10.96.0.10"], "searches": ["my.dns.search.suffix"],
                         "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]});
        let r = resolv_conf(&node(&["10.96.0.10"]), &pod("ClusterFirst", false, &cfg)).unwrap();
        assert_eq!(r.content, "search shop.svc.cluster.local svc.cluster.local cluster.local lan example.com my.dns.search.suffix\nnameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:2 edns0\n");
        let cfg = json!({"nameservers": ["1.1.1.1"], "searches": ["a.b"], "options": [{"name": "timeout", "value": "1"}]});
        let r = resolv_conf(&node(&[]), &pod("None", false, &cfg)).unwrap();
        assert_eq!(
            r.content,
            "search a.b\nnameserver 1.1.1.1\noptions timeout:1\n"
        );
        assert!(r.warnings.is_empty());
        let many: Vec<String> = (0..40).map(|i| format!("d{}.example", i)).collect();
        let cfg =
            json!({"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"], "searches": many});
        let r = resolv_conf(&node(&[]), &pod("None", false, &cfg)).unwrap();
        assert!(r.content.contains("nameserver 3.3.3.3") && !r.content.contains("4.4.4.4"));
        let search = r.content.lines().next().unwrap();
        assert_eq!(search.split(' ').count() - 1, MAX_SEARCHES);
        assert_eq!(r.warnings.len(), 2);
        let long: Vec<String> = (0..30)
            .map(|i| format!("{}{}", "x".repeat(90), i))
            .collect();
        let cfg = json!({"nameservers": ["1.1.1.1"], "searches": long});
        let r = resolv_conf(&node(&[]), &pod("None", false, &cfg)).unwrap();
        assert!(r.content.lines().next().unwrap().len() <= MAX_SEARCH_CHARS + 7);
        assert_eq!(r.warnings[0].0, "DNSConfigForming");
    }
}

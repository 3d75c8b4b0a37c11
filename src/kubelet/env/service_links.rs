//! Service-link variables, as the kubelet's envvars package makes them: for each Service a pod
//! sees, `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT` (+ one per named port) and the old Docker
//! link variables (`<NAME>_PORT`, `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The master service: its variables reach every pod, whatever `enableServiceLinks` says, because
/// in-cluster clients find the API server through KUBERNETES_SERVICE_HOST/PORT.
const MASTER_NAMESPACE: &str = "default";
const MASTER_SERVICE: &str = "kubernetes";

/// What of a Service its variables need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub port: i64,
    pub protocol: String,
}

impl Service {
    /// A v1 Service object; `None` for one without a cluster IP (headless `None`, ExternalName,
    /// not yet allocated), which gets no variables.
    pub fn from_json(v: &Value) -> Option<Service> {
        let spec = &v["spec"];
        let cluster_ip = spec["clusterIP"].as_str().unwrap_or_default();
        if cluster_ip.is_empty() || cluster_ip == "None" {
            return None;
        }
        let ports = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p["name"].as_str().unwrap_or_default().to_string(),
                    port: p["port"].as_i64()?,
                    protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                })
            })
            .collect();
        Some(Service {
            namespace: v["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            name: v["metadata"]["name"].as_str()?.to_string(),
            cluster_ip: cluster_ip.to_string(),
            ports,
        })
    }
}

/// The services a pod in `namespace` sees: the master service always, the namespace's own with
/// `enableServiceLinks`. A service of the pod's namespace wins over a master service of the same
/// name, as in the kubelet's getServiceEnvVarMap. Sorted by name so the variables have one order.
pub fn select<'a>(namespace: &str, enable_links: bool, all: &'a [Service]) -> Vec<&'a Service> {
    let mut chosen: std::collections::BTreeMap<&str, &Service> = Default::default();
    for s in all {
        if s.namespace == namespace && enable_links {
            chosen.insert(&s.name, s);
        } else if s.namespace == MASTER_NAMESPACE && s.name == MASTER_SERVICE {
            chosen.entry(&s.name).or_insert(s);
        }
    }
    chosen.into_values().collect()
}

/// The variables of `services`, in the kubelet's order per service.
pub fn variables(services: &[&Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in services {
        let Some(first) = s.ports.first() else {
            // Validation gives every service with a cluster IP a port; without one there is
            // nothing to link to.
            continue;
        };
        let prefix = variable_name(&s.name);
        out.push((format!("{}_SERVICE_HOST", prefix), s.cluster_ip.clone()));
        out.push((format!("{}_SERVICE_PORT", prefix), first.port.to_string()));
        for p in s.ports.iter().filter(|p| !p.name.is_empty()) {
            out.push((
                format!("{}_SERVICE_PORT_{}", prefix, variable_name(&p.name)),
                p.port.to_string(),
            ));
        }
        for (i, p) in s.ports.iter().enumerate() {
            let proto = if p.protocol.is_empty() {
                "tcp".to_string()
            } else {
                p.protocol.to_lowercase()
            };
            let url = format!("{}://{}", proto, host_port(&s.cluster_ip, p.port));
            if i == 0 {
                out.push((format!("{}_PORT", prefix), url.clone()));
            }
            let pp = format!("{}_PORT_{}_{}", prefix, p.port, proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{}_PROTO", pp), proto.clone()));
            out.push((format!("{}_PORT", pp), p.port.to_string()));
            out.push((format!("{}_ADDR", pp), s.cluster_ip.clone()));
        }
    }
    out
}

/// Service and port names are DNS labels: upper-cased with `-` as `_` they are variable names.
fn variable_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// `ip:port`, with brackets around an IPv6 address (Go's net.JoinHostPort).
fn host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{}]:{}", ip, port)
    } else {
        format!("{}:{}", ip, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip, "ports": ports}})
    }

    #[test]
    fn docker_link_variables() {
        let s = Service::from_json(&svc(
            "app",
            "redis-primary",
            "10.0.0.11",
            json!([{"name": "db", "port": 6379, "protocol": "TCP"}, {"name": "metrics-port", "port": 9121, "protocol": "UDP"}]),
        ))
        .unwrap();
        let vars = variables(&[&s]);
        let expect = [
            ("REDIS_PRIMARY_SERVICE_HOST", "10.0.0.11"),
            ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_DB", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_METRICS_PORT", "9121"),
            ("REDIS_PRIMARY_PORT", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.0.0.11"),
            ("REDIS_PRIMARY_PORT_9121_UDP", "udp://10.0.0.11:9121"),
            ("REDIS_PRIMARY_PORT_9121_UDP_PROTO", "udp"),
            ("REDIS_PRIMARY_PORT_9121_UDP_PORT", "9121"),
            ("REDIS_PRIMARY_PORT_9121_UDP_ADDR", "10.0.0.11"),
        ];
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(vars, expect);
    }

    #[test]
    fn ipv6_urls_have_brackets_and_protocol_defaults_to_tcp() {
        let s = Service::from_json(&svc("a", "web", "fd00::1", json!([{"port": 80}]))).unwrap();
        let vars = variables(&[&s]);
        assert!(vars.contains(&("WEB_PORT".into(), "tcp://[fd00::1]:80".into())));
        assert!(vars.contains(&("WEB_PORT_80_TCP_ADDR".into(), "fd00::1".into())));
        // An unnamed first port gives no _SERVICE_PORT_<NAME>.
        assert!(!vars.iter().any(|(k, _)| k.starts_with("WEB_SERVICE_PORT_")));
    }

    #[test]
    fn headless_and_external_services_have_none() {
        assert!(Service::from_json(&svc("a", "h", "None", json!([{"port": 80}]))).is_none());
        let ext = json!({"metadata": {"namespace": "a", "name": "e"}, "spec": {"type": "ExternalName", "externalName": "x.example"}});
        assert!(Service::from_json(&ext).is_none());
    }

    #[test]
    fn selection_master_always_namespace_with_links() {
        let all: Vec<Service> = [
            svc(
                "default",
                "kubernetes",
                "10.0.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            svc("default", "other", "10.0.0.2", json!([{"port": 80}])),
            svc("app", "web", "10.0.0.3", json!([{"port": 80}])),
            svc("elsewhere", "db", "10.0.0.4", json!([{"port": 5432}])),
        ]
        .iter()
        .filter_map(Service::from_json)
        .collect();
        let names = |v: Vec<&Service>| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(select("app", true, &all)), vec!["kubernetes", "web"]);
        assert_eq!(names(select("app", false, &all)), vec!["kubernetes"]);
        assert_eq!(
            names(select("default", true, &all)),
            vec!["kubernetes", "other"]
        );
        // The namespace's own "kubernetes" service wins over the master one.
        let mut all2 = all.clone();
        all2.push(
            Service::from_json(&svc("app", "kubernetes", "10.9.9.9", json!([{"port": 1}])))
                .unwrap(),
        );
        let chosen = select("app", true, &all2);
        assert_eq!(chosen[0].cluster_ip, "10.9.9.9");
        let vars = variables(&select("app", false, &all));
        assert!(vars.contains(&("KUBERNETES_SERVICE_HOST".into(), "10.0.0.1".into())));
        assert!(vars.contains(&("KUBERNETES_SERVICE_PORT".into(), "443".into())));
        assert!(vars.contains(&("KUBERNETES_SERVICE_PORT_HTTPS".into(), "443".into())));
    }
}

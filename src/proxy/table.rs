//! Services and EndpointSlices -> the routing table: which frontends (protocol, address, port)
//! to listen on and which endpoints each one balances over. Pure: no I/O, unit-tested.
//!
//! Semantics follow kube-proxy's service and endpoint change trackers: services without a
//! ClusterIP (headless), ExternalName services and SCTP ports are skipped; an endpoint's
//! `ready` unset counts as ready, `serving` unset as `ready`, `terminating` unset as false; a
//! slice port matches a service port by name and protocol; the same address in two slices is
//! one endpoint. Only IPv4 is handled (the node's proxy listens on IPv4 addresses).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

/// kube-proxy's default for `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY: Duration = Duration::from_secs(10800);
/// The label a slice names its service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// What a listener is bound to: ClusterIP:port, externalIP:port, or 0.0.0.0:nodePort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub protocol: Protocol,
    pub addr: SocketAddrV4,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddrV4,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// One port of one service, as one frontend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port` (plus ` external` for node-local external traffic): names the
    /// balancer, so round robin and affinity survive table updates.
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// ClientIP session affinity and its timeout.
    pub affinity: Option<Duration>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Table {
    pub frontends: BTreeMap<Frontend, Arc<ServicePort>>,
    /// ClusterIPs and externalIPs: the addresses the node must hold (on `lo`).
    pub addresses: BTreeSet<Ipv4Addr>,
}

/// A Service, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub external_ips: Vec<Ipv4Addr>,
    pub ports: Vec<Port>,
    pub affinity: Option<Duration>,
    /// `externalTrafficPolicy: Local` (NodePorts and externalIPs use this node's endpoints only).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local` (the ClusterIP uses this node's endpoints only).
    pub internal_local: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// An EndpointSlice, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    pub namespace: String,
    /// The service it belongs to.
    pub service: String,
    pub ports: Vec<(String, Protocol, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SliceEndpoint {
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

/// A Service object -> Service; `Ok(None)` for the ones a proxy leaves alone (headless,
/// ExternalName, IPv6-only); `Err` names what is malformed.
pub fn parse_service(v: &Value) -> Result<Option<Service>, String> {
    let meta = &v["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
    let name = meta["name"]
        .as_str()
        .ok_or("a Service without metadata.name")?
        .to_string();
    let spec = &v["spec"];
    if spec["type"].as_str() == Some("ExternalName") {
        return Ok(None);
    }
    let ip = match spec["clusterIP"].as_str() {
        None | Some("") | Some("None") => return Ok(None),
        Some(ip) => ip,
    };
    let Ok(cluster_ip) = ip.parse::<Ipv4Addr>() else {
        if ip.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(None);
        }
        return Err(format!(
            "service {}/{}: spec.clusterIP {:?} is not an IP address",
            namespace, name, ip
        ));
    };
    let mut external_ips = Vec::new();
    for e in spec["externalIPs"].as_array().into_iter().flatten() {
        // IPv6 externalIPs are skipped like IPv6 ClusterIPs; garbage is named.
        match e.as_str().map(str::parse::<Ipv4Addr>) {
            Some(Ok(ip)) => external_ips.push(ip),
            Some(Err(_)) if e.as_str().is_some_and(|s| s.contains(':')) => {}
            _ => {
                return Err(format!(
                    "service {}/{}: spec.externalIPs: {} is not an IPv4 address",
                    namespace, name, e
                ))
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec["ports"].as_array().into_iter().flatten().enumerate() {
        let Some(protocol) = Protocol::parse(p["protocol"].as_str()) else {
            continue; // SCTP: not proxied
        };
        let port = p["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!(
                    "service {}/{}: spec.ports[{}].port {} is not a port number",
                    namespace, name, i, p["port"]
                )
            })?;
        let node_port = p["nodePort"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0);
        ports.push(Port {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            protocol,
            port,
            node_port,
        });
    }
    let affinity = match spec["sessionAffinity"].as_str() {
        Some("ClientIP") => Some(
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                .as_u64()
                .filter(|s| *s > 0)
                .map_or(DEFAULT_AFFINITY, Duration::from_secs),
        ),
        _ => None,
    };
    Ok(Some(Service {
        namespace,
        name,
        cluster_ip,
        external_ips,
        ports,
        affinity,
        external_local: spec["externalTrafficPolicy"].as_str() == Some("Local"),
        internal_local: spec["internalTrafficPolicy"].as_str() == Some("Local"),
    }))
}

/// An EndpointSlice object -> Slice; `Ok(None)` for non-IPv4 slices and slices of no service.
pub fn parse_slice(v: &Value) -> Result<Option<Slice>, String> {
    if v["addressType"].as_str() != Some("IPv4") {
        return Ok(None);
    }
    let meta = &v["metadata"];
    let Some(service) = meta["labels"][SERVICE_NAME_LABEL].as_str() else {
        return Ok(None);
    };
    let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
    let what = || {
        format!(
            "endpointslice {}/{}",
            namespace,
            meta["name"].as_str().unwrap_or("?")
        )
    };
    let mut ports = Vec::new();
    for p in v["ports"].as_array().into_iter().flatten() {
        let Some(protocol) = Protocol::parse(p["protocol"].as_str()) else {
            continue;
        };
        // A port without a number means "all ports", which only headless services use.
        let Some(port) = p["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
        else {
            continue;
        };
        ports.push((
            p["name"].as_str().unwrap_or_default().to_string(),
            protocol,
            port,
        ));
    }
    let mut endpoints = Vec::new();
    for e in v["endpoints"].as_array().into_iter().flatten() {
        // kube-proxy uses the first address of an endpoint.
        let Some(addr) = e["addresses"][0].as_str() else {
            continue;
        };
        let ip: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{}: {:?} is not an IPv4 address", what(), addr))?;
        let c = &e["conditions"];
        let ready = c["ready"].as_bool().unwrap_or(true);
        endpoints.push(SliceEndpoint {
            ip,
            ready,
            serving: c["serving"].as_bool().unwrap_or(ready),
            terminating: c["terminating"].as_bool().unwrap_or(false),
            node: e["nodeName"].as_str().map(str::to_string),
        });
    }
    Ok(Some(Slice {
        namespace,
        service: service.to_string(),
        ports,
        endpoints,
    }))
}

/// The routing table for `node` from every service and slice.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a Slice>,
    node: &str,
) -> Table {
    let mut by_service: BTreeMap<(&str, &str), Vec<&Slice>> = BTreeMap::new();
    for s in slices {
        by_service
            .entry((s.namespace.as_str(), s.service.as_str()))
            .or_default()
            .push(s);
    }
    let mut table = Table::default();
    for svc in services {
        let slices = by_service
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        table.addresses.insert(svc.cluster_ip);
        table.addresses.extend(svc.external_ips.iter().copied());
        for port in &svc.ports {
            let name = format!("{}/{}:{}", svc.namespace, svc.name, port.name);
            let all = endpoints(slices, port, None);
            let local = endpoints(slices, port, Some(node));
            let make = |name: String, endpoints: Vec<Endpoint>| {
                Arc::new(ServicePort {
                    name,
                    endpoints,
                    affinity: svc.affinity,
                })
            };
            let internal = make(
                name.clone(),
                if svc.internal_local {
                    local.clone()
                } else {
                    all.clone()
                },
            );
            let external = if svc.external_local {
                make(format!("{} external", name), local)
            } else if svc.internal_local {
                make(format!("{} external", name), all)
            } else {
                internal.clone()
            };
            let mut add = |ip: Ipv4Addr, p: u16, sp: &Arc<ServicePort>| {
                table.frontends.insert(
                    Frontend {
                        protocol: port.protocol,
                        addr: SocketAddrV4::new(ip, p),
                    },
                    sp.clone(),
                );
            };
            add(svc.cluster_ip, port.port, &internal);
            for ip in &svc.external_ips {
                add(*ip, port.port, &external);
            }
            if let Some(np) = port.node_port {
                add(Ipv4Addr::UNSPECIFIED, np, &external);
            }
        }
    }
    table
}

/// The endpoints of one service port (only `node`'s when given), deduplicated, sorted.
fn endpoints(slices: &[&Slice], port: &Port, node: Option<&str>) -> Vec<Endpoint> {
    let mut out: BTreeMap<SocketAddrV4, Endpoint> = BTreeMap::new();
    for s in slices {
        let Some(&(_, _, number)) = s
            .ports
            .iter()
            .find(|(n, p, _)| *n == port.name && *p == port.protocol)
        else {
            continue;
        };
        for e in &s.endpoints {
            if node.is_some() && e.node.as_deref() != node {
                continue;
            }
            let addr = SocketAddrV4::new(e.ip, number);
            // Seen twice (a slice being replaced): a ready copy wins.
            if out.get(&addr).is_some_and(|old| old.ready) {
                continue;
            }
            out.insert(
                addr,
                Endpoint {
                    addr,
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                },
            );
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: Value) -> Service {
        parse_service(&v).unwrap().unwrap()
    }

    fn slice(v: Value) -> Slice {
        parse_slice(&v).unwrap().unwrap()
    }

    fn web() -> Value {
        json!({"metadata": {"namespace": "default", "name": "web"},
               "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                        "externalIPs": ["192.0.2.7"],
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                                  {"name": "dns", "port": 53, "protocol": "UDP"},
                                  {"name": "s", "port": 9, "protocol": "SCTP"}]}})
    }

    fn web_slice() -> Value {
        json!({"metadata": {"namespace": "default", "name": "web-abc",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                         {"name": "dns", "port": 5353, "protocol": "UDP"}],
               "endpoints": [
                   {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "nodeName": "n1"},
                   {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                   {"addresses": ["10.0.0.4"], "nodeName": "n2"}]})
    }

    #[test]
    fn frontends_for_cluster_ip_external_ip_and_node_port() {
        let t = build([&svc(web())], [&slice(web_slice())], "n1");
        let keys: Vec<String> = t
            .frontends
            .keys()
            .map(|f| format!("{:?} {}", f.protocol, f.addr))
            .collect();
        assert_eq!(
            keys,
            [
                "Tcp 0.0.0.0:30080",
                "Tcp 10.96.0.10:80",
                "Tcp 192.0.2.7:80",
                "Udp 10.96.0.10:53",
                "Udp 192.0.2.7:53"
            ]
        );
        assert_eq!(
            t.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            ["10.96.0.10", "192.0.2.7"]
        );
        let http = &t.frontends[&Frontend {
            protocol: Protocol::Tcp,
            addr: "10.96.0.10:80".parse().unwrap(),
        }];
        assert_eq!(http.name, "default/web:http");
        let eps: Vec<String> = http
            .endpoints
            .iter()
            .map(|e| format!("{} {} {} {}", e.addr, e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            eps,
            [
                "10.0.0.2:8080 true true false",
                "10.0.0.3:8080 false true true",
                "10.0.0.4:8080 true true false"
            ]
        );
        let dns = &t.frontends[&Frontend {
            protocol: Protocol::Udp,
            addr: "10.96.0.10:53".parse().unwrap(),
        }];
        assert_eq!(dns.endpoints[0].addr.port(), 5353);
    }

    #[test]
    fn traffic_policy_local_keeps_this_nodes_endpoints() {
        let mut v = web();
        v["spec"]["externalTrafficPolicy"] = json!("Local");
        let t = build([&svc(v)], [&slice(web_slice())], "n1");
        let np = &t.frontends[&Frontend {
            protocol: Protocol::Tcp,
            addr: "0.0.0.0:30080".parse().unwrap(),
        }];
        assert_eq!(np.name, "default/web:http external");
        assert_eq!(np.endpoints.len(), 1);
        assert_eq!(np.endpoints[0].addr.to_string(), "10.0.0.2:8080");
        let cip = &t.frontends[&Frontend {
            protocol: Protocol::Tcp,
            addr: "10.96.0.10:80".parse().unwrap(),
        }];
        assert_eq!(cip.endpoints.len(), 3);
    }

    #[test]
    fn skipped_services_and_slices() {
        for spec in [
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            json!({"type": "ExternalName", "externalName": "x.example"}),
            json!({"clusterIP": "fd00::1", "ports": [{"port": 80}]}),
            json!({"ports": [{"port": 80}]}),
        ] {
            let v = json!({"metadata": {"name": "s"}, "spec": spec});
            assert_eq!(parse_service(&v).unwrap(), None, "{}", v);
        }
        let bad = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "nope"}});
        assert!(parse_service(&bad).unwrap_err().contains("nope"));
        let bad_port = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 70000}]}});
        assert!(parse_service(&bad_port)
            .unwrap_err()
            .contains("spec.ports[0].port"));
        let mut v6 = web_slice();
        v6["addressType"] = json!("IPv6");
        assert_eq!(parse_slice(&v6).unwrap(), None);
        let mut orphan = web_slice();
        orphan["metadata"]["labels"] = json!({});
        assert_eq!(parse_slice(&orphan).unwrap(), None);
        let mut garbage = web_slice();
        garbage["endpoints"][0]["addresses"][0] = json!("x");
        assert!(parse_slice(&garbage).unwrap_err().contains("web-abc"));
    }

    #[test]
    fn affinity_and_dedup_across_slices() {
        let mut v = web();
        v["spec"]["sessionAffinity"] = json!("ClientIP");
        let s = svc(v.clone());
        assert_eq!(s.affinity, Some(DEFAULT_AFFINITY));
        v["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 5}});
        assert_eq!(svc(v).affinity, Some(Duration::from_secs(5)));
        let a = slice(web_slice());
        let mut b = a.clone();
        b.endpoints[0].ready = false;
        let t = build([&s], [&b, &a], "n1");
        let http = t.frontends.values().find(|p| p.name.ends_with(":http"));
        let http = http.unwrap();
        assert_eq!(http.endpoints.len(), 3);
        assert!(http.endpoints[0].ready);
        // A service without slices still listens (and refuses: no endpoints).
        let t = build([&s], [], "n1");
        assert!(t.frontends.values().all(|p| p.endpoints.is_empty()));
    }
}

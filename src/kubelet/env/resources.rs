//! `resourceFieldRef` values: a container's limit or request in whole units of a divisor,
//! rounded up, with the kubelet's rule that a limit the container does not set is the node's
//! allocatable amount (the most the container can get).

use crate::kube::quantity;
use crate::kube::types::{Container, ResourceFieldSelector};

/// The node's allocatable resources, for limits a container leaves unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allocatable {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
}

/// The value of `sel` for container `own` of a pod whose containers are `containers`.
pub fn value(
    sel: &ResourceFieldSelector,
    own: &Container,
    containers: &[Container],
    alloc: &Allocatable,
) -> Result<String, String> {
    let c = match sel.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("resourceFieldRef: no container named {:?} in the pod", name))?,
        None => own,
    };
    let (which, resource) = sel
        .resource
        .split_once('.')
        .filter(|(w, _)| *w == "limits" || *w == "requests")
        .ok_or_else(|| format!("unsupported container resource : {}", sel.resource))?;
    let map = if which == "limits" {
        &c.resources.limits
    } else {
        &c.resources.requests
    };
    // A request the container leaves unset is its limit: the API server's defaulting, which
    // the kubelet's file source applies to static pods too.
    let set = map
        .get(resource)
        .or_else(|| c.resources.limits.get(resource))
        .and_then(quantity::value_to_string);
    let divisor = sel.divisor.as_ref().and_then(quantity::value_to_string);
    let quantity_err = |e: String| format!("resourceFieldRef {}: {}", sel.resource, e);
    match resource {
        "cpu" => {
            let amount = set
                .map(|s| quantity::parse_millis(&s))
                .transpose()
                .map_err(quantity_err)?
                .filter(|m| *m > 0 || which == "requests");
            let amount = match (amount, which) {
                (Some(m), _) => m,
                (None, "limits") => alloc.cpu_millis,
                (None, _) => 0,
            };
            let divisor = divisor
                .map(|d| quantity::parse_millis(&d))
                .transpose()
                .map_err(quantity_err)?
                .filter(|d| *d > 0)
                .unwrap_or(1000);
            Ok(amount.div_ceil(divisor).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let amount = set
                .map(|s| quantity::parse_units(&s))
                .transpose()
                .map_err(quantity_err)?
                .filter(|b| *b > 0 || which == "requests");
            let fallback = if resource == "memory" {
                alloc.memory_bytes
            } else {
                alloc.ephemeral_storage_bytes
            };
            let amount = match (amount, which) {
                (Some(b), _) => b,
                (None, "limits") => fallback,
                (None, _) => 0,
            };
            let divisor = divisor
                .map(|d| quantity::parse_units(&d))
                .transpose()
                .map_err(quantity_err)?
                .filter(|d| *d > 0)
                .unwrap_or(1);
            Ok(amount.div_ceil(divisor).to_string())
        }
        _ => Err(format!("unsupported container resource : {}", sel.resource)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(resource: &str, divisor: Option<&str>) -> ResourceFieldSelector {
        ResourceFieldSelector {
            container_name: None,
            resource: resource.into(),
            divisor: divisor.map(|d| json!(d)),
        }
    }

    fn container(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let mut c = Container {
            name: "c".into(),
            ..Default::default()
        };
        for (k, v) in limits {
            c.resources.limits.insert(k.to_string(), json!(v));
        }
        for (k, v) in requests {
            c.resources.requests.insert(k.to_string(), json!(v));
        }
        c
    }

    const NODE: Allocatable = Allocatable {
        cpu_millis: 2000,
        memory_bytes: 3 << 30,
        ephemeral_storage_bytes: 9_000_000_000,
    };

    #[test]
    fn cpu_rounds_up_to_whole_divisor_units() {
        let c = container(&[("cpu", "250m")], &[("cpu", "100m")]);
        let v = |r, d| value(&sel(r, d), &c, &[], &NODE).unwrap();
        assert_eq!(v("limits.cpu", None), "1");
        assert_eq!(v("limits.cpu", Some("1m")), "250");
        assert_eq!(v("requests.cpu", Some("1m")), "100");
        assert_eq!(v("requests.cpu", None), "1");
        let c = container(&[("cpu", "1500m")], &[]);
        assert_eq!(
            value(&sel("limits.cpu", None), &c, &[], &NODE).unwrap(),
            "2"
        );
    }

    #[test]
    fn memory_and_storage_with_divisors() {
        let c = container(&[("memory", "64Mi"), ("ephemeral-storage", "1G")], &[]);
        let v = |r, d| value(&sel(r, d), &c, &[], &NODE).unwrap();
        assert_eq!(v("limits.memory", None), (64u64 << 20).to_string());
        assert_eq!(v("limits.memory", Some("1Mi")), "64");
        assert_eq!(v("limits.memory", Some("1M")), "68"); // 67.1 rounded up
        assert_eq!(v("limits.ephemeral-storage", Some("1Mi")), "954");
        assert_eq!(
            v("requests.memory", None),
            (64u64 << 20).to_string(),
            "defaulted from the limit"
        );
        let c = container(&[], &[("memory", "1Mi")]);
        assert_eq!(
            value(&sel("requests.memory", None), &c, &[], &NODE).unwrap(),
            "1048576"
        );
        assert_eq!(
            value(&sel("requests.cpu", None), &c, &[], &NODE).unwrap(),
            "0"
        );
    }

    #[test]
    fn unset_limits_are_node_allocatable() {
        let c = container(&[], &[]);
        let v = |r, d| value(&sel(r, d), &c, &[], &NODE).unwrap();
        assert_eq!(v("limits.cpu", None), "2");
        assert_eq!(v("limits.cpu", Some("1m")), "2000");
        assert_eq!(v("limits.memory", Some("1Gi")), "3");
        assert_eq!(v("limits.ephemeral-storage", Some("1G")), "9");
        let odd = Allocatable {
            cpu_millis: 1500,
            ..NODE
        };
        assert_eq!(value(&sel("limits.cpu", None), &c, &[], &odd).unwrap(), "2");
    }

    #[test]
    fn other_containers_and_bad_input() {
        let me = container(&[], &[]);
        let mut other = container(&[("memory", "32Mi")], &[]);
        other.name = "side".into();
        let mut s = sel("limits.memory", Some("1Mi"));
        s.container_name = Some("side".into());
        assert_eq!(
            value(&s, &me, std::slice::from_ref(&other), &NODE).unwrap(),
            "32"
        );
        s.container_name = Some("ghost".into());
        assert!(value(&s, &me, &[], &NODE).unwrap_err().contains("ghost"));
        for bad in ["limits.gpu", "cpu", "status.cpu", "requests.hugepages-2Mi"] {
            let e = value(&sel(bad, None), &me, &[], &NODE).unwrap_err();
            assert!(e.contains("unsupported container resource"), "{}", e);
        }
        let e = value(&sel("limits.cpu", Some("lots")), &me, &[], &NODE).unwrap_err();
        assert!(e.contains("lots"), "{}", e);
    }
}

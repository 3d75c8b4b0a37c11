//! `tinylet ps`: the pods this node runs, read from the agent's state under --root-dir.

use crate::kube::types::PodStatus;
use crate::kubelet::{status, store};
use serde_json::{json, Value};
use std::path::Path;

/// The v1 PodList the kubelet's /pods endpoint would return.
pub fn pod_list(root: &Path) -> Value {
    let items: Vec<Value> = store::list_pods(root)
        .into_iter()
        .map(|p| {
            let mut obj = std::sync::Arc::unwrap_or_clone(p.record.object);
            if let Some(st) = p.status {
                obj["status"] = serde_json::to_value(st).unwrap_or(Value::Null);
            }
            obj
        })
        .collect();
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

fn is_init(st: &PodStatus, name: &str) -> bool {
    st.init_container_statuses.iter().any(|c| c.name == name)
}

pub fn table(root: &Path, now_secs: u64) -> String {
    let mut rows = vec![["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        .map(String::from)
        .to_vec()];
    for p in store::list_pods(root) {
        let meta = &p.record.object["metadata"];
        let st: PodStatus = p.status.unwrap_or_default();
        // As kubectl counts: app containers and sidecars.
        let sidecars = status::sidecar_names(&p.record.object);
        let total = p.record.object["spec"]["containers"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0)
            + sidecars.len();
        let ready = st
            .container_statuses
            .iter()
            .chain(&st.init_container_statuses)
            .filter(|c| c.ready && (sidecars.contains(&c.name) || !is_init(&st, &c.name)))
            .count();
        let restarts: u32 = st
            .container_statuses
            .iter()
            .chain(&st.init_container_statuses)
            .map(|c| c.restart_count)
            .sum();
        let age = st
            .start_time
            .as_deref()
            .and_then(crate::clock::parse_rfc3339)
            .map(|t| human_age(now_secs.saturating_sub(t.as_secs())))
            .unwrap_or_else(|| "<unknown>".into());
        rows.push(vec![
            meta["namespace"].as_str().unwrap_or("").to_string(),
            meta["name"].as_str().unwrap_or("").to_string(),
            format!("{}/{}", ready, total),
            if st.phase.is_empty() {
                "Pending".into()
            } else {
                status::display_reason(&st, &sidecars)
            },
            restarts.to_string(),
            age,
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:width$}", c, width = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    let errors: Vec<String> = crate::fsutil::read_json(&root.join("manifest-errors.json"))
        .ok()
        .flatten()
        .unwrap_or_default();
    if !errors.is_empty() {
        out.push_str("\nmanifests not running:\n");
        for e in errors {
            out.push_str(&format!("  {}\n", e));
        }
    }
    out
}

/// kubectl's age format: 45s, 3m12s, 5h, 2d.
fn human_age(s: u64) -> String {
    match s {
        0..=119 => format!("{}s", s),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10799 => format!("{}m", s / 60),
        10800..=172799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages() {
        assert_eq!(super::human_age(5), "5s");
        assert_eq!(super::human_age(192), "3m12s");
        assert_eq!(super::human_age(7200), "120m");
        assert_eq!(super::human_age(20000), "5h");
        assert_eq!(super::human_age(200000), "2d");
    }
}

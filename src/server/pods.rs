//! `GET /pods`: the v1 PodList of the pods this node runs, from the agent's records on disk
//! (what `tinylet ps -o json` prints). The records hold the pod objects as the API server or the
//! manifest gave them: secret and configMap *values* are never in them (they live in the
//! volumes and in `env-sources.json`, which nothing here reads).

use std::path::Path;

pub fn pod_list_json(root: &Path) -> Vec<u8> {
    serde_json::to_vec(&crate::cli::ps::pod_list(root)).unwrap_or_default()
}

//! Image garbage collection on the node (the kubelet's image GC manager): which images the pods
//! under a root dir use, and the thread that removes the others when the disk fills up.
//! `tinylet image prune` uses `images_in_use` too, so the CLI and the daemon agree on what a
//! pod uses. The store does the choosing and removing (image/gc.rs).

use super::backoff::go_duration;
use super::store::{self, ContainerRecord};
use super::Context;
use crate::fsutil;
use crate::image::{GcPolicy, GcReport, ImageStore};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every image reference a pod under `root` uses, in the forms the store resolves:
///  - the images each pod's spec names, so a container that is waiting for its first start, in
///    back-off or finished keeps its image (its pod may start it again);
///  - the name and repo digest in each container record, so a container keeps the very image it
///    runs even after a pull re-pointed the name it was started by.
///
/// Pod directories without pod.json count too: a new pod's first containers start before its
/// pod.json is saved. A record that cannot be read is an error rather than a gap, since GC must
/// never remove an image a pod may use; the caller skips collecting.
pub fn images_in_use(root: &Path) -> io::Result<HashSet<String>> {
    let mut refs = HashSet::new();
    let pods = store::pods_dir(root);
    for dir in list_dir(&pods)? {
        if !dir.is_dir() {
            continue;
        }
        if let Some(pod) = store::load_pod(&dir)? {
            spec_images(&pod.object, &mut refs);
        }
        for file in list_dir(&dir.join("containers"))? {
            // Skips the temp files of atomic writes (".<name>.json.tmp<pid>").
            let is_record = file
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'));
            if !is_record {
                continue;
            }
            if let Some(rec) = fsutil::read_json::<ContainerRecord>(&file)? {
                refs.extend(
                    [rec.image, rec.image_id]
                        .into_iter()
                        .filter(|r| !r.is_empty()),
                );
            }
        }
    }
    Ok(refs)
}

/// The entries of `dir`; none if it does not exist (a pod being removed right now).
fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {}", dir.display(), e));
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(context))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(context(e)),
    }
}

/// Read from the stored object rather than a typed spec, so that a field the typed spec does not
/// know (initContainers, ephemeralContainers) still keeps its image.
fn spec_images(pod: &serde_json::Value, refs: &mut HashSet<String>) {
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            if let Some(image) = c["image"].as_str().filter(|i| !i.is_empty()) {
                refs.insert(image.to_string());
            }
        }
    }
}

/// How the daemon runs image GC (`--image-gc-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub period: Duration,
    pub policy: GcPolicy,
}

/// Starts the GC thread: one pass every `period`, the first one period after start-up, when the
/// pod workers have had time to record what they run.
pub fn start(ctx: Arc<Context>, root: PathBuf, settings: Settings) -> Result<(), String> {
    let p = settings.policy;
    if p.disabled() {
        log::info!("image GC disabled (--image-gc-high-threshold=100)");
        return Ok(());
    }
    log::info!(
        "image GC: every {}, from {}% disk used down to {}%, sparing images younger than {}",
        go_duration(settings.period.as_secs_f64()),
        p.high_pct,
        p.low_pct,
        go_duration(p.min_age.as_secs_f64())
    );
    std::thread::Builder::new()
        .name("image-gc".into())
        .spawn(move || loop {
            std::thread::sleep(settings.period);
            run_once(&ctx.images.store, &root, &settings.policy);
        })
        .map(drop)
        .map_err(|e| format!("starting the image GC thread: {}", e))
}

/// One GC pass; failures are logged and the next pass tries again.
pub fn run_once(store: &ImageStore, root: &Path, policy: &GcPolicy) {
    let in_use = match images_in_use(root) {
        Ok(refs) => refs,
        Err(e) => {
            log::error!(
                "image GC: skipped: cannot tell which images the pods use: {}",
                e
            );
            return;
        }
    };
    match store.collect(&in_use, policy, &mut || store.disk_usage()) {
        Ok(report) => log_report(&report, policy),
        Err(e) => log::error!("image GC: {}", e.with_causes()),
    }
}

fn log_report(r: &GcReport, p: &GcPolicy) {
    let before = r.before.used_pct();
    if !r.triggered {
        log::debug!(
            "image GC: disk {}% used, below the {}% high threshold",
            before,
            p.high_pct
        );
        return;
    }
    for removed in &r.removed {
        log::info!(
            "image GC: disk {}% used >= {}%: removed image {} ({}, {} freed), now {}%",
            before,
            p.high_pct,
            removed.label(),
            short_id(&removed.id),
            mib(removed.freed),
            removed.usage_after.unwrap_or(r.after).used_pct()
        );
    }
    let after = r.after.used_pct();
    if after <= u64::from(p.low_pct) || r.freed >= r.before.bytes_to_free(p.low_pct) {
        return;
    }
    let why = format!(
        "the remaining images are in use or younger than {}",
        go_duration(p.min_age.as_secs_f64())
    );
    if r.removed.is_empty() {
        log::warn!(
            "image GC: disk {}% used >= {}%, but no image may be removed: {}",
            before,
            p.high_pct,
            why
        );
    } else {
        log::warn!(
            "image GC: disk still {}% used after removing {} image(s) ({} freed), above the {}% \
             low threshold: {}",
            after,
            r.removed.len(),
            mib(r.freed),
            p.low_pct,
            why
        );
    }
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::store::{PodRecord, VERSION};
    use serde_json::json;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tinylet-imagegc-{}-{}", tag, std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn pod(root: &Path, uid: &str, images: &[&str]) -> PathBuf {
        let dir = store::pods_dir(root).join(uid);
        fs::create_dir_all(&dir).unwrap();
        let containers: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect();
        let rec = PodRecord {
            version: VERSION,
            object: json!({"metadata": {"name": uid}, "spec": {"containers": containers}}).into(),
            source: PathBuf::from("/m.yaml"),
            start_time: None,
            initialized: false,
            evicted: None,
        };
        store::save_pod(&dir, &rec).unwrap();
        dir
    }

    fn container(dir: &Path, name: &str, image: &str, image_id: &str) {
        let rec = ContainerRecord {
            version: VERSION,
            name: name.into(),
            image: image.into(),
            image_id: image_id.into(),
            ..Default::default()
        };
        store::save_container(dir, &rec).unwrap();
    }

    #[test]
    fn in_use_covers_specs_records_and_pods_without_pod_json() {
        let root = scratch("inuse");
        assert!(images_in_use(&root).unwrap().is_empty(), "no pods dir yet");
        // A pod whose container never started (pulling, back-off): its spec keeps the image.
        pod(&root, "waiting", &["busybox"]);
        // A running container whose name was re-pointed since: its record keeps the old image.
        let running = pod(&root, "running", &["app:1"]);
        container(
            &running,
            "c0",
            "docker.io/library/app:1",
            "docker.io/library/app@sha256:0123",
        );
        // A new pod: containers started, pod.json not saved yet.
        let new = store::pods_dir(&root).join("new");
        container(&new, "c0", "docker.io/library/new:1", "");
        fs::write(new.join("containers/.c1.json.tmp99"), b"{half").unwrap();
        let refs = images_in_use(&root).unwrap();
        let mut refs: Vec<_> = refs.into_iter().collect();
        refs.sort();
        assert_eq!(
            refs,
            [
                "app:1",
                "busybox",
                "docker.io/library/app:1",
                "docker.io/library/app@sha256:0123",
                "docker.io/library/new:1",
            ]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_unreadable_record_stops_collection_instead_of_guessing() {
        let root = scratch("corrupt");
        let dir = pod(&root, "p", &["busybox"]);
        fs::create_dir_all(dir.join("containers")).unwrap();
        fs::write(dir.join("containers/c0.json"), b"{not json").unwrap();
        let err = images_in_use(&root).unwrap_err();
        assert!(err.to_string().contains("c0.json"), "{}", err);
        fs::remove_dir_all(&root).unwrap();
    }
}

//! Images: a content-addressed store of blobs under `<root-dir>/images`, a name -> manifest index,
//! and one read-only unpacked rootfs ("snapshot") per image that containers overlay.
//!
//! Layout on disk (all writes atomic: temp file + fsync + rename):
//!   images/blobs/sha256/<hex>        manifests, configs, layers (verified against their digest)
//!   images/index.json                 { "version": 1, "images": { "<normalized name>": {manifest, config, layers, size,
//!                                       added, lastUsed} },
//!                                       "dangling": [ {manifest, config, layers, size} ] }
//!   images/snapshots/<config hex>/    unpacked rootfs, layers applied in order with whiteouts
//!   images/tmp/                       blobs, snapshots and archive contents being written; emptied by every writer
//!   images/lock                       flock'd exclusively by writers (import, pull, remove) for their whole run
//!
//! Concurrency: readers (`resolve`, `list`) take no lock. They only ever see complete state:
//! index.json is replaced by rename, a snapshot appears by renaming a fully unpacked temp dir, a
//! blob by renaming a verified temp file. Writers serialize on `images/lock`; holding it across
//! the whole import is what lets the end-of-run sweep delete unreferenced blobs without racing a
//! concurrent import that has written blobs but not yet recorded them.
//!
//! Names re-pointed by an import leave the old image "dangling" (kept in index.json's `dangling`
//! list, still on disk) rather than deleting a rootfs a running container may be using; `remove`
//! by image id or digest reclaims it.
//!
//! Garbage collection (gc.rs): entries record when they were added and last used; `collect` is
//! the kubelet's threshold-driven LRU pass, `prune` removes everything no pod uses. Both take
//! the set of references in use from the caller (the kubelet reads its pod records).
//!
//! Public surface used by the rest of tinylet (keep it stable):
//!   ImageStore::open(root_dir) / import(path, name) / pull(reference, opts, progress)
//!   / resolve(reference) / list() / remove(reference)
//!   / mark_used(reference) / prune(in_use) / collect(in_use, policy, usage) / disk_usage()
//!   normalize_reference(str), PullOptions, RegistryAuth, Platform, PullProgress

mod blobs;
mod commit;
mod digest;
mod error;
mod files;
mod gc;
mod import;
mod index;
mod oci;
mod platform;
mod reference;
mod registry;
mod securejoin;
mod source;
mod store;
mod unpack;
mod whiteout;

#[cfg(test)]
mod testutil;

/// Entry points for the fuzz targets (see src/fuzzing.rs); not in the binary.
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;

use std::path::PathBuf;

pub use error::ImageError;
pub use gc::{GcPolicy, GcReport};
pub use platform::Platform;
pub use reference::normalize_reference;
pub use registry::{PullOptions, PullProgress, RegistryAuth};
pub use store::ImageStore;
pub use unpack::{
    DeviceNode, Limits, UnpackError, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_UNPACKED_BYTES,
};

/// Beside a snapshot `<snapshots>/<id>`: `<id>.devices.json`, its layers' device nodes.
const DEVICES_SUFFIX: &str = ".devices.json";

fn devices_file(snapshot: &std::path::Path) -> std::path::PathBuf {
    let mut name = snapshot.as_os_str().to_os_string();
    name.push(DEVICES_SUFFIX);
    name.into()
}

/// An image as the runtime needs it: where its rootfs is and how to start it.
#[derive(Debug, Clone)]
pub struct Image {
    /// Normalized name, e.g. "docker.io/library/busybox:1.36".
    pub name: String,
    /// "sha256:<config digest hex>", the image id.
    pub id: String,
    /// "docker.io/library/busybox@sha256:<manifest digest hex>".
    pub repo_digest: String,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    /// The read-only snapshot directory.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

impl Image {
    /// The device nodes and fifos the image's layers contain (never created in the snapshot;
    /// privileged containers get them). Unreadable lists are logged and treated as empty.
    pub fn device_nodes(&self) -> Vec<DeviceNode> {
        let file = devices_file(&self.rootfs);
        match crate::fsutil::read_json::<Vec<DeviceNode>>(&file) {
            Ok(d) => d.unwrap_or_default(),
            Err(e) => {
                log::warn!("image {}: {}", self.name, e);
                Vec::new()
            }
        }
    }
}

/// The parts of the image config that decide how a container starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

//! What import and pull share once an image's blobs are verified in the store: the writer
//! session (shared store lock, tmp cleanup and sweep when alone), unpacking the snapshot, and recording names in
//! the index — in that order, so a name never points at an image that is not complete on disk.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;

use super::files::{unique_name, TempPath};
use super::index::{self, Entry, IndexLock, SharedLock, WriteLock};
use super::oci::{self, ConfigFile, Manifest};
use super::unpack::{ExpectedLayer, Unpacker};
use super::{Image, ImageError, ImageStore};

/// An image whose manifest, config and layers are all in the blob store.
pub(crate) struct Complete<'a> {
    /// Normalized names to record it under.
    pub names: Vec<String>,
    pub manifest_digest: String,
    /// The index (manifest list) the manifest was selected from, when pulled through one.
    pub index_digest: Option<String>,
    pub manifest: &'a Manifest,
}

/// Runs a writer that adds to the store (a pull, an import). Writers share the store lock, so
/// several run side by side; content is only ever removed under the exclusive lock, which waits
/// for them. tmp/ is emptied, and what a failed or replaced run left unreferenced is swept,
/// whenever a writer finds itself alone (at its start or its end).
pub(crate) fn writer_session<T>(
    store: &ImageStore,
    what: &dyn std::fmt::Display,
    run: impl FnOnce() -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    if let Some(_alone) = WriteLock::try_acquire(&store.paths.lock)? {
        let _index = IndexLock::acquire(&store.paths.index_lock)?;
        store.clear_tmp()?;
    }
    let shared = SharedLock::acquire(&store.paths.lock)?;
    let result = run();
    drop(shared);
    if let Some(_alone) = WriteLock::try_acquire(&store.paths.lock)? {
        let swept = IndexLock::acquire(&store.paths.index_lock)
            .and_then(|_index| index::load(&store.paths.index).and_then(|i| store.sweep(&i)));
        if let Err(e) = swept {
            log::warn!("cleaning up after the {what}: {e}");
        }
    }
    result
}

/// Records the images under their names (re-pointed names leave the old image dangling) and
/// returns one `Image` per name. Snapshots must already exist (`ensure_snapshot`).
pub(crate) fn record(store: &ImageStore, images: &[Complete]) -> Result<Vec<Image>, ImageError> {
    let _index_lock = IndexLock::acquire(&store.paths.index_lock)?;
    let mut index = index::load(&store.paths.index)?;
    let now = crate::clock::now_unix().as_secs();
    let mut replaced = Vec::new();
    let mut named = Vec::new();
    for c in images {
        let (added, last_used) = index.usage_of(&c.manifest_digest);
        let entry = Entry {
            manifest: c.manifest_digest.clone(),
            config: c.manifest.config.digest.clone(),
            layers: c.manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            size: c.manifest.layers.iter().map(|l| l.size).sum(),
            index: c.index_digest.clone(),
            added: added.or(Some(now)),
            last_used,
        };
        index.dangling.retain(|d| d.manifest != entry.manifest);
        for n in &c.names {
            if let Some(old) = index.images.insert(n.clone(), entry.clone()) {
                if old != entry {
                    replaced.push(old);
                }
            }
            named.push((n.clone(), entry.clone()));
        }
    }
    for old in replaced {
        if !index.is_named(&old.manifest) && !index.dangling.contains(&old) {
            log::info!(
                "image {} lost its last name; kept as dangling until removed by id",
                old.config
            );
            index.dangling.push(old);
        }
    }
    index::save(&store.paths.index, &store.paths.tmp, &index)?;
    // What a re-pointed name left unreferenced is swept by `writer_session` once no other writer
    // runs (a sweep now could delete a concurrent writer's verified, not yet recorded blobs).
    named.iter().map(|(n, e)| store.image(n, e)).collect()
}

/// Unpacks the image's snapshot unless it already exists (snapshots are keyed by config digest,
/// so re-importing or re-pulling an image is free).
pub(crate) fn ensure_snapshot(
    store: &ImageStore,
    name: &str,
    manifest: &Manifest,
) -> Result<(), ImageError> {
    let config_digest = &manifest.config.digest;
    let what = format!("config {config_digest} of {name}");
    let config: ConfigFile =
        oci::parse_json(&store.blobs.read_small(config_digest, &what)?, &what)?;
    let layers = &manifest.layers;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::InvalidImage {
            image: name.to_string(),
            reason: format!(
                "the config lists {} diff_ids for {} layers",
                diff_ids.len(),
                layers.len()
            ),
        });
    }
    let want_arch = oci::go_arch(std::env::consts::ARCH);
    if !config.architecture.is_empty() && config.architecture != want_arch {
        log::warn!(
            "image {name} is built for {}, this node is {want_arch}",
            config.architecture
        );
    }
    let dest = store.snapshot_path(config_digest)?;
    if dest.is_dir() {
        return Ok(());
    }
    let tmp = TempPath::new(store.paths.tmp.join(unique_name("snapshot")));
    fs::DirBuilder::new()
        .mode(0o755)
        .create(tmp.path())
        .map_err(|e| ImageError::io("creating", tmp.path(), e))?;
    let mut unpacker = Unpacker::new(tmp.path(), store.limits);
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let blob = store.blobs.open(&layer.digest)?;
        let expected = ExpectedLayer {
            digest: &layer.digest,
            size: layer.size,
            diff_id: Some(diff_id),
        };
        unpacker
            .apply_layer(blob, &expected)
            .map_err(|source| ImageError::Layer {
                image: name.to_string(),
                index: i,
                count: layers.len(),
                digest: layer.digest.clone(),
                source: Box::new(source),
            })?;
    }
    // Device nodes are never made in the shared snapshot; their list goes beside it for
    // privileged containers (written before the snapshot is published, so it is there as soon
    // as the snapshot is).
    let devices = unpacker.device_nodes();
    let devices_file = super::devices_file(&dest);
    if devices.is_empty() {
        let _ = fs::remove_file(&devices_file);
    } else {
        let data = serde_json::to_vec(&devices)
            .map_err(|e| ImageError::io("encoding", &devices_file, std::io::Error::other(e)))?;
        crate::fsutil::write_atomic(&devices_file, &data, 0o644)
            .map_err(|e| ImageError::io("writing", &devices_file, e))?;
    }
    // Make the files durable before the snapshot becomes visible under its final name.
    let sync =
        File::open(tmp.path()).and_then(|d| nix::unistd::syncfs(&d).map_err(std::io::Error::from));
    sync.map_err(|e| ImageError::io("syncing", tmp.path(), e))?;
    match tmp.commit(&dest) {
        Ok(()) => Ok(()),
        // Another writer unpacked the same image meanwhile (snapshots are keyed by config).
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(ImageError::io("publishing snapshot", &dest, e)),
    }
}

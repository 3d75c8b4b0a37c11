//! `ImageStore`: opening the store, lookups (lock-free) and removal plus the sweep that deletes
//! what no image needs any more. Importing lives in import.rs.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::blobs::Blobs;
use super::files::{disk_bytes, unique_name};
use super::index::{self, Entry, IndexFile, IndexLock, WriteLock};
use super::oci::{self, ConfigFile};
use super::registry::{self, PullOptions, PullProgress, TokenCache};
use super::{digest, import, reference, Image, ImageError, Limits};
use super::{DEFAULT_MAX_ENTRIES, DEFAULT_MAX_UNPACKED_BYTES};

pub(crate) struct Paths {
    pub index: PathBuf,
    pub lock: PathBuf,
    pub index_lock: PathBuf,
    pub tmp: PathBuf,
    pub snapshots: PathBuf,
}

pub struct ImageStore {
    pub(crate) paths: Paths,
    pub(crate) blobs: Blobs,
    pub(crate) limits: Limits,
    /// Registry bearer tokens, reused across pulls until they expire.
    pub(crate) tokens: TokenCache,
}

/// How a reference picks images out of the index.
pub(super) enum Selector {
    /// "sha256:<hex>" (or bare hex): an image id (config digest) or a manifest digest.
    Id(String),
    /// "repo@sha256:<hex>": the manifest digest within that repository.
    Digest { repository: String, digest: String },
    /// A normalized "repo:tag".
    Name(String),
}

impl ImageStore {
    /// Opens (creating if needed) the store at `<root_dir>/images`.
    pub fn open(root_dir: &Path) -> Result<ImageStore, ImageError> {
        let root = root_dir.join("images");
        let blobs_dir = root.join("blobs").join("sha256");
        let paths = Paths {
            index: root.join("index.json"),
            lock: root.join("lock"),
            index_lock: root.join("index.lock"),
            tmp: root.join("tmp"),
            snapshots: root.join("snapshots"),
        };
        for (dir, mode) in [
            (&blobs_dir, 0o755),
            (&paths.snapshots, 0o755),
            (&paths.tmp, 0o700),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| ImageError::io("creating image store directory", dir, e))?;
        }
        let blobs = Blobs::new(blobs_dir, paths.tmp.clone());
        Ok(ImageStore {
            paths,
            blobs,
            limits: Limits {
                max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
                max_entries: DEFAULT_MAX_ENTRIES,
            },
            tokens: TokenCache::default(),
        })
    }

    /// Overrides the per-image unpack limits (decompression-bomb guards).
    pub fn with_limits(mut self, limits: Limits) -> ImageStore {
        self.limits = limits;
        self
    }

    /// Imports an OCI layout directory, an OCI archive or a docker archive (see import.rs).
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        import::import(self, path, name)
    }

    /// Pulls `reference` (any form normalize_reference accepts) from its registry and records it
    /// under its normalized name (see registry/). Idempotent: blobs already in the store are not
    /// fetched again. Pulls (and imports) share the store: several run at once, bounded by the
    /// caller (`--max-parallel-image-pulls`).
    pub fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &mut dyn FnMut(PullProgress),
    ) -> Result<Image, ImageError> {
        registry::pull(self, reference, opts, progress)
    }

    /// Looks up an image by any reference form; Ok(None) when not present.
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let selector = selector(reference)?;
        let index = index::load(&self.paths.index)?;
        let found = index
            .images
            .iter()
            .find(|(name, entry)| matches(&selector, name, entry));
        found
            .map(|(name, entry)| self.image(name, entry))
            .transpose()
    }

    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let index = index::load(&self.paths.index)?;
        index
            .images
            .iter()
            .map(|(name, entry)| self.image(name, entry))
            .collect()
    }

    /// Removes the name(s) the reference matches; an image no name refers to any more loses its
    /// snapshot and the blobs no other image uses.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let selector = selector(reference)?;
        let _lock = WriteLock::acquire(&self.paths.lock)?;
        let _index_lock = IndexLock::acquire(&self.paths.index_lock)?;
        let mut index = index::load(&self.paths.index)?;
        let names: Vec<String> = index
            .images
            .iter()
            .filter(|(n, e)| matches(&selector, n, e))
            .map(|(n, _)| n.clone())
            .collect();
        let dangling_before = index.dangling.len();
        if let Selector::Id(d) = &selector {
            index
                .dangling
                .retain(|e| e.manifest != *d && e.config != *d);
        }
        if names.is_empty() && index.dangling.len() == dangling_before {
            return Err(ImageError::NotFound {
                reference: reference.to_string(),
            });
        }
        for n in &names {
            index.images.remove(n);
            log::info!("removed image name {n}");
        }
        index::save(&self.paths.index, &self.paths.tmp, &index)?;
        self.sweep(&index).map(drop)
    }

    pub(crate) fn image(&self, name: &str, entry: &Entry) -> Result<Image, ImageError> {
        let what = format!("config {} of {name}", entry.config);
        let config: ConfigFile =
            oci::parse_json(&self.blobs.read_small(&entry.config, &what)?, &what)?;
        Ok(Image {
            name: name.to_string(),
            id: entry.config.clone(),
            repo_digest: format!(
                "{}@{}",
                repository_of(name),
                entry.index.as_ref().unwrap_or(&entry.manifest)
            ),
            size: entry.size,
            rootfs: self.snapshot_path(&entry.config)?,
            config: config.config.unwrap_or_default().into(),
        })
    }

    pub(crate) fn snapshot_path(&self, config_digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .paths
            .snapshots
            .join(digest::sha256_hex(config_digest)?))
    }

    /// Deletes blobs and snapshots no image in `index` needs, and everything in tmp/; returns
    /// the disk space the deleted blobs and snapshots took (image GC reports it).
    /// Only called with the store lock held exclusively and the index lock held, after `index`
    /// was saved.
    pub(crate) fn sweep(&self, index: &IndexFile) -> Result<u64, ImageError> {
        let mut freed = 0;
        let keep = index.referenced_blobs();
        for d in self.blobs.list()? {
            if !keep.contains(d.as_str()) {
                log::debug!("removing unreferenced blob {d}");
                freed += disk_bytes(&self.blobs.path(&d)?);
                self.blobs.remove(&d)?;
            }
        }
        let keep: BTreeSet<&str> = index
            .all_entries()
            .filter_map(|e| e.config.strip_prefix("sha256:"))
            .collect();
        let snapshots = &self.paths.snapshots;
        for entry in fs::read_dir(snapshots).map_err(|e| ImageError::io("listing", snapshots, e))? {
            let entry = entry.map_err(|e| ImageError::io("listing", snapshots, e))?;
            let kept = entry.file_name().to_str().is_some_and(|n| {
                keep.contains(n)
                    || n.strip_suffix(super::DEVICES_SUFFIX)
                        .is_some_and(|h| keep.contains(h))
            });
            if kept {
                continue;
            }
            freed += disk_bytes(&entry.path());
            // Move it out of sight first so no reader ever sees a half-deleted rootfs.
            let trash = self.paths.tmp.join(unique_name("trash"));
            fs::rename(entry.path(), &trash)
                .map_err(|e| ImageError::io("removing snapshot", entry.path(), e))?;
            log::debug!("removed snapshot {}", entry.path().display());
        }
        self.clear_tmp()?;
        Ok(freed)
    }

    /// Empties tmp/: leftovers of crashed writers. Only with the store lock held exclusively and
    /// the index lock held (index saves stage their file in tmp/).
    pub(crate) fn clear_tmp(&self) -> Result<(), ImageError> {
        let tmp = &self.paths.tmp;
        for entry in fs::read_dir(tmp).map_err(|e| ImageError::io("listing", tmp, e))? {
            let path = entry.map_err(|e| ImageError::io("listing", tmp, e))?.path();
            let removed = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            removed.map_err(|e| ImageError::io("cleaning temporary", &path, e))?;
        }
        Ok(())
    }
}

pub(super) fn selector(reference: &str) -> Result<Selector, ImageError> {
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if digest::is_sha256_hex(hex) {
        return Ok(Selector::Id(format!("sha256:{hex}")));
    }
    let r = reference::parse(reference)?;
    Ok(match r.digest {
        Some(digest) => Selector::Digest {
            repository: r.repository,
            digest,
        },
        None => Selector::Name(r.to_string()),
    })
}

pub(super) fn matches(selector: &Selector, name: &str, entry: &Entry) -> bool {
    match selector {
        Selector::Id(d) => {
            entry.manifest == *d || entry.config == *d || entry.index.as_ref() == Some(d)
        }
        Selector::Digest { repository, digest } => {
            (entry.manifest == *digest || entry.index.as_ref() == Some(digest))
                && repository_of(name) == *repository
        }
        Selector::Name(n) => name == n,
    }
}

/// Index names are normalized "repo:tag" (or "repo@digest" for images pulled by digest); the
/// tag never contains '/', a registry port does.
fn repository_of(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

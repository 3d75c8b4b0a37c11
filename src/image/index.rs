//! `images/index.json` (names -> images) and the writers' lock `images/lock`.
//! The index is versioned, replaced atomically, and read defensively: its digests become file
//! names, so they are validated on load.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::blobs::read_capped;
use super::{digest, files, ImageError};

pub(crate) const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub version: u32,
    #[serde(default)]
    pub images: BTreeMap<String, Entry>,
    /// Images no name refers to any more, kept until removed by id (see mod.rs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dangling: Vec<Entry>,
}

impl Default for IndexFile {
    fn default() -> Self {
        IndexFile {
            version: VERSION,
            images: BTreeMap::new(),
            dangling: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub manifest: String,
    pub config: String,
    pub layers: Vec<String>,
    pub size: u64,
    /// The multi-platform index the manifest was pulled through: what Docker and containerd
    /// report as the repo digest, and what `repo@<digest>` references name. Optional so that
    /// version-1 files written before pulls existed still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// Unix seconds when the image was first recorded in this store; image GC spares images
    /// younger than its minimum age. Absent in files written before GC existed (read as "old").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<u64>,
    /// Unix seconds when a container last started from it, or image GC last saw it in use
    /// (see gc.rs). Absent when never used; GC then takes it first.
    #[serde(rename = "lastUsed", default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<u64>,
}

/// Entries are equal when they describe the same image: the usage times are bookkeeping about
/// it, and must not make a re-import of the same image look like a re-pointed name.
impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.manifest == other.manifest
            && self.config == other.config
            && self.layers == other.layers
            && self.size == other.size
            && self.index == other.index
    }
}

impl Eq for Entry {}

impl IndexFile {
    /// Every blob digest an image in the index (named or dangling) needs.
    pub(crate) fn referenced_blobs(&self) -> BTreeSet<&str> {
        self.all_entries()
            .flat_map(|e| {
                [e.manifest.as_str(), e.config.as_str()]
                    .into_iter()
                    .chain(e.index.as_deref())
                    .chain(e.layers.iter().map(String::as_str))
            })
            .collect()
    }

    pub(crate) fn all_entries(&self) -> impl Iterator<Item = &Entry> {
        self.images.values().chain(self.dangling.iter())
    }

    pub(crate) fn is_named(&self, manifest: &str) -> bool {
        self.images.values().any(|e| e.manifest == manifest)
    }

    /// (earliest `added`, latest `last_used`) over the entries of this manifest, so that
    /// recording an image again keeps its history.
    pub(crate) fn usage_of(&self, manifest: &str) -> (Option<u64>, Option<u64>) {
        let same = || self.all_entries().filter(|e| e.manifest == manifest);
        (
            same().filter_map(|e| e.added).min(),
            same().filter_map(|e| e.last_used).max(),
        )
    }
}

pub(crate) fn load(path: &Path) -> Result<IndexFile, ImageError> {
    let bytes = match read_capped(path, "image index") {
        Ok(b) => b,
        Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(IndexFile::default())
        }
        Err(e) => return Err(e),
    };
    let corrupt = |reason: String| ImageError::CorruptIndex {
        path: path.to_path_buf(),
        reason,
    };
    let index: IndexFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if index.version != VERSION {
        return Err(corrupt(format!(
            "version {} (this tinylet reads version {VERSION})",
            index.version
        )));
    }
    for e in index.all_entries() {
        for d in [&e.manifest, &e.config]
            .into_iter()
            .chain(&e.index)
            .chain(&e.layers)
        {
            digest::sha256_hex(d).map_err(|err| corrupt(err.to_string()))?;
        }
    }
    Ok(index)
}

pub(crate) fn save(path: &Path, tmp_dir: &Path, index: &IndexFile) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec_pretty(index).map_err(|source| ImageError::Json {
        what: "the image index".to_string(),
        source,
    })?;
    files::write_atomic(path, tmp_dir, &bytes)
        .map_err(|e| ImageError::io("writing image index", path, e))
}

/// The store lock (`images/lock`), held exclusively by what removes content (rm, prune, GC,
/// the sweep) for its whole run; released on drop (or process exit).
pub(crate) struct WriteLock {
    _flock: Flock<File>,
}

/// The store lock held shared by what only adds content (pulls, imports): any number of them
/// run side by side, and nothing is removed under them.
pub(crate) struct SharedLock {
    _flock: Flock<File>,
}

impl SharedLock {
    pub(crate) fn acquire(path: &Path) -> Result<SharedLock, ImageError> {
        Flock::lock(open_lock_file(path)?, FlockArg::LockShared)
            .map(|flock| SharedLock { _flock: flock })
            .map_err(|(_, errno)| ImageError::io("locking", path, io::Error::from(errno)))
    }
}

/// `images/index.lock`: held for each read-modify-write of index.json (and while tmp/ is
/// emptied), always briefly.
pub(crate) struct IndexLock {
    _flock: Flock<File>,
}

impl IndexLock {
    pub(crate) fn acquire(path: &Path) -> Result<IndexLock, ImageError> {
        Flock::lock(open_lock_file(path)?, FlockArg::LockExclusive)
            .map(|flock| IndexLock { _flock: flock })
            .map_err(|(_, errno)| ImageError::io("locking", path, io::Error::from(errno)))
    }

    /// The lock if nobody holds it; Ok(None) if somebody does.
    pub(crate) fn try_acquire(path: &Path) -> Result<Option<IndexLock>, ImageError> {
        match Flock::lock(open_lock_file(path)?, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(Some(IndexLock { _flock: flock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(ImageError::io("locking", path, io::Error::from(errno))),
        }
    }
}

impl WriteLock {
    pub(crate) fn acquire(path: &Path) -> Result<WriteLock, ImageError> {
        Flock::lock(open_lock_file(path)?, FlockArg::LockExclusive)
            .map(|flock| WriteLock { _flock: flock })
            .map_err(|(_, errno)| ImageError::io("locking", path, io::Error::from(errno)))
    }

    /// The lock if no other writer holds it; Ok(None) if one does.
    pub(crate) fn try_acquire(path: &Path) -> Result<Option<WriteLock>, ImageError> {
        match Flock::lock(open_lock_file(path)?, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(Some(WriteLock { _flock: flock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(ImageError::io("locking", path, io::Error::from(errno))),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| ImageError::io("opening lock file", path, e))
}

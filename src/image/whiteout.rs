//! OCI whiteouts: `.wh.<name>` hides `<name>` from lower layers, `.wh..wh..opq` hides everything
//! lower layers put in its directory. Entries the current layer wrote are spared, whatever order
//! the tar stream lists them in (the opaque marker may come after them). The markers themselves
//! are never written.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::securejoin::secure_join;
use super::unpack::{io_err, join_err, unsafe_path, UnpackError};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The root-relative (resolved) paths the current layer has written.
#[derive(Default)]
pub(crate) struct Written(BTreeSet<PathBuf>);

impl Written {
    pub(crate) fn insert(&mut self, rel: PathBuf) {
        self.0.insert(rel);
    }

    fn contains(&self, rel: &Path) -> bool {
        self.0.contains(rel)
    }

    fn anything_inside(&self, rel: &Path) -> bool {
        // PathBuf orders component-wise, so descendants of `rel` directly follow it.
        self.0
            .range::<Path, _>((Bound::Excluded(rel), Bound::Unbounded))
            .next()
            .is_some_and(|p| p.starts_with(rel))
    }
}

pub(crate) fn is_whiteout(base: &OsStr) -> bool {
    base.as_bytes().starts_with(WHITEOUT_PREFIX)
}

/// Applies the whiteout entry `name` (directory components `dir`, file name `base`).
pub(crate) fn apply(
    root: &Path,
    name: &str,
    dir: &[OsString],
    base: &OsStr,
    written: &Written,
) -> Result<(), UnpackError> {
    let base = base.as_bytes();
    let dir = secure_join(root, dir).map_err(|e| join_err(name, e))?;
    let abs = root.join(&dir);
    if !fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir()) {
        return Ok(()); // nothing below to hide
    }
    if base == OPAQUE_MARKER {
        for child in fs::read_dir(&abs).map_err(|e| io_err(name, "listing", &abs, e))? {
            let child = child.map_err(|e| io_err(name, "listing", &abs, e))?;
            remove_lower(root, name, &dir.join(child.file_name()), written)?;
        }
        return Ok(());
    }
    if base.starts_with(WHITEOUT_META_PREFIX) {
        log::debug!("ignoring aufs metadata entry {name:?}");
        return Ok(());
    }
    let hidden = &base[WHITEOUT_PREFIX.len()..];
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err(unsafe_path(name, "whiteout names no entry"));
    }
    remove_lower(root, name, &dir.join(OsStr::from_bytes(hidden)), written)
}

/// Removes what lower layers put at `rel` (never following it), sparing what this layer wrote.
fn remove_lower(root: &Path, name: &str, rel: &Path, written: &Written) -> Result<(), UnpackError> {
    let path = root.join(rel);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(name, "inspecting", &path, e)),
    };
    let own = written.contains(rel);
    if meta.is_dir() && (own || written.anything_inside(rel)) {
        for child in fs::read_dir(&path).map_err(|e| io_err(name, "listing", &path, e))? {
            let child = child.map_err(|e| io_err(name, "listing", &path, e))?;
            remove_lower(root, name, &rel.join(child.file_name()), written)?;
        }
        return Ok(());
    }
    if own {
        return Ok(());
    }
    let removed = if meta.is_dir() {
        fs::remove_dir_all(&path)
    } else {
        fs::remove_file(&path)
    };
    removed.map_err(|e| io_err(name, "applying whiteout to", &path, e))
}

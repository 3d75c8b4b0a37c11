//! Small filesystem helpers for the store: unique temp names, fsync'd atomic writes and a guard
//! that removes a temp file or directory unless it was committed.
//! (Kept local until the crate-wide fsutil.rs lands; then these should move there.)

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other process or thread will pick: pid + time + per-process counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temp file in `tmp_dir` (same filesystem), fsync,
/// rename, fsync of the target directory.
pub(crate) fn write_atomic(path: &Path, tmp_dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = TempPath::new(tmp_dir.join(unique_name("write")));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp.path())?;
    f.write_all(bytes)?;
    f.sync_all()?;
    tmp.commit(path)
}

/// The disk space a file or directory tree takes (allocated blocks, hard links counted once).
/// Best effort: what cannot be read counts as nothing; it only feeds reports.
pub(crate) fn disk_bytes(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        // st_blocks counts 512-byte units whatever the filesystem's block size.
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Removes its path (file or directory tree) on drop unless committed by renaming it into place.
pub(crate) struct TempPath(Option<PathBuf>);

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> Self {
        TempPath(Some(path))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames into `dest` and fsyncs `dest`'s directory so the rename survives a crash.
    pub(crate) fn commit(mut self, dest: &Path) -> io::Result<()> {
        if let Some(path) = self.0.take() {
            if let Err(e) = fs::rename(&path, dest) {
                self.0 = Some(path);
                return Err(e);
            }
            if let Some(dir) = dest.parent() {
                fsync_dir(dir)?;
            }
        }
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let removed = match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(_) => Ok(()),
            };
            if let Err(e) = removed {
                log::warn!("could not remove temporary {}: {e}", path.display());
            }
        }
    }
}

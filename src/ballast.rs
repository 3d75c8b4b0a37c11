//! Disk ballast: a file of `SIZE` bytes the agent keeps under its root dir and gives up when the
//! disk is full, so that the records that must not be lost can still be written: pod and
//! container records, pod statuses, manifest errors, a monitor's exit record. Without it a full
//! disk would hide a new pod from `tinylet ps` (no record) and turn an exit code into
//! `ContainerStatusUnknown`.
//!
//! Only the write that hit ENOSPC spends it: the file is emptied, the write retried, and the
//! ballast filled again with whatever the write left. While it is short, every later record write
//! of the agent tops it up, so it is whole again soon after space returns. A monitor (another
//! process) may spend it too; it never refills it, the agent's next record write does.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Enough for every record of a few dozen pods to be rewritten several times over.
pub const SIZE: u64 = 1 << 20;
const FILE_NAME: &str = "ballast";

struct Ballast {
    path: PathBuf,
    /// The agent's: tops the ballast up after its writes. A monitor's only spends it.
    refills: bool,
    /// Shorter than SIZE when last looked at (for the "whole again" log line).
    short: bool,
}

static BALLAST: Mutex<Option<Ballast>> = Mutex::new(None);

/// The ballast of the root dir `root`.
pub fn path(root: &Path) -> PathBuf {
    root.join(FILE_NAME)
}

/// The ballast of the root dir that holds the container bundle `bundle`
/// (`<root>/containers/<id>`), for a monitor.
pub fn path_for_bundle(bundle: &Path) -> Option<PathBuf> {
    Some(path(bundle.parent()?.parent()?))
}

/// The agent's start-up: creates the ballast at `path` (or tops it up) and spends it on full
/// disks from now on. A ballast that cannot be made whole is reported, never fatal.
pub fn install(path: PathBuf) {
    let short = match top_up(&path, true) {
        Ok(size) if size >= SIZE => false,
        Ok(size) => {
            log::warn!(
                "disk ballast {}: only {} of {} bytes free to keep back for pod records",
                path.display(),
                size,
                SIZE
            );
            true
        }
        Err(e) => {
            log::warn!(
                "disk ballast {}: {}; a full disk may keep pod records from being written",
                path.display(),
                e
            );
            true
        }
    };
    if let Ok(mut b) = BALLAST.lock() {
        *b = Some(Ballast {
            path,
            refills: true,
            short,
        });
    }
}

/// A monitor's start: spends the agent's ballast at `path` when a write hits a full disk, never
/// creating or refilling it.
pub fn use_existing(path: PathBuf) {
    if let Ok(mut b) = BALLAST.lock() {
        *b = Some(Ballast {
            path,
            refills: false,
            short: true,
        });
    }
}

/// Runs `write`; when it fails because the disk is full, empties the ballast, runs it again and
/// refills the ballast with what is left. `what` names the write in the log.
pub fn write_or_spend<T>(
    what: &dyn std::fmt::Display,
    write: impl Fn() -> io::Result<T>,
) -> io::Result<T> {
    let first = write();
    let Ok(mut guard) = BALLAST.lock() else {
        return first;
    };
    let Some(ballast) = guard.as_mut() else {
        return first;
    };
    match first {
        Err(e) if is_full(&e) => {
            let emptied = File::options()
                .write(true)
                .open(&ballast.path)
                .and_then(|f| f.set_len(0));
            if let Err(spend) = emptied {
                log::error!("{}: {} (no disk ballast to spend: {})", what, e, spend);
                return Err(e);
            }
            log::warn!(
                "{}: {}; spent the disk ballast {} to write it",
                what,
                e,
                ballast.path.display()
            );
            ballast.short = true;
            let second = write();
            refill(ballast);
            second
        }
        Ok(v) => {
            refill_if_short(ballast);
            Ok(v)
        }
        Err(e) => Err(e),
    }
}

/// Tops up the agent's ballast if it is short (called now and then: a node whose pods are
/// steady writes no records).
pub fn maintain() {
    if let Ok(mut guard) = BALLAST.lock() {
        if let Some(ballast) = guard.as_mut() {
            refill_if_short(ballast);
        }
    }
}

fn refill_if_short(ballast: &mut Ballast) {
    // One stat: a monitor may have spent it.
    let size = std::fs::metadata(&ballast.path).map(|m| m.len());
    if size.is_ok_and(|s| s < SIZE) {
        ballast.short = true;
    }
    if ballast.short {
        refill(ballast);
    }
}

/// Tops up an installed ballast as far as the disk allows (a monitor's is left alone).
fn refill(ballast: &mut Ballast) {
    if !ballast.refills {
        return;
    }
    if let Ok(size) = top_up(&ballast.path, false) {
        if size >= SIZE && ballast.short {
            log::info!("disk ballast {} is whole again", ballast.path.display());
            ballast.short = false;
        }
    }
}

/// ENOSPC, or EDQUOT (a quota is a full disk to this user).
fn is_full(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(e.raw_os_error(), Some(c) if c == Errno::ENOSPC as i32 || c == Errno::EDQUOT as i32)
}

/// Grows the file at `path` towards SIZE, in 64 KiB steps and then in pages, until the disk is
/// full (so that what it leaves free is less than a page); returns its size. `create`: make it
/// if missing (the agent); otherwise a missing file stays missing.
fn top_up(path: &Path, create: bool) -> io::Result<u64> {
    let file = OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)?;
    let mut size = file.metadata()?.len();
    for step in [64 << 10, 4 << 10] {
        while size < SIZE {
            let len = step.min(SIZE - size);
            match allocate(&file, size, len) {
                Ok(()) => size += len,
                Err(e) if is_full(&e) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(size)
}

/// Reserves real blocks for `[offset, offset + len)`: fallocate, or zeros where the file
/// system has no fallocate.
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (o, l) = (offset as i64, len as i64);
    match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), o, l) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            file.write_all_at(&vec![0u8; len as usize], offset)?;
            file.sync_data()
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ballast_is_made_whole_and_a_monitor_never_makes_one() {
        let dir = std::env::temp_dir().join(format!("tinylet-ballast-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = path(&dir);
        assert_eq!(top_up(&p, true).unwrap(), SIZE);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), SIZE);
        // A missing ballast is not made by a monitor.
        let other = dir.join("other");
        assert!(top_up(&other, false).is_err());
        assert!(!other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_full_disk_spends_it() {
        assert!(is_full(&io::Error::from_raw_os_error(28)));
        assert!(!is_full(&io::Error::from_raw_os_error(13)));
        assert!(!is_full(&io::Error::other("x")));
    }
}

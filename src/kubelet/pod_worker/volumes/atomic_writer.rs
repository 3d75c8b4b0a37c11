//! The kubelet's AtomicWriter layout for configMap, secret, downwardAPI and projected volumes:
//!
//! ```text
//! <volume>/..2026_11_27_22_30_56.1f2e3d4c/   the payload, one directory per version
//! <volume>/..data -> ..2026_11_27_22_30_56.1f2e3d4c
//! <volume>/key    -> ..data/key              one symlink per top-level path
//! ```
//!
//! A new version is written beside the old one and `..data` is swapped by a rename, so a reader
//! sees either the whole old payload or the whole new one, never a mix (applications watch
//! `..data` for changes). A payload equal to what is there changes nothing.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a payload: a relative path, its bytes and its mode (`defaultMode` or an item's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Writes `files` into `dir` (which must exist). `fs_group`: files and directories are made
/// group-owned by it with group read (and search on directories, plus setgid), as the kubelet's
/// SetVolumeOwnership does for read-only volumes. Returns whether anything changed.
pub fn write(dir: &Path, files: &[File], fs_group: Option<u32>) -> io::Result<bool> {
    let mut top: BTreeSet<String> = BTreeSet::new();
    for f in files {
        top.insert(first_component(&f.path)?);
    }
    let current = fs::read_link(dir.join(DATA)).ok();
    if let Some(cur) = &current {
        if matches(&dir.join(cur), files, fs_group).unwrap_or(false)
            && top.iter().all(|t| points_to_data(dir, t))
        {
            return Ok(false);
        }
    }
    let version = version_name()?;
    let vdir = dir.join(&version);
    fs::create_dir(&vdir).map_err(|e| ctx(e, "creating", &vdir))?;
    let written = write_payload(&vdir, files, fs_group);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&vdir);
        return Err(e);
    }
    // The swap: a fresh symlink renamed over `..data` (rename(2) replaces it atomically).
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&version, &tmp).map_err(|e| ctx(e, "creating", &tmp))?;
    fs::rename(&tmp, dir.join(DATA)).map_err(|e| ctx(e, "swapping ..data in", dir))?;
    // User-visible paths: `key -> ..data/key` for each first path component.
    for name in &top {
        if points_to_data(dir, name) {
            continue;
        }
        let link = dir.join(name);
        remove_any(&link)?;
        std::os::unix::fs::symlink(Path::new(DATA).join(name), &link)
            .map_err(|e| ctx(e, "creating", &link))?;
    }
    // Paths the new payload no longer has, and older versions.
    for entry in fs::read_dir(dir).map_err(|e| ctx(e, "reading", dir))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let stale = if name.starts_with("..") {
            name != DATA && name != version
        } else {
            !top.contains(&name)
        };
        if stale {
            remove_any(&dir.join(&name))?;
        }
    }
    if let Some(gid) = fs_group {
        own_dir(dir, gid)?;
    }
    Ok(true)
}

/// The files under `..data`, as they were written (for tests and the update check).
fn matches(vdir: &Path, files: &[File], fs_group: Option<u32>) -> io::Result<bool> {
    let mut on_disk = Vec::new();
    list_files(vdir, Path::new(""), &mut on_disk)?;
    if on_disk.len() != files.len() {
        return Ok(false);
    }
    for f in files {
        let p = vdir.join(&f.path);
        let meta = fs::symlink_metadata(&p)?;
        if !meta.is_file() || meta.mode() & 0o7777 != file_mode(f.mode, fs_group) {
            return Ok(false);
        }
        if fs_group.is_some_and(|g| meta.gid() != g) || fs::read(&p)? != f.data {
            return Ok(false);
        }
    }
    Ok(true)
}

fn list_files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn write_payload(vdir: &Path, files: &[File], fs_group: Option<u32>) -> io::Result<()> {
    set_mode(vdir, 0o755)?;
    for f in files {
        let target = vdir.join(&f.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| ctx(e, "creating", parent))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| ctx(e, "creating", &target))?;
        file.write_all(&f.data)
            .map_err(|e| ctx(e, "writing", &target))?;
        if let Some(gid) = fs_group {
            chown_group(&target, gid)?;
        }
        // Set after writing and explicitly: the umask must not change what defaultMode asked.
        set_mode(&target, file_mode(f.mode, fs_group))?;
    }
    if let Some(gid) = fs_group {
        own_dir(vdir, gid)?;
    }
    Ok(())
}

/// A file's mode: as asked, plus group read with an fsGroup (SetVolumeOwnership's read-only mask).
fn file_mode(mode: u32, fs_group: Option<u32>) -> u32 {
    let mode = mode & 0o777;
    if fs_group.is_some() {
        mode | 0o440
    } else {
        mode
    }
}

/// Directories under `dir` (and `dir` itself): group `gid`, group read + search, setgid, as
/// SetVolumeOwnership does; symlinks are re-owned too (lchown), their mode left alone.
fn own_dir(dir: &Path, gid: u32) -> io::Result<()> {
    chown_group(dir, gid)?;
    let mode = fs::metadata(dir)?.mode() & 0o7777;
    set_mode(dir, mode | 0o550 | 0o2000)?;
    for entry in fs::read_dir(dir).map_err(|e| ctx(e, "reading", dir))? {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            own_dir(&path, gid)?;
        } else if ft.is_symlink() {
            chown_group(&path, gid)?;
        }
    }
    Ok(())
}

pub(super) fn chown_group(p: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(p, None, Some(gid)).map_err(|e| ctx(e, "chown", p))
}

pub(super) fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| ctx(e, "chmod", p))
}

fn points_to_data(dir: &Path, name: &str) -> bool {
    fs::read_link(dir.join(name)).is_ok_and(|t| t == Path::new(DATA).join(name))
}

fn remove_any(p: &Path) -> io::Result<()> {
    let r = match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
    };
    r.map_err(|e| ctx(e, "removing", p))
}

/// The first component of a payload path; paths are relative, without `..`, and may not start
/// with `..` (the layout's own names), as the API server's validation and the kubelet require.
fn first_component(path: &str) -> io::Result<String> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid path {:?}", path),
        )
    };
    let p = Path::new(path);
    if path.is_empty() || path.starts_with("..") || !p.is_relative() {
        return Err(bad());
    }
    let mut comps = p.components();
    match comps.next() {
        Some(Component::Normal(c)) if comps.all(|c| matches!(c, Component::Normal(_))) => {
            Ok(c.to_string_lossy().into_owned())
        }
        _ => Err(bad()),
    }
}

/// `..2026_11_27_22_30_56.<random>`, the kubelet's naming (a timestamp, then a unique suffix).
fn version_name() -> io::Result<String> {
    let stamp = crate::clock::rfc3339(crate::clock::now_unix());
    let stamp: String = stamp
        .trim_end_matches('Z')
        .chars()
        .map(|c| if c.is_ascii_digit() { c } else { '_' })
        .collect();
    Ok(format!("..{}.{}", stamp, crate::fsutil::random_hex(4)?))
}

fn ctx(e: io::Error, what: &str, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{} {}: {}", what, p.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tinylet-aw-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn f(path: &str, data: &str, mode: u32) -> File {
        File {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn layout_swap_and_cleanup() {
        let d = tmp("layout");
        let v1 = [f("a", "1", 0o644), f("dir/b", "2", 0o400)];
        assert!(write(&d, &v1, None).unwrap());
        let first = fs::read_link(d.join(DATA)).unwrap();
        assert!(first.to_string_lossy().starts_with("..2"));
        assert_eq!(fs::read_link(d.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(
            fs::read_link(d.join("dir")).unwrap(),
            Path::new("..data/dir")
        );
        assert_eq!(fs::read_to_string(d.join("dir/b")).unwrap(), "2");
        let mode = fs::metadata(d.join("dir/b")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o400);
        // The same payload again: nothing happens.
        assert!(!write(&d, &v1, None).unwrap());
        assert_eq!(fs::read_link(d.join(DATA)).unwrap(), first);
        // A new payload: `..data` moves, `dir` goes, the old version is removed.
        assert!(write(&d, &[f("a", "changed", 0o644), f("c", "3", 0o600)], None).unwrap());
        let second = fs::read_link(d.join(DATA)).unwrap();
        assert_ne!(second, first);
        assert!(!d.join(&first).exists());
        assert!(fs::symlink_metadata(d.join("dir")).is_err());
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "changed");
        let mut names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                second.to_string_lossy().into_owned(),
                "..data".into(),
                "a".into(),
                "c".into()
            ]
        );
        // A mode change alone is a change.
        assert!(write(&d, &[f("a", "changed", 0o600), f("c", "3", 0o600)], None).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_old_flat_layout_is_replaced() {
        let d = tmp("flat");
        fs::write(d.join("a"), "old").unwrap();
        fs::create_dir(d.join("gone")).unwrap();
        fs::write(d.join("gone/x"), "old").unwrap();
        assert!(write(&d, &[f("a", "new", 0o644)], None).unwrap());
        assert!(fs::symlink_metadata(d.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "new");
        assert!(!d.join("gone").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_paths_are_refused() {
        let d = tmp("bad");
        for p in ["", "..data", "../x", "/etc/x", "a/../../x", "..x"] {
            assert!(write(&d, &[f(p, "x", 0o644)], None).is_err(), "{}", p);
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn fs_group_adds_group_read() {
        assert_eq!(file_mode(0o400, Some(1000)), 0o440);
        assert_eq!(file_mode(0o644, Some(1000)), 0o644);
        assert_eq!(file_mode(0o4755, None), 0o755);
    }
}

//! A container's root filesystem: an overlayfs whose lower layer is the image's read-only
//! snapshot and whose upper/work dirs live in the bundle; a plain copy where overlayfs is missing.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

/// Mounts (or copies) `snapshot` onto `bundle/rootfs`.
pub fn prepare(snapshot: &Path, bundle: &Path) -> io::Result<()> {
    let (rootfs, upper, work) = (
        bundle.join("rootfs"),
        bundle.join("upper"),
        bundle.join("work"),
    );
    for d in [&rootfs, &upper, &work] {
        fs::create_dir_all(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        snapshot.display(),
        upper.display(),
        work.display()
    );
    match mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    ) {
        Ok(()) => Ok(()),
        Err(e) => {
            log::warn!(
                "overlayfs unavailable for {} ({}); copying the image instead",
                bundle.display(),
                e
            );
            copy_tree(snapshot, &rootfs)
        }
    }
}

/// Unmounts the rootfs if it is mounted; the bundle directory itself is removed by the caller.
pub fn release(bundle: &Path) -> io::Result<()> {
    let rootfs = bundle.join("rootfs");
    while super::sandbox::is_mountpoint(&rootfs) {
        umount2(&rootfs, MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::other(format!("unmounting {}: {}", rootfs.display(), e)))?;
    }
    Ok(())
}

/// Copies a directory tree preserving modes, owners and symlinks (never following them).
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            fs::create_dir_all(&to)?;
            copy_tree(&from, &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
        } else {
            continue; // the snapshot holds no device nodes or fifos
        }
        let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_symlinks_and_modes() {
        let base = std::env::temp_dir().join(format!("tinylet-copytree-{}", std::process::id()));
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/tool"), b"x").unwrap();
        fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("/etc/passwd", src.join("link")).unwrap();
        fs::create_dir_all(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::metadata(dst.join("bin/tool")).unwrap().mode() & 0o777,
            0o755
        );
        fs::remove_dir_all(&base).unwrap();
    }
}

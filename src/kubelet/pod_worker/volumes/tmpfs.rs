//! Memory-backed volumes: `emptyDir` with `medium: Memory`, and the secret, projected and
//! downwardAPI volumes, which the kubelet keeps on tmpfs so that secrets never reach the disk
//! through them. Every mount of a pod's volumes is under `<pod dir>/volumes/` and is unmounted
//! from there, so removal works from what the kernel shows, not from memory: a restarted agent
//! removing a pod unmounts what an earlier run mounted.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io;
use std::path::{Path, PathBuf};

/// Mounts a tmpfs on `dir` unless one is already there (a restarted agent adopting the pod).
/// `size` in bytes; without it the kernel's default (half of the RAM) applies.
pub fn ensure(dir: &Path, size: Option<u64>) -> io::Result<()> {
    if crate::runtime::sandbox::is_mountpoint(dir) {
        return Ok(());
    }
    let mut opts = String::from("mode=0777");
    if let Some(s) = size {
        // tmpfs rounds up to pages; a size of 0 would mean "unlimited" to tmpfs.
        opts.push_str(&format!(",size={}", s.max(4096)));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| io::Error::other(format!("mounting a tmpfs on {}: {}", dir.display(), e)))
}

/// Unmounts every mount at or below `root` (deepest first). An error names the mount point.
pub fn unmount_all(root: &Path) -> io::Result<()> {
    let info = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(s) => s,
        Err(e) => return Err(io::Error::other(format!("reading mountinfo: {}", e))),
    };
    let mut points = mounts_under(&info, root);
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        // Lazily: a process that still holds a file open keeps the memory until it lets go, as
        // after the kubelet's unmount; the pod's containers are gone by now.
        umount2(&p, MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::other(format!("unmounting {}: {}", p.display(), e)))?;
    }
    Ok(())
}

/// Mount points in a mountinfo text that are `root` or below it.
fn mounts_under(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(root))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_a_root_are_found_and_unescaped() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /var/lib/tinylet/pods/u1/volumes/cache rw shared:40 - tmpfs tmpfs rw
91 22 0:51 / /var/lib/tinylet/pods/u1/volumes/my\\040dir rw - tmpfs tmpfs rw
92 22 0:52 / /var/lib/tinylet/pods/u10/volumes/x rw - tmpfs tmpfs rw
93 22 0:53 / /var/lib/tinylet/pods/u1/volumesx rw - tmpfs tmpfs rw
";
        let got = mounts_under(info, Path::new("/var/lib/tinylet/pods/u1/volumes"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/var/lib/tinylet/pods/u1/volumes/cache"),
                PathBuf::from("/var/lib/tinylet/pods/u1/volumes/my dir"),
            ]
        );
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }
}

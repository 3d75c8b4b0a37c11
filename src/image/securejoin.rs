//! Path resolution inside an unpack root, with the semantics of cyphar/filepath-securejoin:
//! symlinks are followed but can never leave the root (an absolute target restarts at the
//! root, `..` stops at the root). The result is a root-relative path free of symlinks and `..`.
//!
//! Why this is enough: the snapshot being unpacked is a private temp directory only the unpacker
//! writes to, so nothing can swap a resolved directory for a symlink between resolution and use.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Linux's own limit on symlink hops is 40; securejoin allows 255. Either stops loops.
pub(crate) const MAX_LINK_HOPS: usize = 255;

#[derive(Debug)]
pub(crate) enum JoinError {
    TooManyLinks,
    Io { path: PathBuf, source: io::Error },
}

/// Lexically cleans a tar entry name into root-relative components: leading '/' and "." are
/// dropped, ".." pops. Returns `None` when ".." would climb above the root.
pub(crate) fn clean_entry_path(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            _ => out.push(OsStr::from_bytes(part).to_os_string()),
        }
    }
    Some(out)
}

/// Resolves `components` under `root`, following every symlink met but clamping it to the root.
/// Components that do not exist are taken literally (they will be created as directories).
pub(crate) fn secure_join(root: &Path, components: &[OsString]) -> Result<PathBuf, JoinError> {
    let mut remaining: VecDeque<OsString> = components.iter().cloned().collect();
    let mut current: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = remaining.pop_front() {
        if part.is_empty() || part == "." {
            continue;
        }
        if part == ".." {
            // At the root, ".." is the root: this is what keeps relative links inside.
            current.pop();
            continue;
        }
        let candidate: PathBuf = root.join(join(&current)).join(&part);
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                current.push(part);
                continue;
            }
            Err(e) => {
                return Err(JoinError::Io {
                    path: candidate,
                    source: e,
                })
            }
        };
        if !meta.file_type().is_symlink() {
            current.push(part);
            continue;
        }
        hops += 1;
        if hops > MAX_LINK_HOPS {
            return Err(JoinError::TooManyLinks);
        }
        let target = fs::read_link(&candidate).map_err(|e| JoinError::Io {
            path: candidate,
            source: e,
        })?;
        let target = target.as_os_str().as_bytes();
        if target.first() == Some(&b'/') {
            // An absolute target means "from the container's root", i.e. our root.
            current.clear();
        }
        let target_parts = target.split(|&b| b == b'/').filter(|p| !p.is_empty());
        for p in target_parts.rev().collect::<Vec<_>>() {
            remaining.push_front(OsStr::from_bytes(p).to_os_string());
        }
    }
    Ok(join(&current))
}

fn join(parts: &[OsString]) -> PathBuf {
    parts.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn parts(s: &str) -> Vec<OsString> {
        clean_entry_path(s.as_bytes()).unwrap()
    }

    #[test]
    fn cleans_entry_names() {
        assert_eq!(parts("/a/./b//c/"), ["a", "b", "c"]);
        assert_eq!(parts("a/../b"), ["b"]);
        assert!(clean_entry_path(b"../x").is_none());
        assert!(clean_entry_path(b"a/../../x").is_none());
        assert!(clean_entry_path(b"/../x").is_none());
        assert!(parts("./").is_empty());
    }

    #[test]
    fn symlinks_are_clamped_to_the_root() {
        let dir = crate::image::testutil::TempDir::new("securejoin");
        let root = dir.path();
        fs::create_dir(root.join("real")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("rel")).unwrap();
        symlink("real", root.join("inside")).unwrap();
        symlink("/rel/../abs", root.join("chain")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        assert_eq!(
            secure_join(root, &parts("abs/passwd")).unwrap(),
            Path::new("etc/passwd")
        );
        assert_eq!(
            secure_join(root, &parts("rel/passwd")).unwrap(),
            Path::new("etc/passwd")
        );
        assert_eq!(
            secure_join(root, &parts("inside/x")).unwrap(),
            Path::new("real/x")
        );
        assert_eq!(
            secure_join(root, &parts("chain/x")).unwrap(),
            Path::new("etc/x")
        );
        assert!(matches!(
            secure_join(root, &parts("loop/x")),
            Err(JoinError::TooManyLinks)
        ));
    }
}

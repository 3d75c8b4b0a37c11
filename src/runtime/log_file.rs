//! A container's log file with the kubelet's rotation (containerLogMaxSize / containerLogMaxFiles):
//! when the next line would take the file past the limit, it is renamed to
//! `<name>.<YYYYMMDD-hhmmss>` and a new one is started; the oldest rotated files go so that at most
//! `max_files` (the current one included) remain. The monitor is the only writer and rotates
//! between whole lines, so no line is lost or split; `tinylet logs -f` follows the rename.

use crate::clock;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The limits; `max_size` 0 turns rotation off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

impl Rotation {
    /// The kubelet's defaults: 10Mi, 5 files.
    pub const DEFAULT: Rotation = Rotation {
        max_size: 10 << 20,
        max_files: 5,
    };
}

pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl LogFile {
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<LogFile> {
        let file = open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        // 2026-11-27T10:10:10Z -> 20261127-101010, the kubelet's timestamp format.
        let now = clock::rfc3339(clock::now_unix());
        let stamp: String = now
            .chars()
            .take(19)
            .filter(|c| !matches!(c, '-' | ':'))
            .map(|c| if c == 'T' { '-' } else { c })
            .collect();
        // Several rotations within a second: `.N` suffixes, each above the highest one there is
        // (a pruned lower one must not be reused: it would sort as the oldest).
        let same_second = rotated_files(&self.path)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .filter_map(|n| {
                let rest = n.rsplit_once(&stamp)?.1.to_string();
                if rest.is_empty() {
                    Some(0)
                } else {
                    rest.strip_prefix('.')?.parse::<u32>().ok()
                }
            })
            .max();
        let target = match same_second {
            None => rotated_name(&self.path, &stamp),
            Some(n) => rotated_name(&self.path, &format!("{}.{}", stamp, n + 1)),
        };
        std::fs::rename(&self.path, &target)?;
        self.file = open(&self.path)?;
        self.size = 0;
        self.prune();
        Ok(())
    }

    /// Removes the oldest rotated files beyond `max_files - 1`.
    fn prune(&self) {
        let mut rotated = rotated_files(&self.path);
        let keep = self.rotation.max_files.saturating_sub(1) as usize;
        if rotated.len() > keep {
            let excess = rotated.len() - keep;
            for old in rotated.drain(..excess) {
                let _ = std::fs::remove_file(old);
            }
        }
    }
}

fn rotated_name(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// The rotated siblings of `path` (`<name>.<stamp>`), oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let stamp = n.strip_prefix(&prefix)?.to_string();
            stamp
                .starts_with(|c: char| c.is_ascii_digit())
                .then(|| (stamp, e.path()))
        })
        .collect();
    // The stamps sort by time; `.N` suffixes sort after their second.
    found.sort_by(|a, b| {
        let key = |s: &str| -> (String, u32) {
            let (base, n) = s.split_once('.').unwrap_or((s, "0"));
            (base.to_string(), n.parse().unwrap_or(0))
        };
        key(&a.0).cmp(&key(&b.0)).then(a.0.cmp(&b.0))
    });
    found.into_iter().map(|(_, p)| p).collect()
}

impl Write for LogFile {
    /// Each call is one whole CRI line (the line splitter writes them so).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.rotation;
        if r.max_size > 0 && self.size > 0 && self.size + buf.len() as u64 > r.max_size {
            // A failed rotation (disk full, read-only) keeps writing to the current file.
            let _ = self.rotate();
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_between_lines_and_keeps_max_files() {
        let dir = std::env::temp_dir().join(format!("tinylet-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0.log");
        let mut log = LogFile::open(
            &path,
            Rotation {
                max_size: 100,
                max_files: 3,
            },
        )
        .unwrap();
        let mut all = Vec::new();
        for i in 0..40 {
            let line = format!("line {:02} {}\n", i, "x".repeat(20));
            log.write_all(line.as_bytes()).unwrap();
            all.push(line);
        }
        let rotated = rotated_files(&path);
        assert_eq!(rotated.len(), 2, "{:?}", rotated);
        let mut kept = String::new();
        for f in rotated.iter().chain([&path]) {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.len() <= 100, "{} is {} bytes", f.display(), text.len());
            assert!(text.ends_with('\n'), "whole lines only");
            kept.push_str(&text);
        }
        // What is kept is the newest lines, in order, none missing in between.
        let joined: String = all.concat();
        assert!(joined.ends_with(&kept), "kept:\n{}", kept);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotated_files_sort_by_time_then_sequence() {
        let dir = std::env::temp_dir().join(format!("tinylet-rot2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for n in [
            "0.log.20261127-101010.2",
            "0.log.20261127-101010",
            "0.log.20261127-101010.1",
            "0.log.20261126-235959",
            "1.log.20200101-000000",
            "0.log",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let names: Vec<String> = rotated_files(&dir.join("0.log"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20261126-235959",
                "0.log.20261127-101010",
                "0.log.20261127-101010.1",
                "0.log.20261127-101010.2"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

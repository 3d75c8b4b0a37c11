//! The static pod source (`--pod-manifest-path`): a directory of manifest files, watched with
//! inotify and rescanned every second as a safety net. Only files whose size, mtime or inode
//! changed are re-read. Hidden files (".name") are ignored, as the kubelet does.

use super::manifest::{read_manifest_file, DesiredPod, ManifestError};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything the directory asks for right now.
#[derive(Debug, Clone, Default)]
pub struct DesiredSet {
    pub pods: Vec<DesiredPod>,
    pub errors: Vec<ManifestError>,
}

struct FileState {
    key: (u64, i64, i64, u64),
    results: Vec<Result<DesiredPod, ManifestError>>,
}

pub struct StaticSource {
    dir: PathBuf,
    node_name: String,
    files: BTreeMap<PathBuf, FileState>,
    inotify: Option<Inotify>,
    missing_dir_logged: bool,
    /// `--allowed-unsafe-sysctls`, for the sysctl admission of each pod.
    allowed_unsafe_sysctls: Vec<String>,
}

impl StaticSource {
    pub fn new(dir: &Path, node_name: &str) -> StaticSource {
        StaticSource {
            dir: dir.to_path_buf(),
            node_name: node_name.to_string(),
            files: BTreeMap::new(),
            inotify: None,
            missing_dir_logged: false,
            allowed_unsafe_sysctls: Vec::new(),
        }
    }

    /// Pods may also use these unsafe sysctls (names or `prefix*`).
    pub fn allowing_unsafe_sysctls(mut self, patterns: Vec<String>) -> StaticSource {
        self.allowed_unsafe_sysctls = patterns;
        self
    }

    /// Re-reads what changed; returns true when the desired set may differ from before.
    pub fn scan(&mut self) -> bool {
        self.ensure_watch();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => {
                self.missing_dir_logged = false;
                e
            }
            Err(e) => {
                if !self.missing_dir_logged {
                    log::warn!(
                        "pod manifest path {}: {}; watching for it to appear",
                        self.dir.display(),
                        e
                    );
                    self.missing_dir_logged = true;
                }
                let changed = !self.files.is_empty();
                self.files.clear();
                return changed;
            }
        };
        let mut seen = BTreeSet::new();
        let mut changed = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Follow symlinks, like the kubelet (config management often links manifests in).
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            seen.insert(path.clone());
            let key = (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino());
            if self.files.get(&path).is_some_and(|f| f.key == key) {
                continue;
            }
            changed = true;
            let mut results = read_manifest_file(&path, &self.node_name);
            // The kubelet's admission: a pod it would reject is reported like a manifest error.
            for r in results.iter_mut() {
                if let Ok(p) = r {
                    if let Err(e) = super::sysctls::admit(&p.spec, &self.allowed_unsafe_sysctls) {
                        *r = Err(ManifestError {
                            file: path.clone(),
                            document: None,
                            message: format!(
                                "pod {}: {}: spec.securityContext.sysctls: {}",
                                p.full_name(),
                                super::sysctls::FORBIDDEN_REASON,
                                e
                            ),
                        });
                    }
                }
            }
            for r in &results {
                if let Err(e) = r {
                    log::error!("{}", e);
                }
            }
            self.files.insert(path, FileState { key, results });
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        changed || before != self.files.len()
    }

    /// The pods to run, in file order; a pod whose namespace/name another file already claims is
    /// refused with an error (the kubelet drops such duplicates too).
    pub fn desired(&self) -> DesiredSet {
        let mut set = DesiredSet::default();
        let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (path, f) in &self.files {
            for r in &f.results {
                match r {
                    Ok(p) => {
                        if let Some(first) = names.get(&p.full_name()) {
                            set.errors.push(ManifestError {
                                file: path.clone(),
                                document: None,
                                message: format!(
                                    "pod {} is already defined in {}; ignoring this one",
                                    p.full_name(),
                                    first.display()
                                ),
                            });
                        } else {
                            names.insert(p.full_name(), path.clone());
                            set.pods.push(p.clone());
                        }
                    }
                    Err(e) => set.errors.push(e.clone()),
                }
            }
        }
        set
    }

    fn ensure_watch(&mut self) {
        if self.inotify.is_some() || !self.dir.is_dir() {
            return;
        }
        let Ok(ino) = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) else {
            return;
        };
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        if ino.add_watch(&self.dir, mask).is_ok() {
            self.inotify = Some(ino);
        }
    }

    /// Blocks until something in the directory changed or `timeout` passed.
    pub fn wait(&mut self, timeout: Duration) {
        let Some(ino) = &self.inotify else {
            std::thread::sleep(timeout);
            return;
        };
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32)
            .unwrap_or(PollTimeout::NONE);
        if let Ok(n) = poll(&mut fds, ms) {
            if n > 0 {
                let mut dir_gone = false;
                while let Ok(events) = ino.read_events() {
                    if events.is_empty() {
                        break;
                    }
                    dir_gone |= events.iter().any(|e| {
                        e.mask.intersects(
                            AddWatchFlags::IN_DELETE_SELF
                                | AddWatchFlags::IN_MOVE_SELF
                                | AddWatchFlags::IN_IGNORED,
                        )
                    });
                }
                if dir_gone {
                    self.inotify = None;
                }
            }
        }
    }
}

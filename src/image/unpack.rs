//! Applies image layers (tar, optionally gzip'd) to a snapshot directory.
//!
//! This is the security-critical part of the image module: a layer is attacker-controlled input
//! unpacked as root. tar's own `unpack()` is never used (it had symlink-escape CVEs); every entry
//! is placed by hand:
//! - names are cleaned lexically and refused if `..` would climb above the root;
//! - the parent directory is resolved with secure-join semantics (symlinks followed, clamped to
//!   the root), the final component is never followed: whatever is there is replaced;
//! - files are created with O_CREAT|O_EXCL|O_NOFOLLOW; hardlink targets must be regular files
//!   inside the root; device nodes and fifos are dropped;
//! - OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) hide lower layers' entries only;
//! - the total unpacked size and entry count are capped against decompression bombs;
//! - the compressed digest/size and the uncompressed diff_id are verified while streaming.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, FileTimes, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::MultiGzDecoder;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::digest::HashingReader;
use super::securejoin::{clean_entry_path, secure_join, JoinError};
use super::whiteout::{self, Written};

/// Default cap on the bytes of file content one image may unpack to.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 8 << 30;
/// Default cap on the tar entries one image may contain, across all its layers.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

/// Caps applied to one image (all its layers together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

#[derive(Debug)]
pub enum UnpackError {
    UnsupportedCompression {
        kind: &'static str,
    },
    UnsafePath {
        entry: String,
        reason: String,
    },
    HardlinkTarget {
        entry: String,
        target: String,
        reason: String,
    },
    SizeLimit {
        limit: u64,
    },
    EntryLimit {
        limit: u64,
    },
    DigestMismatch {
        expected: String,
        actual: String,
    },
    SizeMismatch {
        expected: u64,
        actual: u64,
    },
    DiffIdMismatch {
        expected: String,
        actual: String,
    },
    /// The (decompressed) tar stream could not be read.
    Read {
        source: io::Error,
    },
    Io {
        entry: String,
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for UnpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnpackError::UnsupportedCompression { kind } => {
                write!(f, "unsupported compression {kind} (only gzip and plain tar are supported)")
            }
            UnpackError::UnsafePath { entry, reason } => write!(f, "entry {entry:?}: {reason}"),
            UnpackError::HardlinkTarget { entry, target, reason } => {
                write!(f, "hardlink {entry:?} -> {target:?}: {reason}")
            }
            UnpackError::SizeLimit { limit } => {
                write!(f, "unpacked size exceeds the limit of {limit} bytes (decompression bomb?)")
            }
            UnpackError::EntryLimit { limit } => write!(f, "more than {limit} tar entries (decompression bomb?)"),
            UnpackError::DigestMismatch { expected, actual } => {
                write!(f, "layer digest mismatch: expected {expected}, content hashes to {actual}")
            }
            UnpackError::SizeMismatch { expected, actual } => {
                write!(f, "layer size mismatch: descriptor says {expected} bytes, content has {actual}")
            }
            UnpackError::DiffIdMismatch { expected, actual } => write!(
                f,
                "uncompressed layer does not match the config's diff_id: expected {expected}, got {actual}"
            ),
            UnpackError::Read { .. } => write!(f, "reading the layer's tar stream"),
            UnpackError::Io { entry, action, path, .. } => {
                write!(f, "entry {entry:?}: {action} {}", path.display())
            }
        }
    }
}

impl std::error::Error for UnpackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UnpackError::Read { source } | UnpackError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What the layer must hash to, from its manifest descriptor and the image config.
pub(crate) struct ExpectedLayer<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub diff_id: Option<&'a str>,
}

/// Applies the layers of one image, in order, to `root`; limits count across all layers.
pub(crate) struct Unpacker<'a> {
    root: &'a Path,
    limits: Limits,
    bytes: u64,
    entries: u64,
    /// Ownership can only be applied as root; rootless unpacks keep the caller's ids.
    chown: bool,
    /// Device nodes and fifos the layers asked for, by path in the rootfs. They are never
    /// created in the shared snapshot; privileged containers get them from runc (OCI
    /// `linux.devices`), unprivileged ones never see them.
    pub(crate) devices: BTreeMap<PathBuf, (DeviceNode, usize)>,
    layer_no: usize,
}

/// A device node or fifo of an image layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceNode {
    /// Absolute path inside the container.
    pub path: String,
    /// "c", "b" or "p", as OCI `linux.devices` types them.
    #[serde(rename = "type")]
    pub kind: String,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// Per-layer bookkeeping: what this layer wrote (whiteouts must spare it) and directory metadata
/// to apply once the layer is done (writing into a directory would change its mtime).
#[derive(Default)]
struct LayerState {
    written: Written,
    dirs: BTreeMap<PathBuf, Meta>,
}

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

impl<'a> Unpacker<'a> {
    pub(crate) fn new(root: &'a Path, limits: Limits) -> Self {
        Unpacker {
            root,
            limits,
            bytes: 0,
            entries: 0,
            chown: nix::unistd::geteuid().is_root(),
            devices: BTreeMap::new(),
            layer_no: 0,
        }
    }

    /// The device nodes left after every layer, in path order.
    pub(crate) fn device_nodes(&self) -> Vec<DeviceNode> {
        self.devices.values().map(|(d, _)| d.clone()).collect()
    }

    /// Forgets device nodes of earlier layers at or below `rel` (replaced or whited out).
    fn forget_devices(&mut self, rel: &Path) {
        let layer = self.layer_no;
        self.devices
            .retain(|p, (_, l)| *l == layer || !(p == rel || p.starts_with(rel)));
    }

    pub(crate) fn apply_layer<R: Read>(
        &mut self,
        reader: R,
        expected: &ExpectedLayer,
    ) -> Result<(), UnpackError> {
        self.layer_no += 1;
        let mut buffered = BufReader::new(reader);
        let compression = detect_compression(buffered.fill_buf().map_err(read_err)?)?;
        let mut compressed = HashingReader::new(buffered);
        let diff_id = {
            let decompressed: Box<dyn Read + '_> = match compression {
                Compression::Gzip => Box::new(MultiGzDecoder::new(&mut compressed)),
                Compression::Zstd => Box::new(ZstdFrames::new(&mut compressed)),
                Compression::None => Box::new(&mut compressed),
            };
            let mut tar_stream = HashingReader::new(decompressed);
            let mut layer = LayerState::default();
            let mut archive = tar::Archive::new(&mut tar_stream);
            for entry in archive.entries().map_err(read_err)? {
                let mut entry = entry.map_err(read_err)?;
                self.apply_entry(&mut entry, &mut layer)?;
            }
            self.finish_dirs(&layer)?;
            tar_stream.drain().map_err(read_err)?;
            tar_stream.digest()
        };
        compressed.drain().map_err(read_err)?;
        if compressed.count() != expected.size {
            return Err(UnpackError::SizeMismatch {
                expected: expected.size,
                actual: compressed.count(),
            });
        }
        let actual = compressed.digest();
        if actual != expected.digest {
            return Err(UnpackError::DigestMismatch {
                expected: expected.digest.to_string(),
                actual,
            });
        }
        match expected.diff_id {
            Some(want) if want != diff_id => Err(UnpackError::DiffIdMismatch {
                expected: want.to_string(),
                actual: diff_id,
            }),
            _ => Ok(()),
        }
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        layer: &mut LayerState,
    ) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::EntryLimit {
                limit: self.limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let mut comps = clean_entry_path(&raw)
            .ok_or_else(|| unsafe_path(&name, "path climbs above the image root"))?;
        let Some(base) = comps.pop() else {
            // "." or "/": the snapshot root itself.
            if kind != EntryType::Directory {
                return Err(unsafe_path(
                    &name,
                    "a non-directory entry cannot replace the image root",
                ));
            }
            layer.dirs.insert(PathBuf::new(), self.meta(entry)?);
            return Ok(());
        };
        if whiteout::is_whiteout(&base) {
            if !self.devices.is_empty() {
                if let Ok(dir) = secure_join(self.root, &comps) {
                    let b = base.as_bytes();
                    if b == b".wh..wh..opq" {
                        self.forget_devices(&dir);
                    } else if let Some(hidden) = b.strip_prefix(b".wh.") {
                        self.forget_devices(&dir.join(OsStr::from_bytes(hidden)));
                    }
                }
            }
            return whiteout::apply(self.root, &name, &comps, &base, &layer.written);
        }
        let parent = self.resolve_parent(&name, &comps)?;
        let rel = parent.join(&base);
        let path = self.root.join(&rel);
        let meta = self.meta(entry)?;
        if !self.devices.is_empty()
            && !matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo)
        {
            self.forget_devices(&rel);
        }
        match kind {
            EntryType::Directory => {
                if !remove_existing(&path, true)
                    .map_err(|e| io_err(&name, "replacing", &path, e))?
                {
                    make_dir(&path).map_err(|e| io_err(&name, "creating directory", &path, e))?;
                }
                layer.dirs.insert(rel.clone(), meta);
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // The size tar-rs will read: a PAX `size` record overrides the header field, and
                // counting the header field would let a PAX header slip past the cap.
                let size = entry.size();
                self.bytes = self.bytes.saturating_add(size);
                if self.bytes > self.limits.max_unpacked_bytes {
                    return Err(UnpackError::SizeLimit {
                        limit: self.limits.max_unpacked_bytes,
                    });
                }
                remove_existing(&path, false).map_err(|e| io_err(&name, "replacing", &path, e))?;
                self.write_file(entry, &path, meta)
                    .map_err(|e| io_err(&name, "writing file", &path, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_path(&name, "symlink without a target"))?
                    .into_owned();
                remove_existing(&path, false).map_err(|e| io_err(&name, "replacing", &path, e))?;
                // The target is stored verbatim: it is only ever resolved inside the container
                // (or by secure_join here), never by the host.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| io_err(&name, "creating symlink", &path, e))?;
                self.symlink_meta(&path, meta)
                    .map_err(|e| io_err(&name, "setting owner/times of", &path, e))?;
            }
            EntryType::Link => self.hardlink(entry, &name, &path)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let node = DeviceNode {
                    path: format!("/{}", rel.display()),
                    kind: match kind {
                        EntryType::Char => "c",
                        EntryType::Block => "b",
                        _ => "p",
                    }
                    .into(),
                    major: h.device_major().ok().flatten().unwrap_or(0),
                    minor: h.device_minor().ok().flatten().unwrap_or(0),
                    mode: meta.mode & 0o777,
                    uid: meta.uid,
                    gid: meta.gid,
                };
                log::debug!("device node {name:?} recorded for privileged containers, not created");
                // Whatever lower layers had at this path is replaced, as by any other entry.
                remove_existing(&path, false).map_err(|e| io_err(&name, "replacing", &path, e))?;
                self.devices.insert(rel, (node, self.layer_no));
                return Ok(());
            }
            other => {
                log::warn!("dropping tar entry {name:?} of unsupported type {other:?}");
                return Ok(());
            }
        }
        layer.written.insert(rel);
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &tar::Entry<R>) -> Result<Meta, UnpackError> {
        let h = entry.header();
        Ok(Meta {
            mode: h.mode().map_err(read_err)? & 0o7777,
            uid: h.uid().map_err(read_err)?,
            gid: h.gid().map_err(read_err)?,
            mtime: h.mtime().map_err(read_err)?,
        })
    }

    /// Resolves (and creates, as 0755 directories) the parent chain of an entry.
    fn resolve_parent(&self, name: &str, comps: &[OsString]) -> Result<PathBuf, UnpackError> {
        let parent = secure_join(self.root, comps).map_err(|e| join_err(name, e))?;
        let mut dir = self.root.to_path_buf();
        for c in parent.components() {
            dir.push(c);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(unsafe_path(
                        name,
                        &format!("parent {} is not a directory", dir.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    make_dir(&dir)
                        .map_err(|e| io_err(name, "creating parent directory", &dir, e))?;
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .map_err(|e| io_err(name, "setting mode of", &dir, e))?;
                }
                Err(e) => return Err(io_err(name, "inspecting", &dir, e)),
            }
        }
        Ok(parent)
    }

    fn write_file<R: Read>(
        &self,
        entry: &mut tar::Entry<R>,
        path: &Path,
        meta: Meta,
    ) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_flags::O_NOFOLLOW | libc_flags::O_CLOEXEC)
            .open(path)?;
        let want = entry.size();
        let got = io::copy(entry, &mut file)?;
        if got != want {
            // tar-rs ends an entry's data quietly at EOF; say which entry was cut short.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("archive ends after {got} of the entry's {want} bytes"),
            ));
        }
        if self.chown {
            std::os::unix::fs::fchown(&file, Some(id(meta.uid)?), Some(id(meta.gid)?))?;
        }
        // After chown: chown clears setuid/setgid bits.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
        file.set_times(FileTimes::new().set_modified(mtime(meta.mtime)))
    }

    fn symlink_meta(&self, path: &Path, meta: Meta) -> io::Result<()> {
        if self.chown {
            std::os::unix::fs::lchown(path, Some(id(meta.uid)?), Some(id(meta.gid)?))?;
        }
        let secs = i64::try_from(meta.mtime).unwrap_or(i64::MAX);
        let t = TimeSpec::new(secs, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &TimeSpec::UTIME_OMIT,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io::Error::from)
    }

    fn hardlink<R: Read>(
        &self,
        entry: &tar::Entry<R>,
        name: &str,
        path: &Path,
    ) -> Result<(), UnpackError> {
        let raw = entry
            .link_name_bytes()
            .map(|c| c.into_owned())
            .unwrap_or_default();
        let target_name = String::from_utf8_lossy(&raw).into_owned();
        let bad = |reason: &str| UnpackError::HardlinkTarget {
            entry: name.to_string(),
            target: target_name.clone(),
            reason: reason.to_string(),
        };
        let mut comps =
            clean_entry_path(&raw).ok_or_else(|| bad("target climbs above the image root"))?;
        let base = comps.pop().ok_or_else(|| bad("target is the image root"))?;
        let parent = secure_join(self.root, &comps).map_err(|e| join_err(name, e))?;
        let target = self.root.join(parent).join(base);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(bad("target is not a regular file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad("target does not exist"))
            }
            Err(e) => return Err(io_err(name, "inspecting hardlink target", &target, e)),
        }
        if target == path {
            return Ok(());
        }
        remove_existing(path, false).map_err(|e| io_err(name, "replacing", path, e))?;
        // std's hard_link uses linkat(2) without AT_SYMLINK_FOLLOW; target is a regular file anyway.
        fs::hard_link(&target, path).map_err(|e| io_err(name, "creating hardlink", path, e))
    }

    fn finish_dirs(&self, layer: &LayerState) -> Result<(), UnpackError> {
        // Deepest first, so setting a parent's mtime is not undone by touching a child.
        for (rel, meta) in layer.dirs.iter().rev() {
            // The path was resolved when the entry was read; a later entry of this layer may
            // have turned one of its parents into a symlink (e.g. "x/d" then "x -> /etc"), and
            // opening the stale path would then reach the host. Re-resolve and skip if changed.
            let parts: Vec<OsString> = rel.iter().map(|c| c.to_os_string()).collect();
            if secure_join(self.root, &parts).ok().as_deref() != Some(rel.as_path()) {
                continue;
            }
            let path = self.root.join(rel);
            let dir = match OpenOptions::new()
                .read(true)
                .custom_flags(
                    libc_flags::O_NOFOLLOW | libc_flags::O_DIRECTORY | libc_flags::O_CLOEXEC,
                )
                .open(&path)
            {
                Ok(d) => d,
                // Replaced by a later entry of this layer: its metadata no longer applies.
                Err(_) => continue,
            };
            let entry = rel.display().to_string();
            let set = || -> io::Result<()> {
                if self.chown {
                    std::os::unix::fs::fchown(&dir, Some(id(meta.uid)?), Some(id(meta.gid)?))?;
                }
                dir.set_permissions(fs::Permissions::from_mode(meta.mode))?;
                dir.set_times(FileTimes::new().set_modified(mtime(meta.mtime)))
            };
            set().map_err(|e| io_err(&entry, "setting owner/mode/times of", &path, e))?;
        }
        Ok(())
    }
}

/// Removes whatever is at `path` without following it. Returns true if an existing directory
/// was kept (`keep_dir` and the entry is a directory).
fn remove_existing(path: &Path, keep_dir: bool) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path)?;
        }
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(false)
}

fn make_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(path)
}

fn detect_compression(head: &[u8]) -> Result<Compression, UnpackError> {
    const MAGICS: [(&[u8], &str); 3] = [
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (b"BZh", "bzip2"),
        (&[0x1f, 0x9d], "compress"),
    ];
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(&ZSTD_MAGIC) {
        return Ok(Compression::Zstd);
    }
    match MAGICS.iter().find(|(m, _)| head.starts_with(m)) {
        Some((_, kind)) => Err(UnpackError::UnsupportedCompression { kind }),
        None => Ok(Compression::None),
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A zstd stream of one or more frames (compressors may write several, e.g. one per chunk);
/// ruzstd's decoder reads one frame at a time.
struct ZstdFrames<R: Read> {
    decoder:
        Option<ruzstd::decoding::StreamingDecoder<BufReader<R>, ruzstd::decoding::FrameDecoder>>,
    source: Option<BufReader<R>>,
}

impl<R: Read> ZstdFrames<R> {
    fn new(inner: R) -> Self {
        ZstdFrames {
            decoder: None,
            source: Some(BufReader::new(inner)),
        }
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(d) = self.decoder.as_mut() {
                let n = d.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // This frame is done: the next one (if any) starts where it ended.
                self.source = self.decoder.take().map(|d| d.into_inner());
            }
            let Some(mut source) = self.source.take() else {
                return Ok(0);
            };
            if source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let d = ruzstd::decoding::StreamingDecoder::new(source)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
            self.decoder = Some(d);
        }
    }
}

fn id(raw: u64) -> io::Result<u32> {
    u32::try_from(raw).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("uid/gid {raw} out of range"),
        )
    })
}

fn mtime(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn read_err(source: io::Error) -> UnpackError {
    UnpackError::Read { source }
}

pub(super) fn unsafe_path(entry: &str, reason: &str) -> UnpackError {
    UnpackError::UnsafePath {
        entry: entry.to_string(),
        reason: reason.to_string(),
    }
}

pub(super) fn io_err(
    entry: &str,
    action: &'static str,
    path: &Path,
    source: io::Error,
) -> UnpackError {
    UnpackError::Io {
        entry: entry.to_string(),
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn join_err(entry: &str, e: JoinError) -> UnpackError {
    match e {
        JoinError::TooManyLinks => unsafe_path(entry, "too many symlinks in its parent path"),
        JoinError::Io { path, source } => io_err(entry, "resolving", &path, source),
    }
}

/// open(2) flags; std exposes no constants and nix's OFlag is a bitflags type, so take the raw
/// values from nix's libc re-export.
mod libc_flags {
    pub const O_NOFOLLOW: i32 = nix::libc::O_NOFOLLOW;
    pub const O_CLOEXEC: i32 = nix::libc::O_CLOEXEC;
    pub const O_DIRECTORY: i32 = nix::libc::O_DIRECTORY;
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;

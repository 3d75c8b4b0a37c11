//! Test helpers: scratch directories and hand-built tar streams (raw headers, so hostile names
//! like "../x" that tar's `set_path` refuses can be written).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tinylet-test-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("creating test dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One tar entry; names and link targets are written byte for byte.
pub(crate) enum E<'a> {
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32, u64),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
}

pub(crate) fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let (name, link, kind, data, mode, uid): (&str, &str, EntryType, &[u8], u32, u64) = match *e
        {
            E::File(n, d) => (n, "", EntryType::Regular, d, 0o644, 0),
            E::FileMode(n, d, m, uid) => (n, "", EntryType::Regular, d, m, uid),
            E::Dir(n) => (n, "", EntryType::Directory, b"", 0o755, 0),
            E::Symlink(n, l) => (n, l, EntryType::Symlink, b"", 0o777, 0),
            E::Hardlink(n, l) => (n, l, EntryType::Link, b"", 0o644, 0),
            E::Fifo(n) => (n, "", EntryType::Fifo, b"", 0o644, 0),
            E::Char(n) => (n, "", EntryType::Char, b"", 0o666, 0),
        };
        let mut h = Header::new_gnu();
        let gnu = h.as_gnu_mut().expect("gnu header");
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "test names must fit the header"
        );
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        builder
            .append(&h, data)
            .expect("appending to in-memory tar");
    }
    builder.into_inner().expect("finishing in-memory tar")
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).expect("gzip to memory");
    enc.finish().expect("gzip to memory")
}

/// Writes a one-layer OCI layout whose only file holds `payload`: distinct payloads make
/// distinct images (config, snapshot and blobs), for tests that need several.
pub(crate) fn write_oci_layout(dir: &Path, payload: &[u8]) {
    use crate::image::digest::sha256_of;
    let layer = tar_of(&[E::File("payload", payload)]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": crate::image::oci::go_arch(std::env::consts::ARCH),
        "os": "linux",
        "config": {"Cmd": ["/payload"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_of(&layer)]},
    }))
    .expect("config JSON");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_of(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_of(&layer), "size": layer.len()}],
    }))
    .expect("manifest JSON");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256_of(&manifest), "size": manifest.len()}],
    }))
    .expect("index JSON");
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("creating layout");
    for blob in [&layer, &config, &manifest] {
        fs::write(blobs.join(&sha256_of(blob)[7..]), blob).expect("writing blob");
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    fs::write(dir.join("index.json"), index).expect("index.json");
}

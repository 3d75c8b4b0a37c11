//! The content-addressed blob store, `images/blobs/sha256/<hex>`. A blob only appears under its
//! name after its content was verified against that name, so every blob read back is trusted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::digest::{self, HashingReader};
use super::files::{unique_name, TempPath};
use super::ImageError;

/// Manifests, indexes and configs are small; refuse to slurp anything bigger into memory.
pub(crate) const MAX_JSON_BYTES: u64 = 16 << 20;

pub(crate) struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

/// What content must hash to (digest) and measure (size) to be accepted.
#[derive(Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub digest: &'a str,
    pub size: u64,
}

impl Blobs {
    pub(crate) fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Blobs { dir, tmp }
    }

    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join(digest::sha256_hex(digest)?))
    }

    pub(crate) fn contains(&self, digest: &str) -> Result<bool, ImageError> {
        let path = self.path(digest)?;
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("inspecting blob", path, e)),
        }
    }

    /// Streams `reader` into the store. With `expect`, the content must match it (and an existing
    /// blob short-circuits); without, the digest is computed. Returns (digest, size).
    pub(crate) fn ingest(
        &self,
        reader: impl Read,
        what: &str,
        expect: Option<Expect>,
    ) -> Result<(String, u64), ImageError> {
        if let Some(e) = expect {
            if self.contains(e.digest)? {
                return Ok((e.digest.to_string(), e.size));
            }
        }
        let tmp = TempPath::new(self.tmp.join(unique_name("blob")));
        let io_err = |e| ImageError::io(format!("writing {what} to"), tmp.path(), e);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(tmp.path())
            .map_err(io_err)?;
        // Never read more than one byte past the declared size: an endless source is refused
        // without filling the disk.
        let limit = expect.map_or(u64::MAX, |e| e.size.saturating_add(1));
        let mut hashing = HashingReader::new(reader.take(limit));
        io::copy(&mut hashing, &mut file).map_err(io_err)?;
        let (digest, size) = (hashing.digest(), hashing.count());
        if let Some(e) = expect {
            check(what, e, &digest, size)?;
        }
        file.sync_all().map_err(io_err)?;
        drop(file);
        let dest = self.path(&digest)?;
        tmp.commit(&dest)
            .map_err(|e| ImageError::io(format!("storing {what} as"), &dest, e))?;
        Ok((digest, size))
    }

    /// Moves an already verified file (same filesystem) into the store under `digest`.
    pub(crate) fn adopt(&self, verified: &Path, digest: &str) -> Result<(), ImageError> {
        if self.contains(digest)? {
            return Ok(());
        }
        let dest = self.path(digest)?;
        File::open(verified)
            .and_then(|f| f.sync_all())
            .map_err(|e| ImageError::io("syncing", verified, e))?;
        TempPath::new(verified.to_path_buf())
            .commit(&dest)
            .map_err(|e| ImageError::io("storing blob as", &dest, e))
    }

    pub(crate) fn open(&self, digest: &str) -> Result<File, ImageError> {
        let path = self.path(digest)?;
        File::open(&path).map_err(|e| ImageError::io("opening blob", path, e))
    }

    pub(crate) fn read_small(&self, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest)?;
        read_capped(&path, what)
    }

    /// The digests of every stored blob.
    pub(crate) fn list(&self) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| ImageError::io("listing", &self.dir, e))? {
            let entry = entry.map_err(|e| ImageError::io("listing", &self.dir, e))?;
            if let Some(name) = entry
                .file_name()
                .to_str()
                .filter(|n| digest::is_sha256_hex(n))
            {
                out.push(format!("sha256:{name}"));
            }
        }
        Ok(out)
    }

    pub(crate) fn remove(&self, digest: &str) -> Result<(), ImageError> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(ImageError::io("removing blob", path, e))
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn check(what: &str, expect: Expect, digest: &str, size: u64) -> Result<(), ImageError> {
    if size != expect.size {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            expected: expect.size,
            actual: size,
        });
    }
    if digest != expect.digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: expect.digest.to_string(),
            actual: digest.to_string(),
        });
    }
    Ok(())
}

/// Reads a small JSON document, refusing files over MAX_JSON_BYTES.
pub(crate) fn read_capped(path: &Path, what: &str) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io(format!("opening {what}"), path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::io(format!("reading {what}"), path, e))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(ImageError::io(
            format!("reading {what}"),
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_JSON_BYTES} bytes"),
            ),
        ));
    }
    Ok(bytes)
}

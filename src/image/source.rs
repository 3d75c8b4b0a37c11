//! Import sources: an OCI layout directory, or a tarball holding an OCI layout ("OCI archive") or
//! a `docker save` image ("docker archive"), plain or gzip'd.
//!
//! A tarball is read once and every regular file staged into `images/tmp`, hashed on the way in:
//! tar is sequential (docker writes manifest.json last), and staging on the store's filesystem
//! lets verified blobs move into the store by rename instead of a second copy.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::blobs::{self, Blobs, Expect};
use super::digest::HashingReader;
use super::files::{unique_name, TempPath};
use super::securejoin::clean_entry_path;
use super::ImageError;

/// Symlink chains inside an archive (old docker saves link shared layers) are short.
const MAX_ARCHIVE_LINK_HOPS: usize = 16;

pub(crate) enum Format {
    OciLayout,
    DockerArchive,
}

pub(crate) struct Source {
    origin: PathBuf,
    kind: Kind,
}

enum Kind {
    Dir(PathBuf),
    Staged {
        _dir: TempPath,
        files: HashMap<String, Staged>,
        links: HashMap<String, String>,
    },
}

struct Staged {
    path: PathBuf,
    digest: String,
    size: u64,
}

impl Source {
    /// Opens a directory as-is, or stages a tarball's files into a fresh directory under `tmp`.
    pub(crate) fn open(path: &Path, tmp: &Path) -> Result<Source, ImageError> {
        let meta =
            fs::metadata(path).map_err(|e| ImageError::io("opening import source", path, e))?;
        let kind = if meta.is_dir() {
            Kind::Dir(path.to_path_buf())
        } else {
            stage_archive(path, tmp)?
        };
        Ok(Source {
            origin: path.to_path_buf(),
            kind,
        })
    }

    pub(crate) fn origin(&self) -> &Path {
        &self.origin
    }

    /// OCI layout wins when both are present: Docker 25+ writes both, and the OCI index carries
    /// platforms and full names.
    pub(crate) fn format(&self) -> Result<Format, ImageError> {
        if self.exists("index.json") {
            if self.exists("oci-layout") {
                let layout = self.read_small("oci-layout")?;
                let version: serde_json::Value = super::oci::parse_json(&layout, "oci-layout")?;
                let v = version
                    .get("imageLayoutVersion")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                if !v.starts_with("1.") {
                    return Err(ImageError::source(
                        &self.origin,
                        format!("unsupported OCI layout version {v:?}"),
                    ));
                }
            }
            return Ok(Format::OciLayout);
        }
        if self.exists("manifest.json") {
            return Ok(Format::DockerArchive);
        }
        Err(ImageError::source(
            &self.origin,
            "neither an OCI layout (no index.json) nor a docker archive (no manifest.json)",
        ))
    }

    fn exists(&self, rel: &str) -> bool {
        match &self.kind {
            Kind::Dir(dir) => archive_name(rel.as_bytes()).is_some_and(|r| dir.join(r).is_file()),
            Kind::Staged { .. } => self.lookup(rel).is_some(),
        }
    }

    /// Reads a small metadata file (index.json, manifest.json, a docker config).
    pub(crate) fn read_small(&self, rel: &str) -> Result<Vec<u8>, ImageError> {
        let path = match &self.kind {
            Kind::Dir(dir) => archive_name(rel.as_bytes()).map(|r| dir.join(r)),
            Kind::Staged { .. } => self.lookup(rel).map(|s| s.path.clone()),
        };
        let path =
            path.ok_or_else(|| ImageError::source(&self.origin, format!("no file {rel:?} in it")))?;
        blobs::read_capped(&path, rel)
    }

    /// Copies (directory) or moves (staged archive) the file at `rel` into the blob store,
    /// verified against `expect` when given. Returns (digest, size).
    pub(crate) fn ingest(
        &self,
        rel: &str,
        blobs: &Blobs,
        what: &str,
        expect: Option<Expect>,
    ) -> Result<(String, u64), ImageError> {
        let missing = || match expect {
            Some(e) => ImageError::MissingBlob {
                digest: e.digest.to_string(),
                path: self.origin.clone(),
            },
            None => ImageError::source(&self.origin, format!("no file {rel:?} in it ({what})")),
        };
        match &self.kind {
            Kind::Dir(dir) => {
                if let Some(e) = expect {
                    if blobs.contains(e.digest)? {
                        return Ok((e.digest.to_string(), e.size));
                    }
                }
                let path = dir.join(archive_name(rel.as_bytes()).ok_or_else(missing)?);
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(ImageError::io(format!("opening {what}"), path, e)),
                };
                blobs.ingest(file, what, expect)
            }
            Kind::Staged { .. } => {
                let staged = self.lookup(rel).ok_or_else(missing)?;
                if let Some(e) = expect {
                    blobs::check(what, e, &staged.digest, staged.size)?;
                }
                blobs.adopt(&staged.path, &staged.digest)?;
                Ok((staged.digest.clone(), staged.size))
            }
        }
    }

    fn lookup(&self, rel: &str) -> Option<&Staged> {
        let Kind::Staged { files, links, .. } = &self.kind else {
            return None;
        };
        let mut name = archive_name(rel.as_bytes())?;
        for _ in 0..MAX_ARCHIVE_LINK_HOPS {
            if let Some(s) = files.get(&name) {
                return Some(s);
            }
            name = links.get(&name)?.clone();
        }
        None
    }
}

/// A cleaned, root-relative name for a file inside an archive or layout; None if it climbs out.
fn archive_name(raw: &[u8]) -> Option<String> {
    let parts = clean_entry_path(raw)?;
    let parts: Option<Vec<&str>> = parts.iter().map(|p| p.to_str()).collect();
    let name = parts?.join("/");
    (!name.is_empty()).then_some(name)
}

fn stage_archive(path: &Path, tmp: &Path) -> Result<Kind, ImageError> {
    let read_err = |e| ImageError::io("reading archive", path, e);
    let mut buffered = BufReader::new(File::open(path).map_err(read_err)?);
    let gzip = buffered
        .fill_buf()
        .map_err(read_err)?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };

    let dir = TempPath::new(tmp.join(unique_name("source")));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.path())
        .map_err(|e| ImageError::io("creating", dir.path(), e))?;
    let mut files = HashMap::new();
    let mut links = HashMap::new();
    let mut archive = tar::Archive::new(reader);
    for (n, entry) in archive.entries().map_err(read_err)?.enumerate() {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path_bytes().into_owned();
        let Some(name) = archive_name(&raw) else {
            log::warn!(
                "{}: skipping archive entry {:?}",
                path.display(),
                String::from_utf8_lossy(&raw)
            );
            continue;
        };
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                let staged = dir.path().join(n.to_string());
                let write_err = |e| {
                    ImageError::io(
                        format!("staging {name:?} from the archive into"),
                        &staged,
                        e,
                    )
                };
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&staged)
                    .map_err(write_err)?;
                let mut hashing = HashingReader::new(&mut entry);
                io::copy(&mut hashing, &mut out).map_err(write_err)?;
                files.insert(
                    name,
                    Staged {
                        digest: hashing.digest(),
                        size: hashing.count(),
                        path: staged,
                    },
                );
            }
            EntryType::Symlink => {
                // Relative to the link's directory; absolute targets point outside the archive.
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.first() != Some(&b'/') {
                    let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
                    let joined = [parent.as_bytes(), b"/", &target].concat();
                    if let Some(t) = archive_name(&joined) {
                        links.insert(name, t);
                    }
                }
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if let Some(t) = archive_name(&target) {
                    links.insert(name, t);
                }
            }
            _ => {}
        }
    }
    Ok(Kind::Staged {
        _dir: dir,
        files,
        links,
    })
}

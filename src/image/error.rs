//! The image module's error type. Every variant names what was being worked on (a file, a blob,
//! a layer, a tar entry) so the CLI's error chain tells the operator where to look.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::UnpackError;

#[derive(Debug)]
pub enum ImageError {
    /// A reference that is not a valid image name.
    InvalidReference { reference: String, reason: String },
    /// No image by that reference (only from `remove`; `resolve` returns `Ok(None)`).
    NotFound { reference: String },
    /// A filesystem operation failed; `action` says what tinylet was doing.
    Io {
        action: String,
        path: PathBuf,
        source: io::Error,
    },
    /// A JSON document (index, manifest, config) did not parse.
    Json {
        what: String,
        source: serde_json::Error,
    },
    /// The import source is not an OCI layout, OCI archive or docker archive, or is malformed.
    InvalidSource { path: PathBuf, reason: String },
    /// The source carries no usable name and none was given.
    NameRequired { path: PathBuf, reason: String },
    /// A multi-platform index holds no manifest for this machine.
    NoMatchingPlatform {
        wanted: String,
        available: Vec<String>,
    },
    /// A digest that is malformed or uses an algorithm other than sha256.
    InvalidDigest { digest: String, reason: String },
    /// A blob referenced by a manifest or index is absent from the source.
    MissingBlob { digest: String, path: PathBuf },
    /// Content did not hash to its descriptor's digest.
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Content length differs from its descriptor's size.
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// The store's index.json is unreadable or of an unknown version.
    CorruptIndex { path: PathBuf, reason: String },
    /// Applying a layer to the snapshot failed.
    Layer {
        image: String,
        index: usize,
        count: usize,
        digest: String,
        source: Box<UnpackError>,
    },
}

impl ImageError {
    pub(crate) fn io(
        action: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        ImageError::Io {
            action: action.into(),
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid_ref(reference: &str, reason: impl Into<String>) -> Self {
        ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn source(path: &std::path::Path, reason: impl Into<String>) -> Self {
        ImageError::InvalidSource {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::InvalidReference { reference, reason } => {
                write!(f, "invalid image reference {reference:?}: {reason}")
            }
            ImageError::NotFound { reference } => write!(f, "image {reference:?} not found"),
            ImageError::Io { action, path, .. } => write!(f, "{action} {}", path.display()),
            ImageError::Json { what, .. } => write!(f, "parsing {what}"),
            ImageError::InvalidSource { path, reason } => {
                write!(f, "cannot import {}: {reason}", path.display())
            }
            ImageError::NameRequired { path, reason } => write!(
                f,
                "cannot import {}: {reason}; pass an image name (e.g. myapp:1.0)",
                path.display()
            ),
            ImageError::NoMatchingPlatform { wanted, available } => write!(
                f,
                "no image for platform {wanted} in the index (available: {})",
                if available.is_empty() {
                    "none declared".to_string()
                } else {
                    available.join(", ")
                }
            ),
            ImageError::InvalidDigest { digest, reason } => {
                write!(f, "invalid digest {digest:?}: {reason}")
            }
            ImageError::MissingBlob { digest, path } => {
                write!(f, "blob {digest} is missing from {}", path.display())
            }
            ImageError::DigestMismatch {
                what,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "{what}: digest mismatch: expected {expected}, content hashes to {actual}"
                )
            }
            ImageError::SizeMismatch {
                what,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "{what}: size mismatch: descriptor says {expected} bytes, content has {actual}"
                )
            }
            ImageError::CorruptIndex { path, reason } => {
                write!(f, "image index {} is unusable: {reason}", path.display())
            }
            ImageError::Layer {
                image,
                index,
                count,
                digest,
                ..
            } => {
                write!(
                    f,
                    "unpacking layer {}/{count} ({digest}) of {image}",
                    index + 1
                )
            }
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageError::Io { source, .. } => Some(source),
            ImageError::Json { source, .. } => Some(source),
            ImageError::Layer { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

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
    /// An image whose documents contradict each other (e.g. diff_ids vs layers).
    InvalidImage { image: String, reason: String },
    /// A `--platform` value that is not os/arch[/variant].
    InvalidPlatform { platform: String, reason: String },
    /// A registry could not be reached or answered with an error; `message` says which.
    Registry {
        reference: String,
        registry: String,
        message: String,
    },
    /// The registry refused access (401/403) with every credential tried, or anonymously.
    Unauthorized {
        reference: String,
        registry: String,
        repository: String,
        status: u16,
    },
    /// The registry has no such repository, tag or digest (404).
    NotFoundInRegistry { reference: String, registry: String },
    /// A manifest whose shape, mediaType and Content-Type disagree (CVE-2021-41190): refused
    /// rather than guessed at, since two clients could read it as different images.
    AmbiguousManifest {
        reference: String,
        digest: String,
        reason: String,
    },
    /// A manifest, config or layer of a kind tinylet cannot run (schema 1, xz layers, artifacts).
    UnsupportedMediaType {
        reference: String,
        what: String,
        media_type: String,
    },
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

    /// The message followed by its causes ("unpacking layer 1/1 (..): ..: No space left on
    /// device"), for the CLI and log lines, where the chain is the useful part.
    pub fn with_causes(&self) -> String {
        let mut msg = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            msg.push_str(&format!(": {}", s));
            source = s.source();
        }
        msg
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
            ImageError::InvalidImage { image, reason } => {
                write!(f, "image {image} is malformed: {reason}")
            }
            ImageError::InvalidPlatform { platform, reason } => {
                write!(f, "invalid platform {platform:?}: {reason}")
            }
            ImageError::Registry {
                reference,
                registry,
                message,
            } => write!(f, "pulling {reference}: {message} (registry {registry})"),
            ImageError::Unauthorized {
                reference,
                registry,
                repository,
                status,
            } => write!(
                f,
                "pulling {reference}: {status} {} from {registry} for repository {repository} \
                 (check imagePullSecrets; the repository may also not exist)",
                if *status == 403 {
                    "Forbidden"
                } else {
                    "Unauthorized"
                }
            ),
            ImageError::NotFoundInRegistry {
                reference,
                registry,
            } => write!(f, "pulling {reference}: not found (404 from {registry})"),
            ImageError::AmbiguousManifest {
                reference,
                digest,
                reason,
            } => write!(
                f,
                "pulling {reference}: refusing ambiguous manifest {digest}: {reason}"
            ),
            ImageError::UnsupportedMediaType {
                reference,
                what,
                media_type,
            } => write!(
                f,
                "pulling {reference}: {what} has unsupported media type {media_type:?}"
            ),
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

//! Pulling images from OCI / Docker registries into the store (distribution spec v2).
//!
//! A pull, under the store's writer lock from start to end (see commit.rs):
//!   1. endpoints: mirrors for the registry, then the registry (endpoint.rs);
//!   2. the manifest by tag or digest; an index selects this platform's manifest (platform.rs);
//!      every document is checked for ambiguity (manifest.rs) and against its digest and size;
//!   3. config and layers streamed into the blob store, hashed while written, verified, renamed
//!      into place (blobs.rs); blobs already stored are not fetched; a broken download resumes;
//!   4. the shared unpack + index path (commit.rs) records the image under its normalized name.
//!
//! A kill mid-pull leaves only files in images/tmp, which the next writer empties; nothing in the
//! blob store or index is trusted before it is verified.

mod auth;
mod blob;
mod challenge;
mod client;
mod credentials;
mod endpoint;
mod manifest;
mod transport;

#[cfg(test)]
mod tests;

/// For the fuzz targets (src/image/fuzz.rs).
#[cfg(any(test, fuzzing))]
pub(crate) use {
    challenge::parse as parse_challenge, manifest::parse as parse_manifest,
    manifest::Document as ManifestDocument,
};

use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) use auth::TokenCache;

use super::blobs::{Expect, MAX_JSON_BYTES};
use super::commit::{self, Complete};
use super::digest::{self, HashingReader};
use super::oci::{Descriptor, Manifest};
use super::platform::{self, Platform};
use super::{reference, Image, ImageError, ImageStore};
use blob::BlobReader;
use client::Client;
use manifest::{Document, Refusal};
use transport::Transport;

/// Indexes nest (index -> index -> manifest) rarely and shallowly.
const MAX_INDEX_DEPTH: usize = 4;

/// Credentials and transport settings for pulls.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Extra credentials for this pull (e.g. from a pod's imagePullSecrets), tried before the node's.
    pub auths: Vec<RegistryAuth>,
    /// A node-level docker config.json (`auths` with `auth` (base64 user:pass) or
    /// username/password; also the legacy `.dockercfg` format).
    pub docker_config: Option<PathBuf>,
    /// host[:port] entries allowed over plain HTTP (loopback registries always are), used only
    /// after an HTTPS attempt fails to connect or to handshake.
    pub insecure_registries: Vec<String>,
    /// PEM files of extra CAs trusted for registries (besides the built-in Mozilla roots and
    /// /etc/ssl/certs/ca-certificates.crt if present).
    pub ca_files: Vec<PathBuf>,
    /// registry host (as in references: "docker.io") -> mirror endpoints
    /// ("https://mirror:5000"), tried in order before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// The platform to select from an index; default: this machine's (`Platform::detect`).
    pub platform: Option<Platform>,
}

/// One registry credential. `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistryAuth {
    /// host[:port] as a docker config spells it ("https://index.docker.io/v1/" works too).
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Download progress of one layer: `layer` of `layers` (1-based), `bytes` of `total`.
#[derive(Debug, Clone)]
pub struct PullProgress {
    pub layer: usize,
    pub layers: usize,
    pub bytes: u64,
    pub total: u64,
}

/// A parsed reference, split the way the registry API needs it.
pub(crate) struct Target {
    /// The normalized reference: the name the image is recorded under.
    pub name: String,
    /// "docker.io", "registry.local:5000".
    pub domain: String,
    /// The repository path within the registry: "library/nginx".
    pub repository: String,
    /// What to ask the manifests endpoint for: the digest if given, else the tag.
    pub object: String,
    pub digest: Option<String>,
}

pub(crate) fn parse_target(reference: &str) -> Result<Target, ImageError> {
    let r = reference::parse(reference)?;
    let (domain, repository) = r
        .repository
        .split_once('/')
        .ok_or_else(|| ImageError::invalid_ref(reference, "no repository path"))?;
    let object = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .ok_or_else(|| ImageError::invalid_ref(reference, "neither tag nor digest"))?;
    Ok(Target {
        name: r.to_string(),
        domain: domain.to_string(),
        repository: repository.to_string(),
        object,
        digest: r.digest.clone(),
    })
}

pub(crate) fn pull(
    store: &ImageStore,
    reference: &str,
    opts: &PullOptions,
    progress: &mut dyn FnMut(PullProgress),
) -> Result<Image, ImageError> {
    let target = parse_target(reference)?;
    let what = format!("pull of {}", target.name);
    commit::writer_session(store, &what, || {
        let transport = Transport::new(&opts.ca_files)?;
        let platform = opts.platform.clone().unwrap_or_else(Platform::detect);
        let endpoints = endpoint::endpoints(&target.domain, opts);
        let last = endpoints.len().saturating_sub(1);
        for (i, ep) in endpoints.into_iter().enumerate() {
            let host = ep.host.clone();
            let mut client = Client::new(&transport, store, ep, &target, opts)?;
            match pull_from(store, &mut client, &target, &platform, progress) {
                Err(e) if i < last => {
                    log::warn!("mirror {host} failed ({e}); trying the next endpoint");
                }
                result => return result,
            }
        }
        Err(ImageError::invalid_ref(
            reference,
            "no endpoint to pull from",
        ))
    })
}

/// What resolving a reference produced: the platform manifest and where it came from.
struct Resolved {
    manifest: Manifest,
    manifest_digest: String,
    index_digest: Option<String>,
}

fn pull_from(
    store: &ImageStore,
    client: &mut Client,
    target: &Target,
    platform: &Platform,
    progress: &mut dyn FnMut(PullProgress),
) -> Result<Image, ImageError> {
    let resolved = resolve(store, client, target, platform)?;
    let m = &resolved.manifest;
    let config_what = format!("config {} of {}", m.config.digest, target.name);
    download(store, client, &m.config, &config_what, &mut |_| {})?;
    let layers = m.layers.len();
    for (i, layer) in m.layers.iter().enumerate() {
        let what = format!(
            "layer {}/{layers} ({}) of {}",
            i + 1,
            layer.digest,
            target.name
        );
        let total = layer.size;
        let mut report = |bytes| {
            progress(PullProgress {
                layer: i + 1,
                layers,
                bytes,
                total,
            })
        };
        // A layer already stored is reported once, as complete.
        if !store.blobs.contains(&layer.digest)? {
            report(0);
            download(store, client, layer, &what, &mut report)?;
        }
        report(total);
    }
    commit::ensure_snapshot(store, &target.name, m)?;
    let images = commit::record(
        store,
        &[Complete {
            names: vec![target.name.clone()],
            manifest_digest: resolved.manifest_digest.clone(),
            index_digest: resolved.index_digest.clone(),
            manifest: m,
        }],
    )?;
    let image = images
        .into_iter()
        .next()
        .ok_or_else(|| client.registry_error("the image was not recorded"))?;
    log::info!(
        "pulled {} ({}) from {}",
        image.name,
        image.id,
        client.host()
    );
    Ok(image)
}

/// Fetches the manifest for the reference, following an index to this platform's manifest.
/// The documents are stored as blobs only once the whole chain checked out.
fn resolve(
    store: &ImageStore,
    client: &mut Client,
    target: &Target,
    platform: &Platform,
) -> Result<Resolved, ImageError> {
    let (mut bytes, mut content_type) = fetch_manifest(client, target, &target.object, None)?;
    let mut digest = digest_of(&bytes);
    if let Some(want) = &target.digest {
        if *want != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {}", target.name),
                expected: want.clone(),
                actual: digest,
            });
        }
    }
    let mut descriptor_type = String::new();
    let mut index_digest = None;
    let mut documents = Vec::new();
    for _ in 0..=MAX_INDEX_DEPTH {
        let doc = manifest::parse(&bytes, content_type.as_deref(), &descriptor_type)
            .map_err(|r| refusal(target, &digest, r))?;
        documents.push((digest.clone(), std::mem::take(&mut bytes)));
        match doc {
            Document::Image(manifest) => {
                for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    digest::sha256_hex(&d.digest)?;
                }
                for (d, b) in &documents {
                    let what = format!("manifest {d} of {}", target.name);
                    let expect = Expect {
                        digest: d,
                        size: b.len() as u64,
                    };
                    store.blobs.ingest(&b[..], &what, Some(expect))?;
                }
                return Ok(Resolved {
                    manifest,
                    manifest_digest: digest,
                    index_digest,
                });
            }
            Document::Index(manifests) => {
                index_digest.get_or_insert_with(|| digest.clone());
                let chosen = choose(&manifests, platform)?;
                digest::sha256_hex(&chosen.digest)?;
                let (b, ct) = fetch_manifest(client, target, &chosen.digest, Some(chosen.size))?;
                let actual = digest_of(&b);
                if actual != chosen.digest {
                    return Err(ImageError::DigestMismatch {
                        what: format!("manifest {} of {}", chosen.digest, target.name),
                        expected: chosen.digest.clone(),
                        actual,
                    });
                }
                (bytes, content_type, digest) = (b, ct, actual);
                descriptor_type = chosen.media_type.clone();
            }
        }
    }
    Err(refusal(
        target,
        &digest,
        Refusal::Malformed("indexes nested too deeply".to_string()),
    ))
}

/// The platform's manifest; an index without platforms is usable only if it holds one image.
fn choose<'d>(
    manifests: &'d [Descriptor],
    platform: &Platform,
) -> Result<&'d Descriptor, ImageError> {
    if manifests.iter().any(|d| d.platform.is_some()) || manifests.len() != 1 {
        platform::select(manifests, platform)
    } else {
        Ok(&manifests[0])
    }
}

/// GETs a manifest (capped in size; exact size when a descriptor gave one).
fn fetch_manifest(
    client: &mut Client,
    target: &Target,
    object: &str,
    size: Option<u64>,
) -> Result<(Vec<u8>, Option<String>), ImageError> {
    let resp = client.get("manifests", object, &[("Accept", manifest::ACCEPT)])?;
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let cap = size.unwrap_or(MAX_JSON_BYTES).min(MAX_JSON_BYTES);
    let mut bytes = Vec::new();
    let body = resp.into_body().into_reader();
    std::io::Read::read_to_end(&mut std::io::Read::take(body, cap + 1), &mut bytes)
        .map_err(|e| client.registry_error(format!("reading manifest {object}: {e}")))?;
    let what = format!("manifest {object} of {}", target.name);
    match size {
        Some(expected) if bytes.len() as u64 != expected => Err(ImageError::SizeMismatch {
            what,
            expected,
            actual: bytes.len() as u64,
        }),
        None if bytes.len() as u64 > cap => {
            Err(client.registry_error(format!("{what}: larger than {MAX_JSON_BYTES} bytes")))
        }
        _ => Ok((bytes, content_type)),
    }
}

/// Streams a blob into the store unless it is already there.
fn download(
    store: &ImageStore,
    client: &mut Client,
    d: &Descriptor,
    what: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ImageError> {
    if store.blobs.contains(&d.digest)? {
        return Ok(());
    }
    let expect = Expect {
        digest: &d.digest,
        size: d.size,
    };
    let mut reader = BlobReader::new(client, &d.digest, d.size, progress);
    match store.blobs.ingest(&mut reader, what, Some(expect)) {
        Ok(_) => Ok(()),
        // A read error from the network, not the disk: report the registry's side.
        Err(e) => Err(reader.failure.take().unwrap_or(e)),
    }
}

fn digest_of(bytes: &[u8]) -> String {
    let mut h = HashingReader::new(bytes);
    // Reading from a slice cannot fail.
    let _ = h.drain();
    h.digest()
}

fn refusal(target: &Target, digest: &str, r: Refusal) -> ImageError {
    match r {
        Refusal::Ambiguous(reason) => ImageError::AmbiguousManifest {
            reference: target.name.clone(),
            digest: digest.to_string(),
            reason,
        },
        Refusal::Unsupported { what, media_type } => ImageError::UnsupportedMediaType {
            reference: target.name.clone(),
            what,
            media_type,
        },
        Refusal::Malformed(reason) => ImageError::InvalidImage {
            image: format!("{} (manifest {digest})", target.name),
            reason,
        },
    }
}

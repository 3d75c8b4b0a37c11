//! `ImageStore::import`: finds the images in a source and moves their verified blobs into the
//! store; commit.rs then unpacks each snapshot and records the names.

use std::fs::File;
use std::path::Path;

use super::blobs::Expect;
use super::commit::{self, Complete};
use super::oci::{self, Descriptor, DockerArchiveEntry, Index, Manifest};
use super::source::{Format, Source};
use super::{digest, normalize_reference, reference, Image, ImageError, ImageStore};

/// Bounds recursion through nested indexes (index -> index -> manifest is the deepest seen).
const MAX_INDEX_DEPTH: usize = 4;

/// What the source says the image is called, before normalization.
enum NameHint {
    Full(Vec<String>),
    /// An OCI `ref.name` that is only a tag ("1.36"): the repository must come from the caller.
    TagOnly(String),
    None,
}

struct Found {
    hint: NameHint,
    manifest_digest: String,
    manifest: Manifest,
}

pub(crate) fn import(
    store: &ImageStore,
    path: &Path,
    name: Option<&str>,
) -> Result<Vec<Image>, ImageError> {
    let what = format!("import of {}", path.display());
    commit::writer_session(store, &what, || import_locked(store, path, name))
}

fn import_locked(
    store: &ImageStore,
    path: &Path,
    name: Option<&str>,
) -> Result<Vec<Image>, ImageError> {
    let name = name.map(import_name).transpose()?;
    let source = Source::open(path, &store.paths.tmp)?;
    let found = match source.format()? {
        Format::OciLayout => find_oci(&source, store)?,
        Format::DockerArchive => find_docker(&source, store)?,
    };
    if found.is_empty() {
        return Err(ImageError::source(path, "it holds no images"));
    }
    if name.is_some() && found.len() > 1 {
        return Err(ImageError::source(
            path,
            format!(
                "it holds {} images; a name can only be given to one",
                found.len()
            ),
        ));
    }
    let mut complete = Vec::with_capacity(found.len());
    for f in &found {
        let names = match &name {
            Some(n) => vec![n.clone()],
            None => names_from_hint(&f.hint, path)?,
        };
        complete.push(Complete {
            names,
            manifest_digest: f.manifest_digest.clone(),
            index_digest: None,
            manifest: &f.manifest,
        });
    }
    for c in &complete {
        commit::ensure_snapshot(store, &c.names[0], c.manifest)?;
    }
    // The staged archive lives in tmp/, which the sweep empties.
    drop(source);
    let images = commit::record(store, &complete)?;
    for i in &images {
        log::info!("imported {} ({})", i.name, i.id);
    }
    Ok(images)
}

fn import_name(name: &str) -> Result<String, ImageError> {
    let r = reference::parse(name)?;
    if r.digest.is_some() {
        return Err(ImageError::invalid_ref(
            name,
            "an import name cannot carry a digest",
        ));
    }
    Ok(r.to_string())
}

fn names_from_hint(hint: &NameHint, path: &Path) -> Result<Vec<String>, ImageError> {
    let required = |reason: String| ImageError::NameRequired {
        path: path.to_path_buf(),
        reason,
    };
    match hint {
        NameHint::Full(names) if !names.is_empty() => {
            names.iter().map(|n| normalize_reference(n)).collect()
        }
        NameHint::TagOnly(tag) => Err(required(format!(
            "its {} annotation {tag:?} is only a tag",
            oci::ANNOTATION_REF_NAME
        ))),
        _ => Err(required("it names no image".to_string())),
    }
}

fn blob_rel(digest: &str) -> Result<String, ImageError> {
    Ok(format!("blobs/sha256/{}", digest::sha256_hex(digest)?))
}

fn expect(d: &Descriptor) -> Expect<'_> {
    Expect {
        digest: &d.digest,
        size: d.size,
    }
}

fn find_oci(source: &Source, store: &ImageStore) -> Result<Vec<Found>, ImageError> {
    let index: Index = oci::parse_json(&source.read_small("index.json")?, "index.json")?;
    let mut selected = Vec::new();
    select_manifests(source, store, &index.manifests, None, 0, &mut selected)?;
    let mut found = Vec::new();
    for (desc, hint) in selected {
        let what = format!("manifest {}", desc.digest);
        source.ingest(
            &blob_rel(&desc.digest)?,
            &store.blobs,
            &what,
            Some(expect(&desc)),
        )?;
        let manifest: Manifest =
            oci::parse_json(&store.blobs.read_small(&desc.digest, &what)?, &what)?;
        ingest_image_blobs(source, store, &manifest)?;
        found.push(Found {
            hint,
            manifest_digest: desc.digest,
            manifest,
        });
    }
    Ok(found)
}

/// Walks an index: a list of platform manifests yields the one for this machine; a list of
/// unrelated images yields them all; nested indexes are followed.
fn select_manifests(
    source: &Source,
    store: &ImageStore,
    manifests: &[Descriptor],
    inherited: Option<&str>,
    depth: usize,
    out: &mut Vec<(Descriptor, NameHint)>,
) -> Result<(), ImageError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(ImageError::source(
            source.origin(),
            "indexes nested too deeply",
        ));
    }
    let candidates: Vec<&Descriptor> = if manifests.iter().any(|d| d.platform.is_some()) {
        vec![oci::select_platform(manifests)?]
    } else {
        manifests.iter().collect()
    };
    for d in candidates {
        let name = annotated_name(d).or(inherited);
        if d.is_index() {
            let what = format!("index {}", d.digest);
            source.ingest(&blob_rel(&d.digest)?, &store.blobs, &what, Some(expect(d)))?;
            let nested: Index = oci::parse_json(&store.blobs.read_small(&d.digest, &what)?, &what)?;
            select_manifests(source, store, &nested.manifests, name, depth + 1, out)?;
        } else {
            out.push((d.clone(), hint_from_annotation(name)));
        }
    }
    Ok(())
}

fn annotated_name(d: &Descriptor) -> Option<&str> {
    d.annotations
        .get(oci::ANNOTATION_CONTAINERD_NAME)
        .or_else(|| d.annotations.get(oci::ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// Like containerd: a ref.name without '/', ':' or '@' is a tag, not a repository.
fn hint_from_annotation(name: Option<&str>) -> NameHint {
    match name {
        None => NameHint::None,
        Some(n) if !n.contains(['/', ':', '@']) => NameHint::TagOnly(n.to_string()),
        Some(n) => NameHint::Full(vec![n.to_string()]),
    }
}

fn ingest_image_blobs(
    source: &Source,
    store: &ImageStore,
    manifest: &Manifest,
) -> Result<(), ImageError> {
    let config = &manifest.config;
    source.ingest(
        &blob_rel(&config.digest)?,
        &store.blobs,
        &format!("config {}", config.digest),
        Some(expect(config)),
    )?;
    for layer in &manifest.layers {
        let what = format!("layer {}", layer.digest);
        source.ingest(
            &blob_rel(&layer.digest)?,
            &store.blobs,
            &what,
            Some(expect(layer)),
        )?;
    }
    Ok(())
}

/// A docker archive has no manifest blob: its layers and config are stored as blobs and an OCI
/// manifest is synthesized for them (so its digest is not a registry's manifest digest).
fn find_docker(source: &Source, store: &ImageStore) -> Result<Vec<Found>, ImageError> {
    let entries: Vec<DockerArchiveEntry> =
        oci::parse_json(&source.read_small("manifest.json")?, "manifest.json")?;
    let mut found = Vec::new();
    for e in entries {
        let (digest, size) = source.ingest(
            &e.config,
            &store.blobs,
            &format!("config {:?}", e.config),
            None,
        )?;
        check_named_digest(&e.config, &digest)?;
        let config = Descriptor {
            media_type: oci::MEDIA_OCI_CONFIG.to_string(),
            digest,
            size,
            annotations: Default::default(),
            platform: None,
        };
        let mut layers = Vec::new();
        for path in &e.layers {
            let (digest, size) =
                source.ingest(path, &store.blobs, &format!("layer {path:?}"), None)?;
            check_named_digest(path, &digest)?;
            let media_type = if is_gzip(&store.blobs.open(&digest)?) {
                oci::MEDIA_OCI_LAYER_GZIP
            } else {
                oci::MEDIA_OCI_LAYER
            };
            layers.push(Descriptor {
                media_type: media_type.to_string(),
                digest,
                size,
                annotations: Default::default(),
                platform: None,
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: oci::MEDIA_OCI_MANIFEST.to_string(),
            config,
            layers,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
            what: "synthesized manifest".to_string(),
            source,
        })?;
        let (manifest_digest, _) = store
            .blobs
            .ingest(&bytes[..], "synthesized manifest", None)?;
        found.push(Found {
            hint: NameHint::Full(e.repo_tags.unwrap_or_default()),
            manifest_digest,
            manifest,
        });
    }
    Ok(found)
}

/// Docker names configs "<hex>.json" and new-style files "blobs/sha256/<hex>": when a name
/// carries a digest, the content must match it.
fn check_named_digest(path: &str, actual: &str) -> Result<(), ImageError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.strip_suffix(".json").unwrap_or(file);
    if digest::is_sha256_hex(stem) && actual != format!("sha256:{stem}") {
        return Err(ImageError::DigestMismatch {
            what: format!("archive file {path:?}"),
            expected: format!("sha256:{stem}"),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

fn is_gzip(mut file: &File) -> bool {
    let mut magic = [0u8; 2];
    std::io::Read::read_exact(&mut file, &mut magic).is_ok() && magic == [0x1f, 0x8b]
}

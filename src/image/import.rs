//! `ImageStore::import`: finds the images in a source, moves their verified blobs into the
//! store, unpacks each snapshot, then records the names — in that order, so a name never points
//! at an image that is not complete on disk.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::blobs::Expect;
use super::files::{unique_name, TempPath};
use super::index::{self, Entry, WriteLock};
use super::oci::{self, ConfigFile, Descriptor, DockerArchiveEntry, Index, Manifest};
use super::source::{Format, Source};
use super::unpack::{ExpectedLayer, Unpacker};
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
    let _lock = WriteLock::acquire(&store.paths.lock)?;
    store.clear_tmp()?;
    let result = import_locked(store, path, name);
    if result.is_err() {
        // Blobs verified before the failure are referenced by nothing: sweep them now rather
        // than leaving them for the next writer.
        if let Err(e) = index::load(&store.paths.index).and_then(|index| store.sweep(&index)) {
            log::warn!(
                "cleaning up after a failed import of {}: {e}",
                path.display()
            );
        }
    }
    result
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
    let mut named = Vec::with_capacity(found.len());
    for f in found {
        let names = match &name {
            Some(n) => vec![n.clone()],
            None => names_from_hint(&f.hint, path)?,
        };
        named.push((names, f));
    }
    for (names, f) in &named {
        ensure_snapshot(store, &names[0], f, path)?;
    }
    // The staged archive lives in tmp/, which the sweep empties.
    drop(source);

    let mut index = index::load(&store.paths.index)?;
    let mut replaced = Vec::new();
    let mut images = Vec::new();
    for (names, f) in &named {
        let entry = Entry {
            manifest: f.manifest_digest.clone(),
            config: f.manifest.config.digest.clone(),
            layers: f.manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            size: f.manifest.layers.iter().map(|l| l.size).sum(),
        };
        index.dangling.retain(|d| d.manifest != entry.manifest);
        for n in names {
            if let Some(old) = index.images.insert(n.clone(), entry.clone()) {
                replaced.push(old);
            }
            images.push((n.clone(), entry.clone()));
        }
    }
    for old in replaced {
        if !index.is_named(&old.manifest) && !index.dangling.contains(&old) {
            log::info!(
                "image {} lost its last name; kept as dangling until removed by id",
                old.config
            );
            index.dangling.push(old);
        }
    }
    index::save(&store.paths.index, &store.paths.tmp, &index)?;
    store.sweep(&index)?;
    let images: Vec<Image> = images
        .iter()
        .map(|(n, e)| store.image(n, e))
        .collect::<Result<_, _>>()?;
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

/// Unpacks the image's snapshot unless it already exists (snapshots are keyed by config digest,
/// so re-importing an image is free).
fn ensure_snapshot(
    store: &ImageStore,
    name: &str,
    f: &Found,
    origin: &Path,
) -> Result<(), ImageError> {
    let config_digest = &f.manifest.config.digest;
    let what = format!("config {config_digest} of {name}");
    let config: ConfigFile =
        oci::parse_json(&store.blobs.read_small(config_digest, &what)?, &what)?;
    let layers = &f.manifest.layers;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::source(
            origin,
            format!(
                "image {name}: the config lists {} diff_ids for {} layers",
                diff_ids.len(),
                layers.len()
            ),
        ));
    }
    let want_arch = oci::go_arch(std::env::consts::ARCH);
    if !config.architecture.is_empty() && config.architecture != want_arch {
        log::warn!(
            "image {name} is built for {}, this node is {want_arch}",
            config.architecture
        );
    }
    let dest = store.snapshot_path(config_digest)?;
    if dest.is_dir() {
        return Ok(());
    }
    let tmp = TempPath::new(store.paths.tmp.join(unique_name("snapshot")));
    fs::DirBuilder::new()
        .mode(0o755)
        .create(tmp.path())
        .map_err(|e| ImageError::io("creating", tmp.path(), e))?;
    let mut unpacker = Unpacker::new(tmp.path(), store.limits);
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let blob = store.blobs.open(&layer.digest)?;
        let expected = ExpectedLayer {
            digest: &layer.digest,
            size: layer.size,
            diff_id: Some(diff_id),
        };
        unpacker
            .apply_layer(blob, &expected)
            .map_err(|source| ImageError::Layer {
                image: name.to_string(),
                index: i,
                count: layers.len(),
                digest: layer.digest.clone(),
                source: Box::new(source),
            })?;
    }
    // Make the files durable before the snapshot becomes visible under its final name.
    let sync =
        File::open(tmp.path()).and_then(|d| nix::unistd::syncfs(&d).map_err(std::io::Error::from));
    sync.map_err(|e| ImageError::io("syncing", tmp.path(), e))?;
    tmp.commit(&dest)
        .map_err(|e| ImageError::io("publishing snapshot", &dest, e))
}

//! The image module's fuzz entry points (called from src/fuzzing.rs): registry documents and
//! layer unpacking, reached here because their modules are private to `image`.

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::oci::{self, ConfigFile};
use super::platform::{self, Platform};
use super::registry::{
    parse_challenge, parse_manifest, ManifestDocument as Document, RegistryAuth,
};
use super::unpack::{ExpectedLayer, Limits, Unpacker};

/// A manifest or index as a registry serves it, under each content type a registry may claim;
/// then the same bytes as an image config, a docker config.json and a WWW-Authenticate header.
pub(crate) fn manifest(data: &[u8]) {
    for content_type in [
        None,
        Some(oci::MEDIA_OCI_INDEX),
        Some(oci::MEDIA_OCI_MANIFEST),
        Some("application/json; charset=utf-8"),
    ] {
        match parse_manifest(data, content_type, "") {
            Ok(Document::Index(manifests)) => {
                for want in [
                    "linux/arm/v7",
                    "linux/arm64",
                    "linux/amd64",
                    "windows/amd64",
                ] {
                    let want = Platform::parse(want).expect("a valid platform");
                    if let Ok(d) = platform::select(&manifests, &want) {
                        assert!(manifests.iter().any(|m| std::ptr::eq(m, d)));
                    }
                }
            }
            Ok(Document::Image(m)) => {
                let _ = m
                    .layers
                    .iter()
                    .map(|l| l.size)
                    .fold(0u64, u64::saturating_add);
            }
            Err(_) => {}
        }
    }
    let _ = oci::parse_json::<ConfigFile>(data, "image config");
    let _ = RegistryAuth::from_docker_config(data);
    if let Ok(header) = std::str::from_utf8(data) {
        let _ = parse_challenge(header);
    }
}

/// Layers are separated by this marker, so one input can chain layers (a symlink in one, a
/// write through it in the next).
const LAYER_SEPARATOR: &[u8] = b"TLYR";

/// Unpacks the layers in `data` into `<scratch>/root` beside an empty `<scratch>/outside`;
/// afterwards `outside` must still be empty and nothing else may exist in the scratch dir.
pub(crate) fn layer(data: &[u8]) {
    // One scratch dir per call: the unit tests run the corpus replay and the mutation run of
    // this target at the same time, on two threads.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = std::env::temp_dir().join(format!(
        "tinylet-fuzz-layer-{}-{}",
        std::process::id(),
        call
    ));
    let _ = fs::remove_dir_all(&scratch);
    let root = scratch.join("root");
    let outside = scratch.join("outside");
    fs::create_dir_all(&root).expect("scratch root");
    fs::create_dir_all(&outside).expect("scratch outside");
    let limits = Limits {
        max_unpacked_bytes: 16 << 20,
        max_entries: 10_000,
    };
    let mut unpacker = Unpacker::new(&root, limits);
    for layer in split(data) {
        let digest = format!("sha256:{}", crate::fsutil::hex(&Sha256::digest(layer)));
        let expected = ExpectedLayer {
            digest: &digest,
            size: layer.len() as u64,
            diff_id: None,
        };
        if unpacker.apply_layer(layer, &expected).is_err() {
            break;
        }
    }
    let names: Vec<_> = fs::read_dir(&scratch)
        .expect("scratch dir")
        .map(|e| e.expect("scratch entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "entries beside the root: {:?}", names);
    assert!(
        is_empty_dir(&outside),
        "a layer wrote outside the root: {:?}",
        fs::read_dir(&outside).map(|d| d.count())
    );
    // Device nodes and fifos are listed, never created.
    assert!(no_special_files(&root), "a device node or fifo was created");
    let _ = fs::remove_dir_all(&scratch);
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < 3 {
        match rest
            .windows(LAYER_SEPARATOR.len())
            .position(|w| w == LAYER_SEPARATOR)
        {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + LAYER_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

fn no_special_files(dir: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return true;
    };
    entries.flatten().all(|e| match e.file_type() {
        Ok(t) if t.is_dir() => no_special_files(&e.path()),
        Ok(t) => !(t.is_block_device() || t.is_char_device() || t.is_fifo() || t.is_socket()),
        Err(_) => true,
    })
}

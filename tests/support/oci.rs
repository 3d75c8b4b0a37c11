//! Building small OCI image layouts for the tests: one image for this machine's platform, its
//! layers given as tar (or gzip'd tar) bytes. Used where busybox is not the point: hostile
//! layers, a large random layer, a second image for GC.

use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{:02x}", b))
        .collect();
    format!("sha256:{}", hex)
}

/// A tar holding one regular file (mode 0644, root-owned).
pub fn one_file_tar(path: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("test file path");
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, content).expect("appending to in-memory tar");
    b.into_inner().expect("finishing in-memory tar")
}

/// The Go architecture name of this machine, as image configs spell it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Writes an OCI layout at `dir` holding one image whose layers are `layers` (tar bytes, or
/// gzip'd tar bytes, told apart by their magic), with `cmd` as its Cmd and, if given, `ref_name`
/// as its `org.opencontainers.image.ref.name`. Returns the manifest digest.
pub fn write_image_layout(
    dir: &Path,
    layers: &[Vec<u8>],
    cmd: &[&str],
    ref_name: Option<&str>,
) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("creating the layout's blobs dir");
    let write_blob = |data: &[u8]| {
        let digest = sha256_digest(data);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), data)
            .expect("writing a blob");
        digest
    };
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for data in layers {
        let gz = data.starts_with(&[0x1f, 0x8b]);
        let diff_id = if gz {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&data[..])
                .read_to_end(&mut tar)
                .expect("gunzipping a test layer");
            sha256_digest(&tar)
        } else {
            sha256_digest(data)
        };
        diff_ids.push(diff_id);
        let media_type = if gz {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descriptors
            .push(json!({"mediaType": media_type, "digest": write_blob(data), "size": data.len()}));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config JSON");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": write_blob(&config), "size": config.len()},
        "layers": descriptors,
    }))
    .expect("manifest JSON");
    let manifest_digest = write_blob(&manifest);
    let mut entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
    });
    if let Some(name) = ref_name {
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).expect("index JSON"),
    )
    .expect("writing index.json");
    manifest_digest
}

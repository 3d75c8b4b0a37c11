//! Manifests as registries serve them: OCI manifest / index and Docker schema 2 manifest /
//! manifest list. A document is classified by its shape and must agree with every type claim
//! made about it — its own `mediaType`, the response's Content-Type and the descriptor that
//! pointed at it — or it is refused as ambiguous (CVE-2021-41190), since two clients could
//! otherwise run different images from the same digest.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::image::oci::{self, Descriptor, Index, Manifest};

pub(crate) const MEDIA_DOCKER_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const MEDIA_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The Accept header for manifest requests: every type we can read, most specific first.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

pub(crate) enum Document {
    Index(Vec<Descriptor>),
    Image(Manifest),
}

/// Why a document was refused; the caller adds the reference and digest.
#[derive(Debug, PartialEq)]
pub(crate) enum Refusal {
    Ambiguous(String),
    Unsupported { what: String, media_type: String },
    Malformed(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
    #[serde(default)]
    layers: Option<IgnoredAny>,
    #[serde(default)]
    config: Option<IgnoredAny>,
    #[serde(default)]
    fs_layers: Option<IgnoredAny>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Index,
    Image,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        oci::MEDIA_OCI_INDEX | oci::MEDIA_DOCKER_LIST => Some(Kind::Index),
        oci::MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => Some(Kind::Image),
        _ => None,
    }
}

/// "application/json; charset=utf-8" -> "application/json".
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_schema1(media_type: &str) -> bool {
    media_type == MEDIA_DOCKER_SCHEMA1 || media_type == MEDIA_DOCKER_SCHEMA1_SIGNED
}

/// Classifies and parses a manifest document. `content_type` is the response header (None when
/// unknown); `descriptor_type` the mediaType of the descriptor that pointed here ("" if none).
pub(crate) fn parse(
    bytes: &[u8],
    content_type: Option<&str>,
    descriptor_type: &str,
) -> Result<Document, Refusal> {
    let malformed = |e: serde_json::Error| Refusal::Malformed(e.to_string());
    let shape: Shape = serde_json::from_slice(bytes).map_err(malformed)?;
    let declared = shape.media_type.as_deref().unwrap_or_default();
    let content_type = content_type.map(essence).unwrap_or_default();
    let unsupported = |media_type: &str| Refusal::Unsupported {
        what: "manifest".to_string(),
        media_type: media_type.to_string(),
    };
    if shape.fs_layers.is_some() || is_schema1(declared) || is_schema1(&content_type) {
        return Err(unsupported(
            "Docker schema 1 (deprecated; push the image again with a current client)",
        ));
    }
    let kind = match (
        shape.manifests.is_some(),
        shape.layers.is_some() || shape.config.is_some(),
    ) {
        (true, true) => {
            return Err(Refusal::Ambiguous(
                "it has both \"manifests\" and \"layers\"/\"config\"".to_string(),
            ))
        }
        (true, false) => Kind::Index,
        (false, true) => Kind::Image,
        (false, false) => {
            return Err(Refusal::Malformed(
                "neither an index (\"manifests\") nor an image manifest (\"layers\")".to_string(),
            ))
        }
    };
    // Every type claim must agree with the shape. Generic Content-Types (application/json,
    // octet-stream) are no claim; an unknown specific mediaType is a type we cannot run.
    for (source, claim) in [
        ("its mediaType field", declared),
        ("the Content-Type", content_type.as_str()),
        ("the descriptor's mediaType", descriptor_type),
    ] {
        if claim.is_empty() || (source == "the Content-Type" && kind_of(claim).is_none()) {
            continue;
        }
        match kind_of(claim) {
            Some(k) if k == kind => {}
            Some(_) => {
                return Err(Refusal::Ambiguous(format!(
                    "{source} says {claim} but the document is {}",
                    if kind == Kind::Index {
                        "an index"
                    } else {
                        "an image manifest"
                    }
                )))
            }
            None => return Err(unsupported(claim)),
        }
    }
    if !declared.is_empty() && kind_of(&content_type).is_some() && declared != content_type {
        return Err(Refusal::Ambiguous(format!(
            "its mediaType {declared} differs from the Content-Type {content_type}"
        )));
    }
    if shape.schema_version != Some(2) {
        return Err(Refusal::Malformed(format!(
            "schemaVersion {:?}, expected 2",
            shape.schema_version
        )));
    }
    match kind {
        Kind::Index => serde_json::from_slice::<Index>(bytes)
            .map(|i| Document::Index(i.manifests))
            .map_err(malformed),
        Kind::Image => {
            let m: Manifest = serde_json::from_slice(bytes).map_err(malformed)?;
            check_image_types(&m)?;
            Ok(Document::Image(m))
        }
    }
}

/// Refuses configs that are not container images (Helm charts, artifacts) and layers we cannot
/// unpack, before anything is downloaded.
fn check_image_types(m: &Manifest) -> Result<(), Refusal> {
    let config_type = m.config.media_type.as_str();
    if !matches!(
        config_type,
        "" | oci::MEDIA_OCI_CONFIG | MEDIA_DOCKER_CONFIG
    ) {
        return Err(Refusal::Unsupported {
            what: "config (not a container image)".to_string(),
            media_type: config_type.to_string(),
        });
    }
    for l in &m.layers {
        let t = l.media_type.as_str();
        let ok = matches!(
            t,
            oci::MEDIA_OCI_LAYER
                | oci::MEDIA_OCI_LAYER_GZIP
                | "application/vnd.oci.image.layer.nondistributable.v1.tar"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                | "application/vnd.oci.image.layer.v1.tar+zstd"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.diff.tar"
        );
        if !ok {
            let what = format!("layer {}", l.digest);
            return Err(Refusal::Unsupported {
                what,
                media_type: t.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn image(media_type: Option<&str>, layer_type: &str) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": oci::MEDIA_OCI_CONFIG, "digest": D, "size": 2},
            "layers": [{"mediaType": layer_type, "digest": D, "size": 3}],
        });
        if let Some(t) = media_type {
            v["mediaType"] = t.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn index(media_type: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": oci::MEDIA_OCI_MANIFEST, "digest": D, "size": 5,
                           "platform": {"os": "linux", "architecture": "amd64"}}],
        });
        if let Some(t) = media_type {
            v["mediaType"] = t.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn ambiguous(r: Result<Document, Refusal>) -> String {
        match r {
            Err(Refusal::Ambiguous(reason)) => reason,
            Err(other) => panic!("expected ambiguous, got {other:?}"),
            Ok(_) => panic!("expected ambiguous, got a document"),
        }
    }

    #[test]
    fn accepts_the_four_kinds() {
        let gz = oci::MEDIA_OCI_LAYER_GZIP;
        for (bytes, ct) in [
            (
                image(Some(oci::MEDIA_OCI_MANIFEST), gz),
                Some(oci::MEDIA_OCI_MANIFEST),
            ),
            (image(None, gz), Some(oci::MEDIA_OCI_MANIFEST)),
            (
                image(
                    Some(MEDIA_DOCKER_MANIFEST),
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                ),
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
            ),
            (
                image(Some(oci::MEDIA_OCI_MANIFEST), gz),
                Some("application/octet-stream"),
            ),
        ] {
            assert!(matches!(parse(&bytes, ct, ""), Ok(Document::Image(_))));
        }
        for (bytes, ct) in [
            (
                index(Some(oci::MEDIA_OCI_INDEX)),
                Some(oci::MEDIA_OCI_INDEX),
            ),
            (
                index(Some(oci::MEDIA_DOCKER_LIST)),
                Some(oci::MEDIA_DOCKER_LIST),
            ),
            (index(None), None),
        ] {
            assert!(matches!(parse(&bytes, ct, ""), Ok(Document::Index(_))));
        }
    }

    #[test]
    fn rejects_ambiguous_documents() {
        // Both manifests and layers: an index to one client, an image to another.
        let both = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MEDIA_OCI_MANIFEST,
            "manifests": [],
            "config": {"mediaType": oci::MEDIA_OCI_CONFIG, "digest": D, "size": 2},
            "layers": [],
        }))
        .unwrap();
        assert!(ambiguous(parse(&both, Some(oci::MEDIA_OCI_MANIFEST), "")).contains("both"));
        // mediaType field vs shape.
        let r = parse(&index(Some(oci::MEDIA_OCI_MANIFEST)), None, "");
        assert!(ambiguous(r).contains("mediaType field"));
        // Content-Type vs shape.
        let r = parse(
            &image(None, oci::MEDIA_OCI_LAYER),
            Some(oci::MEDIA_OCI_INDEX),
            "",
        );
        assert!(ambiguous(r).contains("Content-Type"));
        // Descriptor vs shape.
        let r = parse(
            &image(None, oci::MEDIA_OCI_LAYER),
            None,
            oci::MEDIA_OCI_INDEX,
        );
        assert!(ambiguous(r).contains("descriptor"));
        // mediaType vs Content-Type, both image kinds but different.
        let r = parse(
            &image(Some(oci::MEDIA_OCI_MANIFEST), oci::MEDIA_OCI_LAYER),
            Some(MEDIA_DOCKER_MANIFEST),
            "",
        );
        assert!(ambiguous(r).contains("differs"));
    }

    #[test]
    fn refuses_unsupported_kinds() {
        let zstd = image(None, "application/vnd.oci.image.layer.v1.tar+zstd");
        assert!(parse(&zstd, None, "").is_ok(), "zstd layers are supported");
        let xz = image(None, "application/vnd.oci.image.layer.v1.tar+xz");
        match parse(&xz, None, "") {
            Err(Refusal::Unsupported { media_type, .. }) => {
                assert!(media_type.contains("xz"), "{media_type}")
            }
            _ => panic!("xz accepted"),
        }
        let schema1 = br#"{"schemaVersion": 1, "fsLayers": [], "name": "x"}"#;
        assert!(matches!(
            parse(schema1, Some(MEDIA_DOCKER_SCHEMA1_SIGNED), ""),
            Err(Refusal::Unsupported { .. })
        ));
        let helm = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D, "size": 2},
            "layers": [],
        }))
        .unwrap();
        assert!(matches!(
            parse(&helm, None, ""),
            Err(Refusal::Unsupported { .. })
        ));
        assert!(matches!(parse(b"{}", None, ""), Err(Refusal::Malformed(_))));
        assert!(matches!(
            parse(b"not json", None, ""),
            Err(Refusal::Malformed(_))
        ));
        let v3 = br#"{"schemaVersion": 3, "manifests": []}"#;
        assert!(matches!(parse(v3, None, ""), Err(Refusal::Malformed(_))));
    }
}

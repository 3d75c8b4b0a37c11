//! The JSON documents of OCI image layouts and docker archives (only the fields tinylet uses),
//! and platform selection from a multi-platform index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ImageConfig, ImageError};

pub(crate) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The containerd annotation carries a full name; the OCI one is often just a tag.
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub(crate) fn is_index(&self) -> bool {
        self.media_type == MEDIA_OCI_INDEX || self.media_type == MEDIA_DOCKER_LIST
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Docker's capitalized field names; nulls are common, hence the Options.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RuntimeConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

impl From<RuntimeConfig> for ImageConfig {
    fn from(c: RuntimeConfig) -> Self {
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        }
    }
}

/// One image of a `docker save` manifest.json.
#[derive(Debug, Deserialize)]
pub(crate) struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// Go's GOARCH name for a Rust target architecture: the vocabulary of OCI platforms.
pub(crate) fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Picks the manifest for this machine's platform (see platform.rs for the matching rules).
pub(crate) fn select_platform(manifests: &[Descriptor]) -> Result<&Descriptor, ImageError> {
    super::platform::select(manifests, &super::Platform::detect())
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(os: &str, arch: &str, digest: &str) -> Descriptor {
        Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            annotations: BTreeMap::new(),
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
        }
    }

    #[test]
    fn selects_this_machines_platform() {
        let ms = [
            desc("windows", go_arch(std::env::consts::ARCH), "w"),
            desc("linux", go_arch(std::env::consts::ARCH), "me"),
        ];
        assert_eq!(select_platform(&ms).unwrap().digest, "me");
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }
}

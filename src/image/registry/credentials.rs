//! Registry credentials: the pull's own (imagePullSecrets) first, then the node's docker
//! config.json (`auths` with `auth` = base64 "user:pass" or username/password) or legacy
//! `.dockercfg`. Credential helpers (`credsStore`, `credHelpers`) and identity tokens are not
//! supported: a device has no helper binaries. Secrets are never logged or put in errors.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::super::blobs::read_capped;
use super::super::oci::parse_json;
use super::endpoint::DOCKER_HUB;
use super::{PullOptions, RegistryAuth};
use crate::base64::{base64_decode, base64_encode};
use crate::image::ImageError;

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({:?}, <redacted>)", self.username)
    }
}

impl Credential {
    /// The `Authorization: Basic` value.
    pub(crate) fn basic(&self) -> String {
        format!(
            "Basic {}",
            base64_encode(format!("{}:{}", self.username, self.password).as_bytes())
        )
    }
}

/// The credentials to try for `host` (an endpoint's host[:port]), in order.
pub(crate) fn for_host(host: &str, opts: &PullOptions) -> Result<Vec<Credential>, ImageError> {
    let key = registry_key(host);
    let mut out: Vec<Credential> = Vec::new();
    let mut add = |a: &RegistryAuth| {
        let c = Credential {
            username: a.username.clone(),
            password: a.password.clone(),
        };
        if registry_key(&a.registry) == key && !out.contains(&c) {
            out.push(c);
        }
    };
    opts.auths.iter().for_each(&mut add);
    if let Some(path) = &opts.docker_config {
        load_docker_config(path)?.iter().for_each(&mut add);
    }
    Ok(out)
}

fn load_docker_config(path: &Path) -> Result<Vec<RegistryAuth>, ImageError> {
    let bytes = read_capped(path, "docker config")?;
    RegistryAuth::from_docker_config(&bytes).map_err(|e| match e {
        ImageError::Json { source, .. } => ImageError::Json {
            what: format!("docker config {}", path.display()),
            source,
        },
        other => other,
    })
}

/// The lookup key of a registry, however a config spells it: "https://index.docker.io/v1/",
/// "registry-1.docker.io" and "docker.io" are all Docker Hub; scheme and path are dropped.
pub(crate) fn registry_key(registry: &str) -> String {
    let r = registry.trim().to_ascii_lowercase();
    let r = r
        .strip_prefix("https://")
        .or_else(|| r.strip_prefix("http://"))
        .unwrap_or(&r);
    let host = r.split('/').next().unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        h => h.to_string(),
    }
}

#[derive(Deserialize)]
struct ConfigEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl RegistryAuth {
    /// Parses a docker config.json (`{"auths": {...}}`, the content of a
    /// `kubernetes.io/dockerconfigjson` secret) or a legacy `.dockercfg` (`{"host": {...}}`).
    /// Entries without usable credentials are skipped.
    pub fn from_docker_config(bytes: &[u8]) -> Result<Vec<RegistryAuth>, ImageError> {
        let doc: serde_json::Map<String, serde_json::Value> = parse_json(bytes, "docker config")?;
        let entries = match doc.get("auths") {
            Some(serde_json::Value::Object(auths)) => auths.clone(),
            _ => doc,
        };
        let mut out = Vec::new();
        for (registry, value) in entries {
            let Ok(entry) = serde_json::from_value::<ConfigEntry>(value) else {
                continue;
            };
            let from_auth = entry
                .auth
                .as_deref()
                .filter(|a| !a.is_empty())
                .and_then(|a| {
                    let decoded = base64_decode(a)?;
                    let text = String::from_utf8(decoded).ok()?;
                    let (u, p) = text.split_once(':')?;
                    Some((u.to_string(), p.to_string()))
                });
            let pair = from_auth.or_else(|| Some((entry.username?, entry.password?)));
            match pair {
                Some((username, password)) if !username.is_empty() => out.push(RegistryAuth {
                    registry,
                    username,
                    password,
                }),
                _ => log::debug!("docker config: no usable credentials for {registry}"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_configs() {
        let config = br#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldDpwYXJ0"},
                "registry.local:5000": {"username": "bob", "password": "pw"},
                "ghcr.io": {"auth": ""},
                "helper.io": {}
            },
            "credsStore": "desktop"
        }"#;
        let auths = RegistryAuth::from_docker_config(config).unwrap();
        let got: Vec<(&str, &str, &str)> = auths
            .iter()
            .map(|a| {
                (
                    a.registry.as_str(),
                    a.username.as_str(),
                    a.password.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("https://index.docker.io/v1/", "hub", "secret:part"),
                ("registry.local:5000", "bob", "pw"),
            ]
        );
        let legacy = br#"{"registry.local:5000": {"auth": "Ym9iOnB3", "email": "b@x"}}"#;
        let auths = RegistryAuth::from_docker_config(legacy).unwrap();
        assert_eq!(auths.len(), 1);
        assert_eq!(
            (auths[0].username.as_str(), auths[0].password.as_str()),
            ("bob", "pw")
        );
        assert!(RegistryAuth::from_docker_config(b"[1]").is_err());
    }

    #[test]
    fn looks_credentials_up_by_host_pull_secrets_first() {
        let dir = crate::image::testutil::TempDir::new("dockercfg");
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            br#"{"auths": {"https://index.docker.io/v1/": {"auth": "bm9kZTpub2RlcHc="}}}"#,
        )
        .unwrap();
        let opts = PullOptions {
            auths: vec![RegistryAuth {
                registry: "docker.io".into(),
                username: "pod".into(),
                password: "podpw".into(),
            }],
            docker_config: Some(path),
            ..Default::default()
        };
        let users: Vec<String> = for_host("registry-1.docker.io", &opts)
            .unwrap()
            .into_iter()
            .map(|c| c.username)
            .collect();
        assert_eq!(users, vec!["pod", "node"]);
        assert!(for_host("ghcr.io", &opts).unwrap().is_empty());
        let c = Credential {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.basic(), "Basic dTpodW50ZXIy");
        assert_eq!(
            registry_key("HTTPS://Registry.Local:5000/v2/"),
            "registry.local:5000"
        );
    }
}
